//! End-to-end tests of the `sluice` binary: brokers, workers, producers and
//! readers as separate processes, talking real Kafka protocol.
//!
//! The broker comes from `SLUICE_TEST_BROKER`: `embedded` (default, `sluice
//! broker`) or `tansu` (a `tansu` process; it must be on PATH or the test fails
//! saying so). Tests that need kcat, or Prometheus and promtool, are in the
//! `external-tools` feature.

mod bench;
mod chaos;
mod compose;
mod dlq;
mod harness;
#[cfg(feature = "external-tools")]
mod interop;
mod jobs;
mod metrics;
mod pipeline;
mod poison;
mod produce;
#[cfg(feature = "external-tools")]
mod prometheus;
mod status;
