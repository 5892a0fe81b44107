//! Priority under saturation: lanes and priorities against the same tasks
//! without priorities.

use super::harness::{collect, paced, pct, publish, scenario, sleep_task, start_worker};
use serde::Serialize;
use sluice_common::{Config, Task, TaskResult};
use sluice_producer::{Outgoing, Publisher};
use std::collections::HashMap;
use std::time::Duration;

/// One run of the priority comparison.
#[derive(Debug, Serialize)]
pub struct PriorityRun {
    pub run: &'static str,
    /// (class, p50 ms, p99 ms) of queue wait.
    pub queue_wait_ms: Vec<(&'static str, u64, u64)>,
    /// Share of starts taken by low tasks while low and normal tasks both waited.
    pub low_share: f64,
}

pub async fn run(base: &Config, run: &str) -> anyhow::Result<Vec<PriorityRun>> {
    let mut runs = Vec::new();
    for with_priorities in [false, true] {
        let name = if with_priorities {
            "prio-lanes"
        } else {
            "prio-none"
        };
        let mut cfg = scenario(base, run, name);
        cfg.topics.priority_lanes = with_priorities;
        cfg.worker.concurrency = 4;
        cfg.worker.max_buffered_tasks = 256;
        let set = |p: i32| move |t: &mut Task| t.priority = with_priorities.then_some(p);
        // Interleaved in runs of 8, so that with keyless tasks spread round-robin
        // over 4 or 8 partitions every partition holds both classes, and without
        // priorities they mix in every queue.
        let backlog: Vec<(&'static str, Outgoing)> = (0..1000)
            .map(|i| match (i / 8) % 2 {
                0 => ("low", sleep_task(20, set(-1))),
                _ => ("normal", sleep_task(20, set(0))),
            })
            .collect();
        let high: Vec<(&'static str, Outgoing)> =
            (0..150).map(|_| ("high", sleep_task(20, set(5)))).collect();
        let (stop, worker) = start_worker(&cfg, sluice_worker::builtin()).await?;
        let publisher = Publisher::routed(&cfg).await?;
        let outs: Vec<Outgoing> = backlog.iter().map(|(_, o)| o.clone()).collect();
        publish(&publisher, &outs).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        paced(&publisher, high.iter().map(|(_, o)| o), 50.0).await?;
        let results = collect(&cfg, backlog.len() + high.len()).await?;
        stop.cancel();
        worker.await??;
        let mut by_class: HashMap<&str, Vec<&TaskResult>> = HashMap::new();
        for (c, o) in backlog.iter().chain(&high) {
            by_class.entry(c).or_default().push(&results[o.id()]);
        }
        // From the first start to the last start of whichever of low and normal
        // ran out first: both backlogs were waiting.
        let last = |c: &str| by_class[c].iter().map(|r| r.started_ms).max().unwrap_or(0);
        let first = results.values().map(|r| r.started_ms).min().unwrap_or(0);
        let end = last("low").min(last("normal"));
        let in_window = |r: &TaskResult| r.started_ms >= first && r.started_ms < end;
        let starts = results.values().filter(|r| in_window(r)).count();
        let low_starts = by_class["low"].iter().filter(|r| in_window(r)).count();
        let queue_wait_ms = ["high", "normal", "low"]
            .into_iter()
            .map(|c| {
                let mut waits: Vec<u64> = by_class[c]
                    .iter()
                    .map(|r| {
                        r.started_ms
                            .saturating_sub(r.created_ms.unwrap_or(r.started_ms))
                    })
                    .collect();
                waits.sort_unstable();
                (c, pct(&waits, 0.50), pct(&waits, 0.99))
            })
            .collect();
        runs.push(PriorityRun {
            run: if with_priorities {
                "lanes + priorities"
            } else {
                "no priorities (baseline)"
            },
            queue_wait_ms,
            low_share: low_starts as f64 / starts.max(1) as f64,
        });
    }
    Ok(runs)
}

/// The runs as Markdown, as docs/SCHEDULING.md shows them.
pub fn markdown(runs: &[PriorityRun]) -> String {
    let mut out = String::from(
            "**Priority under saturation** (1 worker, concurrency 4, read-ahead 256 per topic, 20 ms tasks ≈ 200/s; backlog of 500 low + 500 normal, then 150 high at 50/s; shares normal 0.2, low 0.1):\n\n\
             | run | class | p50 queue wait | p99 queue wait | low share of starts while low and normal both waited |\n\
             |---|---|---:|---:|---:|\n",
        );
    for r in runs {
        for (class, p50, p99) in &r.queue_wait_ms {
            let share = if *class == "low" {
                format!("{:.1} %", r.low_share * 100.0)
            } else {
                String::new()
            };
            out += &format!("| {} | {class} | {p50} ms | {p99} ms | {share} |\n", r.run);
        }
    }
    let p99 = |run: usize, class: &str| {
        runs.get(run).and_then(|r| {
            r.queue_wait_ms
                .iter()
                .find(|c| c.0 == class)
                .map(|c| c.2 as f64)
        })
    };
    if let (Some(high), Some(low), Some(base)) = (p99(1, "high"), p99(1, "low"), p99(0, "high")) {
        out += &format!(
                "\nWith lanes, high-priority p99 queue wait / low-priority p99: {:.3}; / the same tasks' p99 without priorities: {:.3}.\n",
                high / low.max(1.0),
                high / base.max(1.0)
            );
    }
    out
}
