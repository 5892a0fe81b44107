//! Offset gaps: offsets of a consumed topic that were never handed to the
//! worker, counted by topic and by width (`gap`).
//!
//! A task whose record Kafka deleted before any worker read it (retention ran
//! while the workers were stopped or far behind) never runs and never gets a
//! result; this counter is the only trace Sluice can leave of it. Not every gap
//! is a loss, though: a transactional producer's commit or abort marker takes
//! an offset that a consumer never sees, an aborted transaction's records are
//! skipped with it, and a compacted topic has holes. A marker between two
//! transactions is a gap of exactly one offset, hence the label:
//! - `single`: one offset. After a transactional producer this is every
//!   transaction's marker and no loss; with plain producers (Sluice's own are
//!   idempotent, not transactional) it is one record deleted or compacted.
//! - `range`: more than one offset. Records deleted by retention, or an aborted
//!   transaction's records, or compaction. The `SluiceTasksSkipped` alert
//!   watches these.
//!
//! The series of every consumed topic exist from the start with 0, because
//! Prometheus' `increase()` sees nothing of a series whose first sample already
//! holds the count (and a worker that resumes past deleted records counts them
//! within a second of starting).

use super::{Builder, Metrics};
use prometheus::IntCounterVec;

/// Values of the `gap` label.
const SINGLE: &str = "single";
const RANGE: &str = "range";

pub(super) struct GapMetrics {
    skipped: IntCounterVec,
}

impl GapMetrics {
    pub(super) fn register(b: &mut Builder) -> Self {
        GapMetrics {
            skipped: b.counter_vec(
                "sluice_task_offsets_skipped_total",
                "Offsets of a consumed topic never handed to this worker, by topic and gap width: \
                 records deleted by retention before they were read (tasks lost), or offsets that hold \
                 no task (gap=\"single\" after a transactional producer: its commit markers; aborted \
                 transactions; compacted topics).",
                &["topic", "gap"],
            ),
        }
    }
}

/// The `gap` label of a gap of `skipped` offsets.
fn width(skipped: u64) -> &'static str {
    if skipped == 1 {
        SINGLE
    } else {
        RANGE
    }
}

impl Metrics {
    /// The worker consumes `topics`: their gap counters start at 0 (see the
    /// module docs for why they must exist before the first gap).
    pub fn topics_consumed(&self, topics: &[&str]) {
        for topic in topics {
            for gap in [SINGLE, RANGE] {
                self.gaps.skipped.with_label_values(&[topic, gap]);
            }
        }
    }

    /// `skipped` offsets of `topic` in a row were never handed out. Rare (a
    /// label lookup here is fine): not on the per-record path.
    pub fn task_offsets_skipped(&self, topic: &str, skipped: u64) {
        self.gaps
            .skipped
            .with_label_values(&[topic, width(skipped)])
            .inc_by(skipped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_counted_by_topic_and_width_from_zero() {
        let m = Metrics::new();
        m.topics_consumed(&["sluice.tasks", "sluice.tasks.retry"]);
        let text = m.render();
        for series in [
            "sluice_task_offsets_skipped_total{gap=\"range\",topic=\"sluice.tasks\"} 0",
            "sluice_task_offsets_skipped_total{gap=\"single\",topic=\"sluice.tasks.retry\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == series),
                "missing {series}:\n{text}"
            );
        }
        m.task_offsets_skipped("sluice.tasks", 4_000);
        m.task_offsets_skipped("sluice.tasks", 1);
        m.task_offsets_skipped("sluice.tasks", 1);
        let text = m.render();
        for series in [
            "sluice_task_offsets_skipped_total{gap=\"range\",topic=\"sluice.tasks\"} 4000",
            "sluice_task_offsets_skipped_total{gap=\"single\",topic=\"sluice.tasks\"} 2",
            "sluice_task_offsets_skipped_total{gap=\"range\",topic=\"sluice.tasks.retry\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == series),
                "missing {series}:\n{text}"
            );
        }
    }
}
