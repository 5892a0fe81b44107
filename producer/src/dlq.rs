//! The dead-letter topic, read back: list what could not succeed and why, and
//! replay chosen records to where they came from with their attempts reset.

use crate::reader::{Start, TopicReader};
use rdkafka::message::{Headers, Message, OwnedMessage};
use sluice_common::dead_letter::headers;
use sluice_common::{Config, Task};
use std::collections::BTreeMap;
use std::time::Duration;

/// One record on the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    /// Partition of the DLQ record.
    pub partition: i32,
    /// Offset of the DLQ record.
    pub offset: i64,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original value, byte for byte.
    pub value: Option<Vec<u8>>,
    /// Headers (text).
    pub headers: BTreeMap<String, String>,
}

impl DeadLetterRecord {
    fn from_message(m: &OwnedMessage) -> Self {
        let mut h = BTreeMap::new();
        if let Some(hs) = m.headers() {
            for header in hs.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                h.insert(header.key.to_string(), value);
            }
        }
        DeadLetterRecord {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: h,
        }
    }

    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        self.header(headers::TASK_ID)
    }

    /// The task kind ("" for unreadable records).
    pub fn kind(&self) -> &str {
        self.header(headers::KIND)
    }

    /// Why it was dead-lettered.
    pub fn error(&self) -> &str {
        self.header(headers::ERROR)
    }

    /// The task to publish again: the original with attempts and start time reset,
    /// or why it cannot be replayed.
    pub fn replay_task(&self) -> Result<Task, String> {
        let mut t = Task::decode(self.value.as_deref(), usize::MAX).map_err(|e| e.to_string())?;
        t.attempt = None;
        t.not_before_ms = None;
        if t.id.is_none() && !self.task_id().is_empty() {
            t.id = Some(self.task_id().to_string());
        }
        Ok(t)
    }

    /// Where a replay goes: the original topic, except that tasks dead-lettered
    /// from the retry topic go back to the task topic.
    pub fn replay_topic(&self, cfg: &Config) -> String {
        let original = self.header(headers::TOPIC);
        if original.is_empty() || original == cfg.topics.retry_topic() {
            cfg.topics.tasks.clone()
        } else {
            original.to_string()
        }
    }
}

/// Every record on the dead-letter topic of `cfg`.
pub async fn read_all(cfg: &Config) -> Result<Vec<DeadLetterRecord>, sluice_common::Error> {
    let mut reader =
        TopicReader::open(cfg, &cfg.topics.dead_letter_topic(), Start::Beginning).await?;
    let messages = reader.read_to_end(Duration::from_secs(5)).await;
    Ok(messages
        .iter()
        .map(DeadLetterRecord::from_message)
        .collect())
}
