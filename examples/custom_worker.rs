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

/// Counts each word in a text payload, or in the lines of a job's `lines:` split
/// (`{"lines": [...]}`); anything else is a permanent error (retrying cannot fix
/// it). A job gathered with `sum` adds the counts up word by word:
/// `sluice job submit --kind wordcount --split lines:book.txt:100 --gather sum --wait`.
async fn wordcount(task: TaskContext) -> Result<Value, HandlerError> {
    let lines: Vec<&str> = match &task.payload {
        Value::String(text) => vec![text.as_str()],
        other => other
            .get("lines")
            .and_then(Value::as_array)
            .and_then(|l| l.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| {
                HandlerError::permanent("wordcount needs a text or {\"lines\": [text, ...]}")
            })?,
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for word in lines.iter().flat_map(|l| l.split_whitespace()) {
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
