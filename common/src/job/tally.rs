//! A job's sub-task outcomes, folded from the results topic, and what they mean
//! under the job's failure policy.

use crate::job::record::{
    FailurePolicy, JobResult, JobState, Manifest, SubFailure, MAX_LISTED_FAILURES,
};
use crate::task::now_ms;
use crate::{Status, TaskResult};
use serde_json::Value;
use std::collections::BTreeMap;

/// The outcome of one sub-task.
#[derive(Debug, Clone, PartialEq)]
struct Sub {
    task_id: String,
    status: Status,
    output: Option<Value>,
    error: Option<String>,
}

/// Sub-task outcomes of one job. The first result per index counts; later ones
/// (a sub-task run again after a crash) are ignored, so every reader of the same
/// partition arrives at the same tally.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tally {
    total: u64,
    subs: BTreeMap<u64, Sub>,
    failed: u64,
}

/// What a tally means for its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Sub-tasks are still running and nothing is decided.
    Running,
    /// Every sub-task ended and failures are within the policy: gather now.
    Gather,
    /// The job failed; the reason.
    Fail(String),
}

impl Tally {
    /// A tally for a job of `total` sub-tasks.
    pub fn new(total: u64) -> Tally {
        Tally {
            total,
            ..Tally::default()
        }
    }

    /// Counts `r` when it is the first result of one of this job's sub-tasks.
    /// Returns whether it counted.
    pub fn record(&mut self, r: &TaskResult) -> bool {
        let Some(job) = &r.job else { return false };
        // A result whose total disagrees was not published by this job's submitter.
        if job.total != self.total || job.index >= self.total || self.subs.contains_key(&job.index)
        {
            return false;
        }
        if r.status != Status::Succeeded {
            self.failed += 1;
        }
        self.subs.insert(
            job.index,
            Sub {
                task_id: r.task_id.clone(),
                status: r.status,
                output: r.output.clone(),
                error: r.error.clone(),
            },
        );
        true
    }

    /// Number of sub-tasks.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Sub-tasks with a result.
    pub fn done(&self) -> u64 {
        self.subs.len() as u64
    }

    /// Sub-tasks that did not succeed (`failed`, `dead_lettered`, `expired`, or
    /// `cancelled` after the job ended).
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Sub-tasks that succeeded.
    pub fn succeeded(&self) -> u64 {
        self.done() - self.failed
    }

    /// Sub-tasks without a result yet: queued or running.
    pub fn running(&self) -> u64 {
        self.total - self.done()
    }

    /// What the job's state is under `policy`.
    pub fn verdict(&self, policy: &FailurePolicy) -> Verdict {
        let all_done = self.done() == self.total;
        if self.failed > policy.tolerate && (policy.fail_fast || all_done) {
            return Verdict::Fail(format!(
                "{} of {} sub-tasks failed; the job tolerates {}",
                self.failed, self.total, policy.tolerate
            ));
        }
        if all_done {
            Verdict::Gather
        } else {
            Verdict::Running
        }
    }

    /// Outputs in index order; `None` for failed sub-tasks.
    pub fn outputs(&self) -> Vec<Option<Value>> {
        (0..self.total)
            .map(|i| {
                self.subs
                    .get(&i)
                    .filter(|s| s.status == Status::Succeeded)
                    .map(|s| s.output.clone().unwrap_or(Value::Null))
            })
            .collect()
    }

    /// The first [`MAX_LISTED_FAILURES`] failed sub-tasks, by index.
    pub fn failures(&self) -> Vec<SubFailure> {
        self.subs
            .iter()
            .filter(|(_, s)| s.status != Status::Succeeded)
            .take(MAX_LISTED_FAILURES)
            .map(|(i, s)| SubFailure {
                index: *i,
                task_id: s.task_id.clone(),
                status: s.status,
                error: s.error.clone().unwrap_or_default(),
            })
            .collect()
    }

    /// The job result: `outcome` is the gathered output or why the job failed.
    pub fn conclude(
        &self,
        manifest: &Manifest,
        outcome: Result<Value, String>,
        gathered_by: &str,
    ) -> JobResult {
        let (state, output, error) = match outcome {
            Ok(v) => (JobState::Succeeded, Some(v), None),
            Err(e) => (JobState::Failed, None, Some(e)),
        };
        JobResult {
            job_id: manifest.job_id.clone(),
            kind: manifest.kind.clone(),
            total: manifest.total,
            state,
            succeeded: self.succeeded(),
            failed: self.failed(),
            failures: self.failures(),
            output,
            error,
            gathered_by: gathered_by.to_string(),
            finished_ms: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobRef;
    use serde_json::json;

    fn result(index: u64, status: Status, output: Value) -> TaskResult {
        TaskResult {
            task_id: format!("j/{index}"),
            kind: "k".into(),
            status,
            output: (status == Status::Succeeded).then_some(output),
            error: (status != Status::Succeeded).then(|| format!("boom {index}")),
            attempts: 1,
            worker: "w".into(),
            topic: "t".into(),
            partition: 0,
            offset: index as i64,
            created_ms: None,
            started_ms: 0,
            finished_ms: 0,
            job: Some(JobRef {
                id: "j".into(),
                index,
                total: 3,
            }),
        }
    }

    #[test]
    fn the_first_result_per_index_counts() {
        let mut t = Tally::new(3);
        assert!(t.record(&result(1, Status::Failed, Value::Null)));
        assert!(
            !t.record(&result(1, Status::Succeeded, json!(5))),
            "a rerun does not count"
        );
        assert!(
            !t.record(&result(7, Status::Succeeded, json!(5))),
            "index out of range"
        );
        let mut other = result(2, Status::Succeeded, json!(5));
        other.job.as_mut().unwrap().total = 9;
        assert!(
            !t.record(&other),
            "a different total is another job's record"
        );
        assert!(t.record(&result(0, Status::Succeeded, json!(2))));
        assert_eq!(
            (t.done(), t.failed(), t.succeeded(), t.running()),
            (2, 1, 1, 1)
        );
        assert_eq!(t.outputs(), vec![Some(json!(2)), None, None]);
        assert_eq!(t.failures()[0].error, "boom 1");
    }

    #[test]
    fn policy_tolerates_or_fails_fast() {
        let mut t = Tally::new(3);
        t.record(&result(0, Status::Failed, Value::Null));
        let wait = FailurePolicy {
            tolerate: 0,
            fail_fast: false,
        };
        let fast = FailurePolicy {
            tolerate: 0,
            fail_fast: true,
        };
        let lenient = FailurePolicy {
            tolerate: 1,
            fail_fast: true,
        };
        assert_eq!(
            t.verdict(&wait),
            Verdict::Running,
            "waits to list every failure"
        );
        assert!(
            matches!(t.verdict(&fast), Verdict::Fail(ref m) if m == "1 of 3 sub-tasks failed; the job tolerates 0")
        );
        assert_eq!(t.verdict(&lenient), Verdict::Running);
        t.record(&result(1, Status::Succeeded, json!(1)));
        t.record(&result(2, Status::DeadLettered, Value::Null));
        assert!(matches!(t.verdict(&wait), Verdict::Fail(_)));
        assert!(
            matches!(t.verdict(&lenient), Verdict::Fail(_)),
            "2 failures > 1"
        );
        let mut ok = Tally::new(3);
        ok.record(&result(0, Status::Succeeded, json!(1)));
        ok.record(&result(1, Status::Succeeded, json!(1)));
        assert_eq!(ok.verdict(&wait), Verdict::Running);
        ok.record(&result(2, Status::Expired, Value::Null));
        assert_eq!(
            ok.verdict(&FailurePolicy {
                tolerate: 1,
                fail_fast: false
            }),
            Verdict::Gather
        );
    }
}
