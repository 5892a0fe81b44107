//! Faults under load, as processes: a worker killed with SIGKILL, workers added
//! and removed repeatedly. Each test counts task ids on the results topic and
//! asserts that none is lost; duplicates are reported and bounded.
//!
//! Each test prints one `RELIABILITY|…` line; `scripts/reliability-report` turns
//! those into the table in docs/RELIABILITY.md.

use crate::harness::{by_task, free_port, stderr, Broker, Env, Proc};
use sluice_common::exporter::probe;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Tasks a worker may hold handed out and unfinished (its read-ahead).
const BUFFER: usize = 100;

struct Tally {
    sent: usize,
    results: usize,
    lost: usize,
    duplicates: usize,
    /// Duplicates by the worker whose result of the task came first.
    repeated_from: BTreeMap<String, usize>,
}

fn tally(env: &Env, sent: usize, timeout: Duration) -> Tally {
    let waited = env.run(&[
        "results",
        "--wait",
        &sent.to_string(),
        "--timeout-ms",
        &timeout.as_millis().to_string(),
        "--format",
        "json",
    ]);
    let results = crate::harness::parse_lines(&env.run(&["results", "--format", "json"]).stdout);
    if !waited.status.success() {
        // Say which tasks are missing and where they sat, for the post-mortem.
        let seen = by_task(&results);
        let tasks =
            crate::harness::parse_lines(&env.run(&["dlq", "list", "--format", "json"]).stdout);
        eprintln!(
            "{} results for {} tasks; dead letters: {}",
            seen.len(),
            sent,
            tasks.len()
        );
        let mut per_partition: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
        for r in &results {
            per_partition
                .entry(r["partition"].as_i64().unwrap())
                .or_default()
                .push(r["offset"].as_i64().unwrap());
        }
        for (p, mut offsets) in per_partition {
            offsets.sort_unstable();
            offsets.dedup();
            let gaps: Vec<i64> = (0..*offsets.last().unwrap())
                .filter(|o| offsets.binary_search(o).is_err())
                .collect();
            eprintln!(
                "partition {p}: {} offsets with results, last {}, gaps {gaps:?}",
                offsets.len(),
                offsets.last().unwrap()
            );
        }
    }
    let tasks = by_task(&results);
    let mut repeated_from = BTreeMap::new();
    for runs in tasks.values().filter(|v| v.len() > 1) {
        let first = runs
            .iter()
            .min_by_key(|r| r["finished_ms"].as_u64())
            .expect("results");
        *repeated_from
            .entry(first["worker"].as_str().unwrap_or("?").to_string())
            .or_default() += runs.len() - 1;
    }
    Tally {
        sent,
        results: results.len(),
        lost: sent.saturating_sub(tasks.len()),
        duplicates: tasks.values().map(|v| v.len() - 1).sum(),
        repeated_from,
    }
}

fn report(broker: &Broker, test: &str, t: &Tally, fault: &str) {
    println!(
        "RELIABILITY|{test}|{fault}|{:?}|{}|{}|{}|{}",
        broker.kind, t.sent, t.results, t.lost, t.duplicates
    );
}

fn worker(env: &Env, id: &str) -> Proc {
    spawn_worker(id, env.cmd(&[]))
}

/// Workers `ids`, once each holds partitions: the group's last rebalance is
/// over. Until then the mock cluster takes no commit (classic protocol: it
/// answers RebalanceInProgress from the join that starts a rebalance to the sync,
/// `session.timeout.ms` − 1 s or more here, and reads nothing from a member whose
/// join is pending), so a worker killed then repeats all it finished since. A
/// fixed 4 s wait let the third worker join after the first two were assigned,
/// and the victim, with nothing committed, repeated all its results: 737 in a
/// run here, 1,076 and 1,084 with the third worker started 3.5 s late.
fn workers_holding_partitions(env: &Env, ids: &[&str]) -> Vec<Proc> {
    // A port of its own for each worker (`free_port` never repeats one): a worker
    // that cannot listen exits while the probe finds the other one ready.
    let addrs: Vec<SocketAddr> = ids
        .iter()
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let mut started: Vec<(Proc, SocketAddr)> = ids
        .iter()
        .zip(addrs)
        .map(|(id, addr)| {
            let mut cmd = env.cmd(&[]);
            cmd.env("SLUICE_METRICS__LISTEN", addr.to_string())
                .env("SLUICE_METRICS__PORT_SEARCH", "0");
            (spawn_worker(id, cmd), addr)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (w, addr) in &mut started {
        loop {
            if let Some(status) = w.child.try_wait().expect("wait") {
                panic!("{} exited before it held partitions: {status}", w.name);
            }
            // Not listening yet, or 503 until partitions arrive.
            match probe(*addr, "/health/ready", Duration::from_secs(1)) {
                Ok((200, _)) => break,
                last => assert!(
                    Instant::now() < deadline,
                    "{} holds no partitions after 60 s: {last:?}",
                    w.name
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    started.into_iter().map(|(w, _)| w).collect()
}

/// `sluice worker --id id` with the tests' settings, from `cmd` (an `env.cmd`).
fn spawn_worker(id: &str, mut cmd: std::process::Command) -> Proc {
    let child = cmd
        .args(["worker", "--id", id, "--concurrency", "8"])
        .env("SLUICE_WORKER__MAX_BUFFERED_TASKS", BUFFER.to_string())
        .env(
            "RUST_LOG",
            std::env::var("CHAOS_LOG").unwrap_or_else(|_| "off".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn worker");
    crate::harness::Proc {
        child,
        name: format!("worker {id}"),
    }
}

fn produce(env: &Env, count: usize, ms: u64) {
    let out = env.run(&[
        "produce",
        "--kind",
        "sleep",
        "--payload",
        &format!(r#"{{"ms":{ms}}}"#),
        "--count",
        &count.to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn wait_results(env: &Env, n: usize) {
    let out = env.run(&[
        "results",
        "--wait",
        &n.to_string(),
        "--timeout-ms",
        "90000",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_worker_killed_with_sigkill_under_load_loses_nothing() {
    let broker = Broker::start();
    let env = Env::new(&broker, "kill9").classic();
    let workers = workers_holding_partitions(&env, &["w1", "w2", "w3"]);
    let sent = 3000;
    produce(&env, sent, 10);
    wait_results(&env, 600);
    let mut workers = workers.into_iter();
    let (w1, mut victim, w3) = (
        workers.next().unwrap(),
        workers.next().unwrap(),
        workers.next().unwrap(),
    );
    victim.child.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    let t = tally(&env, sent, Duration::from_secs(120));
    report(
        &broker,
        "kill -9 one of three workers",
        &t,
        "SIGKILL mid-run",
    );
    assert_eq!(t.lost, 0, "tasks lost after SIGKILL");
    // The rebalance after the kill refuses commits until it ends, but the
    // survivors keep their partitions (cooperative-sticky) and commit later:
    // they repeat nothing. The victim repeats the results its last commit did
    // not cover: tasks finished after that commit's offsets were stored (one
    // 200 ms interval, plus up to one more for a finished task's offset to be
    // stored, its result acknowledged and stores batched, and for the commit to
    // land: 8 slots × 400 ms / 10 ms tasks = 320; results awaiting their
    // acknowledgement, which the buffer does not count, are among these), and
    // tasks finished above a lower offset still running (at most its buffer).
    // Tasks held but not started wrote nothing and repeat nothing.
    let from_survivors: usize = t
        .repeated_from
        .iter()
        .filter(|(w, _)| *w != "w2")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        from_survivors, 0,
        "survivors' tasks ran again; duplicates by first worker: {:?}",
        t.repeated_from
    );
    assert!(
        t.duplicates <= BUFFER + 8 * 400 / 10,
        "{} duplicates, by first worker: {:?}",
        t.duplicates,
        t.repeated_from
    );
    drop((w1, w3));
    eprintln!("recovered {:?} after the kill", killed_at.elapsed());
}

#[test]
fn adding_and_removing_workers_under_load_loses_nothing() {
    let broker = Broker::start();
    // Each broker's preferred protocol: KIP-848 on the embedded broker. With the
    // classic protocol there, commits during a rebalance fail (RebalanceInProgress)
    // for as long as the rebalance lasts, and everything finished meanwhile runs
    // again: thousands of duplicates in a storm (seen here: 2139 of 3000).
    let env = Env::new(&broker, "storm");
    let _base = [worker(&env, "base-1"), worker(&env, "base-2")];
    std::thread::sleep(Duration::from_secs(4));
    let sent = 3000;
    produce(&env, sent, 10);
    for round in 0..3 {
        let extra = worker(&env, &format!("extra-{round}"));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            extra.terminate(Duration::from_secs(30)).success(),
            "extra worker {round} did not drain cleanly"
        );
    }
    let t = tally(&env, sent, Duration::from_secs(120));
    report(
        &broker,
        "rebalance storm: add and remove a worker 3 times",
        &t,
        "joins and graceful leaves",
    );
    assert_eq!(t.lost, 0, "tasks lost in the rebalance storm");
}

fn alive(w: &mut crate::harness::Proc) -> bool {
    w.child.try_wait().expect("wait").is_none()
}

/// Always the embedded broker: its fault injection is librdkafka's mock cluster's.
///
/// Two causes made this test intermittent, both found with per-task logs over many
/// runs on a loaded machine. A partition paused when it was taken away came back
/// paused for good: librdkafka keeps the pause flag across revoke and re-assign,
/// so the worker now resumes re-assigned partitions. And about one run in six lost
/// one result: under `errors Produce … not_leader`, librdkafka acknowledged a
/// result without an offset (an implicit ack after a later write of the
/// partition succeeded), which is sound on Kafka but not on the mock, which does
/// not check idempotent sequences. The worker now writes such a result again.
#[test]
fn broker_faults_under_load_lose_nothing_and_workers_recover_by_themselves() {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        let broker = Broker::embedded();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            broker_faults_scenario(&broker)
        }));
        let failure = match ran {
            Ok(()) => return,
            Err(failure) => failure,
        };
        // The mock cluster can abort on an assertion of its own under these
        // faults (seen: rd_kafka_mock_cgrp_classic_member_add `!member->resp`,
        // a JoinGroup arriving while the member's previous one is still held).
        // That is the test broker failing, not Sluice: run the scenario again on
        // a fresh broker. Any other failure fails the test at once.
        match broker.exited() {
            Some(status) if attempt < ATTEMPTS => eprintln!(
                "attempt {attempt}: the embedded broker itself died ({status}); running the scenario again on a fresh one"
            ),
            _ => std::panic::resume_unwind(failure),
        }
    }
}

fn broker_faults_scenario(broker: &Broker) {
    let env = Env::new(broker, "faults").classic();
    let mut workers = [worker(&env, "f1"), worker(&env, "f2")];
    std::thread::sleep(Duration::from_secs(4));
    let sent = 2000;
    produce(&env, sent, 5);
    wait_results(&env, 200);
    for fault in [
        "errors Produce 30 not_leader",
        "errors Fetch 20 not_leader",
        "errors OffsetCommit 20 coordinator_not_available",
        "errors Heartbeat 5 rebalance_in_progress",
        "errors JoinGroup 3 coordinator_not_available",
        "errors SyncGroup 3 coordinator_not_available",
        "errors Produce 5 transport",
        "rtt 300",
    ] {
        broker.fault(fault);
        std::thread::sleep(Duration::from_millis(400));
    }
    broker.fault("rtt 0");
    wait_results(&env, 800);
    broker.fault("down");
    std::thread::sleep(Duration::from_secs(3));
    broker.fault("up");
    let t = tally(&env, sent, Duration::from_secs(120));
    report(
        broker,
        "broker faults: request errors, latency, down/up",
        &t,
        "mock fault injection",
    );
    assert_eq!(t.lost, 0, "tasks lost under broker faults");
    assert!(workers.iter_mut().all(alive), "a worker needed a restart");
    // And they still work: new tasks after the faults get results.
    produce(&env, 50, 1);
    let t2 = tally(&env, sent + 50, Duration::from_secs(60));
    assert_eq!(t2.lost, 0);
}

/// Always Tansu: the only broker here that keeps data across a restart.
#[cfg(feature = "external-tools")]
#[test]
fn tansu_restarted_under_load_loses_nothing() {
    let broker = Broker::tansu();
    let env = Env::new(&broker, "tansu-restart").classic();
    let mut workers = [worker(&env, "t1"), worker(&env, "t2")];
    std::thread::sleep(Duration::from_secs(5));
    let sent = 2000;
    produce(&env, sent, 10);
    wait_results(&env, 300);
    broker.restart_tansu(Duration::from_secs(2));
    let t = tally(&env, sent, Duration::from_secs(150));
    report(
        &broker,
        "Tansu killed and restarted (SQLite storage)",
        &t,
        "broker SIGKILL + restart",
    );
    assert_eq!(t.lost, 0, "tasks lost across the broker restart");
    assert!(workers.iter_mut().all(alive), "a worker needed a restart");
}
