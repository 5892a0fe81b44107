//! Resource-aware admission against plain concurrency limits.
//!
//! One worker with `cpu = 8` gets a burst of 240 tasks: every fourth is heavy
//! (`cpu: 4`, 100 ms), the rest light (`cpu: 1`, 20 ms). Three runs: the
//! capacity enforced (concurrency 16, so only the capacity binds); a plain
//! limit of 4, what the mean need (1.75 cpu) suggests, without capacity; a
//! plain limit of 2, the most that never overcommits when every task is
//! heavy. From the results' start and finish times: the peak of declared cpu
//! running at once, the share of the run spent above the capacity, the mean
//! declared cpu in use within the capacity (utilisation), and the run's length.

use super::harness::{run_burst, scenario, sleep_task};
use serde::Serialize;
use serde_json::json;
use sluice_common::Config;
use sluice_producer::Outgoing;

const CAPACITY: f64 = 8.0;

/// One run of the resource comparison.
#[derive(Debug, Serialize)]
pub struct ResourceRun {
    pub run: &'static str,
    /// Most declared cpu running at once.
    pub peak_cpu: f64,
    /// Share of the run with more than the capacity running.
    pub over_capacity: f64,
    /// Mean declared cpu in use, counting at most the capacity, over the capacity.
    pub utilisation: f64,
    /// First start to last finish.
    pub makespan_ms: u64,
}

pub async fn run(base: &Config, run: &str) -> anyhow::Result<Vec<ResourceRun>> {
    let mut runs = Vec::new();
    for (name, concurrency, enforced) in [
        ("capacity cpu=8 (resource-aware)", 16, true),
        ("plain limit 4", 4, false),
        ("plain limit 2", 2, false),
    ] {
        let mut cfg = scenario(base, run, &format!("resources-{}", runs.len()));
        cfg.worker.concurrency = concurrency;
        if enforced {
            cfg.worker.scheduler.capacity = [("cpu".to_string(), CAPACITY)].into_iter().collect();
        }
        let tasks: Vec<(f64, Outgoing)> = (0..240)
            .map(|i| {
                let (cpu, ms) = if i % 4 == 1 { (4.0, 100) } else { (1.0, 20) };
                let t = sleep_task(ms, |t| t.resources = Some(json!({ "cpu": cpu })));
                (cpu, t)
            })
            .collect();
        let outs: Vec<Outgoing> = tasks.iter().map(|(_, o)| o.clone()).collect();
        let results = run_burst(&cfg, sluice_worker::builtin(), &outs).await?;
        let spans: Vec<(u64, u64, f64)> = tasks
            .iter()
            .map(|(cpu, o)| {
                let r = &results[o.id()];
                (r.started_ms, r.finished_ms, *cpu)
            })
            .collect();
        runs.push(usage(name, &spans));
    }
    Ok(runs)
}

/// Sweeps the (start, finish, cpu) intervals in time order.
fn usage(run: &'static str, spans: &[(u64, u64, f64)]) -> ResourceRun {
    let mut events: Vec<(u64, f64)> = spans
        .iter()
        .flat_map(|&(s, f, cpu)| [(s, cpu), (f, -cpu)])
        .collect();
    // Finishes before starts at the same millisecond: the slot was handed over.
    events.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let first = events.first().map_or(0, |e| e.0);
    let last = events.last().map_or(0, |e| e.0);
    let (mut in_use, mut peak, mut over_ms, mut used) = (0.0_f64, 0.0_f64, 0u64, 0.0_f64);
    let mut at = first;
    for (t, delta) in events {
        let dt = t - at;
        if in_use > CAPACITY + 1e-9 {
            over_ms += dt;
        }
        used += in_use.min(CAPACITY) * dt as f64;
        at = t;
        in_use += delta;
        peak = peak.max(in_use);
    }
    let makespan_ms = last - first;
    ResourceRun {
        run,
        peak_cpu: peak,
        over_capacity: over_ms as f64 / makespan_ms.max(1) as f64,
        utilisation: used / (CAPACITY * makespan_ms.max(1) as f64),
        makespan_ms,
    }
}

/// The runs as Markdown.
pub fn markdown(runs: &[ResourceRun]) -> String {
    let mut out = String::from(
        "**Resource-aware admission vs plain concurrency limits** (1 worker, capacity cpu=8; a burst of 240 tasks, every fourth heavy `cpu: 4` of 100 ms, the others `cpu: 1` of 20 ms; figures from the results' start and finish times):\n\n\
         | run | peak cpu running | time above capacity | utilisation of the capacity | run length |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for r in runs {
        out += &format!(
            "| {} | {:.0} | {:.0} % | {:.0} % | {} ms |\n",
            r.run,
            r.peak_cpu,
            r.over_capacity * 100.0,
            r.utilisation * 100.0,
            r.makespan_ms
        );
    }
    if let [aware, loose, safe] = runs {
        out += &format!(
            "\nResource-aware: peak {:.0} of 8 cpu, run length {:.2}× the never-overcommitting limit of 2's (utilisation {:.0} % vs {:.0} %); the limit of 4 peaked at {:.2}× the capacity.\n",
            aware.peak_cpu,
            aware.makespan_ms as f64 / safe.makespan_ms.max(1) as f64,
            aware.utilisation * 100.0,
            safe.utilisation * 100.0,
            loose.peak_cpu / CAPACITY
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_finds_peak_overcommit_and_use() {
        // 0-10: 4 cpu; 5-10: +6 = 10 (over 8); 10-20: idle.
        let r = usage("t", &[(0, 10, 4.0), (5, 10, 6.0), (10, 20, 0.0)]);
        assert_eq!(r.peak_cpu, 10.0);
        assert_eq!(r.makespan_ms, 20);
        assert!((r.over_capacity - 0.25).abs() < 1e-9);
        // 5 ms × 4 + 5 ms × 8 (capped) = 60 of 8 × 20.
        assert!((r.utilisation - 60.0 / 160.0).abs() < 1e-9);
    }
}
