//! Running one task: decode, look up the handler, run it (panics caught), build
//! the result, make it durable, report completion to the poll thread.

use crate::admission::Admission;
use crate::consumer::{Completion, Incoming};
use crate::counters::Counters;
use crate::handler::{HandlerError, Registry, TaskContext};
use crate::results::ResultSink;
use futures::FutureExt;
use sluice_common::task::now_ms;
use sluice_common::{Coordinates, Status, Task, TaskResult};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything a task run needs, shared by all runs of one worker.
pub(crate) struct Executor {
    pub registry: Registry,
    pub sink: ResultSink,
    pub worker_id: String,
    pub max_task_bytes: usize,
    pub admission: Arc<Admission>,
    pub completions: mpsc::Sender<Completion>,
    /// Cancelled when the shutdown deadline passes: stop retrying deliveries.
    pub give_up: CancellationToken,
    pub counters: Arc<Counters>,
}

impl Executor {
    /// Runs the handler for `inc`; `None` when the task must not run here (see
    /// [`Admission`]), in which case it was handed back.
    pub async fn execute_record(&self, inc: &Incoming) -> Option<TaskResult> {
        if self
            .admission
            .admit(&inc.topic, inc.partition, inc.epoch, inc.offset)
        {
            Some(self.execute(inc).await)
        } else {
            self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
            self.complete(inc, false);
            None
        }
    }

    /// Makes `result` durable, then reports the record done to the poll thread.
    pub async fn deliver(&self, inc: Incoming, result: TaskResult) {
        let delivered = self.sink.deliver(&result, &self.give_up).await;
        if let Some(status) = delivered {
            self.counters.finished(status);
        }
        self.complete(&inc, delivered.is_some());
    }

    fn complete(&self, inc: &Incoming, done: bool) {
        let _ = self.completions.send(Completion {
            topic: inc.topic.clone(),
            partition: inc.partition,
            offset: inc.offset,
            epoch: inc.epoch,
            done,
        });
    }

    async fn execute(&self, inc: &Incoming) -> TaskResult {
        let coords = Coordinates {
            topic: inc.topic.to_string(),
            partition: inc.partition,
            offset: inc.offset,
        };
        let started_ms = now_ms();
        let record_ms = inc.timestamp_ms.and_then(|t| u64::try_from(t).ok());
        let task = match Task::decode(inc.value.as_deref(), self.max_task_bytes) {
            Ok(t) => t,
            Err(e) => {
                let id = coords.derived_id();
                tracing::warn!(error = %e, task.id = %id, "unreadable task record");
                return self.result(
                    &coords,
                    id,
                    None,
                    record_ms,
                    started_ms,
                    Status::Failed,
                    None,
                    Some(e.to_string()),
                );
            }
        };
        let id = task.id.clone().unwrap_or_else(|| coords.derived_id());
        let created_ms = task.created_ms.or(record_ms);
        let span = tracing::info_span!("task", task.id = %id, kind = %task.kind, partition = inc.partition, offset = inc.offset, attempt = task.attempt());
        let outcome = self.call(&task, &id, inc).instrument(span.clone()).await;
        let _enter = span.enter();
        match outcome {
            Ok(output) => {
                tracing::debug!("task succeeded");
                self.result(
                    &coords,
                    id,
                    Some(&task),
                    created_ms,
                    started_ms,
                    Status::Succeeded,
                    Some(output),
                    None,
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "task failed");
                self.result(
                    &coords,
                    id,
                    Some(&task),
                    created_ms,
                    started_ms,
                    Status::Failed,
                    None,
                    Some(e.to_string()),
                )
            }
        }
    }

    async fn call(
        &self,
        task: &Task,
        id: &str,
        inc: &Incoming,
    ) -> Result<serde_json::Value, HandlerError> {
        let Some(handler) = self.registry.get(&task.kind) else {
            return Err(HandlerError::permanent(format!(
                "unknown kind `{}`; this worker runs: {}",
                task.kind,
                self.registry.kinds().join(", ")
            )));
        };
        let ctx = TaskContext {
            id: id.to_string(),
            kind: task.kind.clone(),
            payload: task.payload.clone(),
            attempt: task.attempt(),
            key: inc
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            job: task.job.clone(),
        };
        match AssertUnwindSafe(handler.handle(ctx)).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                Err(HandlerError::retryable(format!("handler panicked: {msg}")))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        coords: &Coordinates,
        task_id: String,
        task: Option<&Task>,
        created_ms: Option<u64>,
        started_ms: u64,
        status: Status,
        output: Option<serde_json::Value>,
        error: Option<String>,
    ) -> TaskResult {
        TaskResult {
            task_id,
            kind: task.map(|t| t.kind.clone()).unwrap_or_default(),
            status,
            output,
            error,
            attempts: task.map_or(1, Task::attempt),
            worker: self.worker_id.clone(),
            topic: coords.topic.clone(),
            partition: coords.partition,
            offset: coords.offset,
            created_ms,
            started_ms,
            finished_ms: now_ms(),
            job: task.and_then(|t| t.job.clone()),
        }
    }
}
