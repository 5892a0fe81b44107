//! Shared setup: a broker per test, workers in-process, publishing, reading back.

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde_json::Value;
use sluice_common::config::GroupProtocol;
use sluice_common::{kafka, Config, EmbeddedBroker, Task, TaskResult, TopicSpec};
use sluice_producer::{Next, Outgoing, Publisher, ResultReader, Start};
use sluice_worker::Registry;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub fn broker(partitions: i32) -> (EmbeddedBroker, Config) {
    let mut cfg = Config::default();
    let topics = [
        TopicSpec {
            name: cfg.topics.tasks.clone(),
            partitions,
        },
        TopicSpec {
            name: cfg.topics.results.clone(),
            partitions,
        },
    ];
    let b = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), &topics, partitions).unwrap();
    cfg.kafka.brokers = b.bootstrap();
    cfg.worker.group_protocol = GroupProtocol::Consumer;
    cfg.worker.commit_interval_ms = 200;
    cfg.worker.shutdown_timeout_ms = 10_000;
    // Many workers run in this one process: each gets a port of its own.
    cfg.metrics.listen = "127.0.0.1:0".into();
    (b, cfg)
}

type Running = (
    CancellationToken,
    tokio::task::JoinHandle<sluice_worker::Summary>,
);

/// A worker running in this process; cancel the token to stop it.
pub fn worker(cfg: &Config, id: &str, registry: Registry) -> Running {
    spawn(cfg, id, registry, Default::default())
}

fn spawn(
    cfg: &Config,
    id: &str,
    registry: Registry,
    live: std::sync::Arc<sluice_worker::Counters>,
) -> Running {
    let mut c = cfg.clone();
    c.worker.id = Some(id.to_string());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move {
        sluice_worker::run_with(c, registry, s, live)
            .await
            .expect("worker runs")
    });
    (stop, h)
}

/// A worker that already holds its partitions, for tests where timing matters.
pub async fn ready_worker(cfg: &Config, id: &str, registry: Registry) -> Running {
    ready_worker_counting(cfg, id, registry).await.0
}

/// [`ready_worker`], with its live counters.
pub async fn ready_worker_counting(
    cfg: &Config,
    id: &str,
    registry: Registry,
) -> (Running, std::sync::Arc<sluice_worker::Counters>) {
    let counters = std::sync::Arc::new(sluice_worker::Counters::default());
    let running = spawn(cfg, id, registry, counters.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while counters.assigned() == 0 {
        assert!(Instant::now() < deadline, "worker got no partitions");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (running, counters)
}

pub async fn publish(cfg: &Config, tasks: &[Outgoing]) {
    let p = Publisher::connect(cfg, &cfg.topics.tasks).await.unwrap();
    let mut pending = Vec::new();
    for t in tasks {
        pending.push(p.send(t, None).await.unwrap());
    }
    for d in pending {
        d.await.unwrap();
    }
}

/// Reads results until `n` distinct task ids arrived, then a little longer to
/// catch duplicates. Returns every record read.
pub async fn results(cfg: &Config, n: usize, timeout: Duration) -> Vec<TaskResult> {
    let mut reader = ResultReader::open(cfg, Start::Beginning).await.unwrap();
    let mut all = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let deadline = Instant::now() + timeout;
    let mut complete: Option<Instant> = None;
    while Instant::now() < deadline
        && complete.is_none_or(|t| t.elapsed() < Duration::from_millis(700))
    {
        if let Next::Result(r) = reader.next(Duration::from_millis(100)).await {
            ids.insert(r.task_id.clone());
            all.push(*r);
            if ids.len() >= n && complete.is_none() {
                complete = Some(Instant::now());
            }
        }
    }
    assert!(
        ids.len() >= n,
        "only {} of {n} results arrived within {timeout:?}",
        ids.len()
    );
    all
}

pub fn by_id(results: &[TaskResult]) -> HashMap<String, Vec<&TaskResult>> {
    let mut m: HashMap<String, Vec<&TaskResult>> = HashMap::new();
    for r in results {
        m.entry(r.task_id.clone()).or_default().push(r);
    }
    m
}

pub fn task(kind: &str, payload: Value, key: Option<&str>) -> Outgoing {
    Outgoing::new(Task::new(kind, payload), key.map(str::to_string))
}

/// Publishes raw record values (what a foreign client might write) to partition 0.
pub async fn publish_raw(cfg: &Config, values: &[Vec<u8>]) {
    let raw: FutureProducer = kafka::producer_config(cfg, "raw").create().unwrap();
    for value in values {
        raw.send(
            FutureRecord::<(), _>::to(&cfg.topics.tasks)
                .payload(value)
                .partition(0),
            Timeout::Never,
        )
        .await
        .unwrap();
    }
    raw.flush(Duration::from_secs(5)).unwrap();
}

/// Submits `spec` (its payloads from its split) and waits for the job result:
/// the job's final status and its manifest.
pub async fn run_job(
    cfg: &Config,
    spec: &sluice_producer::job::JobSpec,
) -> (
    sluice_producer::job::JobStatus,
    sluice_common::job::Manifest,
) {
    use sluice_producer::job::{JobWatch, Submitter};
    let submitter = Submitter::connect(cfg).await.unwrap();
    let payloads = spec.split.payloads().unwrap();
    let manifest = submitter.manifest(spec, payloads.len() as u64).unwrap();
    let id = manifest.job_id.clone();
    let mut watch = JobWatch::open(cfg, Some(id.clone()), Start::End)
        .await
        .unwrap();
    submitter
        .submit(&manifest, &spec.sub_tasks, payloads, None, |_| {})
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "job {id} never ended");
        watch.poll(Duration::from_millis(100)).await;
        if let Some(s) = watch.book().status(&id).filter(|s| s.finished()) {
            return (s, manifest);
        }
    }
}
