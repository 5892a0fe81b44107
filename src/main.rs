//! The `sluice` binary: parse flags, load configuration, start logging, run the
//! subcommand, map errors to exit codes (1: the command failed, 2: bad usage or
//! configuration).

mod cli;
mod commands;
mod output;

use clap::Parser;
use sluice_common::{telemetry, Config};
use std::process::ExitCode;

/// Sluice allocates a little per task on the runtime's threads and frees it on
/// librdkafka's delivery thread; glibc's allocator spent about 17 % of a
/// saturated worker's CPU on that traffic (`perf record`, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse().resolve();
    let mut cfg = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    cli.apply(&mut cfg);
    if let Err(e) = cfg.validate() {
        eprintln!("sluice: {e}");
        return ExitCode::from(2);
    }
    telemetry::init(&cfg.log);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = runtime.block_on(commands::run(cli.command, cfg));
    // A Kafka client stuck closing on a vanished broker must not keep the
    // process alive: the work is done or handed back by now.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(code) => code,
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
