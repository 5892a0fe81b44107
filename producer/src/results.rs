//! Reading the results topic: every partition from the beginning (or the end),
//! outside any consumer group, so reading never disturbs anyone else's offsets.

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::kafka::{self, QuietContext};
use sluice_common::{Config, TaskResult};
use std::collections::HashSet;
use std::time::Duration;

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every result still in the topic.
    Beginning,
    /// Only results published from now on.
    End,
}

/// One step of reading.
#[derive(Debug)]
pub enum Next {
    /// A result record.
    Result(Box<TaskResult>),
    /// A record on the results topic that is not a result (the reason).
    Invalid(String),
    /// Every partition has been read to its end (reported once per catch-up).
    CaughtUp,
    /// Nothing arrived within the timeout.
    Idle,
}

/// Reads results.
pub struct ResultReader {
    consumer: StreamConsumer<QuietContext>,
    partitions: usize,
    at_end: HashSet<i32>,
    reported_caught_up: bool,
}

impl ResultReader {
    /// Opens the results topic of `cfg`, assigned to all its partitions.
    pub async fn open(cfg: &Config, start: Start) -> Result<ResultReader, sluice_common::Error> {
        let topic = &cfg.topics.results;
        let counts = kafka::ensure_topics(cfg, &[topic]).await?;
        let consumer: StreamConsumer<QuietContext> = kafka::reader_config(cfg, "sluice-results")
            .create_with_context(QuietContext)
            .map_err(sluice_common::Error::client)?;
        let mut tpl = TopicPartitionList::new();
        let offset = match start {
            Start::Beginning => Offset::Beginning,
            Start::End => Offset::End,
        };
        for p in 0..counts[0].1 {
            tpl.add_partition_offset(topic, p, offset)
                .map_err(sluice_common::Error::client)?;
        }
        consumer
            .assign(&tpl)
            .map_err(sluice_common::Error::client)?;
        Ok(ResultReader {
            consumer,
            partitions: counts[0].1 as usize,
            at_end: HashSet::new(),
            reported_caught_up: false,
        })
    }

    /// The next result, waiting at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Next {
        loop {
            let got = match tokio::time::timeout(timeout, self.consumer.recv()).await {
                Err(_) => return Next::Idle,
                Ok(r) => r,
            };
            match got {
                Ok(msg) => {
                    self.at_end.remove(&msg.partition());
                    self.reported_caught_up = false;
                    return match msg.payload().map(serde_json::from_slice::<TaskResult>) {
                        Some(Ok(r)) => Next::Result(Box::new(r)),
                        Some(Err(e)) => Next::Invalid(format!(
                            "partition {} offset {}: {e}",
                            msg.partition(),
                            msg.offset()
                        )),
                        None => Next::Invalid(format!(
                            "partition {} offset {}: empty record",
                            msg.partition(),
                            msg.offset()
                        )),
                    };
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    self.at_end.insert(p);
                    if self.at_end.len() >= self.partitions && !self.reported_caught_up {
                        self.reported_caught_up = true;
                        return Next::CaughtUp;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading results");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
