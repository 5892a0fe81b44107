//! The scaling signal: how many workers the group needs.
//!
//! Every `worker.scheduler.scaling_interval_ms` (5 s) each worker publishes
//! its share of the need as `sluice_scaling_needed_workers`:
//!
//! ```text
//! arrival  = finished/s + Δlag/s                 (records reaching its partitions)
//! capacity = concurrency limit / mean attempt s  (tasks/s it runs when saturated)
//! need     = min(cap, (arrival + lag / drain_s) / capacity)
//! cap      = partitions it holds with lag, at least 1 (never more than it holds)
//! ```
//!
//! `lag` is the records of its partitions after their committed offsets
//! (librdkafka statistics, so `metrics.statistics_interval_ms` must be on), and
//! `drain_s` is `worker.scheduler.scaling_drain_s`: how fast a backlog should
//! be cleared. The group needs `ceil(sum(sluice_scaling_needed_workers))`
//! workers — the query an autoscaler (KEDA's Prometheus scaler, say) should
//! use. Each worker's share is capped at the partitions it holds that have
//! records waiting, so the sum never exceeds the group's partitions with a
//! backlog: a partition is consumed by one member, so a worker beyond that
//! would get no waiting records (counting every partition held would count
//! the retry topic's and idle lanes' too, and ask for up to five times too
//! many). A worker with work but no lag at the last reading may still ask for
//! one. A worker that has not run anything yet has no capacity estimate; it
//! counts as one worker while it has work, zero when idle.

/// One reading of a worker's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// Seconds since some fixed start.
    pub at_s: f64,
    /// Records after the committed offsets of the worker's partitions.
    pub lag: i64,
    /// Tasks finished so far.
    pub finished: u64,
}

/// What the formula needs besides two samples.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Worker {
    pub limit: usize,
    /// Mean attempt time; `None` before the first attempt.
    pub mean_run_s: Option<f64>,
    /// Partitions it holds (task lanes and retry topic).
    pub partitions: usize,
    /// Of those, partitions with lag at the last statistics report.
    pub lagging: usize,
    pub drain_s: f64,
}

/// This worker's share of the workers the group needs.
pub(crate) fn needed_workers(prev: Sample, now: Sample, w: Worker) -> f64 {
    let dt = (now.at_s - prev.at_s).max(1e-3);
    let finished_rate = now.finished.saturating_sub(prev.finished) as f64 / dt;
    let lag_rate = (now.lag - prev.lag) as f64 / dt;
    let arrival = (finished_rate + lag_rate).max(0.0);
    let demand = arrival + now.lag.max(0) as f64 / w.drain_s;
    let cap = w.lagging.max(1).min(w.partitions) as f64;
    match w.mean_run_s {
        Some(mean) if mean > 0.0 => {
            let capacity = w.limit as f64 / mean;
            (demand / capacity).min(cap)
        }
        _ if demand > 0.0 => cap.min(1.0),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(mean: Option<f64>, partitions: usize) -> Worker {
        Worker {
            limit: 10,
            mean_run_s: mean,
            partitions,
            lagging: partitions,
            drain_s: 60.0,
        }
    }

    fn s(at_s: f64, lag: i64, finished: u64) -> Sample {
        Sample {
            at_s,
            lag,
            finished,
        }
    }

    #[test]
    fn keeping_up_needs_arrival_over_capacity() {
        // 10 slots, 0.1 s tasks: 100 tasks/s. 50/s arrive and finish, no lag.
        let need = needed_workers(s(0.0, 0, 0), s(10.0, 0, 500), w(Some(0.1), 8));
        assert!((need - 0.5).abs() < 1e-9, "{need}");
    }

    #[test]
    fn a_growing_backlog_adds_its_growth_and_its_drain() {
        // 100/s finished, lag grew by 600 in 10 s (60/s more arrive), 6000 waiting:
        // (160 + 6000/60) / 100 = 2.6.
        let need = needed_workers(s(0.0, 5400, 0), s(10.0, 6000, 1000), w(Some(0.1), 8));
        assert!((need - 2.6).abs() < 1e-9, "{need}");
    }

    #[test]
    fn the_need_is_capped_by_partitions_and_unknown_capacity_counts_one() {
        let need = needed_workers(s(0.0, 0, 0), s(1.0, 1_000_000, 0), w(Some(1.0), 3));
        assert_eq!(need, 3.0);
        assert_eq!(needed_workers(s(0.0, 0, 0), s(1.0, 5, 0), w(None, 3)), 1.0);
        assert_eq!(needed_workers(s(0.0, 0, 0), s(1.0, 0, 0), w(None, 3)), 0.0);
        assert_eq!(needed_workers(s(0.0, 0, 0), s(1.0, 9, 0), w(None, 0)), 0.0);
    }

    #[test]
    fn only_partitions_with_a_backlog_count_toward_the_cap() {
        // 8 partitions held (4 of the task topic, 4 of the retry topic), the
        // backlog on 3 of them: no more than 3 workers can take it.
        let held = |lagging| Worker {
            lagging,
            ..w(Some(1.0), 8)
        };
        let flood = (s(0.0, 0, 0), s(1.0, 1_000_000, 0));
        assert_eq!(needed_workers(flood.0, flood.1, held(3)), 3.0);
        // Work arriving but no lag at the reading: up to one worker.
        let busy = needed_workers(s(0.0, 0, 0), s(1.0, 0, 50), held(0));
        assert_eq!(busy, 1.0, "50/s on 10/s of capacity, capped at one");
        let light = needed_workers(s(0.0, 0, 0), s(10.0, 0, 20), held(0));
        assert!((light - 0.2).abs() < 1e-9, "{light}");
    }
}
