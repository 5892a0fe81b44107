//! Metrics: one [`Metrics`] value owns the Prometheus registry of a process (a
//! worker, or a producer: see `publish`), and
//! every metric changes through a method named by the event that changes it.
//!
//! Names follow `sluice_<thing>_<unit>`: counters end in `_total`, durations are
//! `_seconds` histograms. README.md ("Observability") lists them all; dashboards
//! and alert rules in `dashboards/` use only these names, which
//! `common/tests/dashboards.rs` checks.
//!
//! Labels stay bounded, because every label value is a series Prometheus keeps:
//! - `kind` is chosen by whoever publishes tasks, so at most [`MAX_KINDS`]
//!   distinct kinds get their own label value (the worker's registered kinds
//!   first, then kinds in the order they arrive); later ones are counted as
//!   [`OTHER_KIND`]. Records that are not tasks count as [`UNREADABLE_KIND`].
//! - `status` is one of the four result statuses, `event` is `assigned` or
//!   `revoked`, `state` (of a job) is `succeeded` or `failed`.
//! - `topic`/`partition` name only partitions assigned to this worker (or, with
//!   no `partition`, topics it consumes), and `broker` the brokers of the
//!   cluster; `gap` is `single` or `range` (see `gaps`).
//! - No metric carries the worker id: Prometheus adds `instance` to every series.
//!   `sluice_worker_info{worker, group}` maps an instance to its worker id.
//!
//! Hot paths (per task) use [`KindMetrics`], label handles resolved once per
//! kind and kept in a small cache, so counting is an atomic add.

mod gaps;
mod kinds;
mod publish;
mod scheduler;
mod statistics;

pub use kinds::{KindMetrics, MAX_KINDS, OTHER_KIND, UNREADABLE_KIND};
pub use publish::PublishFailure;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Histogram buckets for every duration here, in seconds: from half a
/// millisecond (a `noop` task, a commit on a local broker) to a minute (queue
/// waits behind a backlog, retry backoffs). Past the last bucket only `+Inf`
/// counts, so percentiles above a minute read as "over a minute".
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// What kind of metric a registered name is; histograms are exported as
/// `<name>_bucket`, `<name>_sum` and `<name>_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// Which rebalance callback ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebalance {
    /// Partitions were given to this worker.
    Assigned,
    /// Partitions were taken away (or lost).
    Revoked,
}

/// The metrics of one worker process.
pub struct Metrics {
    registry: Registry,
    names: Vec<(String, MetricType)>,
    worker_info: IntGaugeVec,
    ready: IntGauge,
    kinds: kinds::Kinds,
    queue_wait: Histogram,
    end_to_end: Histogram,
    in_flight: IntGauge,
    buffered: IntGauge,
    abandoned: IntCounter,
    gaps: gaps::GapMetrics,
    partitions_assigned: IntGauge,
    partitions_paused: IntGauge,
    rebalances: IntCounterVec,
    commit_duration: Histogram,
    commit_failures: IntCounter,
    publish: publish::PublishMetrics,
    jobs_gathered: IntCounterVec,
    jobs_open: IntGauge,
    jobs_results_read: IntCounter,
    stats: statistics::StatsGauges,
    scheduler: scheduler::SchedulerMetrics,
    /// Label sets set by the last statistics report, to drop the ones that vanish.
    stats_seen: Mutex<statistics::Seen>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("metrics", &self.names.len())
            .finish_non_exhaustive()
    }
}

/// Registers collectors and remembers their names and types.
struct Builder {
    registry: Registry,
    names: Vec<(String, MetricType)>,
}

impl Builder {
    fn add<C: Collector + Clone + 'static>(&mut self, c: C, t: MetricType) -> C {
        for d in c.desc() {
            self.names.push((d.fq_name.clone(), t));
        }
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique and valid");
        c
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::new(name, help).expect("valid metric");
        self.add(c, MetricType::Counter)
    }

    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(c, MetricType::Counter)
    }

    fn gauge(&mut self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("valid metric");
        self.add(g, MetricType::Gauge)
    }

    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(g, MetricType::Gauge)
    }

    fn float_gauge(&mut self, name: &str, help: &str) -> Gauge {
        let g = Gauge::new(name, help).expect("valid metric");
        self.add(g, MetricType::Gauge)
    }

    fn float_gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        self.add(g, MetricType::Gauge)
    }

    fn histogram(&mut self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
        let h = Histogram::with_opts(opts).expect("valid metric");
        self.add(h, MetricType::Histogram)
    }

    fn histogram_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
        let h = HistogramVec::new(opts, labels).expect("valid metric");
        self.add(h, MetricType::Histogram)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every Sluice metric, `sluice_build_info` set.
    pub fn new() -> Metrics {
        let mut b = Builder {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let build_info = b.gauge_vec(
            "sluice_build_info",
            "Always 1; the version label says which Sluice this process runs.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let worker_info = b.gauge_vec(
            "sluice_worker_info",
            "Always 1; maps this instance to its worker id and consumer group.",
            &["worker", "group"],
        );
        let ready = b.gauge(
            "sluice_ready",
            "1 when the worker is ready (polling and holding partitions, see /health/ready), else 0.",
        );
        let families = kinds::Families {
            received: b.counter_vec(
                "sluice_tasks_received_total",
                "Records taken from the task and retry topics, by task kind (a retried task counts again).",
                &["kind"],
            ),
            finished: b.counter_vec(
                "sluice_tasks_finished_total",
                "Tasks whose result is durable on the results topic, by kind and result status.",
                &["kind", "status"],
            ),
            duration: b.histogram_vec(
                "sluice_task_duration_seconds",
                "Time one handler attempt ran, by kind (failed attempts included).",
                &["kind"],
            ),
            retries: b.counter_vec(
                "sluice_task_retries_total",
                "Failed attempts that will be tried again, by kind.",
                &["kind"],
            ),
            dead_letters: b.counter_vec(
                "sluice_dead_letters_total",
                "Records written to the dead-letter topic, by kind.",
                &["kind"],
            ),
        };
        let queue_wait = b.histogram(
            "sluice_task_queue_wait_seconds",
            "From a task's creation to its first attempt's start (clocks of producer and worker).",
        );
        let end_to_end = b.histogram(
            "sluice_task_end_to_end_seconds",
            "From a task's creation to its result being durable, retries included.",
        );
        let in_flight = b.gauge(
            "sluice_tasks_in_flight",
            "Handler attempts running now (at most worker.concurrency).",
        );
        let buffered = b.gauge(
            "sluice_tasks_buffered",
            "Records handed from the poll thread to execution and not yet done (at most worker.max_buffered_tasks before pausing).",
        );
        let abandoned = b.counter(
            "sluice_tasks_abandoned_total",
            "Records handed back unrun because their partition was revoked or the worker stopped; their next owner runs them.",
        );
        let gaps = gaps::GapMetrics::register(&mut b);
        let partitions_assigned = b.gauge(
            "sluice_partitions_assigned",
            "Partitions (task and retry topics) assigned to this worker.",
        );
        let partitions_paused = b.gauge(
            "sluice_partitions_paused",
            "Assigned partitions paused because too many records are buffered.",
        );
        let rebalances = b.counter_vec(
            "sluice_rebalances_total",
            "Rebalance callbacks, by event (assigned, revoked).",
            &["event"],
        );
        let commit_duration = b.histogram(
            "sluice_commit_duration_seconds",
            "Duration of synchronous offset commits: on partition revoke and at shutdown (periodic auto-commits run inside librdkafka, untimed).",
        );
        let commit_failures = b.counter(
            "sluice_commit_failures_total",
            "Offset commits that failed, periodic (auto-commit) or synchronous; their tasks run again if no later commit succeeds.",
        );
        let publish = publish::PublishMetrics::register(&mut b);
        let jobs_gathered = b.counter_vec(
            "sluice_jobs_gathered_total",
            "Job results this worker's gatherer published, by state (succeeded, failed).",
            &["state"],
        );
        let jobs_open = b.gauge(
            "sluice_jobs_open",
            "Jobs with sub-task results on this worker's gather partitions and no job result yet.",
        );
        let jobs_results_read = b.counter(
            "sluice_jobs_results_read_total",
            "Results this worker's job gatherer read from the results topic; it reads none while no job is open.",
        );
        let stats = statistics::StatsGauges {
            partition_lag: b.gauge_vec(
                "sluice_partition_lag_records",
                "Records in an assigned partition after its committed offset (librdkafka statistics).",
                &["topic", "partition"],
            ),
            lag: b.gauge(
                "sluice_lag_records",
                "Sum of sluice_partition_lag_records over this worker's assigned partitions.",
            ),
            committed: b.gauge_vec(
                "sluice_partition_committed_offset",
                "Last committed offset of an assigned partition (librdkafka statistics).",
                &["topic", "partition"],
            ),
            end: b.gauge_vec(
                "sluice_partition_end_offset",
                "High watermark (offset of the next record written) of an assigned partition.",
                &["topic", "partition"],
            ),
            broker_rtt: b.float_gauge_vec(
                "sluice_broker_rtt_seconds",
                "Mean round-trip time of the worker producer's requests to a broker over the last statistics interval.",
                &["broker"],
            ),
            producer_queue: b.float_gauge(
                "sluice_producer_queue_messages",
                "Results, retries and dead letters waiting in the worker's producer queue.",
            ),
            lagging: Default::default(),
        };
        let scheduler = scheduler::SchedulerMetrics::register(&mut b);
        Metrics {
            scheduler,
            kinds: kinds::Kinds::new(families),
            registry: b.registry,
            names: b.names,
            worker_info,
            ready,
            queue_wait,
            end_to_end,
            in_flight,
            buffered,
            abandoned,
            gaps,
            partitions_assigned,
            partitions_paused,
            rebalances,
            commit_duration,
            commit_failures,
            publish,
            jobs_gathered,
            jobs_open,
            jobs_results_read,
            stats,
            stats_seen: Mutex::default(),
        }
    }

    /// Every registered metric name with its type, including families that have
    /// no series yet.
    pub fn names(&self) -> impl Iterator<Item = (&str, MetricType)> {
        self.names.iter().map(|(n, t)| (n.as_str(), *t))
    }

    /// The current values in Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// A worker started: records its id and group (`sluice_worker_info`) and
    /// gives its handlers' kinds their label values first.
    pub fn worker_started(&self, worker: &str, group: &str, kinds: &[&str]) {
        self.worker_info.with_label_values(&[worker, group]).set(1);
        for k in kinds {
            self.kind(k);
        }
    }

    /// Readiness was judged (at each scrape).
    pub fn readiness_checked(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The label handles of `kind` (see [`MAX_KINDS`]).
    pub fn kind(&self, kind: &str) -> Arc<KindMetrics> {
        self.kinds.get(kind)
    }

    /// A record was taken for execution.
    pub fn task_received(&self, kind: &KindMetrics) {
        kind.received.inc();
    }

    /// A task's first attempt is starting, `queue_wait` after it was created
    /// (unknown for records without a creation time).
    pub fn task_started(&self, queue_wait: Option<Duration>) {
        if let Some(w) = queue_wait {
            self.queue_wait.observe(w.as_secs_f64());
        }
    }

    /// A handler attempt begins; the returned guard counts it in flight and
    /// records its duration when dropped.
    pub fn attempt_started(&self, kind: &KindMetrics) -> AttemptTimer {
        self.in_flight.inc();
        AttemptTimer {
            in_flight: self.in_flight.clone(),
            duration: kind.duration.clone(),
            started: Some(Instant::now()),
        }
    }

    /// An attempt failed and the task will be tried again.
    pub fn task_retried(&self, kind: &KindMetrics) {
        kind.retries.inc();
    }

    /// A record was written to the dead-letter topic.
    pub fn task_dead_lettered(&self, kind: &KindMetrics) {
        kind.dead_letters.inc();
    }

    /// A task's result with `status` is durable, `end_to_end` after the task was
    /// created (unknown without a creation time).
    pub fn task_finished(
        &self,
        kind: &KindMetrics,
        status: crate::Status,
        end_to_end: Option<Duration>,
    ) {
        kind.finished[kinds::status_index(status)].inc();
        if let Some(e) = end_to_end {
            self.end_to_end.observe(e.as_secs_f64());
        }
    }

    /// A record was handed back unrun.
    pub fn task_abandoned(&self) {
        self.abandoned.inc();
    }

    /// The poll thread's view of its backlog and pausing, each turn of its loop.
    pub fn poll_state(&self, buffered: usize, paused_partitions: usize) {
        self.buffered.set(buffered as i64);
        self.partitions_paused.set(paused_partitions as i64);
    }

    /// A rebalance callback ran; the worker now holds `assigned` partitions.
    pub fn rebalanced(&self, event: Rebalance, assigned: usize) {
        let label = match event {
            Rebalance::Assigned => "assigned",
            Rebalance::Revoked => "revoked",
        };
        self.rebalances.with_label_values(&[label]).inc();
        self.partitions_assigned.set(assigned as i64);
    }

    /// A synchronous commit returned after `elapsed`; `ok` when it succeeded.
    pub fn committed(&self, elapsed: Duration, ok: bool) {
        self.commit_duration.observe(elapsed.as_secs_f64());
        if !ok {
            self.commit_failures.inc();
        }
    }

    /// A periodic auto-commit failed.
    pub fn commit_failed(&self) {
        self.commit_failures.inc();
    }

    /// The gatherer published a job result; `open` jobs remain on its partitions.
    pub fn job_gathered(&self, state: crate::job::JobState, open: usize) {
        self.jobs_gathered
            .with_label_values(&[&state.to_string()])
            .inc();
        self.jobs_open.set(open as i64);
    }

    /// The gatherer read a result.
    pub fn job_result_read(&self) {
        self.jobs_results_read.inc();
    }

    /// The gatherer's count of open jobs changed (a job started, or partitions moved).
    pub fn jobs_open(&self, open: usize) {
        self.jobs_open.set(open as i64);
    }
}

/// A running handler attempt; see [`Metrics::attempt_started`].
#[must_use = "the attempt is measured until this guard is dropped"]
pub struct AttemptTimer {
    in_flight: IntGauge,
    duration: Histogram,
    /// `None` once [`AttemptTimer::finish`] recorded the attempt.
    started: Option<Instant>,
}

impl AttemptTimer {
    /// The attempt ended: records it and returns how long it ran (one clock
    /// read for both the metric and the caller).
    pub fn finish(mut self) -> Duration {
        let elapsed = self.record();
        self.started = None;
        elapsed
    }

    fn record(&self) -> Duration {
        let elapsed = self.started.map(|s| s.elapsed()).unwrap_or_default();
        self.in_flight.dec();
        self.duration.observe(elapsed.as_secs_f64());
        elapsed
    }
}

impl Drop for AttemptTimer {
    // An attempt dropped unfinished (its future was cancelled) still counts.
    fn drop(&mut self) {
        if self.started.is_some() {
            self.record();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn events_show_up_in_the_text_format() {
        let m = Metrics::new();
        m.worker_started("w-1", "g", &["echo"]);
        let echo = m.kind("echo");
        m.task_received(&echo);
        m.task_started(Some(Duration::from_millis(3)));
        drop(m.attempt_started(&echo));
        m.task_finished(&echo, Status::DeadLettered, Some(Duration::from_millis(7)));
        m.task_dead_lettered(&echo);
        m.rebalanced(Rebalance::Assigned, 4);
        m.committed(Duration::from_millis(2), false);
        m.readiness_checked(true);
        let text = m.render();
        for (series, v) in [
            ("sluice_build_info{version=\"0.1.0\"}", 1.0),
            ("sluice_worker_info{group=\"g\",worker=\"w-1\"}", 1.0),
            ("sluice_tasks_received_total{kind=\"echo\"}", 1.0),
            (
                "sluice_tasks_finished_total{kind=\"echo\",status=\"dead_lettered\"}",
                1.0,
            ),
            (
                "sluice_tasks_finished_total{kind=\"echo\",status=\"succeeded\"}",
                0.0,
            ),
            ("sluice_task_duration_seconds_count{kind=\"echo\"}", 1.0),
            ("sluice_task_queue_wait_seconds_bucket{le=\"0.005\"}", 1.0),
            ("sluice_task_queue_wait_seconds_bucket{le=\"0.0025\"}", 0.0),
            ("sluice_task_end_to_end_seconds_count", 1.0),
            ("sluice_dead_letters_total{kind=\"echo\"}", 1.0),
            ("sluice_tasks_in_flight", 0.0),
            ("sluice_partitions_assigned", 4.0),
            ("sluice_rebalances_total{event=\"assigned\"}", 1.0),
            ("sluice_commit_failures_total", 1.0),
            ("sluice_commit_duration_seconds_count", 1.0),
            ("sluice_ready", 1.0),
        ] {
            assert_eq!(value(&text, series), Some(v), "{series} in\n{text}");
        }
    }

    #[test]
    fn in_flight_counts_running_attempts() {
        let m = Metrics::new();
        let k = m.kind("sleep");
        let a = m.attempt_started(&k);
        let b = m.attempt_started(&k);
        assert_eq!(m.in_flight.get(), 2);
        drop(a);
        drop(b);
        assert_eq!(m.in_flight.get(), 0);
        assert_eq!(k.duration.get_sample_count(), 2);
    }

    #[test]
    fn names_list_every_family_with_its_type() {
        let m = Metrics::new();
        let names: Vec<_> = m.names().collect();
        assert!(names.contains(&("sluice_task_duration_seconds", MetricType::Histogram)));
        assert!(names.contains(&("sluice_tasks_finished_total", MetricType::Counter)));
        assert!(names.contains(&("sluice_lag_records", MetricType::Gauge)));
        for (n, t) in &names {
            assert!(n.starts_with("sluice_"), "{n}");
            assert_eq!(*t == MetricType::Counter, n.ends_with("_total"), "{n}");
        }
    }
}
