//! Every metric a dashboard, an alert rule or an alert test uses is one that
//! [`Metrics`] registers, so a renamed metric cannot leave an empty panel or an
//! alert that never fires. Also: every `$variable` in a panel is defined by its
//! dashboard (or built into Grafana).
//!
//! The PromQL scan is lexical: it skips string literals (label values), `$`
//! variables and durations, and takes every identifier that starts with
//! `sluice_`, plus `{__name__="…"}` matchers.

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use sluice_common::metrics::{MetricType, Metrics};
use std::path::{Path, PathBuf};

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// Metric names in one PromQL expression, in order of appearance.
fn metric_names(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = string_end(&chars, i);
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}`.
            i += 1;
            while i < chars.len() && (is_part(chars[i]) || "{}".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_digit() {
            // A number or duration (`5m`, `1e3`): not a name.
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < chars.len() && is_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word == "__name__" {
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if chars.get(j) == Some(&'=') && chars.get(j + 1) != Some(&'~') {
                    j += 1;
                    while j < chars.len() && chars[j].is_whitespace() {
                        j += 1;
                    }
                    if matches!(chars.get(j), Some('"' | '\'' | '`')) {
                        let end = string_end(&chars, j);
                        names.push(chars[j + 1..end - 1].iter().collect());
                        i = end;
                    }
                }
            } else if word.starts_with("sluice_") {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Index just past the string literal that starts at `start`.
fn string_end(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        if chars[i] == '\\' && quote != '`' {
            i += 1;
        }
        i += 1;
    }
    (i + 1).min(chars.len())
}

/// Why `name` is not an exported series of `metrics`, if it is not.
fn unknown(metrics: &Metrics, name: &str) -> Option<String> {
    let registered = |n: &str| metrics.names().find(|(m, _)| *m == n).map(|(_, t)| t);
    match registered(name) {
        Some(MetricType::Histogram) => {
            return Some(format!(
                "`{name}` is a histogram: use {name}_bucket, _sum or _count"
            ))
        }
        Some(_) => return None,
        None => {}
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if registered(base) == Some(MetricType::Histogram) {
                return None;
            }
        }
    }
    Some(format!("`{name}` is not registered by Metrics"))
}

/// Problems with the metric names of `expr`.
fn check(metrics: &Metrics, expr: &str) -> Vec<String> {
    metric_names(expr)
        .iter()
        .filter_map(|n| unknown(metrics, n))
        .collect()
}

/// (where, expression) for every PromQL expression in a dashboard.
fn dashboard_exprs(file: &str, doc: &Json) -> Vec<(String, String)> {
    fn walk(v: &Json, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Json::Object(m) => {
                let here = m
                    .get("title")
                    .or_else(|| m.get("name"))
                    .and_then(Json::as_str)
                    .map_or(at.to_string(), |t| format!("{at} / {t}"));
                if let Some(Json::String(e)) = m.get("expr") {
                    out.push((here.clone(), e.clone()));
                }
                if m.get("type").and_then(Json::as_str) == Some("query") {
                    if let Some(Json::String(d)) = m.get("definition") {
                        out.push((format!("{here} (variable)"), d.clone()));
                    }
                }
                for v in m.values() {
                    walk(v, &here, out);
                }
            }
            Json::Array(items) => items.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, file, &mut out);
    out
}

/// Grafana variables used in `expr`.
fn variables(expr: &str) -> Vec<String> {
    expr.split('$')
        .skip(1)
        .map(|rest| {
            rest.trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn seq(v: &Yaml) -> &[Yaml] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// (where, expression) for every rule of alerts.yml and every series and
/// expression of alerts_test.yml.
fn alert_exprs(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in seq(&yaml(&dir.join("alerts.yml"))["groups"]) {
        for rule in seq(&group["rules"]) {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?");
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            out.push((format!("alerts.yml / {name}"), expr.to_string()));
        }
    }
    for test in seq(&yaml(&dir.join("alerts_test.yml"))["tests"]) {
        let name = test["name"].as_str().unwrap_or("?");
        for s in seq(&test["input_series"]) {
            let series = s["series"].as_str().expect("input series name");
            out.push((format!("alerts_test.yml / {name}"), series.to_string()));
        }
        for t in seq(&test["promql_expr_test"]) {
            let expr = t["expr"].as_str().expect("promql_expr_test expr");
            out.push((format!("alerts_test.yml / {name}"), expr.to_string()));
        }
    }
    out
}

#[test]
fn every_metric_a_dashboard_or_alert_uses_is_registered() {
    let metrics = Metrics::new();
    let dir = dashboards_dir();
    let mut all = Vec::new();
    let mut problems = Vec::new();
    let mut boards = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        boards += 1;
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let doc: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let defined: Vec<&str> = doc["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str())
            .collect();
        let exprs = dashboard_exprs(&file, &doc);
        assert!(exprs.len() >= 5, "{file}: only {} expressions", exprs.len());
        for (at, expr) in &exprs {
            for var in variables(expr) {
                if !var.starts_with("__") && !defined.contains(&var.as_str()) {
                    problems.push(format!("{at}: `${var}` is not a variable of {file}"));
                }
            }
        }
        all.extend(exprs);
    }
    assert!(boards >= 3, "expected the dashboards in {}", dir.display());
    all.extend(alert_exprs(&dir));
    let mut used = std::collections::BTreeSet::new();
    for (at, expr) in &all {
        used.extend(metric_names(expr));
        problems.extend(
            check(&metrics, expr)
                .into_iter()
                .map(|p| format!("{at}: {p}\n    {expr}")),
        );
    }
    assert!(
        problems.is_empty(),
        "dashboards/ uses metrics that Metrics does not export:\n{}",
        problems.join("\n")
    );
    assert!(
        used.len() >= 20,
        "only {} metrics used: {used:?}",
        used.len()
    );
}

#[test]
fn the_scan_finds_names_and_catches_mistakes() {
    let m = Metrics::new();
    assert_eq!(
        metric_names(
            r#"sum by (kind) (rate(sluice_tasks_finished_total{job=~"$job", status!="sluice_x"}[$__rate_interval])) / 1e3"#
        ),
        ["sluice_tasks_finished_total"]
    );
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(sluice_task_duration_seconds_bucket[5m]))) and on() {__name__ = "sluice_ready"}"#
        ),
        ["sluice_task_duration_seconds_bucket", "sluice_ready"]
    );
    assert!(check(
        &m,
        "rate(sluice_task_duration_seconds_count[1m]) + sluice_lag_records"
    )
    .is_empty());

    let typo = check(&m, "sum(rate(sluice_taks_finished_total[5m]))");
    assert_eq!(typo.len(), 1, "{typo:?}");
    assert!(typo[0].contains("sluice_taks_finished_total"), "{typo:?}");
    let bare = check(&m, "rate(sluice_task_duration_seconds[5m])");
    assert!(bare[0].contains("is a histogram"), "{bare:?}");
    assert_eq!(check(&m, r#"{__name__="sluice_nope"}"#).len(), 1);
    assert_eq!(
        check(&m, "sluice_lag_records_bucket").len(),
        1,
        "a gauge has no buckets"
    );

    assert_eq!(
        variables("x{a=~\"$job\"}[${__rate_interval}]"),
        ["job", "__rate_interval"]
    );
}
