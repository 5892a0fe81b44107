//! Poison and bad input from a foreign client, on the selected broker: every bad
//! record ends in the right terminal result and a dead letter with a reason a
//! person understands, and the good tasks around them are unaffected.

use crate::harness::{by_task, stderr, Broker, Env};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

fn send_raw(broker: &Broker, topic: &str, values: &[(Option<&str>, Vec<u8>)]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &broker.addr)
            .create()
            .unwrap();
        for (key, value) in values {
            let mut r = FutureRecord::<str, [u8]>::to(topic).payload(value);
            if let Some(k) = key {
                r = r.key(k);
            }
            p.send(r, Timeout::After(Duration::from_secs(30)))
                .await
                .expect("raw record delivered");
        }
    });
}

#[test]
fn bad_records_and_failing_tasks_are_dead_lettered_with_reasons() {
    let broker = Broker::start();
    let env = Env::new(&broker, "poison");
    let _w = env.spawn_with(
        &["worker"],
        &[
            ("SLUICE_WORKER__MAX_TASK_BYTES", "4000"),
            ("SLUICE_WORKER__RETRY__BACKOFF_INITIAL_MS", "50"),
        ],
    );
    // The worker creates the topics; wait for them before writing raw records.
    assert!(env
        .run(&["results", "--timeout-ms", "20000"])
        .status
        .success());
    let big = format!(
        r#"{{"kind":"echo","id":"big","payload":"{}"}}"#,
        "x".repeat(5000)
    );
    let mut records: Vec<(Option<&str>, Vec<u8>)> = vec![
        (None, b"{this is not json".to_vec()),
        (None, br#"{"id":"no-kind","payload":1}"#.to_vec()),
        (None, big.into_bytes()),
        (None, br#"{"kind":"nonexistent","id":"unknown"}"#.to_vec()),
        (Some("k"), br#"{"kind":"fail","id":"always","payload":{"times":99}}"#.to_vec()),
        (None, br#"{"kind":"fail","id":"permanent","payload":{"permanent":true}}"#.to_vec()),
        (None, br#"{"kind":"sleep","id":"slow","payload":{"ms":20000},"timeout_ms":300,"max_attempts":2}"#.to_vec()),
        (None, br#"{"kind":"echo","id":"expired","deadline_ms":1}"#.to_vec()),
    ];
    let good: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"kind":"square","id":"good-{i}","payload":{i}}}"#))
        .collect();
    records.extend(good.iter().map(|g| (Some("k"), g.clone().into_bytes())));
    send_raw(&broker, &env.tasks, &records);

    let results = env.results(records.len(), Duration::from_secs(90));
    let tasks = by_task(&results);
    println!(
        "RELIABILITY|poison: 8 bad records among 40 good ones|malformed, no kind, oversized, unknown kind, always failing, permanent, timeout, expired|{:?}|{}|{}|{}|{}",
        broker.kind,
        records.len(),
        results.len(),
        records.len() - tasks.len(),
        results.len() - tasks.len()
    );
    assert_eq!(tasks.len(), records.len());
    assert!(
        tasks.values().all(|v| v.len() == 1),
        "one terminal result each"
    );
    let by_error = |needle: &str| {
        results
            .iter()
            .find(|r| r["error"].as_str().is_some_and(|e| e.contains(needle)))
            .unwrap_or_else(|| panic!("no result with error containing {needle:?}: {results:?}"))
    };
    let not_json = by_error("not a task: key must be a string");
    assert_eq!(not_json["status"], "dead_lettered");
    assert_eq!(
        not_json["task_id"],
        format!(
            "{}/{}/{}",
            env.tasks, not_json["partition"], not_json["offset"]
        )
    );
    assert_eq!(by_error("`kind` is missing")["status"], "dead_lettered");
    assert_eq!(
        by_error("over the 4000-byte task limit")["status"],
        "dead_lettered"
    );
    assert!(tasks["unknown"][0]["error"]
        .as_str()
        .unwrap()
        .starts_with("unknown kind `nonexistent`; this worker runs:"));
    assert_eq!(tasks["always"][0]["status"], "dead_lettered");
    assert_eq!(tasks["always"][0]["attempts"], 3);
    assert!(tasks["always"][0]["error"]
        .as_str()
        .unwrap()
        .starts_with("gave up after 3 attempts"));
    assert_eq!(tasks["permanent"][0]["attempts"], 1);
    assert_eq!(
        tasks["slow"][0]["error"],
        "gave up after 2 attempts: timed out after 300 ms"
    );
    assert_eq!(tasks["expired"][0]["status"], "expired");
    for i in 0..40 {
        let r = tasks[&format!("good-{i}")][0];
        assert_eq!(r["status"], "succeeded");
        assert_eq!(r["output"], i * i);
    }

    let out = env.run(&["dlq", "list", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dlq = crate::harness::parse_lines(&out.stdout);
    assert_eq!(dlq.len(), 7, "all but the expired task: {dlq:?}");
    assert!(dlq
        .iter()
        .all(|d| !d["headers"]["sluice.error"].as_str().unwrap().is_empty()));
    let raw = dlq
        .iter()
        .find(|d| d["value"] == "{this is not json")
        .expect("the original bytes are kept");
    assert_eq!(raw["headers"]["sluice.original.topic"], env.tasks.as_str());
}
