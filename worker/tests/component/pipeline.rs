//! The pipeline: every record gets one result, ordering, sharing, shutdown.

use crate::support::*;
use serde_json::{json, Value};
use sluice_common::config::{GroupProtocol, Ordering};
use sluice_common::{Status, TaskResult};
use sluice_producer::{Next, Outgoing, ResultReader, Start};
use sluice_worker::{handler_fn, HandlerError, Registry, TaskContext};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_gets_exactly_one_result_even_when_it_is_not_a_task() {
    let (_b, mut cfg) = broker(3);
    cfg.worker.max_task_bytes = 2_000;

    let good: Vec<Outgoing> = (0..300)
        .map(|i| match i % 3 {
            0 => task("echo", json!({"i": i}), Some(&format!("k{}", i % 7))),
            1 => task("square", json!(i), None),
            _ => task("noop", Value::Null, None),
        })
        .collect();
    let special = vec![
        task("no-such-kind", Value::Null, None),
        task("fail", json!({"permanent": true}), None),
    ];
    publish(&cfg, &good).await;
    publish(&cfg, &special).await;
    // Records no Sluice producer would write: a foreign client's mistakes.
    let big = format!(r#"{{"kind":"echo","payload":"{}"}}"#, "x".repeat(3_000));
    publish_raw(
        &cfg,
        &[
            b"not json at all".to_vec(),
            br#"{"payload":1}"#.to_vec(),
            big.into_bytes(),
        ],
    )
    .await;

    let (stop, h) = worker(&cfg, "w1", sluice_worker::builtin());
    let all = results(&cfg, 305, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();

    let ids = by_id(&all);
    assert_eq!(ids.len(), 305);
    let dups: Vec<_> = ids.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(dups.is_empty(), "duplicates: {dups:?}");
    for t in &good {
        let r = ids[t.id()][0];
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        assert_eq!(r.worker, "w1");
        if t.task.kind == "square" {
            let n = t.task.payload.as_i64().unwrap();
            assert_eq!(r.output, Some(json!(n * n)));
        }
        if t.task.kind == "echo" {
            assert_eq!(r.output.as_ref(), Some(&t.task.payload));
        }
    }
    let unknown = ids[special[0].id()][0];
    assert_eq!(unknown.status, Status::DeadLettered);
    assert!(
        unknown
            .error
            .as_ref()
            .unwrap()
            .contains("unknown kind `no-such-kind`"),
        "{unknown:?}"
    );
    let failed = ids[special[1].id()][0];
    assert_eq!(failed.status, Status::DeadLettered);
    assert_eq!(failed.attempts, 1, "a permanent error is not retried");
    let malformed: Vec<&TaskResult> = all.iter().filter(|r| r.kind.is_empty()).collect();
    assert_eq!(malformed.len(), 3, "{malformed:?}");
    for r in &malformed {
        assert_eq!(r.status, Status::DeadLettered);
        assert_eq!(
            r.task_id,
            format!("{}/{}/{}", r.topic, r.partition, r.offset)
        );
    }
    let errors: Vec<&str> = malformed
        .iter()
        .map(|r| r.error.as_deref().unwrap())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("not a task")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("`kind` is missing")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("over the 2000-byte task limit")),
        "{errors:?}"
    );
}

/// Records, per key, the order tasks started in and whether two ever overlapped.
#[derive(Default)]
struct OrderLog {
    running: HashMap<String, u32>,
    started: HashMap<String, Vec<u64>>,
    overlaps: u32,
    max_parallel: usize,
}

/// Runs `tasks` of kind `step` on one worker and returns what the log saw.
async fn run_logged(cfg: &sluice_common::Config, tasks: &[Outgoing]) -> OrderLog {
    publish(cfg, tasks).await;
    let log = Arc::new(Mutex::new(OrderLog::default()));
    let (stop, h) = worker(cfg, "w1", ordered_registry(log.clone()));
    results(cfg, tasks.len(), Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let seen = std::mem::take(&mut *log.lock().unwrap());
    seen
}

fn ordered_registry(log: Arc<Mutex<OrderLog>>) -> Registry {
    let mut r = Registry::new();
    r.register(
        "step",
        handler_fn(move |t: TaskContext| {
            let log = log.clone();
            async move {
                let key = t.key.clone().unwrap_or_default();
                let seq = t.payload["seq"].as_u64().unwrap();
                {
                    let mut l = log.lock().unwrap();
                    let running = l.running.entry(key.clone()).or_default();
                    *running += 1;
                    if *running > 1 {
                        l.overlaps += 1;
                    }
                    l.started.entry(key.clone()).or_default().push(seq);
                    let parallel = l.running.values().filter(|n| **n > 0).count();
                    l.max_parallel = l.max_parallel.max(parallel);
                }
                // Later tasks are quicker, so any reordering would show.
                tokio::time::sleep(Duration::from_millis(8 - (seq % 8))).await;
                *log.lock().unwrap().running.get_mut(&key).unwrap() -= 1;
                Ok::<_, HandlerError>(json!(seq))
            }
        }),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_tasks_run_in_order_while_other_keys_run_in_parallel() {
    let (_b, mut cfg) = broker(2);
    cfg.worker.concurrency = 8;
    cfg.worker.ordering = Ordering::Key;
    let tasks: Vec<Outgoing> = (0..30u64)
        .flat_map(|seq| {
            (0..6).map(move |k| task("step", json!({"seq": seq}), Some(&format!("key-{k}"))))
        })
        .collect();
    let l = run_logged(&cfg, &tasks).await;
    assert_eq!(l.overlaps, 0, "two tasks of one key ran at once");
    for (key, seqs) in &l.started {
        assert_eq!(*seqs, (0..30).collect::<Vec<u64>>(), "order of {key}");
    }
    assert!(l.max_parallel > 1, "different keys never ran in parallel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_key_ordering_the_same_key_overlaps() {
    // The control for the test above: it must be the ordering mode that keeps order.
    let (_b, mut cfg) = broker(1);
    cfg.worker.concurrency = 8;
    cfg.worker.ordering = Ordering::None;
    let tasks: Vec<Outgoing> = (0..40u64)
        .map(|seq| task("step", json!({"seq": seq}), Some("one-key")))
        .collect();
    assert!(run_logged(&cfg, &tasks).await.overlaps > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_partitions() {
    let (_b, mut cfg) = broker(4);
    cfg.worker.concurrency = 4;
    // Both must hold partitions before the work arrives, so neither takes it all.
    let (s1, h1) = ready_worker(&cfg, "w1", sluice_worker::builtin()).await;
    let (s2, h2) = ready_worker(&cfg, "w2", sluice_worker::builtin()).await;
    let tasks: Vec<Outgoing> = (0..400)
        .map(|_| task("sleep", json!({"ms": 5}), None))
        .collect();
    publish(&cfg, &tasks).await;
    let all = results(&cfg, 400, Duration::from_secs(60)).await;
    s1.cancel();
    s2.cancel();
    let (a, b) = (h1.await.unwrap(), h2.await.unwrap());
    let ids = by_id(&all);
    assert_eq!(ids.len(), 400);
    assert!(ids.values().all(|v| v.len() == 1), "duplicates");
    let mut parts: HashMap<&str, std::collections::BTreeSet<i32>> = HashMap::new();
    for r in &all {
        parts
            .entry(r.worker.as_str())
            .or_default()
            .insert(r.partition);
    }
    assert_eq!(parts.len(), 2, "both workers ran tasks: {parts:?}");
    assert!(
        parts["w1"].is_disjoint(&parts["w2"]),
        "a partition was served by both: {parts:?}"
    );
    assert_eq!(
        a.counters.total_finished() + b.counters.total_finished(),
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_commits_so_a_restarted_worker_reprocesses_nothing() {
    let (_b, mut cfg) = broker(3);
    cfg.worker.commit_interval_ms = 60_000; // only the shutdown commit can save us
    let first: Vec<Outgoing> = (0..200).map(|i| task("echo", json!(i), None)).collect();
    publish(&cfg, &first).await;
    let (s1, h1) = worker(&cfg, "first", sluice_worker::builtin());
    results(&cfg, 200, Duration::from_secs(60)).await;
    s1.cancel();
    let a = h1.await.unwrap();
    assert_eq!(a.counters.total_finished(), 200);
    assert_eq!(a.unfinished_at_shutdown, 0);

    let (s2, h2) = worker(&cfg, "second", sluice_worker::builtin());
    let second: Vec<Outgoing> = (0..50).map(|i| task("echo", json!(i), None)).collect();
    publish(&cfg, &second).await;
    let all = results(&cfg, 250, Duration::from_secs(60)).await;
    s2.cancel();
    let b = h2.await.unwrap();
    assert_eq!(
        b.counters.total_finished(),
        50,
        "the restarted worker re-ran committed tasks"
    );
    assert_eq!(all.len(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_buffer_pauses_partitions_and_loses_nothing() {
    let (_b, mut cfg) = broker(2);
    cfg.worker.concurrency = 2;
    cfg.worker.max_buffered_tasks = 4;
    cfg.worker.group_protocol = GroupProtocol::Classic;
    cfg.worker.session_timeout_ms = 6_000;
    let tasks: Vec<Outgoing> = (0..300)
        .map(|i| task("sleep", json!({"ms": i % 3}), Some(&format!("k{}", i % 5))))
        .collect();
    publish(&cfg, &tasks).await;
    let (stop, h) = worker(&cfg, "w1", sluice_worker::builtin());
    let all = results(&cfg, 300, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(all.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_too_large_for_a_result_record_becomes_a_failed_result() {
    let (_b, cfg) = broker(1);
    let mut registry = sluice_worker::builtin();
    registry.register(
        "double",
        handler_fn(|t: TaskContext| async move {
            let s = t.payload.as_str().unwrap_or_default();
            Ok::<_, HandlerError>(json!(format!("{s}{s}")))
        }),
    );
    let big = task("double", json!("z".repeat(600_000)), None);
    let small = task("echo", json!("after"), None);
    publish(&cfg, &[big.clone(), small.clone()]).await;
    let (stop, h) = worker(&cfg, "w1", registry);
    let all = results(&cfg, 2, Duration::from_secs(60)).await;
    stop.cancel();
    let summary = h.await.unwrap();
    let ids = by_id(&all);
    let r = ids[big.id()][0];
    assert_eq!(r.status, Status::Failed);
    assert!(
        r.error.as_ref().unwrap().contains("output dropped"),
        "{r:?}"
    );
    assert_eq!(
        ids[small.id()][0].status,
        Status::Succeeded,
        "the partition kept flowing"
    );
    assert_eq!(summary.counters.finished_with(Status::Failed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_mid_run_with_key_lanes_leaves_nothing_to_repeat() {
    // Keyed lanes start tasks out of offset order; stopping must not abandon an
    // offset below one that ran, or the next worker would repeat the later one.
    let (_b, cfg) = broker(2);
    let mut c = cfg.clone();
    c.worker.concurrency = 4;
    let tasks: Vec<Outgoing> = (0..240)
        .map(|i| {
            task(
                "sleep",
                json!({"ms": 5 + (i * 7) % 11}),
                Some(&format!("key-{}", i % 6)),
            )
        })
        .collect();
    publish(&c, &tasks).await;
    let (s1, h1) = worker(&c, "first", sluice_worker::builtin());
    let mut reader = ResultReader::open(&c, Start::Beginning).await.unwrap();
    let mut seen = 0;
    while seen < 40 {
        if let Next::Result(_) = reader.next(Duration::from_secs(30)).await {
            seen += 1;
        }
    }
    s1.cancel();
    let a = h1.await.unwrap();
    assert!(
        a.counters.total_finished() < 240,
        "the stop came too late to test anything"
    );
    let (s2, h2) = worker(&c, "second", sluice_worker::builtin());
    let all = results(&c, 240, Duration::from_secs(60)).await;
    s2.cancel();
    let b = h2.await.unwrap();
    let ids = by_id(&all);
    let dups: Vec<_> = ids
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(dups.is_empty(), "{} tasks ran twice: {dups:?}", dups.len());
    assert_eq!(
        a.counters.total_finished() + b.counters.total_finished(),
        240
    );
}

/// The `traceparent` header of a record, parsed.
fn traceparent(msg: &rdkafka::message::OwnedMessage) -> Option<sluice_common::TraceContext> {
    use rdkafka::message::{Headers, Message};
    let h = msg
        .headers()?
        .iter()
        .find(|h| h.key == sluice_common::trace::HEADER)?;
    sluice_common::TraceContext::parse(std::str::from_utf8(h.value?).ok()?)
}

/// Reads `topic` from the beginning until it has been idle for a while.
async fn records(cfg: &sluice_common::Config, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    let mut r = sluice_producer::TopicReader::open(cfg, topic, Start::Beginning)
        .await
        .unwrap();
    r.read_to_end(Duration::from_secs(2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_context_flows_from_the_producer_through_retries_to_the_result() {
    use rdkafka::message::Message;
    let (_b, mut cfg) = broker(1);
    cfg.worker.retry.backoff_initial_ms = 50;
    let caller = sluice_common::TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .unwrap();
    // Keyless, so its retry goes through the retry topic; the other starts a trace.
    let continued = task("fail", json!({"times": 1}), None).with_trace(Some(caller));
    let fresh = task("echo", json!(1), None);
    publish(&cfg, &[continued.clone(), fresh.clone()]).await;
    let (stop, h) = ready_worker(&cfg, "w", sluice_worker::builtin()).await;
    results(&cfg, 2, Duration::from_secs(30)).await;
    stop.cancel();
    h.await.unwrap();

    let by_key = |msgs: &[rdkafka::message::OwnedMessage], id: &str| {
        msgs.iter()
            .filter(|m| m.key() == Some(id.as_bytes()))
            .map(|m| traceparent(m).expect("every record carries a traceparent"))
            .collect::<Vec<_>>()
    };
    let tasks = records(&cfg, &cfg.topics.tasks).await;
    let published: HashMap<&[u8], _> = tasks
        .iter()
        .map(|m| {
            (
                m.payload().unwrap(),
                traceparent(m).expect("task traceparent"),
            )
        })
        .collect();
    assert_eq!(published.len(), 2);
    let task_trace = |id: &str| {
        published
            .iter()
            .find(|(v, _)| String::from_utf8_lossy(v).contains(id))
            .map(|(_, t)| *t)
            .unwrap()
    };
    let continued_task = task_trace(continued.id());
    assert_eq!(
        continued_task.trace_id, caller.trace_id,
        "the caller's trace goes on"
    );
    assert_ne!(
        continued_task.parent_id, caller.parent_id,
        "the producer is a new span"
    );

    let results = records(&cfg, &cfg.topics.results).await;
    let retries = records(&cfg, &cfg.topics.retry_topic()).await;
    assert_eq!(retries.len(), 1, "one retry through the retry topic");
    let retry = traceparent(&retries[0]).expect("retry traceparent");
    assert_eq!(retry.trace_id, caller.trace_id);
    let result = by_key(&results, continued.id());
    assert_eq!(result.len(), 1);
    assert_eq!(
        result[0].trace_id, caller.trace_id,
        "the result is in the trace"
    );
    assert_ne!(
        result[0].parent_id, continued_task.parent_id,
        "written by the worker's span"
    );

    let fresh_task = task_trace(fresh.id());
    assert_ne!(
        fresh_task.trace_id, caller.trace_id,
        "without a caller, a new trace"
    );
    assert_eq!(
        by_key(&results, fresh.id())[0].trace_id,
        fresh_task.trace_id
    );
}

/// A producer without idempotence and with `acks=0` never learns offsets; that
/// is what it asked for, so nothing is published twice (an idempotent producer
/// re-sends tasks acknowledged without an offset; see `producer/src/publisher.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offsetless_ack_is_resent_only_by_an_idempotent_producer() {
    let (_b, mut cfg) = broker(1);
    cfg.producer.idempotence = false;
    cfg.kafka
        .librdkafka_options
        .insert("acks".into(), "0".into());
    let tasks: Vec<Outgoing> = (0..5).map(|i| task("noop", json!(i), None)).collect();
    publish(&cfg, &tasks).await;
    let on_topic = records(&cfg, &cfg.topics.tasks).await;
    assert_eq!(on_topic.len(), 5, "published more than once");
}

/// A reader assigned before its client knew the partition leaders parked its
/// first offset query on librdkafka's fixed 500 ms retry timer, so each fresh
/// reader (`sluice dev`, `results`, `job status`) saw its first record half a
/// second late. With the leaders learned first it takes one round trip. Only
/// the wait after opening is timed (opening creates clients, which a loaded
/// machine can make slow), and the quickest of three readers is compared, so one
/// slow start does not decide it; without the fix every reader waits the timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_reader_gets_its_first_record_without_the_leader_retry_timer() {
    let (_b, cfg) = broker(4);
    publish(&cfg, &[task("echo", json!(1), None)]).await;
    let mut quickest = Duration::MAX;
    for _ in 0..3 {
        let mut r = sluice_producer::TopicReader::open(&cfg, &cfg.topics.tasks, Start::Beginning)
            .await
            .unwrap();
        let opened = std::time::Instant::now();
        match r.next(Duration::from_secs(5)).await {
            sluice_producer::Step::Record(_) => {}
            other => panic!("expected the published task, got {other:?}"),
        }
        quickest = quickest.min(opened.elapsed());
    }
    assert!(
        quickest < Duration::from_millis(300),
        "the quickest of three fresh readers took {quickest:?} from opening to its first \
         record: partitions assigned before their leader is known wait librdkafka's 500 ms timer"
    );
}
