//! `sluice job`: submit a job and follow it, show one job, list all jobs.
//!
//! Everything shown is read from Kafka (the jobs topic and the results topic), so
//! `status` and `list` give the same answer on any machine at any later time as
//! `submit --wait` gave when the job ended.

use crate::cli::{JobCommand, JobListArgs, JobStatusArgs, JobSubmitArgs};
use indicatif::{ProgressBar, ProgressStyle};
use sluice_common::job::FailurePolicy;
use sluice_common::task::now_ms;
use sluice_common::Config;
use sluice_producer::job::{JobSpec, JobStatus, JobWatch, SubTasks, Submitter};
use sluice_producer::Start;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long reading a topic may see nothing before it counts as read.
const IDLE: Duration = Duration::from_secs(5);
/// How often `--wait` refreshes.
const POLL: Duration = Duration::from_millis(200);
/// How long `--wait` lets a job with every sub-task ended go without a result
/// before saying what may be wrong.
const NO_RESULT_HINT: Duration = Duration::from_secs(10);

pub async fn run(command: JobCommand, cfg: Config) -> anyhow::Result<ExitCode> {
    match command {
        JobCommand::Submit(a) => submit(*a, cfg).await,
        JobCommand::Status(a) => status(a, cfg).await,
        JobCommand::List(a) => list(a, cfg).await,
    }
}

async fn submit(args: JobSubmitArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let payloads = args.split.payloads()?;
    let spec = JobSpec {
        id: args.id.clone(),
        kind: args.kind.clone(),
        split: args.split.clone(),
        gather: args.gather.clone(),
        failure: FailurePolicy {
            tolerate: args.tolerate,
            fail_fast: args.fail_fast,
        },
        sub_tasks: SubTasks {
            priority: args.priority,
            expected_ms: args.expected_ms,
            resources: args.resources.clone(),
        },
    };
    let trace = args.traceparent;
    let submitter = Submitter::connect(&cfg).await?;
    let manifest = submitter.manifest(&spec, payloads.len() as u64)?;
    let id = manifest.job_id.clone();
    // Opened before publishing, so nothing the job produces is missed.
    let mut watch = match args.wait {
        true => Some(JobWatch::open(&cfg, Some(id.clone()), Start::End).await?),
        false => None,
    };
    let publishing = bar(manifest.total, "publishing");
    submitter
        .submit(&manifest, &spec.sub_tasks, payloads, trace, |n| {
            publishing.inc(n)
        })
        .await?;
    publishing.finish_and_clear();
    submitter.flush(Duration::from_secs(10));
    eprintln!(
        "job {id}: {} sub-tasks of `{}` published to {} ({}, gather {})",
        manifest.total, manifest.kind, manifest.task_topic, manifest.split, manifest.gather
    );
    let Some(watch) = watch.as_mut() else {
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    };
    let Some(last) = follow(watch, &id, manifest.total, args.timeout_ms).await else {
        return Ok(ExitCode::FAILURE);
    };
    if args.json {
        println!("{}", serde_json::to_string(&last)?);
    } else {
        eprint!("{}", summary(&last));
        if let Some(out) = &last.output {
            println!("{out}");
        }
    }
    Ok(exit_code(&last))
}

async fn status(args: JobStatusArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let mut watch = JobWatch::open(&cfg, Some(args.id.clone()), Start::Beginning).await?;
    watch.read_to_end(IDLE).await;
    let Some(mut s) = watch.book().status(&args.id) else {
        eprintln!(
            "sluice job: no job `{}` on {} (nor results of its sub-tasks on {})",
            args.id, cfg.topics.jobs, cfg.topics.results
        );
        return Ok(ExitCode::FAILURE);
    };
    if args.wait && !s.finished() {
        match follow(&mut watch, &args.id, s.total, args.timeout_ms).await {
            Some(last) => s = last,
            None => return Ok(ExitCode::FAILURE),
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print!("{}", summary(&s));
        if let Some(out) = &s.output {
            println!("output: {out}");
        }
    }
    Ok(if args.wait {
        exit_code(&s)
    } else {
        ExitCode::SUCCESS
    })
}

/// Shows progress of job `id` until it has a result (`None`, with a message,
/// when `timeout_ms` passed first).
async fn follow(
    watch: &mut JobWatch,
    id: &str,
    total: u64,
    timeout_ms: Option<u64>,
) -> Option<JobStatus> {
    let deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let bar = bar(total, "running");
    // When every sub-task has ended but no job result follows, say what may be wrong.
    let mut all_ended: Option<Instant> = None;
    let mut hinted = false;
    loop {
        watch.poll(POLL).await;
        let Some(s) = watch.book().status(id) else {
            continue;
        };
        bar.set_position(s.succeeded + s.failed);
        bar.set_message(format!(
            "done {} failed {} running {}",
            s.succeeded, s.failed, s.running
        ));
        if s.finished() {
            bar.finish_and_clear();
            return Some(s);
        }
        if s.running == 0 {
            let since = *all_ended.get_or_insert_with(Instant::now);
            if since.elapsed() >= NO_RESULT_HINT && !hinted {
                hinted = true;
                bar.suspend(|| {
                    eprintln!(
                        "sluice job: every sub-task has ended but there is no job result after {}s: a chord callback may still run, or no worker of the group runs the gatherer (worker.gatherer)",
                        NO_RESULT_HINT.as_secs()
                    )
                });
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bar.finish_and_clear();
            eprintln!(
                "sluice job: stopped waiting after {} ms: {} of {} sub-tasks done, {} failed; the job goes on (sluice job status {id})",
                timeout_ms.unwrap_or_default(),
                s.succeeded + s.failed,
                s.total,
                s.failed
            );
            return None;
        }
    }
}

async fn list(args: JobListArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let mut watch = JobWatch::open(&cfg, None, Start::Beginning).await?;
    watch.read_to_end(IDLE).await;
    let jobs = watch.book().list();
    if args.json {
        for s in &jobs {
            println!("{}", serde_json::to_string(s)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<38} {:<12} {:<10} {:>8} {:>8} {:>8} {:>9}  GATHER",
        "JOB", "KIND", "STATE", "TOTAL", "DONE", "FAILED", "AGE"
    );
    for s in &jobs {
        let age = s.submitted_ms.map_or("-".into(), |t| {
            format!("{:.0}s", now_ms().saturating_sub(t) as f64 / 1000.0)
        });
        println!(
            "{:<38} {:<12} {:<10} {:>8} {:>8} {:>8} {:>9}  {}",
            s.job_id,
            s.kind,
            s.state,
            s.total,
            s.succeeded + s.failed,
            s.failed,
            age,
            s.gather.as_deref().unwrap_or("-")
        );
    }
    if jobs.is_empty() {
        eprintln!("no jobs on {}", cfg.topics.jobs);
    }
    Ok(ExitCode::SUCCESS)
}

/// 0 for a job that succeeded, 1 otherwise.
fn exit_code(s: &JobStatus) -> ExitCode {
    if s.state == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A few lines a person reads: state, counts, failures, error.
fn summary(s: &JobStatus) -> String {
    let mut out = format!(
        "job {} {}: {} sub-tasks of `{}`",
        s.job_id, s.state, s.total, s.kind
    );
    if let (Some(split), Some(gather)) = (&s.split, &s.gather) {
        out += &format!(" ({split}, gather {gather})");
    }
    out += &format!("; {} succeeded, {} failed", s.succeeded, s.failed);
    if s.running > 0 {
        out += &format!(", {} queued or running", s.running);
    }
    if let (Some(a), Some(b)) = (s.submitted_ms, s.finished_ms) {
        out += &format!(", in {:.2}s", b.saturating_sub(a) as f64 / 1000.0);
    }
    if let Some(w) = &s.gathered_by {
        out += &format!(", gathered by {w}");
    }
    out.push('\n');
    for f in &s.failures {
        out += &format!(
            "  sub-task {} ({}) {}: {}\n",
            f.index, f.task_id, f.status, f.error
        );
    }
    if (s.failures.len() as u64) < s.failed {
        out += &format!(
            "  … and {} more failed sub-tasks\n",
            s.failed - s.failures.len() as u64
        );
    }
    if let Some(e) = &s.error {
        out += &format!("  error: {e}\n");
    }
    out
}

fn bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {label} [{{bar:30}}] {{pos}}/{{len}} {{msg}} {{per_sec}} eta {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
