//! One module per subcommand; each exposes `run(args, cfg)`.

mod bench;
mod broker;
mod dev;
mod dlq;
mod health;
mod job;
mod produce;
mod results;
mod status;
mod worker;

use crate::cli::Command;
use sluice_common::Config;
use std::process::ExitCode;

/// Runs a subcommand to completion.
pub async fn run(command: Command, cfg: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Broker(a) => broker::run(a, cfg).await,
        Command::Worker(a) => worker::run(a, cfg).await,
        Command::Produce(a) => produce::run(a, cfg).await,
        Command::Results(a) => results::run(a, cfg).await,
        Command::Status(a) => status::run(a, cfg).await,
        Command::Dlq(c) => dlq::run(c, cfg).await,
        Command::Job(c) => job::run(c, cfg).await,
        Command::Dev(a) => dev::run(a, cfg).await,
        Command::Bench(a) => bench::run(a, cfg).await,
        Command::Health(a) => health::run(a, cfg).await,
    }
}
