//! The retry policy: how many attempts a task gets and how long to wait between
//! them (exponential backoff with jitter, capped).

use sluice_common::config::{RetryConfig, WorkerConfig};
use sluice_common::Task;
use std::time::Duration;

/// Attempts and backoff for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    initial_ms: f64,
    max_ms: f64,
    multiplier: f64,
    jitter: f64,
}

impl RetryPolicy {
    /// The policy for `task`: its own `max_attempts`, else its kind's, else the
    /// worker's.
    pub fn for_task(cfg: &WorkerConfig, task: &Task) -> RetryPolicy {
        let kind = cfg.kinds.get(&task.kind);
        let max_attempts = task
            .max_attempts
            .or_else(|| kind.and_then(|k| k.max_attempts))
            .unwrap_or(cfg.retry.max_attempts)
            .max(1);
        RetryPolicy::new(&cfg.retry, max_attempts)
    }

    /// A policy from the retry settings with `max_attempts`.
    pub fn new(r: &RetryConfig, max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_ms: r.backoff_initial_ms as f64,
            max_ms: r.backoff_max_ms as f64,
            multiplier: r.backoff_multiplier,
            jitter: r.jitter,
        }
    }

    /// Whether another attempt may follow attempt `attempt`.
    pub fn allows_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The wait after failed attempt `attempt` (1-based). `unit` is a number in
    /// [0, 1) that places the wait inside its jitter band.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(i32::MAX as u32) as i32);
        let base = (self.initial_ms * exp).min(self.max_ms);
        let spread = base * self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_millis((base + spread).clamp(0.0, self.max_ms).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_common::config::KindConfig;

    fn cfg() -> RetryConfig {
        RetryConfig {
            max_attempts: 3,
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
            backoff_multiplier: 2.0,
            jitter: 0.0,
        }
    }

    #[test]
    fn waits_double_until_the_cap() {
        let p = RetryPolicy::new(&cfg(), 10);
        let waits: Vec<u64> = (1..=6)
            .map(|a| p.backoff(a, 0.5).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn the_task_beats_the_kind_beats_the_worker() {
        let mut w = WorkerConfig::default();
        w.retry.max_attempts = 5;
        w.kinds.insert(
            "k".into(),
            KindConfig {
                max_attempts: Some(2),
                ..KindConfig::default()
            },
        );
        let mut t = Task::new("other", serde_json::Value::Null);
        assert_eq!(RetryPolicy::for_task(&w, &t).max_attempts, 5);
        t.kind = "k".into();
        assert_eq!(RetryPolicy::for_task(&w, &t).max_attempts, 2);
        t.max_attempts = Some(7);
        assert_eq!(RetryPolicy::for_task(&w, &t).max_attempts, 7);
        assert!(RetryPolicy::for_task(&w, &t).allows_after(6));
        assert!(!RetryPolicy::for_task(&w, &t).allows_after(7));
    }

    proptest! {
        /// Every wait stays within its jitter band around the capped exponential,
        /// and never exceeds the cap.
        #[test]
        fn waits_stay_in_their_band(attempt in 1u32..80, unit in 0.0f64..1.0, jitter in 0.0f64..=1.0, mult in 1.0f64..4.0) {
            let mut c = cfg();
            c.jitter = jitter;
            c.backoff_multiplier = mult;
            let p = RetryPolicy::new(&c, 100);
            let w = p.backoff(attempt, unit).as_millis() as f64;
            let base = (100.0 * mult.powi(attempt as i32 - 1)).min(1000.0);
            prop_assert!(w <= 1000.0);
            prop_assert!(w >= (base * (1.0 - jitter)).floor() - 1.0, "{} below band of {}", w, base);
            prop_assert!(w <= (base * (1.0 + jitter)).ceil() + 1.0);
        }
    }
}
