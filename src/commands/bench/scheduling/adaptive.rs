//! Adaptive concurrency (AIMD) against fixed limits, on a handler with a
//! load knee.
//!
//! The `downstream` kind stands for a service that serves 4 requests at once
//! well: an attempt that starts with `n` attempts in flight (itself included)
//! takes 10 ms × max(1, n/4)², and past 8 in flight the service rejects it at
//! once (a permanent error: the task is not done). So throughput peaks at 4 in
//! flight (≈ 400/s); more only adds latency and then rejections. One worker, a
//! burst of 600 tasks, five runs: fixed 32 (too high), fixed 1 (too low),
//! fixed 4 (the knee, known here only because the handler is ours), and
//! adaptive within [1, 32] (windows of 10 attempts, defaults otherwise),
//! starting from the configured concurrency: 32, then 1. Goodput is tasks
//! that succeeded per second of the run (first
//! start to last finish); p99 is the attempt time of the successes.

use super::harness::{pct, run_burst, scenario};
use serde::Serialize;
use serde_json::json;
use sluice_common::config::AdaptiveConfig;
use sluice_common::{Config, Status, Task};
use sluice_producer::Outgoing;
use sluice_worker::{handler_fn, HandlerError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One run of the adaptive comparison.
#[derive(Debug, Serialize)]
pub struct AdaptiveRun {
    pub run: &'static str,
    /// Share of the tasks that succeeded.
    pub succeeded: f64,
    /// Successes per second, first start to last finish.
    pub goodput_per_s: f64,
    /// p99 attempt time of the successes.
    pub p99_ms: u64,
}

/// The `downstream` handler (see the module docs).
fn downstream() -> sluice_worker::Registry {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut registry = sluice_worker::builtin();
    registry.register(
        "downstream",
        handler_fn(move |_| {
            let in_flight = in_flight.clone();
            async move {
                let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                let outcome = if n > 8 {
                    Err(HandlerError::permanent("overloaded: more than 8 in flight"))
                } else {
                    let load = (n as f64 / 4.0).max(1.0);
                    tokio::time::sleep(Duration::from_secs_f64(0.010 * load * load)).await;
                    Ok(json!(null))
                };
                in_flight.fetch_sub(1, Ordering::SeqCst);
                outcome
            }
        }),
    );
    registry
}

pub async fn run(base: &Config, run: &str) -> anyhow::Result<Vec<AdaptiveRun>> {
    let mut runs = Vec::new();
    for (name, concurrency, adaptive) in [
        ("fixed 32 (too high)", 32, false),
        ("fixed 1 (too low)", 1, false),
        ("fixed 4 (the knee)", 4, false),
        ("adaptive from 32 (1..32)", 32, true),
        ("adaptive from 1 (1..32)", 1, true),
    ] {
        let mut cfg = scenario(base, run, &format!("adaptive-{}", runs.len()));
        cfg.worker.concurrency = concurrency;
        cfg.worker.dead_letters = false;
        cfg.worker.scheduler.adaptive = AdaptiveConfig {
            enabled: adaptive,
            min_concurrency: 1,
            max_concurrency: Some(32),
            window: 10,
            ..Default::default()
        };
        let tasks: Vec<Outgoing> = (0..600)
            .map(|_| Outgoing::new(Task::new("downstream", json!(null)), None))
            .collect();
        let results = run_burst(&cfg, downstream(), &tasks).await?;
        let ok: Vec<_> = results
            .values()
            .filter(|r| r.status == Status::Succeeded)
            .collect();
        let first = results.values().map(|r| r.started_ms).min().unwrap_or(0);
        let last = results.values().map(|r| r.finished_ms).max().unwrap_or(0);
        let mut times: Vec<u64> = ok
            .iter()
            .map(|r| r.finished_ms.saturating_sub(r.started_ms))
            .collect();
        times.sort_unstable();
        runs.push(AdaptiveRun {
            run: name,
            succeeded: ok.len() as f64 / tasks.len() as f64,
            goodput_per_s: ok.len() as f64 / ((last - first).max(1) as f64 / 1000.0),
            p99_ms: pct(&times, 0.99),
        });
    }
    Ok(runs)
}

/// The runs as Markdown.
pub fn markdown(runs: &[AdaptiveRun]) -> String {
    let mut out = String::from(
        "**Adaptive concurrency vs fixed limits** (1 worker; a burst of 600 tasks of a handler that takes 10 ms × max(1, n/4)² with n in flight and rejects past 8 at once: best at 4 in flight; AIMD windows of 10 attempts, a window congested above 20 % failures or at 2× the best latency seen):\n\n\
         | run | succeeded | goodput | p99 attempt (successes) |\n\
         |---|---:|---:|---:|\n",
    );
    for r in runs {
        out += &format!(
            "| {} | {:.0} % | {:.0}/s | {} ms |\n",
            r.run,
            r.succeeded * 100.0,
            r.goodput_per_s,
            r.p99_ms
        );
    }
    if let [high, low, knee, adaptive @ ..] = runs {
        out += "\n";
        for a in adaptive {
            out += &format!(
                "{}: goodput / fixed too high {:.2}, / fixed too low {:.2}, / fixed at the knee {:.2}; p99 / fixed too low's {:.2}.\n",
                a.run,
                a.goodput_per_s / high.goodput_per_s.max(1e-9),
                a.goodput_per_s / low.goodput_per_s.max(1e-9),
                a.goodput_per_s / knee.goodput_per_s.max(1e-9),
                a.p99_ms as f64 / low.p99_ms.max(1) as f64
            );
        }
    }
    out
}
