//! The scheduler: which ready task gets the next slot.
//!
//! `lanes` keeps per-key order (only the oldest unfinished task of a key is
//! ever ready) and `execute` waits out start times; every ready attempt then
//! asks the scheduler for a slot with a [`Ticket`] and runs while it holds the
//! returned [`Slot`]. The scheduler replaces a plain semaphore with:
//!
//! - lanes by priority (`high`, `normal`, `low`) and a `long` lane, shared by
//!   minimum shares without starvation ([`fair`]);
//! - an order within each lane: `priority`, then the queue policy (FIFO,
//!   shortest-expected-first, earliest-deadline-first), then arrival;
//! - resource capacity: a task starts only while the running tasks' needs and
//!   its own fit ([`dispatcher`]);
//! - learned per-kind run times for shortest-expected-first ([`estimates`]);
//! - per-kind rate limits ([`rate`]) and adaptive concurrency ([`adaptive`]).
//!
//! A task that can never run here (needs more than the capacity, or belongs to
//! another pool) is refused by [`Scheduler::plan`] before it waits, and the
//! executor dead-letters it with the reason.
//!
//! # Layout
//! - [`fair`]: the fair-share lane picker.
//! - [`dispatcher`]: the synchronous decision core (slots, long slots, resources, backfilling).
//! - [`estimates`]: per-kind run-time estimates (EWMA).
//! - [`history`]: estimates seeded from the results topic at start.
//! - [`rate`]: per-kind token buckets.
//! - [`adaptive`]: AIMD on the concurrency limit.
//! - [`scaling`]: the scaling signal (workers the group needs).

pub(crate) mod adaptive;
pub(crate) mod dispatcher;
pub(crate) mod estimates;
pub(crate) mod fair;
pub(crate) mod history;
pub(crate) mod rate;
pub(crate) mod scaling;

use adaptive::Aimd;
pub(crate) use dispatcher::Ticket;
use dispatcher::{Dispatcher, Limits};
use estimates::Estimates;
use rate::RateLimits;
use sluice_common::config::{QueuePolicy, WorkerConfig};
use sluice_common::resources::{Amounts, Needs};
use sluice_common::routing::{Lane, Routes};
use sluice_common::{Metrics, Task};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// One worker's scheduler.
pub(crate) struct Scheduler {
    core: Mutex<Dispatcher<oneshot::Sender<()>>>,
    /// The long lane's topic, when this worker consumes one: named once, not
    /// for every task (`Routes::lane_of_topic` formats each lane's name).
    long_topic: Option<String>,
    pool: Option<String>,
    policy: QueuePolicy,
    capacity: Option<Amounts>,
    estimates: Estimates,
    rates: RateLimits,
    aimd: Option<Mutex<Aimd>>,
    metrics: Arc<Metrics>,
}

impl Scheduler {
    /// The scheduler for a worker consuming `routes`.
    pub fn new(cfg: &WorkerConfig, routes: Routes, metrics: Arc<Metrics>) -> Arc<Self> {
        let s = &cfg.scheduler;
        let capacity = (!s.capacity.is_empty()).then(|| Amounts(s.capacity.clone()));
        let aimd = s
            .adaptive
            .enabled
            .then(|| Mutex::new(Aimd::new(&s.adaptive, cfg.concurrency)));
        let concurrency = aimd
            .as_ref()
            .map_or(cfg.concurrency, |a| a.lock().expect("aimd lock").limit());
        let limits = Limits {
            concurrency,
            long_slots: s.long_slots.unwrap_or(cfg.concurrency.div_ceil(2)),
            capacity: capacity.clone(),
            max_bypass: s.max_bypass,
        };
        if let Some(c) = &capacity {
            metrics.capacity_declared(c);
        }
        let rates = RateLimits::new(
            cfg.kinds
                .iter()
                .filter_map(|(k, v)| v.rate_per_s.map(|r| (k.as_str(), r))),
        );
        let sched = Arc::new(Scheduler {
            core: Mutex::new(Dispatcher::new(limits, s.min_share.as_array())),
            long_topic: routes
                .lanes()
                .contains(&Lane::Long)
                .then(|| routes.topic(Lane::Long)),
            pool: cfg.pool.clone(),
            policy: s.policy,
            capacity,
            estimates: Estimates::new(s.estimate_weight, s.default_expected_ms),
            rates,
            aimd,
            metrics,
        });
        sched.report(&sched.core());
        sched
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Dispatcher<oneshot::Sender<()>>> {
        self.core.lock().expect("scheduler lock")
    }

    /// The ticket of `task`, read from `topic`; an error (the dead-letter
    /// reason) when the task can never run on this worker.
    pub fn plan(&self, topic: &str, task: &Task) -> Result<Ticket, String> {
        let needs = Needs::parse(task.resources.as_ref())?;
        if needs.class != self.pool {
            let name = |p: &Option<String>| p.clone().unwrap_or_else(|| "(general)".into());
            return Err(format!(
                "task asks for pool {} but reached a worker of pool {} on topic {topic}; publish it with a Sluice producer, which routes it by `resources.class`",
                name(&needs.class),
                name(&self.pool)
            ));
        }
        if let Some(cap) = &self.capacity {
            if let Some((name, need, have)) = needs.amounts.exceeding(cap) {
                return Err(format!(
                    "task needs {name}={need} but this worker's capacity is {name}={have} (capacity: {cap}); it can never start here"
                ));
            }
        }
        let lane = if self.long_topic.as_deref() == Some(topic) {
            Lane::Long
        } else {
            Lane::for_priority(task.priority)
        };
        let policy_key = match self.policy {
            QueuePolicy::Fifo => 0,
            QueuePolicy::ShortestExpectedFirst => {
                self.estimates.expected_ms(&task.kind, task.expected_ms)
            }
            QueuePolicy::EarliestDeadlineFirst => task.deadline_ms.unwrap_or(u64::MAX),
        };
        Ok(Ticket {
            lane: lane.index(),
            priority: task.priority.unwrap_or(0),
            policy_key,
            // Not accounted without a capacity: nothing to count against.
            needs: if self.capacity.is_some() {
                needs.amounts
            } else {
                Amounts::default()
            },
            // Set by the caller, who knows the record.
            arrival: 0,
        })
    }

    /// Waits for `kind`'s rate limit, then for a slot.
    pub async fn acquire(self: &Arc<Self>, kind: &str, ticket: &Ticket) -> Slot {
        if self.rates.admit(kind).await {
            self.metrics.rate_limited();
        }
        let saturated;
        let rx = {
            let mut core = self.core();
            saturated = core.running() >= core.concurrency();
            // Nothing waits and a slot is free: no queue, no channel, no wake-up.
            if core.start_now(ticket) {
                self.report(&core);
                None
            } else {
                let (tx, rx) = oneshot::channel();
                core.enqueue(ticket.clone(), tx);
                self.dispatch(&mut core);
                Some(rx)
            }
        };
        // The sender lives in the dispatcher until it is granted; the dispatcher
        // is never dropped while a worker runs.
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        Slot {
            sched: self.clone(),
            ticket: ticket.clone(),
            saturated,
        }
    }

    /// Grants every slot that can be granted now.
    fn dispatch(&self, core: &mut Dispatcher<oneshot::Sender<()>>) {
        while let Some((ticket, tx)) = core.next() {
            if tx.send(()).is_err() {
                // The waiter is gone (its future was dropped): give the slot back.
                core.release(&ticket);
            }
        }
        self.report(core);
    }

    /// Seeds the run-time estimates of `kinds` from the results topic when the
    /// policy uses them (see [`history`]); logs the outcome.
    pub async fn learn_history(self: Arc<Self>, cfg: sluice_common::Config, kinds: Vec<String>) {
        let per_partition = cfg.worker.scheduler.history_results;
        if self.policy != QueuePolicy::ShortestExpectedFirst || per_partition == 0 {
            return;
        }
        let kinds = kinds.into_iter().collect();
        let this = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            history::seed(&cfg, per_partition, &kinds, &this.estimates)
        })
        .await;
        match read {
            Ok(Ok(n)) => tracing::info!(
                results = n,
                "run-time estimates seeded from the results topic"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read the results topic for run-time estimates; learning from this worker's attempts only")
            }
            Err(_) => {}
        }
    }

    /// Publishes the scaling signal (metric and `counters`) every `interval`
    /// until `stop`.
    pub async fn signal_scaling(
        self: Arc<Self>,
        counters: Arc<crate::Counters>,
        drain_s: f64,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let t0 = tokio::time::Instant::now();
        let sample = || scaling::Sample {
            at_s: t0.elapsed().as_secs_f64(),
            lag: self.metrics.lag_records(),
            finished: counters.total_finished(),
        };
        let mut prev = sample();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
            let now = sample();
            let worker = scaling::Worker {
                limit: self.core().concurrency(),
                mean_run_s: self.estimates.mean_attempt_s(),
                partitions: counters.assigned(),
                lagging: self.metrics.lagging_partitions(),
                drain_s,
            };
            let need = scaling::needed_workers(prev, now, worker);
            self.metrics.scaling_signal(need);
            counters.scaling_signal(need);
            prev = now;
        }
    }

    fn report(&self, core: &Dispatcher<oneshot::Sender<()>>) {
        let waiting = core.waiting();
        let lanes: Vec<(&str, usize)> = Lane::ALL
            .iter()
            .map(|l| (l.as_str(), waiting[l.index()]))
            .collect();
        let none = Amounts::default();
        self.metrics.scheduler_state(
            &lanes,
            core.in_use(),
            self.capacity.as_ref().unwrap_or(&none),
            core.concurrency(),
        );
    }
}

/// A granted slot: the task runs while this is held.
pub(crate) struct Slot {
    sched: Arc<Scheduler>,
    ticket: Ticket,
    saturated: bool,
}

impl Slot {
    /// The lane's label value.
    pub fn lane(&self) -> &'static str {
        Lane::ALL[self.ticket.lane].as_str()
    }

    /// The attempt ran for `elapsed`: feeds the estimates (successes) and
    /// adaptive concurrency.
    pub fn ran(&self, kind: &str, elapsed: Duration, ok: bool) {
        self.sched.estimates.attempt(elapsed);
        if ok {
            self.sched.estimates.observe(kind, elapsed);
        }
        if let Some(aimd) = &self.sched.aimd {
            let changed = aimd
                .lock()
                .expect("aimd lock")
                .observe(elapsed, ok, self.saturated);
            if let Some(limit) = changed {
                let mut core = self.sched.core();
                if limit != core.concurrency() {
                    tracing::info!(limit, "adaptive concurrency limit changed");
                }
                core.set_concurrency(limit);
                self.sched.dispatch(&mut core);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut core = self.sched.core();
        core.release(&self.ticket);
        self.sched.dispatch(&mut core);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_common::config::{Config, TopicsConfig};

    fn scheduler(f: impl FnOnce(&mut WorkerConfig, &mut TopicsConfig)) -> Arc<Scheduler> {
        let mut cfg = Config::default();
        cfg.topics.tasks = "t".into();
        f(&mut cfg.worker, &mut cfg.topics);
        let routes = Routes::new(&cfg.topics, cfg.worker.pool.as_deref());
        Scheduler::new(&cfg.worker, routes, Arc::new(Metrics::new()))
    }

    fn task(f: impl FnOnce(&mut Task)) -> Task {
        let mut t = Task::new("k", json!(null));
        f(&mut t);
        t
    }

    #[test]
    fn plans_pick_the_lane_and_the_policy_key() {
        let s = scheduler(|w, t| {
            t.long_lane = true;
            w.scheduler.policy = QueuePolicy::ShortestExpectedFirst;
            w.scheduler.default_expected_ms = 777;
        });
        let p = s.plan("t", &task(|t| t.priority = Some(4))).unwrap();
        assert_eq!(
            (p.lane, p.priority, p.policy_key),
            (Lane::High.index(), 4, 777)
        );
        assert_eq!(
            s.plan("t.retry", &task(|t| t.priority = Some(-2)))
                .unwrap()
                .lane,
            Lane::Low.index()
        );
        assert_eq!(
            s.plan("t.long", &task(|t| t.priority = Some(9)))
                .unwrap()
                .lane,
            Lane::Long.index()
        );
        s.estimates.observe("k", Duration::from_millis(40));
        assert_eq!(
            s.plan("t", &task(|_| {})).unwrap().policy_key,
            40,
            "learned"
        );
        assert_eq!(
            s.plan("t", &task(|t| t.expected_ms = Some(5)))
                .unwrap()
                .policy_key,
            5
        );
        let edf = scheduler(|w, _| w.scheduler.policy = QueuePolicy::EarliestDeadlineFirst);
        assert_eq!(
            edf.plan("t", &task(|t| t.deadline_ms = Some(99)))
                .unwrap()
                .policy_key,
            99
        );
        assert_eq!(edf.plan("t", &task(|_| {})).unwrap().policy_key, u64::MAX);
    }

    #[test]
    fn tasks_that_can_never_run_here_are_refused_with_the_reason() {
        let s = scheduler(|w, _| {
            w.scheduler.capacity = [("cpu".to_string(), 4.0)].into_iter().collect();
        });
        let e = s
            .plan("t", &task(|t| t.resources = Some(json!({"cpu": 8}))))
            .unwrap_err();
        assert!(e.contains("needs cpu=8") && e.contains("cpu=4"), "{e}");
        let e = s
            .plan("t", &task(|t| t.resources = Some(json!({"gpu": 1}))))
            .unwrap_err();
        assert!(e.contains("gpu=0"), "{e}");
        let e = s
            .plan("t", &task(|t| t.resources = Some(json!({"cpu": -1}))))
            .unwrap_err();
        assert!(e.contains("resources.cpu"), "{e}");
        let e = s
            .plan("t", &task(|t| t.resources = Some(json!({"class": "gpu"}))))
            .unwrap_err();
        assert!(e.contains("pool gpu") && e.contains("(general)"), "{e}");
        assert!(s
            .plan("t", &task(|t| t.resources = Some(json!({"cpu": 4}))))
            .is_ok());
        // Without a capacity, needs are not accounted at all.
        let free = scheduler(|_, _| {});
        assert!(free
            .plan("t", &task(|t| t.resources = Some(json!({"cpu": 99}))))
            .is_ok());
    }

    #[tokio::test]
    async fn slots_go_to_the_highest_priority_waiting_task() {
        let s = scheduler(|w, _| {
            w.concurrency = 1;
            w.scheduler.min_share = sluice_common::config::LaneShares {
                high: 0.0,
                normal: 0.0,
                long: 0.0,
                low: 0.0,
            };
        });
        let first = s.acquire("k", &s.plan("t", &task(|_| {})).unwrap()).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for p in [-3, 0, 7, 2, 0] {
            let (s, order) = (s.clone(), order.clone());
            let ticket = s.plan("t", &task(|t| t.priority = Some(p))).unwrap();
            waiting.push(tokio::spawn(async move {
                let slot = s.acquire("k", &ticket).await;
                order.lock().unwrap().push(p);
                drop(slot);
            }));
            // Let it enqueue before the next arrives.
            tokio::task::yield_now().await;
        }
        drop(first);
        for w in waiting {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![7, 2, 0, 0, -3]);
    }
}
