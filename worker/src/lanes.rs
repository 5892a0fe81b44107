//! Ordering lanes: which tasks may run beside which.
//!
//! A lane is a queue of tasks that must run one after another in offset order.
//! In `key` mode a lane is (partition, key) and keyless tasks have no lane; in
//! `partition` mode a lane is the partition; in `none` mode nothing has a lane.
//! A lane exists only while it has work: the runner that empties it removes it.
//! Only the head of a lane is ever ready; ready tasks then wait for a slot from
//! the [`Scheduler`](crate::scheduler::Scheduler), held only while a handler runs.

use crate::consumer::Incoming;
use crate::execute::Executor;
use sluice_common::config::Ordering;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio_util::task::TaskTracker;

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

    /// Accepts a record: runs it now or queues it behind its lane.
    pub fn submit(self: &Arc<Self>, inc: Incoming) {
        let Some(lane) = self.lane_of(&inc) else {
            // Nothing waits behind a task without a lane: it settles its own
            // outcome, one spawned task per record instead of two.
            let executor = self.executor.clone();
            self.tasks.spawn(async move {
                if let Some(outcome) = executor.run(&inc, false).await {
                    executor.settle(inc, outcome).await;
                }
            });
            return;
        };
        {
            let mut queues = self.queues.lock().expect("lanes lock");
            if let Some(q) = queues.get_mut(&lane) {
                q.push_back(inc);
                return;
            }
            queues.insert(lane.clone(), VecDeque::new());
        }
        let this = self.clone();
        self.tasks
            .spawn(async move { this.run_lane(lane, inc).await });
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
