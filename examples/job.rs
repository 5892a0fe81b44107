//! A job from Rust: split a range into sub-tasks, publish them, and wait for the
//! result a worker's gatherer publishes — what `sluice job submit --wait` does.
//!
//! ```text
//! sluice broker &                      # or any Kafka cluster: -b / SLUICE_BROKERS
//! sluice worker & sluice worker &      # the group that runs and gathers the job
//! cargo run --example job              # prints [1,4,9,16,25]
//! ```

use sluice_common::job::{FailurePolicy, GatherSpec};
use sluice_common::{telemetry, Config};
use sluice_producer::job::{JobSpec, JobWatch, Split, Submitter};
use sluice_producer::Start;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cfg = Config::load(None, std::env::vars())?;
    if let Ok(brokers) = std::env::var("SLUICE_BROKERS") {
        cfg.kafka.brokers = brokers;
    }
    telemetry::init(&cfg.log);
    let split: Split = "range:1..5".parse()?;
    let spec = JobSpec {
        id: None,
        kind: "square".into(),
        split: split.clone(),
        gather: GatherSpec::Collect,
        failure: FailurePolicy::default(),
        sub_tasks: Default::default(),
    };
    let submitter = Submitter::connect(&cfg).await?;
    let payloads = split.payloads()?;
    let manifest = submitter.manifest(&spec, payloads.len() as u64)?;
    // Watch from the topics' current ends, opened before publishing so that
    // nothing the job produces is missed.
    let mut watch = JobWatch::open(&cfg, Some(manifest.job_id.clone()), Start::End).await?;
    // `None`: the job's sub-tasks share a new trace.
    submitter
        .submit(&manifest, &spec.sub_tasks, payloads, None, |_| {})
        .await?;
    eprintln!("job {} submitted", manifest.job_id);
    loop {
        watch.poll(Duration::from_millis(200)).await;
        let Some(status) = watch.book().status(&manifest.job_id) else {
            continue;
        };
        if status.finished() {
            match (status.output, status.error) {
                (Some(output), _) => println!("{output}"),
                (None, error) => anyhow::bail!("job failed: {}", error.unwrap_or_default()),
            }
            return Ok(());
        }
    }
}
