//! The offset tracker: which offset of a partition is safe to commit.
//!
//! Tasks of one partition finish out of order (different keys run in parallel),
//! but Kafka commits a single position per partition. At-least-once means that
//! position may only pass an offset once that task is done and its result is
//! durable. So the committable position is the lowest offset not yet done, or one
//! past the highest offset seen when all are done. Abandoned offsets (tasks that
//! will not run here because the partition was revoked or the worker is stopping)
//! pin the position so the next owner runs them.
//!
//! The tracker also notices offsets that were never handed out: a record whose
//! offset is past the one expected (one past the last record handed out, or, for
//! the first record of an assignment, the group's committed offset). Kafka leaves
//! such gaps when it deleted records by retention before anyone read them, and
//! also where nothing was lost (transaction markers, compaction): `gap` tells
//! them apart and reports them.

use foldhash::HashMap;
use std::collections::BTreeSet;

/// Progress of one partition under one assignment.
#[derive(Debug, Default, Clone)]
pub struct PartitionProgress {
    outstanding: BTreeSet<i64>,
    abandoned: BTreeSet<i64>,
    next: Option<i64>,
    stored: Option<i64>,
    /// Where the group's committed offset says this assignment resumes: what
    /// the first record is compared with, before there is a `next`.
    resume: Option<i64>,
}

impl PartitionProgress {
    /// The partition resumes at `offset` (the group's committed offset): the
    /// first record handed out is expected there.
    pub fn resume_at(&mut self, offset: i64) {
        self.resume = Some(offset);
    }

    /// Records that `offset` was handed out for execution. Returns the offset
    /// that was expected instead when records between were never handed out.
    /// Per record this is one comparison: the resume point was learned at
    /// assignment.
    pub fn start(&mut self, offset: i64) -> Option<i64> {
        self.outstanding.insert(offset);
        let skipped = self.next.or(self.resume).filter(|n| *n < offset);
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
        skipped
    }

    /// Records that `offset` is done (result durable).
    pub fn finish(&mut self, offset: i64) {
        self.outstanding.remove(&offset);
    }

    /// Records that `offset` will not be run here.
    pub fn abandon(&mut self, offset: i64) {
        if self.outstanding.remove(&offset) {
            self.abandoned.insert(offset);
        }
    }

    /// The position to commit: every offset below it is done.
    pub fn committable(&self) -> Option<i64> {
        let low = [self.outstanding.first(), self.abandoned.first()]
            .into_iter()
            .flatten()
            .min()
            .copied();
        low.or(self.next)
    }

    /// The committable position when it moved past the last one taken.
    pub fn take_advance(&mut self) -> Option<i64> {
        let c = self.committable()?;
        if self.stored.is_some_and(|s| s >= c) {
            return None;
        }
        self.stored = Some(c);
        Some(c)
    }

    /// Tasks handed out and neither done nor abandoned.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }
}

/// A partition of a topic.
pub type Tp = (String, i32);

/// Progress of every assigned partition, each tagged with its assignment epoch so
/// that completions from an earlier assignment are ignored.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: HashMap<Tp, (u64, PartitionProgress)>,
}

impl OffsetTracker {
    /// Starts tracking a newly assigned partition.
    pub fn assign(&mut self, tp: Tp, epoch: u64) {
        self.parts.insert(tp, (epoch, PartitionProgress::default()));
    }

    /// Stops tracking a partition.
    pub fn revoke(&mut self, tp: &Tp) -> Option<PartitionProgress> {
        self.parts.remove(tp).map(|(_, p)| p)
    }

    /// The partition's progress when `epoch` is its current assignment.
    pub fn get_mut(&mut self, tp: &Tp, epoch: u64) -> Option<&mut PartitionProgress> {
        self.parts
            .get_mut(tp)
            .filter(|(e, _)| *e == epoch)
            .map(|(_, p)| p)
    }

    /// The partition's current epoch and progress, in one lookup.
    pub fn current_mut(&mut self, tp: &Tp) -> Option<(u64, &mut PartitionProgress)> {
        self.parts.get_mut(tp).map(|(e, p)| (*e, p))
    }

    /// The partition's progress under any epoch.
    pub fn get(&self, tp: &Tp) -> Option<&PartitionProgress> {
        self.parts.get(tp).map(|(_, p)| p)
    }

    /// Current epoch of a partition.
    pub fn epoch(&self, tp: &Tp) -> Option<u64> {
        self.parts.get(tp).map(|(e, _)| *e)
    }

    /// Every tracked partition.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Tp, &mut PartitionProgress)> {
        self.parts.iter_mut().map(|(tp, (_, p))| (tp, p))
    }

    /// Tasks in flight over all partitions.
    pub fn in_flight(&self) -> usize {
        self.parts.values().map(|(_, p)| p.in_flight()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn position_waits_for_the_lowest_unfinished_offset() {
        let mut p = PartitionProgress::default();
        for o in 10..15 {
            p.start(o);
        }
        assert_eq!(p.committable(), Some(10));
        p.finish(11);
        p.finish(12);
        assert_eq!(p.take_advance(), Some(10));
        assert_eq!(p.take_advance(), None, "no advance, no store");
        p.finish(10);
        assert_eq!(p.take_advance(), Some(13));
        p.abandon(13);
        p.finish(14);
        assert_eq!(
            p.committable(),
            Some(13),
            "abandoned offsets pin the position"
        );
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn completions_from_an_old_assignment_are_ignored() {
        let mut t = OffsetTracker::default();
        let tp = ("t".to_string(), 0);
        t.assign(tp.clone(), 1);
        t.get_mut(&tp, 1).unwrap().start(5);
        t.assign(tp.clone(), 2);
        assert!(t.get_mut(&tp, 1).is_none());
        assert_eq!(t.get(&tp).unwrap().committable(), None);
    }

    #[test]
    fn a_gap_is_reported_mid_stream_and_at_the_first_record_after_the_committed_offset() {
        let mut p = PartitionProgress::default();
        assert_eq!(p.start(7), None, "no commit, no expectation");
        assert_eq!(p.start(8), None);
        assert_eq!(p.start(12), Some(9), "9..=11 never handed out");
        assert_eq!(p.start(13), None);

        let mut resumed = PartitionProgress::default();
        resumed.resume_at(100);
        assert_eq!(
            resumed.start(4_000),
            Some(100),
            "resumed past the committed offset: 100..=3999 were deleted"
        );
        assert_eq!(resumed.start(4_001), None);
        resumed.finish(4_000);
        resumed.finish(4_001);
        assert_eq!(
            resumed.committable(),
            Some(4_002),
            "the gap does not hold the position back"
        );

        let mut on_time = PartitionProgress::default();
        on_time.resume_at(100);
        assert_eq!(on_time.start(100), None);
        let mut rewound = PartitionProgress::default();
        rewound.resume_at(100);
        assert_eq!(
            rewound.start(0),
            None,
            "starting before the committed offset skips nothing"
        );
        let idle = {
            let mut p = PartitionProgress::default();
            p.resume_at(100);
            p
        };
        assert_eq!(
            idle.committable(),
            None,
            "a resume point alone is nothing to commit"
        );
    }

    proptest! {
        /// Whatever order tasks finish or are abandoned in, every offset below the
        /// committable position is finished, and the position is as high as that
        /// allows.
        #[test]
        fn committable_never_passes_an_unfinished_offset(
            n in 1usize..60,
            order in proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..80),
            base in 0i64..1000,
        ) {
            let mut p = PartitionProgress::default();
            let offsets: Vec<i64> = (0..n as i64).map(|i| base + i).collect();
            for o in &offsets { p.start(*o); }
            let mut done = std::collections::BTreeSet::new();
            let mut open: Vec<i64> = offsets.clone();
            let mut last = None;
            for (idx, abandon) in order {
                if open.is_empty() { break; }
                let o = open.remove(idx.index(open.len()));
                if abandon { p.abandon(o) } else { p.finish(o); done.insert(o); }
                let c = p.committable().unwrap();
                for o in base..c { prop_assert!(done.contains(&o), "passed unfinished {}", o); }
                let expect = offsets.iter().copied().find(|o| !done.contains(o)).unwrap_or(base + n as i64);
                prop_assert_eq!(c, expect);
                if let Some(s) = p.take_advance() { prop_assert!(last.is_none_or(|l| s > l)); last = Some(s); }
            }
        }
    }
}
