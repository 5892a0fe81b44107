//! A worker binary of your own: the built-in kinds plus a Rust handler.
//!
//! ```text
//! sluice broker &                      # or any Kafka cluster: -b / SLUICE_BROKERS
//! cargo run --example custom_worker &
//! sluice produce --kind wordcount --payload '"the quick brown fox jumps over the lazy dog the end"'
//! sluice results --wait 1
//! ```
//!
//! Everything `sluice worker` offers still applies: the consumer group, ordering,
//! at-least-once commits, graceful shutdown on Ctrl-C, configuration layering.

use serde_json::{json, Value};
use sluice_common::{shutdown, telemetry, Config};
use sluice_worker::{handler_fn, HandlerError, TaskContext};
use std::collections::BTreeMap;

/// Counts words in a text payload; a non-text payload is a permanent error
/// (retrying cannot fix it).
async fn wordcount(task: TaskContext) -> Result<Value, HandlerError> {
    let text = task
        .payload
        .as_str()
        .ok_or_else(|| HandlerError::permanent("wordcount needs a string payload"))?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    Ok(json!(counts))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cfg = Config::load(None, std::env::vars())?;
    if let Ok(brokers) = std::env::var("SLUICE_BROKERS") {
        cfg.kafka.brokers = brokers;
    }
    telemetry::init(&cfg.log);
    let mut registry = sluice_worker::builtin();
    registry.register("wordcount", handler_fn(wordcount));
    let summary = sluice_worker::run(cfg, registry, shutdown::on_signals()).await?;
    println!("{} tasks finished", summary.counters.total_finished());
    Ok(())
}
