//! Interoperability with a foreign Kafka client: kcat (librdkafka's CLI, C).
//!
//! Always on the embedded broker: Debian's kcat (librdkafka 2.0.2) fails the
//! ApiVersions exchange with Tansu 0.6 ("Read underflow"), so a kcat-on-Tansu run
//! would test kcat, not Sluice.

use crate::harness::{Broker, Env};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kcat() -> Command {
    let probe = Command::new("kcat").arg("-V").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "the external-tools suite needs kcat on PATH (Debian package `kcat`; .ci/run installs it)"
    );
    Command::new("kcat")
}

#[test]
fn a_task_published_by_kcat_runs_and_kcat_reads_its_result() {
    let broker = Broker::embedded();
    let env = Env::new(&broker, "kcat");
    let _w = env.spawn(&["worker"]);
    // Wait until the worker created the topics.
    let ok = env.run(&["results", "--timeout-ms", "20000"]);
    assert!(ok.status.success());
    let mut p = kcat()
        .args(["-P", "-b", &broker.addr, "-t", &env.tasks, "-K", "\t"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let stdin = p.stdin.as_mut().unwrap();
        // One task with id and key, one without id: the worker derives it.
        writeln!(
            stdin,
            "user-1\t{{\"kind\":\"echo\",\"id\":\"from-kcat\",\"payload\":{{\"hello\":\"kcat\"}}}}"
        )
        .unwrap();
        writeln!(stdin, "user-2\t{{\"kind\":\"square\",\"payload\":12}}").unwrap();
    }
    assert!(p.wait().unwrap().success(), "kcat -P failed");

    let deadline = Instant::now() + Duration::from_secs(60);
    let records = loop {
        let out = kcat()
            .args([
                "-C",
                "-b",
                &broker.addr,
                "-t",
                &env.results,
                "-e",
                "-q",
                "-o",
                "beginning",
                "-f",
                "%k\t%s\n",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kcat -C failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(records.len(), 2, "{records:?}");
    let parsed: Vec<(String, serde_json::Value)> = records
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_string(), serde_json::from_str(v).unwrap())
        })
        .collect();
    let echo = parsed
        .iter()
        .find(|(k, _)| k == "from-kcat")
        .expect("result keyed by task id");
    assert_eq!(echo.1["status"], "succeeded");
    assert_eq!(echo.1["output"], serde_json::json!({"hello": "kcat"}));
    let square = parsed.iter().find(|(_, v)| v["kind"] == "square").unwrap();
    assert_eq!(square.1["output"], 144);
    let id = square.1["task_id"].as_str().unwrap();
    assert_eq!(
        id,
        format!(
            "{}/{}/{}",
            env.tasks, square.1["partition"], square.1["offset"]
        )
    );
    assert_eq!(square.0, id);
}
