//! `sluice status`: a group's offsets, lag and commit rate, read from outside the
//! group, on whichever broker the suite runs against.

use crate::harness::Broker;
use crate::harness::{parse_lines, stderr, BrokerKind, Env, Proc};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Runs `status --json` with `extra` flags and returns its one document.
fn status(env: &Env, extra: &[&str]) -> Value {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    let docs = parse_lines(&out.stdout);
    assert_eq!(docs.len(), 1, "one document without --watch: {docs:?}");
    docs.into_iter().next().unwrap()
}

fn committed_sum(s: &Value) -> i64 {
    s["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["committed"].as_i64().unwrap_or(0))
        .sum()
}

/// Each broker's answer about members, as documented in the status module.
fn check_members(env: &Env, s: &Value) {
    let members = &s["members"];
    let why = s["members_unavailable"].as_str();
    assert!(
        members.is_array() != why.is_some(),
        "exactly one of members / members_unavailable: {s}"
    );
    if env.broker.kind == BrokerKind::Embedded {
        // The mock cluster has no ListGroups/DescribeGroups; if that changes,
        // the README's broker notes must change too.
        assert!(
            why.is_some_and(|w| w.contains("does not implement ListGroups")),
            "{s}"
        );
    }
}

#[test]
fn status_sees_the_rate_while_busy_then_zero_lag_and_every_commit() {
    let broker = Broker::start();
    let env = Env::new(&broker, "status-busy");
    // Two at a time, 15 ms each: about 1.5 s of work, long enough to measure.
    let _w = env.spawn(&["worker", "--concurrency", "2"]);
    let out = env.run(&[
        "produce",
        "--kind",
        "sleep",
        "--payload",
        r#"{"ms":15}"#,
        "--count",
        "200",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = env.run(&[
        "results",
        "--wait",
        "5",
        "--timeout-ms",
        "60000",
        "--format",
        "json",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let busy = status(&env, &[]);
    assert!(
        busy["throughput"]["tasks"].as_i64().unwrap() > 0
            && busy["throughput"]["tasks_per_s"].as_f64().unwrap() > 0.0,
        "no commits seen while the worker was busy: {busy}"
    );
    assert!(
        busy["throughput"]["window_ms"].as_u64().unwrap() >= 900,
        "{busy}"
    );

    env.results(200, Duration::from_secs(90));
    // Results are durable before offsets are committed, so the commit can trail
    // the last result by a commit interval.
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let s = status(&env, &[]);
        if s["total_lag"] == 0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(done["total_lag"], 0, "{done}");
    assert_eq!(committed_sum(&done), 200, "{done}");
    assert_eq!(done["committed_total"], 200, "{done}");
    assert_eq!(
        done["group"],
        env.group.as_str(),
        "default group from config"
    );
    assert_eq!(
        done["topic"],
        env.tasks.as_str(),
        "default topic from config"
    );
    for p in done["partitions"].as_array().unwrap() {
        assert_eq!(p["committed"], p["high_watermark"], "{p}");
    }
    check_members(&env, &done);
}

#[test]
fn status_of_a_group_without_workers_counts_every_task_as_lag() {
    let broker = Broker::start();
    let env = Env::new(&broker, "status-idle");
    let out = env.run(&["produce", "--kind", "noop", "--count", "50"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = format!("{}-fresh", env.group);
    let s = status(&env, &["--group", &fresh, "--topic", &env.tasks]);
    assert_eq!(s["group"], fresh.as_str());
    assert_eq!(s["total_lag"], 50, "{s}");
    assert_eq!(s["committed_total"], 0, "{s}");
    let parts = s["partitions"].as_array().unwrap();
    assert!(!parts.is_empty());
    assert!(parts.iter().all(|p| p["committed"].is_null()), "{s}");
    assert_eq!(s["throughput"]["tasks"], 0, "{s}");
    check_members(&env, &s);

    // The table for people says the same.
    let table = env.run(&["status", "--group", &fresh]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("total lag 50"), "{text}");
    assert!(text.contains("PARTITION"), "{text}");
    assert!(
        text.contains("members:") || text.contains("MEMBER"),
        "{text}"
    );
}

#[test]
fn status_watch_streams_documents_until_a_signal() {
    let broker = Broker::start();
    let env = Env::new(&broker, "status-watch");
    let out = env.run(&["produce", "--kind", "noop", "--count", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = env
        .cmd(&["status", "--watch", "--json", "--interval-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn status --watch");
    let stdout = child.stdout.take().unwrap();
    let watch = Proc {
        child,
        name: "sluice status --watch".into(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    for n in 0..3 {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("refresh {n} did not come"));
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["total_lag"], 3, "{doc}");
        let window = doc["throughput"]["window_ms"].as_u64().unwrap();
        // The first refresh samples over a second; later ones over the interval.
        if n > 0 {
            assert!((150..1500).contains(&window), "window {window} ms: {doc}");
        }
    }
    assert!(watch.terminate(Duration::from_secs(10)).success());
}

#[test]
fn status_of_a_missing_topic_fails_naming_it() {
    let broker = Broker::start();
    let env = Env::new(&broker, "status-missing");
    let out = env.run(&["status", "--topic", "no-such-topic-here"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no-such-topic-here") && err.contains("does not exist"),
        "{err}"
    );
}
