//! Offset gaps: task records the worker never saw.
//!
//! When Kafka deletes a partition's oldest records by retention before the
//! group read them (workers stopped, or far behind, for longer than
//! `retention.ms` or `retention.bytes`; the embedded broker evicts past about
//! 5 MiB per partition), the consumer's next fetch is out of range and
//! librdkafka jumps to the oldest record left (`auto.offset.reset = earliest`).
//! Those tasks never run and never get a result. Nothing Sluice can do brings
//! them back, but it must not lose them silently: the [`OffsetTracker`]
//! compares each record's offset with the one it expected, and a gap is
//! counted (`sluice_task_offsets_skipped_total`) and logged here, once per gap.
//!
//! Mid-stream the expected offset is one past the last record handed out. For
//! the first record of an assignment it is the group's committed offset, which
//! the assign callback asks the coordinator for ([`committed`]); without a
//! commit (a new group) there is nothing to compare. That request costs one
//! round trip per assignment, on the poll thread, while librdkafka's own
//! request for the same offsets is in flight: the new partitions' records
//! cannot arrive before it anyway, so only partitions kept through the
//! rebalance wait, at most [`COMMITTED_TIMEOUT`].
//!
//! Not every gap is a loss. A transactional producer's commit or abort marker
//! occupies an offset that a consumer never sees (a gap of one offset after
//! each transaction), an aborted transaction's records are skipped with it,
//! and a compacted topic has holes. Gaps of one offset are therefore logged at
//! debug level and counted apart (`gap="single"`); wider ones are warnings and
//! what the `SluiceTasksSkipped` alert watches.
//!
//! [`OffsetTracker`]: crate::tracker::OffsetTracker

use crate::tracker::Tp;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::Metrics;
use std::time::{Duration, Instant};

/// How long the assign callback waits for the committed offsets. Measured on
/// the embedded broker (39 assignments of the component tests, debug build,
/// 2 busy cores): median 0.22 ms, at most 0.93 ms. Without a known coordinator
/// librdkafka fails the request at once instead of sending it; past this limit
/// the first records of the assignment are not checked.
pub(crate) const COMMITTED_TIMEOUT: Duration = Duration::from_secs(1);

/// The group's committed offsets of `tps`, where librdkafka resumes them;
/// partitions without a commit are left out. Blocks for one round trip to the
/// group coordinator, at most [`COMMITTED_TIMEOUT`].
pub(crate) fn committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tps: &[Tp],
) -> Vec<(Tp, i64)> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in tps {
        tpl.add_partition(topic, *partition);
    }
    let started = Instant::now();
    let answer = consumer.committed_offsets(tpl, COMMITTED_TIMEOUT);
    let elapsed_us = started.elapsed().as_micros() as u64;
    match answer {
        Ok(tpl) => {
            tracing::debug!(elapsed_us, "committed offsets of the new assignment");
            tpl.elements()
                .iter()
                .filter(|e| e.error().is_ok())
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                    _ => None,
                })
                .collect()
        }
        Err(e) => {
            tracing::info!(error = %e, elapsed_us, "committed offsets unknown: the first records of this assignment are not checked for gaps");
            Vec::new()
        }
    }
}

/// Offsets `expected..got` of `tp` were never handed out: counts and logs them.
pub(crate) fn skipped(metrics: &Metrics, tp: &Tp, expected: i64, got: i64) {
    let count = u64::try_from(got - expected).unwrap_or(0);
    if count == 0 {
        return;
    }
    metrics.task_offsets_skipped(&tp.0, count);
    let (topic, partition, last) = (&tp.0, tp.1, got - 1);
    if count == 1 {
        tracing::debug!(%topic, partition, offset = expected, "offset skipped: a transaction marker, or one record deleted or compacted away");
    } else {
        tracing::warn!(%topic, partition, from = expected, to = last, skipped = count, "tasks skipped: these offsets were never handed out, so their tasks have no result; most likely Kafka deleted them by retention before any worker read them (else an aborted transaction or compaction)");
    }
}
