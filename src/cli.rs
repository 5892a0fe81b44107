//! Command-line interface: flags, and how they override the loaded configuration.

use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice_common::config::{GroupProtocol, LogFormat, Ordering};
use sluice_common::job::GatherSpec;
use sluice_common::{Config, TopicSpec, TraceContext};
use sluice_producer::job::Split;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Sluice: publish tasks to Kafka, run them in worker groups, read every outcome.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML configuration file (see config/sluice.toml).
    #[arg(long, short = 'c', global = true, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers, host:port[,host:port…] (overrides kafka.brokers).
    #[arg(long, short = 'b', global = true, env = "SLUICE_BROKERS")]
    pub brokers: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an embedded Kafka-protocol broker (in memory; for development and tests).
    Broker(BrokerArgs),
    /// Join a worker group and run tasks.
    Worker(WorkerArgs),
    /// Publish tasks.
    Produce(ProduceArgs),
    /// Read task results.
    Results(ResultsArgs),
    /// Show a worker group: members, partitions, committed offsets, lag, rate.
    Status(StatusArgs),
    /// List or replay dead-lettered tasks.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Split work into sub-tasks, run them across the group, gather the results.
    #[command(subcommand)]
    Job(JobCommand),
    /// Start a broker and workers, run a demo workload, print a summary.
    Dev(DevArgs),
    /// Measure the whole pipeline against a raw librdkafka pipe in the same run
    /// (embedded broker unless --brokers is given); see docs/BENCHMARKS.md.
    Bench(BenchArgs),
    /// Ask a worker on this machine whether it is ready (exit 0) or not (exit 1),
    /// for container health checks.
    Health(HealthArgs),
}

/// `sluice health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Ask whether the process is alive (/health/live) instead of ready.
    #[arg(long)]
    pub live: bool,
    /// The worker's endpoint, ip:port (default: metrics.listen; 0.0.0.0 is asked
    /// on 127.0.0.1). A worker that moved to a later port because its port was
    /// taken logs the address it uses.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Give up after this many milliseconds without an answer.
    #[arg(long, default_value_t = 3_000)]
    pub timeout_ms: u64,
}

/// `sluice dlq`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show every dead-lettered record and why it is there.
    List(DlqListArgs),
    /// Publish dead-lettered tasks again, to the topic they came from, attempts reset.
    Replay(DlqReplayArgs),
}

/// Which dead letters a command applies to.
#[derive(Debug, Args)]
pub struct DlqFilter {
    /// Only tasks of this kind.
    #[arg(long, short = 'k')]
    pub kind: Option<String>,
    /// Only this task id (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Task topic whose dead letters to use (overrides topics.tasks; the DLQ is
    /// topics.dead_letter, default `<tasks>.dlq`).
    #[arg(long, short = 't')]
    pub topic: Option<String>,
}

/// `sluice dlq list`.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Which records.
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Output format (default: table on a terminal, JSON lines otherwise).
    #[arg(long, value_enum)]
    pub format: Option<ResultsFormat>,
}

/// `sluice dlq replay`.
#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    /// Which records.
    #[command(flatten)]
    pub filter: DlqFilter,
    /// Show what would be replayed without publishing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `sluice job`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Publish a job: a manifest and one sub-task per piece of the split input.
    Submit(Box<JobSubmitArgs>),
    /// Show one job's state, read from Kafka (works from any machine, any time).
    Status(JobStatusArgs),
    /// List every job on the jobs topic with its state.
    List(JobListArgs),
}

/// `sluice job submit`.
#[derive(Debug, Args)]
pub struct JobSubmitArgs {
    /// Kind of every sub-task.
    #[arg(long, short = 'k')]
    pub kind: String,
    /// How to split the input: range:START..END (both ends included; add :CHUNK
    /// for CHUNK numbers per sub-task), lines:PATH (add :N for N lines per
    /// sub-task) or jsonl:PATH (one payload per line).
    #[arg(long, short = 's')]
    pub split: Split,
    /// How to combine the outputs: collect, sum, count, concat, or chord:KIND (a
    /// task of KIND run by a worker over the collected outputs).
    #[arg(long, default_value = "collect")]
    pub gather: GatherSpec,
    /// Failed sub-tasks the job tolerates (left out of the gather).
    #[arg(long, default_value_t = 0)]
    pub tolerate: u64,
    /// Fail the job as soon as more sub-tasks failed than tolerated, instead of
    /// waiting for all of them to list every failure.
    #[arg(long)]
    pub fail_fast: bool,
    /// Job id (default: a new UUIDv7).
    #[arg(long)]
    pub id: Option<String>,
    /// Show progress until the job has a result, then its summary; exit 1 when the
    /// job failed.
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// With --wait: give up waiting (exit 1; the job goes on) after this many ms.
    #[arg(long, requires = "wait")]
    pub timeout_ms: Option<u64>,
    /// With --wait: print the final status as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Continue this W3C trace (`00-<trace id>-<parent id>-<flags>`). Without it
    /// the job starts a trace of its own; either way every sub-task carries it.
    #[arg(long, env = "TRACEPARENT", value_parser = traceparent)]
    pub traceparent: Option<TraceContext>,
    /// Task topic (overrides topics.tasks).
    #[arg(long, short = 't')]
    pub topic: Option<String>,
    /// Priority of every sub-task: > 0 goes to the high lane and < 0 to the low
    /// lane when `topics.priority_lanes` is on (docs/SCHEDULING.md).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Expected run time of each sub-task in ms (shortest-expected-first, the
    /// long-task lane).
    #[arg(long)]
    pub expected_ms: Option<u64>,
    /// Resource needs of each sub-task, a JSON object such as `{"cpu": 2}`;
    /// `"class": "gpu"` sends the sub-tasks to the gpu pool.
    #[arg(long, value_parser = resources)]
    pub resources: Option<serde_json::Value>,
}

/// `sluice job status`.
#[derive(Debug, Args)]
pub struct JobStatusArgs {
    /// The job id.
    pub id: String,
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Follow a running job (progress bar) until it has a result; exit 1 when the
    /// job failed.
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// With --wait: give up waiting (exit 1; the job goes on) after this many ms.
    #[arg(long, requires = "wait")]
    pub timeout_ms: Option<u64>,
}

/// `sluice job list`.
#[derive(Debug, Args)]
pub struct JobListArgs {
    /// One JSON object per job, per line.
    #[arg(long)]
    pub json: bool,
}

/// `sluice broker`.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Address to accept clients on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub listen: SocketAddr,
    /// Partitions of the topics created at start.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Extra topic to create, NAME or NAME:PARTITIONS (repeatable).
    #[arg(long = "topic")]
    pub topics: Vec<TopicSpec>,
}

/// `sluice worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Consumer group (overrides worker.group).
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// Tasks run at once (overrides worker.concurrency).
    #[arg(long, short = 'j')]
    pub concurrency: Option<usize>,
    /// Ordering guarantee (overrides worker.ordering).
    #[arg(long, value_enum)]
    pub ordering: Option<OrderingArg>,
    /// Worker id written into results (default: hostname-pid).
    #[arg(long)]
    pub id: Option<String>,
    /// Task topic (overrides topics.tasks).
    #[arg(long, short = 't')]
    pub topic: Option<String>,
    /// Results topic (overrides topics.results).
    #[arg(long)]
    pub results_topic: Option<String>,
    /// Group protocol (overrides worker.group_protocol).
    #[arg(long, value_enum)]
    pub group_protocol: Option<GroupProtocolArg>,
}

/// `sluice produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Task kind (one task from flags).
    #[arg(
        long,
        short = 'k',
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub kind: Option<String>,
    /// Task payload, JSON.
    #[arg(long, short = 'p', default_value = "null")]
    pub payload: String,
    /// Kafka key: tasks with one key run in order.
    #[arg(long)]
    pub key: Option<String>,
    /// Task id (default: a new unique id; with --count, a suffix -N is added).
    #[arg(long)]
    pub id: Option<String>,
    /// Publish this many copies.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub count: u64,
    /// Read tasks as JSON lines from PATH, or `-` for stdin.
    #[arg(long, short = 'f', conflicts_with_all = ["payload", "key", "id", "count"])]
    pub file: Option<PathBuf>,
    /// Publish to this partition instead of choosing by key.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Task topic (overrides topics.tasks).
    #[arg(long, short = 't')]
    pub topic: Option<String>,
    /// Print every task id, also for large batches.
    #[arg(long)]
    pub ids: bool,
    /// Continue this W3C trace (`00-<trace id>-<parent id>-<flags>`): every task's
    /// `traceparent` header carries its trace id. Without it each task starts a
    /// trace of its own.
    #[arg(long, env = "TRACEPARENT", value_parser = traceparent)]
    pub traceparent: Option<TraceContext>,
    /// Serve /metrics (tasks published, failures, time to acknowledge) on
    /// metrics.listen while publishing, for long streams from stdin.
    #[arg(long)]
    pub metrics: bool,
    /// Task priority: higher runs first; > 0 goes to the high lane and < 0 to the
    /// low lane when `topics.priority_lanes` is on (docs/SCHEDULING.md).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "file")]
    pub priority: Option<i32>,
    /// Run no earlier than this long from now: `250ms`, `30s`, `5m`, `1h`, or a
    /// number of milliseconds. Sets `not_before_ms` (tasks from --file keep their
    /// own). Never started early by the worker's clock; late by the wait for a
    /// free slot (docs/SCHEDULING.md has the precision).
    #[arg(long, value_parser = parse_delay)]
    pub delay: Option<u64>,
    /// Expected run time in ms (shortest-expected-first, the long-task lane).
    #[arg(long, conflicts_with = "file")]
    pub expected_ms: Option<u64>,
    /// Resource needs, a JSON object such as `{"cpu": 2, "memory_mb": 512}`;
    /// `"class": "gpu"` sends the task to the gpu pool.
    #[arg(long, conflicts_with = "file", value_parser = resources)]
    pub resources: Option<serde_json::Value>,
}

/// A delay as milliseconds: `250ms`, `30s`, `5m`, `1h`, or plain milliseconds.
pub fn parse_delay(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a delay such as 250ms, 30s, 5m or 1h"))?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    Ok((n * factor).round() as u64)
}

/// Output format of `sluice results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultsFormat {
    /// One JSON object per line.
    Json,
    /// A compact table.
    Table,
}

/// `sluice results`.
#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// Keep reading new results (otherwise stop at the end of the topic).
    #[arg(long, short = 'F')]
    pub follow: bool,
    /// Only show results of this task id (repeatable); waits until each arrived.
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Exit once results for N distinct tasks have been read.
    #[arg(long)]
    pub wait: Option<usize>,
    /// With --wait or --id: give up (exit 1) after this many milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
    /// Output format (default: table on a terminal, JSON lines otherwise).
    #[arg(long, value_enum)]
    pub format: Option<ResultsFormat>,
    /// Results topic (overrides topics.results).
    #[arg(long, short = 't')]
    pub topic: Option<String>,
    /// Start at the end of the topic: only results published from now on.
    #[arg(long)]
    pub new_only: bool,
}

/// `sluice status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Consumer group (overrides worker.group).
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// Task topic (overrides topics.tasks).
    #[arg(long, short = 't')]
    pub topic: Option<String>,
    /// Refresh every --interval-ms until Ctrl-C.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// With --watch: time between refreshes, and the window of the rate.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub interval_ms: u64,
    /// One JSON document per snapshot, on one line, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `sluice dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Workers to start.
    #[arg(long, short = 'w', default_value_t = 3)]
    pub workers: usize,
    /// Demo tasks to publish.
    #[arg(long, short = 'n', default_value_t = 3000)]
    pub tasks: usize,
    /// Partitions of the task topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Concurrency of each worker.
    #[arg(long, short = 'j', default_value_t = 32)]
    pub concurrency: usize,
    /// After the tasks, a job squaring 1..N across the workers, gathered by sum
    /// (0: no job).
    #[arg(long, default_value_t = 1000)]
    pub job: u64,
}

/// `sluice bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenarios to run, in this order (default: all four).
    #[arg(long = "scenario", value_enum, num_args = 1.., default_values_t = [ScenarioArg::Saturation, ScenarioArg::Latency, ScenarioArg::ScaleOut, ScenarioArg::AddWorker])]
    pub scenarios: Vec<ScenarioArg>,
    /// Tasks per saturation run (each of Sluice and the baseline).
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub tasks: usize,
    /// Task kind of the saturation and latency scenarios.
    #[arg(long, value_enum, default_value_t = BenchKindArg::Noop)]
    pub kind: BenchKindArg,
    /// Handler time of `sleep` tasks, and of the scale-out and add-worker scenarios.
    #[arg(long, default_value_t = 1)]
    pub task_ms: u64,
    /// Loop iterations of `cpu` tasks.
    #[arg(long, default_value_t = 10_000)]
    pub cpu_iterations: u64,
    /// Size of each task record's value in bytes (padded; at least the bare task).
    #[arg(long, default_value_t = 128)]
    pub payload_bytes: usize,
    /// Partitions of every task and result topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Workers (in this process) of the saturation and latency scenarios.
    #[arg(long, short = 'w', default_value_t = 1)]
    pub workers: usize,
    /// Concurrency of each worker in the saturation and latency scenarios.
    #[arg(long, short = 'j', default_value_t = 256)]
    pub concurrency: usize,
    /// Concurrency of each worker in the scale-out and add-worker scenarios,
    /// where it sets the bound (workers x concurrency / task time).
    #[arg(long, default_value_t = 8)]
    pub scale_concurrency: usize,
    /// Offered rate of the saturation scenario in tasks/s (open loop); absent: as
    /// fast as the producer can go.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of load per level in the latency scenario and per run of the
    /// scale-out and add-worker scenarios.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Client settings of both Sluice and the baseline.
    #[arg(long, value_enum, default_value_t = ProfileArg::Throughput)]
    pub profile: ProfileArg,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Set from the global --brokers: measure on that cluster instead of an
    /// embedded broker.
    #[arg(skip)]
    pub external_brokers: bool,
}

/// `sluice bench --scenario`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioArg {
    /// No-op tasks as fast as possible: throughput and CPU per task.
    Saturation,
    /// Latency at 10, 50 and 80 % of the saturation throughput.
    Latency,
    /// 1, 2 and 4 workers on sleep tasks against the concurrency / task-time bound.
    ScaleOut,
    /// A second worker joins under load: throughput over time, time to its first task.
    AddWorker,
    /// Priority lanes, FIFO vs shortest-expected-first, lag-aware vs round-robin
    /// partitioning, each against its baseline (docs/SCHEDULING.md).
    Scheduling,
}

/// `sluice bench --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchKindArg {
    /// Returns at once.
    Noop,
    /// Sleeps --task-ms.
    Sleep,
    /// Spins --cpu-iterations on the blocking pool.
    Cpu,
}

/// `sluice bench --profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    /// Batching: producer linger 5 ms, fetch waits up to 100 ms.
    Throughput,
    /// No linger, fetch waits of 1 ms.
    LowLatency,
}

/// `--ordering`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OrderingArg {
    /// Same key in order, different keys in parallel.
    Key,
    /// One task at a time per partition.
    Partition,
    /// No ordering.
    None,
}

/// `--group-protocol`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GroupProtocolArg {
    /// Classic protocol, cooperative-sticky assignor.
    Classic,
    /// KIP-848 consumer protocol.
    Consumer,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable.
    Text,
    /// JSON lines.
    Json,
}

impl Cli {
    /// Tells subcommands what only the global flags know.
    pub fn resolve(mut self) -> Self {
        if let Command::Bench(b) = &mut self.command {
            b.external_brokers = self.brokers.is_some();
        }
        self
    }

    /// Applies flags over the loaded configuration.
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(b) = &self.brokers {
            cfg.kafka.brokers = b.clone();
        }
        if let Some(f) = self.log_format {
            cfg.log.format = match f {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            };
        }
        match &self.command {
            Command::Worker(w) => {
                set(&mut cfg.worker.group, &w.group);
                set(&mut cfg.worker.concurrency, &w.concurrency);
                if w.id.is_some() {
                    cfg.worker.id = w.id.clone();
                }
                set(&mut cfg.topics.tasks, &w.topic);
                set(&mut cfg.topics.results, &w.results_topic);
                if let Some(o) = w.ordering {
                    cfg.worker.ordering = match o {
                        OrderingArg::Key => Ordering::Key,
                        OrderingArg::Partition => Ordering::Partition,
                        OrderingArg::None => Ordering::None,
                    };
                }
                if let Some(p) = w.group_protocol {
                    cfg.worker.group_protocol = match p {
                        GroupProtocolArg::Classic => GroupProtocol::Classic,
                        GroupProtocolArg::Consumer => GroupProtocol::Consumer,
                    };
                }
            }
            Command::Produce(p) => set(&mut cfg.topics.tasks, &p.topic),
            Command::Job(JobCommand::Submit(j)) => set(&mut cfg.topics.tasks, &j.topic),
            Command::Results(r) => set(&mut cfg.topics.results, &r.topic),
            Command::Status(s) => {
                set(&mut cfg.worker.group, &s.group);
                set(&mut cfg.topics.tasks, &s.topic);
            }
            Command::Dlq(DlqCommand::List(DlqListArgs { filter, .. }))
            | Command::Dlq(DlqCommand::Replay(DlqReplayArgs { filter, .. })) => {
                set(&mut cfg.topics.tasks, &filter.topic)
            }
            // `dev` prints its own summary; task failures it provokes on purpose
            // are not news. RUST_LOG still overrides this.
            // In a measurement every log line is noise and cost, too.
            Command::Dev(_) | Command::Bench(_) if cfg.log == Default::default() => {
                cfg.log.level = "error".into()
            }
            Command::Broker(_)
            | Command::Dev(_)
            | Command::Bench(_)
            | Command::Health(_)
            | Command::Job(_) => {}
        }
    }
}

fn set<T: Clone>(field: &mut T, flag: &Option<T>) {
    if let Some(v) = flag {
        *field = v.clone();
    }
}

/// Reads `--resources`: a JSON object of needs, checked as a worker would.
fn resources(value: &str) -> Result<serde_json::Value, String> {
    let v = serde_json::from_str(value).map_err(|e| format!("not JSON: {e}"))?;
    sluice_common::resources::Needs::parse(Some(&v))?;
    Ok(v)
}

/// Reads `--traceparent`.
fn traceparent(value: &str) -> Result<TraceContext, String> {
    TraceContext::parse(value)
        .ok_or_else(|| "not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)".to_string())
}
