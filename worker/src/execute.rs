//! Running one record to its outcome: decode, wait for its start time, take a
//! scheduler slot, pass admission, run attempts (timeouts and panics caught),
//! and decide: a result, a dead letter, or a retry. Then make the outcome durable
//! and report the record done to the poll thread.
//!
//! Retries never block a partition. A task in an ordered lane (same key, or
//! `partition` mode) retries in place after its backoff: its lane waits, other
//! lanes flow. Any other task is re-published to the retry topic with the next
//! attempt number and a not-before time, and its offset moves on at once.

use crate::admission::Admission;
use crate::consumer::{Completion, Incoming};
use crate::counters::Counters;
use crate::ended_jobs::EndedJobs;
use crate::handler::{HandlerError, Registry, TaskContext};
use crate::outbox::{DeadLetter, Outbox};
use crate::retry::RetryPolicy;
use crate::scheduler::{Scheduler, Ticket};
use crate::valve::Valve;
use crate::writer::PendingResult;
use futures::FutureExt;
use serde_json::Value;
use sluice_common::config::WorkerConfig;
use sluice_common::metrics::KindMetrics;
use sluice_common::task::now_ms;
use sluice_common::{Coordinates, Metrics, Status, Task, TaskResult, TraceContext};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What a record led to.
pub(crate) enum Outcome {
    /// A terminal result; with a reason when the record also goes to the DLQ.
    Finished {
        result: Box<TaskResult>,
        dead_letter: Option<String>,
        /// The series of the result's kind, looked up once per record.
        labels: Arc<KindMetrics>,
    },
    /// The next attempt, for the retry topic.
    Requeue(Box<Task>),
}

/// Everything a task run needs, shared by all runs of one worker.
pub(crate) struct Executor {
    pub registry: Registry,
    pub outbox: Outbox,
    pub cfg: WorkerConfig,
    pub admission: Arc<Admission>,
    pub completions: mpsc::Sender<Completion>,
    /// Cancelled on shutdown: waits for start times end early.
    pub stopping: CancellationToken,
    /// Cancelled when the shutdown deadline passes: stop retrying and writing.
    pub give_up: CancellationToken,
    pub counters: Arc<Counters>,
    pub metrics: Arc<Metrics>,
    pub valve: Valve,
    /// Grants slots: lanes, queue policy, resources, rate limits.
    pub scheduler: Arc<Scheduler>,
    /// Jobs already decided: their left-over sub-tasks are not run.
    pub ended_jobs: Arc<EndedJobs>,
}

/// Facts about a record shared by every result it can produce.
struct Origin<'a> {
    /// Borrowed from the record: only a result copies the topic name.
    topic: &'a str,
    partition: i32,
    offset: i64,
    record_ms: Option<u64>,
}

impl Origin<'_> {
    /// The id of a task published without one.
    fn derived_id(&self) -> String {
        Coordinates {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.offset,
        }
        .derived_id()
    }
}

impl Executor {
    /// Runs `inc` to an outcome; `None` when it must not run here (see
    /// [`Admission`]) and was handed back. `in_place`: retry in this lane.
    pub async fn run(&self, inc: &Incoming, in_place: bool) -> Option<Outcome> {
        let origin = Origin {
            topic: &inc.topic,
            partition: inc.partition,
            offset: inc.offset,
            record_ms: inc.timestamp_ms.and_then(|t| u64::try_from(t).ok()),
        };
        let mut task = match Task::decode(inc.value.as_deref(), self.cfg.max_task_bytes) {
            Ok(t) => t,
            Err(e) => {
                let labels = self.metrics.kind("");
                self.metrics.task_received(&labels);
                if !self.admit(inc) {
                    return None;
                }
                let id = origin.derived_id();
                tracing::warn!(error = %e, task.id = %id, "unreadable task record");
                let now = now_ms();
                let why = e.to_string();
                return Some(self.give_up_on(&origin, id, None, (now, now), why, labels));
            }
        };
        let labels = self.metrics.kind(&task.kind);
        self.metrics.task_received(&labels);
        let id = task.id.clone().unwrap_or_else(|| origin.derived_id());
        let ticket = match self.scheduler.plan(&inc.topic, &task) {
            Ok(t) => Ticket {
                arrival: inc.arrival,
                ..t
            },
            Err(why) => {
                if !self.admit(inc) {
                    return None;
                }
                tracing::warn!(error = %why, task.id = %id, "task can never run on this worker");
                let now = now_ms();
                return Some(self.give_up_on(&origin, id, Some(&task), (now, now), why, labels));
            }
        };
        if let Some(at) = task.not_before_ms {
            let wait = at.saturating_sub(now_ms());
            if wait > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    _ = self.stopping.cancelled() => {}
                }
            }
        }
        let policy = RetryPolicy::for_task(&self.cfg, &task);
        let timeout = task
            .timeout_ms
            .or_else(|| self.cfg.kinds.get(&task.kind).and_then(|k| k.timeout_ms))
            .or(self.cfg.timeout_ms)
            .map(Duration::from_millis);
        let mut started_ms = None;
        loop {
            let slot = self.scheduler.acquire(&task.kind, &ticket).await;
            // Clock reads are few on purpose: each costs far more here than
            // callgrind shows (a sampling profile put a tenth of the bench's CPU
            // in `clock_gettime`), so an attempt's end is its start plus its run time.
            let attempt_ms;
            if started_ms.is_none() {
                if !self.admit(inc) {
                    return None;
                }
                let now = now_ms();
                started_ms = Some(now);
                attempt_ms = now;
                // Later attempts (from the retry topic) waited for their backoff,
                // not in a queue.
                if task.attempt() == 1 {
                    let wait = since(task.created_ms.or(origin.record_ms), now);
                    self.metrics.task_started(wait);
                    self.metrics.lane_started(slot.lane(), wait);
                }
            } else {
                attempt_ms = now_ms();
                self.metrics.lane_started(slot.lane(), None);
            }
            let started = started_ms.unwrap_or_default();
            if let Some(job) = task
                .job
                .as_ref()
                .filter(|j| self.ended_jobs.has_ended(&j.id))
            {
                let times = (started, attempt_ms);
                let mut r = self.result(&origin, id, Some(&task), times, Status::Cancelled);
                r.error = Some(format!(
                    "not run: job {} had already ended (a fail-fast job failed, or its submission broke off)",
                    job.id
                ));
                return Some(Outcome::Finished {
                    result: Box::new(r),
                    dead_letter: None,
                    labels,
                });
            }
            if let Some(deadline) = task.deadline_ms.filter(|d| now_ms() > *d) {
                let late = now_ms() - deadline;
                let times = (started, now_ms());
                let mut r = self.result(&origin, id, Some(&task), times, Status::Expired);
                r.error = Some(format!(
                    "deadline passed {late} ms before attempt {} could start",
                    task.attempt()
                ));
                return Some(Outcome::Finished {
                    result: Box::new(r),
                    dead_letter: None,
                    labels,
                });
            }
            let attempt = task.attempt();
            let trace_id = inc.trace.map(|t| t.trace_id_hex());
            let span = tracing::info_span!("task", task.id = %id, kind = %task.kind, partition = inc.partition, offset = inc.offset, attempt, trace_id = trace_id.as_deref().unwrap_or("none"));
            let running = self.metrics.attempt_started(&labels);
            // The handler gets the payload itself, not a copy; a retry reads it
            // from the record again (copying a payload cost about 650
            // instructions per task for a small object, callgrind).
            let payload = std::mem::take(&mut task.payload);
            let ran = self
                .attempt(&task, payload, &id, inc, timeout)
                .instrument(span.clone())
                .await;
            let elapsed = running.finish();
            let times = (started, attempt_ms + elapsed.as_millis() as u64);
            slot.ran(&task.kind, elapsed, ran.is_ok());
            drop(slot);
            let _enter = span.enter();
            let error = match ran {
                Ok(output) => {
                    let mut r = self.result(&origin, id, Some(&task), times, Status::Succeeded);
                    r.output = Some(output);
                    return Some(Outcome::Finished {
                        result: Box::new(r),
                        dead_letter: None,
                        labels,
                    });
                }
                Err(HandlerError::Permanent(e)) => {
                    tracing::warn!(error = %e, "task failed permanently");
                    return Some(self.give_up_on(&origin, id, Some(&task), times, e, labels));
                }
                Err(HandlerError::Retryable(e)) => e,
            };
            if !policy.allows_after(attempt) {
                tracing::warn!(error = %error, attempts = attempt, "task failed on its last attempt");
                let why = if attempt > 1 {
                    format!("gave up after {attempt} attempts: {error}")
                } else {
                    error
                };
                return Some(self.give_up_on(&origin, id, Some(&task), times, why, labels));
            }
            task.payload = Task::decode(inc.value.as_deref(), usize::MAX)
                .map(|t| t.payload)
                .unwrap_or_default();
            let wait = policy.backoff(attempt, rand::random());
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            self.metrics.task_retried(&labels);
            tracing::info!(error = %error, retry_in_ms = wait.as_millis() as u64, "attempt failed; will retry");
            task.attempt = Some(attempt + 1);
            if !in_place {
                let mut next = task;
                next.id = Some(id);
                next.not_before_ms = Some(now_ms() + wait.as_millis() as u64);
                return Some(Outcome::Requeue(Box::new(next)));
            }
            drop(_enter);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // Past the shutdown deadline: hand it back; the next owner retries.
                _ = self.give_up.cancelled() => return None,
            }
        }
    }

    /// Makes `outcome` durable, then reports the record done to the poll thread.
    pub async fn settle(&self, inc: Incoming, outcome: Outcome) {
        // What this worker writes for the task continues the task's trace (or
        // starts one for records published without a traceparent).
        let trace = inc.trace.map_or_else(TraceContext::new_root, |t| t.child());
        let done = match outcome {
            Outcome::Requeue(task) => {
                // Boxed, like every write that waits: a future is as large as
                // its largest state, and each task's future is moved into its
                // spawned task (3 KB with these inline, measured; see `Lanes`).
                Box::pin(
                    self.outbox
                        .requeue(&task, inc.key.as_deref(), &trace, &self.give_up),
                )
                .await
            }
            Outcome::Finished {
                result,
                dead_letter,
                labels,
            } => {
                let parked = match &dead_letter {
                    // Once the valve tripped, records are handed back, not parked:
                    // stopping is the point, and they run again after a fix.
                    Some(error) if !self.valve.dead_lettered(error) => false,
                    Some(error) => {
                        let why = DeadLetter {
                            error,
                            attempts: result.attempts,
                            task_id: &result.task_id,
                            kind: &result.kind,
                        };
                        let parked =
                            Box::pin(self.outbox.dead_letter(&inc, &why, &trace, &self.give_up))
                                .await;
                        if parked {
                            self.metrics.task_dead_lettered(&labels);
                        }
                        parked
                    }
                    None => true,
                };
                if parked {
                    // The writer's delivery callback finishes the task.
                    let pending = PendingResult {
                        result,
                        trace,
                        check: self.outbox.write_check,
                        labels,
                        completion: completion(&inc, false),
                    };
                    return self.outbox.result(pending, &self.give_up).await;
                }
                false
            }
        };
        self.complete(&inc, done);
    }

    fn admit(&self, inc: &Incoming) -> bool {
        let ok = self
            .admission
            .admit(&inc.topic, inc.partition, inc.epoch, inc.offset);
        if !ok {
            self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
            self.metrics.task_abandoned();
            self.complete(inc, false);
        }
        ok
    }

    fn complete(&self, inc: &Incoming, done: bool) {
        let _ = self.completions.send(completion(inc, done));
    }

    /// The record cannot succeed: dead-letter it (or just fail it, when dead
    /// letters are off) with `error` as the reason.
    fn give_up_on(
        &self,
        origin: &Origin<'_>,
        id: String,
        task: Option<&Task>,
        times: (u64, u64),
        error: String,
        labels: Arc<KindMetrics>,
    ) -> Outcome {
        let status = if self.cfg.dead_letters {
            Status::DeadLettered
        } else {
            Status::Failed
        };
        let mut r = self.result(origin, id, task, times, status);
        r.error = Some(error.clone());
        Outcome::Finished {
            result: Box::new(r),
            dead_letter: self.cfg.dead_letters.then_some(error),
            labels,
        }
    }

    async fn attempt(
        &self,
        task: &Task,
        payload: Value,
        id: &str,
        inc: &Incoming,
        timeout: Option<Duration>,
    ) -> Result<Value, HandlerError> {
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
            payload,
            attempt: task.attempt(),
            // Most keys are UTF-8: checked in one pass, not decoded in chunks.
            key: inc.key.as_ref().map(|k| match std::str::from_utf8(k) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(k).into_owned(),
            }),
            job: task.job.clone(),
        };
        let run = AssertUnwindSafe(handler.handle(ctx)).catch_unwind();
        let finished = match timeout {
            // Dropping the handler's future cancels it (and kills an external program).
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(HandlerError::retryable(format!(
                        "timed out after {} ms",
                        limit.as_millis()
                    )))
                }
            },
            None => run.await,
        };
        finished.unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            Err(HandlerError::retryable(format!("handler panicked: {msg}")))
        })
    }

    fn result(
        &self,
        origin: &Origin<'_>,
        task_id: String,
        task: Option<&Task>,
        (started_ms, finished_ms): (u64, u64),
        status: Status,
    ) -> TaskResult {
        TaskResult {
            task_id,
            kind: task.map(|t| t.kind.clone()).unwrap_or_default(),
            status,
            output: None,
            error: None,
            attempts: task.map_or(1, Task::attempt),
            worker: self.outbox.worker_id.clone(),
            topic: origin.topic.to_string(),
            partition: origin.partition,
            offset: origin.offset,
            created_ms: task.and_then(|t| t.created_ms).or(origin.record_ms),
            started_ms,
            finished_ms,
            job: task.and_then(|t| t.job.clone()),
        }
    }
}

/// What became of `inc`, for the poll thread.
fn completion(inc: &Incoming, done: bool) -> Completion {
    Completion {
        topic: inc.topic.clone(),
        partition: inc.partition,
        offset: inc.offset,
        epoch: inc.epoch,
        done,
    }
}

/// Time from `from_ms` to `to_ms` (Unix ms); zero when the clocks of producer and
/// worker disagree the other way, unknown without a start.
fn since(from_ms: Option<u64>, to_ms: u64) -> Option<Duration> {
    from_ms.map(|f| Duration::from_millis(to_ms.saturating_sub(f)))
}
