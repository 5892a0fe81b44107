//! Task input: flags or JSON lines, validated before anything is sent.
//!
//! A JSON line is a task object (wire format v1) plus an optional `key` field that
//! becomes the Kafka key. Lines are numbered from 1 so errors point at the line.

use serde_json::{Map, Value};
use sluice_common::task::{json_type, new_task_id, now_ms, Task};
use sluice_common::TraceContext;

/// A task ready to publish, with the Kafka key it is published under.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The task; `id` and `created_ms` are always set.
    pub task: Task,
    /// Kafka key: tasks with the same key keep their order.
    pub key: Option<String>,
    /// The trace the task continues (its `traceparent` header names the
    /// publisher as a child of this); `None` starts a new trace.
    pub trace: Option<TraceContext>,
}

impl Outgoing {
    /// Wraps a task, giving it an id and creation time when it has none.
    pub fn new(mut task: Task, key: Option<String>) -> Self {
        if task.id.is_none() {
            task.id = Some(new_task_id());
        }
        if task.created_ms.is_none() {
            task.created_ms = Some(now_ms());
        }
        Outgoing {
            task,
            key,
            trace: None,
        }
    }

    /// The same task, continuing `trace`.
    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// The task id.
    pub fn id(&self) -> &str {
        self.task.id.as_deref().unwrap_or_default()
    }
}

/// Why an input line was not sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// Valid JSON but not a task.
    #[error("not a task: {0}")]
    NotTask(String),
    /// Larger than the configured limit.
    #[error("task is {size} bytes, over the {limit}-byte limit (producer.max_task_bytes)")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        limit: usize,
    },
}

/// Parses one JSON line into a task.
pub fn parse_line(line: &str) -> Result<Outgoing, InputError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| InputError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(InputError::NotJson(format!("found {}", json_type(&value))));
    };
    let key = match obj.remove("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(InputError::NotTask(format!(
                "`key` must be a string, found {}",
                json_type(&other)
            )))
        }
    };
    let task = task_from(obj)?;
    Ok(Outgoing::new(task, key))
}

fn task_from(obj: Map<String, Value>) -> Result<Task, InputError> {
    let task: Task = serde_json::from_value(Value::Object(obj)).map_err(|e| {
        let msg = e.to_string();
        if msg.starts_with("missing field `kind`") {
            InputError::NotTask("field `kind` is missing".into())
        } else {
            InputError::NotTask(msg)
        }
    })?;
    if task.kind.is_empty() {
        return Err(InputError::NotTask("field `kind` is empty".into()));
    }
    Ok(task)
}

/// Checks the encoded size against the limit.
pub fn check_size(out: &Outgoing, limit: usize) -> Result<Vec<u8>, InputError> {
    let bytes = out.task.encode();
    if bytes.len() > limit {
        return Err(InputError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    Ok(bytes)
}

/// Renders line numbers as compact ranges: `1-3, 5, 7-9`.
pub fn ranges(lines: &[usize]) -> String {
    let mut sorted = lines.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_line_becomes_a_task_with_key_id_and_time() {
        let o = parse_line(r#"{"kind":"echo","payload":{"a":1},"key":"user-7"}"#).unwrap();
        assert_eq!(o.task.kind, "echo");
        assert_eq!(o.task.payload, json!({"a": 1}));
        assert_eq!(o.key.as_deref(), Some("user-7"));
        assert!(!o.id().is_empty());
        assert!(o.task.created_ms.is_some());
        // `key` is an envelope field, not part of the task record.
        let v: Value = serde_json::from_slice(&o.task.encode()).unwrap();
        assert!(v.get("key").is_none());
    }

    #[test]
    fn given_ids_are_kept() {
        assert_eq!(
            parse_line(r#"{"kind":"k","id":"mine"}"#).unwrap().id(),
            "mine"
        );
    }

    #[test]
    fn bad_lines_say_why() {
        let e = parse_line("{nope").unwrap_err();
        assert!(matches!(e, InputError::NotJson(_)));
        let e = parse_line("[1]").unwrap_err();
        assert_eq!(e.to_string(), "not a JSON object: found an array");
        let e = parse_line(r#"{"payload":1}"#).unwrap_err();
        assert_eq!(e.to_string(), "not a task: field `kind` is missing");
        let e = parse_line(r#"{"kind":"k","key":5}"#).unwrap_err();
        assert!(e.to_string().contains("`key` must be a string"));
    }

    #[test]
    fn oversized_tasks_are_rejected() {
        let o = parse_line(&format!(
            r#"{{"kind":"k","payload":"{}"}}"#,
            "x".repeat(100)
        ))
        .unwrap();
        assert!(matches!(
            check_size(&o, 50),
            Err(InputError::TooLarge { limit: 50, .. })
        ));
        assert!(check_size(&o, 1000).is_ok());
    }

    #[test]
    fn ranges_compact_line_numbers() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8, 9]), "1-3, 5, 7-9");
        assert_eq!(ranges(&[4]), "4");
        assert_eq!(ranges(&[]), "");
    }
}
