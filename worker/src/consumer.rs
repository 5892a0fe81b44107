//! The poll thread: the only code that touches the group consumer.
//!
//! librdkafka expects one thread to keep polling (heartbeats, rebalances and
//! `max.poll.interval.ms` depend on it), and rebalance callbacks run inside that
//! poll. So the consumer lives on a dedicated OS thread that never waits on task
//! execution: it hands the records it takes to the lanes, which start them
//! (never blocking), and completions come back over a channel. Records that
//! librdkafka already holds are taken in one turn and handed over together
//! ([`TAKE_AT_MOST`]): one wake-up of the runtime per turn, not per record.
//! When too many tasks are buffered the thread waits for completions instead
//! of fetching more, and if none comes for [`PAUSE_AFTER`] it pauses its
//! partitions and keeps polling instead of blocking.
//!
//! With several lane topics (priority lanes, the long-task lane) each lane topic
//! also has a budget of its own: when `max_buffered_tasks` of one lane are
//! handed out, that lane's partitions are paused at once, which also drops what
//! librdkafka prefetched of them. Otherwise a backlog of one lane (say `low`)
//! would fill the buffer and the prefetch queue, and the worker would not
//! fetch another lane (`high`) until it worked through it: the scheduler can
//! only prefer what it has.
//!
//! Offsets: a record's offset is stored (for the next auto-commit) only when the
//! [`OffsetTracker`] says every earlier offset of its partition is done; on revoke
//! and at shutdown the thread waits for in-flight tasks up to a deadline and commits
//! synchronously. Those synchronous commits are timed for the metrics; the periodic
//! auto-commits are not (librdkafka reports only their outcome, which is counted).
//! Periodic commits stay librdkafka's: a synchronous commit blocks until the group
//! coordinator answers, seconds while it is being re-elected, and a poll thread
//! blocked that often cannot serve the rebalance that brings it back.
//!
//! The thread also keeps the worker's [`Health`] current (last poll, partitions
//! held) and feeds librdkafka's statistics reports into [`Metrics`].

use crate::admission::Admission;
use crate::tracker::{OffsetTracker, Tp};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::metrics::Rebalance as RebalanceEvent;
use sluice_common::{trace, Health, Metrics, TraceContext};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A record handed from the poll thread to execution.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    /// From the record's `traceparent` header, when it has a valid one.
    pub trace: Option<TraceContext>,
    pub epoch: u64,
    /// Hand-out order on the poll thread: the scheduler's first-come order.
    /// Tasks are spawned in this order but reach the scheduler in whatever order
    /// the runtime polls them, which is not it.
    pub arrival: u64,
}

/// What became of an [`Incoming`].
#[derive(Debug)]
pub(crate) struct Completion {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub epoch: u64,
    /// True when the result is durable; false when the task was not run here.
    pub done: bool,
}

struct PollState {
    tracker: OffsetTracker,
    completions: mpsc::Receiver<Completion>,
    handed_out: usize,
    /// `handed_out` by topic, for the per-lane budgets.
    by_topic: HashMap<Arc<str>, usize>,
    next_epoch: u64,
    /// Partitions assigned since the poll loop last looked.
    newly_assigned: Vec<Tp>,
    /// A rebalance callback ran since the poll loop last looked.
    rebalanced: bool,
    /// Partitions whose position may have moved since offsets were last stored.
    unstored: Vec<Tp>,
    last_store: Instant,
}

/// The consumer context: rebalance callbacks with access to the tracker.
pub(crate) struct WorkerContext {
    state: Mutex<PollState>,
    admission: Arc<Admission>,
    drain_timeout: Duration,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The last position Kafka confirmed per partition (auto-commit callbacks and
    /// synchronous commits): how the bounded final commit learns it is done.
    confirmed: Mutex<HashMap<Tp, i64>>,
    /// Set before the final unsubscribe: the revoke it causes must not commit
    /// synchronously again (with the broker gone, that would wait forever).
    leaving: AtomicBool,
}

impl WorkerContext {
    pub fn new(
        completions: mpsc::Receiver<Completion>,
        admission: Arc<Admission>,
        drain_timeout: Duration,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        WorkerContext {
            state: Mutex::new(PollState {
                tracker: OffsetTracker::default(),
                completions,
                handed_out: 0,
                by_topic: HashMap::new(),
                next_epoch: 1,
                newly_assigned: Vec::new(),
                rebalanced: false,
                unstored: Vec::new(),
                last_store: Instant::now(),
            }),
            admission,
            drain_timeout,
            metrics,
            health,
            confirmed: Mutex::new(HashMap::new()),
            leaving: AtomicBool::new(false),
        }
    }

    /// The shutdown commit, bounded by `limit`: a synchronous commit has no
    /// timeout and never returns when the coordinator is gone. The final positions
    /// are stored and the next auto-commit (every `commit_interval_ms`) carries
    /// them; its callback confirms them. (A manual asynchronous commit would not
    /// do: librdkafka reports its outcome only to a configured commit callback or
    /// queue, neither of which the event API that rdkafka uses sets, so it was
    /// never confirmed and every shutdown waited the whole limit.) Returns whether
    /// Kafka confirmed every position.
    fn commit_bounded(
        &self,
        consumer: &BaseConsumer<WorkerContext>,
        tps: &[Tp],
        limit: Duration,
    ) -> bool {
        let tpl = self.committable(tps);
        if self.unconfirmed(&tpl) == 0 {
            return true;
        }
        let started = Instant::now();
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::warn!(error = %e, "final commit failed; uncommitted tasks will run again elsewhere");
            return false;
        }
        while self.unconfirmed(&tpl) > 0 {
            if started.elapsed() >= limit {
                tracing::warn!(waited_ms = limit.as_millis() as u64, "final commit unconfirmed (is the broker down?); uncommitted tasks will run again elsewhere");
                self.metrics.committed(started.elapsed(), false);
                return false;
            }
            // Partitions are paused: this serves callbacks, it hands out nothing.
            let _ = consumer.poll(Duration::from_millis(20));
        }
        self.metrics.committed(started.elapsed(), true);
        true
    }

    /// Partitions of `tpl` whose position Kafka has not confirmed yet.
    fn unconfirmed(&self, tpl: &TopicPartitionList) -> usize {
        let confirmed = self.confirmed.lock().expect("confirmed lock");
        tpl.elements()
            .iter()
            .filter(|e| {
                let tp = (e.topic().to_string(), e.partition());
                match e.offset() {
                    Offset::Offset(o) => confirmed.get(&tp).is_none_or(|c| *c < o),
                    _ => false,
                }
            })
            .count()
    }

    /// Kafka confirmed the positions in `tpl`.
    fn confirm(&self, tpl: &TopicPartitionList) {
        let mut confirmed = self.confirmed.lock().expect("confirmed lock");
        for e in tpl.elements() {
            if let (Offset::Offset(o), Ok(())) = (e.offset(), e.error()) {
                let c = confirmed
                    .entry((e.topic().to_string(), e.partition()))
                    .or_insert(o);
                *c = (*c).max(o);
            }
        }
    }

    fn committable(&self, tps: &[Tp]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let st = self.state();
        for tp in tps {
            if let Some(off) = st.tracker.get(tp).and_then(|p| p.committable()) {
                let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(off));
            }
        }
        tpl
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PollState> {
        self.state.lock().expect("poll state lock")
    }

    /// Applies completions and stores offsets that advanced. `wait` bounds how long
    /// to wait for the first completion.
    fn absorb(&self, consumer: &BaseConsumer<WorkerContext>, wait: Duration) {
        self.absorb_at(consumer, wait, None);
    }

    /// [`absorb`](Self::absorb), with the time when the caller read it anyway
    /// (clock reads are dear on these machines: see `execute`).
    fn absorb_at(
        &self,
        consumer: &BaseConsumer<WorkerContext>,
        wait: Duration,
        now: Option<Instant>,
    ) {
        let mut guard = self.state();
        let st = &mut *guard;
        let first = st.completions.recv_timeout(wait).ok();
        // One key reused for every lookup: no allocation per completion.
        let mut tp: Tp = (String::new(), 0);
        for c in first.into_iter().chain(st.completions.try_iter()) {
            st.handed_out -= 1;
            if let Some(n) = st.by_topic.get_mut(&c.topic) {
                *n -= 1;
            }
            point(&mut tp, &c.topic, c.partition);
            if let Some(p) = st.tracker.get_mut(&tp, c.epoch) {
                if c.done {
                    p.finish(c.offset);
                } else {
                    p.abandon(c.offset);
                }
                if st.unstored.last() != Some(&tp) && !st.unstored.contains(&tp) {
                    st.unstored.push(tp.clone());
                }
            }
        }
        // Stored offsets matter only at the next auto-commit (revoke and shutdown
        // commits read the tracker), so storing is batched.
        if st.unstored.is_empty() {
            return;
        }
        let now = now.unwrap_or_else(Instant::now);
        if now.saturating_duration_since(st.last_store) < STORE_EVERY {
            return;
        }
        st.last_store = now;
        let mut tpl = TopicPartitionList::new();
        for tp in st.unstored.drain(..) {
            let advanced = st
                .tracker
                .epoch(&tp)
                .and_then(|e| st.tracker.get_mut(&tp, e))
                .and_then(|p| p.take_advance());
            if let Some(off) = advanced {
                let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(off));
            }
        }
        drop(guard);
        if tpl.count() > 0 {
            if let Err(e) = consumer.store_offsets(&tpl) {
                tracing::warn!(error = %e, "could not store offsets (partition revoked?)");
            }
        }
    }

    /// Starts tracking the records of a turn, just before they are handed out,
    /// and drops those whose partition was revoked (or revoked and assigned
    /// again) since they were taken: a revoke served while they waited did not
    /// count them, so the commit it made stopped below them and their partition's
    /// next owner runs them.
    fn track(&self, taken: &mut Vec<Incoming>) {
        let mut guard = self.state();
        let st = &mut *guard;
        let mut tp: Tp = (String::new(), 0);
        taken.retain(|inc| {
            point(&mut tp, &inc.topic, inc.partition);
            let Some(progress) = st.tracker.get_mut(&tp, inc.epoch) else {
                st.handed_out -= 1;
                if let Some(n) = st.by_topic.get_mut(&inc.topic) {
                    *n -= 1;
                }
                return false;
            };
            if let Some(expected) = progress.start(inc.offset) {
                crate::gap::skipped(&self.metrics, &tp, expected, inc.offset);
            }
            true
        });
    }

    /// Waits until none of `tps` has tasks in flight, or until `deadline`.
    fn drain(
        &self,
        consumer: &BaseConsumer<WorkerContext>,
        tps: &[Tp],
        deadline: Instant,
    ) -> usize {
        loop {
            let left: usize = {
                let st = self.state();
                tps.iter()
                    .filter_map(|tp| st.tracker.get(tp))
                    .map(|p| p.in_flight())
                    .sum()
            };
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            self.absorb(consumer, Duration::from_millis(10));
        }
    }

    /// Synchronously commits the committable position of `tps`.
    fn commit(&self, consumer: &BaseConsumer<WorkerContext>, tps: &[Tp]) {
        let tpl = self.committable(tps);
        if tpl.count() == 0 {
            return;
        }
        let started = Instant::now();
        let result = consumer.commit(&tpl, CommitMode::Sync);
        self.metrics.committed(started.elapsed(), result.is_ok());
        if result.is_ok() {
            self.confirm(&tpl);
        }
        match result {
            Ok(()) => tracing::debug!(
                partitions = tpl.count(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "committed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "commit on revoke failed; uncommitted tasks will run again elsewhere")
            }
        }
    }

    /// Partitions held changed: gauges and readiness follow.
    fn rebalanced(&self, event: RebalanceEvent) {
        let held = self.admission.counters.assigned();
        self.metrics.rebalanced(event, held);
        self.health.partitions_assigned(held);
    }

    fn assigned(&self) -> Vec<Tp> {
        self.admission.assigned()
    }
}

impl ClientContext for WorkerContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        sluice_common::kafka::log_client_error(&error, reason);
    }

    // Runs on the poll thread, inside `poll`, every metrics.statistics_interval_ms.
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics
            .consumer_statistics(&statistics, &self.admission.assigned());
    }
}

impl ConsumerContext for WorkerContext {
    // Outcomes of librdkafka's periodic auto-commits (synchronous commits are
    // counted where they are made). "No offset" means there was nothing new to
    // commit, not a failure.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.confirm(offsets),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.metrics.commit_failed();
                tracing::debug!(error = %e, "auto-commit failed; the next one carries the same offsets");
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let tps: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                self.admission.close(&tps);
                self.admission
                    .counters
                    .rebalances
                    .fetch_add(1, Ordering::Relaxed);
                let left = self.drain(consumer, &tps, Instant::now() + self.drain_timeout);
                if left > 0 {
                    tracing::warn!(unfinished = left, "revoked partitions still had running tasks after the drain timeout; their new owner runs them again");
                }
                if !consumer.assignment_lost() && !self.leaving.load(Ordering::SeqCst) {
                    self.commit(consumer, &tps);
                }
                self.admission.remove(&tps);
                self.state().rebalanced = true;
                self.rebalanced(RebalanceEvent::Revoked);
                let mut st = self.state();
                for tp in &tps {
                    st.tracker.revoke(tp);
                }
                tracing::info!(partitions = %render(&tps), "partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let tps: Vec<Tp> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            // Before the first record: what a record past it has skipped.
            let committed = crate::gap::committed(consumer, &tps);
            let mut st = self.state();
            for tp in &tps {
                if st.tracker.epoch(tp).is_none() {
                    let epoch = st.next_epoch;
                    st.next_epoch += 1;
                    st.tracker.assign(tp.clone(), epoch);
                    self.admission.open(tp.clone(), epoch);
                }
            }
            for (tp, offset) in committed {
                if let Some((_, progress)) = st.tracker.current_mut(&tp) {
                    progress.resume_at(offset);
                }
            }
            st.newly_assigned.extend(tps.iter().cloned());
            st.rebalanced = true;
            drop(st);
            self.admission
                .counters
                .rebalances
                .fetch_add(1, Ordering::Relaxed);
            self.rebalanced(RebalanceEvent::Assigned);
            tracing::info!(partitions = %render(&tps), "partitions assigned");
        }
    }
}

fn render(tps: &[Tp]) -> String {
    let mut v: Vec<String> = tps.iter().map(|(t, p)| format!("{t}[{p}]")).collect();
    v.sort();
    v.join(",")
}

/// How long the buffer may stay full without a single task finishing before the
/// poll thread pauses its partitions and goes back to polling. Until then it
/// waits for completions without polling, which delays rebalance callbacks (not
/// heartbeats, which librdkafka sends from its own thread) by at most this long.
const PAUSE_AFTER: Duration = Duration::from_millis(500);
/// How long one wait for room in a full buffer lasts.
const FULL_WAIT: Duration = Duration::from_millis(5);
/// Records taken from librdkafka's queue before they are handed over. It only
/// bounds the wait of a turn's first record: a turn ends as soon as the queue
/// is empty.
const TAKE_AT_MOST: usize = 64;

/// Partitions asked for watermarks to wake their brokers' fetchers after a resume.
const WAKE_PARTITIONS: usize = 16;
/// Time limit of one such request, and of all of them together.
const WAKE_TIMEOUT: Duration = Duration::from_millis(100);
const WAKE_BUDGET: Duration = Duration::from_millis(250);

/// Offsets are stored for the next auto-commit at most this often.
const STORE_EVERY: Duration = Duration::from_millis(10);

/// How long the final commit may wait for the coordinator.
const FINAL_COMMIT_LIMIT: Duration = Duration::from_secs(5);

/// Limits for the poll thread.
pub(crate) struct PollLimits {
    /// Records handed out and not yet decided, at most (per lane topic).
    pub max_buffered: usize,
    /// Records whose result librdkafka holds until Kafka acknowledges it; they
    /// do not count against `max_buffered` (see [`read_ahead`]).
    pub awaiting_ack: Arc<AtomicUsize>,
    pub shutdown_timeout: Duration,
    /// Lane topics with a budget of `max_buffered` each; empty with one lane.
    /// The whole buffer then holds `max_buffered` per lane topic.
    pub lane_topics: Vec<String>,
}

/// What the poll thread saw, reported when it ends.
#[derive(Debug, Default)]
pub(crate) struct PollReport {
    /// Tasks still in flight when the shutdown deadline passed.
    pub unfinished_at_shutdown: usize,
}

/// Records handed out that still take the worker's own memory and slots:
/// waiting, running, or writing anything but a queued result.
///
/// A task whose result librdkafka has queued is done as far as the buffer is
/// concerned: its offset still waits for the acknowledgement (linger plus a round
/// trip, 5 ms or more), but counting it capped a saturated worker at
/// `max_buffered_tasks` per acknowledgement time (1,024 / ~8 ms, about 130k
/// tasks/s, measured with `sluice bench`). Queued results are bounded by the
/// producer's own queue (`queue.buffering.max.messages`): when it is full, a
/// result waits for room and its task counts again.
fn read_ahead(handed_out: usize, limits: &PollLimits) -> usize {
    handed_out.saturating_sub(limits.awaiting_ack.load(Ordering::Relaxed))
}

/// Runs until `stop`, then drains and commits. Owns the consumer. The records
/// it takes go to `hand_out`, which must not block (it starts their tasks) and
/// must leave the vector empty; it is called before the thread waits.
pub(crate) fn poll_loop(
    consumer: BaseConsumer<WorkerContext>,
    mut hand_out: impl FnMut(&mut Vec<Incoming>),
    stop: CancellationToken,
    limits: PollLimits,
) -> PollReport {
    let ctx = consumer.context().clone();
    let mut paused = false;
    // Lane topics paused for their own budget (see the module docs).
    let mut lanes_paused: HashSet<String> = HashSet::new();
    let max_total = limits.max_buffered * limits.lane_topics.len().max(1);
    let mut full_since: Option<Instant> = None;
    let mut arrivals: u64 = 0;
    // Reused per record: no allocation for the tracker lookup or the topic name.
    let mut tp: Tp = (String::new(), 0);
    let mut topics: Vec<Arc<str>> = Vec::new();
    let mut last_error: Option<(String, Instant)> = None;
    // When the last poll returned: one clock read per turn of the loop.
    let mut polled_at = Instant::now();
    // Taken this turn and not handed out yet: counted against the buffer, but
    // not tracked yet, so a revoke served meanwhile does not wait for them
    // (see `WorkerContext::track`).
    let mut taken: Vec<Incoming> = Vec::with_capacity(TAKE_AT_MOST);
    let mut hand_over = |taken: &mut Vec<Incoming>| {
        if !taken.is_empty() {
            ctx.track(taken);
            hand_out(taken);
        }
    };
    while !stop.is_cancelled() {
        ctx.absorb_at(&consumer, Duration::ZERO, Some(polled_at));
        let (in_flight, new, rebalanced) = {
            let mut st = ctx.state();
            (
                read_ahead(st.handed_out, &limits),
                std::mem::take(&mut st.newly_assigned),
                std::mem::take(&mut st.rebalanced),
            )
        };
        let changed = !new.is_empty();
        let mut resumed = false;
        if !limits.lane_topics.is_empty() {
            let by_topic = ctx.state().by_topic.clone();
            let count = |t: &str| by_topic.get(t).copied().unwrap_or(0);
            for t in &limits.lane_topics {
                let was = lanes_paused.contains(t);
                if count(t) >= limits.max_buffered && (!was || changed) {
                    set_paused(&consumer, true, |x| x == t);
                    lanes_paused.insert(t.clone());
                } else if was && count(t) <= limits.max_buffered / 2 {
                    lanes_paused.remove(t);
                    if !paused {
                        set_paused(&consumer, false, |x| x == t);
                        resumed = true;
                    }
                }
            }
        }
        let full = in_flight >= max_total;
        if !full {
            full_since = None;
        }
        let stalled = full && full_since.get_or_insert_with(Instant::now).elapsed() >= PAUSE_AFTER;
        // Resuming leaves lanes paused for their own budget paused.
        let resumable = |t: &str| !lanes_paused.contains(t);
        if stalled && (!paused || changed) {
            set_paused(&consumer, true, |_| true);
            paused = true;
        } else if paused && in_flight <= max_total / 2 {
            set_paused(&consumer, false, resumable);
            paused = false;
            resumed = true;
        } else if changed && !paused {
            // librdkafka keeps a partition's pause flag across revoke and re-assign:
            // a partition paused, taken away and given back would stay paused for
            // good (seen: partitions stalled for minutes after a rebalance storm).
            // Only the new ones: a resume restarts a partition's fetcher, which
            // stalled the partitions a worker kept through a rebalance for up to
            // a second (seen in `sluice bench`'s add-worker scenario).
            let new: Vec<Tp> = new.into_iter().filter(|(t, _)| resumable(t)).collect();
            resume(&consumer, &new);
        }
        if rebalanced || resumed {
            wake_fetchers(&consumer);
        }
        let held = ctx.admission.counters.assigned();
        let held_paused = if paused {
            held
        } else if lanes_paused.is_empty() {
            0
        } else {
            ctx.admission
                .assigned()
                .iter()
                .filter(|(t, _)| lanes_paused.contains(t))
                .count()
        };
        ctx.metrics.poll_state(in_flight, held_paused);
        if full && !paused {
            // Full, but tasks are finishing: wait for room rather than pausing.
            // A pause throws away what librdkafka prefetched, and a resumed
            // partition fetches again only at its broker thread's next fetch
            // decision, up to a second later (measured: saturated workers ran in
            // one burst per second).
            hand_over(&mut taken);
            ctx.absorb(&consumer, FULL_WAIT);
            continue;
        }
        let wait = match (taken.is_empty(), paused) {
            (false, _) => 0,
            (true, true) => 5,
            (true, false) => 50,
        };
        let polled = consumer.poll(Duration::from_millis(wait));
        polled_at = Instant::now();
        ctx.health.polled_at(polled_at);
        match polled {
            Some(Ok(msg)) => {
                point(&mut tp, msg.topic(), msg.partition());
                let topic = match topics.iter().find(|t| ***t == *msg.topic()) {
                    Some(t) => t.clone(),
                    None => {
                        topics.push(Arc::from(msg.topic()));
                        topics[topics.len() - 1].clone()
                    }
                };
                let epoch = {
                    let mut st = ctx.state();
                    let Some(epoch) = st.tracker.epoch(&tp) else {
                        // Not ours (a record fetched across a revoke): never handed
                        // out, so its offset is never passed by a commit.
                        continue;
                    };
                    // Counted when taken, so that the buffer's bounds hold a
                    // turn's records too.
                    st.handed_out += 1;
                    // Counted by topic only for the lanes' own budgets.
                    if !limits.lane_topics.is_empty() {
                        *st.by_topic.entry(topic.clone()).or_default() += 1;
                    }
                    ctx.admission
                        .counters
                        .buffered_peak
                        .fetch_max(read_ahead(st.handed_out, &limits), Ordering::Relaxed);
                    epoch
                };
                let inc = Incoming {
                    topic,
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: msg.key().map(<[u8]>::to_vec),
                    value: msg.payload().map(<[u8]>::to_vec),
                    timestamp_ms: msg.timestamp().to_millis(),
                    trace: msg.headers().and_then(trace_context),
                    epoch,
                    arrival: arrivals,
                };
                arrivals += 1;
                taken.push(inc);
                if taken.len() >= TAKE_AT_MOST {
                    hand_over(&mut taken);
                }
            }
            Some(Err(e)) => {
                let text = e.to_string();
                let repeat = last_error
                    .as_ref()
                    .is_some_and(|(t, at)| *t == text && at.elapsed() < Duration::from_secs(10));
                if !repeat {
                    tracing::warn!(error = %text, "consumer error (librdkafka retries by itself)");
                    last_error = Some((text, Instant::now()));
                }
            }
            None => hand_over(&mut taken),
        }
    }
    // Taken before the stop: admission refuses them now and they complete as
    // not run, which the drain below waits for.
    hand_over(&mut taken);
    // Shutdown: fetch nothing more, let in-flight tasks finish, commit, leave.
    ctx.health.stopping();
    set_paused(&consumer, true, |_| true);
    let deadline = Instant::now() + limits.shutdown_timeout;
    let assigned = ctx.assigned();
    loop {
        let left = ctx.state().handed_out;
        if left == 0 || Instant::now() >= deadline {
            break;
        }
        // Keep serving the group (heartbeats, callbacks) while draining.
        let _ = consumer.poll(Duration::ZERO);
        ctx.absorb(&consumer, Duration::from_millis(10));
    }
    let unfinished = ctx.state().tracker.in_flight();
    ctx.commit_bounded(&consumer, &assigned, FINAL_COMMIT_LIMIT);
    ctx.leaving.store(true, Ordering::SeqCst);
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "shutdown deadline passed with tasks running; they will run again elsewhere"
        );
    }
    consumer.unsubscribe();
    drop(consumer);
    PollReport {
        unfinished_at_shutdown: unfinished,
    }
}

/// Points the reused lookup key `tp` at `partition` of `topic`, copying the
/// topic's name only when it changed: no allocation per record.
fn point(tp: &mut Tp, topic: &str, partition: i32) {
    if tp.0 != topic {
        tp.0.clear();
        tp.0.push_str(topic);
    }
    tp.1 = partition;
}

/// The record's trace context (see `sluice_common::trace`).
fn trace_context(headers: &BorrowedHeaders) -> Option<TraceContext> {
    let h = headers.iter().find(|h| h.key == trace::HEADER)?;
    TraceContext::parse(std::str::from_utf8(h.value?).ok()?)
}

/// Gets fetching going again after partitions were resumed, by us or by
/// librdkafka itself (it pauses the assignment while a rebalance is served).
/// A resume clears the pause flag but does not wake the broker thread, which,
/// with nothing left to fetch, sleeps until I/O or for up to a second
/// (librdkafka 2.12, `rd_kafka_toppar_pause_resume`); measured: no task for
/// 750 ms after a worker joined, on the partitions the others kept. A request
/// to a partition's leader is I/O on that thread, so asking a few partitions
/// for their watermarks wakes their brokers' threads. Bounded: a few round
/// trips, each with a short timeout.
pub(crate) fn wake_fetchers<C: ConsumerContext>(consumer: &impl Consumer<C>) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let started = Instant::now();
    for e in assignment.elements().iter().take(WAKE_PARTITIONS) {
        if started.elapsed() >= WAKE_BUDGET {
            break;
        }
        if let Err(err) = consumer.fetch_watermarks(e.topic(), e.partition(), WAKE_TIMEOUT) {
            tracing::debug!(error = %err, "watermark request to wake the fetcher failed");
        }
    }
}

fn resume(consumer: &BaseConsumer<WorkerContext>, tps: &[Tp]) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in tps {
        tpl.add_partition(topic, *partition);
    }
    if let Err(e) = consumer.resume(&tpl) {
        tracing::warn!(error = %e, "could not resume newly assigned partitions");
    }
}

/// Pauses (or resumes) the assigned partitions of the topics `which` selects.
fn set_paused(consumer: &BaseConsumer<WorkerContext>, pause: bool, which: impl Fn(&str) -> bool) {
    let Ok(all) = consumer.assignment() else {
        return;
    };
    let mut assignment = TopicPartitionList::new();
    for e in all.elements() {
        if which(e.topic()) {
            assignment.add_partition(e.topic(), e.partition());
        }
    }
    if assignment.count() == 0 {
        return;
    }
    let r = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, pause, "could not change partition pause state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counters;

    fn record(topic: &Arc<str>, partition: i32, offset: i64, epoch: u64) -> Incoming {
        Incoming {
            topic: topic.clone(),
            partition,
            offset,
            key: None,
            value: None,
            timestamp_ms: None,
            trace: None,
            epoch,
            arrival: 0,
        }
    }

    /// Records wait in a turn's batch untracked; a revoke (here: revoked and
    /// assigned again, under a new epoch) served meanwhile committed below them,
    /// so they must not be handed out: the partition's next owner runs them.
    #[test]
    fn a_turns_records_of_a_partition_revoked_meanwhile_are_not_handed_out() {
        let (_tx, rx) = mpsc::channel();
        let admission = Arc::new(Admission::new(
            CancellationToken::new(),
            Arc::new(Counters::default()),
        ));
        let ctx = WorkerContext::new(
            rx,
            admission,
            Duration::from_secs(1),
            Arc::new(Metrics::new()),
            Arc::new(Health::default()),
        );
        let topic: Arc<str> = Arc::from("tasks");
        {
            let mut st = ctx.state();
            st.tracker.assign(("tasks".into(), 0), 1);
            st.tracker.assign(("tasks".into(), 1), 2);
        }
        let mut taken = vec![
            record(&topic, 0, 10, 1),
            record(&topic, 1, 20, 1),
            record(&topic, 0, 11, 1),
        ];
        // As the poll loop counts them when it takes them.
        ctx.state().handed_out = 3;
        ctx.track(&mut taken);
        let kept: Vec<(i32, i64)> = taken.iter().map(|i| (i.partition, i.offset)).collect();
        assert_eq!(kept, [(0, 10), (0, 11)], "partition 1 is under epoch 2 now");
        let st = ctx.state();
        assert_eq!(st.handed_out, 2);
        let p0 = st.tracker.get(&("tasks".into(), 0)).unwrap();
        assert_eq!((p0.in_flight(), p0.committable()), (2, Some(10)));
        let p1 = st.tracker.get(&("tasks".into(), 1)).unwrap();
        assert_eq!((p1.in_flight(), p1.committable()), (0, None));
    }
}
