//! Weighted fair sharing between lanes, without starvation.
//!
//! Each lane has a minimum share of task starts (`worker.scheduler.min_share`).
//! While a lane has waiting tasks it earns its share in *credit* at every start
//! (of any lane); a start from the lane spends one credit. The next start goes
//! to the lane with the most credit among those holding at least one whole
//! credit, and when none does, to the highest lane with waiting tasks. So under
//! load the high lane takes everything the others' shares leave, and a lane
//! with share `s` waiting through `n` starts gets at least `s·n` of them, minus
//! a constant (the number of lanes): no lane with a share starves.
//!
//! A lane that runs out of waiting tasks drops its credit: shares are owed to
//! lanes while they wait, not saved up for a burst later.

/// Lanes of [`sluice_common::routing::Lane::ALL`].
pub(crate) const LANES: usize = 4;

/// Credits of each lane.
#[derive(Debug, Clone)]
pub(crate) struct FairPicker {
    shares: [f64; LANES],
    credit: [f64; LANES],
}

impl FairPicker {
    /// A picker with minimum `shares` per lane (highest lane first; sum ≤ 1).
    pub fn new(shares: [f64; LANES]) -> Self {
        FairPicker {
            shares,
            credit: [0.0; LANES],
        }
    }

    /// Lanes in the order they should be offered the next start: lanes owed a
    /// start (most credit first), then the rest by rank. Only `waiting` lanes.
    pub fn order(&self, waiting: &[bool; LANES]) -> Vec<usize> {
        let mut owed: Vec<usize> = (0..LANES)
            // The tolerance: 0.2 added five times is a hair under 1.0.
            .filter(|&i| waiting[i] && self.credit[i] >= 1.0 - 1e-9)
            .collect();
        owed.sort_by(|a, b| self.credit[*b].total_cmp(&self.credit[*a]).then(a.cmp(b)));
        let rest: Vec<usize> = (0..LANES)
            .filter(|&i| waiting[i] && !owed.contains(&i))
            .collect();
        owed.extend(rest);
        owed
    }

    /// A task of `lane` started while `waiting` lanes had tasks waiting
    /// (`lane` included).
    pub fn started(&mut self, lane: usize, waiting: &[bool; LANES]) {
        for ((credit, share), waits) in self.credit.iter_mut().zip(self.shares).zip(waiting) {
            if *waits {
                *credit += share;
            } else {
                *credit = 0.0;
            }
        }
        self.credit[lane] = (self.credit[lane] - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `steps` starts where `waiting[step]` says which lanes wait; returns
    /// the lane of each start (None when nothing waits).
    fn run(shares: [f64; LANES], waiting: &[[bool; LANES]]) -> Vec<Option<usize>> {
        let mut p = FairPicker::new(shares);
        waiting
            .iter()
            .map(|w| {
                let lane = p.order(w).first().copied()?;
                p.started(lane, w);
                Some(lane)
            })
            .collect()
    }

    #[test]
    fn under_full_load_each_lane_gets_its_share_and_high_the_rest() {
        let picks = run([0.0, 0.2, 0.1, 0.1], &[[true; LANES]; 1000]);
        let count = |l| picks.iter().filter(|p| **p == Some(l)).count();
        // Lanes owed a start at the same time take turns: within one of exact.
        assert!(count(1).abs_diff(200) <= 1, "{}", count(1));
        assert!(count(2).abs_diff(100) <= 1, "{}", count(2));
        assert!(count(3).abs_diff(100) <= 1, "{}", count(3));
        assert_eq!(count(0), 1000 - count(1) - count(2) - count(3));
        assert!(count(0) >= 598);
    }

    #[test]
    fn without_shares_the_highest_waiting_lane_always_wins() {
        let picks = run([0.0; LANES], &[[false, true, false, true]; 50]);
        assert!(picks.iter().all(|p| *p == Some(1)));
    }

    fn waiting_patterns() -> impl Strategy<Value = Vec<[bool; LANES]>> {
        // Runs of one waiting pattern, so lanes stay backlogged for a while.
        proptest::collection::vec((any::<[bool; LANES]>(), 1usize..200), 1..20).prop_map(|runs| {
            runs.into_iter()
                .flat_map(|(w, n)| std::iter::repeat_n(w, n))
                .collect()
        })
    }

    fn shares() -> impl Strategy<Value = [f64; LANES]> {
        proptest::array::uniform4(0.0f64..1.0).prop_map(|raw| {
            let sum: f64 = raw.iter().sum();
            let scale = if sum > 1.0 { 1.0 / sum } else { 1.0 };
            raw.map(|v| v * scale)
        })
    }

    proptest! {
        /// Over every stretch in which a lane keeps waiting, it gets at least its
        /// share of the starts in that stretch, minus the number of lanes.
        #[test]
        fn no_waiting_lane_falls_below_its_share(shares in shares(), waiting in waiting_patterns()) {
            let picks = run(shares, &waiting);
            for lane in 0..LANES {
                let mut i = 0;
                while i < waiting.len() {
                    if !waiting[i][lane] { i += 1; continue; }
                    let start = i;
                    while i < waiting.len() && waiting[i][lane] { i += 1; }
                    // Every prefix of the stretch, not only the whole of it.
                    let mut got = 0usize;
                    for (n, p) in picks[start..i].iter().enumerate() {
                        got += usize::from(*p == Some(lane));
                        let owed = (shares[lane] * (n + 1) as f64).floor() as i64 - LANES as i64;
                        prop_assert!(got as i64 >= owed, "lane {lane} got {got} of {} starts, share {}", n + 1, shares[lane]);
                    }
                }
            }
        }

        /// A start always goes to a waiting lane, and with every lane's credit
        /// below one it goes to the highest waiting lane.
        #[test]
        fn starts_go_to_waiting_lanes_highest_first(shares in shares(), waiting in waiting_patterns()) {
            let mut p = FairPicker::new(shares);
            for w in &waiting {
                let order = p.order(w);
                let Some(&lane) = order.first() else {
                    prop_assert!(w.iter().all(|x| !x));
                    continue;
                };
                prop_assert!(w[lane]);
                if p.credit.iter().zip(w).all(|(c, w)| !w || *c < 1.0 - 1e-9) {
                    prop_assert_eq!(Some(lane), w.iter().position(|x| *x));
                }
                p.started(lane, w);
            }
        }
    }
}
