//! The baseline: the least a Kafka task pipe must do, written directly on
//! librdkafka. One thread consumes a task record, produces a reply of the same
//! size (key and value copied) to the same partition of the reply topic, and
//! stores the task's offset once the reply's delivery report says it is durable;
//! librdkafka auto-commits stored offsets. That is Sluice's guarantee without
//! its framework: no decoding, no handler, no scheduling, no metrics.
//!
//! Its clients come from the same builders with the same settings as a Sluice
//! worker's (`kafka::worker_consumer_config`, `kafka::producer_config`).

use super::load::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_common::{kafka, Config};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the pipe may take to get its partitions.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running baseline pipe.
pub struct Pipe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Pipe {
    /// Starts the pipe from `topics.tasks` to `topics.results` in `group`, and
    /// returns once it holds every partition.
    pub fn start(cfg: &Config, topics: &Topics, group: &str) -> anyhow::Result<Pipe> {
        let mut cfg = cfg.clone();
        cfg.worker.group = group.to_string();
        let consumer: BaseConsumer =
            kafka::worker_consumer_config(&cfg, "sluice-bench-baseline").create()?;
        consumer.subscribe(&[&topics.tasks])?;
        let (tx, delivered) = mpsc::channel();
        let producer: BaseProducer<Durable> = kafka::producer_config(&cfg, "sluice-bench-baseline")
            .create_with_context(Durable(tx))?;
        let started = Instant::now();
        while consumer.assignment()?.count() < topics.partitions as usize {
            anyhow::ensure!(
                started.elapsed() < ASSIGN_TIMEOUT,
                "the baseline consumer got no partitions within {ASSIGN_TIMEOUT:?}"
            );
            // Nothing is published yet: this serves the group join only.
            if let Some(Err(e)) = consumer.poll(Duration::from_millis(20)) {
                tracing::warn!(error = %e, "baseline consumer");
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let run = Run {
            consumer,
            producer,
            delivered,
            replies: topics.results.clone(),
        };
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-baseline".into())
            .spawn(move || run.pump(&flag))?;
        Ok(Pipe { stop, thread })
    }

    /// Stops the pipe after a last commit.
    pub fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the baseline thread panicked"))?
    }
}

/// Delivery reports of replies: the task coordinates whose reply is durable.
struct Durable(mpsc::Sender<(i32, i64)>);

impl ClientContext for Durable {}
impl ProducerContext for Durable {
    type DeliveryOpaque = Box<(i32, i64)>;
    fn delivery(&self, result: &DeliveryResult<'_>, task: Box<(i32, i64)>) {
        match result {
            Ok(_) => {
                let _ = self.0.send(*task);
            }
            // The bench counts the missing reply as lost; no retry on purpose:
            // the baseline is the plain pipe.
            Err((e, _)) => tracing::error!(error = %e, "baseline reply not delivered"),
        }
    }
}

struct Run {
    consumer: BaseConsumer,
    producer: BaseProducer<Durable>,
    delivered: mpsc::Receiver<(i32, i64)>,
    replies: String,
}

impl Run {
    fn pump(self, stop: &AtomicBool) -> anyhow::Result<()> {
        let topic = self
            .consumer
            .subscription()?
            .elements()
            .first()
            .map(|e| e.topic().to_string())
            .unwrap_or_default();
        while !stop.load(Ordering::SeqCst) {
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let task = Box::new((m.partition(), m.offset()));
                    let mut reply = BaseRecord::with_opaque_to(&self.replies, task)
                        .partition(m.partition())
                        .payload(m.payload().unwrap_or_default());
                    if let Some(k) = m.key() {
                        reply = reply.key(k);
                    }
                    loop {
                        match self.producer.send(reply) {
                            Ok(()) => break,
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                r,
                            )) => {
                                reply = r;
                                self.producer.poll(Duration::from_millis(1));
                            }
                            Err((e, _)) => anyhow::bail!("baseline cannot produce: {e}"),
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "baseline consumer"),
                None => {}
            }
            self.producer.poll(Duration::ZERO);
            self.store(&topic)?;
        }
        let _ = self.producer.flush(Duration::from_secs(10));
        self.store(&topic)?;
        let _ = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        Ok(())
    }

    /// Stores the offsets after every durable reply. Replies of one partition
    /// are delivered in order (idempotent producer), so the highest is enough.
    fn store(&self, topic: &str) -> anyhow::Result<()> {
        let mut next: HashMap<i32, i64> = HashMap::new();
        for (p, o) in self.delivered.try_iter() {
            let n = next.entry(p).or_default();
            *n = (*n).max(o + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
        }
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            tracing::warn!(error = %e, "baseline could not store offsets");
        }
        Ok(())
    }
}
