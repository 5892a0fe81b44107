//! Seeding the run-time estimates from the results topic.
//!
//! A worker learns per-kind run times from its own attempts, so a fresh worker
//! starts shortest-expected-first knowing nothing. Every result record carries
//! `started_ms` and `finished_ms`, though: with `worker.scheduler.policy =
//! "shortest_expected_first"` the worker reads, in the background at start, up
//! to `worker.scheduler.history_results` of the latest results per partition
//! of the results topic and feeds the successful first attempts of the kinds
//! it runs into its estimates, oldest first. Results of other workers count
//! the same: the estimates describe the kind, not the worker.

use super::estimates::Estimates;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::{kafka, Config, Status, TaskResult};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long reading the history may take in all.
const READ_LIMIT: Duration = Duration::from_secs(30);

/// Reads the history into `estimates`; returns how many results were used.
/// Blocks on broker round trips: run it off the reactor.
pub(crate) fn seed(
    cfg: &Config,
    per_partition: usize,
    kinds: &HashSet<String>,
    estimates: &Estimates,
) -> Result<usize, String> {
    let consumer: BaseConsumer = kafka::reader_config(cfg, "sluice-history")
        .create()
        .map_err(|e| e.to_string())?;
    let topic = &cfg.topics.results;
    let timeout = Duration::from_millis(cfg.kafka.connect_timeout_ms);
    let count = kafka::partition_count(consumer.client(), topic, timeout)
        .map_err(|e| e.to_string())?
        .unwrap_or(0);
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..count {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| e.to_string())?;
        if high > low {
            let from = (high - per_partition as i64).max(low);
            tpl.add_partition_offset(topic, p, Offset::Offset(from))
                .map_err(|e| e.to_string())?;
            remaining += 1;
        }
    }
    if remaining == 0 {
        return Ok(0);
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut used = 0;
    // `enable.partition.eof`: each partition reports its end once.
    while remaining > 0 && started.elapsed() < READ_LIMIT {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(msg)) => {
                let Some(r) = msg
                    .payload()
                    .and_then(|v| serde_json::from_slice::<TaskResult>(v).ok())
                else {
                    continue;
                };
                if r.status == Status::Succeeded && r.attempts == 1 && kinds.contains(&r.kind) {
                    let ran = r.finished_ms.saturating_sub(r.started_ms);
                    estimates.observe(&r.kind, Duration::from_millis(ran));
                    used += 1;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => remaining -= 1,
            Some(Err(e)) => return Err(e.to_string()),
            None => {}
        }
    }
    Ok(used)
}
