//! The result record written by hand, byte for byte what serde writes.
//!
//! Every task ends in one result, so its encoding is on the hot path: through
//! serde's generic serializer a result cost about 4,100 instructions, most of
//! it in `format_escaped_str` writing each field name and short string through
//! `io::Write` (callgrind, `sluice bench`). Writing the fields straight into the
//! buffer, with a scan that copies strings needing no escapes at once, costs a
//! fraction of that. The output is the derived serializer's exactly (a property
//! test below holds it to that), so readers see no difference; anything unusual
//! (escapes, the handler's output) still goes through serde_json.

use super::{JobRef, TaskResult};

impl TaskResult {
    /// Appends the result record (compact JSON, the fields in wire order) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"task_id\":");
        string(out, &self.task_id);
        out.extend_from_slice(b",\"kind\":");
        string(out, &self.kind);
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b'"');
        if let Some(output) = &self.output {
            out.extend_from_slice(b",\"output\":");
            if output.is_null() {
                out.extend_from_slice(b"null");
            } else {
                serde_json::to_writer(&mut *out, output).expect("a JSON value always serializes");
            }
        }
        if let Some(error) = &self.error {
            out.extend_from_slice(b",\"error\":");
            string(out, error);
        }
        out.extend_from_slice(b",\"attempts\":");
        number(out, self.attempts);
        out.extend_from_slice(b",\"worker\":");
        string(out, &self.worker);
        out.extend_from_slice(b",\"topic\":");
        string(out, &self.topic);
        out.extend_from_slice(b",\"partition\":");
        number(out, self.partition);
        out.extend_from_slice(b",\"offset\":");
        number(out, self.offset);
        if let Some(created) = self.created_ms {
            out.extend_from_slice(b",\"created_ms\":");
            number(out, created);
        }
        out.extend_from_slice(b",\"started_ms\":");
        number(out, self.started_ms);
        out.extend_from_slice(b",\"finished_ms\":");
        number(out, self.finished_ms);
        if let Some(job) = &self.job {
            out.extend_from_slice(b",\"job\":");
            job_ref(out, job);
        }
        out.push(b'}');
    }

    /// The result record as a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::TYPICAL_BYTES);
        self.encode_into(&mut out);
        out
    }

    /// Enough for a typical result record without growing the buffer.
    pub const TYPICAL_BYTES: usize = 512;
}

fn job_ref(out: &mut Vec<u8>, job: &JobRef) {
    out.extend_from_slice(b"{\"id\":");
    string(out, &job.id);
    out.extend_from_slice(b",\"index\":");
    number(out, job.index);
    out.extend_from_slice(b",\"total\":");
    number(out, job.total);
    out.push(b'}');
}

/// A JSON string: copied as it is when nothing in it needs an escape (the
/// usual case: ids, kinds, topic names), else through serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string always serializes");
    }
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn text() -> impl Strategy<Value = String> {
        // Mostly plain, sometimes with quotes, backslashes, control characters
        // and non-ASCII.
        prop_oneof![
            "[a-z0-9./-]{0,24}",
            any::<String>(),
            "[\"\\\\\u{0}-\u{1f}\u{7f}é€😀a]{0,8}",
        ]
    }

    fn output() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            any::<i64>().prop_map(|n| Some(json!(n))),
            text().prop_map(|s| Some(json!({ "s": s, "n": [1, 2.5, null, true] }))),
        ]
    }

    prop_compose! {
        fn result()(
            task_id in text(), kind in text(), status in 0usize..Status::ALL.len(), output in output(),
            error in proptest::option::of(text()), attempts in any::<u32>(), worker in text(),
            topic in text(), partition in any::<i32>(), offset in any::<i64>(),
            created_ms in proptest::option::of(any::<u64>()), started_ms in any::<u64>(),
            finished_ms in any::<u64>(),
            job in proptest::option::of((text(), any::<u64>(), any::<u64>())),
        ) -> TaskResult {
            TaskResult {
                task_id, kind, status: Status::ALL[status], output, error, attempts, worker,
                topic, partition, offset, created_ms, started_ms, finished_ms,
                job: job.map(|(id, index, total)| JobRef { id, index, total }),
            }
        }
    }

    proptest! {
        /// Whatever the fields hold, the record is the derived serializer's to the byte.
        #[test]
        fn the_record_is_what_serde_writes(r in result()) {
            let expected = String::from_utf8(serde_json::to_vec(&r).unwrap()).unwrap();
            let written = String::from_utf8(r.encode()).unwrap();
            prop_assert_eq!(written, expected);
        }
    }
}
