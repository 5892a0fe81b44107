//! Wire format v1: the task record and the result record.
//!
//! Both are UTF-8 JSON objects. Unknown fields are ignored when reading so that
//! newer producers and older workers (or foreign clients) interoperate; optional
//! fields are left out when writing. `docs/WIRE.md` is the reference for foreign
//! clients and must change together with this file.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

mod encode;

/// A unit of work, as carried in the value of a record on a task topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id. Optional on the wire: a worker derives `<topic>/<partition>/<offset>`
    /// for tasks published without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Which handler runs the task.
    pub kind: String,
    /// Handler input; `null` when absent.
    #[serde(default)]
    pub payload: Value,
    /// When the task was created, Unix epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
    /// Scheduling priority, any i32, default 0: higher runs first. The sign picks
    /// the lane (> 0 high, 0 normal, < 0 low, see [`crate::routing`]); within a
    /// lane of a worker, larger values start first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Per-attempt time limit in milliseconds (reserved for the reliability work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Unix epoch ms after which the task is no longer worth running (reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Unix epoch ms before which the task must not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Expected run time in milliseconds: orders tasks under
    /// shortest-expected-first and picks the long-task lane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_ms: Option<u64>,
    /// Declared resource needs, e.g. `{"cpu": 2, "memory_mb": 512}`, and an optional
    /// pool `class` ([`crate::resources::Needs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Value>,
    /// Attempt number, starting at 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Attempts allowed for this task, overriding the worker's per-kind setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Membership in a job made of sub-tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRef>,
}

impl Task {
    /// A task of `kind` with `payload`, no id and no optional fields.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        Task {
            id: None,
            kind: kind.into(),
            payload,
            created_ms: None,
            priority: None,
            timeout_ms: None,
            deadline_ms: None,
            not_before_ms: None,
            expected_ms: None,
            resources: None,
            attempt: None,
            max_attempts: None,
            job: None,
        }
    }

    /// The attempt number, 1 when the record does not say.
    pub fn attempt(&self) -> u32 {
        self.attempt.unwrap_or(1)
    }
}

/// How error messages name the type of a JSON value ("a string", "an object").
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A sub-task's place in its job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    /// Job id shared by all sub-tasks.
    pub id: String,
    /// Zero-based index of this sub-task.
    pub index: u64,
    /// Number of sub-tasks in the job.
    pub total: u64,
}

/// How a task ended. Every consumed task ends in exactly one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The handler returned an output.
    Succeeded,
    /// The handler (or the record itself) failed; `error` says why.
    Failed,
    /// The record was moved to the dead-letter topic.
    DeadLettered,
    /// The deadline passed before the task could run.
    Expired,
    /// Not run: the task's job had already ended (a fail-fast job failed).
    Cancelled,
}

impl Status {
    /// Every status, in display order.
    pub const ALL: [Status; 5] = [
        Status::Succeeded,
        Status::Failed,
        Status::DeadLettered,
        Status::Expired,
        Status::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::DeadLettered => "dead_lettered",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one task, as carried on the results topic (key: see [`TaskResult::key`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's id (derived from its coordinates when it had none).
    pub task_id: String,
    /// The task's kind; empty when the record could not be read.
    pub kind: String,
    /// Terminal status.
    pub status: Status,
    /// Handler output, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Human-readable reason, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts made, including the last one.
    pub attempts: u32,
    /// Id of the worker that produced this result.
    pub worker: String,
    /// Task record coordinates.
    pub topic: String,
    /// Task record partition.
    pub partition: i32,
    /// Task record offset.
    pub offset: i64,
    /// Task creation time, Unix epoch ms (from the task, else the record timestamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<u64>,
    /// When the handler started, Unix epoch ms.
    pub started_ms: u64,
    /// When the handler finished, Unix epoch ms.
    pub finished_ms: u64,
    /// The task's job membership, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRef>,
}

impl TaskResult {
    /// The Kafka key of the result record: the job id for a job's sub-tasks, so
    /// that all results of one job land on one partition (in one order, read by
    /// one gatherer); the task id otherwise.
    pub fn key(&self) -> &str {
        self.job.as_ref().map_or(&self.task_id, |j| &j.id)
    }
}

/// Where a record sits in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Coordinates {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

impl Coordinates {
    /// The id given to tasks that were published without one.
    pub fn derived_id(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// Why a record could not be read as a task.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The record has no value at all.
    #[error("record has no value (a tombstone); a task must be a JSON object")]
    Empty,
    /// The value exceeds the configured limit; it was not parsed.
    #[error("record value is {size} bytes, over the {limit}-byte task limit")]
    TooLarge {
        /// Value size in bytes.
        size: usize,
        /// Configured limit in bytes.
        limit: usize,
    },
    /// The value is not UTF-8 JSON of the task shape.
    #[error("record value is not a task: {0}")]
    Invalid(String),
}

impl Task {
    /// Reads a task from a record value, checking its size before parsing.
    pub fn decode(value: Option<&[u8]>, limit: usize) -> Result<Task, DecodeError> {
        let bytes = value.ok_or(DecodeError::Empty)?;
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        // Checked as UTF-8 once, then parsed as text: reading bytes, serde_json
        // checks every string it meets on its own (callgrind: about 80
        // instructions per string). Bytes that are not UTF-8 go the byte way,
        // for the same error message.
        let parsed = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(bytes),
        };
        let task: Task = parsed.map_err(|e| DecodeError::Invalid(describe(&e)))?;
        if task.kind.is_empty() {
            return Err(DecodeError::Invalid("field `kind` is empty".into()));
        }
        Ok(task)
    }

    /// The record value for this task.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a task always serializes")
    }
}

fn describe(err: &serde_json::Error) -> String {
    let msg = err.to_string();
    if msg.starts_with("missing field `kind`") {
        "field `kind` is missing (every task needs a kind)".into()
    } else {
        msg
    }
}

/// Now, in Unix epoch milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new unique task id: time-ordered (UUID v7), so ids sort by creation.
pub fn new_task_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minimal_task_reads_with_defaults() {
        let t = Task::decode(Some(br#"{"kind":"echo"}"#), 1024).unwrap();
        assert_eq!(t.kind, "echo");
        assert_eq!(t.payload, Value::Null);
        assert_eq!(t.id, None);
        assert_eq!(t.attempt(), 1);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let t = Task::decode(Some(br#"{"kind":"k","zzz":1,"id":"a"}"#), 1024).unwrap();
        assert_eq!(t.id.as_deref(), Some("a"));
    }

    #[test]
    fn full_task_round_trips() {
        let mut t = Task::new("cpu", json!({"iterations": 5}));
        t.id = Some("x".into());
        t.created_ms = Some(1);
        t.priority = Some(3);
        t.timeout_ms = Some(10);
        t.deadline_ms = Some(11);
        t.not_before_ms = Some(12);
        t.expected_ms = Some(13);
        t.resources = Some(json!({"cpu": 2}));
        t.attempt = Some(2);
        t.max_attempts = Some(4);
        t.job = Some(JobRef {
            id: "j".into(),
            index: 4,
            total: 9,
        });
        let back = Task::decode(Some(&t.encode()), 1 << 20).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn optional_fields_are_omitted_on_the_wire() {
        let v: Value = serde_json::from_slice(&Task::new("noop", Value::Null).encode()).unwrap();
        assert_eq!(v, json!({"kind": "noop", "payload": null}));
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        assert_eq!(Task::decode(None, 10), Err(DecodeError::Empty));
        assert_eq!(
            Task::decode(Some(b"0123456789a"), 10),
            Err(DecodeError::TooLarge {
                size: 11,
                limit: 10
            })
        );
        let e = Task::decode(Some(b"{\"payload\":1}"), 100).unwrap_err();
        assert!(e.to_string().contains("`kind` is missing"), "{e}");
        let e = Task::decode(Some(b"not json"), 100).unwrap_err();
        assert!(
            e.to_string().starts_with("record value is not a task"),
            "{e}"
        );
        let e = Task::decode(Some(br#"{"kind":""}"#), 100).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn result_uses_wire_status_names() {
        let r = TaskResult {
            task_id: "t".into(),
            kind: "k".into(),
            status: Status::DeadLettered,
            output: None,
            error: Some("boom".into()),
            attempts: 1,
            worker: "w".into(),
            topic: "sluice.tasks".into(),
            partition: 0,
            offset: 7,
            created_ms: None,
            started_ms: 1,
            finished_ms: 2,
            job: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "dead_lettered");
        assert!(v.get("output").is_none());
        let back: TaskResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn results_of_a_job_are_keyed_by_job_id() {
        let mut r = TaskResult {
            task_id: "j/3".into(),
            kind: "k".into(),
            status: Status::Succeeded,
            output: None,
            error: None,
            attempts: 1,
            worker: "w".into(),
            topic: "t".into(),
            partition: 0,
            offset: 0,
            created_ms: None,
            started_ms: 0,
            finished_ms: 0,
            job: None,
        };
        assert_eq!(r.key(), "j/3");
        r.job = Some(JobRef {
            id: "j".into(),
            index: 3,
            total: 4,
        });
        assert_eq!(r.key(), "j");
    }

    #[test]
    fn derived_ids_name_the_coordinates() {
        let c = Coordinates {
            topic: "t".into(),
            partition: 2,
            offset: 40,
        };
        assert_eq!(c.derived_id(), "t/2/40");
    }
}
