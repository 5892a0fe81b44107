//! Configuration: defaults → TOML file → `SLUICE_…` environment → command-line flags.
//!
//! Every struct rejects unknown fields, so a misspelt key is an error at start-up
//! naming the key instead of a silently ignored setting. Environment variables use
//! `__` between levels: `SLUICE_WORKER__CONCURRENCY=8` sets `worker.concurrency`.
//! Only variables with a `__` are read here; flat ones such as `SLUICE_BROKERS`
//! belong to command-line flags. The defaults live in the `Default` impls below and
//! nowhere else; `config/sluice.toml` shows them all with comments.

pub use crate::security::{Secret, SecurityConfig, SecurityProtocol};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Everything a Sluice process can be configured with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How to reach the Kafka cluster.
    pub kafka: KafkaConfig,
    /// Topic names and how to create them.
    pub topics: TopicsConfig,
    /// Worker settings.
    pub worker: WorkerConfig,
    /// Producer settings.
    pub producer: ProducerConfig,
    /// Logging.
    pub log: LogConfig,
    /// The metrics and health endpoint of workers.
    pub metrics: MetricsConfig,
}

/// Connection to the cluster.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`. Default `127.0.0.1:9092`, the
    /// address `sluice broker` listens on.
    pub brokers: String,
    /// How long to wait for the cluster before reporting it unreachable.
    pub connect_timeout_ms: u64,
    /// Longest time a broker may hold a fetch request open when there is no data
    /// (librdkafka's `fetch.wait.max.ms`; its default is 500). Apache Kafka answers
    /// as soon as records arrive; the embedded broker waits the full time, so on it
    /// workers and readers that keep this default use 10 instead
    /// (`kafka::adapted_to_cluster`).
    pub fetch_wait_max_ms: u64,
    /// TLS and SASL.
    pub security: SecurityConfig,
    /// Raw librdkafka properties, applied after everything Sluice sets, so they win.
    /// Values are secret-safe: they are never logged.
    pub librdkafka_options: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            connect_timeout_ms: 10_000,
            fetch_wait_max_ms: 500,
            security: SecurityConfig::default(),
            librdkafka_options: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for KafkaConfig {
    // librdkafka options may hold passwords (sasl.password, ssl.key.password): show keys only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field("security", &self.security)
            .field(
                "librdkafka_options",
                &self.librdkafka_options.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Topic names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Where tasks are published and consumed.
    pub tasks: String,
    /// Where every task's outcome is published.
    pub results: String,
    /// Where job manifests and job results are published (`sluice job`).
    pub jobs: String,
    /// Where unordered tasks wait for their next attempt. Default `<tasks>.retry`.
    pub retry: Option<String>,
    /// Where records that cannot succeed are kept, with headers saying why.
    /// Default `<tasks>.dlq`.
    pub dead_letter: Option<String>,
    /// Partitions for topics Sluice creates (brokers with a CreateTopics API).
    pub partitions: i32,
    /// Replication factor for topics Sluice creates; 1 suits a single-node broker.
    pub replication_factor: i32,
    /// Priority lanes: producers route tasks with `priority` > 0 to `<tasks>.high`
    /// and < 0 to `<tasks>.low` (0 stays on `<tasks>`); workers consume all three
    /// and share their slots between them (`worker.scheduler.min_share`). Producers
    /// and workers must agree on it. See docs/SCHEDULING.md.
    pub priority_lanes: bool,
    /// The long-task lane: producers route tasks expected to run at least
    /// `producer.long_task_ms` to `<tasks>.long`; workers run at most
    /// `worker.scheduler.long_slots` of them at once.
    pub long_lane: bool,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            tasks: "sluice.tasks".into(),
            results: "sluice.results".into(),
            jobs: "sluice.jobs".into(),
            retry: None,
            dead_letter: None,
            partitions: 8,
            replication_factor: 1,
            priority_lanes: false,
            long_lane: false,
        }
    }
}

impl TopicsConfig {
    /// The retry topic's name.
    pub fn retry_topic(&self) -> String {
        self.retry
            .clone()
            .unwrap_or_else(|| format!("{}.retry", self.tasks))
    }

    /// The dead-letter topic's name.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.tasks))
    }
}

/// Per-key ordering guarantee of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Tasks with the same Kafka key run one after another in offset order; other
    /// keys (and keyless tasks) run in parallel, even within one partition.
    Key,
    /// A partition's tasks run one at a time, in offset order.
    Partition,
    /// No ordering: any task may run beside any other.
    None,
}

/// Consumer group protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// The classic protocol with the cooperative-sticky assignor.
    Classic,
    /// KIP-848: the broker assigns partitions; rebalances need no group-wide barrier.
    Consumer,
}

/// Worker settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Consumer group; workers in one group share the task partitions.
    pub group: String,
    /// Worker id written into results. Default: `<hostname>-<pid>`.
    pub id: Option<String>,
    /// Tasks that may run at once in this worker.
    pub concurrency: usize,
    /// Ordering guarantee.
    pub ordering: Ordering,
    /// Tasks read ahead of execution, per consumed topic (each lane and the retry
    /// topic); past this the worker pauses that topic's partitions and keeps
    /// polling, so it never leaves the group because of slow tasks.
    pub max_buffered_tasks: usize,
    /// Largest task record value accepted, in bytes; larger ones fail without parsing.
    pub max_task_bytes: usize,
    /// How often stored offsets are committed.
    pub commit_interval_ms: u64,
    /// On SIGINT/SIGTERM, how long in-flight tasks may run before the worker leaves.
    pub shutdown_timeout_ms: u64,
    /// On partition revoke, how long in-flight tasks of those partitions may finish.
    pub drain_timeout_ms: u64,
    /// Group session timeout (classic protocol only).
    pub session_timeout_ms: u64,
    /// Group protocol.
    pub group_protocol: GroupProtocol,
    /// External-process handlers by kind.
    pub handlers: BTreeMap<String, ExternalHandlerConfig>,
    /// Retries of retryable failures.
    pub retry: RetryConfig,
    /// Time limit of one attempt, for kinds without their own; none when absent.
    pub timeout_ms: Option<u64>,
    /// Per-kind overrides.
    pub kinds: BTreeMap<String, KindConfig>,
    /// Move records that cannot succeed to the dead-letter topic (result
    /// `dead_lettered`); when false they only get a `failed` result.
    pub dead_letters: bool,
    /// Safety valve: stop the worker (exit 1, with a report) when more records than
    /// this are dead-lettered within a minute. 0 disables it.
    pub max_dead_letters_per_minute: u64,
    /// Run the job gatherer: it reads the results topic in the group
    /// `<group>.gather`, combines the results of each job's sub-tasks and
    /// publishes the job result (docs/JOBS.md). With it off in every worker of a
    /// group, jobs never finish.
    pub gatherer: bool,
    /// The resource pool this worker serves: it consumes only the topics of tasks
    /// whose `resources.class` names this pool (`<tasks>.pool.<pool>`, with its
    /// lanes and retry topic). None: the general pool (`topics.tasks`).
    pub pool: Option<String>,
    /// Which ready task starts next: lanes, queue policy, resources.
    pub scheduler: SchedulerConfig,
}

/// Order of ready tasks within one lane of a worker. Every policy sorts by the
/// task's `priority` first (higher first) and keeps per-key order: only the
/// oldest unfinished task of a key (or partition) is ever ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueuePolicy {
    /// First come, first served.
    Fifo,
    /// The task with the smallest expected run time first: its `expected_ms`,
    /// else the worker's learned estimate for its kind.
    ShortestExpectedFirst,
    /// The task with the earliest `deadline_ms` first; tasks without one last.
    EarliestDeadlineFirst,
}

/// Minimum shares of a worker's task starts per lane, as fractions (sum at most
/// 1). While lanes are backlogged, a lane below its share is served first; the
/// rest goes to the highest lane with work. So high gets at least
/// `1 - (normal + long + low)` under full load and no lane with a share starves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaneShares {
    /// Share of the high lane (it is first anyway; a share matters only when
    /// other lanes' shares would otherwise crowd it).
    pub high: f64,
    /// Share of the normal lane.
    pub normal: f64,
    /// Share of the long-task lane.
    pub long: f64,
    /// Share of the low lane.
    pub low: f64,
}

impl Default for LaneShares {
    fn default() -> Self {
        LaneShares {
            high: 0.0,
            normal: 0.2,
            long: 0.1,
            low: 0.1,
        }
    }
}

impl LaneShares {
    /// Shares indexed like `routing::Lane::ALL` (high, normal, long, low).
    pub fn as_array(&self) -> [f64; 4] {
        [self.high, self.normal, self.long, self.low]
    }
}

/// Adaptive concurrency: AIMD on the worker's concurrency limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    /// Adjust the limit from observed latency and errors. Off: the limit is
    /// `worker.concurrency`.
    pub enabled: bool,
    /// Lowest limit.
    pub min_concurrency: usize,
    /// Highest limit; default `worker.concurrency`.
    pub max_concurrency: Option<usize>,
    /// Attempts per adjustment window.
    pub window: usize,
    /// A window whose mean attempt time exceeds this many times the best window
    /// mean seen is congested: the limit shrinks.
    pub latency_tolerance: f64,
    /// A window with more than this fraction of failed attempts is congested.
    pub max_error_rate: f64,
    /// Multiplicative decrease on congestion (0.75 = shrink by a quarter).
    pub backoff_ratio: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            enabled: false,
            min_concurrency: 1,
            max_concurrency: None,
            window: 50,
            latency_tolerance: 2.0,
            max_error_rate: 0.2,
            backoff_ratio: 0.75,
        }
    }
}

/// The worker's scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Order of ready tasks within a lane.
    pub policy: QueuePolicy,
    /// Minimum share of task starts per lane.
    pub min_share: LaneShares,
    /// Most long-lane tasks running at once, so short tasks always have slots.
    /// Default: half of `worker.concurrency` (at least 1).
    pub long_slots: Option<usize>,
    /// What this worker has to give, by resource name (`cpu = 8`, `memory_mb =
    /// 16384`, `gpu = 1`). Empty: resources are not accounted. Otherwise a task
    /// starts only while the running tasks' needs plus its own fit, a name not
    /// listed has capacity 0, and a task that can never fit is dead-lettered.
    pub capacity: BTreeMap<String, f64>,
    /// How often a task that does not fit yet may be passed by later tasks that
    /// do, before it reserves the worker (nothing else starts until it fits).
    pub max_bypass: u32,
    /// Expected run time of a task without `expected_ms` of a kind not observed
    /// yet (shortest-expected-first).
    pub default_expected_ms: u64,
    /// Weight of the newest observation in the per-kind run-time estimate (an
    /// exponentially weighted moving average), between 0 and 1.
    pub estimate_weight: f64,
    /// With `shortest_expected_first`: at start, read up to this many of the
    /// latest results per partition of the results topic (in the background) to
    /// seed the estimates of the kinds this worker runs. 0: learn only from this
    /// worker's own attempts.
    pub history_results: usize,
    /// Adaptive concurrency.
    pub adaptive: AdaptiveConfig,
    /// The scaling signal (`sluice_scaling_needed_workers`) asks for enough
    /// workers to clear the current backlog within this many seconds, on top of
    /// keeping up with arrivals.
    pub scaling_drain_s: f64,
    /// How often the scaling signal is recomputed, from the change in lag and
    /// finished tasks since the last time. Keep it at least
    /// `metrics.statistics_interval_ms`, where the lag comes from.
    pub scaling_interval_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            policy: QueuePolicy::Fifo,
            min_share: LaneShares::default(),
            long_slots: None,
            capacity: BTreeMap::new(),
            max_bypass: 32,
            default_expected_ms: 1_000,
            estimate_weight: 0.2,
            history_results: 1_000,
            adaptive: AdaptiveConfig::default(),
            scaling_drain_s: 60.0,
            scaling_interval_ms: 5_000,
        }
    }
}

/// Retry policy: exponential backoff with jitter, capped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 1 disables retries.
    pub max_attempts: u32,
    /// Wait before the second attempt.
    pub backoff_initial_ms: u64,
    /// Longest wait between attempts.
    pub backoff_max_ms: u64,
    /// Growth of the wait per attempt.
    pub backoff_multiplier: f64,
    /// Random spread of each wait, as a fraction (0.2 = ±20 %), so retries of many
    /// tasks that failed together do not arrive together.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            backoff_multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// Settings of one task kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KindConfig {
    /// Attempts in all for this kind (a task's own `max_attempts` wins).
    pub max_attempts: Option<u32>,
    /// Time limit of one attempt (a task's own `timeout_ms` wins).
    pub timeout_ms: Option<u64>,
    /// Most attempts of this kind this worker starts per second (a token bucket
    /// holding one second's worth, so bursts up to the rate pass at once).
    /// Per worker: a group of N workers runs up to N times this. None: unlimited.
    pub rate_per_s: Option<f64>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            group: "sluice-workers".into(),
            id: None,
            concurrency: 16,
            ordering: Ordering::Key,
            max_buffered_tasks: 1024,
            max_task_bytes: 1 << 20,
            commit_interval_ms: 1_000,
            shutdown_timeout_ms: 30_000,
            drain_timeout_ms: 10_000,
            session_timeout_ms: 45_000,
            group_protocol: GroupProtocol::Classic,
            handlers: BTreeMap::new(),
            retry: RetryConfig::default(),
            timeout_ms: None,
            kinds: BTreeMap::new(),
            dead_letters: true,
            max_dead_letters_per_minute: 0,
            gatherer: true,
            pool: None,
            scheduler: SchedulerConfig::default(),
        }
    }
}

impl WorkerConfig {
    /// The consumer group of this worker group's job gatherers.
    pub fn gather_group(&self) -> String {
        format!("{}.gather", self.group)
    }
}

/// A kind served by running a program: payload on stdin, output from stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalHandlerConfig {
    /// Program to run (looked up on `PATH` when it has no `/`).
    pub command: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How many bytes of stderr to keep as the error of a failed run.
    #[serde(default = "default_stderr_tail_bytes")]
    pub stderr_tail_bytes: usize,
    /// Exit codes meaning the task can never succeed: dead-lettered at once. Other
    /// non-zero codes are retryable.
    #[serde(default)]
    pub permanent_exit_codes: Vec<i32>,
}

fn default_stderr_tail_bytes() -> usize {
    2048
}

/// Producer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Batching delay; higher trades latency for throughput.
    pub linger_ms: u64,
    /// Idempotent producer: no duplicates or reordering from producer retries.
    pub idempotence: bool,
    /// How long a record may wait for delivery before it is reported failed.
    pub delivery_timeout_ms: u64,
    /// Largest task accepted for publishing, in bytes of its JSON value.
    pub max_task_bytes: usize,
    /// With `topics.long_lane`: tasks expected to run at least this long go to
    /// the long-task lane. A task's expected time is its `expected_ms`, else
    /// `expected_ms` of its kind below.
    pub long_task_ms: u64,
    /// Expected run time by kind, in ms, for tasks without their own `expected_ms`.
    pub expected_ms: BTreeMap<String, u64>,
    /// How keyless tasks are spread over partitions (keyed tasks always go to
    /// their key's partition).
    pub partitioner: PartitionerKind,
    /// With `lag_aware`: the consumer group whose lag is watched. Default
    /// `worker.group`.
    pub lag_group: Option<String>,
    /// With `lag_aware`: how often the group's committed offsets and the
    /// partitions' high watermarks are read.
    pub lag_refresh_ms: u64,
}

/// How a producer spreads keyless tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionerKind {
    /// One partition after another.
    RoundRobin,
    /// The less loaded of two random partitions, by the consumer group's lag
    /// (plus what this producer sent since the last reading), so a slow worker's
    /// partitions get fewer tasks.
    LagAware,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger_ms: 5,
            idempotence: true,
            delivery_timeout_ms: 30_000,
            max_task_bytes: 1 << 20,
            long_task_ms: 10_000,
            expected_ms: BTreeMap::new(),
            partitioner: PartitionerKind::RoundRobin,
            lag_group: None,
            lag_refresh_ms: 1_000,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter in `tracing` syntax, e.g. `info` or `sluice_worker=debug,info`. The
    /// default keeps librdkafka at `warn`: its `info` lines are connection chatter.
    /// `RUST_LOG` overrides it.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info,librdkafka=warn,rdkafka=warn".into(),
            format: LogFormat::Text,
        }
    }
}

/// The HTTP endpoint a worker serves: `/metrics` (Prometheus text format),
/// `/health/live` and `/health/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve the endpoint. Off, a worker still runs but cannot be scraped or probed.
    pub enabled: bool,
    /// Address to listen on, `ip:port`. The default stays on this machine; use
    /// `0.0.0.0:9464` when Prometheus runs elsewhere (the compose file does).
    /// 9464 is the port Prometheus' registry lists for OpenTelemetry exporters.
    /// Port 0 lets the system pick a free port.
    pub listen: String,
    /// When the port of `listen` is taken, try up to this many ports after it, so
    /// several workers on one machine with the default settings each get their
    /// own endpoint (9464, 9465, …). 0 tries only `listen`. The port in use is
    /// logged at start.
    pub port_search: u16,
    /// How often librdkafka reports its statistics (consumer lag per partition,
    /// broker round-trip times, producer queue), in ms; 0 turns them off. Each
    /// report is a JSON document parsed on the poll thread, so keep it in seconds.
    pub statistics_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
            port_search: 50,
            statistics_interval_ms: 5_000,
        }
    }
}

impl MetricsConfig {
    /// `listen` as an address; [`Config::validate`] has checked it parses.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError(format!(
                "metrics.listen: `{}` is not an ip:port address such as 127.0.0.1:9464",
                self.listen
            ))
        })
    }

    /// Statistics interval to configure on clients, when statistics are wanted.
    pub fn statistics_interval(&self) -> Option<u64> {
        (self.enabled && self.statistics_interval_ms > 0).then_some(self.statistics_interval_ms)
    }
}

/// A configuration that could not be loaded; the message names the source and field.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file` (when given), then `SLUICE_…__…` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let defaults =
            config::Config::try_from(&Config::default()).map_err(|e| ConfigError(e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let nested: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("SLUICE_") && k.contains("__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("SLUICE")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(nested)),
        );
        let cfg: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &str, why: &str| Err(ConfigError(format!("{field}: {why}")));
        if let Some((field, why)) = self.kafka.security.problem() {
            return fail(field, &why);
        }
        if self.kafka.brokers.trim().is_empty() {
            return fail("kafka.brokers", "must name at least one host:port");
        }
        if self.topics.tasks.is_empty()
            || self.topics.results.is_empty()
            || self.topics.jobs.is_empty()
        {
            return fail("topics", "topic names must not be empty");
        }
        if self.topics.tasks == self.topics.results {
            return fail(
                "topics.results",
                "must differ from topics.tasks (results would be consumed as tasks)",
            );
        }
        if self.topics.partitions < 1 {
            return fail("topics.partitions", "must be at least 1");
        }
        if self.worker.concurrency == 0 {
            return fail("worker.concurrency", "must be at least 1");
        }
        if self.worker.max_buffered_tasks < self.worker.concurrency {
            return fail(
                "worker.max_buffered_tasks",
                "must be at least worker.concurrency",
            );
        }
        if self.worker.group.is_empty() {
            return fail("worker.group", "must not be empty");
        }
        let r = &self.worker.retry;
        if r.max_attempts == 0 {
            return fail(
                "worker.retry.max_attempts",
                "must be at least 1 (1 = no retries)",
            );
        }
        if r.backoff_multiplier < 1.0 || !r.backoff_multiplier.is_finite() {
            return fail(
                "worker.retry.backoff_multiplier",
                "must be a number of at least 1",
            );
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            return fail("worker.retry.jitter", "must be between 0 and 1");
        }
        if r.backoff_initial_ms > r.backoff_max_ms {
            return fail(
                "worker.retry.backoff_initial_ms",
                "must not exceed backoff_max_ms",
            );
        }
        let routes = crate::routing::Routes::new(&self.topics, self.worker.pool.as_deref());
        let mut names = vec![
            self.topics.results.clone(),
            self.topics.jobs.clone(),
            self.topics.dead_letter_topic(),
        ];
        names.extend(routes.consumed());
        if self.worker.pool.is_some() {
            names.push(self.topics.tasks.clone());
        }
        for (i, a) in names.iter().enumerate() {
            if names[i + 1..].contains(a) {
                return fail("topics", &format!("`{a}` is used for two purposes"));
            }
        }
        for (kind, k) in &self.worker.kinds {
            if k.max_attempts == Some(0) {
                return fail(
                    &format!("worker.kinds.{kind}.max_attempts"),
                    "must be at least 1",
                );
            }
            if k.rate_per_s.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return fail(
                    &format!("worker.kinds.{kind}.rate_per_s"),
                    "must be a positive number (leave it out for no limit)",
                );
            }
        }
        if let Some(pool) = &self.worker.pool {
            if let Err(why) = crate::routing::check_class(pool) {
                return fail("worker.pool", &why);
            }
        }
        self.validate_scheduler()?;
        if self.producer.lag_refresh_ms == 0 {
            return fail("producer.lag_refresh_ms", "must be at least 1");
        }
        if self.metrics.enabled {
            self.metrics.listen_addr()?;
        }
        for (kind, h) in &self.worker.handlers {
            if h.command.is_empty() {
                return fail(
                    &format!("worker.handlers.{kind}.command"),
                    "must not be empty",
                );
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_scheduler(&self) -> Result<(), ConfigError> {
        let fail = |field: &str, why: &str| Err(ConfigError(format!("{field}: {why}")));
        let s = &self.worker.scheduler;
        let shares = s.min_share.as_array();
        if shares.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return fail(
                "worker.scheduler.min_share",
                "every share must be between 0 and 1",
            );
        }
        if shares.iter().sum::<f64>() > 1.0 + 1e-9 {
            return fail(
                "worker.scheduler.min_share",
                "the shares must add up to at most 1",
            );
        }
        if s.long_slots == Some(0) {
            return fail("worker.scheduler.long_slots", "must be at least 1");
        }
        if s.capacity.values().any(|v| !(*v >= 0.0 && v.is_finite())) {
            return fail(
                "worker.scheduler.capacity",
                "capacities must be non-negative numbers",
            );
        }
        if !(s.scaling_drain_s > 0.0 && s.scaling_drain_s.is_finite()) {
            return fail(
                "worker.scheduler.scaling_drain_s",
                "must be a positive number of seconds",
            );
        }
        if s.scaling_interval_ms < 100 {
            return fail(
                "worker.scheduler.scaling_interval_ms",
                "must be at least 100",
            );
        }
        if !(s.estimate_weight > 0.0 && s.estimate_weight <= 1.0) {
            return fail(
                "worker.scheduler.estimate_weight",
                "must be above 0 and at most 1",
            );
        }
        let a = &s.adaptive;
        let max = a.max_concurrency.unwrap_or(self.worker.concurrency);
        if a.enabled && (a.min_concurrency == 0 || a.min_concurrency > max) {
            return fail(
                "worker.scheduler.adaptive.min_concurrency",
                "must be at least 1 and at most max_concurrency",
            );
        }
        if a.enabled && max > self.worker.max_buffered_tasks {
            return fail(
                "worker.scheduler.adaptive.max_concurrency",
                "must not exceed worker.max_buffered_tasks",
            );
        }
        if a.window == 0 || !(a.backoff_ratio > 0.0 && a.backoff_ratio < 1.0) {
            return fail(
                "worker.scheduler.adaptive",
                "window must be at least 1 and backoff_ratio between 0 and 1",
            );
        }
        if !(1.0..f64::INFINITY).contains(&a.latency_tolerance)
            || !(0.0..=1.0).contains(&a.max_error_rate)
        {
            return fail(
                "worker.scheduler.adaptive",
                "latency_tolerance must be at least 1 and max_error_rate between 0 and 1",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn toml(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_load_without_sources() {
        assert_eq!(Config::load(None, vec![]).unwrap(), Config::default());
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let f = toml("[worker]\nconcurrency = 3\ngroup = \"g\"\n");
        let cfg = Config::load(
            Some(f.path()),
            env(&[
                ("SLUICE_WORKER__CONCURRENCY", "5"),
                ("SLUICE_BROKERS", "x:1"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.worker.concurrency, 5);
        assert_eq!(cfg.worker.group, "g");
        assert_eq!(
            cfg.kafka.brokers, "127.0.0.1:9092",
            "flat vars are for flags"
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let f = toml("[worker]\nconcurency = 3\n");
        let e = Config::load(Some(f.path()), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurency"), "{e}");
        let e = Config::load(None, env(&[("SLUICE_WORKER__NOPE", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_errors() {
        let f = toml("[worker]\nconcurrency = \"many\"\n");
        assert!(Config::load(Some(f.path()), vec![]).is_err());
        let e = Config::load(None, env(&[("SLUICE_WORKER__CONCURRENCY", "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker.concurrency"), "{e}");
        let e = Config::load(Some(Path::new("/no/such.toml")), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn the_jobs_topic_has_a_default_and_its_own_name() {
        let cfg = Config::default();
        assert_eq!(cfg.topics.jobs, "sluice.jobs");
        assert!(cfg.worker.gatherer);
        assert_eq!(cfg.worker.gather_group(), "sluice-workers.gather");
        let e = Config::load(None, env(&[("SLUICE_TOPICS__JOBS", "sluice.results")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`sluice.results` is used for two purposes"),
            "{e}"
        );
    }

    #[test]
    fn librdkafka_options_pass_through_and_stay_out_of_debug() {
        let f = toml("[kafka.librdkafka_options]\n\"sasl.password\" = \"hunter2\"\n");
        let cfg = Config::load(Some(f.path()), vec![]).unwrap();
        assert_eq!(cfg.kafka.librdkafka_options["sasl.password"], "hunter2");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn external_handlers_parse() {
        let f = toml("[worker.handlers.wc]\ncommand = \"wc\"\nargs = [\"-w\"]\n");
        let cfg = Config::load(Some(f.path()), vec![]).unwrap();
        assert_eq!(cfg.worker.handlers["wc"].args, vec!["-w"]);
        assert_eq!(cfg.worker.handlers["wc"].stderr_tail_bytes, 2048);
    }

    #[test]
    fn metrics_listen_must_be_an_address() {
        let e = Config::load(None, env(&[("SLUICE_METRICS__LISTEN", "localhost")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.listen"), "{e}");
        let cfg = Config::load(
            None,
            env(&[
                ("SLUICE_METRICS__LISTEN", "localhost"),
                ("SLUICE_METRICS__ENABLED", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.metrics.statistics_interval(), None, "off when disabled");
        assert_eq!(Config::default().metrics.statistics_interval(), Some(5000));
    }

    #[test]
    fn scheduler_settings_load_from_env_and_bad_ones_are_named() {
        let cfg = Config::load(
            None,
            env(&[
                ("SLUICE_TOPICS__PRIORITY_LANES", "true"),
                ("SLUICE_WORKER__SCHEDULER__CAPACITY__CPU", "8"),
                (
                    "SLUICE_WORKER__SCHEDULER__POLICY",
                    "shortest_expected_first",
                ),
                ("SLUICE_WORKER__KINDS__THUMB__RATE_PER_S", "2.5"),
                // The rest of the README's examples.
                ("SLUICE_TOPICS__LONG_LANE", "true"),
                ("SLUICE_PRODUCER__LONG_TASK_MS", "10000"),
                ("SLUICE_PRODUCER__PARTITIONER", "lag_aware"),
                ("SLUICE_WORKER__POOL", "gpu"),
                ("SLUICE_WORKER__GATHERER", "false"),
                ("SLUICE_WORKER__SCHEDULER__ADAPTIVE__ENABLED", "true"),
                ("SLUICE_WORKER__SCHEDULER__ADAPTIVE__MAX_CONCURRENCY", "64"),
            ]),
        )
        .unwrap();
        assert!(cfg.topics.long_lane && !cfg.worker.gatherer);
        assert_eq!(cfg.producer.long_task_ms, 10_000);
        assert_eq!(cfg.producer.partitioner, PartitionerKind::LagAware);
        assert_eq!(cfg.worker.pool.as_deref(), Some("gpu"));
        assert!(cfg.worker.scheduler.adaptive.enabled);
        assert_eq!(cfg.worker.scheduler.adaptive.max_concurrency, Some(64));
        assert!(cfg.topics.priority_lanes);
        assert_eq!(cfg.worker.scheduler.capacity["cpu"], 8.0);
        assert_eq!(
            cfg.worker.scheduler.policy,
            QueuePolicy::ShortestExpectedFirst
        );
        assert_eq!(cfg.worker.kinds["thumb"].rate_per_s, Some(2.5));
        for (k, v, field) in [
            (
                "SLUICE_WORKER__SCHEDULER__MIN_SHARE__LOW",
                "0.9",
                "min_share",
            ),
            ("SLUICE_WORKER__SCHEDULER__LONG_SLOTS", "0", "long_slots"),
            ("SLUICE_WORKER__KINDS__X__RATE_PER_S", "0", "rate_per_s"),
            ("SLUICE_WORKER__POOL", "a/b", "worker.pool"),
            ("SLUICE_WORKER__SCHEDULER__CAPACITY__CPU", "-1", "capacity"),
        ] {
            let e = Config::load(None, env(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(field), "{k}={v}: {e}");
        }
    }

    #[test]
    fn every_example_config_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(Some(&path), vec![])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2, "expected example configs in {}", dir.display());
    }
}
