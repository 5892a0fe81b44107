//! Adaptive concurrency: additive increase, multiplicative decrease (AIMD).
//!
//! Attempts are observed in windows of `window` attempts. A window is
//! *congested* when more than `max_error_rate` of its attempts failed, or when
//! the mean run time of its successful attempts exceeds `latency_tolerance`
//! times the best such mean seen (more concurrency than the handlers'
//! downstream can take shows up as slower attempts before it shows up as
//! errors). Only successes count toward latency: an overloaded downstream
//! often fails fast, and a window of instant rejections taken as the best
//! latency would make every healthy window look congested afterwards (the
//! scheduling benchmark showed it: the limit stayed at its minimum). A congested window multiplies the
//! limit by `backoff_ratio`; a healthy window in which the limit was reached
//! adds one. The limit stays within `[min_concurrency, max_concurrency]`.
//!
//! The best mean is forgotten slowly (it grows 1 % per window) so that a lasting
//! change of workload, say to slower kinds, is not mistaken for congestion for
//! ever.

use sluice_common::config::AdaptiveConfig;
use std::time::Duration;

/// The AIMD state of one worker.
#[derive(Debug)]
pub(crate) struct Aimd {
    min: usize,
    max: usize,
    window: usize,
    tolerance: f64,
    max_error_rate: f64,
    backoff: f64,
    limit: usize,
    seen: usize,
    failed: usize,
    /// Run time of the window's successful attempts.
    ok_ms: f64,
    saturated: bool,
    best_mean_ms: Option<f64>,
}

impl Aimd {
    /// Starts at `start` (the configured concurrency), within the bounds.
    pub fn new(cfg: &AdaptiveConfig, start: usize) -> Self {
        let max = cfg.max_concurrency.unwrap_or(start);
        Aimd {
            min: cfg.min_concurrency,
            max,
            window: cfg.window,
            tolerance: cfg.latency_tolerance,
            max_error_rate: cfg.max_error_rate,
            backoff: cfg.backoff_ratio,
            limit: start.clamp(cfg.min_concurrency, max),
            seen: 0,
            failed: 0,
            ok_ms: 0.0,
            saturated: false,
            best_mean_ms: None,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An attempt ran for `elapsed`; `ok` unless it failed; `saturated` when
    /// the running count was at the limit as it started. Returns the new limit
    /// when a window closed.
    pub fn observe(&mut self, elapsed: Duration, ok: bool, saturated: bool) -> Option<usize> {
        self.seen += 1;
        self.failed += usize::from(!ok);
        if ok {
            self.ok_ms += elapsed.as_secs_f64() * 1000.0;
        }
        self.saturated |= saturated;
        if self.seen < self.window {
            return None;
        }
        let error_rate = self.failed as f64 / self.seen as f64;
        let succeeded = self.seen - self.failed;
        let mut slow = false;
        if succeeded > 0 {
            let mean = self.ok_ms / succeeded as f64;
            let best = self.best_mean_ms.map_or(mean, |b| b.min(mean));
            slow = mean > best * self.tolerance;
            self.best_mean_ms = Some(best * 1.01);
        }
        if error_rate > self.max_error_rate || slow {
            self.limit = ((self.limit as f64 * self.backoff).floor() as usize).max(self.min);
        } else if self.saturated {
            self.limit = (self.limit + 1).min(self.max);
        }
        self.seen = 0;
        self.failed = 0;
        self.ok_ms = 0.0;
        self.saturated = false;
        Some(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdaptiveConfig {
        AdaptiveConfig {
            enabled: true,
            min_concurrency: 2,
            max_concurrency: Some(20),
            window: 10,
            ..AdaptiveConfig::default()
        }
    }

    fn window(a: &mut Aimd, ms: u64, failures: usize, saturated: bool) -> usize {
        let mut last = None;
        for i in 0..10 {
            last = a.observe(Duration::from_millis(ms), i >= failures, saturated);
        }
        last.expect("a window closed")
    }

    #[test]
    fn grows_by_one_while_saturated_and_healthy() {
        let mut a = Aimd::new(&cfg(), 10);
        assert_eq!(window(&mut a, 10, 0, true), 11);
        assert_eq!(window(&mut a, 10, 0, true), 12);
        assert_eq!(
            window(&mut a, 10, 0, false),
            12,
            "not at the limit: no growth"
        );
        for _ in 0..20 {
            window(&mut a, 10, 0, true);
        }
        assert_eq!(a.limit(), 20, "capped at max_concurrency");
    }

    #[test]
    fn shrinks_on_errors_or_slowdown_but_not_below_min() {
        let mut a = Aimd::new(&cfg(), 16);
        assert_eq!(window(&mut a, 10, 3, true), 12, "30 % failed: ×0.75");
        assert_eq!(window(&mut a, 10, 0, true), 13);
        assert_eq!(
            window(&mut a, 50, 0, true),
            9,
            "5× slower than the best window"
        );
        for _ in 0..10 {
            window(&mut a, 10, 10, true);
        }
        assert_eq!(a.limit(), 2);
    }

    #[test]
    fn fast_failures_do_not_set_the_latency_to_beat() {
        let mut a = Aimd::new(&cfg(), 16);
        // An overloaded downstream rejecting at once: 1 ms failures.
        assert_eq!(window(&mut a, 1, 10, true), 12, "shrinks on errors");
        // Then healthy 10 ms windows grow the limit again: the failures'
        // 1 ms was never the latency to compare with.
        assert_eq!(window(&mut a, 10, 0, true), 13);
        assert_eq!(window(&mut a, 10, 0, true), 14);
        // A window that is slow in its successes is still congested.
        assert_eq!(window(&mut a, 30, 0, true), 10);
    }
}
