//! Scheduler metrics: lanes, resources, the concurrency limit, rate limits
//! and the scaling signal. Label values stay bounded: `lane` is one of the four
//! lanes, `resource` one of the names in `worker.scheduler.capacity`.

use super::{Builder, Metrics};
use crate::resources::Amounts;
use crate::routing::Lane;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::time::Duration;

pub(super) struct SchedulerMetrics {
    waiting: IntGaugeVec,
    starts: IntCounterVec,
    lane_wait: HistogramVec,
    /// The series of each lane in `Lane::ALL` order, resolved once: a label
    /// lookup hashes the label values, and these change on every task start and
    /// end (about 1,700 instructions per task for the four `waiting` gauges).
    by_lane: [LaneSeries; 4],
    in_use: GaugeVec,
    capacity: GaugeVec,
    limit: IntGauge,
    rate_waits: IntCounter,
    needed_workers: Gauge,
}

impl SchedulerMetrics {
    pub(super) fn register(b: &mut Builder) -> Self {
        let waiting = b.gauge_vec(
                "sluice_lane_waiting_tasks",
                "Ready tasks waiting in the worker's scheduler for a slot, by lane (high, normal, long, low).",
                &["lane"],
            );
        let starts = b.counter_vec(
            "sluice_lane_starts_total",
            "Attempts granted a slot by the scheduler, by lane.",
            &["lane"],
        );
        let lane_wait = b.histogram_vec(
            "sluice_lane_queue_wait_seconds",
            "From a task's creation to its first attempt's start, by lane.",
            &["lane"],
        );
        SchedulerMetrics {
            by_lane: Lane::ALL.map(|lane| LaneSeries {
                waiting: waiting.with_label_values(&[lane.as_str()]),
                starts: starts.with_label_values(&[lane.as_str()]),
                wait: lane_wait.with_label_values(&[lane.as_str()]),
            }),
            waiting,
            starts,
            lane_wait,
            in_use: b.float_gauge_vec(
                "sluice_resource_in_use",
                "Resources held by running tasks, by name (only names in worker.scheduler.capacity).",
                &["resource"],
            ),
            capacity: b.float_gauge_vec(
                "sluice_resource_capacity",
                "The worker's configured capacity, by resource name.",
                &["resource"],
            ),
            limit: b.gauge(
                "sluice_concurrency_limit",
                "Tasks the worker may run at once now: worker.concurrency, or the adaptive limit.",
            ),
            rate_waits: b.counter(
                "sluice_rate_limit_waits_total",
                "Attempts that waited for their kind's rate limit (worker.kinds.<kind>.rate_per_s).",
            ),
            needed_workers: b.float_gauge(
                "sluice_scaling_needed_workers",
                "This worker's share of the workers its group needs for backlog and arrivals, capped at its partitions with lag; ceil(sum()) over the group is the scaling signal (docs/SCHEDULING.md).",
            ),
        }
    }

    fn lane(&self, name: &str) -> Option<&LaneSeries> {
        Lane::ALL
            .iter()
            .position(|l| l.as_str() == name)
            .map(|i| &self.by_lane[i])
    }
}

/// One lane's series.
struct LaneSeries {
    waiting: IntGauge,
    starts: IntCounter,
    wait: Histogram,
}

impl Metrics {
    /// The scheduler's state after a change: waiting tasks by lane, resources
    /// held, the concurrency limit.
    pub fn scheduler_state(
        &self,
        waiting: &[(&str, usize)],
        in_use: &Amounts,
        capacity: &Amounts,
        limit: usize,
    ) {
        let s = &self.scheduler;
        for (lane, n) in waiting {
            match s.lane(lane) {
                Some(series) => series.waiting.set(*n as i64),
                None => s.waiting.with_label_values(&[lane]).set(*n as i64),
            }
        }
        for name in capacity.0.keys() {
            let used = in_use.0.get(name).copied().unwrap_or(0.0);
            s.in_use.with_label_values(&[name]).set(used);
        }
        s.limit.set(limit as i64);
    }

    /// The worker's capacity, once at start.
    pub fn capacity_declared(&self, capacity: &Amounts) {
        for (name, v) in &capacity.0 {
            self.scheduler.capacity.with_label_values(&[name]).set(*v);
        }
    }

    /// An attempt of `lane` was granted a slot; `queue_wait` for first attempts.
    pub fn lane_started(&self, lane: &str, queue_wait: Option<Duration>) {
        let s = &self.scheduler;
        let Some(series) = s.lane(lane) else {
            s.starts.with_label_values(&[lane]).inc();
            if let Some(w) = queue_wait {
                s.lane_wait
                    .with_label_values(&[lane])
                    .observe(w.as_secs_f64());
            }
            return;
        };
        series.starts.inc();
        if let Some(w) = queue_wait {
            series.wait.observe(w.as_secs_f64());
        }
    }

    /// A new scaling signal: this worker's share of the workers the group needs.
    pub fn scaling_signal(&self, needed_workers: f64) {
        self.scheduler.needed_workers.set(needed_workers);
    }

    /// Records after the committed offsets of the assigned partitions, from the
    /// last statistics report (`sluice_lag_records`).
    pub fn lag_records(&self) -> i64 {
        self.stats.lag.get()
    }

    /// An attempt waited for its kind's rate limit.
    pub fn rate_limited(&self) {
        self.scheduler.rate_waits.inc();
    }
}
