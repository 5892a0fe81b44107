//! Queue policies: FIFO vs shortest-expected-first vs FIFO with the
//! long-task lane, and FIFO vs earliest-deadline-first.

use super::harness::{collect, pct, publish, run_burst, scenario, sleep_task, start_worker};
use serde::Serialize;
use sluice_common::config::QueuePolicy;
use sluice_common::Config;
use sluice_producer::{Outgoing, Publisher};

/// One run of the queue-policy comparison.
#[derive(Debug, Serialize)]
pub struct PolicyRun {
    pub policy: &'static str,
    pub mean_ms: f64,
    pub p99_ms: u64,
    pub short_p99_ms: u64,
    pub long_p99_ms: u64,
}

/// One run of the deadline comparison.
#[derive(Debug, Serialize)]
pub struct DeadlineRun {
    pub policy: &'static str,
    /// Share of the tight-deadline tasks that finished by their deadline.
    pub tight_met: f64,
    /// Share of the loose-deadline tasks that finished by their deadline.
    pub loose_met: f64,
}

pub async fn policies(base: &Config, run: &str) -> anyhow::Result<Vec<PolicyRun>> {
    let mut runs = Vec::new();
    for (policy, long_lane, name) in [
        (QueuePolicy::Fifo, false, "fifo"),
        (
            QueuePolicy::ShortestExpectedFirst,
            false,
            "shortest_expected_first",
        ),
        (QueuePolicy::Fifo, true, "fifo + long-task lane"),
    ] {
        let mut cfg = scenario(base, run, &format!("policy-{}", runs.len()));
        cfg.worker.concurrency = 4;
        cfg.worker.scheduler.policy = policy;
        // Long tasks (200 ms expected) to `<tasks>.long`, at most 2 of 4 slots.
        cfg.topics.long_lane = long_lane;
        cfg.producer.long_task_ms = 100;
        cfg.worker.scheduler.long_slots = Some(2);
        let tasks: Vec<(bool, Outgoing)> = (0..400)
            .map(|i| {
                let long = i % 5 == 2;
                let ms = if long { 200 } else { 10 };
                (long, sleep_task(ms, |t| t.expected_ms = Some(ms)))
            })
            .collect();
        let outs: Vec<Outgoing> = tasks.iter().map(|(_, o)| o.clone()).collect();
        let results = run_burst(&cfg, sluice_worker::builtin(), &outs).await?;
        let completion = |o: &Outgoing| {
            let r = &results[o.id()];
            r.finished_ms
                .saturating_sub(r.created_ms.unwrap_or(r.finished_ms))
        };
        let sorted = |which: &dyn Fn(bool) -> bool| {
            let mut v: Vec<u64> = tasks
                .iter()
                .filter(|(l, _)| which(*l))
                .map(|(_, o)| completion(o))
                .collect();
            v.sort_unstable();
            v
        };
        let all = sorted(&|_| true);
        runs.push(PolicyRun {
            policy: name,
            mean_ms: all.iter().sum::<u64>() as f64 / all.len().max(1) as f64,
            p99_ms: pct(&all, 0.99),
            short_p99_ms: pct(&sorted(&|l| !l), 0.99),
            long_p99_ms: pct(&sorted(&|l| l), 0.99),
        });
    }
    Ok(runs)
}

pub async fn deadlines(base: &Config, run: &str) -> anyhow::Result<Vec<DeadlineRun>> {
    let mut runs = Vec::new();
    for (policy, name) in [
        (QueuePolicy::Fifo, "fifo"),
        (
            QueuePolicy::EarliestDeadlineFirst,
            "earliest_deadline_first",
        ),
    ] {
        let mut cfg = scenario(base, run, &format!("deadline-{name}"));
        cfg.worker.concurrency = 4;
        cfg.worker.scheduler.policy = policy;
        let (stop, worker) = start_worker(&cfg, sluice_worker::builtin()).await?;
        let publisher = Publisher::routed(&cfg).await?;
        let burst = sluice_common::task::now_ms();
        let tasks: Vec<(bool, Outgoing)> = (0..400)
            .map(|i| {
                // Every fifth: keyless tasks go round-robin over 4 partitions,
                // so the tight ones are spread over all of them.
                let tight = i % 5 == 2;
                let within = if tight { 400 } else { 10_000 };
                (
                    tight,
                    sleep_task(10, |t| t.deadline_ms = Some(burst + within)),
                )
            })
            .collect();
        let outs: Vec<Outgoing> = tasks.iter().map(|(_, o)| o.clone()).collect();
        publish(&publisher, &outs).await?;
        let results = collect(&cfg, outs.len()).await?;
        stop.cancel();
        worker.await??;
        let met = |tight: bool| {
            let class: Vec<&Outgoing> = tasks
                .iter()
                .filter(|(t, _)| *t == tight)
                .map(|(_, o)| o)
                .collect();
            let ok = class
                .iter()
                .filter(|o| {
                    let r = &results[o.id()];
                    r.status == sluice_common::Status::Succeeded
                        && o.task.deadline_ms.is_some_and(|d| r.finished_ms <= d)
                })
                .count();
            ok as f64 / class.len().max(1) as f64
        };
        runs.push(DeadlineRun {
            policy: name,
            tight_met: met(true),
            loose_met: met(false),
        });
    }
    Ok(runs)
}

/// The queue-policy runs as Markdown.
pub fn policies_markdown(runs: &[PolicyRun]) -> String {
    let mut out = String::new();
    out += "**FIFO vs shortest-expected-first vs the long-task lane** (1 worker, concurrency 4; a burst of 400 tasks: 320 short of 10 ms, 80 long of 200 ms, interleaved, each with `expected_ms`; the long lane takes tasks expected ≥ 100 ms and at most 2 of the 4 slots):\n\n\
                | policy | mean completion | p99 completion | short p99 | long p99 |\n\
                |---|---:|---:|---:|---:|\n";
    for p in runs {
        out += &format!(
            "| {} | {:.0} ms | {} ms | {} ms | {} ms |\n",
            p.policy, p.mean_ms, p.p99_ms, p.short_p99_ms, p.long_p99_ms
        );
    }
    if let [fifo, others @ ..] = runs {
        out += "\n";
        for p in others {
            out += &format!(
                "{} / fifo: mean completion {:.2}, p99 completion {:.2}, short-task p99 {:.2}.\n",
                p.policy,
                p.mean_ms / fifo.mean_ms.max(1.0),
                p.p99_ms as f64 / fifo.p99_ms.max(1) as f64,
                p.short_p99_ms as f64 / fifo.short_p99_ms.max(1) as f64
            );
        }
    }
    out
}

/// The deadline runs as Markdown.
pub fn deadlines_markdown(runs: &[DeadlineRun]) -> String {
    let mut out = String::new();
    out += "**FIFO vs earliest-deadline-first** (1 worker, concurrency 4; a burst of 400 tasks of 10 ms, about 1 s of work; every fifth must finish within 400 ms of the burst, the others within 10 s):\n\n\
                | policy | tight deadlines met | loose deadlines met |\n\
                |---|---:|---:|\n";
    for d in runs {
        out += &format!(
            "| {} | {:.0} % | {:.0} % |\n",
            d.policy,
            d.tight_met * 100.0,
            d.loose_met * 100.0
        );
    }
    out
}
