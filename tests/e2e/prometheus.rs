//! The dashboards and alert rules against a real Prometheus scraping a real
//! worker: every panel of every dashboard must return data, and promtool must
//! accept the configuration, the rules and the rule tests.
//!
//! Needs `prometheus` and `promtool` on PATH (Debian package `prometheus`,
//! which `.ci/run` installs). Run alone with
//! `cargo test --features external-tools --test e2e prometheus`.

use crate::harness::{free_port, Broker, Env, Proc};
use crate::metrics::{get, spawn_serving, wait_ready};
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What Grafana's built-in variables stand for here: Prometheus scrapes every
/// second, so 30 s always holds enough samples for `rate` and `deriv`.
const BUILT_INS: [(&str, &str); 3] = [
    ("$__rate_interval", "30s"),
    ("$__interval", "5s"),
    ("$__range", "5m"),
];

fn dashboards() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Runs a Prometheus tool, panicking with its output unless it succeeds.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("`{program}` could not run ({e}); install the Debian package `prometheus`, which also provides promtool (.ci/run does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {} failed:\n{text}",
        args.join(" ")
    );
    text
}

#[test]
fn promtool_accepts_the_config_the_rules_and_the_rule_tests() {
    let dir = dashboards();
    let at = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let out = tool("promtool", &["check", "config", &at("prometheus.yml")]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = tool("promtool", &["check", "rules", &at("alerts.yml")]);
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let out = tool("promtool", &["test", "rules", &at("alerts_test.yml")]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GETs a Prometheus API path and returns its `data`.
fn api(prom: SocketAddr, path: &str) -> Value {
    let (code, body) = get(prom, path);
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
    assert!(
        code == 200 && v["status"] == "success",
        "GET {path}: {code} {body}"
    );
    v["data"].clone()
}

/// A dashboard: its file, its query variables in order, and its panel
/// expressions (where, expression).
struct Dashboard {
    file: String,
    variables: Vec<(String, String)>,
    exprs: Vec<(String, String)>,
}

fn load_dashboards() -> Vec<Dashboard> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dashboards()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let variables = doc["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["type"] == "query")
            .map(|v| {
                let name = v["name"].as_str().unwrap().to_string();
                let def = v["definition"].as_str().unwrap().to_string();
                (name, def)
            })
            .collect();
        let mut exprs = Vec::new();
        let mut panels: Vec<&Value> = doc["panels"].as_array().unwrap().iter().collect();
        while let Some(p) = panels.pop() {
            panels.extend(p["panels"].as_array().into_iter().flatten());
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    let title = p["title"].as_str().unwrap_or("?");
                    exprs.push((title.to_string(), e.to_string()));
                }
            }
        }
        out.push(Dashboard {
            file: path.file_name().unwrap().to_string_lossy().into_owned(),
            variables,
            exprs,
        });
    }
    assert!(out.len() >= 3, "expected the dashboards in dashboards/");
    out
}

fn substitute(expr: &str, values: &[(String, String)]) -> String {
    let mut e = expr.to_string();
    for (k, v) in BUILT_INS {
        e = e.replace(k, v);
    }
    // Longest names first, so `$job` never eats the start of `$jobs`.
    let mut values = values.to_vec();
    values.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in &values {
        e = e
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    assert!(!e.contains('$'), "unresolved variable in {e}");
    e
}

/// Resolves `label_values(selector, label)` the way Grafana does, taking the
/// first value; `None` while Prometheus has none yet.
fn resolve(prom: SocketAddr, definition: &str, known: &[(String, String)]) -> Option<String> {
    let inner = definition
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("only label_values(…) variables are supported: {definition}"));
    let (selector, label) = inner.rsplit_once(',').unwrap_or(("", inner));
    let mut path = format!("/api/v1/label/{}/values", label.trim());
    if !selector.trim().is_empty() {
        path += &format!("?match[]={}", encode(&substitute(selector.trim(), known)));
    }
    api(prom, &path)
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_string)
}

/// One batch of tasks covering every outcome: successes in several kinds, a
/// retry that succeeds, a permanent failure and one that runs out of attempts
/// (both dead-lettered), an unknown kind, and an expired task.
const BATCH: &str = r#"{"kind":"echo","payload":{"n":1},"key":"a"}
{"kind":"echo","payload":{"n":2},"key":"b"}
{"kind":"echo","payload":{"n":3}}
{"kind":"sleep","payload":{"ms":20}}
{"kind":"sleep","payload":{"ms":5}}
{"kind":"sleep","payload":{"ms":5},"resources":{"cpu":1},"priority":2}
{"kind":"square","payload":7}
{"kind":"noop"}
{"kind":"fail","payload":{"times":1}}
{"kind":"fail","payload":{"permanent":true}}
{"kind":"fail","payload":{"times":9}}
{"kind":"no-such-kind"}
{"kind":"echo","deadline_ms":1}
"#;

/// Publishes `BATCH` and a ten-task job every 300 ms until `stop`.
fn publish_until(env: &Env<'_>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut child = env
            .cmd(&["produce", "--file", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice produce");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(BATCH.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sluice produce: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // And a small job, for the jobs panels.
        let job = env.run(&[
            "job",
            "submit",
            "--kind",
            "square",
            "--split",
            "range:1..10",
            "--gather",
            "sum",
        ]);
        assert!(
            job.status.success(),
            "sluice job submit: {}",
            String::from_utf8_lossy(&job.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn start_prometheus(dir: &Path, worker: SocketAddr) -> (Proc, SocketAddr) {
    let alerts = dashboards().join("alerts.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{worker}']\n",
            alerts.display()
        ),
    )
    .unwrap();
    tool("promtool", &["check", "config", config.to_str().unwrap()]);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("`prometheus` could not start ({e}); install the Debian package `prometheus` (.ci/run does)")
        });
    let proc = Proc {
        child,
        name: "prometheus".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while sluice_common::exporter::probe(addr, "/-/ready", Duration::from_secs(1))
        .map_or(true, |(code, _)| code != 200)
    {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            panic!("prometheus did not get ready on {addr} within 30 s; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (proc, addr)
}

#[test]
fn every_dashboard_panel_has_data_in_a_real_prometheus() {
    let broker = Broker::start();
    let env = Env::new(&broker, "prom");
    let mut cmd = env.cmd(&["worker", "--id", "prom-worker"]);
    cmd.env("SLUICE_METRICS__LISTEN", "127.0.0.1:0")
        .env("SLUICE_METRICS__STATISTICS_INTERVAL_MS", "1000")
        .env("SLUICE_WORKER__RETRY__BACKOFF_INITIAL_MS", "50")
        .env("SLUICE_WORKER__RETRY__BACKOFF_MAX_MS", "100")
        .env("SLUICE_WORKER__SCHEDULER__CAPACITY__CPU", "4");
    let (worker, worker_addr) = spawn_serving(cmd, "worker prom-worker");
    wait_ready(worker_addr, Duration::from_secs(60));

    let tmp = tempfile::tempdir().unwrap();
    let (_prometheus, prom) = start_prometheus(tmp.path(), worker_addr);

    let stop = AtomicBool::new(false);
    let boards = load_dashboards();
    let result = std::thread::scope(|s| {
        let publisher = s.spawn(|| publish_until(&env, &stop));
        // A panic below must still stop the publisher, or the scope waits forever.
        let _stop = StopOnDrop(&stop);
        let deadline = Instant::now() + Duration::from_secs(120);
        let outcome = loop {
            let mut empty = Vec::new();
            let mut queried = 0;
            for b in &boards {
                let mut values = Vec::new();
                for (name, def) in &b.variables {
                    match resolve(prom, def, &values) {
                        Some(v) => values.push((name.clone(), v)),
                        None => {
                            empty.push(format!("{}: variable ${name}: {def}", b.file));
                            break;
                        }
                    }
                }
                if values.len() < b.variables.len() {
                    continue;
                }
                for (title, expr) in &b.exprs {
                    let q = substitute(expr, &values);
                    let data = api(prom, &format!("/api/v1/query?query={}", encode(&q)));
                    queried += 1;
                    if data["result"].as_array().is_none_or(|r| r.is_empty()) {
                        empty.push(format!("{} / {title}: {q}", b.file));
                    }
                }
            }
            if empty.is_empty() {
                break Ok(queried);
            }
            eprintln!("{} panel queries still without data", empty.len());
            if Instant::now() > deadline || publisher.is_finished() {
                break Err(empty);
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        stop.store(true, Ordering::Relaxed);
        publisher.join().expect("publisher");
        outcome
    });
    match result {
        Ok(queried) => assert!(queried >= 40, "only {queried} panel queries"),
        Err(empty) => panic!(
            "{} panel queries returned no data within 120 s:\n{}\nworker metrics:\n{}",
            empty.len(),
            empty.join("\n"),
            get(worker_addr, "/metrics").1
        ),
    }

    // The real rules load and evaluate in a real Prometheus.
    let groups = api(prom, "/api/v1/rules");
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), 7, "{groups}");
    for r in rules {
        assert_eq!(r["health"], "ok", "{r}");
    }
    worker.terminate(Duration::from_secs(30));
}
