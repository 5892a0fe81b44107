//! Reading the results topic.

use crate::reader::{Start, Step, TopicReader};
use rdkafka::message::Message;
use sluice_common::{Config, TaskResult};
use std::time::Duration;

/// One step of reading results.
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
    reader: TopicReader,
}

impl ResultReader {
    /// Opens the results topic of `cfg`, assigned to all its partitions.
    pub async fn open(cfg: &Config, start: Start) -> Result<ResultReader, sluice_common::Error> {
        Ok(ResultReader {
            reader: TopicReader::open(cfg, &cfg.topics.results, start).await?,
        })
    }

    /// The next result, waiting at most `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Next {
        match self.reader.next(timeout).await {
            Step::Idle => Next::Idle,
            Step::CaughtUp => Next::CaughtUp,
            Step::Record(msg) => match msg.payload().map(serde_json::from_slice::<TaskResult>) {
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
            },
        }
    }
}
