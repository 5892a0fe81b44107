//! Per-kind rate limits: token buckets.
//!
//! `worker.kinds.<kind>.rate_per_s = r` lets this worker start at most `r`
//! attempts of the kind per second on average. The bucket holds at most
//! `max(r, 1)` tokens (one second's worth), so after a quiet second a burst of
//! that many starts at once; then starts are spaced `1/r` s apart. Every attempt
//! takes a token, retries included. The limit is per worker: a group of N
//! workers starts up to N·r per second. A task waiting for a token holds no
//! concurrency slot, so other kinds keep running.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token if one is there; else how long until one is.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// The buckets of every rate-limited kind.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    buckets: HashMap<String, Mutex<Bucket>>,
}

impl RateLimits {
    /// Buckets for `(kind, rate_per_s)` pairs, full.
    pub fn new<'a>(rates: impl IntoIterator<Item = (&'a str, f64)>) -> Self {
        let now = Instant::now();
        RateLimits {
            buckets: rates
                .into_iter()
                .map(|(k, r)| {
                    let burst = r.max(1.0);
                    let b = Bucket {
                        rate: r,
                        burst,
                        tokens: burst,
                        at: now,
                    };
                    (k.to_string(), Mutex::new(b))
                })
                .collect(),
        }
    }

    /// Waits until an attempt of `kind` may start; at once for unlimited kinds.
    /// Returns whether it had to wait.
    pub async fn admit(&self, kind: &str) -> bool {
        let Some(bucket) = self.buckets.get(kind) else {
            return false;
        };
        let mut waited = false;
        loop {
            let wait = bucket.lock().expect("rate lock").take(Instant::now());
            match wait {
                Ok(()) => return waited,
                Err(d) => {
                    waited = true;
                    tokio::time::sleep(d).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_after_a_burst_of_one_seconds_worth() {
        let limits = RateLimits::new([("slow", 4.0)]);
        let t0 = Instant::now();
        let mut at = vec![];
        for _ in 0..12 {
            limits.admit("slow").await;
            at.push(t0.elapsed().as_millis());
        }
        assert_eq!(&at[..4], &[0, 0, 0, 0], "a full bucket: {at:?}");
        for (i, ms) in at[4..].iter().enumerate() {
            let want = 250 * (i as u128 + 1);
            assert!(
                ms.abs_diff(want) <= 1,
                "start {} at {ms} ms, want {want}: {at:?}",
                i + 4
            );
        }
        assert!(!limits.admit("unlimited").await);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_rates_still_let_one_through() {
        let limits = RateLimits::new([("rare", 0.5)]);
        let t0 = Instant::now();
        assert!(!limits.admit("rare").await);
        assert!(limits.admit("rare").await);
        assert_eq!(t0.elapsed().as_millis(), 2000);
    }
}
