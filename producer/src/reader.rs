//! Reading a whole topic outside any consumer group: every partition assigned
//! explicitly, from the beginning (or the end), never committing, so reading
//! disturbs nobody's offsets. End-of-partition events tell when it caught up.

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::kafka::{self, QuietContext};
use sluice_common::Config;
use std::collections::HashSet;
use std::time::Duration;

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every record still in the topic.
    Beginning,
    /// Only records published after opening.
    End,
}

/// One step of reading.
#[derive(Debug)]
pub enum Step {
    /// A record.
    Record(OwnedMessage),
    /// Every partition has been read to its end (reported once per catch-up).
    CaughtUp,
    /// Nothing arrived within the timeout.
    Idle,
}

/// Reads one topic.
pub struct TopicReader {
    consumer: StreamConsumer<QuietContext>,
    partitions: usize,
    at_end: HashSet<i32>,
    reported_caught_up: bool,
}

impl TopicReader {
    /// Opens `topic` (created if missing), assigned to all its partitions.
    pub async fn open(
        cfg: &Config,
        topic: &str,
        start: Start,
    ) -> Result<TopicReader, sluice_common::Error> {
        let counts = kafka::ensure_topics(cfg, &[topic]).await?;
        let cfg = &kafka::adapted_to_cluster(cfg.clone()).await;
        let consumer: StreamConsumer<QuietContext> = kafka::reader_config(cfg, "sluice-reader")
            .create_with_context(QuietContext)
            .map_err(sluice_common::Error::client)?;
        let consumer = learn_leaders(consumer, cfg, topic).await?;
        let mut tpl = TopicPartitionList::new();
        let offsets = match start {
            Start::Beginning => vec![Offset::Beginning; counts[0].1 as usize],
            // Offsets taken now, not librdkafka's logical END: that is resolved
            // only when fetching starts, and would skip records published between
            // opening and the first fetch.
            Start::End => high_watermarks(cfg, topic, counts[0].1)
                .await?
                .into_iter()
                .map(Offset::Offset)
                .collect(),
        };
        for (p, offset) in offsets.into_iter().enumerate() {
            tpl.add_partition_offset(topic, p as i32, offset)
                .map_err(sluice_common::Error::client)?;
        }
        consumer
            .assign(&tpl)
            .map_err(sluice_common::Error::client)?;
        Ok(TopicReader {
            consumer,
            partitions: counts[0].1 as usize,
            at_end: HashSet::new(),
            reported_caught_up: false,
        })
    }

    /// The next step, waiting at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Step {
        loop {
            let got = match tokio::time::timeout(timeout, self.consumer.recv()).await {
                Err(_) => return Step::Idle,
                Ok(r) => r,
            };
            match got {
                Ok(msg) => {
                    self.at_end.remove(&msg.partition());
                    self.reported_caught_up = false;
                    return Step::Record(msg.detach());
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    self.at_end.insert(p);
                    if self.at_end.len() >= self.partitions && !self.reported_caught_up {
                        self.reported_caught_up = true;
                        return Step::CaughtUp;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Every record up to the end of every partition.
    pub async fn read_to_end(&mut self, idle_limit: Duration) -> Vec<OwnedMessage> {
        let mut out = Vec::new();
        loop {
            match self.next(idle_limit).await {
                Step::Record(m) => out.push(m),
                Step::CaughtUp | Step::Idle => return out,
            }
        }
    }
}

/// Asks the cluster for `topic`'s partition leaders on the reader's own client
/// before anything is assigned. A partition assigned while its leader is still
/// unknown parks its first offset query on a 500 ms retry timer inside
/// librdkafka ("no current leader for partition"), so every record of a fresh
/// reader would arrive half a second late; `sluice dev` showed exactly that
/// as p50 ≈ p99 ≈ 500 ms.
async fn learn_leaders(
    consumer: StreamConsumer<QuietContext>,
    cfg: &Config,
    topic: &str,
) -> Result<StreamConsumer<QuietContext>, sluice_common::Error> {
    let timeout = Duration::from_millis(cfg.kafka.connect_timeout_ms);
    let topic = topic.to_string();
    // A metadata request blocks: keep it off the async threads.
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(sluice_common::Error::client)?;
        Ok(consumer)
    })
    .await
    .map_err(|e| sluice_common::Error::Client(e.to_string()))?
}

/// The end offset of every partition of `topic`, now.
async fn high_watermarks(
    cfg: &Config,
    topic: &str,
    partitions: i32,
) -> Result<Vec<i64>, sluice_common::Error> {
    let probe: BaseConsumer<QuietContext> = kafka::reader_config(cfg, "sluice-reader")
        .create_with_context(QuietContext)
        .map_err(sluice_common::Error::client)?;
    let timeout = Duration::from_millis(cfg.kafka.connect_timeout_ms);
    let topic = topic.to_string();
    // Watermark requests block: keep them off the async threads.
    tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|p| {
                probe
                    .fetch_watermarks(&topic, p, timeout)
                    .map(|(_, high)| high)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(sluice_common::Error::client)
    })
    .await
    .map_err(|e| sluice_common::Error::Client(e.to_string()))?
}
