//! Round-robin vs lag-aware partitioning with one slow worker.

use super::harness::{all_assigned, collect, paced, pct, spawn_worker};
use serde::Serialize;
use serde_json::json;
use sluice_common::config::PartitionerKind;
use sluice_common::{Config, Task};
use sluice_producer::{Outgoing, Publisher};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One run of the partitioner comparison.
#[derive(Debug, Serialize)]
pub struct PartitionRun {
    pub partitioner: &'static str,
    pub p50_ms: u64,
    pub p99_ms: u64,
    /// Share of the tasks the slow worker ran.
    pub slow_share: f64,
}

pub async fn run(base: &Config, run: &str) -> anyhow::Result<Vec<PartitionRun>> {
    let mut runs = Vec::new();
    for (kind, name) in [
        (PartitionerKind::RoundRobin, "round-robin"),
        (PartitionerKind::LagAware, "lag-aware"),
    ] {
        let mut cfg = super::harness::scenario(base, run, &format!("part-{name}"));
        cfg.topics.partitions = 4;
        cfg.worker.concurrency = 2;
        cfg.worker.commit_interval_ms = 200;
        cfg.producer.partitioner = kind;
        cfg.producer.lag_refresh_ms = 250;
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        let mut counters = Vec::new();
        for (id, ms) in [("fast", 10u64), ("slow", 40)] {
            let mut c = cfg.clone();
            c.worker.id = Some(id.into());
            let mut registry = sluice_worker::builtin();
            registry.register(
                "work",
                sluice_worker::handler_fn(move |_| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, sluice_worker::HandlerError>(json!(null))
                }),
            );
            let (h, live) = spawn_worker(&c, registry, &stop);
            workers.push(h);
            counters.push(live);
        }
        all_assigned(&counters).await?;
        let publisher = Publisher::routed(&cfg).await?;
        let tasks: Vec<Outgoing> = (0..1500)
            .map(|_| Outgoing::new(Task::new("work", json!(null)), None))
            .collect();
        paced(&publisher, tasks.iter(), 150.0).await?;
        let results = collect(&cfg, tasks.len()).await?;
        stop.cancel();
        for w in workers {
            w.await??;
        }
        let mut done: Vec<u64> = tasks
            .iter()
            .map(|t| {
                let r = &results[t.id()];
                r.finished_ms
                    .saturating_sub(r.created_ms.unwrap_or(r.finished_ms))
            })
            .collect();
        done.sort_unstable();
        let slow = results.values().filter(|r| r.worker == "slow").count();
        runs.push(PartitionRun {
            partitioner: name,
            p50_ms: pct(&done, 0.50),
            p99_ms: pct(&done, 0.99),
            slow_share: slow as f64 / tasks.len() as f64,
        });
    }
    Ok(runs)
}

/// The runs as Markdown.
pub fn markdown(runs: &[PartitionRun]) -> String {
    let mut out = String::new();
    out += "**Round-robin vs lag-aware partitioning** (2 workers × concurrency 2 on 4 partitions; `work` takes 10 ms on the fast worker, 40 ms on the slow one: 250 tasks/s together; 1500 keyless tasks offered at 150/s):\n\n\
                | partitioner | p50 completion | p99 completion | run by the slow worker |\n\
                |---|---:|---:|---:|\n";
    for p in runs {
        out += &format!(
            "| {} | {} ms | {} ms | {:.0} % |\n",
            p.partitioner,
            p.p50_ms,
            p.p99_ms,
            p.slow_share * 100.0
        );
    }
    if let [rr, lag] = runs {
        out += &format!(
            "\nLag-aware / round-robin p99 completion: {:.2}.\n",
            lag.p99_ms as f64 / rr.p99_ms.max(1) as f64
        );
    }
    out
}
