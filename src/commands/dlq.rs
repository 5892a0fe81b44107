//! `sluice dlq list` and `sluice dlq replay`.

use crate::cli::{DlqCommand, DlqFilter, ResultsFormat};
use serde_json::json;
use sluice_common::dead_letter::headers;
use sluice_common::Config;
use sluice_producer::dlq::{read_all, DeadLetterRecord};
use sluice_producer::{Outgoing, Publisher};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;

pub async fn run(command: DlqCommand, cfg: Config) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List(a) => list(&a.filter, a.format, &cfg).await,
        DlqCommand::Replay(a) => replay(&a.filter, a.dry_run, &cfg).await,
    }
}

fn chosen(filter: &DlqFilter, all: Vec<DeadLetterRecord>) -> Vec<DeadLetterRecord> {
    all.into_iter()
        .filter(|r| filter.kind.as_deref().is_none_or(|k| r.kind() == k))
        .filter(|r| filter.ids.is_empty() || filter.ids.iter().any(|id| id == r.task_id()))
        .collect()
}

async fn list(
    filter: &DlqFilter,
    format: Option<ResultsFormat>,
    cfg: &Config,
) -> anyhow::Result<ExitCode> {
    let records = chosen(filter, read_all(cfg).await?);
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        ResultsFormat::Table
    } else {
        ResultsFormat::Json
    });
    if format == ResultsFormat::Table {
        crate::output::line(&format!(
            "{:<38} {:<10} {:>3} {:<28} ERROR",
            "TASK", "KIND", "TRY", "FROM"
        ));
    }
    for r in &records {
        let from = format!(
            "{}[{}]@{}",
            r.header(headers::TOPIC),
            r.header(headers::PARTITION),
            r.header(headers::OFFSET)
        );
        match format {
            ResultsFormat::Table => crate::output::line(&format!(
                "{:<38} {:<10} {:>3} {:<28} {}",
                r.task_id(),
                r.kind(),
                r.header(headers::ATTEMPTS),
                from,
                r.error()
            )),
            ResultsFormat::Json => {
                let value = r.value.as_deref().map(String::from_utf8_lossy);
                let key = r.key.as_deref().map(String::from_utf8_lossy);
                let hs: BTreeMap<&str, &str> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                crate::output::line(&json!({"partition": r.partition, "offset": r.offset, "key": key, "value": value, "headers": hs}).to_string())
            }
        }
    }
    eprintln!(
        "{} dead-lettered record(s) on {}",
        records.len(),
        cfg.topics.dead_letter_topic()
    );
    Ok(ExitCode::SUCCESS)
}

async fn replay(filter: &DlqFilter, dry_run: bool, cfg: &Config) -> anyhow::Result<ExitCode> {
    let records = chosen(filter, read_all(cfg).await?);
    let mut publishers: BTreeMap<String, Publisher> = BTreeMap::new();
    let (mut sent, mut skipped) = (0, 0);
    for r in &records {
        let task = match r.replay_task() {
            Ok(t) => t,
            Err(why) => {
                eprintln!(
                    "skipping {} (DLQ offset {}:{}): cannot replay: {why}",
                    r.task_id(),
                    r.partition,
                    r.offset
                );
                skipped += 1;
                continue;
            }
        };
        let topic = r.replay_topic(cfg);
        let key = r
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        let out = Outgoing::new(task, key);
        if dry_run {
            crate::output::line(&format!(
                "would replay {} ({}) to {topic}",
                out.id(),
                out.task.kind
            ));
            continue;
        }
        if !publishers.contains_key(&topic) {
            publishers.insert(topic.clone(), Publisher::connect(cfg, &topic).await?);
        }
        let d = publishers[&topic].publish(&out, None).await?;
        crate::output::line(&format!(
            "replayed {} ({}) to {topic}[{}]@{}",
            out.id(),
            out.task.kind,
            d.partition,
            d.offset
        ));
        sent += 1;
    }
    eprintln!(
        "{} replayed, {skipped} skipped, of {} matching dead letters",
        if dry_run { 0 } else { sent },
        records.len()
    );
    Ok(if skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
