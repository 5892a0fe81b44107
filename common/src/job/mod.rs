//! Jobs: one large piece of work split into sub-tasks, run across a worker group,
//! and gathered into one result.
//!
//! A job lives entirely in Kafka, so any process can tell its state at any later
//! time:
//!
//! - a **manifest** on the jobs topic (key = job id) says what was submitted: the
//!   sub-task kind, how many sub-tasks, the split and gather specs, the failure
//!   policy, when;
//! - each **sub-task** is an ordinary task carrying `job: {id, index, total}`; its
//!   result is an ordinary result carrying the same `job` and the sub-task's
//!   output. Workers key the results of sub-tasks by job id, so all results of one
//!   job are on one partition of the results topic, in one order;
//! - a **job result** on the jobs topic (key = job id) says how the job ended: its
//!   state, counts, failed sub-tasks and the gathered output.
//!
//! The gatherer (in `sluice-worker`) folds sub-task results into a [`Tally`] per
//! job and, once the [`FailurePolicy`] decides, publishes the job result. Readers
//! (`sluice job status`) fold the same records with the same rules, so a fresh
//! process computes exactly what the gatherer computed. The rules that make this
//! deterministic: the *first* result per sub-task index on the job's partition
//! counts (at-least-once delivery can repeat a sub-task), and the *first* job
//! result record per job id on the jobs topic counts (a gatherer that crashed after
//! publishing may publish it again; the records agree on everything but
//! `gathered_by` and `finished_ms`).
//!
//! `docs/JOBS.md` describes the whole model; `docs/WIRE.md` the records.
//!
//! # Layout
//! - [`record`]: [`JobRecord`] — [`Manifest`] and [`JobResult`] on the jobs topic.
//! - [`gather`]: [`GatherSpec`] and the built-in gathers (collect, sum, count, concat).
//! - [`tally`]: [`Tally`], sub-task outcomes of one job, and the [`Verdict`].

pub mod gather;
pub mod record;
pub mod tally;

pub use gather::GatherSpec;
pub use record::{FailurePolicy, JobRecord, JobResult, JobState, Manifest, SubFailure};
pub use tally::{Tally, Verdict};
