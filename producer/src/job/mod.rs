//! Jobs from the producer's side: split input into sub-tasks, publish them with a
//! manifest, and read a job's state back from Kafka.
//!
//! The model (see `sluice_common::job` and docs/JOBS.md): a manifest on the jobs
//! topic, sub-tasks carrying `job: {id, index, total}` on the task topic (or the
//! lane or pool topic their scheduling fields route them to), their
//! results on the results topic (keyed by job id), and one job result on the jobs
//! topic, published by a worker's gatherer. Nothing here keeps state that Kafka
//! does not have: [`JobWatch`] rebuilds it from the two topics in any process.
//!
//! # Layout
//! - [`split`]: [`Split`] specs (`range:`, `lines:`, `jsonl:`) and their payloads.
//! - [`submit`]: [`Submitter`], which publishes a manifest and its sub-tasks.
//! - [`book`]: [`JobBook`] and [`JobWatch`]: job state folded from the topics,
//!   as a [`JobStatus`].

pub mod book;
pub mod split;
pub mod submit;

pub use book::{JobBook, JobStatus, JobWatch};
pub use split::{Split, SplitError};
pub use submit::{JobSpec, SubTasks, SubmitError, Submitter};
