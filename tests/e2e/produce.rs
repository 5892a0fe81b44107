//! `sluice produce` and configuration errors: clear messages, nothing silently lost.

use crate::harness::{by_task, sluice_bin, stderr, Broker, Env};
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn bad_lines_are_reported_by_number_and_the_rest_are_sent() {
    let broker = Broker::start();
    let env = Env::new(&broker, "lines");
    let _w = env.spawn(&["worker"]);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, r#"{{"kind":"echo","payload":1,"id":"l1"}}"#).unwrap();
    writeln!(file, r#"{{"kind":"echo","payload":2,"id":"l2","key":"k"}}"#).unwrap();
    writeln!(file, r#"{{"kind":"echo", oops"#).unwrap();
    writeln!(file, r#"{{"payload":4}}"#).unwrap();
    writeln!(file, r#"{{"kind":"echo","payload":5,"id":"l5"}}"#).unwrap();
    let out = env.run(&["produce", "--file", file.path().to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("line 3: not a JSON object"), "{err}");
    assert!(
        err.contains("line 4: not a task: field `kind` is missing"),
        "{err}"
    );
    assert!(err.contains("published 3 tasks (lines 1-2, 5)"), "{err}");
    assert!(err.contains("NOT published: 2 (lines 3-4)"), "{err}");
    let results = env.results(3, Duration::from_secs(60));
    let tasks = by_task(&results);
    for id in ["l1", "l2", "l5"] {
        assert_eq!(tasks[id].len(), 1, "{id}");
    }
}

#[test]
fn stdin_input_and_explicit_partitions_work() {
    let broker = Broker::start();
    let env = Env::new(&broker, "stdin");
    let _w = env.spawn(&["worker"]);
    let mut child = env
        .cmd(&["produce", "--file", "-", "--partition", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..5 {
        writeln!(stdin, r#"{{"kind":"square","payload":{i},"id":"s{i}"}}"#).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let results = env.results(5, Duration::from_secs(60));
    let tasks = by_task(&results);
    for i in 0..5i64 {
        let r = tasks[&format!("s{i}")][0];
        assert_eq!(r["output"], i * i);
        assert_eq!(r["partition"], 2);
    }
    let out = env.run(&["produce", "--kind", "noop", "--partition", "99"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("partition 99 does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn oversized_tasks_are_refused_before_sending() {
    let broker = Broker::start();
    let env = Env::new(&broker, "big");
    let payload = format!("\"{}\"", "x".repeat(500));
    let out = env
        .cmd(&["produce", "--kind", "echo", "--payload", &payload])
        .env("SLUICE_PRODUCER__MAX_TASK_BYTES", "200")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("over the 200-byte limit (producer.max_task_bytes)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unreachable_broker_is_named_in_a_bounded_time() {
    for args in [
        &["produce", "--kind", "noop"][..],
        &["worker"][..],
        &["results"][..],
    ] {
        let started = Instant::now();
        let out = Command::new(sluice_bin())
            .args(args)
            .env("SLUICE_BROKERS", "127.0.0.1:1")
            .env("SLUICE_KAFKA__CONNECT_TIMEOUT_MS", "1500")
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("no Kafka broker answered at 127.0.0.1:1 within 1500 ms"),
            "{args:?}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn bad_configuration_is_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[worker]\nconcurency = 3\n").unwrap();
    let out = Command::new(sluice_bin())
        .args(["--config", path.to_str().unwrap(), "worker"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("concurency"), "{}", stderr(&out));
    let out = Command::new(sluice_bin())
        .args(["worker"])
        .env("SLUICE_WORKER__CONCURRENCY", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("worker.concurrency: must be at least 1"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(sluice_bin())
        .args(["produce", "--kind", "x", "--payload", "{oops"])
        .env("SLUICE_BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--payload is not JSON"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn secrets_stay_out_of_logs_and_errors() {
    let broker = Broker::embedded();
    let env = Env::new(&broker, "secrets");
    let secret = "s3cr3t-hunter2";
    for args in [&["produce", "--kind", "noop"][..], &["worker"][..]] {
        let mut child = env
            .cmd(args)
            .env("RUST_LOG", "debug")
            .env("SLUICE_KAFKA__CONNECT_TIMEOUT_MS", "3000")
            .env("SLUICE_KAFKA__SECURITY__PROTOCOL", "sasl_plaintext")
            .env("SLUICE_KAFKA__SECURITY__SASL_MECHANISM", "SCRAM-SHA-512")
            .env("SLUICE_KAFKA__SECURITY__SASL_USERNAME", "sluice")
            .env("SLUICE_KAFKA__SECURITY__SASL_PASSWORD", secret)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // Let it connect, fail to authenticate and log about it.
        std::thread::sleep(Duration::from_secs(5));
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            text.len() > 200,
            "{args:?} logged next to nothing; the test would prove nothing:\n{text}"
        );
        assert!(
            !text.contains(secret),
            "{args:?} printed the secret:\n{text}"
        );
    }
    // A configuration error next to a secret names the field, not the secret.
    let out = env
        .cmd(&["worker"])
        .env("SLUICE_KAFKA__SECURITY__PROTOCOL", "sasl_ssl")
        .env("SLUICE_KAFKA__SECURITY__SASL_MECHANISM", "GSSAPI")
        .env("SLUICE_KAFKA__SECURITY__SASL_USERNAME", "sluice")
        .env("SLUICE_KAFKA__SECURITY__SASL_PASSWORD", secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("kafka.security.sasl_mechanism") && !err.contains(secret),
        "{err}"
    );
}

#[test]
fn a_delayed_task_starts_no_earlier_than_asked() {
    let broker = Broker::start();
    let env = Env::new(&broker, "delay");
    let _w = env.spawn(&["worker"]);
    let out = env.run(&["produce", "--kind", "noop", "--delay", "5x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown unit `x`"),
        "{}",
        stderr(&out)
    );
    // A worker that joins late (Tansu's classic join takes about 3 s here) would
    // find both tasks due at once: wait until it runs a first task.
    let out = env.run(&["produce", "--kind", "noop", "--id", "warm-up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.results(1, Duration::from_secs(60));
    let out = env.run(&[
        "produce", "--kind", "noop", "--id", "soon", "--delay", "1.5s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["produce", "--kind", "noop", "--id", "now"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let results = env.results(3, Duration::from_secs(60));
    let tasks = by_task(&results);
    let soon = tasks["soon"][0];
    let waited = soon["started_ms"].as_u64().unwrap() - soon["created_ms"].as_u64().unwrap();
    assert!(waited >= 1500, "started {waited} ms after creation");
    assert!(waited < 6000, "started {waited} ms after creation");
    // The delayed task held nothing up: the later one finished first.
    assert!(tasks["now"][0]["finished_ms"].as_u64() < soon["started_ms"].as_u64());
}
