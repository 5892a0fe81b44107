//! `sluice health`: asks a worker's endpoint on this machine whether it is
//! ready, for container health checks (the runtime image has no curl). Exit 0
//! when it answers 200, 1 otherwise; the answer's body says why.

use crate::cli::HealthArgs;
use sluice_common::{exporter, Config};
use std::process::ExitCode;
use std::time::Duration;

pub async fn run(args: HealthArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let addr = match args.addr {
        Some(a) => a,
        None => cfg.metrics.listen_addr()?,
    };
    let path = if args.live {
        "/health/live"
    } else {
        "/health/ready"
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let answer = tokio::task::spawn_blocking(move || exporter::probe(addr, path, timeout)).await?;
    let url = format!("http://{}{path}", exporter::reachable(addr));
    Ok(match answer {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((code, body)) => {
            eprint!("sluice health: {url} answered {code}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice health: no answer from {url}: {e}");
            ExitCode::FAILURE
        }
    })
}
