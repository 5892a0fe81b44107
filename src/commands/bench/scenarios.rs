//! The four scenarios. Every run gets its own topics and group, so runs never
//! see each other's records or offsets.

use super::baseline::Pipe;
use super::load::{drive, Load, Observed, Topics};
use super::options::Work;
use super::pipeline::Workers;
use super::report::{AddWorker, Compared, Figures, Level, ScaleStep};
use sluice_common::{kafka, Config, EmbeddedBroker, TopicSpec};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::{Duration, Instant};

/// Load levels of the latency scenario, in percent of saturation.
const LATENCY_LEVELS: [u32; 3] = [10, 50, 80];
/// The scale-out scenario's offered rate, over its measured bound.
const OFFERED_OVER_BOUND: f64 = 1.5;
/// Worker counts of the scale-out scenario.
const SCALE_STEPS: [usize; 3] = [1, 2, 4];
/// Timeline window of the add-worker scenario.
const WINDOW: Duration = Duration::from_millis(250);

/// What every scenario shares.
pub struct Bench<'a> {
    pub cfg: Config,
    /// The embedded broker, which creates each run's topics: it auto-creates
    /// topics with 4 partitions whatever `--partitions` says.
    broker: Option<&'a EmbeddedBroker>,
    pub run: String,
    pub partitions: i32,
    pub payload_bytes: usize,
    runs: AtomicUsize,
}

impl<'a> Bench<'a> {
    pub fn new(
        cfg: Config,
        broker: Option<&'a EmbeddedBroker>,
        run: String,
        partitions: i32,
        payload_bytes: usize,
    ) -> Bench<'a> {
        Bench {
            cfg,
            broker,
            run,
            partitions,
            payload_bytes,
            runs: AtomicUsize::new(0),
        }
    }

    /// Fresh topics and a fresh group for one run.
    async fn fresh(&self, name: &str) -> anyhow::Result<(Config, Topics)> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let base = format!("{}-{n}-{name}", self.run);
        let mut cfg = self.cfg.clone();
        cfg.topics.tasks = format!("{base}-tasks");
        cfg.topics.results = format!("{base}-results");
        cfg.topics.partitions = self.partitions;
        cfg.worker.group = format!("{base}-group");
        let names = [
            cfg.topics.tasks.clone(),
            cfg.topics.results.clone(),
            cfg.topics.retry_topic(),
            cfg.topics.dead_letter_topic(),
        ];
        if let Some(broker) = self.broker {
            for name in &names {
                broker.create_topic(TopicSpec {
                    name: name.clone(),
                    partitions: self.partitions,
                })?;
            }
        }
        kafka::ensure_topics(&cfg, &names.each_ref().map(String::as_str)).await?;
        let topics = Topics {
            tasks: cfg.topics.tasks.clone(),
            results: cfg.topics.results.clone(),
            partitions: self.partitions,
        };
        Ok((cfg, topics))
    }

    fn load(&self, tasks: usize, rate: Option<f64>, work: Work) -> Load {
        Load {
            tasks,
            rate,
            work,
            payload_bytes: self.payload_bytes,
        }
    }

    /// Drives `load` through `workers` Sluice workers.
    async fn sluice(
        &self,
        name: &str,
        load: Load,
        workers: usize,
        concurrency: usize,
    ) -> anyhow::Result<(Observed, Vec<u64>)> {
        let (cfg, topics) = self.fresh(name).await?;
        let w = Workers::start(&cfg, workers, concurrency);
        w.balanced(2 * self.partitions as usize).await?;
        let run = format!("{}-s", topics.tasks);
        let observed =
            tokio::task::spawn_blocking(move || drive(&cfg, &topics, &load, &run)).await??;
        let per_worker = w.counters.iter().map(|c| c.total_finished()).collect();
        w.stop().await?;
        Ok((observed, per_worker))
    }

    /// Drives `load` through the baseline pipe.
    async fn baseline(&self, name: &str, load: Load) -> anyhow::Result<Observed> {
        let (cfg, topics) = self.fresh(name).await?;
        tokio::task::spawn_blocking(move || {
            let pipe = Pipe::start(&cfg, &topics, &cfg.worker.group)?;
            let run = format!("{}-b", topics.tasks);
            let observed = drive(&cfg, &topics, &load, &run);
            pipe.stop()?;
            observed
        })
        .await?
    }

    /// Sluice and the baseline on the same load, the baseline first.
    async fn compare(
        &self,
        name: &str,
        load: Load,
        workers: usize,
        concurrency: usize,
    ) -> anyhow::Result<Compared> {
        let base = self.baseline(name, load).await?;
        let (sluice, _) = self.sluice(name, load, workers, concurrency).await?;
        Ok(Compared::new(
            load.rate,
            Figures::of(&sluice),
            Figures::of(&base),
        ))
    }

    /// As many tasks as fast as possible.
    pub async fn saturation(
        &self,
        tasks: usize,
        rate: Option<f64>,
        work: Work,
        workers: usize,
        concurrency: usize,
    ) -> anyhow::Result<Compared> {
        eprintln!("saturation: {tasks} tasks");
        self.compare(
            "saturation",
            self.load(tasks, rate, work),
            workers,
            concurrency,
        )
        .await
    }

    /// Open-loop latency at fractions of `saturated` tasks/s.
    pub async fn latency(
        &self,
        saturated: f64,
        seconds: f64,
        work: Work,
        workers: usize,
        concurrency: usize,
    ) -> anyhow::Result<Vec<Level>> {
        let mut levels = Vec::new();
        for percent in LATENCY_LEVELS {
            let rate = saturated * f64::from(percent) / 100.0;
            let tasks = ((rate * seconds) as usize).max(100);
            eprintln!("latency: {percent}% = {rate:.0} tasks/s, {tasks} tasks");
            let compared = self
                .compare(
                    &format!("latency{percent}"),
                    self.load(tasks, Some(rate), work),
                    workers,
                    concurrency,
                )
                .await?;
            levels.push(Level { percent, compared });
        }
        Ok(levels)
    }

    /// 1, 2, 4 workers on sleep tasks, each run sized to take about `seconds`
    /// at the bound. Offered at half as much again as the measured bound, not
    /// all at once: enough to keep every slot busy, while the backlog stays
    /// small. Published all at once, four workers' 128k tasks outgrew what the
    /// embedded broker keeps per partition (5 MiB), and it evicted thousands
    /// of them before they were read (seen: 8,483 and 9,428 lost; the workers
    /// logged the skipped offsets).
    pub async fn scale_out(
        &self,
        task_ms: u64,
        concurrency: usize,
        seconds: f64,
    ) -> anyhow::Result<Vec<ScaleStep>> {
        let slept = measured_sleep(task_ms, concurrency).await;
        let mut steps = Vec::new();
        for workers in SCALE_STEPS {
            let bound = (workers * concurrency) as f64 * 1000.0 / task_ms as f64;
            let timer_bound = (workers * concurrency) as f64 / slept.as_secs_f64();
            let tasks = ((bound * seconds) as usize).max(100);
            eprintln!("scale-out: {workers} worker(s), {tasks} tasks of {task_ms} ms");
            let rate = OFFERED_OVER_BOUND * timer_bound;
            let load = self.load(tasks, Some(rate), Work::Sleep { ms: task_ms });
            let (observed, per_worker) = self
                .sluice(&format!("scale{workers}"), load, workers, concurrency)
                .await?;
            let sluice = Figures::of(&observed);
            steps.push(ScaleStep {
                workers,
                concurrency,
                task_ms,
                bound_tasks_per_s: bound,
                of_bound: sluice.tasks_per_s / bound,
                measured_task_ms: slept.as_secs_f64() * 1e3,
                measured_bound_tasks_per_s: timer_bound,
                of_measured_bound: sluice.tasks_per_s / timer_bound,
                sluice,
                per_worker,
            });
        }
        Ok(steps)
    }

    /// One worker under more sleep-task load than it can take; a second joins a
    /// third of the way in.
    pub async fn add_worker(
        &self,
        task_ms: u64,
        concurrency: usize,
        seconds: f64,
    ) -> anyhow::Result<AddWorker> {
        let one = concurrency as f64 * 1000.0 / task_ms as f64;
        // More than one worker can run, less than two can.
        let rate = 1.3 * one;
        let total = 2.0 * seconds;
        let tasks = (rate * total) as usize;
        eprintln!(
            "add-worker: {rate:.0} tasks/s for {total:.0} s, second worker after {:.1} s",
            total / 3.0
        );
        let (cfg, topics) = self.fresh("addworker").await?;
        let mut w = Workers::start(&cfg, 1, concurrency);
        w.balanced(2 * self.partitions as usize).await?;
        let load = self.load(tasks, Some(rate), Work::Sleep { ms: task_ms });
        let run = format!("{}-s", topics.tasks);
        let started = Instant::now();
        let driving = tokio::task::spawn_blocking(move || drive(&cfg, &topics, &load, &run));
        tokio::time::sleep(Duration::from_secs_f64(total / 3.0)).await;
        let added_at = started.elapsed();
        let joined = Instant::now();
        let second = w.add();
        let mut first_task = None;
        while !driving.is_finished() {
            if first_task.is_none() && second.total_finished() > 0 {
                first_task = Some(joined.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let observed = driving.await??;
        let per_worker = w.counters.iter().map(|c| c.total_finished()).collect();
        w.stop().await?;
        let timeline = timeline(&observed, rate);
        Ok(AddWorker {
            offered_rate: rate,
            concurrency,
            task_ms,
            sluice: Figures::of(&observed),
            added_at_s: added_at.as_secs_f64(),
            time_to_first_task_ms: first_task.map(|d| d.as_secs_f64() * 1e3),
            window_ms: WINDOW.as_millis() as u64,
            min_window_tasks_per_s: timeline.iter().copied().fold(f64::INFINITY, f64::min),
            timeline_tasks_per_s: timeline,
            per_worker,
        })
    }
}

/// How long a `sleep` task of `ms` really sleeps here: tokio's timer has
/// millisecond ticks and rounds a deadline up to the next one, so a 1 ms sleep
/// lasts up to 2 ms. Measured with `concurrency` sleepers at once, as a worker
/// runs them.
async fn measured_sleep(ms: u64, concurrency: usize) -> Duration {
    const ROUNDS: u32 = 50;
    let started = Instant::now();
    let sleepers: Vec<_> = (0..concurrency)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            })
        })
        .collect();
    for s in sleepers {
        let _ = s.await;
    }
    started.elapsed() / ROUNDS
}

/// Results per second in each window from the first result until the last task
/// was due to be published: after that the load stops, and so may results.
fn timeline(o: &Observed, rate: f64) -> Vec<f64> {
    let Some(first) = o.arrived.iter().flatten().min().copied() else {
        return Vec::new();
    };
    let end = o.started + Duration::from_secs_f64(o.created.len() as f64 / rate);
    let windows = ((end.saturating_duration_since(first)).as_secs_f64() / WINDOW.as_secs_f64())
        .floor() as usize;
    let mut counts = vec![0u64; windows];
    for a in o.arrived.iter().flatten() {
        let i = (a.saturating_duration_since(first).as_secs_f64() / WINDOW.as_secs_f64()) as usize;
        if i < windows {
            counts[i] += 1;
        }
    }
    counts
        .into_iter()
        .map(|c| c as f64 / WINDOW.as_secs_f64())
        .collect()
}
