//! The per-kind label cache: bounded label values, handles resolved once.

use crate::Status;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

/// Distinct `kind` label values a worker exports; later kinds count as
/// [`OTHER_KIND`]. Each kind costs about 25 series (4 statuses, 19 histogram
/// lines, 3 counters), so 100 kinds stay near 2,500 series per worker.
pub const MAX_KINDS: usize = 100;

/// The label value of kinds past [`MAX_KINDS`].
pub const OTHER_KIND: &str = "other";

/// The label value of records that are not tasks (no kind to name).
pub const UNREADABLE_KIND: &str = "unreadable";

/// The families with a `kind` label.
pub(super) struct Families {
    pub received: IntCounterVec,
    pub finished: IntCounterVec,
    pub duration: HistogramVec,
    pub retries: IntCounterVec,
    pub dead_letters: IntCounterVec,
}

/// Series of one `kind` label value, resolved once; updating them is an atomic
/// add with no label lookup. Get them from [`Metrics::kind`](super::Metrics::kind).
#[derive(Debug)]
pub struct KindMetrics {
    pub(super) received: IntCounter,
    /// Indexed as [`Status::ALL`].
    pub(super) finished: [IntCounter; Status::ALL.len()],
    pub(super) duration: Histogram,
    pub(super) retries: IntCounter,
    pub(super) dead_letters: IntCounter,
}

pub(super) fn status_index(s: Status) -> usize {
    Status::ALL
        .iter()
        .position(|x| *x == s)
        .expect("every status is listed")
}

pub(super) struct Kinds {
    families: Families,
    // Read-mostly: after the first task of each kind, every lookup is a shared
    // read lock and one hash lookup.
    cache: RwLock<HashMap<String, Arc<KindMetrics>>>,
    other: OnceLock<Arc<KindMetrics>>,
}

impl Kinds {
    pub fn new(families: Families) -> Kinds {
        Kinds {
            families,
            cache: RwLock::default(),
            other: OnceLock::new(),
        }
    }

    pub fn get(&self, kind: &str) -> Arc<KindMetrics> {
        let kind = if kind.is_empty() {
            UNREADABLE_KIND
        } else {
            kind
        };
        if let Some(k) = self.cache.read().expect("kinds lock").get(kind) {
            return k.clone();
        }
        let mut cache = self.cache.write().expect("kinds lock");
        if let Some(k) = cache.get(kind) {
            return k.clone();
        }
        if cache.len() >= MAX_KINDS {
            return self
                .other
                .get_or_init(|| Arc::new(self.resolve(OTHER_KIND)))
                .clone();
        }
        let k = Arc::new(self.resolve(kind));
        cache.insert(kind.to_string(), k.clone());
        k
    }

    /// Creates the series (at zero) so dashboards show the kind before its
    /// first event.
    fn resolve(&self, label: &str) -> KindMetrics {
        let f = &self.families;
        KindMetrics {
            received: f.received.with_label_values(&[label]),
            finished: Status::ALL.map(|s| f.finished.with_label_values(&[label, s.as_str()])),
            duration: f.duration.with_label_values(&[label]),
            retries: f.retries.with_label_values(&[label]),
            dead_letters: f.dead_letters.with_label_values(&[label]),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;

    #[test]
    fn kinds_past_the_cap_share_one_label() {
        let m = Metrics::new();
        m.worker_started("w", "g", &["echo"]);
        for i in 0..150 {
            let k = m.kind(&format!("k{i}"));
            m.task_received(&k);
        }
        m.task_received(&m.kind("echo"));
        m.task_received(&m.kind(""));
        let text = m.render();
        let kinds: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("sluice_tasks_received_total{"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(kinds.len(), super::MAX_KINDS + 1, "100 kinds and `other`");
        assert!(kinds.contains("echo"), "registered kinds come first");
        assert!(kinds.contains("other") && !kinds.contains("k149"));
        assert!(
            text.contains("sluice_tasks_received_total{kind=\"other\"} 52"),
            "51 late kinds and the unreadable record: {}",
            text.lines()
                .find(|l| l.contains("\"other\""))
                .unwrap_or_default()
        );
    }

    #[test]
    fn unreadable_records_get_their_own_label() {
        let m = Metrics::new();
        m.task_received(&m.kind(""));
        assert!(m
            .render()
            .contains("sluice_tasks_received_total{kind=\"unreadable\"} 1"));
    }
}
