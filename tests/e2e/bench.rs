//! `sluice bench` on a tiny load: the report is complete JSON and no task is
//! lost. Two scenarios keep it short: saturation (Sluice beside the baseline)
//! and a worker joining under load (the most moving parts); the others share
//! their code. The figures themselves are not judged here (timing belongs in
//! docs/BENCHMARKS.md, not in tests).

use crate::harness::{sluice_bin, stderr};
use serde_json::Value;

fn number(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for part in path.split('.') {
        at = match part.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[part],
        };
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("`{path}` is not a number in {v:#}"))
}

fn assert_complete(figures: &Value, published: f64, what: &str) {
    assert_eq!(number(figures, "published"), published, "{what}: {figures}");
    assert_eq!(number(figures, "lost"), 0.0, "{what}: {figures}");
    assert!(number(figures, "tasks_per_s") > 0.0, "{what}: {figures}");
    assert!(
        number(figures, "cpu_us_per_task") > 0.0,
        "{what}: {figures}"
    );
    let (p50, p99) = (
        number(figures, "latency_ms.p50"),
        number(figures, "latency_ms.p99"),
    );
    assert!(0.0 < p50 && p50 <= p99, "{what}: {figures}");
}

#[test]
fn bench_reports_every_scenario_against_the_baseline_without_losing_tasks() {
    let out = std::process::Command::new(sluice_bin())
        .args([
            "bench",
            "--scenario",
            "saturation",
            "add-worker",
            "--tasks",
            "300",
            "--seconds",
            "1",
            "--scale-concurrency",
            "2",
            // Not the embedded broker's default of 4: each run's topics are
            // created with this count (auto-created ones would have 4, and
            // the pipes would wait for partitions that do not exist).
            "--partitions",
            "6",
            "--json",
        ])
        .env_remove("SLUICE_BROKERS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout).expect("the report is JSON");
    assert_eq!(report["lost"], 0, "{report:#}");
    assert_eq!(report["machine"]["broker"], "embedded");
    assert_eq!(report["settings"]["partitions"], 6);

    let sat = &report["saturation"];
    assert_complete(&sat["sluice"], 300.0, "saturation sluice");
    assert_complete(&sat["baseline"], 300.0, "saturation baseline");
    let ratio = number(sat, "ratio.throughput");
    let expect = number(sat, "sluice.tasks_per_s") / number(sat, "baseline.tasks_per_s");
    assert!((ratio - expect).abs() < 1e-6 * expect, "{sat}");

    assert!(report.get("latency").is_none() && report.get("scale_out").is_none());

    let add = &report["add_worker"];
    let published = number(add, "sluice.published");
    assert_complete(&add["sluice"], published, "add-worker");
    assert_eq!(add["per_worker"].as_array().map(Vec::len), Some(2), "{add}");
    assert!(
        !add["timeline_tasks_per_s"].as_array().unwrap().is_empty(),
        "{add}"
    );
    assert!(
        number(add, "time_to_first_task_ms") > 0.0,
        "the second worker ran tasks: {add}"
    );
}
