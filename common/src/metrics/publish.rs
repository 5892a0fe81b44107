//! What a producer reports: tasks published, publishes that failed, and how
//! long Kafka took to acknowledge each one. A `sluice produce` process and any
//! application publishing through `sluice_producer::Publisher` with metrics
//! attached count here; a worker's own writes (results, retries, dead letters)
//! are counted by the task metrics instead.

use super::{Builder, Metrics};
use prometheus::{Histogram, IntCounter, IntCounterVec};
use std::time::Duration;

/// Why a publish failed, the `reason` label of `sluice_publish_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFailure {
    /// The task was refused before sending (too large, no such partition).
    Rejected,
    /// Kafka did not acknowledge it (timeout, broker error, producer closed).
    Delivery,
}

impl PublishFailure {
    fn label(self) -> &'static str {
        match self {
            PublishFailure::Rejected => "rejected",
            PublishFailure::Delivery => "delivery",
        }
    }
}

pub(super) struct PublishMetrics {
    published: IntCounter,
    failures: IntCounterVec,
    delivery: Histogram,
}

impl PublishMetrics {
    pub(super) fn register(b: &mut Builder) -> Self {
        PublishMetrics {
            published: b.counter(
                "sluice_tasks_published_total",
                "Tasks a producer published and Kafka acknowledged.",
            ),
            failures: b.counter_vec(
                "sluice_publish_failures_total",
                "Tasks a producer could not publish, by reason (rejected before sending, or not acknowledged).",
                &["reason"],
            ),
            delivery: b.histogram(
                "sluice_publish_delivery_seconds",
                "From handing a task to the producer to Kafka's acknowledgement (linger and batching included).",
            ),
        }
    }
}

impl Metrics {
    /// Kafka acknowledged a task `elapsed` after it was handed to the producer.
    pub fn task_published(&self, elapsed: Duration) {
        self.publish.published.inc();
        self.publish.delivery.observe(elapsed.as_secs_f64());
    }

    /// A task could not be published.
    pub fn publish_failed(&self, why: PublishFailure) {
        self.publish
            .failures
            .with_label_values(&[why.label()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_and_failures_are_counted_apart() {
        let m = Metrics::new();
        m.task_published(Duration::from_millis(3));
        m.task_published(Duration::from_millis(30));
        m.publish_failed(PublishFailure::Delivery);
        let text = m.render();
        for line in [
            "sluice_tasks_published_total 2",
            "sluice_publish_failures_total{reason=\"delivery\"} 1",
            "sluice_publish_delivery_seconds_count 2",
            "sluice_publish_delivery_seconds_bucket{le=\"0.005\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert!(!text.contains("reason=\"rejected\"} 1"));
    }
}
