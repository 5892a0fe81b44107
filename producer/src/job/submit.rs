//! Submitting a job: the manifest first, then every sub-task, each delivery
//! awaited.
//!
//! Sub-tasks are published like any task, through the [`Router`](crate::Router):
//! the job's [`SubTasks`] options (priority, expected time, resources) send
//! them to their priority lane, the long-task lane or a pool's topics
//! (docs/SCHEDULING.md), and the gatherer collects their results wherever they ran.
//!
//! The manifest goes first so that a gatherer never waits long for it. If some
//! sub-tasks cannot be published, the job could never finish; the submitter then
//! publishes a failed job result itself, so that the job ends (as failed, saying
//! which sub-tasks are missing) instead of waiting for ever.

use crate::input::Outgoing;
use crate::job::split::{Split, SplitError};
use crate::publisher::{PublishError, Publisher};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::Value;
use sluice_common::job::{FailurePolicy, GatherSpec, JobRecord, JobResult, JobState, Manifest};
use sluice_common::task::{new_task_id, now_ms};
use sluice_common::{kafka, Config, JobRef, Task, TraceContext};
use std::time::Duration;

/// Deliveries awaited at once.
const WINDOW: usize = 20_000;

/// What to submit.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Job id; a new UUIDv7 when `None`.
    pub id: Option<String>,
    /// Kind of every sub-task.
    pub kind: String,
    /// How the input is split.
    pub split: Split,
    /// How results combine.
    pub gather: GatherSpec,
    /// When failures fail the job.
    pub failure: FailurePolicy,
    /// What every sub-task carries for scheduling.
    pub sub_tasks: SubTasks,
}

/// The scheduling fields every sub-task of a job carries, as on a single task
/// (docs/WIRE.md); they pick the sub-tasks' topic as they would a task's.
#[derive(Debug, Clone, Default)]
pub struct SubTasks {
    /// `priority`: the lane, and the order within a worker.
    pub priority: Option<i32>,
    /// `expected_ms`: the long-task lane, shortest-expected-first.
    pub expected_ms: Option<u64>,
    /// `resources`: needs against a worker's capacity; `class` picks the pool.
    pub resources: Option<Value>,
}

impl SubTasks {
    /// Sub-task `index` of `manifest`'s job.
    fn task(&self, manifest: &Manifest, index: u64, payload: Value) -> Task {
        let mut task = Task::new(manifest.kind.clone(), payload);
        task.id = Some(format!("{}/{index}", manifest.job_id));
        task.job = Some(JobRef {
            id: manifest.job_id.clone(),
            index,
            total: manifest.total,
        });
        task.priority = self.priority;
        task.expected_ms = self.expected_ms;
        task.resources = self.resources.clone();
        task
    }
}

/// Why a job was not (completely) submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The split spec or its input is unusable; nothing was published.
    #[error(transparent)]
    Split(#[from] SplitError),
    /// Nothing was published (the manifest was refused, or setup failed).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Some sub-tasks were not published; the job was ended as failed.
    #[error("job {job_id}: {missing} of {total} sub-tasks could not be published (first error: {cause}); the job was marked failed, submit it again")]
    Incomplete {
        /// The job.
        job_id: String,
        /// Sub-tasks not published.
        missing: u64,
        /// Sub-tasks in all.
        total: u64,
        /// The first delivery error.
        cause: String,
    },
}

/// Publishes jobs.
pub struct Submitter {
    publisher: Publisher,
    producer: FutureProducer,
    jobs_topic: String,
}

impl Submitter {
    /// Connects, routing sub-tasks as [`Publisher::routed`] does, and makes
    /// sure the task and jobs topics exist.
    pub async fn connect(cfg: &Config) -> Result<Submitter, PublishError> {
        kafka::ensure_topics(cfg, &[&cfg.topics.jobs]).await?;
        Ok(Submitter {
            publisher: Publisher::routed(cfg).await?,
            producer: kafka::producer(cfg, "sluice-jobs")?,
            jobs_topic: cfg.topics.jobs.clone(),
        })
    }

    /// The manifest `spec` would get with `total` sub-tasks; an error when its
    /// sub-task options are unusable (malformed `resources`).
    pub fn manifest(&self, spec: &JobSpec, total: u64) -> Result<Manifest, PublishError> {
        let mut manifest = Manifest {
            job_id: spec.id.clone().unwrap_or_else(new_task_id),
            kind: spec.kind.clone(),
            total,
            split: spec.split.to_string(),
            gather: spec.gather.clone(),
            failure: spec.failure,
            task_topic: String::new(),
            submitted_ms: now_ms(),
        };
        // Every sub-task has the same scheduling fields, so one topic.
        let sample = spec.sub_tasks.task(&manifest, 0, Value::Null);
        manifest.task_topic = self.publisher.topic_for(&Outgoing::new(sample, None))?;
        Ok(manifest)
    }

    /// Publishes `manifest` and one sub-task per payload (`payloads.len()` must be
    /// `manifest.total`), each with the scheduling fields of `sub_tasks`; `sent`
    /// is called as deliveries are confirmed. All sub-tasks carry one trace:
    /// `trace` continued, or a new one for the job.
    pub async fn submit(
        &self,
        manifest: &Manifest,
        sub_tasks: &SubTasks,
        payloads: Vec<Value>,
        trace: Option<TraceContext>,
        mut sent: impl FnMut(u64),
    ) -> Result<(), SubmitError> {
        let trace = trace.unwrap_or_else(TraceContext::new_root);
        assert_eq!(
            payloads.len() as u64,
            manifest.total,
            "one payload per sub-task"
        );
        self.record(&JobRecord::Manifest(manifest.clone()))
            .await
            .map_err(PublishError::Delivery)?;
        let mut pending = FuturesUnordered::new();
        let mut failed: Vec<String> = Vec::new();
        for (index, payload) in payloads.into_iter().enumerate() {
            while pending.len() >= WINDOW {
                settle(pending.next().await, &mut failed, &mut sent);
            }
            let task = sub_tasks.task(manifest, index as u64, payload);
            let out = Outgoing::new(task, None).with_trace(Some(trace));
            match self.publisher.send(&out, None).await {
                Ok(delivery) => pending.push(delivery),
                Err(e) => failed.push(e.to_string()),
            }
        }
        while let Some(r) = pending.next().await {
            settle(Some(r), &mut failed, &mut sent);
        }
        if failed.is_empty() {
            return Ok(());
        }
        let missing = failed.len() as u64;
        let cause = failed.swap_remove(0);
        let ended = JobResult {
            job_id: manifest.job_id.clone(),
            kind: manifest.kind.clone(),
            total: manifest.total,
            state: JobState::Failed,
            succeeded: 0,
            failed: 0,
            failures: vec![],
            output: None,
            error: Some(format!(
                "submission incomplete: {missing} of {} sub-tasks were not published ({cause})",
                manifest.total
            )),
            gathered_by: "submitter".into(),
            finished_ms: now_ms(),
        };
        if let Err(e) = self.record(&JobRecord::Result(ended)).await {
            tracing::error!(error = %e, job.id = %manifest.job_id, "could not mark the incomplete job failed");
        }
        Err(SubmitError::Incomplete {
            job_id: manifest.job_id.clone(),
            missing,
            total: manifest.total,
            cause,
        })
    }

    /// Publishes a record on the jobs topic and waits for it to be durable.
    async fn record(&self, record: &JobRecord) -> Result<(), String> {
        let value = record.encode();
        let r = FutureRecord::to(&self.jobs_topic)
            .key(record.job_id().as_bytes())
            .payload(&value);
        self.producer
            .send(r, Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.to_string())
    }

    /// Waits for everything enqueued to be delivered.
    pub fn flush(&self, timeout: Duration) {
        self.publisher.flush(timeout);
    }
}

fn settle<T>(
    r: Option<Result<T, PublishError>>,
    failed: &mut Vec<String>,
    sent: &mut impl FnMut(u64),
) {
    match r {
        Some(Ok(_)) => sent(1),
        Some(Err(e)) => failed.push(e.to_string()),
        None => {}
    }
}
