//! `sluice results`: read outcomes, filter by id, wait for some, follow.

use crate::cli::{ResultsArgs, ResultsFormat};
use sluice_common::{Config, TaskResult};
use sluice_producer::{Next, ResultReader, Start};
use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub async fn run(args: ResultsArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let format = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        ResultsFormat::Table
    } else {
        ResultsFormat::Json
    });
    let start = if args.new_only {
        Start::End
    } else {
        Start::Beginning
    };
    let mut reader = ResultReader::open(&cfg, start).await?;
    let wanted: HashSet<&str> = args.ids.iter().map(String::as_str).collect();
    let waiting = args.wait.is_some() || !wanted.is_empty();
    let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = std::io::stdout().lock();
    if format == ResultsFormat::Table {
        writeln!(
            out,
            "{:<38} {:<10} {:<13} {:>8} {:<22} {:>6}  OUTPUT / ERROR",
            "TASK", "KIND", "STATUS", "MS", "WORKER", "PART"
        )?;
    }
    loop {
        if waiting && done(&args, &wanted, &seen) {
            return Ok(ExitCode::SUCCESS);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if waiting && left.is_zero() {
            let target = args.wait.unwrap_or(0).max(wanted.len());
            eprintln!(
                "sluice results: timed out after {} ms: {} of {target} results arrived",
                args.timeout_ms,
                seen.len()
            );
            return Ok(ExitCode::FAILURE);
        }
        let step = if waiting {
            left.min(Duration::from_millis(500))
        } else {
            Duration::from_millis(500)
        };
        match reader.next(step).await {
            Next::Result(r) => {
                if !wanted.is_empty() && !wanted.contains(r.task_id.as_str()) {
                    continue;
                }
                seen.insert(r.task_id.clone());
                print(&mut out, &r, format)?;
            }
            Next::Invalid(why) => {
                eprintln!("sluice results: skipping a record that is not a result: {why}")
            }
            Next::CaughtUp if !waiting && !args.follow => return Ok(ExitCode::SUCCESS),
            Next::CaughtUp | Next::Idle => out.flush()?,
        }
    }
}

fn done(args: &ResultsArgs, wanted: &HashSet<&str>, seen: &HashSet<String>) -> bool {
    let enough = args.wait.is_none_or(|n| seen.len() >= n);
    let all_ids = wanted.iter().all(|id| seen.contains(*id));
    enough && all_ids
}

fn print(out: &mut impl Write, r: &TaskResult, format: ResultsFormat) -> std::io::Result<()> {
    match format {
        ResultsFormat::Json => writeln!(out, "{}", serde_json::to_string(r).expect("serializable")),
        ResultsFormat::Table => {
            let detail = match (&r.output, &r.error) {
                (_, Some(e)) => e.clone(),
                (Some(o), None) => o.to_string(),
                (None, None) => String::new(),
            };
            let detail: String = detail.chars().take(60).collect();
            writeln!(
                out,
                "{:<38} {:<10} {:<13} {:>8} {:<22} {:>6}  {detail}",
                r.task_id,
                r.kind,
                r.status.as_str(),
                r.finished_ms.saturating_sub(r.started_ms),
                r.worker,
                r.partition,
            )
        }
    }
}
