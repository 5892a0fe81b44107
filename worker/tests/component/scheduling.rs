//! The scheduler against the embedded broker: priority lanes overtake a
//! backlog, resource capacity holds, pools keep their tasks, impossible tasks
//! are dead-lettered.

use crate::support::{broker, by_id, ready_worker, results, task, worker};
use serde_json::json;
use sluice_common::config::QueuePolicy;
use sluice_common::{Config, Status, TaskResult};
use sluice_producer::{Outgoing, Publisher};
use std::time::Duration;

async fn publish_routed(cfg: &Config, tasks: &[Outgoing]) {
    let p = Publisher::routed(cfg).await.unwrap();
    let mut pending = Vec::new();
    for t in tasks {
        pending.push(p.send(t, None).await.unwrap());
    }
    for d in pending {
        d.await.unwrap();
    }
}

fn with(mut out: Outgoing, f: impl FnOnce(&mut sluice_common::Task)) -> Outgoing {
    f(&mut out.task);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_tasks_overtake_a_low_priority_backlog() {
    let (_b, mut cfg) = broker(2);
    cfg.topics.priority_lanes = true;
    cfg.worker.concurrency = 2;
    // A small buffer: the low lane's topic is paused most of the time, and the
    // high lane must still be fetched.
    cfg.worker.max_buffered_tasks = 10;
    let low: Vec<Outgoing> = (0..120)
        .map(|_| {
            with(task("sleep", json!({"ms": 25}), None), |t| {
                t.priority = Some(-1)
            })
        })
        .collect();
    publish_routed(&cfg, &low).await;
    let (stop, h) = ready_worker(&cfg, "w1", sluice_worker::builtin()).await;
    // Let a backlog form and run for a while, then send the urgent ones.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let high: Vec<Outgoing> = (0..30)
        .map(|_| {
            with(task("sleep", json!({"ms": 25}), None), |t| {
                t.priority = Some(5)
            })
        })
        .collect();
    publish_routed(&cfg, &high).await;
    let all = results(&cfg, 150, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let ids = by_id(&all);
    let finished =
        |set: &[Outgoing]| -> Vec<&TaskResult> { set.iter().map(|o| ids[o.id()][0]).collect() };
    let (low_r, high_r) = (finished(&low), finished(&high));
    assert!(low_r
        .iter()
        .chain(&high_r)
        .all(|r| r.status == Status::Succeeded));
    assert!(
        high_r.iter().all(|r| r.topic.ends_with(".high")),
        "routed to the high lane"
    );
    assert!(
        low_r.iter().all(|r| r.topic.ends_with(".low")),
        "routed to the low lane"
    );
    let last_high = high_r.iter().map(|r| r.finished_ms).max().unwrap();
    let low_after = low_r.iter().filter(|r| r.started_ms > last_high).count();
    // FIFO would run the high tasks after every low task published before them;
    // here they run next, so much of the low backlog is still waiting.
    assert!(
        low_after >= 40,
        "only {low_after} of 120 low tasks started after the last high task finished"
    );
    // The low lane keeps its share (10 %) while the high lane is busy: thirty
    // high starts owe it at least two, so at least one low task started between
    // the first high start and the last high finish. (fair.rs proves the bound.)
    let first_high = high_r.iter().map(|r| r.started_ms).min().unwrap();
    let low_during = low_r
        .iter()
        .filter(|r| r.started_ms >= first_high && r.started_ms <= last_high)
        .count();
    assert!(low_during >= 1, "the low lane starved while high tasks ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_bound_what_runs_at_once_and_impossible_tasks_are_dead_lettered() {
    let (_b, mut cfg) = broker(2);
    cfg.worker.concurrency = 8;
    cfg.worker.scheduler.capacity = [("cpu".to_string(), 2.0)].into_iter().collect();
    let mut tasks: Vec<Outgoing> = (0..8)
        .map(|_| {
            with(task("sleep", json!({"ms": 120}), None), |t| {
                t.resources = Some(json!({"cpu": 1}))
            })
        })
        .collect();
    let huge = with(task("sleep", json!({"ms": 1}), None), |t| {
        t.resources = Some(json!({"cpu": 3}))
    });
    let alien = with(task("sleep", json!({"ms": 1}), None), |t| {
        t.resources = Some(json!({"gpu": 1}))
    });
    tasks.push(huge.clone());
    tasks.push(alien.clone());
    publish_routed(&cfg, &tasks).await;
    let (stop, h) = worker(&cfg, "w1", sluice_worker::builtin());
    let all = results(&cfg, 10, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let ids = by_id(&all);
    for (t, needle) in [(&huge, "cpu=3"), (&alien, "gpu=1")] {
        let r = ids[t.id()][0];
        assert_eq!(r.status, Status::DeadLettered);
        let e = r.error.as_deref().unwrap();
        assert!(
            e.contains(needle) && e.contains("can never start here"),
            "{e}"
        );
    }
    let ran: Vec<&TaskResult> = tasks[..8].iter().map(|t| ids[t.id()][0]).collect();
    assert!(ran.iter().all(|r| r.status == Status::Succeeded));
    // At no start did more than two cpu-1 tasks run (intervals of the results).
    for r in &ran {
        let overlapping = ran
            .iter()
            .filter(|o| o.started_ms <= r.started_ms && o.finished_ms > r.started_ms)
            .count();
        assert!(
            overlapping <= 2,
            "{overlapping} tasks ran at once on 2 cpus"
        );
    }
    // Eight 120 ms tasks two at a time take four rounds.
    let span = ran.iter().map(|r| r.finished_ms).max().unwrap()
        - ran.iter().map(|r| r.started_ms).min().unwrap();
    assert!(span >= 4 * 120, "ran in {span} ms: capacity not enforced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_task_runs_only_on_a_worker_of_its_pool() {
    let (_b, cfg) = broker(1);
    let gpu = with(task("echo", json!("on gpu"), None), |t| {
        t.resources = Some(json!({"class": "gpu", "gpu": 1}))
    });
    let plain: Vec<Outgoing> = (0..10).map(|i| task("echo", json!(i), None)).collect();
    let mut all_tasks = plain.clone();
    all_tasks.push(gpu.clone());
    publish_routed(&cfg, &all_tasks).await;
    let (stop_a, ha) = worker(&cfg, "general", sluice_worker::builtin());
    let mut gpu_cfg = cfg.clone();
    gpu_cfg.worker.pool = Some("gpu".into());
    gpu_cfg.worker.group = "sluice-gpu".into();
    gpu_cfg.worker.scheduler.capacity = [("gpu".to_string(), 1.0)].into_iter().collect();
    let (stop_b, hb) = worker(&gpu_cfg, "gpu-1", sluice_worker::builtin());
    let all = results(&cfg, 11, Duration::from_secs(60)).await;
    stop_a.cancel();
    stop_b.cancel();
    ha.await.unwrap();
    hb.await.unwrap();
    let ids = by_id(&all);
    let r = ids[gpu.id()][0];
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.worker, "gpu-1");
    assert_eq!(r.topic, format!("{}.pool.gpu", cfg.topics.tasks));
    assert!(plain.iter().all(|t| ids[t.id()][0].worker == "general"));
}

fn timed(ms: u64) -> sluice_worker::Registry {
    let mut r = sluice_worker::builtin();
    for (kind, ms) in [("quick", 5u64), ("slow", ms)] {
        r.register(
            kind,
            sluice_worker::handler_fn(move |_| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, sluice_worker::HandlerError>(json!(null))
            }),
        );
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortest_expected_first_starts_with_estimates_read_from_the_results_topic() {
    let (_b, mut cfg) = broker(1);
    // History: a first worker runs both kinds once each, so their run times are
    // on the results topic.
    let first: Vec<Outgoing> = ["slow", "quick", "slow", "quick"]
        .iter()
        .map(|k| task(k, json!(null), None))
        .collect();
    publish_routed(&cfg, &first).await;
    let (stop, h) = worker(&cfg, "w1", timed(150));
    results(&cfg, 4, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    // A fresh worker, one slot, shortest-expected-first: it knows the kinds only
    // from the history.
    cfg.worker.concurrency = 1;
    cfg.worker.scheduler.policy = QueuePolicy::ShortestExpectedFirst;
    let (stop, h) = ready_worker(&cfg, "w2", timed(150)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst: Vec<Outgoing> = (0..8)
        .map(|i| task(if i % 2 == 0 { "slow" } else { "quick" }, json!(null), None))
        .collect();
    publish_routed(&cfg, &burst).await;
    let all = results(&cfg, 12, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let ids = by_id(&all);
    let mut ran: Vec<&TaskResult> = burst.iter().map(|t| ids[t.id()][0]).collect();
    ran.sort_by_key(|r| r.started_ms);
    let order: Vec<&str> = ran.iter().map(|r| r.kind.as_str()).collect();
    // The first task may start before the others arrive; after it, every quick
    // task runs before the remaining slow ones (FIFO would alternate).
    let rest = &order[1..];
    let last_quick = rest.iter().rposition(|k| *k == "quick").unwrap();
    let first_slow = rest.iter().position(|k| *k == "slow").unwrap();
    assert!(last_quick < first_slow, "start order {order:?}");
}

/// Earliest-deadline-first on a broker: a burst published latest-deadline first
/// starts in deadline order behind one slot (FIFO would start it as published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_deadline_first_starts_a_burst_in_deadline_order() {
    let (_b, mut cfg) = broker(1);
    cfg.worker.concurrency = 1;
    cfg.worker.scheduler.policy = QueuePolicy::EarliestDeadlineFirst;
    let (stop, h) = ready_worker(&cfg, "w", sluice_worker::builtin()).await;
    let now = sluice_common::task::now_ms();
    let burst: Vec<Outgoing> = (0..8u64)
        .map(|i| {
            let mut t = sluice_common::Task::new("sleep", json!({"ms": 50}));
            // Far enough ahead that none expires; each later one is due sooner.
            t.deadline_ms = Some(now + 60_000 - i * 1_000);
            Outgoing::new(t, None)
        })
        .collect();
    publish_routed(&cfg, &burst).await;
    let all = results(&cfg, 8, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let ids = by_id(&all);
    let mut ran: Vec<(u64, u64)> = burst
        .iter()
        .map(|t| {
            let r = ids[t.id()][0];
            assert_eq!(r.status, Status::Succeeded, "{r:?}");
            (r.started_ms, t.task.deadline_ms.unwrap() - now)
        })
        .collect();
    ran.sort();
    let deadlines: Vec<u64> = ran.iter().map(|(_, d)| *d).collect();
    // The first may start before the rest arrive; after it, deadline order.
    assert!(
        deadlines[1..].windows(2).all(|w| w[0] <= w[1]),
        "deadlines (ms from now) in start order: {deadlines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_kind_starts_no_faster_than_its_rate() {
    let (_b, mut cfg) = broker(1);
    cfg.worker.kinds.insert(
        "noop".into(),
        sluice_common::config::KindConfig {
            rate_per_s: Some(5.0),
            ..Default::default()
        },
    );
    let tasks: Vec<Outgoing> = (0..10).map(|_| task("noop", json!(null), None)).collect();
    let (stop, h) = ready_worker(&cfg, "w1", sluice_worker::builtin()).await;
    publish_routed(&cfg, &tasks).await;
    let all = results(&cfg, 10, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let starts: Vec<u64> = all.iter().map(|r| r.started_ms).collect();
    let span = starts.iter().max().unwrap() - starts.iter().min().unwrap();
    // A full bucket lets 5 through at once; the other 5 come 200 ms apart.
    assert!(span >= 900, "10 starts within {span} ms at 5/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_concurrency_shrinks_the_limit_when_attempts_fail() {
    let (_b, mut cfg) = broker(1);
    cfg.worker.concurrency = 8;
    cfg.worker.scheduler.adaptive = sluice_common::config::AdaptiveConfig {
        enabled: true,
        min_concurrency: 1,
        window: 5,
        ..Default::default()
    };
    // Forty failing attempts: eight windows at 100 % errors, 8 → 6 → 4 → 3 → 2 → 1.
    let failing: Vec<Outgoing> = (0..40)
        .map(|_| task("fail", json!({"permanent": true}), None))
        .collect();
    let (stop, h) = ready_worker(&cfg, "w1", sluice_worker::builtin()).await;
    publish_routed(&cfg, &failing).await;
    results(&cfg, 40, Duration::from_secs(60)).await;
    // Then eight 100 ms tasks that could all run at once under the configured 8.
    let sleeps: Vec<Outgoing> = (0..8)
        .map(|_| task("sleep", json!({"ms": 100}), None))
        .collect();
    publish_routed(&cfg, &sleeps).await;
    let all = results(&cfg, 48, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();
    let ids = by_id(&all);
    let ran: Vec<&TaskResult> = sleeps.iter().map(|t| ids[t.id()][0]).collect();
    let most = ran
        .iter()
        .map(|r| {
            ran.iter()
                .filter(|o| o.started_ms <= r.started_ms && o.finished_ms > r.started_ms)
                .count()
        })
        .max()
        .unwrap();
    // Healthy windows add one slot per five attempts, so at most two run at once.
    assert!(most <= 2, "{most} ran at once after the limit shrank");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_aware_publishing_avoids_the_partition_that_falls_behind() {
    let (_b, mut cfg) = broker(2);
    cfg.worker.concurrency = 1;
    // A backlog on partition 0 only, worked through slowly.
    let plain = Publisher::connect(&cfg, &cfg.topics.tasks).await.unwrap();
    for _ in 0..20 {
        plain
            .publish(&task("sleep", json!({"ms": 200}), None), Some(0))
            .await
            .unwrap();
    }
    let (stop, h) = ready_worker(&cfg, "w1", sluice_worker::builtin()).await;
    // Some of it done and committed, most of it still lag.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cfg.producer.partitioner = sluice_common::config::PartitionerKind::LagAware;
    cfg.producer.lag_refresh_ms = 100;
    let p = Publisher::routed(&cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut on = [0; 2];
    for _ in 0..20 {
        let d = p
            .publish(&task("noop", json!(null), None), None)
            .await
            .unwrap();
        on[d.partition as usize] += 1;
    }
    stop.cancel();
    h.await.unwrap();
    // Round-robin would put 10 on each; partition 0 is about 12 records behind.
    assert!(on[1] >= 14, "keyless tasks per partition: {on:?}");
}

/// Runs a job of `square` over `split`: its status and the topic of its sub-tasks.
async fn run_square_job(
    cfg: &Config,
    split: &str,
    sub_tasks: sluice_producer::job::SubTasks,
) -> (sluice_producer::job::JobStatus, String) {
    let spec = sluice_producer::job::JobSpec {
        id: None,
        kind: "square".into(),
        split: split.parse().unwrap(),
        gather: sluice_common::job::GatherSpec::Collect,
        failure: Default::default(),
        sub_tasks,
    };
    let (status, manifest) = crate::support::run_job(cfg, &spec).await;
    (status, manifest.task_topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_sub_tasks_are_routed_to_their_lane_and_pool_and_still_gathered() {
    let (_b, mut cfg) = broker(2);
    cfg.topics.priority_lanes = true;
    let (stop_a, ha) = ready_worker(&cfg, "general", sluice_worker::builtin()).await;
    // The pool's own group; only the general group gathers, so each job has
    // one gatherer.
    let mut gpu_cfg = cfg.clone();
    gpu_cfg.worker.pool = Some("gpu".into());
    gpu_cfg.worker.group = "sluice-gpu".into();
    gpu_cfg.worker.gatherer = false;
    let (stop_b, hb) = ready_worker(&gpu_cfg, "gpu-1", sluice_worker::builtin()).await;
    let urgent = sluice_producer::job::SubTasks {
        priority: Some(5),
        ..Default::default()
    };
    let (high, high_topic) = run_square_job(&cfg, "range:1..6", urgent).await;
    let on_gpu = sluice_producer::job::SubTasks {
        resources: Some(json!({"class": "gpu", "gpu": 1})),
        ..Default::default()
    };
    let (gpu, gpu_topic) = run_square_job(&cfg, "range:1..4", on_gpu).await;
    let all = results(&cfg, 10, Duration::from_secs(60)).await;
    stop_a.cancel();
    stop_b.cancel();
    ha.await.unwrap();
    hb.await.unwrap();
    let tasks = &cfg.topics.tasks;
    assert_eq!(high_topic, format!("{tasks}.high"), "the manifest's topic");
    assert_eq!(gpu_topic, format!("{tasks}.pool.gpu"));
    for (job, want, topic) in [
        (&high, json!([1, 4, 9, 16, 25, 36]), &high_topic),
        (&gpu, json!([1, 4, 9, 16]), &gpu_topic),
    ] {
        assert_eq!(job.state, "succeeded", "{job:?}");
        assert_eq!(job.output.as_ref(), Some(&want));
        assert_eq!(job.gathered_by.as_deref(), Some("general"));
        let subs: Vec<&TaskResult> = all
            .iter()
            .filter(|r| r.job.as_ref().is_some_and(|j| j.id == job.job_id))
            .collect();
        assert!(!subs.is_empty());
        assert!(
            subs.iter().all(|r| &r.topic == topic),
            "sub-tasks ran from {:?}",
            subs.iter().map(|r| &r.topic).collect::<Vec<_>>()
        );
    }
    assert!(all
        .iter()
        .filter(|r| r.topic == gpu_topic)
        .all(|r| r.worker == "gpu-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaling_signal_follows_arrivals_and_backlog_capped_at_partitions() {
    let (_b, mut cfg) = broker(4);
    // 2 slots × 20 ms tasks: the worker runs about 100 tasks/s.
    cfg.worker.concurrency = 2;
    cfg.metrics.statistics_interval_ms = 200;
    cfg.worker.scheduler.scaling_interval_ms = 1000;
    cfg.worker.scheduler.scaling_drain_s = 3.0;
    let ((stop, h), counters) =
        crate::support::ready_worker_counting(&cfg, "w1", sluice_worker::builtin()).await;
    assert_eq!(
        counters.assigned(),
        8,
        "4 partitions each of tasks and retries"
    );
    let p = Publisher::routed(&cfg).await.unwrap();
    // Keeping up: 50 tasks/s for 4 s need about half of this worker.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut pending = Vec::new();
    for _ in 0..200 {
        tick.tick().await;
        pending.push(
            p.send(&task("sleep", json!({"ms": 20}), None), None)
                .await
                .unwrap(),
        );
    }
    for d in pending {
        d.await.unwrap();
    }
    let steady = counters.needed_workers();
    // A backlog of 1500 (15 s of work) to clear in 3 s asks for ~5 workers;
    // it sits in the 4 partitions of the task topic, so 4 is all it can use
    // (not the 8 the worker holds).
    let backlog: Vec<Outgoing> = (0..1500)
        .map(|_| task("sleep", json!({"ms": 20}), None))
        .collect();
    publish_routed(&cfg, &backlog).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let behind = counters.needed_workers();
    stop.cancel();
    h.await.unwrap();
    // Not exactly 0.5: attempts take a little over 20 ms, and the few
    // records not yet committed count as backlog.
    assert!(
        (0.3..=1.0).contains(&steady),
        "50/s on a worker that runs ~100/s: signal {steady}, an autoscaler would ask for one"
    );
    assert_eq!(behind, 4.0, "a large backlog in 4 partitions");
}
