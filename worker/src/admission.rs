//! Admission: may a handed-out task still start here?
//!
//! Normally yes. When its partition is being revoked, or the worker is stopping,
//! the answer decides between duplicates and none. Tasks of one partition start
//! out of offset order (different keys run in parallel, queued keys wait), so when
//! we stop, some offsets below the highest started one may not have started yet.
//! If those were abandoned, the commit would stop at the lowest of them and the
//! next owner would re-run every later task that did finish here. So the rule is:
//! once a partition is closing, a task starts only if some task *above* it already
//! started. The abandoned tasks then form a suffix of the partition, the commit
//! lands exactly at its start, and the next owner repeats nothing.
//!
//! Decisions and the "stopping" check are made under one lock, so a task cannot
//! start above the mark after a lower one was refused.

use crate::counters::Counters;
use crate::tracker::Tp;
use foldhash::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
struct PartitionGate {
    epoch: u64,
    highest_started: Option<i64>,
    closing: bool,
}

/// Assignment epochs and the start rule for every assigned partition.
#[derive(Debug)]
pub(crate) struct Admission {
    /// By topic, then partition: every task start looks its gate up by `&str`,
    /// without building a key (a `(String, i32)` key cost an allocation per task).
    gates: Mutex<Gates>,
    stopping: CancellationToken,
    pub counters: Arc<Counters>,
}

type Gates = HashMap<String, HashMap<i32, PartitionGate>>;

impl Admission {
    pub fn new(stopping: CancellationToken, counters: Arc<Counters>) -> Self {
        Admission {
            gates: Mutex::new(HashMap::default()),
            stopping,
            counters,
        }
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, Gates> {
        self.gates.lock().expect("admission lock")
    }

    fn count(&self, g: &Gates) {
        let n = g.values().map(HashMap::len).sum();
        self.counters
            .assigned_partitions
            .store(n, Ordering::Relaxed);
    }

    /// Opens a newly assigned partition under `epoch`.
    pub fn open(&self, (topic, partition): Tp, epoch: u64) {
        let mut g = self.gates();
        g.entry(topic).or_default().insert(
            partition,
            PartitionGate {
                epoch,
                highest_started: None,
                closing: false,
            },
        );
        self.count(&g);
    }

    /// Marks partitions as being revoked: from now on only gap-filling tasks start.
    pub fn close(&self, tps: &[Tp]) {
        let mut g = self.gates();
        for (topic, partition) in tps {
            if let Some(gate) = g.get_mut(topic).and_then(|p| p.get_mut(partition)) {
                gate.closing = true;
            }
        }
    }

    /// Forgets revoked partitions; their late tasks will not start.
    pub fn remove(&self, tps: &[Tp]) {
        let mut g = self.gates();
        for (topic, partition) in tps {
            if let Some(p) = g.get_mut(topic) {
                p.remove(partition);
                if p.is_empty() {
                    g.remove(topic);
                }
            }
        }
        self.count(&g);
    }

    /// Decides whether the task at `offset` may start now, and records it if so.
    pub fn admit(&self, topic: &str, partition: i32, epoch: u64, offset: i64) -> bool {
        let mut g = self.gates();
        let Some(gate) = g.get_mut(topic).and_then(|p| p.get_mut(&partition)) else {
            return false;
        };
        if gate.epoch != epoch {
            return false;
        }
        if gate.closing || self.stopping.is_cancelled() {
            return gate.highest_started.is_some_and(|h| offset < h);
        }
        gate.highest_started = Some(gate.highest_started.map_or(offset, |h| h.max(offset)));
        true
    }

    /// Currently assigned partitions.
    pub fn assigned(&self) -> Vec<Tp> {
        self.gates()
            .iter()
            .flat_map(|(t, p)| p.keys().map(|p| (t.clone(), *p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        ("t".to_string(), 0)
    }

    #[test]
    fn closing_admits_only_the_gaps_below_the_highest_start() {
        let a = Admission::new(CancellationToken::new(), Arc::default());
        a.open(tp(), 1);
        assert!(a.admit("t", 0, 1, 3));
        assert!(a.admit("t", 0, 1, 9));
        a.close(&[tp()]);
        assert!(
            a.admit("t", 0, 1, 5),
            "5 is below a started 9: run it or 9 repeats"
        );
        assert!(
            !a.admit("t", 0, 1, 10),
            "10 is past everything started: leave it"
        );
        assert!(!a.admit("t", 0, 2, 1), "another epoch never starts");
        a.remove(&[tp()]);
        assert!(!a.admit("t", 0, 1, 4));
    }

    #[test]
    fn stopping_applies_the_same_rule_everywhere() {
        let stop = CancellationToken::new();
        let a = Admission::new(stop.clone(), Arc::default());
        a.open(tp(), 1);
        assert!(a.admit("t", 0, 1, 4));
        stop.cancel();
        assert!(a.admit("t", 0, 1, 2));
        assert!(!a.admit("t", 0, 1, 6));
        assert_eq!(a.counters.assigned(), 1);
    }
}
