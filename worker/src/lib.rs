//! # sluice-worker
//!
//! The worker framework. A worker joins a consumer group on the task topic, runs
//! each task with the handler registered for its kind, and publishes exactly one
//! result per task to the results topic.
//!
//! ## The guarantee: at-least-once, nothing silently dropped
//! A task's offset is stored for commit only when its result is durable on the
//! results topic *and* every earlier offset of its partition is too. A crash can
//! therefore repeat tasks (those in flight or finished since the last commit) but
//! never lose one. Records that are not tasks (not JSON, no `kind`, too large) and
//! tasks of unknown kinds still get a `failed` result with a reason.
//!
//! ## The model
//! One OS thread owns the Kafka consumer and never blocks on tasks
//! (`consumer`); records flow to ordering lanes (`lanes`) which run them under a
//! concurrency limit (`execute`); completions
//! flow back to the poll thread, whose [`tracker`] decides what may be committed.
//! When too many tasks are buffered the poll thread waits for some to finish; when
//! none does for a while it pauses its partitions but keeps polling, so slow tasks
//! never push a worker out of its group.
//!
//! Beside that pipeline, a job gatherer (`gatherer`) reads the results topic in
//! its own consumer group and turns the results of each job's sub-tasks into the
//! job's result, running a chord callback with this worker's handlers when the
//! job asks for one (docs/JOBS.md).
//!
//! Each of these steps also reports to `sluice_common::Metrics` (tasks received and
//! finished, attempts, retries, dead letters, rebalances, commits, librdkafka
//! statistics) and keeps `sluice_common::Health` current; the worker serves both
//! on its `/metrics` and `/health/*` endpoint.
//!
//! # Layout
//! - [`handler`]: the [`Handler`] trait, [`HandlerError`], the [`Registry`].
//! - [`builtin`](mod@builtin): built-in kinds (`noop`, `echo`, `sleep`, `cpu`, `fail`, `square`, `words`).
//! - [`external`]: kinds served by external programs.
//! - [`tracker`]: the offset tracker.
//! - `gap`: offsets never handed out (records deleted before they were read),
//!   counted and logged.
//! - [`counters`]: live [`Counters`] of a running worker.
//! - `consumer`: the poll thread and rebalance handling.
//! - `admission`: which handed-out tasks may still start when a partition closes.
//! - `lanes`: ordering modes: only the oldest unfinished task of a key is ready.
//! - `scheduler`: which ready task gets the next slot — priority lanes with
//!   fair shares, queue policies, resource capacity, rate limits, adaptive
//!   concurrency (docs/SCHEDULING.md).
//! - `execute`: one task from record to durable result.
//! - `outbox`: results, dead letters and retries, each written until durable.
//! - `writer`: the worker's producer; its delivery callback finishes tasks.
//! - `gatherer`: the job gatherer — sub-task results to job results (docs/JOBS.md).
//! - `ended_jobs`: jobs with a job result, whose left-over sub-tasks are cancelled.
//! - [`retry`]: the retry policy (attempts, backoff with jitter).
//! - `valve`: the dead-letter safety valve.
//! - [`worker`]: [`run`], the supervisor.

mod admission;
pub mod builtin;
mod consumer;
pub mod counters;
mod ended_jobs;
mod execute;
pub mod external;
mod gap;
pub(crate) mod gatherer;
pub mod handler;
mod lanes;
mod outbox;
pub mod retry;
mod scheduler;
pub mod tracker;
mod valve;
pub mod worker;
mod writer;

pub use builtin::builtin;
pub use counters::Counters;
pub use handler::{handler_fn, Handler, HandlerError, Registry, TaskContext};
pub use worker::{run, run_with, with_external_handlers, Summary, WorkerError};
