//! Jobs seen from the worker: what happens to sub-tasks once their job has ended.

use crate::support::*;
use serde_json::{json, Value};
use sluice_common::job::{FailurePolicy, GatherSpec};
use sluice_common::{Status, TaskResult};
use sluice_producer::job::JobSpec;
use sluice_worker::{handler_fn, HandlerError, TaskContext};
use std::time::Duration;

/// A fail-fast job whose first sub-task fails while the rest queue behind one
/// slot: once the job result is out, the left-over sub-tasks are not run but
/// end `cancelled`, each with a result, so nothing is dropped and the worker
/// stops spending time on outputs nobody gathers. Without cancellation every
/// one of the 99 would run (100 ms each, about 10 s); the assertion allows the
/// job result 5 s to arrive, for a machine busy with other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fail_fast_job_cancels_its_left_over_sub_tasks() {
    // One partition and one slot: the sub-tasks run in index order, the failing
    // one first.
    let (_b, mut cfg) = broker(1);
    cfg.worker.concurrency = 1;
    let mut registry = sluice_worker::builtin();
    registry.register(
        "first_fails",
        handler_fn(|ctx: TaskContext| async move {
            if ctx.payload == json!(1) {
                return Err(HandlerError::permanent("the first one fails"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<Value, HandlerError>(ctx.payload)
        }),
    );
    let (stop, h) = ready_worker(&cfg, "w", registry).await;
    // The gatherer joins its own group after the worker holds its partitions;
    // a first job proves it reads results before the one under test starts.
    submit_and_wait(&cfg, "range:2..3", FailurePolicy::default()).await;

    let (job, id) = submit_and_wait(
        &cfg,
        "range:1..100",
        FailurePolicy {
            tolerate: 0,
            fail_fast: true,
        },
    )
    .await;
    // Every sub-task still ends in exactly one result.
    let all = results(&cfg, 102, Duration::from_secs(60)).await;
    stop.cancel();
    h.await.unwrap();

    assert_eq!(job.state, "failed", "{job:?}");
    let subs: Vec<&TaskResult> = all
        .iter()
        .filter(|r| r.job.as_ref().is_some_and(|j| j.id == id))
        .collect();
    let count = |s: Status| subs.iter().filter(|r| r.status == s).count();
    let (ran, cancelled) = (count(Status::Succeeded), count(Status::Cancelled));
    // A permanent failure is dead-lettered (the dead-letter topic is on by default).
    assert_eq!(count(Status::DeadLettered), 1, "the first sub-task");
    assert_eq!(ran + cancelled + 1, 100, "one result per sub-task");
    let failed_at = subs
        .iter()
        .find(|r| r.status == Status::DeadLettered)
        .map(|r| r.finished_ms)
        .unwrap_or_default();
    let decided_after = job
        .finished_ms
        .unwrap_or_default()
        .saturating_sub(failed_at);
    let mut by_start: Vec<&&TaskResult> = subs.iter().collect();
    by_start.sort_by_key(|r| r.started_ms);
    let failed_pos = by_start
        .iter()
        .position(|r| r.status == Status::DeadLettered)
        .unwrap_or_default();
    eprintln!("left-over sub-tasks: {ran} ran, {cancelled} cancelled; job result {decided_after} ms after the failure; the failing sub-task started {failed_pos}th");
    assert!(
        cancelled >= 50,
        "only {cancelled} of 99 left-over sub-tasks were cancelled; {ran} ran; the job \
         result came {decided_after} ms after the failure; the failing sub-task started \
         {failed_pos}th"
    );
    let why = subs
        .iter()
        .find(|r| r.status == Status::Cancelled)
        .and_then(|r| r.error.as_deref())
        .unwrap_or_default();
    assert!(why.contains(&id) && why.contains("ended"), "{why}");
}

/// Runs a job of `first_fails` over `split`, gathered by `sum`: its status and id.
async fn submit_and_wait(
    cfg: &sluice_common::Config,
    split: &str,
    failure: FailurePolicy,
) -> (sluice_producer::job::JobStatus, String) {
    let spec = JobSpec {
        id: None,
        kind: "first_fails".into(),
        split: split.parse().unwrap(),
        gather: GatherSpec::Sum,
        failure,
        sub_tasks: Default::default(),
    };
    let (status, manifest) = run_job(cfg, &spec).await;
    (status, manifest.job_id)
}

/// While no job is open the gatherer reads no results, and a job submitted
/// later is still gathered: its gatherer resumes at a skip point taken while
/// idle, not where it paused, so it reads the job's results and not the
/// thousands of plain ones before them. Without idling, each burst of plain
/// tasks would be read in full (2,000 reads); resuming where it paused would
/// read the whole burst before the job's results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gatherer_reads_no_results_while_no_job_is_open() {
    let (_b, cfg) = broker(4);
    let ((stop, h), counters) = ready_worker_counting(&cfg, "w", sluice_worker::builtin()).await;
    let read = || {
        counters
            .gathered_results
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // A first job proves the gatherer holds its partitions and reads.
    let (first, _) = run_job(&cfg, &square_job("range:1..10")).await;
    assert_eq!(first.output, Some(json!(385)), "{first:?}");
    assert!(read() >= 10, "the gatherer read {} results", read());

    for round in 0..2 {
        // Once the job is gathered, idling starts within a probe or two.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = read();
        let plain: Vec<_> = (0..2000).map(|i| task("noop", json!(i), None)).collect();
        publish(&cfg, &plain).await;
        wait_for_finished(&counters, 2000 * (round + 1) + 10 + 50 * round).await;
        let during = read() - before;
        assert_eq!(
            during, 0,
            "round {round}: the gatherer read {during} of 2000 results without any job open"
        );

        let (job, _) = run_job(&cfg, &square_job("range:1..50")).await;
        assert_eq!(job.output, Some(json!(42925)), "round {round}: {job:?}");
        let resumed = read() - before;
        assert!(
            (50..500).contains(&resumed),
            "round {round}: the gatherer read {resumed} results for a 50-task job after 2000 plain ones"
        );
    }
    stop.cancel();
    h.await.unwrap();
}

/// A worker that has just started idles from its first probe: results written
/// while its gatherer was still catching up on the jobs topic, or before its
/// gatherer held any results partition, are skipped too. (It used to idle only
/// from the probe after both, a second in which a fresh worker under load read
/// every result: half of a `sluice bench` saturation run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_gatherer_reads_no_results_while_no_job_is_open() {
    let (_b, cfg) = broker(4);
    let ((stop, h), counters) = ready_worker_counting(&cfg, "w", sluice_worker::builtin()).await;
    let plain: Vec<_> = (0..2000).map(|i| task("noop", json!(i), None)).collect();
    publish(&cfg, &plain).await;
    wait_for_finished(&counters, 2000).await;
    // Long enough for a gatherer that reads them to have read them all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = counters
        .gathered_results
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        read < 20,
        "a fresh gatherer read {read} of 2000 results without any job open"
    );
    // And it still gathers.
    let (job, _) = run_job(&cfg, &square_job("range:1..10")).await;
    assert_eq!(job.output, Some(json!(385)), "{job:?}");
    stop.cancel();
    h.await.unwrap();
}

fn square_job(split: &str) -> JobSpec {
    JobSpec {
        id: None,
        kind: "square".into(),
        split: split.parse().unwrap(),
        gather: GatherSpec::Sum,
        failure: FailurePolicy::default(),
        sub_tasks: Default::default(),
    }
}

async fn wait_for_finished(counters: &sluice_worker::Counters, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while counters.total_finished() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} tasks finished",
            counters.total_finished()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
