//! # sluice-producer
//!
//! Publishing tasks. A task is validated (shape and size) before it is sent, gets
//! a unique id and a creation time, is placed on a partition by its key (the same
//! partition the Java client would pick) or round-robin, and is reported sent only
//! when Kafka acknowledged it. The producer is idempotent by default, so librdkafka's
//! own retries never duplicate or reorder a task.
//!
//! Jobs ([`job`]) build on that: a split spec becomes sub-tasks published with a
//! manifest, and a job's state is read back from the jobs and results topics.
//!
//! # Layout
//! - [`input`]: task input from JSON lines; [`Outgoing`] is a task with its key.
//! - [`partitioner`]: murmur2, round-robin and lag-aware partition choice.
//! - [`lag`]: the consumer group's lag per partition, for lag-aware choice.
//! - [`publisher`]: [`Publisher`], which sends and awaits delivery reports.
//! - [`router`]: [`Router`], the pool and lane topic of a task.
//! - [`reader`]: [`TopicReader`], a whole topic outside any group.
//! - [`results`]: [`ResultReader`], which reads outcomes back.
//! - [`dlq`]: the dead-letter topic, listed and replayed.
//! - [`job`]: jobs — split specs, submitting a job, job state read back from Kafka.

pub mod dlq;
pub mod input;
pub mod job;
pub mod lag;
pub mod partitioner;
pub mod publisher;
pub mod reader;
pub mod results;
pub mod router;

pub use input::{InputError, Outgoing};
pub use partitioner::Partitioner;
pub use publisher::{Delivered, PublishError, Publisher};
pub use reader::{Start, Step, TopicReader};
pub use results::{Next, ResultReader};
pub use router::Router;
