//! Live counters of one worker, readable in-process while it runs (by
//! `sluice dev` and tests). Prometheus metrics are `sluice_common::Metrics`,
//! updated at the same places.

use sluice_common::Status;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What a worker has done so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Tasks whose result was delivered, by status (index as in `Status::ALL`).
    finished: [AtomicU64; Status::ALL.len()],
    /// Tasks handed back unrun (partition revoked or worker stopping).
    pub abandoned: AtomicU64,
    /// Failed attempts followed by another attempt.
    pub retries: AtomicU64,
    /// Partitions currently assigned to this worker.
    pub assigned_partitions: AtomicUsize,
    /// Rebalance callbacks seen (assignments plus revocations).
    pub rebalances: AtomicU64,
    /// Most records ever handed out and not yet done at once: pausing keeps it
    /// near `worker.max_buffered_tasks` however slow the tasks are.
    pub buffered_peak: AtomicUsize,
    /// Results the job gatherer read (none while no job is open).
    pub gathered_results: AtomicU64,
    /// The last scaling signal (`sluice_scaling_needed_workers`), as f64 bits.
    needed_workers: AtomicU64,
}

impl Counters {
    pub(crate) fn finished(&self, s: Status) {
        self.finished[index(s)].fetch_add(1, Ordering::Relaxed);
    }

    /// Tasks with a delivered result of status `s`.
    pub fn finished_with(&self, s: Status) -> u64 {
        self.finished[index(s)].load(Ordering::Relaxed)
    }

    /// Total tasks with a delivered result.
    pub fn total_finished(&self) -> u64 {
        self.finished
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn scaling_signal(&self, needed_workers: f64) {
        self.needed_workers
            .store(needed_workers.to_bits(), Ordering::Relaxed);
    }

    /// This worker's share of the workers its group needs, as last computed
    /// (0 before the first `worker.scheduler.scaling_interval_ms`).
    pub fn needed_workers(&self) -> f64 {
        f64::from_bits(self.needed_workers.load(Ordering::Relaxed))
    }

    /// Partitions assigned now.
    pub fn assigned(&self) -> usize {
        self.assigned_partitions.load(Ordering::Relaxed)
    }
}

fn index(s: Status) -> usize {
    Status::ALL
        .iter()
        .position(|x| *x == s)
        .expect("every status is listed")
}
