//! The human view of a snapshot: a header line, members, partitions, totals.

use super::snapshot::Snapshot;
use std::fmt::Write;

/// Renders `s` as text for a terminal.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let state = s.state.as_deref().unwrap_or("unknown");
    let _ = writeln!(out, "group {}  topic {}  state {state}", s.group, s.topic);
    match (&s.members, &s.members_unavailable) {
        (Some(members), _) if members.is_empty() => {
            let _ = writeln!(out, "members: none");
        }
        (Some(members), _) => {
            let _ = writeln!(out, "\n{:<30} {:<20} PARTITIONS", "MEMBER", "HOST");
            for m in members {
                let parts = match &m.assignment_error {
                    Some(e) => format!("? ({e})"),
                    None => join(&m.partitions),
                };
                let host = if m.host.is_empty() { "-" } else { &m.host };
                let _ = writeln!(out, "{:<30} {:<20} {parts}", m.name(), host);
            }
        }
        (None, why) => {
            let why = why.as_deref().unwrap_or("no reason given");
            let _ = writeln!(out, "members: unavailable from this broker ({why})");
        }
    }
    let _ = writeln!(
        out,
        "\n{:>9} {:>12} {:>12} {:>10}  MEMBER",
        "PARTITION", "COMMITTED", "HIGH", "LAG"
    );
    for p in &s.partitions {
        let committed = p.committed.map_or("-".to_string(), |c| c.to_string());
        let _ = writeln!(
            out,
            "{:>9} {:>12} {:>12} {:>10}  {}",
            p.partition,
            committed,
            p.high_watermark,
            p.lag,
            p.member.as_deref().unwrap_or("-")
        );
    }
    let rate = match &s.throughput {
        Some(t) => format!(
            "{:.1} tasks/s ({} committed in {:.1} s)",
            t.tasks_per_s,
            t.tasks,
            t.window_ms as f64 / 1000.0
        ),
        None => "not measured yet".to_string(),
    };
    let _ = writeln!(
        out,
        "\ntotal lag {}  committed {}  throughput {rate}",
        s.total_lag, s.committed_total
    );
    out
}

fn join(partitions: &[i32]) -> String {
    if partitions.is_empty() {
        return "-".into();
    }
    partitions
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Snapshot {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn says_why_members_are_missing_and_still_shows_partitions() {
        let s = parse(serde_json::json!({
            "group": "g", "topic": "t", "at_ms": 0, "state": null, "members": null,
            "members_unavailable": "it does not implement ListGroups/DescribeGroups",
            "partitions": [{"partition": 0, "committed": null, "low_watermark": 0,
                            "high_watermark": 7, "lag": 7, "member": null}],
            "total_lag": 7, "committed_total": 0, "throughput": null
        }));
        let text = render(&s);
        assert!(
            text.contains(
                "members: unavailable from this broker (it does not implement ListGroups/DescribeGroups)"
            ),
            "{text}"
        );
        assert!(text.contains("total lag 7"), "{text}");
        assert!(text.contains("not measured yet"), "{text}");
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("0 "))
            .unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["0", "-", "7", "7", "-"]
        );
    }

    #[test]
    fn names_members_by_client_id_or_else_member_id() {
        let s = parse(serde_json::json!({
            "group": "g", "topic": "t", "at_ms": 0, "state": "Stable",
            "members": [
                {"member_id": "m-1", "client_id": "worker-a", "host": "/10.0.0.1",
                 "partitions": [0, 2], "assignment_error": null},
                {"member_id": "m-2", "client_id": "", "host": "",
                 "partitions": [], "assignment_error": null}
            ],
            "members_unavailable": null, "partitions": [], "total_lag": 0,
            "committed_total": 0,
            "throughput": {"tasks_per_s": 12.5, "tasks": 25, "window_ms": 2000}
        }));
        let text = render(&s);
        assert!(text.contains("state Stable"), "{text}");
        let a = text.lines().find(|l| l.starts_with("worker-a")).unwrap();
        assert_eq!(
            a.split_whitespace().collect::<Vec<_>>(),
            ["worker-a", "/10.0.0.1", "0,2"]
        );
        let b = text.lines().find(|l| l.starts_with("m-2")).unwrap();
        assert_eq!(b.split_whitespace().collect::<Vec<_>>(), ["m-2", "-", "-"]);
        assert!(
            text.contains("12.5 tasks/s (25 committed in 2.0 s)"),
            "{text}"
        );
    }
}
