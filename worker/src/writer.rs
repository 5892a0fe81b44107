//! The worker's producer, and the one callback that learns what became of
//! every write.
//!
//! Every record a worker writes (results, dead letters, retries, job results)
//! goes through one librdkafka producer. librdkafka reports each write's outcome
//! to [`WriterContext::delivery`] on the producer's polling thread. A task's
//! result takes the short way: the callback itself finishes the task (counts
//! it and reports it done to the poll thread), so the task's future ends once
//! the record is queued. That replaced a `FutureProducer` future, a oneshot and
//! a wake-up of the task per result (about 3,700 instructions per task,
//! callgrind). Any other write waits for its outcome in an async caller
//! ([`Writer::send`]), through a oneshot the callback completes; so does a
//! result write that failed or must be sent again ([`Redo`]), on the worker's
//! runtime, with the outbox's retry rules.

use crate::consumer::Completion;
use crate::counters::Counters;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Partitioner, Producer, ProducerContext, ThreadedProducer,
    PARTITION_UA,
};
use sluice_common::kafka::WriteCheck;
use sluice_common::metrics::KindMetrics;
use sluice_common::task::now_ms;
use sluice_common::{Metrics, TaskResult, TraceContext};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

/// A task whose result is being written: what finishing it takes.
pub(crate) struct PendingResult {
    pub result: Box<TaskResult>,
    pub trace: TraceContext,
    /// The acknowledgements seen so far of this record.
    pub check: WriteCheck,
    pub labels: Arc<KindMetrics>,
    /// Sent to the poll thread once the result is durable (or given up).
    pub completion: Completion,
}

/// A result write that did not end in a certain acknowledgement.
pub(crate) struct Redo {
    pub pending: PendingResult,
    /// Why; `None` when an acknowledgement without an offset calls for a resend.
    pub error: Option<KafkaError>,
}

/// What the delivery callback does with one outcome.
pub(crate) enum Delivery {
    /// An async caller waits for it.
    Waiter(oneshot::Sender<Result<Acked, KafkaError>>),
    /// A task's result: the callback finishes the task.
    Result(PendingResult),
}

/// Where an acknowledged record was written; `offset` is negative when
/// librdkafka acknowledged it without one (see [`WriteCheck`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acked {
    pub partition: i32,
    pub offset: i64,
}

/// The producer's context: librdkafka statistics into the metrics, errors
/// logged, delivery reports handled.
pub(crate) struct WriterContext {
    pub metrics: Arc<Metrics>,
    pub counters: Arc<Counters>,
    pub completions: mpsc::Sender<Completion>,
    /// Results queued and not yet reported on (see `consumer::read_ahead`).
    pub awaiting_ack: Arc<AtomicUsize>,
    /// Unbounded, but never holds more than the tasks handed out
    /// (`max_buffered_tasks`): one entry per result write in flight.
    pub redo: tokio_mpsc::UnboundedSender<Redo>,
    /// `None` when the configuration names a librdkafka `partitioner` of its own.
    pub partitioner: Option<KeyPartitioner>,
}

impl WriterContext {
    /// `pending`'s result is durable: the task is done.
    pub fn finished(&self, pending: PendingResult) {
        let status = pending.result.status;
        self.counters.finished(status);
        let end_to_end = pending
            .result
            .created_ms
            .map(|c| Duration::from_millis(now_ms().saturating_sub(c)));
        self.metrics
            .task_finished(&pending.labels, status, end_to_end);
        self.report(pending.completion, true);
    }

    /// Tells the poll thread what became of a record.
    pub fn report(&self, mut completion: Completion, done: bool) {
        completion.done = done;
        let _ = self.completions.send(completion);
    }
}

impl ClientContext for WriterContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.producer_statistics(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        sluice_common::kafka::log_client_error(&error, reason);
    }
}

impl ProducerContext<KeyPartitioner> for WriterContext {
    type DeliveryOpaque = Box<Delivery>;

    fn get_custom_partitioner(&self) -> Option<&KeyPartitioner> {
        self.partitioner.as_ref()
    }

    // Runs on the producer's polling thread: nothing here may block.
    fn delivery(&self, report: &DeliveryResult<'_>, opaque: Box<Delivery>) {
        let outcome = match report {
            Ok(m) => Ok(Acked {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(e.clone()),
        };
        match *opaque {
            Delivery::Waiter(tx) => {
                let _ = tx.send(outcome);
            }
            Delivery::Result(mut pending) => {
                // Before the completion: the poll thread may overcount what it
                // holds for a moment, never undercount.
                self.awaiting_ack.fetch_sub(1, Ordering::Relaxed);
                let error = match outcome {
                    // An acknowledgement without an offset may hide a lost write.
                    Ok(acked) if pending.check.resend(acked.offset) => None,
                    Ok(_) => return self.finished(pending),
                    Err(e) => Some(e),
                };
                if let Err(back) = self.redo.send(Redo { pending, error }) {
                    // The worker has stopped: nothing is durable, hand it back.
                    self.report(back.0.pending.completion, false);
                }
            }
        }
    }
}

/// Where a keyed record of the worker goes: librdkafka's own choice
/// (`consistent_random`: the CRC32 of the key modulo the partition count),
/// computed in Rust. zlib's CRC32 behind librdkafka's partitioner was about
/// 2.5 % of a saturated worker's CPU samples (`perf`, `sluice bench`), and
/// crc32fast computes the same checksum faster. The same choice, because it
/// matters: all results of a job must land on one partition, also while
/// workers of two versions share a group. Keyless records are placed by
/// librdkafka's sticky partitioning before a partitioner is asked, as with its
/// own.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeyPartitioner;

impl Partitioner for KeyPartitioner {
    fn partition(
        &self,
        _topic: &str,
        key: Option<&[u8]>,
        partition_cnt: i32,
        available: impl Fn(i32) -> bool,
    ) -> i32 {
        let count = match u32::try_from(partition_cnt) {
            Ok(n) if n > 0 => n,
            _ => return PARTITION_UA,
        };
        match key.filter(|k| !k.is_empty()) {
            Some(k) => (crc32fast::hash(k) % count) as i32,
            // As librdkafka's random choice: one more draw if the first
            // partition has no leader.
            None => {
                let p = (rand::random::<u32>() % count) as i32;
                if available(p) {
                    p
                } else {
                    (rand::random::<u32>() % count) as i32
                }
            }
        }
    }
}

/// The worker's producer.
#[derive(Clone)]
pub(crate) struct Writer {
    producer: Arc<ThreadedProducer<WriterContext, KeyPartitioner>>,
}

/// How long to wait before queueing again when librdkafka's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(100);

impl Writer {
    pub fn new(producer: ThreadedProducer<WriterContext, KeyPartitioner>) -> Self {
        Writer {
            producer: Arc::new(producer),
        }
    }

    /// The underlying producer (flush, fatal errors).
    pub fn producer(&self) -> &ThreadedProducer<WriterContext, KeyPartitioner> {
        &self.producer
    }

    /// The callbacks' context.
    pub fn context(&self) -> &WriterContext {
        self.producer.context()
    }

    /// Writes a record and waits for librdkafka's verdict on it.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        mut headers: Option<OwnedHeaders>,
    ) -> Result<Acked, KafkaError> {
        loop {
            let (tx, rx) = oneshot::channel();
            let mut record =
                BaseRecord::with_opaque_to(topic, Box::new(Delivery::Waiter(tx))).payload(value);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(h) = headers.take() {
                record = record.headers(h);
            }
            match self.producer.send(record) {
                Ok(()) => return rx.await.unwrap_or(Err(KafkaError::Canceled)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    headers = back.headers;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Queues `pending`'s result record (`value`, keyed by `key`) for the
    /// delivery callback to finish; on an error queueing it, hands it back.
    #[allow(clippy::result_large_err)]
    pub fn send_result(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: OwnedHeaders,
        pending: PendingResult,
    ) -> Result<(), (KafkaError, PendingResult)> {
        // Stamped with the task's finish time, which is to the millisecond when
        // it is queued: librdkafka would read the wall clock once more per record.
        let stamp = i64::try_from(pending.result.finished_ms).unwrap_or(0);
        let record = BaseRecord::with_opaque_to(topic, Box::new(Delivery::Result(pending)))
            .key(key)
            .payload(value)
            .headers(headers)
            .timestamp(stamp);
        // Counted before it is queued: its report can come before `send` returns.
        let awaiting = &self.context().awaiting_ack;
        awaiting.fetch_add(1, Ordering::Relaxed);
        self.producer.send(record).map_err(|(e, back)| {
            awaiting.fetch_sub(1, Ordering::Relaxed);
            match *back.delivery_opaque {
                Delivery::Result(pending) => (e, pending),
                Delivery::Waiter(_) => unreachable!("queued as a result"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::BaseProducer;

    /// The partition of each key is the one librdkafka's default partitioner
    /// picks, asked of librdkafka itself on its mock cluster.
    #[test]
    fn keys_go_where_librdkafkas_own_partitioner_sends_them() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("results", 7, 1).unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        let keys: Vec<String> = (0..200)
            .map(|i| format!("0194{i:04x}-task-{}", i * 7919))
            .collect();
        for k in &keys {
            producer
                .send(BaseRecord::to("results").key(k).payload("x"))
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        let chosen: Vec<i32> = keys
            .iter()
            .map(|k| KeyPartitioner.partition("results", Some(k.as_bytes()), 7, |_| true))
            .collect();
        let mut seen = vec![0usize; 7];
        for p in &chosen {
            seen[*p as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 0), "keys spread: {seen:?}");
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "check")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        rdkafka::consumer::Consumer::subscribe(&consumer, &["results"]).unwrap();
        let mut placed = std::collections::HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while placed.len() < keys.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "read {} of {}",
                placed.len(),
                keys.len()
            );
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                placed.insert(key, m.partition());
            }
        }
        for (k, ours) in keys.iter().zip(&chosen) {
            assert_eq!(placed[k], *ours, "key {k}");
        }
    }

    #[test]
    fn without_a_partition_count_there_is_no_choice() {
        let none = KeyPartitioner.partition("t", Some(b"k"), 0, |_| true);
        assert_eq!(none, PARTITION_UA);
        let p = KeyPartitioner.partition("t", None, 3, |_| true);
        assert!((0..3).contains(&p));
    }
}
