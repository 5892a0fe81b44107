//! Publishing results: the result record must be durable before the task's offset
//! may be stored, so delivery is awaited and retried, never fire-and-forget.

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sluice_common::TaskResult;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Writes results to the results topic.
pub(crate) struct ResultSink {
    producer: FutureProducer,
    topic: String,
}

impl ResultSink {
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        ResultSink { producer, topic }
    }

    /// Publishes `result`, retrying with backoff until Kafka acknowledges it.
    /// Returns false when `give_up` fired first: the result is not durable and
    /// the task's offset must not be stored.
    pub async fn deliver(&self, result: &TaskResult, give_up: &CancellationToken) -> bool {
        let value = serde_json::to_vec(result).expect("a result always serializes");
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(result.task_id.as_bytes())
                .payload(&value);
            let sent = tokio::select! {
                _ = give_up.cancelled() => return false,
                r = self.producer.send(record, Timeout::Never) => r,
            };
            match sent {
                Ok(_) => return true,
                Err((e, _)) => {
                    tracing::warn!(error = %e, task.id = %result.task_id, "result not delivered; retrying");
                    tokio::select! {
                        _ = give_up.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
