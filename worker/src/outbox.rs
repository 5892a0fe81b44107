//! Everything a worker writes: results, dead letters and retries. Each write is
//! retried until Kafka acknowledges it, because a task's offset may be stored only
//! once what it produced is durable.

use crate::consumer::Incoming;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use sluice_common::dead_letter::headers;
use sluice_common::kafka::{ProducerStats, WriteCheck};
use sluice_common::task::now_ms;
use sluice_common::{trace, Status, Task, TaskResult, TraceContext};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a record is dead-lettered, for its headers.
pub(crate) struct DeadLetter<'a> {
    pub error: &'a str,
    pub attempts: u32,
    pub task_id: &'a str,
    pub kind: &'a str,
}

/// The worker's producer and topics.
pub(crate) struct Outbox {
    pub producer: FutureProducer<ProducerStats>,
    pub results: String,
    pub retry: String,
    pub dead_letter: String,
    pub worker_id: String,
    /// Which acknowledgements are certain (one copy per record written).
    pub write_check: WriteCheck,
}

enum Sent {
    Durable,
    TooLarge(usize),
    GaveUp,
}

impl Outbox {
    /// Publishes `result` and returns the status that was delivered; `None` when
    /// `give_up` fired first (nothing durable: the offset must not be stored).
    pub async fn result(
        &self,
        result: &TaskResult,
        trace: &TraceContext,
        give_up: &CancellationToken,
    ) -> Option<Status> {
        let value = result.encode();
        match self
            .send(
                &self.results,
                Some(result.key().as_bytes()),
                &value,
                || traced(OwnedHeaders::new_with_capacity(1), trace),
                give_up,
            )
            .await
        {
            Sent::Durable => Some(result.status),
            Sent::GaveUp => None,
            Sent::TooLarge(bytes) => {
                // Retrying cannot help: replace the output with the reason, so the
                // task still ends in a (failed) result instead of blocking its partition.
                tracing::warn!(task.id = %result.task_id, bytes, "result too large for the results topic");
                let mut smaller = result.clone();
                smaller.output = None;
                smaller.status = Status::Failed;
                smaller.error = Some(format!(
                    "the handler's output made a {bytes}-byte result, larger than the producer's message.max.bytes; output dropped"
                ));
                let value = smaller.encode();
                match self
                    .send(
                        &self.results,
                        Some(smaller.key().as_bytes()),
                        &value,
                        || traced(OwnedHeaders::new_with_capacity(1), trace),
                        give_up,
                    )
                    .await
                {
                    Sent::Durable => Some(Status::Failed),
                    _ => None,
                }
            }
        }
    }

    /// Copies the original record to the dead-letter topic with headers saying why.
    pub async fn dead_letter(
        &self,
        inc: &Incoming,
        why: &DeadLetter<'_>,
        trace: &TraceContext,
        give_up: &CancellationToken,
    ) -> bool {
        let partition = inc.partition.to_string();
        let offset = inc.offset.to_string();
        let attempts = why.attempts.to_string();
        let time = now_ms().to_string();
        let fields = [
            (headers::ERROR, why.error),
            (headers::ATTEMPTS, &attempts),
            (headers::TASK_ID, why.task_id),
            (headers::KIND, why.kind),
            (headers::TOPIC, &inc.topic),
            (headers::PARTITION, &partition),
            (headers::OFFSET, &offset),
            (headers::WORKER, &self.worker_id),
            (headers::TIME_MS, &time),
        ];
        let make = || {
            let mut h = OwnedHeaders::new_with_capacity(fields.len() + 1);
            for (key, value) in fields {
                h = h.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            traced(h, trace)
        };
        let value = inc.value.as_deref().unwrap_or_default();
        matches!(
            self.send(&self.dead_letter, inc.key.as_deref(), value, make, give_up)
                .await,
            Sent::Durable
        )
    }

    /// Publishes the next attempt of `task` to the retry topic.
    pub async fn requeue(
        &self,
        task: &Task,
        key: Option<&[u8]>,
        trace: &TraceContext,
        give_up: &CancellationToken,
    ) -> bool {
        let headers = || traced(OwnedHeaders::new_with_capacity(1), trace);
        matches!(
            self.send(&self.retry, key, &task.encode(), headers, give_up)
                .await,
            Sent::Durable
        )
    }

    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        // Built for each attempt: librdkafka takes the headers it is given, and
        // building them again on the rare resend is cheaper than a copy per write.
        headers: impl Fn() -> OwnedHeaders,
        give_up: &CancellationToken,
    ) -> Sent {
        let mut backoff = Duration::from_millis(100);
        let mut check = self.write_check;
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value);
            if let Some(k) = key {
                record = record.key(k);
            }
            record = record.headers(headers());
            let sent = tokio::select! {
                _ = give_up.cancelled() => return Sent::GaveUp,
                r = self.producer.send(record, Timeout::Never) => r,
            };
            match sent {
                // An acknowledgement without an offset may hide a lost write.
                Ok(d) if check.resend(d.offset) => {
                    tracing::warn!(topic, partition = d.partition, "write acknowledged without an offset; writing it again to be sure it is stored");
                }
                Ok(_) => return Sent::Durable,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    return Sent::TooLarge(value.len())
                }
                Err((e, _)) => {
                    tracing::warn!(error = %e, topic, "write not acknowledged; retrying");
                    // An idempotent producer that lost track of its sequence numbers
                    // fails every write from then on; say so instead of only retrying.
                    if let Some((code, reason)) = self.producer.client().fatal_error() {
                        tracing::error!(%code, reason, topic, "the worker's producer hit a fatal error; its writes cannot succeed until the worker restarts");
                    }
                    tokio::select! {
                        _ = give_up.cancelled() => return Sent::GaveUp,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// `headers` plus the `traceparent` of what the worker writes.
fn traced(headers: OwnedHeaders, trace: &TraceContext) -> OwnedHeaders {
    headers.insert(Header {
        key: trace::HEADER,
        value: Some(&trace.header_value()[..]),
    })
}
