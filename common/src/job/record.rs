//! The records of the jobs topic: a job's manifest and its result. Both are JSON
//! objects keyed by job id, told apart by their `type` field.

use crate::job::gather::GatherSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Failed sub-tasks listed in a job result at most; the count is always complete.
pub const MAX_LISTED_FAILURES: usize = 100;

/// A record on the jobs topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobRecord {
    /// What was submitted; published before any sub-task.
    Manifest(Manifest),
    /// How the job ended; published by the gatherer.
    Result(JobResult),
}

impl JobRecord {
    /// The job this record is about (also its Kafka key).
    pub fn job_id(&self) -> &str {
        match self {
            JobRecord::Manifest(m) => &m.job_id,
            JobRecord::Result(r) => &r.job_id,
        }
    }

    /// The record value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job record always serializes")
    }

    /// Reads a record value; the error says why it is not a job record.
    pub fn decode(bytes: &[u8]) -> Result<JobRecord, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a job record: {e}"))
    }
}

/// When sub-task failures fail the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailurePolicy {
    /// Failed sub-tasks the job tolerates; with more, it fails. Tolerated failures
    /// are left out of the gather (they are `null` in `collect`).
    pub tolerate: u64,
    /// Fail the job as soon as failures exceed `tolerate`, instead of waiting for
    /// every sub-task so that the job result lists all failures.
    pub fail_fast: bool,
}

/// What was submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Job id; sub-task ids are `<job id>/<index>`.
    pub job_id: String,
    /// Kind of every sub-task.
    pub kind: String,
    /// Number of sub-tasks.
    pub total: u64,
    /// The split spec as given, e.g. `range:1..5`.
    pub split: String,
    /// How results are combined.
    pub gather: GatherSpec,
    /// When failures fail the job.
    pub failure: FailurePolicy,
    /// Task topic the sub-tasks were published to.
    pub task_topic: String,
    /// When the job was submitted, Unix epoch ms.
    pub submitted_ms: u64,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Every sub-task ended, failures stayed within the policy, the gather worked.
    Succeeded,
    /// Too many sub-tasks failed, or the gather failed.
    Failed,
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        })
    }
}

/// One failed sub-task, as listed in a job result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubFailure {
    /// Sub-task index.
    pub index: u64,
    /// Sub-task id.
    pub task_id: String,
    /// Its terminal status (`failed`, `dead_lettered`, `expired` or `cancelled`).
    pub status: crate::Status,
    /// Why.
    pub error: String,
}

/// How a job ended: the gatherer's verdict and combined output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// Job id.
    pub job_id: String,
    /// Sub-task kind.
    pub kind: String,
    /// Number of sub-tasks.
    pub total: u64,
    /// Outcome.
    pub state: JobState,
    /// Sub-tasks that succeeded when the job was decided.
    pub succeeded: u64,
    /// Sub-tasks that failed when the job was decided.
    pub failed: u64,
    /// Failed sub-tasks by index, the first [`MAX_LISTED_FAILURES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<SubFailure>,
    /// The gathered output, when the job succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why the job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Worker whose gatherer decided the job (may differ between duplicates).
    pub gathered_by: String,
    /// When the job was decided, Unix epoch ms (may differ between duplicates).
    pub finished_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_carry_their_type() {
        let m = JobRecord::Manifest(Manifest {
            job_id: "j".into(),
            kind: "square".into(),
            total: 5,
            split: "range:1..5".into(),
            gather: GatherSpec::Collect,
            failure: FailurePolicy::default(),
            task_topic: "t".into(),
            submitted_ms: 1,
        });
        let v: Value = serde_json::from_slice(&m.encode()).unwrap();
        assert_eq!(v["type"], "manifest");
        assert_eq!(v["gather"], "collect");
        assert_eq!(v["failure"], json!({"tolerate": 0, "fail_fast": false}));
        assert_eq!(JobRecord::decode(&m.encode()).unwrap(), m);
        let e = JobRecord::decode(br#"{"type":"other"}"#).unwrap_err();
        assert!(e.starts_with("not a job record"), "{e}");
    }
}
