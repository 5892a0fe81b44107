//! `sluice dlq`: a task no worker could run is listed with its reason, then
//! replayed once a worker that knows its kind is there.

use crate::harness::{by_task, parse_lines, stderr, Broker, Env};
use std::time::Duration;

#[test]
fn dead_letters_are_listed_and_replayed_to_a_worker_that_can_run_them() {
    let broker = Broker::start();
    let env = Env::new(&broker, "dlq");
    let first = env.spawn(&["worker", "--id", "without-the-kind"]);
    let out = env.run(&[
        "produce",
        "--kind",
        "later-kind",
        "--payload",
        r#""hello""#,
        "--id",
        "dl-1",
        "--key",
        "k1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let results = env.results(1, Duration::from_secs(60));
    assert_eq!(results[0]["status"], "dead_lettered");
    assert!(results[0]["error"]
        .as_str()
        .unwrap()
        .starts_with("unknown kind `later-kind`"));

    let out = env.run(&["dlq", "list", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = parse_lines(&out.stdout);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let h = &listed[0]["headers"];
    assert_eq!(h["sluice.task_id"], "dl-1");
    assert_eq!(h["sluice.kind"], "later-kind");
    assert_eq!(h["sluice.attempts"], "1");
    assert_eq!(h["sluice.worker"], "without-the-kind");
    assert_eq!(h["sluice.original.topic"], env.tasks.as_str());
    assert!(h["sluice.error"].as_str().unwrap().contains("unknown kind"));
    assert_eq!(listed[0]["key"], "k1", "the original key is kept");
    assert!(first.terminate(Duration::from_secs(30)).success());

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("later.toml");
    std::fs::write(
        &cfg,
        "[worker.handlers.later-kind]\ncommand = \"tr\"\nargs = [\"a-z\", \"A-Z\"]\n",
    )
    .unwrap();
    let _second = env.spawn(&[
        "--config",
        cfg.to_str().unwrap(),
        "worker",
        "--id",
        "with-the-kind",
    ]);
    let dry = env.run(&["dlq", "replay", "--kind", "later-kind", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would replay dl-1"));
    let none = env.run(&["dlq", "replay", "--kind", "other-kind"]);
    assert!(
        stderr(&none).contains("0 replayed, 0 skipped, of 0 matching"),
        "{}",
        stderr(&none)
    );
    let out = env.run(&["dlq", "replay", "--id", "dl-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed dl-1 (later-kind)"));

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = env.results(1, Duration::from_secs(60));
        let tasks = by_task(&all);
        if let Some(done) = tasks["dl-1"].iter().find(|r| r["status"] == "succeeded") {
            assert_eq!(done["output"], "HELLO");
            assert_eq!(done["worker"], "with-the-kind");
            assert_eq!(done["attempts"], 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replayed task never succeeded: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
