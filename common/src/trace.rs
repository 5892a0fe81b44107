//! Trace context across Kafka: the W3C `traceparent` header.
//!
//! A producer puts a `traceparent` header on every task record. It continues the
//! caller's trace when one is given and starts a new trace otherwise. The worker
//! reads the header, and the span of the task carries its `trace_id`. Everything
//! the worker writes for the task carries the same trace id with the worker as the
//! parent: the result, the retry record and the dead letter. So one trace id
//! follows a task from `sluice produce` through every attempt to its result, in
//! logs and in any tracing system that reads W3C headers. Only the header format
//! is implemented here, no exporter. The header format comes from the W3C Trace
//! Context recommendation (<https://www.w3.org/TR/trace-context/>): version `00`,
//! a 16-byte trace id, an 8-byte parent id and flags, in lowercase hex.

use std::fmt;

/// The Kafka header (and W3C field) name.
pub const HEADER: &str = "traceparent";

/// One position in a trace: the trace and the span that caused this record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, shared by every record of one task.
    pub trace_id: u128,
    /// The span that wrote the record (the producer's or the worker's).
    pub parent_id: u64,
    /// Whether the caller's tracing system sampled the trace (flag bit 0).
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace, sampled, with a random trace id and parent id.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: nonzero(rand::random()),
            parent_id: nonzero(rand::random()),
            sampled: true,
        }
    }

    /// The same trace with a new span as the parent: what a worker writes.
    pub fn child(&self) -> Self {
        TraceContext {
            parent_id: nonzero(rand::random()),
            ..*self
        }
    }

    /// Reads a `traceparent` value. Returns `None` for anything the
    /// recommendation says to ignore: wrong lengths, upper-case or non-hex
    /// digits, all-zero ids, version `ff`. A later version is read by its first
    /// four fields, as the recommendation asks.
    pub fn parse(value: &str) -> Option<Self> {
        let mut fields = value.split('-');
        let (version, trace, parent, flags) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let rest = fields.next();
        let hex = |s: &str, len: usize| {
            (s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then_some(())
        };
        hex(version, 2)?;
        if version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        hex(trace, 32)?;
        hex(parent, 16)?;
        hex(flags, 2)?;
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(TraceContext {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The trace id as 32 lowercase hex digits, as logs show it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl TraceContext {
    /// The `traceparent` value, without allocating. Written by hand: every
    /// result carries one, and `{:032x}` on a u128 cost about 2k instructions
    /// per result (callgrind, `sluice bench`).
    pub fn header_value(&self) -> [u8; 55] {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        lower_hex(&mut text[3..35], self.trace_id);
        lower_hex(&mut text[36..52], u128::from(self.parent_id));
        lower_hex(&mut text[53..55], u128::from(self.sampled));
        text
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.header_value();
        f.write_str(std::str::from_utf8(&text).expect("hex digits are ASCII"))
    }
}

/// Fills `out` with the low hex digits of `value`, most significant first.
fn lower_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Ids are never all zeros (the recommendation makes zero invalid).
fn nonzero<T: PartialEq + From<u8>>(v: T) -> T {
    if v == T::from(0) {
        T::from(1)
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recommendations_example_reads_and_writes_back() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(v).unwrap();
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.parent_id, 0x00f067aa0ba902b7);
        assert!(t.sampled);
        assert_eq!(t.to_string(), v);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn invalid_values_are_ignored() {
        for v in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(v), None, "{v:?}");
        }
        // A later version with more fields is read by its first four.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        assert!(!TraceContext::parse(later).unwrap().sampled);
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_parent() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(
            child.to_string(),
            format!("00-{:032x}-{:016x}-01", child.trace_id, child.parent_id),
            "the hand-written hex matches the formatter's"
        );
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.parent_id, root.parent_id);
        assert_eq!(TraceContext::parse(&child.to_string()), Some(child));
    }
}
