//! `sluice produce`: tasks from flags or JSON lines, every delivery confirmed.
//!
//! Input lines are validated one by one; a bad line is reported with its number
//! and the rest are still sent, and the summary says exactly which lines were
//! published, so a retry can resend just the others.

use crate::cli::ProduceArgs;
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use sluice_common::task::now_ms;
use sluice_common::{exporter, Config, Health, Metrics, Task};
use sluice_producer::input::{parse_line, ranges};
use sluice_producer::{Outgoing, PublishError, Publisher};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Above this many tasks, ids are not printed unless asked for.
const PRINT_IDS_UP_TO: u64 = 100;
/// Deliveries awaited at once.
const WINDOW: usize = 20_000;

type Pending = Pin<Box<dyn Future<Output = (usize, String, Result<(), PublishError>)> + Send>>;

struct Batch<'a> {
    publisher: &'a Publisher,
    partition: Option<i32>,
    pending: FuturesUnordered<Pending>,
    sent: Vec<usize>,
    failed: Vec<(usize, String)>,
    print_ids: bool,
    bar: ProgressBar,
}

impl<'a> Batch<'a> {
    fn new(
        publisher: &'a Publisher,
        partition: Option<i32>,
        print_ids: bool,
        len: Option<u64>,
    ) -> Self {
        Batch {
            publisher,
            partition,
            pending: FuturesUnordered::new(),
            sent: vec![],
            failed: vec![],
            print_ids,
            bar: bar(len),
        }
    }

    async fn push(&mut self, line: usize, out: Outgoing) {
        while self.pending.len() >= WINDOW {
            self.settle_one().await;
        }
        let id = out.id().to_string();
        match self.publisher.send(&out, self.partition).await {
            Ok(fut) => self
                .pending
                .push(Box::pin(async move { (line, id, fut.await.map(|_| ())) })),
            Err(e) => self.fail(line, e.to_string()),
        }
    }

    fn fail(&mut self, line: usize, why: String) {
        self.bar.suspend(|| eprintln!("line {line}: {why}"));
        self.failed.push((line, why));
    }

    async fn settle_one(&mut self) {
        if let Some(done) = self.pending.next().await {
            self.settled(done);
        }
    }

    fn settled(&mut self, (line, id, r): (usize, String, Result<(), PublishError>)) {
        match r {
            Ok(()) => {
                self.sent.push(line);
                self.bar.inc(1);
                if self.print_ids {
                    self.bar.suspend(|| crate::output::line(&id));
                }
            }
            Err(e) => self.fail(line, e.to_string()),
        }
    }

    async fn finish(mut self) -> (Vec<usize>, Vec<(usize, String)>) {
        while !self.pending.is_empty() {
            self.settle_one().await;
        }
        self.bar.finish_and_clear();
        (self.sent, self.failed)
    }
}

fn bar(len: Option<u64>) -> ProgressBar {
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} publishing [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub async fn run(args: ProduceArgs, cfg: Config) -> anyhow::Result<ExitCode> {
    let template = match &args.kind {
        Some(kind) => {
            let payload = serde_json::from_str(&args.payload)
                .map_err(|e| anyhow::anyhow!("--payload is not JSON: {e}"))?;
            let mut task = Task::new(kind.clone(), payload);
            task.priority = args.priority;
            task.expected_ms = args.expected_ms;
            task.resources = args.resources.clone();
            Some(task)
        }
        None => None,
    };
    let trace = args.traceparent;
    // Routed: each task goes to its pool and lane topic (docs/SCHEDULING.md).
    let mut publisher = Publisher::routed(&cfg).await?;
    let endpoint_stop = CancellationToken::new();
    let _endpoint_guard = endpoint_stop.clone().drop_guard();
    if args.metrics {
        let metrics = Arc::new(Metrics::new());
        // Built after the publisher connected: ready until the process stops.
        let health = Arc::new(Health::without_poll_thread());
        let url =
            exporter::start(&cfg.metrics, metrics.clone(), health, endpoint_stop.clone()).await?;
        eprintln!("metrics served at {url}");
        publisher = publisher.with_metrics(metrics);
    }
    let started = Instant::now();
    let (sent, failed, from_lines) = match template {
        Some(task) => {
            let print_ids = args.ids || args.count <= PRINT_IDS_UP_TO;
            let mut batch = Batch::new(&publisher, args.partition, print_ids, Some(args.count));
            for i in 0..args.count {
                let mut t = task.clone();
                t.id = match (&args.id, args.count) {
                    (Some(id), 1) => Some(id.clone()),
                    (Some(id), _) => Some(format!("{id}-{i}")),
                    (None, _) => None,
                };
                let mut out = Outgoing::new(t, args.key.clone()).with_trace(trace);
                delay(&mut out, args.delay);
                batch.push(i as usize + 1, out).await;
            }
            let (s, f) = batch.finish().await;
            (s, f, false)
        }
        None => {
            let path = args.file.as_ref().expect("clap requires --kind or --file");
            let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if path.as_os_str() == "-" {
                Box::new(tokio::io::stdin())
            } else {
                Box::new(
                    tokio::fs::File::open(path)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                )
            };
            let mut batch = Batch::new(&publisher, args.partition, args.ids, None);
            let mut lines = BufReader::new(reader).lines();
            let mut n = 0;
            loop {
                // Deliveries are settled while waiting for input too, so a slow
                // stream shows its progress (and its metrics) as it goes.
                let line = tokio::select! {
                    line = lines.next_line() => line?,
                    Some(done) = batch.pending.next(), if !batch.pending.is_empty() => {
                        batch.settled(done);
                        continue;
                    }
                };
                let Some(line) = line else { break };
                n += 1;
                if line.trim().is_empty() {
                    continue;
                }
                match parse_line(&line) {
                    Ok(mut out) => {
                        delay(&mut out, args.delay);
                        batch.push(n, out.with_trace(trace)).await
                    }
                    Err(e) => batch.fail(n, e.to_string()),
                }
            }
            let (s, f) = batch.finish().await;
            (s, f, true)
        }
    };
    publisher.flush(Duration::from_secs(10));
    let secs = started.elapsed().as_secs_f64();
    let rate = sent.len() as f64 / secs.max(1e-6);
    let what = if from_lines { "lines" } else { "copies" };
    if !sent.is_empty() && (from_lines || sent.len() as u64 > PRINT_IDS_UP_TO || !failed.is_empty())
    {
        eprintln!(
            "published {} tasks ({what} {}) to {} in {secs:.2}s ({rate:.0} tasks/s)",
            sent.len(),
            ranges(&sent),
            cfg.topics.tasks
        );
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        let lines: Vec<usize> = failed.iter().map(|(l, _)| *l).collect();
        eprintln!(
            "NOT published: {} ({what} {})",
            failed.len(),
            ranges(&lines)
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `--delay`: no earlier than `delay` ms after the task was made (its
/// `created_ms` is set just before), unless it has its own `not_before_ms`.
fn delay(out: &mut Outgoing, delay: Option<u64>) {
    if let Some(d) = delay {
        out.task.not_before_ms.get_or_insert(now_ms() + d);
    }
}
