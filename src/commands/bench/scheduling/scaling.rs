//! The scaling signal: read it under a backlog, run that many workers, and
//! compare with staying at one.
//!
//! Eight partitions; `sleep` tasks of 20 ms on 2 slots per worker, so one
//! worker runs about 100 tasks/s. Tasks arrive at 200/s for 20 s. After 3 s
//! the one worker's `sluice_scaling_needed_workers` is read (recomputed every
//! second, `scaling_drain_s = 10`); in the scaled run that many workers, in
//! all, run from then on, in the baseline the one worker carries on. The
//! backlog (published minus finished) is sampled at the reading, when every
//! new worker holds partitions (joining the group takes seconds), every 3 s,
//! and when the load stops; then the time it took to clear. The backlog's
//! change per second runs from the moment the new workers hold partitions (at
//! one worker: from the reading) to the end of the load.

use super::harness::{collect, scenario, start_counted};
use serde::Serialize;
use serde_json::json;
use sluice_common::config::GroupProtocol;
use sluice_common::task::now_ms;
use sluice_common::{Config, Task};
use sluice_producer::{Outgoing, Publisher};
use sluice_worker::Counters;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RATE: f64 = 200.0;
const LOAD: Duration = Duration::from_secs(20);
const READ_AT: Duration = Duration::from_secs(3);

/// One run of the scaling comparison.
#[derive(Debug, Serialize)]
pub struct ScalingRun {
    pub run: &'static str,
    /// The signal read from the one worker.
    pub signal: f64,
    /// Workers from the reading on.
    pub workers: usize,
    /// Tasks published and not finished, at the reading.
    pub backlog_at_reading: u64,
    /// Tasks waiting 3, 6, 9, … s after the reading, while the load lasts.
    pub backlog_after: Vec<u64>,
    /// Seconds from the reading until every new worker held partitions.
    pub joined_after_s: Option<f64>,
    /// Tasks waiting when the load stopped.
    pub backlog_at_end: u64,
    /// Change of the backlog per second, from the join (or the reading) to
    /// the end of the load.
    pub backlog_change_per_s: f64,
    /// From the end of the load until every task had finished.
    pub clear_after_load_ms: u64,
}

pub async fn run(base: &Config, run: &str) -> anyhow::Result<Vec<ScalingRun>> {
    let mut runs = Vec::new();
    for (name, scale) in [
        ("stay at 1 worker (baseline)", false),
        ("scale to the signal", true),
    ] {
        let mut cfg = scenario(base, run, &format!("scaling-{scale}"));
        cfg.topics.partitions = 8;
        cfg.worker.concurrency = 2;
        cfg.worker.commit_interval_ms = 200;
        cfg.worker.group_protocol = GroupProtocol::Consumer;
        // The signal needs the lag from librdkafka statistics.
        cfg.metrics.enabled = true;
        cfg.metrics.listen = "127.0.0.1:0".into();
        cfg.metrics.statistics_interval_ms = 250;
        cfg.worker.scheduler.scaling_interval_ms = 1000;
        cfg.worker.scheduler.scaling_drain_s = 10.0;
        let mut counters: Vec<Arc<Counters>> = Vec::new();
        let mut running = Vec::new();
        let (first, live) = start_counted(&cfg, sluice_worker::builtin()).await?;
        running.push(first);
        counters.push(live);
        let publisher = Publisher::routed(&cfg).await?;
        let total = (RATE * LOAD.as_secs_f64()) as usize;
        let finished = |c: &[Arc<Counters>]| c.iter().map(|c| c.total_finished()).sum::<u64>();
        let started = Instant::now();
        let mut pending = Vec::with_capacity(total);
        let (mut signal, mut workers, mut at_reading) = (0.0, 1, 0);
        let mut after = Vec::new();
        let mut read = false;
        let (mut read_at, mut joined): (Duration, Option<(Duration, u64)>) = (READ_AT, None);
        for i in 0..total {
            let due = Duration::from_secs_f64(i as f64 / RATE);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let mut task = Task::new("sleep", json!({ "ms": 20 }));
            task.created_ms = Some(now_ms());
            let out = Outgoing::new(task, None);
            pending.push(publisher.send(&out, None).await?);
            let backlog = (i as u64 + 1).saturating_sub(finished(&counters));
            if !read && started.elapsed() >= READ_AT {
                read = true;
                signal = counters[0].needed_workers();
                workers = (signal.ceil() as usize).max(1);
                at_reading = backlog;
                read_at = started.elapsed();
                if scale {
                    for n in 1..workers {
                        let mut c = cfg.clone();
                        c.worker.id = Some(format!("scaling-worker-{n}"));
                        let live = Arc::new(Counters::default());
                        counters.push(live.clone());
                        let stop = tokio_util::sync::CancellationToken::new();
                        let h = tokio::spawn(sluice_worker::run_with(
                            c,
                            sluice_worker::builtin(),
                            stop.clone(),
                            live,
                        ));
                        running.push((stop, h));
                    }
                } else {
                    workers = 1;
                }
            }
            if read
                && joined.is_none()
                && counters.len() > 1
                && counters[1..].iter().all(|c| c.assigned() > 0)
            {
                joined = Some((started.elapsed(), backlog));
            }
            let next = READ_AT + Duration::from_secs(3 * (after.len() as u64 + 1));
            if read && next < LOAD && started.elapsed() >= next {
                after.push(backlog);
            }
        }
        for d in pending {
            d.await?;
        }
        let load_end = Instant::now();
        let at_end = (total as u64).saturating_sub(finished(&counters));
        let (from, from_backlog) = joined.unwrap_or((read_at, at_reading));
        let change = (at_end as f64 - from_backlog as f64)
            / (started.elapsed() - from).as_secs_f64().max(1e-3);
        let deadline = load_end + Duration::from_secs(120);
        while finished(&counters) < total as u64 {
            anyhow::ensure!(Instant::now() < deadline, "the backlog never cleared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let clear = load_end.elapsed();
        collect(&cfg, total).await?;
        for (stop, h) in running {
            stop.cancel();
            h.await??;
        }
        runs.push(ScalingRun {
            run: name,
            signal,
            workers,
            backlog_at_reading: at_reading,
            backlog_after: after,
            joined_after_s: joined.map(|(t, _)| (t - read_at).as_secs_f64()),
            backlog_change_per_s: change,
            backlog_at_end: at_end,
            clear_after_load_ms: clear.as_millis() as u64,
        });
    }
    Ok(runs)
}

/// The runs as Markdown.
pub fn markdown(runs: &[ScalingRun]) -> String {
    let mut out = String::from(
        "**The scaling signal** (8 partitions; 20 ms tasks on 2 slots per worker ≈ 100/s each; 200 tasks/s arrive for 20 s; the signal of the one worker read after 3 s, `scaling_drain_s = 10`; backlog = published − finished; its change per second from when the new workers held partitions, or at one worker from the reading, to the end of the load):\n\n\
         | run | signal read | workers after | backlog at the reading | +3 s | +6 s | +9 s | +12 s | +15 s | new workers held partitions after | backlog when the load stopped | backlog change | cleared after the load |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let mut after: Vec<String> = r.backlog_after.iter().map(u64::to_string).collect();
        after.resize(5, "–".into());
        let joined = r.joined_after_s.map_or("–".into(), |s| format!("{s:.1} s"));
        out += &format!(
            "| {} | {:.2} | {} | {} | {} | {joined} | {} | {:+.0}/s | {} ms |\n",
            r.run,
            r.signal,
            r.workers,
            r.backlog_at_reading,
            after[..5].join(" | "),
            r.backlog_at_end,
            r.backlog_change_per_s,
            r.clear_after_load_ms
        );
    }
    if let [one, scaled] = runs {
        out += &format!(
            "\nBacklog change once the {} workers the signal asked for held partitions: {:+.0} tasks/s, against {:+.0} tasks/s at one worker; time to clear after the load, scaled / one worker: {:.2}.\n",
            scaled.workers,
            scaled.backlog_change_per_s,
            one.backlog_change_per_s,
            scaled.clear_after_load_ms as f64 / one.clear_after_load_ms.max(1) as f64
        );
    }
    out
}
