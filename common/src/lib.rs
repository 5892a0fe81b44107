//! # sluice-common
//!
//! What every Sluice process shares: the wire format of tasks and results, the
//! configuration model, the one module that builds Kafka clients, the embedded
//! broker, shutdown signalling, logging setup, and the metrics registry with its
//! HTTP endpoint.
//!
//! # Layout
//! - [`task`]: wire format v1 — [`Task`], [`TaskResult`], [`Status`].
//! - [`job`]: jobs — manifest and job result records, gathers, the tally.
//! - [`config`]: [`Config`] and its layered loading (defaults → TOML → env).
//! - [`dead_letter`]: headers of dead-letter records.
//! - [`security`]: TLS and SASL settings; secrets that never print.
//! - [`kafka`]: builds producers and consumers; creates topics.
//! - [`broker`]: [`EmbeddedBroker`], librdkafka's mock cluster on a fixed address.
//! - [`routing`]: lanes (priority, long tasks) and pools, and their topics.
//! - [`resources`]: resource needs of tasks and capacities of workers.
//! - [`metrics`]: [`Metrics`], the one owner of the Prometheus registry.
//! - [`health`]: [`Health`], what `/health/live` and `/health/ready` mean.
//! - [`exporter`]: the HTTP endpoint serving metrics and health.
//! - [`shutdown`]: the process-wide cancellation token.
//! - [`telemetry`]: logging and the default worker id.
//! - [`trace`]: [`TraceContext`], the W3C `traceparent` header on every record.
//! - [`error`]: [`Error`], split by what the caller does next.

pub mod broker;
pub mod config;
pub mod dead_letter;
pub mod error;
pub mod exporter;
pub mod health;
pub mod job;
pub mod kafka;
pub mod metrics;
pub mod resources;
pub mod routing;
pub mod security;
pub mod shutdown;
pub mod task;
pub mod telemetry;
pub mod trace;

pub use broker::{EmbeddedBroker, Fault, TopicSpec};
pub use config::Config;
pub use error::Error;
pub use health::Health;
pub use metrics::Metrics;
pub use task::{Coordinates, JobRef, Status, Task, TaskResult};
pub use trace::TraceContext;
