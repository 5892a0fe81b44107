//! `sluice bench`: the whole pipeline (publish tasks, workers run them, results,
//! commits) measured against a raw librdkafka pipe in the same run.
//!
//! Parts: `options` (workload and client profile), `load` (the producer and the
//! observer both pipelines share), `pipeline` (Sluice workers in this process),
//! `baseline` (the raw pipe), `scenarios`, `scheduling` (the scheduling
//! strategies against their baselines), `report`. docs/BENCHMARKS.md explains
//! the method and keeps the figures.

mod baseline;
mod load;
mod options;
mod pipeline;
mod report;
mod scenarios;
mod scheduling;

use crate::cli::{BenchArgs, ScenarioArg};
use report::{Machine, Report, Settings};
use scenarios::Bench;
use sluice_common::task::now_ms;
use sluice_common::{Config, EmbeddedBroker};
use std::net::SocketAddr;
use std::process::ExitCode;

pub async fn run(args: BenchArgs, mut cfg: Config) -> anyhow::Result<ExitCode> {
    options::prepare(&args, &mut cfg)?;
    let work = options::Work::from_args(&args);
    let broker = if args.external_brokers {
        None
    } else {
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let b = EmbeddedBroker::start(any_port, &[], args.partitions)?;
        cfg.kafka.brokers = b.bootstrap();
        Some(b)
    };
    let machine = Machine::here(match &broker {
        Some(_) => "embedded".into(),
        None => cfg.kafka.brokers.clone(),
    });
    let settings = Settings {
        profile: args.profile.into(),
        work,
        tasks: args.tasks,
        payload_bytes: args.payload_bytes,
        partitions: args.partitions,
        workers: args.workers,
        concurrency: args.concurrency,
        scale_concurrency: args.scale_concurrency,
        offered_rate: args.rate,
        seconds: args.seconds,
        linger_ms: cfg.producer.linger_ms,
        fetch_wait_max_ms: cfg.kafka.fetch_wait_max_ms,
    };
    let scheduling_cfg = cfg.clone();
    let bench = Bench::new(
        cfg,
        broker.as_ref(),
        format!("bench-{}", now_ms()),
        args.partitions,
        args.payload_bytes,
    );
    let mut report = Report {
        machine,
        settings,
        saturation: None,
        latency: Vec::new(),
        scale_out: Vec::new(),
        add_worker: None,
        scheduling: None,
        lost: 0,
        duplicates: 0,
    };
    for scenario in &args.scenarios {
        match scenario {
            ScenarioArg::Saturation => {
                report.saturation = Some(
                    bench
                        .saturation(args.tasks, args.rate, work, args.workers, args.concurrency)
                        .await?,
                )
            }
            ScenarioArg::Latency => {
                let saturated = match &report.saturation {
                    Some(s) if args.rate.is_none() => s.sluice.tasks_per_s,
                    _ => {
                        let s = bench
                            .saturation(args.tasks, None, work, args.workers, args.concurrency)
                            .await?;
                        let t = s.sluice.tasks_per_s;
                        report.saturation.get_or_insert(s);
                        t
                    }
                };
                report.latency = bench
                    .latency(
                        saturated,
                        args.seconds,
                        work,
                        args.workers,
                        args.concurrency,
                    )
                    .await?;
            }
            ScenarioArg::ScaleOut => {
                report.scale_out = bench
                    .scale_out(args.task_ms.max(1), args.scale_concurrency, args.seconds)
                    .await?
            }
            ScenarioArg::Scheduling => {
                report.scheduling =
                    Some(scheduling::run(&scheduling_cfg, &format!("{}-sched", bench.run)).await?)
            }
            ScenarioArg::AddWorker => {
                report.add_worker = Some(
                    bench
                        .add_worker(args.task_ms.max(1), args.scale_concurrency, args.seconds)
                        .await?,
                )
            }
        }
    }
    let mut sluice_runs: Vec<&report::Figures> = Vec::new();
    sluice_runs.extend(report.saturation.iter().map(|c| &c.sluice));
    sluice_runs.extend(report.latency.iter().map(|l| &l.compared.sluice));
    sluice_runs.extend(report.scale_out.iter().map(|s| &s.sluice));
    sluice_runs.extend(report.add_worker.iter().map(|a| &a.sluice));
    report.lost = sluice_runs.iter().map(|f| f.lost).sum();
    report.duplicates = sluice_runs.iter().map(|f| f.duplicates).sum();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    drop(broker);
    Ok(if report.lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
