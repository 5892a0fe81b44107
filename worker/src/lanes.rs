//! Ordering lanes: which tasks may run beside which.
//!
//! A lane is a queue of tasks that must run one after another in offset order.
//! In `key` mode a lane is (partition, key) and keyless tasks have no lane; in
//! `partition` mode a lane is the partition; in `none` mode nothing has a lane.
//! A lane exists only while it has work: the runner that empties it removes it.
//! Only the head of a lane is ever ready; ready tasks then wait for a slot from
//! the [`Scheduler`](crate::scheduler::Scheduler), held only while a handler runs.
//!
//! Starting: the records of one poll turn start in one spawned task, which
//! polls each record's run once, there and then. A run that finishes in that
//! poll (a handler with nothing to wait for, its result queued) never becomes a
//! task of its own; one that must wait moves, still boxed, into a task of its
//! own, which polls it again with its own waker. A spawned task per record cost
//! about 5 % of a saturated worker's CPU (the runtime's task list, its queue, a
//! wake-up of a parked thread: `perf`, `sluice bench`).

use crate::consumer::Incoming;
use crate::execute::Executor;
use sluice_common::config::Ordering;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio_util::task::TaskTracker;

/// A record's run (or a lane's), boxed: polled where it is made, and moved into
/// a task of its own only if it has to wait.
type Run = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LaneKey {
    topic: Arc<str>,
    partition: i32,
    key: Option<Vec<u8>>,
}

/// Routes records into lanes and runs them under the concurrency limit.
pub(crate) struct Lanes {
    ordering: Ordering,
    queues: Mutex<HashMap<LaneKey, VecDeque<Incoming>>>,
    executor: Arc<Executor>,
    tasks: TaskTracker,
}

impl Lanes {
    pub fn new(ordering: Ordering, executor: Arc<Executor>, tasks: TaskTracker) -> Arc<Self> {
        Arc::new(Lanes {
            ordering,
            queues: Mutex::new(HashMap::new()),
            executor,
            tasks,
        })
    }

    fn lane_of(&self, inc: &Incoming) -> Option<LaneKey> {
        match self.ordering {
            Ordering::None => None,
            Ordering::Partition => Some(LaneKey {
                topic: inc.topic.clone(),
                partition: inc.partition,
                key: None,
            }),
            Ordering::Key => inc.key.as_ref().map(|k| LaneKey {
                topic: inc.topic.clone(),
                partition: inc.partition,
                key: Some(k.clone()),
            }),
        }
    }

    /// Accepts the records of a poll turn, leaving `taken` empty: each runs now
    /// or queues behind its lane.
    pub fn submit(self: &Arc<Self>, taken: &mut Vec<Incoming>) {
        let mut runs: Vec<Run> = Vec::with_capacity(taken.len());
        runs.extend(taken.drain(..).filter_map(|inc| self.route(inc)));
        if runs.len() <= 1 {
            if let Some(run) = runs.pop() {
                self.tasks.spawn(run);
            }
            return;
        }
        let tasks = self.tasks.clone();
        // Unconstrained: each run is polled once here, so none can starve the
        // others, and Tokio's per-task budget would otherwise run out part way
        // through a turn and send the rest to tasks of their own for nothing.
        self.tasks.spawn(tokio::task::unconstrained(async move {
            for mut run in runs {
                if futures::poll!(run.as_mut()).is_pending() {
                    tasks.spawn(run);
                }
            }
        }));
    }

    /// The run that starts `inc`, or `None` when it queued behind its lane.
    fn route(self: &Arc<Self>, inc: Incoming) -> Option<Run> {
        let Some(lane) = self.lane_of(&inc) else {
            // Nothing waits behind a task without a lane: it settles its own
            // outcome, in one run.
            let executor = self.executor.clone();
            return Some(Box::pin(async move {
                if let Some(outcome) = executor.run(&inc, false).await {
                    executor.settle(inc, outcome).await;
                }
            }));
        };
        {
            let mut queues = self.queues.lock().expect("lanes lock");
            if let Some(q) = queues.get_mut(&lane) {
                q.push_back(inc);
                return None;
            }
            queues.insert(lane.clone(), VecDeque::new());
        }
        let this = self.clone();
        Some(Box::pin(async move { this.run_lane(lane, inc).await }))
    }

    async fn run_lane(self: Arc<Self>, lane: LaneKey, first: Incoming) {
        let mut next = Some(first);
        while let Some(inc) = next {
            self.run_one(inc).await;
            let mut queues = self.queues.lock().expect("lanes lock");
            next = match queues.get_mut(&lane).and_then(VecDeque::pop_front) {
                Some(inc) => Some(inc),
                None => {
                    queues.remove(&lane);
                    None
                }
            };
        }
    }

    /// Runs a record of a lane to its outcome (the executor holds a scheduler
    /// slot only while a handler runs; retries wait in the lane). The outcome is made durable
    /// in the background: the next task of the lane may start as soon as this one
    /// is decided, while its offset still waits for the writes.
    async fn run_one(&self, inc: Incoming) {
        if let Some(outcome) = self.executor.run(&inc, true).await {
            let executor = self.executor.clone();
            self.tasks
                .spawn(async move { executor.settle(inc, outcome).await });
        }
    }
}
