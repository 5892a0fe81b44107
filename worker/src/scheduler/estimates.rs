//! Expected run times: what a task says, else what this worker has learned.
//!
//! Each successful attempt's run time updates its kind's estimate, an
//! exponentially weighted moving average: `e ← e + w·(observed − e)` with
//! `w = worker.scheduler.estimate_weight`. The first observation of a kind is
//! its estimate. Failed attempts are left out: a handler that fails fast would
//! otherwise make its kind look short.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

/// Per-kind run-time estimates of one worker.
#[derive(Debug)]
pub(crate) struct Estimates {
    weight: f64,
    default_ms: u64,
    by_kind: RwLock<HashMap<String, f64>>,
    /// Mean time of every attempt (failed ones too: they hold slots as long),
    /// in seconds, same weighting: the capacity in the scaling signal.
    overall_s: std::sync::Mutex<Option<f64>>,
}

impl Estimates {
    pub fn new(weight: f64, default_ms: u64) -> Self {
        Estimates {
            weight,
            default_ms,
            by_kind: RwLock::default(),
            overall_s: std::sync::Mutex::default(),
        }
    }

    /// A task's expected run time in ms: its own `expected_ms`, else the estimate
    /// of its kind, else the configured default.
    pub fn expected_ms(&self, kind: &str, declared: Option<u64>) -> u64 {
        declared.unwrap_or_else(|| {
            self.by_kind
                .read()
                .expect("estimates lock")
                .get(kind)
                .map_or(self.default_ms, |e| e.round() as u64)
        })
    }

    /// The estimate of `kind`, if any attempt was observed.
    #[cfg(test)]
    pub fn of(&self, kind: &str) -> Option<f64> {
        self.by_kind
            .read()
            .expect("estimates lock")
            .get(kind)
            .copied()
    }

    /// Any attempt ran for `elapsed`.
    pub fn attempt(&self, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        let mut m = self.overall_s.lock().expect("estimates lock");
        *m = Some(m.map_or(s, |e| e + self.weight * (s - e)));
    }

    /// Mean attempt time in seconds, once an attempt ran.
    pub fn mean_attempt_s(&self) -> Option<f64> {
        *self.overall_s.lock().expect("estimates lock")
    }

    /// A successful attempt of `kind` ran for `elapsed`.
    pub fn observe(&self, kind: &str, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let mut map = self.by_kind.write().expect("estimates lock");
        match map.get_mut(kind) {
            Some(e) => *e += self.weight * (ms - *e),
            // Bounded by the kinds the worker has handlers for (others fail
            // before they run).
            None => {
                map.insert(kind.to_string(), ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_time_wins_then_the_learned_average_then_the_default() {
        let e = Estimates::new(0.5, 1000);
        assert_eq!(e.expected_ms("k", None), 1000);
        e.observe("k", Duration::from_millis(100));
        assert_eq!(e.expected_ms("k", None), 100);
        e.observe("k", Duration::from_millis(300));
        assert_eq!(e.expected_ms("k", None), 200);
        assert_eq!(e.expected_ms("k", Some(7)), 7);
        assert_eq!(e.expected_ms("other", None), 1000);
    }

    #[test]
    fn the_average_follows_a_change_at_the_configured_speed() {
        let e = Estimates::new(0.2, 0);
        e.observe("k", Duration::from_millis(10));
        for _ in 0..30 {
            e.observe("k", Duration::from_millis(1000));
        }
        let v = e.of("k").unwrap();
        // 1000 − 990·0.8^30 ≈ 998.8
        assert!((v - (1000.0 - 990.0 * 0.8f64.powi(30))).abs() < 1e-6, "{v}");
    }
}
