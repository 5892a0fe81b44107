//! `sluice status`: a consumer group at a glance — members, their partitions,
//! committed offsets, lag, and the commit rate.
//!
//! The rate needs two looks: a single run looks twice, [`SAMPLE_WINDOW`] apart;
//! `--watch` compares each refresh with the one before.
//!
//! # Layout
//! - [`assignment`]: the classic protocol's member-assignment bytes.
//! - [`snapshot`]: reading one snapshot from the brokers.
//! - [`table`]: the human view.

mod assignment;
mod snapshot;
mod table;

use crate::cli::StatusArgs;
use sluice_common::{shutdown, Config};
use snapshot::{Observer, Snapshot};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Between the two looks of a single run.
const SAMPLE_WINDOW: Duration = Duration::from_secs(1);

pub async fn run(args: StatusArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let group = cfg.worker.group.clone();
    let topic = cfg.topics.tasks.clone();
    let observer = {
        let cfg = cfg.clone();
        // librdkafka calls block: keep them off the async worker threads.
        Arc::new(
            tokio::task::spawn_blocking(move || Observer::connect(&cfg, &group, &topic)).await??,
        )
    };
    let stop = shutdown::on_signals();
    let clear = args.watch && !args.json && std::io::stdout().is_terminal();
    let mut previous = take(&observer).await?;
    let mut wait = SAMPLE_WINDOW;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(wait) => {}
        }
        match take(&observer).await {
            Ok(now) => {
                let now = now.with_throughput_since(&previous);
                show(&now, args.json, clear)?;
                previous = now;
            }
            // A watch outlives a broker restart: report, and look again next time.
            Err(e) if args.watch => eprintln!("sluice status: {e:#}"),
            Err(e) => return Err(e),
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        wait = Duration::from_millis(args.interval_ms);
    }
}

async fn take(observer: &Arc<Observer>) -> anyhow::Result<Snapshot> {
    let o = observer.clone();
    Ok(tokio::task::spawn_blocking(move || o.take()).await??)
}

fn show(s: &Snapshot, json: bool, clear: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        // One line per document, so `--watch --json` is a stream of JSON lines.
        writeln!(out, "{}", serde_json::to_string(s)?)?;
    } else {
        if clear {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "{}", table::render(s))?;
        if !clear {
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}
