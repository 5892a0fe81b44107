//! The one place that builds Kafka clients.
//!
//! Every librdkafka property Sluice sets is set here, per client role, and the
//! user's raw `kafka.librdkafka_options` are applied last so they always win.
//! Topic creation also lives here because brokers differ: Apache Kafka and Tansu
//! accept CreateTopics; librdkafka's mock cluster (the embedded broker) does not, so
//! there a metadata request with auto-creation stands in for it.

use crate::config::{Config, GroupProtocol};
use crate::error::Error;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Partitioner, Producer, ProducerContext, ThreadedProducer};
use std::time::Duration;

/// Settings every client shares.
fn base(cfg: &Config, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers)
        .set("client.id", client_id)
        // Fail fast on addresses that do not resolve instead of retrying forever.
        .set("socket.connection.setup.timeout.ms", "10000");
    for (key, value) in cfg.kafka.security.properties() {
        c.set(key, value);
    }
    c
}

/// Applies the raw pass-through map; called last by every builder.
fn finish(mut c: ClientConfig, cfg: &Config) -> ClientConfig {
    for (k, v) in &cfg.kafka.librdkafka_options {
        c.set(k, v);
    }
    c
}

/// A producer of task or result records: idempotent when configured, delivery
/// reports awaited by the caller.
pub fn producer_config(cfg: &Config, client_id: &str) -> ClientConfig {
    let mut c = base(cfg, client_id);
    c.set("enable.idempotence", cfg.producer.idempotence.to_string())
        .set("linger.ms", cfg.producer.linger_ms.to_string())
        .set(
            "message.timeout.ms",
            cfg.producer.delivery_timeout_ms.to_string(),
        )
        .set("allow.auto.create.topics", "true");
    finish(c, cfg)
}

/// A worker's group consumer. At-least-once: offsets are stored by the worker only
/// when a task's result is durable, and auto-commit commits only stored offsets.
pub fn worker_consumer_config(cfg: &Config, client_id: &str) -> ClientConfig {
    group_consumer_config(cfg, client_id, &cfg.worker.group)
}

/// A worker's job gatherer: a consumer of the results topic in the group
/// `<worker.group>.gather`, with the worker's group settings. The gatherer stores
/// an offset only below the first result of every job it has not finished, so a
/// new owner of the partition rebuilds those jobs from the topic.
pub fn gatherer_consumer_config(cfg: &Config, client_id: &str) -> ClientConfig {
    group_consumer_config(cfg, client_id, &cfg.worker.gather_group())
}

fn group_consumer_config(cfg: &Config, client_id: &str, group: &str) -> ClientConfig {
    let w = &cfg.worker;
    let mut c = base(cfg, client_id);
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", w.commit_interval_ms.to_string())
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", cfg.kafka.fetch_wait_max_ms.to_string());
    match w.group_protocol {
        GroupProtocol::Classic => {
            c.set("partition.assignment.strategy", "cooperative-sticky")
                .set("session.timeout.ms", w.session_timeout_ms.to_string())
                .set(
                    "heartbeat.interval.ms",
                    (w.session_timeout_ms / 10).max(100).to_string(),
                );
        }
        // KIP-848 rejects the classic assignment and session settings.
        GroupProtocol::Consumer => {
            c.set("group.protocol", "consumer");
        }
    }
    statistics(&mut c, cfg);
    finish(c, cfg)
}

/// Asks for librdkafka's statistics callback when metrics want them.
fn statistics(c: &mut ClientConfig, cfg: &Config) {
    if let Some(ms) = cfg.metrics.statistics_interval() {
        c.set("statistics.interval.ms", ms.to_string());
    }
}

/// The producer of a worker's results, retries and dead letters: a
/// [`producer_config`] producer with statistics when metrics want them, whose
/// `context` handles delivery reports (and feeds the statistics to the metrics).
pub fn worker_producer<C, Part>(
    cfg: &Config,
    client_id: &str,
    context: C,
) -> Result<ThreadedProducer<C, Part>, Error>
where
    C: ProducerContext<Part>,
    Part: Partitioner + Send + Sync + 'static,
{
    let mut c = producer_config(cfg, client_id);
    statistics(&mut c, cfg);
    // Applied again so that a raw statistics.interval.ms still wins.
    finish(c, cfg)
        .create_with_context(context)
        .map_err(Error::client)
}

/// A consumer that reads topics by explicit assignment, outside any group, and
/// never commits: for `sluice results` and tools.
pub fn reader_config(cfg: &Config, client_id: &str) -> ClientConfig {
    let mut c = base(cfg, client_id);
    c.set("group.id", format!("{client_id}-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", cfg.kafka.fetch_wait_max_ms.to_string());
    finish(c, cfg)
}

/// A consumer for group metadata and offset queries (no subscription).
pub fn admin_consumer_config(cfg: &Config, group: &str, client_id: &str) -> ClientConfig {
    let mut c = base(cfg, client_id);
    c.set("group.id", group).set("enable.auto.commit", "false");
    finish(c, cfg)
}

/// Builds a producer.
pub fn producer(cfg: &Config, client_id: &str) -> Result<FutureProducer, Error> {
    producer_config(cfg, client_id)
        .create()
        .map_err(Error::client)
}

/// Waits until the cluster answers a metadata request, or says which address failed.
pub fn wait_reachable<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    cfg: &Config,
) -> Result<(), Error> {
    let timeout = Duration::from_millis(cfg.kafka.connect_timeout_ms);
    client
        .fetch_metadata(None, timeout)
        .map(|_| ())
        .map_err(|e| Error::Unreachable {
            brokers: cfg.kafka.brokers.clone(),
            waited_ms: cfg.kafka.connect_timeout_ms,
            cause: e.to_string(),
        })
}

/// How librdkafka's mock cluster, the embedded broker, names itself.
const EMBEDDED_CLUSTER_ID_PREFIX: &str = "mockCluster";

/// The fetch wait on the embedded broker while the configuration keeps the default.
pub const EMBEDDED_FETCH_WAIT_MS: u64 = 10;

/// `cfg` adapted to the cluster it names. The embedded broker holds a fetch that
/// finds no data for the whole fetch wait, even when records arrive meanwhile
/// (Apache Kafka and Tansu answer as soon as they do), so with the default wait of
/// 500 ms every task at low load would wait up to half a second before it starts.
/// There the default becomes [`EMBEDDED_FETCH_WAIT_MS`]; any other configured value
/// is kept. Call it once the cluster is known to be reachable: an unanswered
/// probe keeps `cfg` as it is.
pub async fn adapted_to_cluster(mut cfg: Config) -> Config {
    let probe: BaseConsumer =
        match admin_consumer_config(&cfg, "sluice-admin", "sluice-admin").create() {
            Ok(p) => p,
            Err(_) => return cfg,
        };
    let timeout = Duration::from_millis(cfg.kafka.connect_timeout_ms);
    // The request blocks: keep it off the async threads.
    let id = tokio::task::spawn_blocking(move || probe.client().fetch_cluster_id(timeout))
        .await
        .ok()
        .flatten();
    let wait = fetch_wait_for(&cfg, id.as_deref());
    if wait != cfg.kafka.fetch_wait_max_ms {
        tracing::debug!(
            fetch_wait_max_ms = wait,
            "embedded broker: shorter fetch wait (it holds empty fetches for the whole wait)"
        );
        cfg.kafka.fetch_wait_max_ms = wait;
    }
    cfg
}

/// The fetch wait for a cluster with this id, by the rule of [`adapted_to_cluster`].
fn fetch_wait_for(cfg: &Config, cluster_id: Option<&str>) -> u64 {
    let configured = cfg.kafka.fetch_wait_max_ms;
    let embedded = cluster_id.is_some_and(|id| id.starts_with(EMBEDDED_CLUSTER_ID_PREFIX));
    if embedded && configured == crate::config::KafkaConfig::default().fetch_wait_max_ms {
        EMBEDDED_FETCH_WAIT_MS
    } else {
        configured
    }
}

/// Partition count of `topic`, or `None` when the topic does not exist.
pub fn partition_count<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<i32>, Error> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(Error::client)?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32))
}

/// Makes sure `topics` exist, creating missing ones with `topics.partitions`
/// partitions. Returns each topic's partition count.
pub async fn ensure_topics(cfg: &Config, topics: &[&str]) -> Result<Vec<(String, i32)>, Error> {
    let probe: BaseConsumer = admin_consumer_config(cfg, "sluice-admin", "sluice-admin")
        .create()
        .map_err(Error::client)?;
    let probe = std::sync::Arc::new(probe);
    let timeout = Duration::from_millis(cfg.kafka.connect_timeout_ms);
    // librdkafka's metadata calls block: keep them off the async worker threads.
    let counts = |topics: Vec<String>| {
        let probe = probe.clone();
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            wait_reachable(probe.client(), &cfg)?;
            topics
                .into_iter()
                .map(|t| Ok((partition_count(probe.client(), &t, timeout)?, t)))
                .collect::<Result<Vec<_>, Error>>()
        })
    };
    let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let first = counts(names.clone())
        .await
        .map_err(|e| Error::Client(e.to_string()))??;
    let missing: Vec<&str> = first
        .iter()
        .filter(|(n, _)| n.is_none())
        .map(|(_, t)| t.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(first
            .into_iter()
            .map(|(n, t)| (t, n.unwrap_or(0)))
            .collect());
    }
    create_topics(cfg, &missing).await?;
    // A freshly created topic can take a moment to show in metadata.
    for _ in 0..50 {
        let now = counts(names.clone())
            .await
            .map_err(|e| Error::Client(e.to_string()))??;
        if now.iter().all(|(n, _)| n.is_some()) {
            return Ok(now.into_iter().map(|(n, t)| (t, n.unwrap_or(0))).collect());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Topic {
        topic: missing.join(","),
        cause: "it does not exist and could not be created".into(),
    })
}

/// Cluster ids of librdkafka's mock cluster start with this.
const MOCK_CLUSTER_ID_PREFIX: &str = "mockCluster";

async fn create_topics(cfg: &Config, topics: &[&str]) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = finish(base(cfg, "sluice-admin"), cfg)
        .create()
        .map_err(Error::client)?;
    let admin = std::sync::Arc::new(admin);
    let timeout = Duration::from_millis(cfg.kafka.connect_timeout_ms);
    let probe = admin.clone();
    let cluster_id = tokio::task::spawn_blocking(move || probe.inner().fetch_cluster_id(timeout))
        .await
        .map_err(|e| Error::Client(e.to_string()))?
        .unwrap_or_default();
    if cluster_id.starts_with(MOCK_CLUSTER_ID_PREFIX) {
        // The mock cluster does not answer CreateTopics (a request would wait for
        // its timeout) but creates topics named in a producer's metadata request,
        // with its default partition count.
        let p: FutureProducer = producer(cfg, "sluice-admin")?;
        let names: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in names {
                let _ = p.client().fetch_metadata(Some(&t), timeout);
            }
        })
        .await;
        return Ok(());
    }
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                cfg.topics.partitions,
                TopicReplication::Fixed(cfg.topics.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| Error::Topic {
            topic: topics.join(","),
            cause: format!("CreateTopics failed: {e}"),
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Topic {
                    topic,
                    cause: format!("CreateTopics failed: {code}"),
                })
            }
        }
    }
    Ok(())
}

/// Whether an acknowledged write is certain, or must be sent again.
///
/// librdkafka acknowledges some writes without an offset. When a write's
/// outcome was uncertain (an error, a dropped connection) and a later write of
/// the same partition succeeded, it infers that the first one was stored too.
/// Kafka's idempotence checks make that inference true. A broker that skips
/// them can have dropped the write: the embedded broker does, for producers
/// without a transactional id (seen in the broker-fault test, one result in
/// 2000 lost this way). A duplicate is harmless under at-least-once and a
/// missing record is not, so such a write is sent again, at most
/// [`WriteCheck::MAX_RESENDS`] times. Only an idempotent producer acknowledges
/// implicitly; without one, no offset means `acks=0`, which asked for no more.
#[derive(Debug, Clone, Copy)]
pub struct WriteCheck {
    idempotent: bool,
    resent: u32,
}

impl WriteCheck {
    /// Sends of one record after the first, at most.
    pub const MAX_RESENDS: u32 = 2;

    /// A check for one record written by a producer built from `cfg`.
    pub fn new(cfg: &Config) -> Self {
        WriteCheck {
            idempotent: cfg.producer.idempotence,
            resent: 0,
        }
    }

    /// True when the write acknowledged at `offset` must be sent again; counts it.
    pub fn resend(&mut self, offset: i64) -> bool {
        let again = self.idempotent && offset < 0 && self.resent < Self::MAX_RESENDS;
        self.resent += u32::from(again);
        again
    }
}

/// Reports a client-level error. End-of-partition is an event, not an error, and
/// librdkafka reports lost connections itself and reconnects; both are kept quiet.
pub fn log_client_error(error: &rdkafka::error::KafkaError, reason: &str) {
    use rdkafka::error::KafkaError;
    match error {
        KafkaError::PartitionEOF(_) => {}
        KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
        KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure,
        ) => {
            tracing::debug!(error = %error, reason, "kafka connection problem")
        }
        _ => tracing::warn!(error = %error, reason, "kafka client error"),
    }
}

/// Context for consumers that need no callbacks.
pub struct QuietContext;
impl ClientContext for QuietContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}
impl ConsumerContext for QuietContext {}

/// A consumer that looks at a group from outside, for `sluice status`. It carries
/// the group's id only so that OffsetFetch answers for that group; callers must
/// never subscribe with it (that would join the group and trigger a rebalance),
/// and it never commits.
pub fn group_observer(cfg: &Config, group: &str) -> Result<BaseConsumer<QuietContext>, Error> {
    admin_consumer_config(cfg, group, "sluice-status")
        .create_with_context(QuietContext)
        .map_err(Error::client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_fetch_wait_shortens_only_on_the_embedded_broker() {
        let mut cfg = Config::default();
        let embedded = Some("mockCluster7f3a");
        assert_eq!(fetch_wait_for(&cfg, embedded), EMBEDDED_FETCH_WAIT_MS);
        assert_eq!(fetch_wait_for(&cfg, Some("5L6g3nShT-eMCtK--X86sw")), 500);
        assert_eq!(fetch_wait_for(&cfg, None), 500, "no answer: unchanged");
        cfg.kafka.fetch_wait_max_ms = 50;
        assert_eq!(fetch_wait_for(&cfg, embedded), 50, "a configured wait wins");
    }

    #[tokio::test]
    async fn the_embedded_broker_is_recognised_by_its_cluster_id() {
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let broker = crate::EmbeddedBroker::start(any, &[], 1).unwrap();
        let mut cfg = Config::default();
        cfg.kafka.brokers = broker.bootstrap();
        let cfg = adapted_to_cluster(cfg).await;
        assert_eq!(cfg.kafka.fetch_wait_max_ms, EMBEDDED_FETCH_WAIT_MS);
    }

    #[test]
    fn offsetless_acks_are_resent_twice_and_only_by_an_idempotent_producer() {
        let mut cfg = Config::default();
        let mut check = WriteCheck::new(&cfg);
        assert!(!check.resend(17), "an offset is certain");
        assert!(check.resend(-1001));
        assert!(check.resend(-1001));
        assert!(!check.resend(-1001), "bounded");
        cfg.producer.idempotence = false;
        assert!(
            !WriteCheck::new(&cfg).resend(-1001),
            "acks=0 reports no offsets"
        );
    }
}
