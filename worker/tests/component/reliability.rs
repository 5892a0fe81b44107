//! Failure handling: retries, backoff, dead letters, timeouts, panics, expiry,
//! start times, the safety valve.

use crate::support::*;
use serde_json::{json, Value};
use sluice_common::task::now_ms;
use sluice_common::{Status, Task};
use sluice_producer::Outgoing;
use sluice_worker::{handler_fn, HandlerError, TaskContext};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn fast_retries(cfg: &mut sluice_common::Config) {
    cfg.worker.retry.backoff_initial_ms = 300;
    cfg.worker.retry.backoff_multiplier = 2.0;
    cfg.worker.retry.jitter = 0.0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_twice_succeeds_on_attempt_three_after_its_backoff() {
    let (_b, mut cfg) = broker(2);
    fast_retries(&mut cfg);
    // Keyless: retried through the retry topic. Keyed: retried in its lane.
    let via_topic = task("fail", json!({"times": 2}), None);
    let in_place = task("fail", json!({"times": 2}), Some("customer-1"));
    let behind = task("echo", json!("next"), Some("customer-1"));
    publish(&cfg, &[via_topic.clone(), in_place.clone(), behind.clone()]).await;
    let (stop, h) = worker(&cfg, "w1", sluice_worker::builtin());
    let all = results(&cfg, 3, Duration::from_secs(60)).await;
    stop.cancel();
    let summary = h.await.unwrap();
    let ids = by_id(&all);
    for t in [&via_topic, &in_place] {
        let r = ids[t.id()].clone();
        assert_eq!(r.len(), 1, "one terminal result, not one per attempt");
        let r = r[0];
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        assert_eq!(r.attempts, 3);
        assert_eq!(r.output, Some(json!({"succeeded_on_attempt": 3})));
        let waited = r.finished_ms - t.task.created_ms.unwrap();
        assert!(
            waited >= 900,
            "backoffs of 300 + 600 ms were not observed: {waited} ms"
        );
    }
    // Same key: the later task waited for the retried one.
    assert!(ids[behind.id()][0].started_ms >= ids[in_place.id()][0].finished_ms);
    assert_eq!(summary.counters.retries.load(Ordering::Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_stop_at_max_attempts_and_the_task_is_dead_lettered() {
    let (_b, mut cfg) = broker(1);
    fast_retries(&mut cfg);
    cfg.worker.retry.backoff_initial_ms = 50;
    cfg.worker.retry.max_attempts = 3;
    let by_worker = task("fail", json!({"times": 10}), None);
    let mut own = Task::new("fail", json!({"times": 10}));
    own.max_attempts = Some(2);
    let by_task = Outgoing::new(own, None);
    publish(&cfg, &[by_worker.clone(), by_task.clone()]).await;
    let (stop, h) = worker(&cfg, "w1", sluice_worker::builtin());
    let all = results(&cfg, 2, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let ids = by_id(&all);
    let a = ids[by_worker.id()][0];
    assert_eq!((a.status, a.attempts), (Status::DeadLettered, 3));
    assert!(
        a.error
            .as_ref()
            .unwrap()
            .starts_with("gave up after 3 attempts: fail: attempt 3"),
        "{a:?}"
    );
    let b = ids[by_task.id()][0];
    assert_eq!((b.status, b.attempts), (Status::DeadLettered, 2));
    let dlq = sluice_producer::dlq::read_all(&cfg).await.unwrap();
    assert_eq!(dlq.len(), 2);
    let rec = dlq.iter().find(|r| r.task_id() == by_worker.id()).unwrap();
    assert_eq!(rec.header("sluice.attempts"), "3");
    // The record came back from the retry topic; a replay goes to the task topic.
    assert_eq!(
        rec.header("sluice.original.topic"),
        cfg.topics.retry_topic()
    );
    assert_eq!(rec.replay_topic(&cfg), cfg.topics.tasks);
    assert_eq!(
        rec.replay_task().unwrap().attempt,
        None,
        "replays start again at attempt 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_timeouts_are_failed_attempts_and_good_tasks_flow_around_them() {
    let (_b, mut cfg) = broker(1);
    fast_retries(&mut cfg);
    cfg.worker.retry.backoff_initial_ms = 50;
    cfg.worker.retry.max_attempts = 2;
    let mut registry = sluice_worker::builtin();
    registry.register(
        "panics",
        handler_fn(|_: TaskContext| async move {
            if now_ms() > 0 {
                panic!("boom");
            }
            Ok::<Value, HandlerError>(Value::Null)
        }),
    );
    let mut slow = Task::new("sleep", json!({"ms": 10_000}));
    slow.timeout_ms = Some(200);
    let slow = Outgoing::new(slow, None);
    let panics = task("panics", Value::Null, None);
    let good: Vec<Outgoing> = (0..20).map(|i| task("echo", json!(i), None)).collect();
    let mut all_tasks = vec![slow.clone(), panics.clone()];
    all_tasks.extend(good.iter().cloned());
    publish(&cfg, &all_tasks).await;
    let (stop, h) = worker(&cfg, "w1", registry);
    let all = results(&cfg, 22, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let ids = by_id(&all);
    let s = ids[slow.id()][0];
    assert_eq!(s.status, Status::DeadLettered);
    // Two attempts of a 10 s sleep, each cut at 200 ms.
    assert!(
        s.finished_ms - s.started_ms < 5_000,
        "the 10 s sleep was not cut short: {s:?}"
    );
    assert_eq!(
        s.error.as_deref(),
        Some("gave up after 2 attempts: timed out after 200 ms")
    );
    let p = ids[panics.id()][0];
    assert_eq!(p.status, Status::DeadLettered);
    assert_eq!(
        p.error.as_deref(),
        Some("gave up after 2 attempts: handler panicked: boom")
    );
    assert!(good
        .iter()
        .all(|t| ids[t.id()][0].status == Status::Succeeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tasks_do_not_run_and_delayed_tasks_wait_for_their_time() {
    let (_b, cfg) = broker(1);
    let runs = Arc::new(AtomicU32::new(0));
    let mut registry = sluice_worker::builtin();
    let counter = runs.clone();
    registry.register(
        "count",
        handler_fn(move |_: TaskContext| {
            let c = counter.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<Value, HandlerError>(Value::Null)
            }
        }),
    );
    let mut late = Task::new("count", Value::Null);
    late.deadline_ms = Some(now_ms() - 1_000);
    let late = Outgoing::new(late, None);
    let mut delayed = Task::new("count", Value::Null);
    let not_before = now_ms() + 6_000;
    delayed.not_before_ms = Some(not_before);
    let delayed = Outgoing::new(delayed, None);
    let now = task("count", Value::Null, None);
    let (stop, h) = ready_worker(&cfg, "w1", registry).await;
    publish(&cfg, &[late.clone(), delayed.clone(), now.clone()]).await;
    let all = results(&cfg, 3, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let ids = by_id(&all);
    let e = ids[late.id()][0];
    assert_eq!(e.status, Status::Expired);
    assert!(
        e.error.as_ref().unwrap().contains("deadline passed"),
        "{e:?}"
    );
    assert!(ids[delayed.id()][0].started_ms >= not_before);
    assert!(
        ids[now.id()][0].started_ms < not_before,
        "a delayed task held up the one behind it"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the expired task ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_poison_trips_the_safety_valve() {
    let (_b, mut cfg) = broker(1);
    cfg.worker.max_dead_letters_per_minute = 5;
    let poison: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("garbage {i}").into_bytes())
        .collect();
    publish_raw(&cfg, &poison).await;
    let mut c = cfg.clone();
    c.worker.id = Some("w1".into());
    c.worker.concurrency = 1;
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        sluice_worker::run(
            c,
            sluice_worker::builtin(),
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("the valve stops the worker by itself");
    let err = outcome
        .expect_err("a tripped valve is an error")
        .to_string();
    assert!(
        err.contains("safety valve") && err.contains("max_dead_letters_per_minute = 5"),
        "{err}"
    );
    let dlq = sluice_producer::dlq::read_all(&cfg).await.unwrap();
    assert_eq!(dlq.len(), 5, "parked up to the limit, then stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_far_longer_than_max_poll_interval_keep_the_worker_in_its_group() {
    let (_b, mut cfg) = broker(1);
    cfg.worker.group_protocol = sluice_common::config::GroupProtocol::Classic;
    cfg.worker.session_timeout_ms = 6_000;
    // librdkafka leaves the group when the application stops polling for this long.
    // (Raw options reach every client, and librdkafka wants the session timeout
    // below it in each consumer, so both are set here.)
    for (k, v) in [
        ("max.poll.interval.ms", "7000"),
        ("session.timeout.ms", "6000"),
    ] {
        cfg.kafka.librdkafka_options.insert(k.into(), v.into());
    }
    cfg.worker.concurrency = 10;
    // The channel to the executor holds max_buffered_tasks + 16 records: 10 running
    // and 26 queued leave the 37th task blocking the poll thread for a whole task
    // (8 s, over max.poll.interval.ms) unless the partitions are paused instead.
    cfg.worker.max_buffered_tasks = 10;
    let tasks: Vec<Outgoing> = (0..40)
        .map(|_| task("sleep", json!({"ms": 8_000}), None))
        .collect();
    let counters = Arc::new(sluice_worker::Counters::default());
    let mut c = cfg.clone();
    c.worker.id = Some("w1".into());
    let stop = tokio_util::sync::CancellationToken::new();
    let (s, live) = (stop.clone(), counters.clone());
    let _stop_on_panic = stop.clone().drop_guard();
    let h = tokio::spawn(async move {
        sluice_worker::run_with(c, sluice_worker::builtin(), s, live)
            .await
            .unwrap()
    });
    publish(&cfg, &tasks).await;
    // Four rounds of ten 8 s tasks.
    let all = results(&cfg, 40, Duration::from_secs(90)).await;
    let rebalances = counters.rebalances.load(Ordering::Relaxed);
    stop.cancel();
    h.await.unwrap();
    assert_eq!(all.len(), 40, "a task was delivered again: {all:?}");
    assert!(all.iter().all(|r| r.status == Status::Succeeded));
    assert_eq!(
        rebalances, 1,
        "the worker left and rejoined its group (only the first assignment expected)"
    );
    let peak = counters.buffered_peak.load(Ordering::Relaxed);
    assert!(
        peak <= 11,
        "partitions were not paused: {peak} records held at once"
    );
}

/// librdkafka keeps a partition's pause flag across revoke and re-assign
/// (only its own internal pauses are reset on assign). A worker that is paused
/// (buffer full) when a partition is taken away, and idle when it gets the
/// partition back, must fetch from it again; before the worker resumed
/// re-assigned partitions, such a partition stayed silent for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_taken_while_paused_and_given_back_is_fetched_again() {
    let (_b, mut cfg) = broker(8);
    cfg.worker.concurrency = 1;
    // Paused at 4 held, resumed at 2: four 2 s tasks run one at a time keep
    // worker a paused for the first 4 s.
    cfg.worker.max_buffered_tasks = 4;
    let slow: Vec<Outgoing> = (0..4)
        .map(|i| task("sleep", json!({"ms": 2_000}), Some(&format!("slow{i}"))))
        .collect();
    let a_counters = Arc::new(sluice_worker::Counters::default());
    let mut c = cfg.clone();
    c.worker.id = Some("a".into());
    let stop_a = tokio_util::sync::CancellationToken::new();
    let _stop_on_panic = stop_a.clone().drop_guard();
    let (s, live) = (stop_a.clone(), a_counters.clone());
    let a = tokio::spawn(async move {
        sluice_worker::run_with(c, sluice_worker::builtin(), s, live)
            .await
            .unwrap()
    });
    // Eight task partitions plus the retry topic's.
    wait_for(|| a_counters.assigned() > 8, "a holds every partition").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all_partitions = a_counters.assigned();
    publish(&cfg, &slow).await;
    wait_for(
        || a_counters.buffered_peak.load(Ordering::Relaxed) == 4,
        "a holds the four slow tasks",
    )
    .await;
    // b takes half of the partitions while a is paused; both finish the batch.
    let (stop_b, b) = ready_worker(&cfg, "b", sluice_worker::builtin()).await;
    results(&cfg, slow.len(), Duration::from_secs(30)).await;
    // b leaves: its partitions go back to a, which is idle now (nothing toggles
    // its pause state again), so only resuming on assignment makes them flow.
    stop_b.cancel();
    let b = b.await.unwrap();
    assert!(
        b.counters.total_finished() > 0,
        "worker b ran nothing, so no partition moved: {b:?}"
    );
    wait_for(
        || a_counters.assigned() == all_partitions,
        "a holds every partition again",
    )
    .await;
    // One task per partition, each awaited before the next, so a never holds
    // enough to pause and resume again: a partition left paused gets no result.
    let publisher = sluice_producer::Publisher::connect(&cfg, &cfg.topics.tasks)
        .await
        .unwrap();
    let mut reader = sluice_producer::ResultReader::open(&cfg, sluice_producer::Start::End)
        .await
        .unwrap();
    for partition in 0..8 {
        let t = task("noop", Value::Null, None);
        let id = t.id().to_string();
        publisher.publish(&t, Some(partition)).await.unwrap();
        // A stalled partition never answers; 20 s only absorbs a loaded machine.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no result for the task on partition {partition}: it stayed paused"
            );
            if let sluice_producer::Next::Result(r) = reader.next(Duration::from_millis(100)).await
            {
                if r.task_id == id {
                    break;
                }
            }
        }
    }
    stop_a.cancel();
    a.await.unwrap();
}

async fn wait_for(cond: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A runtime shut down while a worker runs on it (a test that panicked, an
/// application that exits without cancelling) drops the worker's future; the
/// poll thread is a blocking-pool thread the runtime waits for, so the worker
/// must stop it then too, or the process hangs for good.
#[test]
fn a_runtime_dropped_under_a_running_worker_shuts_down() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (broker, mut cfg) = broker(2);
    cfg.worker.shutdown_timeout_ms = 2_000;
    let counters = std::sync::Arc::new(sluice_worker::Counters::default());
    let live = counters.clone();
    rt.spawn(async move {
        // Never cancelled: only the runtime's shutdown ends it.
        let never = tokio_util::sync::CancellationToken::new();
        let _ = sluice_worker::run_with(cfg, sluice_worker::builtin(), never, live).await;
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while counters.assigned() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker got no partitions"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(rt);
        let _ = done_tx.send(());
    });
    let ended = done_rx.recv_timeout(Duration::from_secs(20));
    drop(broker);
    assert!(
        ended.is_ok(),
        "the runtime was still waiting for the worker's poll thread after 20 s"
    );
}
