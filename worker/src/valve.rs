//! The dead-letter safety valve: a flood of records that cannot succeed (a producer
//! writing garbage, a broken deploy) stops the worker with a report instead of
//! quietly moving the whole topic to the dead-letter queue.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WINDOW: Duration = Duration::from_secs(60);

/// Counts dead letters over the last minute and trips past a limit.
pub(crate) struct Valve {
    limit: u64,
    recent: Mutex<VecDeque<Instant>>,
    stop: CancellationToken,
    tripped: Mutex<Option<String>>,
}

impl Valve {
    /// A valve that cancels `stop` past `limit` dead letters a minute (0: never).
    pub fn new(limit: u64, stop: CancellationToken) -> Self {
        Valve {
            limit,
            recent: Mutex::default(),
            stop,
            tripped: Mutex::default(),
        }
    }

    /// Counts one record about to be dead-lettered; false when the valve has
    /// tripped (now or before) and the record must not be parked.
    pub fn dead_lettered(&self, error: &str) -> bool {
        if self.limit == 0 {
            return true;
        }
        let now = Instant::now();
        let mut recent = self.recent.lock().expect("valve lock");
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            recent.pop_front();
        }
        if recent.len() as u64 > self.limit {
            let mut tripped = self.tripped.lock().expect("valve lock");
            if tripped.is_none() {
                let why = format!(
                    "{} records dead-lettered within a minute (worker.max_dead_letters_per_minute = {}); last error: {error}",
                    recent.len(),
                    self.limit
                );
                tracing::error!(reason = %why, "safety valve tripped; stopping the worker");
                *tripped = Some(why);
                self.stop.cancel();
            }
            return false;
        }
        true
    }

    /// Why the valve tripped, if it did.
    pub fn tripped(&self) -> Option<String> {
        self.tripped.lock().expect("valve lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_once_past_the_limit() {
        let stop = CancellationToken::new();
        let v = Valve::new(3, stop.clone());
        for _ in 0..3 {
            assert!(v.dead_lettered("bad"));
        }
        assert!(!stop.is_cancelled());
        assert!(!v.dead_lettered("worse"));
        assert!(stop.is_cancelled());
        assert!(!v.dead_lettered("later"), "stays tripped");
        assert!(v.tripped().unwrap().contains("4 records dead-lettered"));
    }

    #[test]
    fn zero_means_never() {
        let stop = CancellationToken::new();
        let v = Valve::new(0, stop.clone());
        for _ in 0..1000 {
            assert!(v.dead_lettered("bad"));
        }
        assert!(!stop.is_cancelled() && v.tripped().is_none());
    }
}
