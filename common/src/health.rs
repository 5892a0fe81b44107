//! Liveness and readiness of a worker, as `/health/live` and `/health/ready`
//! answer them.
//!
//! **Live** means the process runs and its async runtime answers HTTP: the
//! endpoint itself is the proof, so `/health/live` is always 200.
//!
//! **Ready** means the worker is doing its job right now; all of these hold:
//! 1. the worker is not stopping (no SIGINT/SIGTERM, safety valve not tripped);
//! 2. the poll thread called `poll` within the last [`POLL_STALE_AFTER`]
//!    (10 s). It polls at least every 50 ms while healthy, also while its
//!    partitions are paused, so a stale poll means it is stuck: still starting
//!    (not yet subscribed), blocked in a rebalance callback that waits for running
//!    tasks (`worker.drain_timeout_ms`), or wedged;
//! 3. at least one partition (of the task or retry topic) is assigned to it. A
//!    worker without partitions is a healthy but idle group member, for example
//!    the 13th worker on 12 partitions: it takes over when another leaves, but it
//!    runs nothing until then, so it is reported as not ready.
//!
//! A worker that is not ready answers 503 with the first reason that applies.
//!
//! A process with no poll thread and no partitions, such as `sluice produce
//! --metrics`, uses [`Health::without_poll_thread`]: it is ready once connected
//! (it is built after its publisher connects) until it begins to stop.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long after its last poll a poll thread counts as stuck.
pub const POLL_STALE_AFTER: Duration = Duration::from_secs(10);

/// Why a worker is not ready; its `Display` is the body of the 503 answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotReady {
    /// Shutting down: draining, committing, leaving the group.
    #[error("not ready: the worker is stopping")]
    Stopping,
    /// The poll thread has not started yet (connecting, creating topics).
    #[error("not ready: the worker is starting (not polling Kafka yet)")]
    Starting,
    /// The poll thread has not polled for this long.
    #[error(
        "not ready: the poll thread last polled {0:.1} s ago (stuck in a rebalance or drain?)"
    )]
    PollStale(f64),
    /// The group gave this worker no partitions.
    #[error("not ready: no partitions assigned (the group has more workers than partitions, or is rebalancing)")]
    NoPartitions,
}

/// Shared state the worker updates and the endpoint reads. Updates are single
/// relaxed atomic stores, cheap enough for every turn of the poll loop.
#[derive(Debug)]
pub struct Health {
    origin: Instant,
    /// Milliseconds after `origin` of the last poll, plus one; 0 = never polled.
    last_poll: AtomicU64,
    assigned: AtomicUsize,
    stopping: AtomicBool,
    /// Whether rules 2 and 3 apply: false for a process without a poll thread.
    worker: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            origin: Instant::now(),
            last_poll: AtomicU64::new(0),
            assigned: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            worker: true,
        }
    }
}

impl Health {
    /// The health of a process that polls no consumer and holds no partitions
    /// (a publisher): ready from now until [`Health::stopping`].
    pub fn without_poll_thread() -> Health {
        Health {
            worker: false,
            ..Health::default()
        }
    }

    /// The poll thread just polled.
    pub fn polled(&self) {
        self.polled_at(Instant::now());
    }

    /// The poll thread polled at `now` (a time it read anyway).
    pub fn polled_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64 + 1;
        self.last_poll.store(ms, Ordering::Relaxed);
    }

    /// The worker now holds `n` partitions.
    pub fn partitions_assigned(&self, n: usize) {
        self.assigned.store(n, Ordering::Relaxed);
    }

    /// The worker began to stop; it stays not ready until it exits.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether the worker is ready now, by the rules in the module docs.
    pub fn ready(&self) -> Result<(), NotReady> {
        self.ready_at(self.origin.elapsed())
    }

    fn ready_at(&self, now: Duration) -> Result<(), NotReady> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(NotReady::Stopping);
        }
        if !self.worker {
            return Ok(());
        }
        let last = self.last_poll.load(Ordering::Relaxed);
        if last == 0 {
            return Err(NotReady::Starting);
        }
        let since = now.saturating_sub(Duration::from_millis(last - 1));
        if since > POLL_STALE_AFTER {
            return Err(NotReady::PollStale(since.as_secs_f64()));
        }
        if self.assigned.load(Ordering::Relaxed) == 0 {
            return Err(NotReady::NoPartitions);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_poll_thread_is_ready_until_it_stops() {
        let h = Health::without_poll_thread();
        assert_eq!(h.ready_at(POLL_STALE_AFTER * 3), Ok(()));
        h.stopping();
        assert_eq!(h.ready(), Err(NotReady::Stopping));
    }

    #[test]
    fn ready_needs_a_fresh_poll_and_partitions_and_not_stopping() {
        let h = Health::default();
        assert_eq!(h.ready(), Err(NotReady::Starting));
        h.polled();
        assert_eq!(h.ready(), Err(NotReady::NoPartitions));
        h.partitions_assigned(3);
        assert_eq!(h.ready(), Ok(()));
        let later = h.origin.elapsed() + POLL_STALE_AFTER + Duration::from_secs(1);
        assert!(matches!(h.ready_at(later), Err(NotReady::PollStale(s)) if s > 10.0));
        h.partitions_assigned(0);
        assert_eq!(h.ready(), Err(NotReady::NoPartitions));
        h.partitions_assigned(1);
        h.stopping();
        assert_eq!(h.ready(), Err(NotReady::Stopping));
        assert!(NotReady::Stopping.to_string().starts_with("not ready: "));
    }
}
