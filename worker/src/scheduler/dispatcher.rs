//! The scheduler's decisions, without I/O: which waiting task starts next.
//!
//! A task waits here from the moment it is ready (the oldest unfinished task of
//! its key, its start time reached) until it is granted a slot. A grant needs
//! a free slot under the concurrency limit, a long-lane slot for long tasks,
//! and room for the task's resources next to those of the running tasks. Among
//! those that qualify, [`FairPicker`] chooses the lane and the lane's order
//! (priority, then the queue policy, then arrival) chooses the task.
//!
//! Resources make one more rule necessary: a task that does not fit yet may be
//! passed by later tasks that do ("backfilling"), but only `max_bypass` times;
//! then it reserves the worker and nothing else starts until it fits, so large
//! tasks are delayed, never starved.

use super::fair::{FairPicker, LANES};
use sluice_common::resources::Amounts;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// What the scheduler knows about a waiting task.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ticket {
    /// Index in `Lane::ALL`.
    pub lane: usize,
    /// The task's `priority` (higher first within its lane).
    pub priority: i32,
    /// The queue policy's sort key (smaller first): 0 for FIFO, the expected
    /// run time for shortest-expected-first, the deadline for earliest-deadline-first.
    pub policy_key: u64,
    /// Resources held while it runs.
    pub needs: Amounts,
    /// When its record was handed out (`Incoming::arrival`): first come, first
    /// served among equals.
    pub arrival: u64,
}

/// Position of a waiting task in its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Place {
    priority: Reverse<i32>,
    policy_key: u64,
    arrival: u64,
    /// Order of enqueueing: keeps equal places apart.
    seq: u64,
}

struct Waiting<W> {
    ticket: Ticket,
    waker: W,
    bypassed: u32,
}

/// Limits the dispatcher enforces.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Tasks running at once.
    pub concurrency: usize,
    /// Long-lane tasks running at once.
    pub long_slots: usize,
    /// Resources to share; `None` when resources are not accounted.
    pub capacity: Option<Amounts>,
    /// Times a task may be passed before it reserves the worker.
    pub max_bypass: u32,
}

/// Waiting and running tasks; `W` wakes a task when it is granted.
pub(crate) struct Dispatcher<W> {
    limits: Limits,
    running: usize,
    running_by_lane: [usize; LANES],
    in_use: Amounts,
    queues: [BTreeMap<Place, Waiting<W>>; LANES],
    picker: FairPicker,
    reserved: Option<(usize, Place)>,
    next_seq: u64,
}

/// The long lane's index in `Lane::ALL`.
const LONG: usize = 2;

impl<W> Dispatcher<W> {
    pub fn new(limits: Limits, shares: [f64; LANES]) -> Self {
        Dispatcher {
            limits,
            running: 0,
            running_by_lane: [0; LANES],
            in_use: Amounts::default(),
            queues: Default::default(),
            picker: FairPicker::new(shares),
            reserved: None,
            next_seq: 0,
        }
    }

    /// Adds a ready task.
    pub fn enqueue(&mut self, ticket: Ticket, waker: W) {
        let place = Place {
            priority: Reverse(ticket.priority),
            policy_key: ticket.policy_key,
            arrival: ticket.arrival,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.queues[ticket.lane].insert(
            place,
            Waiting {
                ticket,
                waker,
                bypassed: 0,
            },
        );
    }

    /// Starts `ticket` at once, without queueing it, when nothing waits and it
    /// may run now: exactly what [`enqueue`](Self::enqueue) and
    /// [`next`](Self::next) would decide for it, minus the queue. Returns false
    /// (and changes nothing) otherwise; the caller then enqueues it.
    pub fn start_now(&mut self, ticket: &Ticket) -> bool {
        if self.running >= self.limits.concurrency
            || self.queues.iter().any(|q| !q.is_empty())
            || (ticket.lane == LONG && self.running_by_lane[LONG] >= self.limits.long_slots)
            || !self.fits(&ticket.needs)
        {
            return false;
        }
        let mut waiting = [false; LANES];
        waiting[ticket.lane] = true;
        self.picker.started(ticket.lane, &waiting);
        self.running += 1;
        self.running_by_lane[ticket.lane] += 1;
        self.in_use.add(&ticket.needs);
        true
    }

    /// The next task to start, now counted as running; `None` when nothing may
    /// start. Call until `None` after every enqueue, release or limit change.
    pub fn next(&mut self) -> Option<(Ticket, W)> {
        if self.running >= self.limits.concurrency {
            return None;
        }
        let waiting: [bool; LANES] = std::array::from_fn(|i| !self.queues[i].is_empty());
        if let Some((lane, place)) = self.reserved {
            let w = &self.queues[lane][&place];
            if !self.fits(&w.ticket.needs)
                || (lane == LONG && self.running_by_lane[LONG] >= self.limits.long_slots)
            {
                return None;
            }
            self.reserved = None;
            self.picker.started(lane, &waiting);
            return Some(self.grant(lane, place));
        }
        for lane in self.picker.order(&waiting) {
            if lane == LONG && self.running_by_lane[LONG] >= self.limits.long_slots {
                continue;
            }
            let Some(place) = self.queues[lane]
                .iter()
                .find(|(_, w)| self.fits(&w.ticket.needs))
                .map(|(p, _)| *p)
            else {
                continue;
            };
            // Everything ahead of `place` in its lane did not fit: it is passed.
            let max = self.limits.max_bypass;
            for (p, w) in self.queues[lane].range_mut(..place) {
                w.bypassed += 1;
                if w.bypassed > max && self.reserved.is_none() {
                    self.reserved = Some((lane, *p));
                }
            }
            if self.reserved.is_some() {
                // The passed task reserved the worker instead; try it next turn.
                return self.next();
            }
            self.picker.started(lane, &waiting);
            return Some(self.grant(lane, place));
        }
        None
    }

    fn grant(&mut self, lane: usize, place: Place) -> (Ticket, W) {
        let w = self.queues[lane].remove(&place).expect("place is queued");
        self.running += 1;
        self.running_by_lane[lane] += 1;
        self.in_use.add(&w.ticket.needs);
        (w.ticket, w.waker)
    }

    /// A granted task finished (or its grant was not taken up).
    pub fn release(&mut self, ticket: &Ticket) {
        self.running -= 1;
        self.running_by_lane[ticket.lane] -= 1;
        self.in_use.sub(&ticket.needs);
    }

    fn fits(&self, needs: &Amounts) -> bool {
        match &self.limits.capacity {
            None => true,
            Some(cap) => self.in_use.fits_with(needs, cap),
        }
    }

    /// Changes the concurrency limit (adaptive concurrency). Running tasks are
    /// not stopped; fewer start until the count is under the new limit.
    pub fn set_concurrency(&mut self, limit: usize) {
        self.limits.concurrency = limit.max(1);
    }

    /// The current concurrency limit.
    pub fn concurrency(&self) -> usize {
        self.limits.concurrency
    }

    /// Tasks waiting per lane.
    pub fn waiting(&self) -> [usize; LANES] {
        std::array::from_fn(|i| self.queues[i].len())
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Resources held by running tasks.
    pub fn in_use(&self) -> &Amounts {
        &self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amounts(cpu: f64, mem: f64) -> Amounts {
        Amounts(
            [("cpu".to_string(), cpu), ("memory_mb".to_string(), mem)]
                .into_iter()
                .collect(),
        )
    }

    fn limits(concurrency: usize, capacity: Option<Amounts>) -> Limits {
        Limits {
            concurrency,
            long_slots: concurrency,
            capacity,
            max_bypass: 3,
        }
    }

    fn ticket(lane: usize, priority: i32, key: u64) -> Ticket {
        Ticket {
            lane,
            priority,
            policy_key: key,
            needs: Amounts::default(),
            arrival: 0,
        }
    }

    fn drain(d: &mut Dispatcher<u32>) -> Vec<u32> {
        std::iter::from_fn(|| d.next().map(|(_, w)| w)).collect()
    }

    #[test]
    fn within_a_lane_priority_then_policy_key_then_arrival() {
        let mut d = Dispatcher::new(limits(10, None), [0.0; LANES]);
        d.enqueue(ticket(1, 0, 50), 1);
        d.enqueue(ticket(1, 0, 10), 2);
        d.enqueue(ticket(1, 3, 90), 3);
        d.enqueue(ticket(1, 0, 10), 4);
        assert_eq!(drain(&mut d), vec![3, 2, 4, 1]);
    }

    #[test]
    fn among_equals_the_record_handed_out_first_starts_first_whatever_the_enqueue_order() {
        let mut d = Dispatcher::new(limits(10, None), [0.0; LANES]);
        let at = |arrival| Ticket {
            arrival,
            ..ticket(1, 0, 0)
        };
        // Spawned tasks reach the scheduler in the runtime's order, not the records'.
        d.enqueue(at(53), 53);
        d.enqueue(at(3), 3);
        d.enqueue(at(54), 54);
        d.enqueue(at(4), 4);
        assert_eq!(drain(&mut d), vec![3, 4, 53, 54]);
    }

    #[test]
    fn a_task_starts_at_once_only_when_nothing_waits_and_it_may_run() {
        let mut d = Dispatcher::new(limits(2, None), [0.0; LANES]);
        assert!(d.start_now(&ticket(1, 0, 0)));
        d.enqueue(ticket(1, 0, 0), 7);
        assert!(!d.start_now(&ticket(0, 9, 0)), "another task waits");
        assert_eq!(drain(&mut d), vec![7]);
        assert!(!d.start_now(&ticket(1, 0, 0)), "no free slot");
        assert_eq!(d.running(), 2);
    }

    #[test]
    fn concurrency_and_long_slots_bound_starts() {
        let mut d = Dispatcher::new(
            Limits {
                long_slots: 1,
                ..limits(2, None)
            },
            [0.0; LANES],
        );
        d.enqueue(ticket(LONG, 0, 0), 1);
        d.enqueue(ticket(LONG, 0, 0), 2);
        d.enqueue(ticket(3, 0, 0), 3);
        let (t1, w1) = d.next().unwrap();
        assert_eq!(w1, 1);
        assert_eq!(d.next().map(|x| x.1), Some(3), "second long task waits");
        assert!(d.next().is_none());
        d.release(&t1);
        assert_eq!(d.next().map(|x| x.1), Some(2));
    }

    #[test]
    fn a_large_task_is_passed_at_most_max_bypass_times() {
        let cap = amounts(4.0, 1000.0);
        let mut d = Dispatcher::new(limits(100, Some(cap)), [0.0; LANES]);
        let small = |d: &mut Dispatcher<u32>, id| {
            d.enqueue(
                Ticket {
                    needs: amounts(1.0, 0.0),
                    ..ticket(1, 0, 0)
                },
                id,
            )
        };
        small(&mut d, 0);
        let (first, _) = d.next().unwrap();
        d.enqueue(
            Ticket {
                needs: amounts(4.0, 0.0),
                ..ticket(1, 0, 0)
            },
            99,
        );
        let mut running = vec![first];
        let mut started = vec![];
        for id in 1..10 {
            small(&mut d, id);
            while let Some((t, w)) = d.next() {
                started.push(w);
                running.push(t);
            }
            // One small task finishes per round.
            let t = running.remove(0);
            d.release(&t);
        }
        while let Some((t, w)) = d.next() {
            started.push(w);
            running.push(t);
        }
        let big = started
            .iter()
            .position(|w| *w == 99)
            .expect("big task started");
        assert!(big <= 3 + 1, "passed {big} times: {started:?}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue { lane: usize, cpu: u8, mem: u16 },
        Finish(usize),
        Limit(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                4 => (0..LANES, 0u8..6, 0u16..1200).prop_map(|(lane, cpu, mem)| Op::Enqueue { lane, cpu, mem }),
                3 => any::<usize>().prop_map(Op::Finish),
                1 => (1usize..6).prop_map(Op::Limit),
            ],
            1..300,
        )
    }

    proptest! {
        /// Whatever arrives and finishes, the running tasks' resources never
        /// exceed the capacity, the running count never exceeds the limit, and
        /// nothing that fits an idle worker waits for ever.
        #[test]
        fn capacity_and_limits_are_never_exceeded(ops in ops(), bypass in 0u32..5) {
            let cap = amounts(4.0, 1000.0);
            let mut d: Dispatcher<u32> = Dispatcher::new(
                Limits { concurrency: 3, long_slots: 1, capacity: Some(cap.clone()), max_bypass: bypass },
                [0.1, 0.2, 0.1, 0.1],
            );
            let mut running: Vec<Ticket> = vec![];
            let mut limit = 3;
            for op in ops {
                match op {
                    Op::Enqueue { lane, cpu, mem } => {
                        let needs = amounts(f64::from(cpu), f64::from(mem));
                        // Tasks that can never fit are rejected before they queue.
                        if needs.exceeding(&cap).is_none() {
                            let t = Ticket { needs, ..ticket(lane, 0, 0) };
                            // Half of them take the fast path, as the scheduler does.
                            if cpu % 2 == 0 && d.start_now(&t) {
                                running.push(t);
                            } else {
                                d.enqueue(t, 0);
                            }
                        }
                    }
                    Op::Finish(i) if !running.is_empty() => {
                        let t = running.remove(i % running.len());
                        d.release(&t);
                    }
                    Op::Finish(_) => {}
                    Op::Limit(l) => { limit = l; d.set_concurrency(l); }
                }
                while let Some((t, _)) = d.next() {
                    running.push(t);
                    let mut sum = Amounts::default();
                    for r in &running { sum.add(&r.needs); }
                    prop_assert!(sum.exceeding(&cap).is_none(), "over capacity: {sum}");
                    prop_assert!(running.len() <= limit);
                    prop_assert!(running.iter().filter(|r| r.lane == LONG).count() <= 1);
                }
            }
            // Let everything finish: every queued task eventually starts.
            let mut rounds = 0;
            while d.waiting().iter().sum::<usize>() > 0 {
                while let Some((t, _)) = d.next() { running.push(t); }
                if let Some(t) = running.pop() { d.release(&t); }
                rounds += 1;
                prop_assert!(rounds < 10_000, "tasks stuck: {:?}", d.waiting());
            }
        }
    }
}
