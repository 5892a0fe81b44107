//! The scheduling figures of docs/SCHEDULING.md, measured on the embedded broker
//! with in-process workers. Run it through `scripts/scheduling-report`, which
//! rewrites the figures section, or directly:
//!
//! ```sh
//! cargo run --release --example scheduling_figures
//! ```
//!
//! Two scenarios, each against a baseline in the same run:
//! - **Priority under saturation.** One worker (4 slots, 20 ms tasks: about
//!   200 tasks/s) gets a backlog of low- and normal-priority tasks and, while it
//!   works through it, a paced stream of high-priority tasks. Baseline: the same
//!   tasks without priorities. Reported: p50/p99 queue wait (creation to start)
//!   per class, and the low lane's share of starts while low and normal tasks
//!   both waited.
//! - **FIFO vs shortest-expected-first** on a burst of mixed short (10 ms) and
//!   long (200 ms) tasks with `expected_ms`: mean and p99 completion time.
//! - **Round-robin vs lag-aware partitioning** with one slow worker: two
//!   workers share four partitions, one runs tasks 4× slower; keyless tasks
//!   arrive at 60 % of the pair's capacity. Reported: completion p50/p99 and
//!   the share of tasks the slow worker ran.

use serde_json::json;
use sluice_common::config::{GroupProtocol, PartitionerKind, QueuePolicy};
use sluice_common::{Config, EmbeddedBroker, Task, TaskResult};
use sluice_producer::{Next, Outgoing, Publisher, ResultReader, Start};
use sluice_worker::Counters;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let broker = EmbeddedBroker::start("127.0.0.1:0".parse()?, &[], PARTITIONS)?;
    let mut base = Config::default();
    base.kafka.brokers = broker.bootstrap();
    base.kafka.fetch_wait_max_ms = 10;
    base.worker.group_protocol = GroupProtocol::Consumer;
    base.metrics.enabled = false;
    base.log.level = "warn".into();

    println!("On {} cores:", cores());
    println!();
    priority(&base).await?;
    policies(&base).await?;
    partitioning(&base).await?;
    Ok(())
}

/// A scenario's own topics and group.
fn scenario(base: &Config, name: &str) -> Config {
    let mut cfg = base.clone();
    cfg.topics.tasks = format!("{name}.tasks");
    cfg.topics.results = format!("{name}.results");
    cfg.worker.group = format!("{name}-workers");
    cfg.worker.id = Some(format!("{name}-worker"));
    cfg
}

fn sleep_task(ms: u64, f: impl FnOnce(&mut Task)) -> Outgoing {
    let mut t = Task::new("sleep", json!({ "ms": ms }));
    f(&mut t);
    Outgoing::new(t, None)
}

async fn priority(base: &Config) -> anyhow::Result<()> {
    println!("**Priority under saturation** (1 worker, concurrency 4, 20 ms tasks ≈ 200/s; backlog of 500 low + 500 normal, then 150 high at 50/s; shares normal 0.2, low 0.1):");
    println!();
    println!(
        "| run | class | p50 queue wait | p99 queue wait | low share of starts while low and normal both waited |"
    );
    println!("|---|---|---:|---:|---:|");
    for with_priorities in [false, true] {
        let name = if with_priorities {
            "prio-lanes"
        } else {
            "prio-none"
        };
        let mut cfg = scenario(base, name);
        cfg.topics.priority_lanes = with_priorities;
        cfg.worker.concurrency = 4;
        cfg.worker.max_buffered_tasks = 64;
        let set = |p: i32| move |t: &mut Task| t.priority = with_priorities.then_some(p);
        // Interleaved, so without priorities both classes mix in one queue.
        let backlog: Vec<(&str, Outgoing)> = (0..1000)
            .map(|i| match i % 2 {
                0 => ("low", sleep_task(20, set(-1))),
                _ => ("normal", sleep_task(20, set(0))),
            })
            .collect();
        let high: Vec<(&str, Outgoing)> =
            (0..150).map(|_| ("high", sleep_task(20, set(5)))).collect();
        let (stop, worker) = start_worker(&cfg).await?;
        let publisher = Publisher::routed(&cfg).await?;
        let outs: Vec<Outgoing> = backlog.iter().map(|(_, o)| o.clone()).collect();
        publish(&publisher, &outs).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (_, t) in &high {
            // Paced: 50/s, a quarter of what the worker can run.
            publisher.publish(t, None).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let results = collect(&cfg, backlog.len() + high.len()).await?;
        stop.cancel();
        worker.await??;
        let mut by_class: HashMap<&str, Vec<&TaskResult>> = HashMap::new();
        for (c, o) in backlog.iter().chain(&high) {
            by_class.entry(c).or_default().push(&results[o.id()]);
        }
        // The low lane's share of starts while both backlogs were waiting: from
        // the first start to the last start of whichever class ran out first.
        let lows = &by_class["low"];
        let last = |c: &str| by_class[c].iter().map(|r| r.started_ms).max().unwrap_or(0);
        let first = results.values().map(|r| r.started_ms).min().unwrap_or(0);
        let end = last("low").min(last("normal"));
        let in_window = |r: &&TaskResult| r.started_ms >= first && r.started_ms < end;
        let starts = results.values().filter(|r| in_window(r)).count();
        let low_starts = lows.iter().filter(|r| in_window(r)).count();
        let share = low_starts as f64 / starts.max(1) as f64;
        let run = if with_priorities {
            "lanes + priorities"
        } else {
            "no priorities (baseline)"
        };
        for c in ["high", "normal", "low"] {
            let mut waits: Vec<u64> = by_class[c]
                .iter()
                .map(|r| {
                    r.started_ms
                        .saturating_sub(r.created_ms.unwrap_or(r.started_ms))
                })
                .collect();
            waits.sort_unstable();
            let share_col = if c == "low" {
                format!("{:.1} %", share * 100.0)
            } else {
                String::new()
            };
            println!(
                "| {run} | {c} | {} ms | {} ms | {share_col} |",
                pct(&waits, 0.50),
                pct(&waits, 0.99)
            );
        }
    }
    println!();
    Ok(())
}

async fn policies(base: &Config) -> anyhow::Result<()> {
    println!("**FIFO vs shortest-expected-first** (1 worker, concurrency 4; a burst of 400 tasks: 320 short of 10 ms, 80 long of 200 ms, interleaved, each with `expected_ms`):");
    println!();
    println!("| policy | mean completion | p99 completion | short p99 | long p99 |");
    println!("|---|---:|---:|---:|---:|");
    let mut means = Vec::new();
    for policy in [QueuePolicy::Fifo, QueuePolicy::ShortestExpectedFirst] {
        let name = match policy {
            QueuePolicy::Fifo => "fifo",
            QueuePolicy::ShortestExpectedFirst => "sjf",
            QueuePolicy::EarliestDeadlineFirst => "edf",
        };
        let mut cfg = scenario(base, &format!("policy-{name}"));
        cfg.worker.concurrency = 4;
        cfg.worker.scheduler.policy = policy;
        let tasks: Vec<(bool, Outgoing)> = (0..400)
            .map(|i| {
                let long = i % 5 == 2;
                let ms = if long { 200 } else { 10 };
                (long, sleep_task(ms, |t| t.expected_ms = Some(ms)))
            })
            .collect();
        let (stop, worker) = start_worker(&cfg).await?;
        let publisher = Publisher::routed(&cfg).await?;
        let outs: Vec<Outgoing> = tasks.iter().map(|(_, o)| o.clone()).collect();
        publish(&publisher, &outs).await?;
        let results = collect(&cfg, outs.len()).await?;
        stop.cancel();
        worker.await??;
        let completion = |r: &TaskResult| {
            r.finished_ms
                .saturating_sub(r.created_ms.unwrap_or(r.finished_ms))
        };
        let mut all: Vec<u64> = outs.iter().map(|o| completion(&results[o.id()])).collect();
        let mut short: Vec<u64> = tasks
            .iter()
            .filter(|(l, _)| !l)
            .map(|(_, o)| completion(&results[o.id()]))
            .collect();
        let mut long: Vec<u64> = tasks
            .iter()
            .filter(|(l, _)| *l)
            .map(|(_, o)| completion(&results[o.id()]))
            .collect();
        for v in [&mut all, &mut short, &mut long] {
            v.sort_unstable();
        }
        let mean = all.iter().sum::<u64>() as f64 / all.len() as f64;
        means.push(mean);
        println!(
            "| {name} | {mean:.0} ms | {} ms | {} ms | {} ms |",
            pct(&all, 0.99),
            pct(&short, 0.99),
            pct(&long, 0.99)
        );
    }
    println!();
    println!(
        "Shortest-expected-first mean completion / FIFO mean completion: {:.2}",
        means[1] / means[0]
    );
    Ok(())
}

async fn partitioning(base: &Config) -> anyhow::Result<()> {
    println!();
    println!("**Round-robin vs lag-aware partitioning** (2 workers × concurrency 2 on 4 partitions; `work` takes 10 ms on the fast worker, 40 ms on the slow one: 250 tasks/s together; 1500 keyless tasks offered at 150/s):");
    println!();
    println!("| partitioner | p50 completion | p99 completion | run by the slow worker |");
    println!("|---|---:|---:|---:|");
    let mut p99s = Vec::new();
    for kind in [PartitionerKind::RoundRobin, PartitionerKind::LagAware] {
        let name = match kind {
            PartitionerKind::RoundRobin => "round-robin",
            PartitionerKind::LagAware => "lag-aware",
        };
        let mut cfg = scenario(base, &format!("part-{name}"));
        cfg.topics.partitions = 4;
        cfg.worker.concurrency = 2;
        cfg.worker.commit_interval_ms = 200;
        cfg.producer.partitioner = kind;
        cfg.producer.lag_refresh_ms = 250;
        let mut workers = Vec::new();
        let mut counters = Vec::new();
        let stop = CancellationToken::new();
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
            let live = Arc::new(Counters::default());
            counters.push(live.clone());
            workers.push(tokio::spawn(sluice_worker::run_with(
                c,
                registry,
                stop.clone(),
                live,
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while counters.iter().any(|c| c.assigned() == 0) {
            anyhow::ensure!(Instant::now() < deadline, "a worker got no partitions");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let publisher = Publisher::routed(&cfg).await?;
        let tasks: Vec<Outgoing> = (0..1500)
            .map(|_| Outgoing::new(Task::new("work", json!(null)), None))
            .collect();
        let started = Instant::now();
        for (i, t) in tasks.iter().enumerate() {
            publisher.publish(t, None).await?;
            // 150/s, in steps of 15 ms.
            let due = Duration::from_micros(i as u64 * 1_000_000 / 150);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
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
        p99s.push(pct(&done, 0.99));
        println!(
            "| {name} | {} ms | {} ms | {:.0} % |",
            pct(&done, 0.50),
            pct(&done, 0.99),
            100.0 * slow as f64 / tasks.len() as f64
        );
    }
    println!();
    println!(
        "Lag-aware p99 completion / round-robin p99 completion: {:.2}",
        p99s[1] as f64 / p99s[0].max(1) as f64
    );
    Ok(())
}

async fn start_worker(
    cfg: &Config,
) -> anyhow::Result<(
    CancellationToken,
    tokio::task::JoinHandle<Result<sluice_worker::Summary, sluice_worker::WorkerError>>,
)> {
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let h = tokio::spawn(sluice_worker::run_with(
        cfg.clone(),
        sluice_worker::builtin(),
        stop.clone(),
        counters.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.assigned() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the worker got no partitions");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((stop, h))
}

async fn publish(p: &Publisher, tasks: &[Outgoing]) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(tasks.len());
    for t in tasks {
        pending.push(p.send(t, None).await?);
    }
    for d in pending {
        d.await?;
    }
    Ok(())
}

/// Reads results until `n` distinct tasks have one.
async fn collect(cfg: &Config, n: usize) -> anyhow::Result<HashMap<String, TaskResult>> {
    let mut reader = ResultReader::open(cfg, Start::Beginning).await?;
    let mut out = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while out.len() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} results arrived",
            out.len()
        );
        if let Next::Result(r) = reader.next(Duration::from_millis(200)).await {
            out.entry(r.task_id.clone()).or_insert(*r);
        }
    }
    Ok(out)
}

/// The `q` quantile of sorted values (nearest rank).
fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
