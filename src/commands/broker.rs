//! `sluice broker`: the embedded broker until Ctrl-C.

use crate::cli::BrokerArgs;
use sluice_common::{shutdown, Config, EmbeddedBroker, TopicSpec};
use std::process::ExitCode;

pub async fn run(args: BrokerArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let mut topics: Vec<TopicSpec> = [&cfg.topics.tasks, &cfg.topics.results]
        .into_iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions: 0,
        })
        .collect();
    topics.extend(args.topics.iter().cloned());
    let stop = shutdown::on_signals();
    let broker = EmbeddedBroker::start(args.listen, &topics, args.partitions)?;
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    tracing::info!(topics = %names.join(","), partitions = args.partitions, "embedded broker ready");
    // The address line is for people and scripts alike (tests read it).
    println!("sluice broker listening on {}", broker.bootstrap());
    stop.cancelled().await;
    drop(broker);
    Ok(ExitCode::SUCCESS)
}
