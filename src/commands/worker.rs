//! `sluice worker`: built-in and configured kinds, until SIGINT/SIGTERM.

use crate::cli::WorkerArgs;
use sluice_common::{shutdown, Config};
use std::process::ExitCode;

pub async fn run(_args: WorkerArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let registry = sluice_worker::with_external_handlers(sluice_worker::builtin(), &cfg)?;
    let stop = shutdown::on_signals();
    let summary = sluice_worker::run(cfg, registry, stop).await?;
    Ok(if summary.unfinished_at_shutdown == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
