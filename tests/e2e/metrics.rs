//! The worker's HTTP endpoint, from outside: the URL it logs, `/metrics` after
//! real tasks, `/health/ready` before and after it can work, and two workers
//! with default settings on one machine each serving on a port of their own.

use crate::harness::{sluice_bin, Broker, Env, Proc};
use sluice_common::exporter::probe;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Lets the URL line through whatever else is quiet.
const LOG: &str = "warn,sluice_worker=info";

/// Starts `cmd` (a `sluice worker`), passes its stderr through, and returns it
/// with the endpoint address from its "metrics served" log line.
pub fn spawn_serving(mut cmd: Command, name: &str) -> (Proc, SocketAddr) {
    let mut child = cmd
        .env("RUST_LOG", LOG)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice worker");
    let stderr = child.stderr.take().expect("piped");
    let proc = Proc {
        child,
        name: name.to_string(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("metrics served") {
                let _ = tx.send(url_addr(&line));
            }
            eprintln!("{line}");
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{name} logged no \"metrics served\" line within 30 s"))
        .unwrap_or_else(|| panic!("{name}: no http://…/metrics URL in its log line"));
    (proc, addr)
}

/// The address in the first `http://ADDR/metrics` of `line`.
fn url_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("http://")? + "http://".len()..];
    rest[..rest.find("/metrics")?].parse().ok()
}

/// GET, with the context of a failure in the panic.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    probe(addr, path, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// Waits until `/health/ready` answers 200; panics with the last answer.
pub fn wait_ready(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, body) = get(addr, "/health/ready");
        if code == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} not ready after {timeout:?}: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sum over every series of `name` whose labels contain all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn two_workers_with_default_settings_each_serve_and_count_their_tasks() {
    let broker = Broker::start();
    let env = Env::new(&broker, "metrics");
    // Default metrics settings: both start at 127.0.0.1:9464 and search upwards.
    let (w1, a1) = spawn_serving(env.cmd(&["worker", "--id", "m1"]), "worker m1");
    let (w2, a2) = spawn_serving(env.cmd(&["worker", "--id", "m2"]), "worker m2");
    assert_ne!(a1, a2, "two workers on one machine need two endpoints");
    for a in [a1, a2] {
        assert!(a.ip().is_loopback(), "{a}");
        assert!(
            (9464..=9514).contains(&a.port()),
            "{a}: outside 9464 + port_search"
        );
    }
    wait_ready(a1, Duration::from_secs(60));
    wait_ready(a2, Duration::from_secs(60));

    let out = env.run(&["produce", "--kind", "echo", "--count", "40"]);
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    let out = env.run(&[
        "produce",
        "--kind",
        "fail",
        "--payload",
        r#"{"permanent":true}"#,
        "--count",
        "2",
    ]);
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    env.results(42, Duration::from_secs(60));

    let succeeded = [r#"kind="echo""#, r#"status="succeeded""#];
    let dead = [r#"kind="fail""#, r#"status="dead_lettered""#];
    let deadline = Instant::now() + Duration::from_secs(10);
    let (texts, ok) = loop {
        let texts: Vec<String> = [a1, a2]
            .iter()
            .map(|a| {
                let (code, body) = get(*a, "/metrics");
                assert_eq!(code, 200, "{a}/metrics: {body}");
                body
            })
            .collect();
        let total = |labels: &[&str]| -> f64 {
            texts
                .iter()
                .map(|t| sum(t, "sluice_tasks_finished_total", labels))
                .sum()
        };
        let ok = total(&succeeded) == 40.0 && total(&dead) == 2.0;
        if ok || Instant::now() > deadline {
            break (texts, ok);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        ok,
        "expected 40 succeeded echo and 2 dead-lettered fail results across both workers:\n{}\n---\n{}",
        texts[0], texts[1]
    );
    for (t, id) in texts.iter().zip(["m1", "m2"]) {
        assert!(
            t.contains(&format!("worker=\"{id}\"")),
            "sluice_worker_info names {id}"
        );
        assert_eq!(sum(t, "sluice_ready", &[]), 1.0);
        assert!(sum(t, "sluice_partitions_assigned", &[]) >= 1.0);
    }
    let received: f64 = texts
        .iter()
        .map(|t| sum(t, "sluice_tasks_received_total", &[r#"kind="echo""#]))
        .sum();
    assert_eq!(received, 40.0);

    w1.terminate(Duration::from_secs(30));
    w2.terminate(Duration::from_secs(30));
}

/// A worker whose broker is not up yet is live but not ready, and says why;
/// once the broker answers and partitions arrive, it is ready.
#[test]
fn ready_only_once_polling_with_partitions() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let brokers = format!("127.0.0.1:{port}");
    let tag = format!("ready-{}", std::process::id());
    let mut cmd = Command::new(sluice_bin());
    cmd.args(["worker", "--id", "late"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SLUICE_BROKERS", &brokers)
        .env("SLUICE_KAFKA__CONNECT_TIMEOUT_MS", "60000")
        .env("SLUICE_TOPICS__TASKS", format!("tasks-{tag}"))
        .env("SLUICE_TOPICS__RESULTS", format!("results-{tag}"))
        .env("SLUICE_WORKER__GROUP", format!("group-{tag}"))
        .env("SLUICE_WORKER__GROUP_PROTOCOL", "consumer")
        .env("SLUICE_METRICS__LISTEN", "127.0.0.1:0");
    let (worker, addr) = spawn_serving(cmd, "worker late");

    assert_eq!(get(addr, "/health/live"), (200, "live\n".into()));
    let (code, body) = get(addr, "/health/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("starting"), "{body}");
    let (code, metrics) = get(addr, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("sluice_ready 0"), "{metrics}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(get(addr, "/health/ready").0, 503, "still no broker");

    let broker = Command::new(sluice_bin())
        .args(["broker", "--listen", &brokers, "--partitions", "2"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sluice broker");
    let _broker = Proc {
        child: broker,
        name: "sluice broker".into(),
    };
    wait_ready(addr, Duration::from_secs(60));
    let (_, metrics) = get(addr, "/metrics");
    assert!(metrics.contains("sluice_ready 1"), "{metrics}");
    assert!(sum(&metrics, "sluice_partitions_assigned", &[]) >= 1.0);
    worker.terminate(Duration::from_secs(30));
}

#[test]
fn the_url_is_read_from_text_and_json_log_lines() {
    let text = "\u{1b}[2m…\u{1b}[0m metrics served \u{1b}[3murl\u{1b}[0m\u{1b}[2m=\u{1b}[0mhttp://127.0.0.1:9465/metrics";
    assert_eq!(url_addr(text), Some("127.0.0.1:9465".parse().unwrap()));
    let json = r#"{"fields":{"message":"metrics served","url":"http://[::1]:9464/metrics"}}"#;
    assert_eq!(url_addr(json), Some("[::1]:9464".parse().unwrap()));
    assert_eq!(url_addr("metrics served"), None);
}

/// `sluice produce --metrics` reading a stream from stdin: its endpoint counts
/// what Kafka acknowledged and what was refused, while the stream is still open.
#[test]
fn a_producer_streaming_from_stdin_counts_its_publishes() {
    let broker = Broker::start();
    let env = Env::new(&broker, "producer-metrics");
    let mut cmd = env.cmd(&["produce", "--file", "-", "--metrics"]);
    cmd.env("SLUICE_METRICS__LISTEN", "127.0.0.1:0")
        .env("SLUICE_PRODUCER__MAX_TASK_BYTES", "1000")
        .stdin(Stdio::piped());
    let (mut producer, addr) = spawn_serving(cmd, "sluice produce");
    let mut stdin = producer.child.stdin.take().expect("piped");
    let mut lines = String::new();
    for i in 0..30 {
        lines.push_str(&format!("{{\"kind\":\"noop\",\"payload\":{i}}}\n"));
    }
    // Over producer.max_task_bytes: refused before sending.
    lines.push_str(&format!(
        "{{\"kind\":\"noop\",\"payload\":\"{}\"}}\n",
        "x".repeat(2000)
    ));
    // A publisher has no poll thread or partitions: ready once connected.
    assert_eq!(get(addr, "/health/ready"), (200, "ready\n".into()));
    std::io::Write::write_all(&mut stdin, lines.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (status, text) = get(addr, "/metrics");
        assert_eq!(status, 200);
        if sum(&text, "sluice_tasks_published_total", &[]) >= 30.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        sum(&text, "sluice_tasks_published_total", &[]),
        30.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "sluice_publish_failures_total",
            &["reason=\"rejected\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(&text, "sluice_publish_delivery_seconds_count", &[]),
        30.0
    );
    drop(stdin);
    let status = producer.child.wait().unwrap();
    assert!(
        !status.success(),
        "one line was refused, so the exit code says so"
    );
}
