//! Everything a worker writes: results, dead letters and retries. Each write is
//! retried until Kafka acknowledges it, because a task's offset may be stored only
//! once what it produced is durable.
//!
//! A result is queued and left to the [`writer`](crate::writer)'s delivery
//! callback, which finishes the task when the write is acknowledged; only a
//! write that failed (or must be sent again) comes back here, to [`Outbox::redo`].

use crate::consumer::Incoming;
use crate::writer::{Acked, PendingResult, Redo, Writer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::Producer;
use sluice_common::dead_letter::headers;
use sluice_common::kafka::WriteCheck;
use sluice_common::task::now_ms;
use sluice_common::{trace, Status, Task, TaskResult, TraceContext};
use std::cell::RefCell;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

thread_local! {
    /// The result record and its key, encoded here: librdkafka copies both when
    /// the record is queued, so one buffer per thread serves every result.
    static RESULT_BUFFER: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(TaskResult::TYPICAL_BYTES));
}

/// Why a record is dead-lettered, for its headers.
pub(crate) struct DeadLetter<'a> {
    pub error: &'a str,
    pub attempts: u32,
    pub task_id: &'a str,
    pub kind: &'a str,
}

/// The worker's producer and topics.
pub(crate) struct Outbox {
    pub writer: Writer,
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
    /// Queues `pending`'s result; the delivery callback finishes the task once
    /// the write is acknowledged (see [`crate::writer`]).
    // The error carries the pending task back: moved, not boxed, on the hot path.
    #[allow(clippy::result_large_err)]
    pub async fn result(&self, pending: PendingResult, give_up: &CancellationToken) {
        let queued = RESULT_BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            buffer.clear();
            pending.result.encode_into(&mut buffer);
            let value_len = buffer.len();
            buffer.extend_from_slice(pending.result.key().as_bytes());
            let (value, key) = buffer.split_at(value_len);
            let headers = traced(OwnedHeaders::new_with_capacity(1), &pending.trace);
            self.writer
                .send_result(&self.results, key, value, headers, pending)
        });
        if let Err((error, pending)) = queued {
            // A full queue is no failure: `Writer::send` waits for room.
            let error = match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => None,
                e => Some(e),
            };
            // Boxed: the rare way keeps the task's future small.
            Box::pin(self.redo(Redo { pending, error }, give_up)).await;
        }
    }

    /// Writes a result again until it is durable (or `give_up` fires), then
    /// finishes its task.
    pub async fn redo(&self, redo: Redo, give_up: &CancellationToken) {
        let Redo { mut pending, error } = redo;
        let delivered = self
            .result_with(
                &pending.result,
                &pending.trace,
                pending.check,
                error.map(Err),
                give_up,
            )
            .await;
        let context = self.writer.context();
        match delivered {
            Some(status) => {
                pending.result.status = status;
                context.finished(pending);
            }
            None => context.report(pending.completion, false),
        }
    }

    /// Publishes `result` and returns the status that was delivered; `None` when
    /// `give_up` fired first (nothing durable: the offset must not be stored).
    /// `first`: the outcome of a write of it made already.
    async fn result_with(
        &self,
        result: &TaskResult,
        trace: &TraceContext,
        check: WriteCheck,
        first: Option<Result<Acked, KafkaError>>,
        give_up: &CancellationToken,
    ) -> Option<Status> {
        let value = result.encode();
        let headers = || traced(OwnedHeaders::new_with_capacity(1), trace);
        let key = Some(result.key().as_bytes());
        let sent = Attempts { check, first };
        match self
            .send(&self.results, key, &value, headers, give_up, sent)
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
                let key = Some(smaller.key().as_bytes());
                match self
                    .send(&self.results, key, &value, headers, give_up, self.fresh())
                    .await
                {
                    Sent::Durable => Some(Status::Failed),
                    _ => None,
                }
            }
        }
    }

    /// A record not written yet.
    fn fresh(&self) -> Attempts {
        Attempts {
            check: self.write_check,
            first: None,
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
        let fresh = self.fresh();
        matches!(
            self.send(
                &self.dead_letter,
                inc.key.as_deref(),
                value,
                make,
                give_up,
                fresh
            )
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
            self.send(
                &self.retry,
                key,
                &task.encode(),
                headers,
                give_up,
                self.fresh()
            )
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
        attempts: Attempts,
    ) -> Sent {
        let mut backoff = Duration::from_millis(100);
        let Attempts {
            mut check,
            mut first,
        } = attempts;
        loop {
            let sent = match first.take() {
                Some(outcome) => outcome,
                None => tokio::select! {
                    _ = give_up.cancelled() => return Sent::GaveUp,
                    r = self.writer.send(topic, key, value, Some(headers())) => r,
                },
            };
            match sent {
                // An acknowledgement without an offset may hide a lost write.
                Ok(a) if check.resend(a.offset) => {
                    tracing::warn!(topic, partition = a.partition, "write acknowledged without an offset; writing it again to be sure it is stored");
                }
                Ok(_) => return Sent::Durable,
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                    return Sent::TooLarge(value.len())
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic, "write not acknowledged; retrying");
                    // An idempotent producer that lost track of its sequence numbers
                    // fails every write from then on; say so instead of only retrying.
                    if let Some((code, reason)) = self.writer.producer().client().fatal_error() {
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

/// Where the writes of one record stand.
struct Attempts {
    /// The acknowledgements seen so far.
    check: WriteCheck,
    /// The outcome of a write made already, not yet looked at.
    first: Option<Result<Acked, KafkaError>>,
}

/// `headers` plus the `traceparent` of what the worker writes.
fn traced(headers: OwnedHeaders, trace: &TraceContext) -> OwnedHeaders {
    headers.insert(Header {
        key: trace::HEADER,
        value: Some(&trace.header_value()[..]),
    })
}
