//! What every scheduling scenario shares: its own topics and group, workers
//! in this process, publishing (at once or paced), reading results back.

use serde_json::json;
use sluice_common::{Config, Task, TaskResult};
use sluice_producer::{Next, Outgoing, Publisher, ResultReader, Start};
use sluice_worker::{Counters, Registry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A scenario's own topics and group.
pub fn scenario(base: &Config, run: &str, name: &str) -> Config {
    let mut cfg = base.clone();
    cfg.topics.tasks = format!("{run}-{name}-tasks");
    cfg.topics.results = format!("{run}-{name}-results");
    cfg.worker.group = format!("{run}-{name}-group");
    cfg.worker.id = Some(format!("{name}-worker"));
    cfg
}

pub fn sleep_task(ms: u64, f: impl FnOnce(&mut Task)) -> Outgoing {
    let mut t = Task::new("sleep", json!({ "ms": ms }));
    f(&mut t);
    Outgoing::new(t, None)
}

/// A worker task in this process.
pub type WorkerTask =
    tokio::task::JoinHandle<Result<sluice_worker::Summary, sluice_worker::WorkerError>>;

/// A worker task and the token that stops it.
pub type Running = (CancellationToken, WorkerTask);

/// A worker that holds its partitions.
pub async fn start_worker(cfg: &Config, registry: Registry) -> anyhow::Result<Running> {
    Ok(start_counted(cfg, registry).await?.0)
}

/// [`start_worker`], with the worker's live counters.
pub async fn start_counted(
    cfg: &Config,
    registry: Registry,
) -> anyhow::Result<(Running, Arc<Counters>)> {
    let stop = CancellationToken::new();
    let (h, counters) = spawn_worker(cfg, registry, &stop);
    all_assigned(std::slice::from_ref(&counters)).await?;
    Ok(((stop, h), counters))
}

/// A worker in this process that stops with `stop`, and its live counters; it
/// may not hold partitions yet (see [`all_assigned`]).
pub fn spawn_worker(
    cfg: &Config,
    registry: Registry,
    stop: &CancellationToken,
) -> (WorkerTask, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let h = tokio::spawn(sluice_worker::run_with(
        cfg.clone(),
        registry,
        stop.clone(),
        counters.clone(),
    ));
    (h, counters)
}

/// Waits until every one of these workers holds partitions.
pub async fn all_assigned(counters: &[Arc<Counters>]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.iter().any(|c| c.assigned() == 0) {
        anyhow::ensure!(Instant::now() < deadline, "a worker got no partitions");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One worker runs `tasks`, all published at once: the result of each, by task id.
pub async fn run_burst(
    cfg: &Config,
    registry: Registry,
    tasks: &[Outgoing],
) -> anyhow::Result<HashMap<String, TaskResult>> {
    let (stop, worker) = start_worker(cfg, registry).await?;
    let publisher = Publisher::routed(cfg).await?;
    publish(&publisher, tasks).await?;
    let results = collect(cfg, tasks.len()).await?;
    stop.cancel();
    worker.await??;
    Ok(results)
}

pub async fn publish(p: &Publisher, tasks: &[Outgoing]) -> anyhow::Result<()> {
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
pub async fn paced<'a>(
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
pub async fn collect(cfg: &Config, n: usize) -> anyhow::Result<HashMap<String, TaskResult>> {
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
pub fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
