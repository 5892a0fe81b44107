//! Job state, folded from the jobs topic (manifests, job results) and the results
//! topic (sub-task results), by the same rules the gatherer uses: the first result
//! per sub-task index counts, the first job result per job counts.

use crate::reader::{Start, Step, TopicReader};
use crate::results::{Next, ResultReader};
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_common::job::{JobRecord, JobResult, Manifest, SubFailure, Tally};
use sluice_common::{Config, TaskResult};
use std::collections::BTreeMap;
use std::time::Duration;

/// What is known of one job.
#[derive(Debug, Clone, Default)]
pub struct JobView {
    /// The manifest, once read.
    pub manifest: Option<Manifest>,
    /// The first job result, once published.
    pub result: Option<JobResult>,
    /// Sub-task results read so far.
    pub tally: Option<Tally>,
}

/// A job's state as `sluice job status` shows it (one JSON object with `--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Job id.
    pub job_id: String,
    /// Sub-task kind.
    pub kind: String,
    /// Sub-tasks in all.
    pub total: u64,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Sub-tasks succeeded (when decided, for a finished job).
    pub succeeded: u64,
    /// Sub-tasks failed (when decided, for a finished job).
    pub failed: u64,
    /// Sub-tasks without a result: queued or running (0 once finished).
    pub running: u64,
    /// Split spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Gather spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gather: Option<String>,
    /// When it was submitted, Unix epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_ms: Option<u64>,
    /// When it was decided, Unix epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The worker that gathered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gathered_by: Option<String>,
    /// Failed sub-tasks (the first 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<SubFailure>,
    /// The gathered output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JobStatus {
    /// Whether the job has a result.
    pub fn finished(&self) -> bool {
        self.state != "running"
    }
}

/// Jobs by id.
#[derive(Debug, Default)]
pub struct JobBook {
    only: Option<String>,
    jobs: BTreeMap<String, JobView>,
}

impl JobBook {
    /// A book of every job, or of job `only`.
    pub fn new(only: Option<String>) -> JobBook {
        JobBook {
            only,
            jobs: BTreeMap::new(),
        }
    }

    fn view(&mut self, id: &str) -> Option<&mut JobView> {
        if self.only.as_deref().is_some_and(|o| o != id) {
            return None;
        }
        Some(self.jobs.entry(id.to_string()).or_default())
    }

    /// Folds in a record of the jobs topic; the error says why it is not one.
    pub fn on_job_record(&mut self, bytes: &[u8]) -> Result<(), String> {
        match JobRecord::decode(bytes)? {
            JobRecord::Manifest(m) => {
                if let Some(v) = self.view(&m.job_id.clone()) {
                    v.tally.get_or_insert_with(|| Tally::new(m.total));
                    v.manifest.get_or_insert(m);
                }
            }
            JobRecord::Result(r) => {
                if let Some(v) = self.view(&r.job_id.clone()) {
                    v.result.get_or_insert(r);
                }
            }
        }
        Ok(())
    }

    /// Folds in a sub-task result (other results are ignored).
    pub fn on_result(&mut self, r: &TaskResult) {
        let Some(job) = &r.job else { return };
        if let Some(v) = self.view(&job.id) {
            v.tally
                .get_or_insert_with(|| Tally::new(job.total))
                .record(r);
        }
    }

    /// Whether some job is known and every known job has a result.
    pub fn all_finished(&self) -> bool {
        !self.jobs.is_empty() && self.jobs.values().all(|v| v.result.is_some())
    }

    /// The status of job `id`, when anything is known of it.
    pub fn status(&self, id: &str) -> Option<JobStatus> {
        let v = self.jobs.get(id)?;
        let m = v.manifest.as_ref();
        let mut s = JobStatus {
            job_id: id.to_string(),
            kind: m.map(|m| m.kind.clone()).unwrap_or_default(),
            total: m
                .map(|m| m.total)
                .or(v.tally.as_ref().map(Tally::total))
                .unwrap_or(0),
            state: "running".into(),
            succeeded: 0,
            failed: 0,
            running: 0,
            split: m.map(|m| m.split.clone()),
            gather: m.map(|m| m.gather.to_string()),
            submitted_ms: m.map(|m| m.submitted_ms),
            finished_ms: None,
            gathered_by: None,
            failures: vec![],
            output: None,
            error: None,
        };
        match (&v.result, &v.tally) {
            (Some(r), _) => {
                s.kind = r.kind.clone();
                s.total = r.total;
                s.state = r.state.to_string();
                s.succeeded = r.succeeded;
                s.failed = r.failed;
                s.finished_ms = Some(r.finished_ms);
                s.gathered_by = Some(r.gathered_by.clone());
                s.failures = r.failures.clone();
                s.output = r.output.clone();
                s.error = r.error.clone();
            }
            (None, Some(t)) => {
                s.succeeded = t.succeeded();
                s.failed = t.failed();
                s.running = t.running();
                s.failures = t.failures();
            }
            (None, None) => {}
        }
        Some(s)
    }

    /// Every job with a manifest, oldest first.
    pub fn list(&self) -> Vec<JobStatus> {
        let mut all: Vec<JobStatus> = self
            .jobs
            .iter()
            .filter(|(_, v)| v.manifest.is_some())
            .filter_map(|(id, _)| self.status(id))
            .collect();
        all.sort_by_key(|s| (s.submitted_ms, s.job_id.clone()));
        all
    }
}

/// Reads the jobs and results topics into a [`JobBook`].
pub struct JobWatch {
    jobs: TopicReader,
    results: ResultReader,
    book: JobBook,
}

impl JobWatch {
    /// Opens both topics of `cfg` at `start`, for job `only` or every job.
    pub async fn open(
        cfg: &Config,
        only: Option<String>,
        start: Start,
    ) -> Result<JobWatch, sluice_common::Error> {
        Ok(JobWatch {
            jobs: TopicReader::open(cfg, &cfg.topics.jobs, start).await?,
            results: ResultReader::open(cfg, start).await?,
            book: JobBook::new(only),
        })
    }

    /// What has been read.
    pub fn book(&self) -> &JobBook {
        &self.book
    }

    /// Reads both topics up to their ends (or until nothing arrives for `idle`).
    /// The results topic is skipped when every job read has a result already:
    /// then sub-task results change nothing that is shown.
    pub async fn read_to_end(&mut self, idle: Duration) {
        while let Step::Record(m) = self.jobs.next(idle).await {
            self.job_record(m.payload());
        }
        if self.book.all_finished() {
            return;
        }
        loop {
            match self.results.next(idle).await {
                Next::Result(r) => self.book.on_result(&r),
                Next::Invalid(_) => {}
                Next::CaughtUp | Next::Idle => break,
            }
        }
    }

    /// Reads whatever arrives on either topic within `wait`.
    pub async fn poll(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::select! {
                s = self.jobs.next(left) => if let Step::Record(m) = s { self.job_record(m.payload()) },
                n = self.results.next(left) => if let Next::Result(r) = n { self.book.on_result(&r) },
            }
        }
    }

    fn job_record(&mut self, payload: Option<&[u8]>) {
        if let Err(e) = self.book.on_job_record(payload.unwrap_or_default()) {
            tracing::warn!(error = %e, "skipping a record on the jobs topic");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_common::job::{FailurePolicy, GatherSpec, JobState};
    use sluice_common::{JobRef, Status};

    fn manifest(id: &str, total: u64) -> Vec<u8> {
        JobRecord::Manifest(Manifest {
            job_id: id.into(),
            kind: "square".into(),
            total,
            split: format!("range:1..{total}"),
            gather: GatherSpec::Sum,
            failure: FailurePolicy::default(),
            task_topic: "t".into(),
            submitted_ms: 10,
        })
        .encode()
    }

    fn result(job: &str, index: u64, total: u64, status: Status) -> TaskResult {
        TaskResult {
            task_id: format!("{job}/{index}"),
            kind: "square".into(),
            status,
            output: Some(json!(index)),
            error: (status != Status::Succeeded).then(|| "boom".into()),
            attempts: 1,
            worker: "w".into(),
            topic: "t".into(),
            partition: 0,
            offset: 0,
            created_ms: None,
            started_ms: 0,
            finished_ms: 0,
            job: Some(JobRef {
                id: job.into(),
                index,
                total,
            }),
        }
    }

    fn ended(id: &str, output: i64, by: &str) -> Vec<u8> {
        JobRecord::Result(JobResult {
            job_id: id.into(),
            kind: "square".into(),
            total: 2,
            state: JobState::Succeeded,
            succeeded: 2,
            failed: 0,
            failures: vec![],
            output: Some(json!(output)),
            error: None,
            gathered_by: by.into(),
            finished_ms: 20,
        })
        .encode()
    }

    #[test]
    fn a_running_job_shows_its_tally_and_a_finished_one_its_first_result() {
        let mut book = JobBook::new(None);
        book.on_job_record(&manifest("a", 2)).unwrap();
        book.on_result(&result("a", 0, 2, Status::Failed));
        book.on_result(&result("a", 0, 2, Status::Succeeded));
        book.on_result(&result("other", 0, 1, Status::Succeeded));
        book.on_result(&result("plain", 0, 1, Status::Succeeded));
        let s = book.status("a").unwrap();
        assert_eq!(
            (s.state.as_str(), s.succeeded, s.failed, s.running),
            ("running", 0, 1, 1)
        );
        assert_eq!(s.failures[0].error, "boom");
        assert!(!book.all_finished());

        book.on_job_record(&ended("a", 1, "w1")).unwrap();
        book.on_job_record(&ended("a", 99, "w2")).unwrap();
        let s = book.status("a").unwrap();
        assert_eq!(s.state, "succeeded");
        assert_eq!(
            (s.output, s.gathered_by.as_deref()),
            (Some(json!(1)), Some("w1"))
        );
        assert_eq!(s.submitted_ms, Some(10));
        // Jobs without a manifest are not listed.
        assert_eq!(book.list().len(), 1);
        assert!(book.on_job_record(b"{}").is_err());
    }

    #[test]
    fn a_book_for_one_job_ignores_the_others() {
        let mut book = JobBook::new(Some("a".into()));
        book.on_job_record(&manifest("b", 2)).unwrap();
        book.on_result(&result("b", 0, 2, Status::Succeeded));
        assert!(book.status("b").is_none());
        assert!(!book.all_finished(), "nothing known of `a`: keep reading");
        book.on_job_record(&ended("a", 1, "w1")).unwrap();
        assert!(book.all_finished());
    }
}
