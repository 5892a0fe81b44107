//! The scheduling scenario (`--scenario scheduling`): each strategy of
//! docs/SCHEDULING.md against its baseline in the same run, on in-process
//! workers with their own topics and groups. `scripts/scheduling-report` runs it
//! and writes the figures into docs/SCHEDULING.md.
//!
//! - **Priority under saturation.** One worker (4 slots, 20 ms tasks: about
//!   200 tasks/s) gets a backlog of 500 low- and 500 normal-priority tasks and,
//!   while it works through it, 150 high-priority tasks at 50/s. Baseline: the
//!   same tasks without priorities. Figures: p50/p99 queue wait (creation to
//!   start) per class, and the low class's share of starts while low and normal
//!   tasks both waited.
//! - **FIFO vs shortest-expected-first vs FIFO with the long-task lane** on a
//!   burst of 400 tasks, 320 short (10 ms) and 80 long (200 ms), interleaved,
//!   with `expected_ms`: mean and p99 completion time (creation to finish).
//! - **FIFO vs earliest-deadline-first** on a burst of 400 tasks of 10 ms (about
//!   1 s of work on 4 slots) where every fifth task must finish within 400 ms of
//!   the burst and the rest within 10 s: the share of each class that finished by
//!   its deadline (a task whose deadline passed before it could start ends
//!   `expired` and counts as missed).
//! - **Round-robin vs lag-aware partitioning** with one slow worker: two
//!   workers × 2 slots share four partitions; `work` takes 10 ms on one and
//!   40 ms on the other (250 tasks/s together); 1500 keyless tasks arrive at
//!   150/s. Figures: completion p50/p99 and the share the slow worker ran.
//!
//! Every run reads back one result per task, or fails.

use serde::Serialize;
use serde_json::json;
use sluice_common::config::{PartitionerKind, QueuePolicy};
use sluice_common::{Config, Task, TaskResult};
use sluice_producer::{Next, Outgoing, Publisher, ResultReader, Start};
use sluice_worker::{Counters, Registry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Figures of the three comparisons.
#[derive(Debug, Serialize)]
pub struct Scheduling {
    pub priority: Vec<PriorityRun>,
    pub policies: Vec<PolicyRun>,
    pub deadlines: Vec<DeadlineRun>,
    pub partitioning: Vec<PartitionRun>,
}

/// One run of the priority comparison.
#[derive(Debug, Serialize)]
pub struct PriorityRun {
    pub run: &'static str,
    /// (class, p50 ms, p99 ms) of queue wait.
    pub queue_wait_ms: Vec<(&'static str, u64, u64)>,
    /// Share of starts taken by low tasks while low and normal tasks both waited.
    pub low_share: f64,
}

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

/// One run of the partitioner comparison.
#[derive(Debug, Serialize)]
pub struct PartitionRun {
    pub partitioner: &'static str,
    pub p50_ms: u64,
    pub p99_ms: u64,
    /// Share of the tasks the slow worker ran.
    pub slow_share: f64,
}

/// Runs the three comparisons; `run` prefixes topic and group names.
pub async fn run(base: &Config, run: &str) -> anyhow::Result<Scheduling> {
    let mut base = base.clone();
    base.metrics.enabled = false;
    Ok(Scheduling {
        priority: priority(&base, run).await?,
        policies: policies(&base, run).await?,
        deadlines: deadlines(&base, run).await?,
        partitioning: partitioning(&base, run).await?,
    })
}

impl Scheduling {
    /// The figures as Markdown tables, as docs/SCHEDULING.md shows them.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "**Priority under saturation** (1 worker, concurrency 4, read-ahead 256 per topic, 20 ms tasks ≈ 200/s; backlog of 500 low + 500 normal, then 150 high at 50/s; shares normal 0.2, low 0.1):\n\n\
             | run | class | p50 queue wait | p99 queue wait | low share of starts while low and normal both waited |\n\
             |---|---|---:|---:|---:|\n",
        );
        for r in &self.priority {
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
            self.priority.get(run).and_then(|r| {
                r.queue_wait_ms
                    .iter()
                    .find(|c| c.0 == class)
                    .map(|c| c.2 as f64)
            })
        };
        if let (Some(high), Some(low), Some(base)) = (p99(1, "high"), p99(1, "low"), p99(0, "high"))
        {
            out += &format!(
                "\nWith lanes, high-priority p99 queue wait / low-priority p99: {:.3}; / the same tasks' p99 without priorities: {:.3}.\n",
                high / low.max(1.0),
                high / base.max(1.0)
            );
        }
        out += "\n**FIFO vs shortest-expected-first vs the long-task lane** (1 worker, concurrency 4; a burst of 400 tasks: 320 short of 10 ms, 80 long of 200 ms, interleaved, each with `expected_ms`; the long lane takes tasks expected ≥ 100 ms and at most 2 of the 4 slots):\n\n\
                | policy | mean completion | p99 completion | short p99 | long p99 |\n\
                |---|---:|---:|---:|---:|\n";
        for p in &self.policies {
            out += &format!(
                "| {} | {:.0} ms | {} ms | {} ms | {} ms |\n",
                p.policy, p.mean_ms, p.p99_ms, p.short_p99_ms, p.long_p99_ms
            );
        }
        if let [fifo, others @ ..] = &self.policies[..] {
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
        out += "\n**FIFO vs earliest-deadline-first** (1 worker, concurrency 4; a burst of 400 tasks of 10 ms, about 1 s of work; every fifth must finish within 400 ms of the burst, the others within 10 s):\n\n\
                | policy | tight deadlines met | loose deadlines met |\n\
                |---|---:|---:|\n";
        for d in &self.deadlines {
            out += &format!(
                "| {} | {:.0} % | {:.0} % |\n",
                d.policy,
                d.tight_met * 100.0,
                d.loose_met * 100.0
            );
        }
        out += "\n**Round-robin vs lag-aware partitioning** (2 workers × concurrency 2 on 4 partitions; `work` takes 10 ms on the fast worker, 40 ms on the slow one: 250 tasks/s together; 1500 keyless tasks offered at 150/s):\n\n\
                | partitioner | p50 completion | p99 completion | run by the slow worker |\n\
                |---|---:|---:|---:|\n";
        for p in &self.partitioning {
            out += &format!(
                "| {} | {} ms | {} ms | {:.0} % |\n",
                p.partitioner,
                p.p50_ms,
                p.p99_ms,
                p.slow_share * 100.0
            );
        }
        if let [rr, lag] = &self.partitioning[..] {
            out += &format!(
                "\nLag-aware / round-robin p99 completion: {:.2}.\n",
                lag.p99_ms as f64 / rr.p99_ms.max(1) as f64
            );
        }
        out
    }
}

/// A scenario's own topics and group.
fn scenario(base: &Config, run: &str, name: &str) -> Config {
    let mut cfg = base.clone();
    cfg.topics.tasks = format!("{run}-{name}-tasks");
    cfg.topics.results = format!("{run}-{name}-results");
    cfg.worker.group = format!("{run}-{name}-group");
    cfg.worker.id = Some(format!("{name}-worker"));
    cfg
}

fn sleep_task(ms: u64, f: impl FnOnce(&mut Task)) -> Outgoing {
    let mut t = Task::new("sleep", json!({ "ms": ms }));
    f(&mut t);
    Outgoing::new(t, None)
}

async fn priority(base: &Config, run: &str) -> anyhow::Result<Vec<PriorityRun>> {
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

async fn policies(base: &Config, run: &str) -> anyhow::Result<Vec<PolicyRun>> {
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
        let (stop, worker) = start_worker(&cfg, sluice_worker::builtin()).await?;
        let publisher = Publisher::routed(&cfg).await?;
        let outs: Vec<Outgoing> = tasks.iter().map(|(_, o)| o.clone()).collect();
        publish(&publisher, &outs).await?;
        let results = collect(&cfg, outs.len()).await?;
        stop.cancel();
        worker.await??;
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

async fn deadlines(base: &Config, run: &str) -> anyhow::Result<Vec<DeadlineRun>> {
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

async fn partitioning(base: &Config, run: &str) -> anyhow::Result<Vec<PartitionRun>> {
    let mut runs = Vec::new();
    for (kind, name) in [
        (PartitionerKind::RoundRobin, "round-robin"),
        (PartitionerKind::LagAware, "lag-aware"),
    ] {
        let mut cfg = scenario(base, run, &format!("part-{name}"));
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

type Running = (
    CancellationToken,
    tokio::task::JoinHandle<Result<sluice_worker::Summary, sluice_worker::WorkerError>>,
);

/// A worker that holds its partitions.
async fn start_worker(cfg: &Config, registry: Registry) -> anyhow::Result<Running> {
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let h = tokio::spawn(sluice_worker::run_with(
        cfg.clone(),
        registry,
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

/// Publishes `tasks` at `rate` per second (open loop: each at its scheduled time).
async fn paced<'a>(
    p: &Publisher,
    tasks: impl Iterator<Item = &'a Outgoing>,
    rate: f64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut pending = Vec::new();
    for (i, t) in tasks.enumerate() {
        let due = Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        // Created when sent, so queue waits start at the scheduled time.
        let mut t = t.clone();
        t.task.created_ms = Some(sluice_common::task::now_ms());
        pending.push((t.id().to_string(), p.send(&t, None).await?));
    }
    for (_, d) in pending {
        d.await?;
    }
    Ok(())
}

/// Reads results until every one of `n` tasks has one.
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
