//! Sluice under test: workers started in this process with
//! `sluice_worker::run_with`, the same code path as `sluice worker`.
//!
//! In-process rather than child processes because one process makes one CPU
//! account: `getrusage` then covers Sluice and the baseline alike, and the live
//! [`Counters`] tell when a joining worker ran its first task without scraping
//! anything.

use sluice_common::Config;
use sluice_worker::{Counters, Summary, WorkerError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a group may take to hand out every partition.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(30);

/// A group of workers on one task topic.
pub struct Workers {
    cfg: Config,
    stop: CancellationToken,
    handles: Vec<JoinHandle<Result<Summary, WorkerError>>>,
    pub counters: Vec<Arc<Counters>>,
}

impl Workers {
    /// Starts `n` workers of `cfg` (its topics and group) with `concurrency` each.
    pub fn start(cfg: &Config, n: usize, concurrency: usize) -> Workers {
        let mut cfg = cfg.clone();
        cfg.worker.concurrency = concurrency;
        cfg.worker.max_buffered_tasks = cfg.worker.max_buffered_tasks.max(concurrency);
        let mut w = Workers {
            cfg,
            stop: CancellationToken::new(),
            handles: Vec::new(),
            counters: Vec::new(),
        };
        for _ in 0..n {
            w.add();
        }
        w
    }

    /// Starts one more worker; its counters show when it runs tasks.
    pub fn add(&mut self) -> Arc<Counters> {
        let mut c = self.cfg.clone();
        c.worker.id = Some(format!("bench-worker-{}", self.handles.len() + 1));
        let live = Arc::new(Counters::default());
        self.counters.push(live.clone());
        self.handles.push(tokio::spawn(sluice_worker::run_with(
            c,
            sluice_worker::builtin(),
            self.stop.clone(),
            live.clone(),
        )));
        live
    }

    /// Waits until `partitions` (task and retry topic together) are assigned and,
    /// with enough of them, every worker holds some. Returns how long that took.
    pub async fn balanced(&self, partitions: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let held: Vec<usize> = self.counters.iter().map(|c| c.assigned()).collect();
            let everyone = held.iter().all(|n| *n > 0) || held.len() > partitions;
            if everyone && held.iter().sum::<usize>() >= partitions {
                return Ok(started.elapsed());
            }
            if let Some(h) = self.handles.iter().find(|h| h.is_finished()) {
                anyhow::bail!("a bench worker stopped early ({h:?})");
            }
            anyhow::ensure!(
                started.elapsed() < BALANCE_TIMEOUT,
                "the workers did not share the partitions within {BALANCE_TIMEOUT:?} (held: {held:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every worker (they drain and commit) and reports failures.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for h in self.handles {
            h.await??;
        }
        Ok(())
    }
}
