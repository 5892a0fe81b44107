//! Per-kind rate limits: the start rate each worker reaches against the
//! configured one.
//!
//! Two workers share four partitions; `worker.kinds.noop.rate_per_s = 25`. A
//! burst of 400 `noop` tasks (about 200 per worker, 8 s of starts at 25/s).
//! Baseline: the same burst with no limit. A token bucket lets one second's
//! worth (25) start at once, then one every 1/25 s, so per worker the steady
//! rate is (starts − 25) / (last start − first start); the busiest sliding
//! second may hold up to 50 (the full bucket plus a second's refill).

use super::harness::{all_assigned, collect, publish, scenario, spawn_worker};
use serde::Serialize;
use serde_json::json;
use sluice_common::config::KindConfig;
use sluice_common::{Config, Task};
use sluice_producer::{Outgoing, Publisher};
use tokio_util::sync::CancellationToken;

const RATE: f64 = 25.0;

/// One worker in one run of the rate comparison.
#[derive(Debug, Serialize)]
pub struct RateRun {
    pub run: &'static str,
    pub worker: String,
    pub starts: usize,
    /// From its first start to its last.
    pub span_ms: u64,
    /// Steady start rate (see the module docs), per second.
    pub rate_per_s: f64,
    /// Most starts in any one-second window.
    pub busiest_second: usize,
}

pub async fn run(base: &Config, run: &str) -> anyhow::Result<Vec<RateRun>> {
    let mut runs = Vec::new();
    for (name, limit) in [
        ("no limit (baseline)", None),
        ("rate_per_s = 25", Some(RATE)),
    ] {
        let mut cfg = scenario(base, run, &format!("rate-{}", limit.is_some()));
        cfg.topics.partitions = 4;
        cfg.worker.concurrency = 4;
        cfg.worker.kinds.insert(
            "noop".into(),
            KindConfig {
                rate_per_s: limit,
                ..Default::default()
            },
        );
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        let mut counters = Vec::new();
        for id in ["rate-a", "rate-b"] {
            let mut c = cfg.clone();
            c.worker.id = Some(id.into());
            let (h, live) = spawn_worker(&c, sluice_worker::builtin(), &stop);
            workers.push(h);
            counters.push(live);
        }
        all_assigned(&counters).await?;
        let publisher = Publisher::routed(&cfg).await?;
        let tasks: Vec<Outgoing> = (0..400)
            .map(|_| Outgoing::new(Task::new("noop", json!(null)), None))
            .collect();
        publish(&publisher, &tasks).await?;
        let results = collect(&cfg, tasks.len()).await?;
        stop.cancel();
        for w in workers {
            w.await??;
        }
        for id in ["rate-a", "rate-b"] {
            let mut starts: Vec<u64> = results
                .values()
                .filter(|r| r.worker == id)
                .map(|r| r.started_ms)
                .collect();
            starts.sort_unstable();
            runs.push(measure(name, id, &starts, limit.unwrap_or(0.0)));
        }
    }
    Ok(runs)
}

/// The steady rate and the busiest second of sorted start times.
fn measure(run: &'static str, worker: &str, starts: &[u64], burst: f64) -> RateRun {
    let span_ms = match (starts.first(), starts.last()) {
        (Some(a), Some(b)) => b - a,
        _ => 0,
    };
    let span_s = span_ms as f64 / 1000.0;
    let after_burst = (starts.len() as f64 - burst).max(0.0);
    let mut busiest = 0;
    let mut lo = 0;
    for hi in 0..starts.len() {
        while starts[hi] - starts[lo] >= 1000 {
            lo += 1;
        }
        busiest = busiest.max(hi - lo + 1);
    }
    RateRun {
        run,
        worker: worker.to_string(),
        starts: starts.len(),
        span_ms,
        rate_per_s: after_burst / span_s.max(1e-3),
        busiest_second: busiest,
    }
}

/// The runs as Markdown.
pub fn markdown(runs: &[RateRun]) -> String {
    let mut out = String::from(
        "**Per-kind rate limit** (2 workers × concurrency 4 on 4 partitions; a burst of 400 `noop` tasks; `worker.kinds.noop.rate_per_s = 25`, per worker; steady rate = starts after the first second's bucket of 25 / time from first to last start; start times in ms):\n\n\
         | run | worker | starts | first to last start | steady start rate | most starts in one second |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let limited = r.run != runs[0].run;
        let rate = if limited {
            format!("{:.2}/s", r.rate_per_s)
        } else {
            "–".into()
        };
        out += &format!(
            "| {} | {} | {} | {} ms | {rate} | {} |\n",
            r.run, r.worker, r.starts, r.span_ms, r.busiest_second
        );
    }
    let limited: Vec<&RateRun> = runs.iter().filter(|r| r.run != runs[0].run).collect();
    if !limited.is_empty() {
        let ratios: Vec<String> = limited
            .iter()
            .map(|r| format!("{} {:.3}", r.worker, r.rate_per_s / RATE))
            .collect();
        let busiest = limited.iter().map(|r| r.busiest_second).max().unwrap_or(0);
        let free = runs
            .iter()
            .filter(|r| r.run == runs[0].run)
            .map(|r| r.span_ms)
            .max()
            .unwrap_or(0);
        out += &format!(
            "\nMeasured / configured steady rate per worker: {}; busiest second {busiest} starts (the bound is 2 × 25: a full bucket plus a second's refill). Without the limit each worker started all its tasks within {free} ms.\n",
            ratios.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_leaves_out_the_initial_bucket() {
        // 5 at once, then 10 more 100 ms apart: 10 per second.
        let mut starts = vec![0; 5];
        starts.extend((1..=10).map(|i| i * 100));
        let r = measure("t", "w", &starts, 5.0);
        assert!((r.rate_per_s - 10.0).abs() < 1e-9, "{}", r.rate_per_s);
        assert_eq!(r.busiest_second, 14, "the bucket plus 9 more within 1 s");
    }
}
