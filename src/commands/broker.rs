//! `sluice broker`: the embedded broker until Ctrl-C. Faults for recovery tests
//! are read from stdin, one per line (see `sluice_common::Fault`).

use crate::cli::BrokerArgs;
use sluice_common::{shutdown, Config, EmbeddedBroker, Fault, TopicSpec};
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
    let broker = std::sync::Arc::new(broker);
    // Fault injection: one fault per line on stdin, answered `ok` or `error: …`.
    let faults = broker.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let reply = line
                .parse::<Fault>()
                .map_err(|e| e.to_string())
                .and_then(|f| faults.inject(f).map_err(|e| e.to_string()));
            match reply {
                Ok(()) => {
                    tracing::warn!(fault = line, "fault injected");
                    println!("ok {line}");
                }
                Err(e) => println!("error: {e}"),
            }
        }
    });
    stop.cancelled().await;
    drop(broker);
    Ok(ExitCode::SUCCESS)
}
