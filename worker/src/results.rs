//! Publishing results: the result record must be durable before the task's offset
//! may be stored, so delivery is awaited and retried, never fire-and-forget.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sluice_common::{Status, TaskResult};
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

    /// Publishes `result`, retrying with backoff until Kafka acknowledges it, and
    /// returns the status that was delivered. `None` when `give_up` fired first:
    /// the result is not durable and the task's offset must not be stored.
    pub async fn deliver(
        &self,
        result: &TaskResult,
        give_up: &CancellationToken,
    ) -> Option<Status> {
        let value = serde_json::to_vec(result).expect("a result always serializes");
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(result.task_id.as_bytes())
                .payload(&value);
            let sent = tokio::select! {
                _ = give_up.cancelled() => return None,
                r = self.producer.send(record, Timeout::Never) => r,
            };
            match sent {
                Ok(_) => return Some(result.status),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                    if result.output.is_some() =>
                {
                    // Retrying cannot help: replace the output with the reason, so the
                    // task still ends in a (failed) result instead of blocking its partition.
                    tracing::warn!(task.id = %result.task_id, bytes = value.len(), "result too large for the results topic");
                    let mut smaller = result.clone();
                    smaller.output = None;
                    smaller.status = Status::Failed;
                    smaller.error = Some(format!(
                        "the handler's output made a {}-byte result, larger than the producer's message.max.bytes; output dropped",
                        value.len()
                    ));
                    return Box::pin(self.deliver(&smaller, give_up)).await;
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, task.id = %result.task_id, "result not delivered; retrying");
                    tokio::select! {
                        _ = give_up.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
