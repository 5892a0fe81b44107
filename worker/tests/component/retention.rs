//! Tasks that Kafka deleted before any worker read them: the worker cannot run
//! them, but it counts them (`sluice_task_offsets_skipped_total`) and runs
//! everything that is left.

use crate::support::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use sluice_common::exporter::probe;
use sluice_common::kafka;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Tasks and their payload size: 6 MiB in all, more than the embedded broker
/// keeps of one partition (5 MiB; older batches are evicted).
const TASKS: usize = 384;
const PAYLOAD_BYTES: usize = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_resuming_past_deleted_tasks_counts_them_and_runs_the_rest() {
    let (_b, mut cfg) = broker(1);
    // A port of its own, to read the worker's /metrics.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cfg.metrics.listen = format!("127.0.0.1:{port}");
    cfg.metrics.port_search = 0;
    let topic = cfg.topics.tasks.clone();

    // The group once read up to offset 0, then stopped (a commit from outside
    // the group, as `kafka-consumer-groups --reset-offsets` would make).
    let group: BaseConsumer = kafka::admin_consumer_config(&cfg, &cfg.worker.group, "committer")
        .create()
        .unwrap();
    let mut at_zero = TopicPartitionList::new();
    at_zero
        .add_partition_offset(&topic, 0, Offset::Offset(0))
        .unwrap();
    group.commit(&at_zero, CommitMode::Sync).unwrap();

    // Meanwhile more tasks arrive than the partition keeps.
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| task("noop", json!("x".repeat(PAYLOAD_BYTES)), None))
        .collect();
    publish(&cfg, &tasks).await;
    let (low, high) = group
        .fetch_watermarks(&topic, 0, Duration::from_secs(5))
        .unwrap();
    assert_eq!(high, TASKS as i64);
    assert!(
        low > 0,
        "the broker evicted nothing: the test needs more than 5 MiB in the partition"
    );

    let started = Instant::now();
    let (stop, h) = worker(&cfg, "w1", sluice_worker::builtin());
    let left = (high - low) as usize;
    let all = results(&cfg, left, Duration::from_secs(60)).await;
    // One partition, published in order: offset = index.
    let kept: HashSet<&str> = tasks[low as usize..].iter().map(|t| t.id()).collect();
    let got: HashSet<&str> = all.iter().map(|r| r.task_id.as_str()).collect();
    assert_eq!(got, kept, "every task still in the topic ran, and no other");

    let series = format!("sluice_task_offsets_skipped_total{{gap=\"range\",topic=\"{topic}\"}}");
    let (_, text) = probe(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "/metrics",
        Duration::from_secs(5),
    )
    .unwrap();
    let counted = text
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse::<i64>().ok());
    assert_eq!(
        counted,
        Some(low),
        "the deleted offsets 0..{low} are counted once:\n{text}"
    );
    eprintln!(
        "{low} of {TASKS} tasks deleted before the worker started; {left} ran in {:?}",
        started.elapsed()
    );
    stop.cancel();
    h.await.unwrap();
}
