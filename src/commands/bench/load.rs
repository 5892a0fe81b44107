//! The load both pipelines get and how their results are watched: one producer
//! thread publishes tasks (open loop at a fixed rate, or as fast as it can), one
//! observer thread reads the result topic and notes when each task's first
//! result arrived. The same code drives Sluice and the baseline, so the figures
//! differ only by what sits between the two topics.

use super::options::Work;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sluice_common::kafka::{self, QuietContext};
use sluice_common::Config;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Warm-up tasks per partition, answered before the measured load starts.
const WARM_UP_PER_PARTITION: usize = 4;
/// How long to keep reading after the last expected result, to catch duplicates.
const DUPLICATE_WATCH: Duration = Duration::from_millis(500);
/// How long without a new result, after publishing ended, before the missing
/// tasks count as lost.
const IDLE_LIMIT: Duration = Duration::from_secs(20);

/// Where tasks go and results come from.
#[derive(Debug, Clone)]
pub struct Topics {
    pub tasks: String,
    pub results: String,
    pub partitions: i32,
}

/// What to publish.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub tasks: usize,
    /// Offered tasks/s; `None`: as fast as the producer goes.
    pub rate: Option<f64>,
    pub work: Work,
    pub payload_bytes: usize,
}

/// What the observer saw of one load.
#[derive(Debug)]
pub struct Observed {
    /// Tasks acknowledged by Kafka.
    pub published: usize,
    /// Tasks Kafka did not take (none expected).
    pub publish_failed: usize,
    /// When each task was created (its scheduled time under an offered rate).
    pub created: Vec<Instant>,
    /// When each task's first result arrived.
    pub arrived: Vec<Option<Instant>>,
    /// Results beyond the first, over all tasks.
    pub duplicates: usize,
    /// Process CPU time from the first send to the last result.
    pub cpu: Duration,
    pub started: Instant,
    pub finished: Instant,
}

impl Observed {
    /// Published tasks without a result.
    pub fn lost(&self) -> usize {
        self.arrived.iter().filter(|a| a.is_none()).count() - self.publish_failed
    }

    /// Creation-to-result time of every task that has a result.
    pub fn latencies(&self) -> Vec<Duration> {
        self.created
            .iter()
            .zip(&self.arrived)
            .filter_map(|(c, a)| a.map(|a| a.saturating_duration_since(*c)))
            .collect()
    }

    /// Tasks with a result per second, first send to last result.
    pub fn throughput(&self) -> f64 {
        let done = self.arrived.iter().filter(|a| a.is_some()).count();
        done as f64 / (self.finished - self.started).as_secs_f64().max(1e-9)
    }
}

/// CPU time (user + system) of this whole process so far.
#[allow(unsafe_code)]
pub fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is pointed to and reports failure by
    // its return value; the struct was zeroed, so it is initialised either way.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Publishes `load` to `topics.tasks` and watches `topics.results` until every
/// task has a result (or none arrived for a while). Blocking: call it off the
/// async threads. Task ids are `<run>-<n>`; results are matched by their key.
pub fn drive(cfg: &Config, topics: &Topics, load: &Load, run: &str) -> anyhow::Result<Observed> {
    let observer = Observer::open(cfg, topics, run, load.tasks)?;
    let published_all = observer.published_all.clone();
    let expected = observer.expected.clone();
    let warmed = observer.warmed.clone();
    let watching = std::thread::Builder::new()
        .name("bench-observer".into())
        .spawn(move || observer.watch())?;

    let failed = Arc::new(AtomicUsize::new(0));
    let producer: BaseProducer<Deliveries> = kafka::producer_config(cfg, "sluice-bench-load")
        .create_with_context(Deliveries(failed.clone()))?;
    let (mut id, mut value) = (String::new(), Vec::new());
    // Warm-up: a fresh consumer's first fetches (offset lookups, fetch start)
    // take hundreds of milliseconds that are not the pipeline's steady state.
    let warm_up = WARM_UP_PER_PARTITION * topics.partitions as usize;
    let template = load.work.template(&format!("{run}-w"), load.payload_bytes);
    for i in 0..warm_up {
        id.clear();
        let _ = write!(id, "{run}-w{i}");
        template.fill(i, &mut value);
        let record = BaseRecord::to(&topics.tasks)
            .key(id.as_bytes())
            .payload(&value)
            .partition(i as i32 % topics.partitions);
        producer
            .send(record)
            .map_err(|(e, _)| anyhow::anyhow!("cannot enqueue a warm-up task: {e}"))?;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("warm-up tasks not delivered: {e}"))?;
    let waiting = Instant::now();
    while warmed.load(Ordering::SeqCst) < warm_up {
        anyhow::ensure!(
            waiting.elapsed() < IDLE_LIMIT,
            "the pipeline answered {} of {warm_up} warm-up tasks within {IDLE_LIMIT:?}",
            warmed.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let template = load.work.template(&format!("{run}-"), load.payload_bytes);
    let mut created = Vec::with_capacity(load.tasks);
    let started = Instant::now();
    let cpu_before = process_cpu();
    for i in 0..load.tasks {
        let at = match load.rate {
            Some(rate) => {
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                // Sleeping costs ~60 µs of overshoot: only when well ahead.
                let now = Instant::now();
                if at > now + Duration::from_micros(200) {
                    std::thread::sleep(at - now);
                }
                at
            }
            None => Instant::now(),
        };
        created.push(at);
        id.clear();
        let _ = write!(id, "{run}-{i}");
        template.fill(i, &mut value);
        let mut record = BaseRecord::to(&topics.tasks)
            .key(id.as_bytes())
            .payload(&value)
            .partition(i as i32 % topics.partitions);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => anyhow::bail!("cannot enqueue task {i}: {e}"),
            }
        }
        if i % 64 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("tasks not delivered within 60 s: {e}"))?;
    let failed = failed.load(Ordering::SeqCst);
    expected.store(load.tasks - failed, Ordering::SeqCst);
    published_all.store(true, Ordering::SeqCst);
    let seen = watching
        .join()
        .map_err(|_| anyhow::anyhow!("the observer thread panicked"))??;
    Ok(Observed {
        published: load.tasks - failed,
        publish_failed: failed,
        created,
        arrived: seen.arrived,
        duplicates: seen.duplicates,
        cpu: seen.cpu_at_last.saturating_sub(cpu_before),
        started,
        finished: seen.last.unwrap_or(started),
    })
}

/// Counts tasks Kafka refused.
struct Deliveries(Arc<AtomicUsize>);

impl ClientContext for Deliveries {}
impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "bench task not delivered");
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct Observer {
    consumer: BaseConsumer<QuietContext>,
    prefix: String,
    tasks: usize,
    published_all: Arc<AtomicBool>,
    expected: Arc<AtomicUsize>,
    /// Results of warm-up tasks seen.
    warmed: Arc<AtomicUsize>,
}

struct Seen {
    arrived: Vec<Option<Instant>>,
    duplicates: usize,
    last: Option<Instant>,
    cpu_at_last: Duration,
}

impl Observer {
    fn open(cfg: &Config, topics: &Topics, run: &str, tasks: usize) -> anyhow::Result<Observer> {
        // The observer is not under test: it asks for records as soon as they are
        // there in every profile (the embedded broker holds a fetch its full wait).
        let mut c = cfg.clone();
        c.kafka.fetch_wait_max_ms = 1;
        let consumer: BaseConsumer<QuietContext> =
            kafka::reader_config(&c, "sluice-bench-observer").create_with_context(QuietContext)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..topics.partitions {
            tpl.add_partition_offset(&topics.results, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Observer {
            consumer,
            prefix: format!("{run}-"),
            tasks,
            published_all: Arc::new(AtomicBool::new(false)),
            expected: Arc::new(AtomicUsize::new(tasks)),
            warmed: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn watch(self) -> anyhow::Result<Seen> {
        let mut arrived: Vec<Option<Instant>> = vec![None; self.tasks];
        let (mut distinct, mut duplicates) = (0usize, 0usize);
        let mut last = None;
        let mut last_news = Instant::now();
        let mut complete_at: Option<Instant> = None;
        let mut published_seen: Option<Instant> = None;
        let mut cpu_at_last = process_cpu();
        loop {
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => {
                    let number = m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .and_then(|k| k.strip_prefix(&self.prefix));
                    if number.is_some_and(|n| n.starts_with('w')) {
                        self.warmed.fetch_add(1, Ordering::SeqCst);
                    }
                    let index = number
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| *n < self.tasks);
                    if let Some(i) = index {
                        let now = Instant::now();
                        last_news = now;
                        if arrived[i].is_some() {
                            duplicates += 1;
                        } else {
                            arrived[i] = Some(now);
                            distinct += 1;
                            last = Some(now);
                            if distinct == self.tasks {
                                cpu_at_last = process_cpu();
                            }
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => tracing::warn!(error = %e, "bench observer"),
            }
            let now = Instant::now();
            let all_published = self.published_all.load(Ordering::SeqCst);
            if all_published && published_seen.is_none() {
                published_seen = Some(now);
            }
            let quiet = now - last_news.max(published_seen.unwrap_or(now));
            if all_published && complete_at.is_none() {
                if distinct >= self.expected.load(Ordering::SeqCst) {
                    complete_at = Some(now);
                    if distinct < self.tasks {
                        cpu_at_last = process_cpu();
                    }
                } else if quiet > IDLE_LIMIT {
                    tracing::error!(
                        missing = self.tasks - distinct,
                        "no result for {IDLE_LIMIT:?}; counting the rest as lost"
                    );
                    cpu_at_last = process_cpu();
                    break;
                }
            }
            if complete_at.is_some_and(|t| now - t >= DUPLICATE_WATCH) {
                break;
            }
        }
        Ok(Seen {
            arrived,
            duplicates,
            last,
            cpu_at_last,
        })
    }
}
