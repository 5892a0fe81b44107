//! The publisher: tasks onto a task topic, every delivery report awaited.
//!
//! A publisher either writes to one fixed topic ([`Publisher::connect`]) or
//! routes each task to its lane and pool topic ([`Publisher::routed`], see
//! [`Router`]); topics are created when first used.

use crate::input::{check_size, InputError, Outgoing};
use crate::lag::LagWatcher;
use crate::partitioner::Partitioner;
use crate::router::Router;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use sluice_common::config::PartitionerKind;
use sluice_common::kafka::WriteCheck;
use sluice_common::metrics::PublishFailure;
use sluice_common::{kafka, trace, Config, Metrics, TraceContext};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Why a task was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The task itself is unacceptable; fix the input.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The partition asked for does not exist.
    #[error("partition {partition} does not exist; topic {topic} has {partitions}")]
    NoSuchPartition {
        /// Topic.
        topic: String,
        /// Asked-for partition.
        partition: i32,
        /// Partitions the topic has.
        partitions: i32,
    },
    /// Kafka did not acknowledge the record in time; it may be retried.
    #[error("not delivered: {0}")]
    Delivery(String),
    /// Setting up the client failed.
    #[error(transparent)]
    Setup(#[from] sluice_common::Error),
}

impl PublishError {
    /// How metrics count this failure.
    fn failure(&self) -> PublishFailure {
        match self {
            PublishError::Input(_) | PublishError::NoSuchPartition { .. } => {
                PublishFailure::Rejected
            }
            PublishError::Delivery(_) | PublishError::Setup(_) => PublishFailure::Delivery,
        }
    }
}

/// Where a task landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Publishes tasks to one topic, or to the topics a [`Router`] picks.
pub struct Publisher {
    producer: FutureProducer,
    cfg: Config,
    topic: String,
    router: Option<Router>,
    partitioners: RwLock<HashMap<String, Arc<Partitioner>>>,
    max_task_bytes: usize,
    metrics: Option<Arc<Metrics>>,
    lag: Option<LagWatcher>,
}

impl Publisher {
    /// Connects to the cluster and makes sure `topic` exists; every task goes there.
    pub async fn connect(cfg: &Config, topic: &str) -> Result<Publisher, PublishError> {
        Publisher::open(cfg, topic, None).await
    }

    /// Connects and routes each task to its pool and lane topic (see [`Router`]);
    /// the lane topics of the general pool are created now, pool topics when
    /// first used.
    pub async fn routed(cfg: &Config) -> Result<Publisher, PublishError> {
        Publisher::open(cfg, &cfg.topics.tasks, Some(Router::new(cfg))).await
    }

    async fn open(
        cfg: &Config,
        topic: &str,
        router: Option<Router>,
    ) -> Result<Publisher, PublishError> {
        let producer = kafka::producer(cfg, "sluice-producer")?;
        let lag = match cfg.producer.partitioner {
            PartitionerKind::RoundRobin => None,
            PartitionerKind::LagAware => Some(LagWatcher::start(cfg)?),
        };
        let p = Publisher {
            lag,
            producer,
            cfg: cfg.clone(),
            topic: topic.to_string(),
            partitioners: RwLock::default(),
            max_task_bytes: cfg.producer.max_task_bytes,
            metrics: None,
            router,
        };
        let mut topics = vec![topic.to_string()];
        if let Some(r) = &p.router {
            topics.extend(r.general_topics());
            topics.dedup();
        }
        for t in topics {
            p.partitioner(&t).await?;
        }
        Ok(p)
    }

    /// The partitioner of `topic`, creating the topic on first use.
    async fn partitioner(&self, topic: &str) -> Result<Arc<Partitioner>, PublishError> {
        if let Some(p) = self.partitioners.read().expect("lock").get(topic) {
            return Ok(p.clone());
        }
        let counts = kafka::ensure_topics(&self.cfg, &[topic]).await?;
        // Learn the topic's leaders now rather than on the first send, so the first
        // task's latency is not a metadata round trip longer than the rest.
        let warm = self.producer.clone();
        let (name, timeout) = (
            topic.to_string(),
            Duration::from_millis(self.cfg.kafka.connect_timeout_ms),
        );
        let _ =
            tokio::task::spawn_blocking(move || warm.client().fetch_metadata(Some(&name), timeout))
                .await;
        let p = Arc::new(match &self.lag {
            Some(w) => Partitioner::lag_aware(counts[0].1, w.table(topic, counts[0].1)),
            None => Partitioner::new(counts[0].1),
        });
        self.partitioners
            .write()
            .expect("lock")
            .entry(topic.to_string())
            .or_insert(p.clone());
        Ok(p)
    }

    /// Counts every publish in `metrics` (published, failed, time to acknowledge).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The partition count of the task topic (the normal lane when routing).
    pub fn partitions(&self) -> i32 {
        self.partitioners
            .read()
            .expect("lock")
            .get(&self.topic)
            .map_or(1, |p| p.partitions())
    }

    /// The topic `out` would be published to.
    pub fn topic_for(&self, out: &Outgoing) -> Result<String, PublishError> {
        match &self.router {
            Some(r) => Ok(r.topic(&out.task)?),
            None => Ok(self.topic.clone()),
        }
    }

    /// Enqueues one task and returns a future that resolves with its delivery
    /// report. Enqueueing waits (briefly) while librdkafka's queue is full.
    pub async fn send(
        &self,
        out: &Outgoing,
        partition: Option<i32>,
    ) -> Result<impl Future<Output = Result<Delivered, PublishError>>, PublishError> {
        let enqueued = self.enqueue(out, partition).await;
        let metrics = self.metrics.clone();
        if let (Err(e), Some(m)) = (&enqueued, &metrics) {
            m.publish_failed(e.failure());
        }
        let delivery = enqueued?;
        let started = Instant::now();
        Ok(async move {
            let delivered = delivery.await;
            if let Some(m) = metrics {
                match &delivered {
                    Ok(_) => m.task_published(started.elapsed()),
                    Err(_) => m.publish_failed(PublishFailure::Delivery),
                }
            }
            delivered
        })
    }

    async fn enqueue(
        &self,
        out: &Outgoing,
        partition: Option<i32>,
    ) -> Result<impl Future<Output = Result<Delivered, PublishError>>, PublishError> {
        let value = check_size(out, self.max_task_bytes)?;
        let key = out.key.as_deref().map(str::as_bytes);
        let topic = self.topic_for(out)?;
        let partitioner = self.partitioner(&topic).await?;
        let partition = match partition {
            Some(p) if p < 0 || p >= partitioner.partitions() => {
                return Err(PublishError::NoSuchPartition {
                    topic,
                    partition: p,
                    partitions: partitioner.partitions(),
                })
            }
            Some(p) => p,
            None => partitioner.choose(key),
        };
        let write = Write {
            topic,
            partition,
            key: key.map(<[u8]>::to_vec),
            value,
            traceparent: out
                .trace
                .map_or_else(TraceContext::new_root, |t| t.child())
                .to_string(),
        };
        let first = write.send(&self.producer).await?;
        let producer = self.producer.clone();
        let mut check = WriteCheck::new(&self.cfg);
        Ok(async move {
            let mut delivery = first;
            loop {
                match delivery.await {
                    // An acknowledgement without an offset may hide a lost write.
                    Ok(Ok(d)) if check.resend(d.offset) => {
                        tracing::warn!(topic = %write.topic, partition = d.partition, "task acknowledged without an offset; publishing it again to be sure it is stored");
                        delivery = write.send(&producer).await?;
                    }
                    Ok(Ok(d)) => {
                        return Ok(Delivered {
                            partition: d.partition,
                            offset: d.offset,
                        })
                    }
                    Ok(Err((e, _))) => return Err(PublishError::Delivery(e.to_string())),
                    Err(_) => return Err(PublishError::Delivery("producer was shut down".into())),
                }
            }
        })
    }

    /// Publishes one task and waits for its delivery.
    pub async fn publish(
        &self,
        out: &Outgoing,
        partition: Option<i32>,
    ) -> Result<Delivered, PublishError> {
        self.send(out, partition).await?.await
    }

    /// Waits for everything enqueued to be delivered or to fail.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// One task record, kept so that it can be sent again.
struct Write {
    topic: String,
    partition: i32,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    traceparent: String,
}

impl Write {
    /// Enqueues the record, waiting (briefly) while librdkafka's queue is full.
    async fn send(&self, producer: &FutureProducer) -> Result<DeliveryFuture, PublishError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(&self.value)
            .partition(self.partition)
            .headers(OwnedHeaders::new().insert(Header {
                key: trace::HEADER,
                value: Some(&self.traceparent),
            }));
        if let Some(k) = &self.key {
            record = record.key(k);
        }
        loop {
            match producer.send_result(record) {
                Ok(d) => return Ok(d),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(PublishError::Delivery(e.to_string())),
            }
        }
    }
}
