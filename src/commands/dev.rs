//! `sluice dev`: the whole pipeline in one process, on the embedded broker.
//!
//! Starts the broker and a group of workers (each a real group member with its own
//! consumer), publishes a mixed demo workload, reads every result back and prints
//! a summary. Then it runs a job (`square` over 1..N, gathered by `sum` on a
//! worker) and shows its result. Exits 0 only when every published task has
//! exactly one result and the job's sum is right.

use crate::cli::DevArgs;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sluice_common::config::GroupProtocol;
use sluice_common::job::{FailurePolicy, GatherSpec};
use sluice_common::task::now_ms;
use sluice_common::{shutdown, Config, EmbeddedBroker, Status, Task, TopicSpec};
use sluice_producer::job::{JobSpec, JobStatus, JobWatch, Split, Submitter};
use sluice_producer::{Next, Outgoing, Publisher, ResultReader, Start};
use sluice_worker::Counters;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to wait for the last result before declaring tasks missing.
const RESULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for the workers to share the partitions.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to keep reading after the last expected result, to catch duplicates.
const DUPLICATE_WATCH: Duration = Duration::from_secs(1);

pub async fn run(args: DevArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    let topics = [
        TopicSpec {
            name: cfg.topics.tasks.clone(),
            partitions: args.partitions,
        },
        TopicSpec {
            name: cfg.topics.results.clone(),
            partitions: args.partitions,
        },
        // Workers consume the retry topic too; created here with as many
        // partitions, so that a balanced group holds exactly twice as many.
        TopicSpec {
            name: cfg.topics.retry_topic(),
            partitions: args.partitions,
        },
    ];
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let broker = EmbeddedBroker::start(any_port, &topics, args.partitions)?;
    cfg.kafka.brokers = broker.bootstrap();
    cfg.worker.group = "sluice-dev".into();
    cfg.worker.concurrency = args.concurrency;
    cfg.worker.max_buffered_tasks = cfg.worker.max_buffered_tasks.max(args.concurrency);
    // KIP-848: members join without a group-wide barrier, so startup is quick.
    cfg.worker.group_protocol = GroupProtocol::Consumer;
    // The embedded broker's fetch wait is shortened where every worker and reader
    // is built (`kafka::adapted_to_cluster`), as for any client of `sluice broker`.
    // Several workers share this process, and an endpoint per worker would only
    // take ports; `sluice worker` is the process to scrape.
    cfg.metrics.enabled = false;
    eprintln!(
        "embedded broker on {}; starting {} workers (concurrency {} each) on {} partitions",
        broker.bootstrap(),
        args.workers,
        args.concurrency,
        args.partitions
    );

    // The idempotent producer fetches its producer id in the background at start;
    // creating it before the workers join keeps that wait out of task latency.
    let publisher = Publisher::connect(&cfg, &cfg.topics.tasks).await?;
    let stop = shutdown::on_signals();
    let workers = stop.child_token();
    let mut handles = Vec::new();
    let mut counters = Vec::new();
    for i in 1..=args.workers {
        let mut c = cfg.clone();
        c.worker.id = Some(format!("dev-worker-{i}"));
        let live = Arc::new(Counters::default());
        counters.push(live.clone());
        handles.push(tokio::spawn(sluice_worker::run_with(
            c,
            sluice_worker::builtin(),
            workers.clone(),
            live,
        )));
    }
    // Task and retry topic partitions.
    wait_for_balance(&counters, 2 * args.partitions as usize).await;

    let mut reader = ResultReader::open(&cfg, Start::Beginning).await?;
    let workload = demo_workload(args.tasks);
    let expected: HashMap<String, &'static str> = workload
        .iter()
        .map(|(o, _)| (o.id().to_string(), ""))
        .collect();

    let started = Instant::now();
    let bar = progress(args.tasks as u64, "publishing");
    let mut pending = Vec::with_capacity(workload.len());
    for (out, _) in &workload {
        pending.push(publisher.send(out, None).await?);
    }
    for p in pending {
        p.await?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let published_in = started.elapsed();
    eprintln!(
        "published {} tasks in {:.2}s",
        workload.len(),
        published_in.as_secs_f64()
    );

    let bar = progress(args.tasks as u64, "results   ");
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut by_status: BTreeMap<Status, u64> = BTreeMap::new();
    let mut by_worker: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let mut latencies_ms: Vec<u64> = Vec::new();
    let mut waits_ms: Vec<u64> = Vec::new();
    let mut unexpected = 0u64;
    let mut last_result = started;
    let deadline = Instant::now() + RESULT_TIMEOUT;
    let mut complete_at: Option<Instant> = None;
    loop {
        if stop.is_cancelled() {
            break;
        }
        let now = Instant::now();
        if complete_at.is_some_and(|t| now >= t + DUPLICATE_WATCH) || now >= deadline {
            break;
        }
        match reader.next(Duration::from_millis(200)).await {
            Next::Result(r) => {
                if !expected.contains_key(&r.task_id) {
                    unexpected += 1;
                    continue;
                }
                let n = counts.entry(r.task_id.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    continue;
                }
                *by_status.entry(r.status).or_default() += 1;
                *by_worker.entry(r.worker.clone()).or_default() += 1;
                *by_partition.entry(r.partition).or_default() += 1;
                let created = r.created_ms.unwrap_or(r.started_ms);
                latencies_ms.push(now_ms().saturating_sub(created));
                waits_ms.push(r.started_ms.saturating_sub(created));
                last_result = Instant::now();
                bar.inc(1);
                if counts.len() == expected.len() && complete_at.is_none() {
                    complete_at = Some(Instant::now());
                }
            }
            Next::Invalid(why) => eprintln!("not a result: {why}"),
            Next::CaughtUp | Next::Idle => {}
        }
    }
    bar.finish_and_clear();
    drop(reader);
    drop(publisher);
    let job = if args.job > 0 && !stop.is_cancelled() {
        Some(run_job(&cfg, args.job).await?)
    } else {
        None
    };
    workers.cancel();
    for h in handles {
        match h.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("worker failed: {e}"),
            Err(e) => eprintln!("worker task failed: {e}"),
        }
    }
    drop(broker);

    let elapsed = last_result.duration_since(started).as_secs_f64().max(1e-6);
    let duplicates: u64 = counts
        .values()
        .map(|n| u64::from(n.saturating_sub(1)))
        .sum();
    let missing = expected.len() - counts.len();
    latencies_ms.sort_unstable();
    waits_ms.sort_unstable();
    println!(
        "Sluice dev run: {} workers, {} partitions, embedded broker",
        args.workers, args.partitions
    );
    println!(
        "  published    {} tasks in {:.2}s",
        workload.len(),
        published_in.as_secs_f64()
    );
    let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!(
        "  results      {} ({}); missing {missing}, duplicates {duplicates}",
        counts.len(),
        statuses.join(", ")
    );
    println!(
        "  throughput   {:.0} tasks/s (first publish to last result)",
        counts.len() as f64 / elapsed
    );
    println!(
        "  latency      p50 {} ms, p99 {} ms (task created to result read)",
        percentile(&latencies_ms, 0.50),
        percentile(&latencies_ms, 0.99)
    );
    println!(
        "  queue wait   p50 {} ms, p99 {} ms (task created to handler start)",
        percentile(&waits_ms, 0.50),
        percentile(&waits_ms, 0.99)
    );
    println!(
        "  workers      {}",
        spread(by_worker.iter().map(|(k, v)| (k.clone(), *v)))
    );
    println!(
        "  partitions   {}",
        spread(by_partition.iter().map(|(k, v)| (k.to_string(), *v)))
    );
    let expected_sum = args.job * (args.job + 1) * (2 * args.job + 1) / 6;
    let job_ok = match &job {
        None => true,
        Some(None) => {
            println!("  job          no result within {RESULT_TIMEOUT:?}");
            false
        }
        Some(Some((s, took))) => {
            let out = s.output.as_ref().map_or("-".into(), |v| v.to_string());
            println!(
                "  job          {} ({} sub-tasks, gather {}): {} = {out} in {:.2}s, gathered by {}",
                s.split.as_deref().unwrap_or("-"),
                s.total,
                s.gather.as_deref().unwrap_or("-"),
                s.state,
                took.as_secs_f64(),
                s.gathered_by.as_deref().unwrap_or("-"),
            );
            s.output == Some(json!(expected_sum))
        }
    };
    if unexpected > 0 {
        println!("  (ignored {unexpected} results of tasks this run did not publish)");
    }
    let ok = missing == 0 && duplicates == 0 && job_ok;
    println!(
        "{}",
        match (missing == 0 && duplicates == 0, job_ok) {
            (true, true) if job.is_some() =>
                "OK: every task has exactly one result, and the job's sum is right",
            (true, true) => "OK: every task has exactly one result",
            (true, false) => "FAILED: the job did not give the right sum",
            (false, _) => "FAILED: not every task has exactly one result",
        }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Submits a job squaring 1..=n, gathered by `sum` on a worker, and follows it
/// until its result is on the jobs topic: the status and the time it took, or
/// `None` when it did not finish in time.
async fn run_job(cfg: &Config, n: u64) -> anyhow::Result<Option<(JobStatus, Duration)>> {
    let split: Split = format!("range:1..{n}").parse()?;
    let spec = JobSpec {
        id: None,
        kind: "square".into(),
        split: split.clone(),
        gather: GatherSpec::Sum,
        failure: FailurePolicy::default(),
        sub_tasks: Default::default(),
    };
    let submitter = Submitter::connect(cfg).await?;
    let payloads = split.payloads()?;
    let manifest = submitter.manifest(&spec, payloads.len() as u64)?;
    let mut watch = JobWatch::open(cfg, Some(manifest.job_id.clone()), Start::End).await?;
    let started = Instant::now();
    let bar = progress(n, "job       ");
    submitter
        .submit(&manifest, &spec.sub_tasks, payloads, None, |_| {})
        .await?;
    while started.elapsed() < RESULT_TIMEOUT {
        watch.poll(Duration::from_millis(100)).await;
        if let Some(s) = watch.book().status(&manifest.job_id) {
            bar.set_position(s.succeeded + s.failed);
            if s.finished() {
                bar.finish_and_clear();
                return Ok(Some((s, started.elapsed())));
            }
        }
    }
    bar.finish_and_clear();
    Ok(None)
}

/// Waits until the group has settled: every partition assigned and, when there
/// are enough partitions, every worker holding some, so the demo shows the load
/// spread rather than the first worker's head start.
async fn wait_for_balance(counters: &[Arc<Counters>], partitions: usize) {
    let started = Instant::now();
    while started.elapsed() < BALANCE_TIMEOUT {
        let held: Vec<usize> = counters.iter().map(|c| c.assigned()).collect();
        let everyone = held.iter().all(|n| *n > 0) || counters.len() > partitions;
        if everyone && held.iter().sum::<usize>() == partitions {
            eprintln!(
                "group balanced in {:.1}s: partitions per worker {held:?}",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held: Vec<usize> = counters.iter().map(|c| c.assigned()).collect();
    eprintln!(
        "group did not balance within {BALANCE_TIMEOUT:?} (partitions per worker {held:?}); publishing anyway"
    );
}

/// A mixed, deterministic workload: ordered echo tasks per customer key, short
/// sleeps, CPU work, squares, and a few tasks that fail on purpose.
fn demo_workload(n: usize) -> Vec<(Outgoing, &'static str)> {
    (0..n)
        .map(|i| {
            let (kind, payload, key) = match i % 10 {
                0..=3 => (
                    "echo",
                    json!({"n": i}),
                    Some(format!("customer-{}", i % 50)),
                ),
                4 | 5 => ("sleep", json!({"ms": 1 + i % 20}), None),
                6 | 7 => ("cpu", json!({"iterations": 20_000 + (i % 7) * 5_000}), None),
                8 => ("square", json!(i), None),
                _ if i % 100 == 9 => ("fail", json!({"permanent": true}), None),
                _ => ("noop", json!(null), None),
            };
            (Outgoing::new(Task::new(kind, payload), key), kind)
        })
        .collect()
}

fn progress(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!("{label} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn spread(items: impl Iterator<Item = (String, u64)>) -> String {
    items
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn demo_workload_mixes_kinds_with_unique_ids() {
        let w = demo_workload(200);
        let ids: std::collections::HashSet<&str> = w.iter().map(|(o, _)| o.id()).collect();
        assert_eq!(ids.len(), 200);
        for kind in ["echo", "sleep", "cpu", "square", "fail", "noop"] {
            assert!(w.iter().any(|(_, k)| *k == kind), "{kind}");
        }
    }
}
