//! The job gatherer: turns the results of a job's sub-tasks into the job's result.
//!
//! Every worker (with `worker.gatherer`, the default) runs one. It reads the
//! results topic as a member of the consumer group `<worker.group>.gather`, so each
//! results partition has exactly one gatherer; workers key the results of a job's
//! sub-tasks by job id, so each job has exactly one gatherer too. It also reads
//! the whole jobs topic (outside any group) for manifests, which carry the gather
//! spec and failure policy, and for job results published already.
//!
//! Per job it keeps a [`Tally`]. When the tally's verdict under the manifest's
//! policy is final, the gatherer applies the gather (or runs the chord callback,
//! here, with the worker's handlers) and publishes the job result to the jobs
//! topic, waiting until it is durable.
//!
//! Durability: the gatherer keeps no state outside Kafka. It stores a results
//! offset only below the first result of every job it has not finished, so when
//! it crashes or loses a partition, the next owner reads those jobs' results again
//! and rebuilds the same tallies. A job can therefore be published twice (a crash
//! between publishing and storing the offset); readers take the first job result
//! per job id, and duplicates agree on everything but `gathered_by` and
//! `finished_ms`. Until it has read the jobs topic to its end once, a gatherer
//! decides nothing, so it does not redo jobs whose results it simply had not read.
//!
//! While no job is open, the gatherer reads no results at all ([`idle`]).

mod idle;

use crate::ended_jobs::EndedJobs;
use crate::handler::{HandlerError, Registry, TaskContext};
use crate::retry::RetryPolicy;
use crate::writer::Writer;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use sluice_common::job::{GatherSpec, JobRecord, JobResult, JobState, Manifest, Tally, Verdict};
use sluice_common::kafka::{self, QuietContext};
use sluice_common::{Config, Metrics, Task, TaskResult};
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The `job` key as it appears in a result's JSON: a result without these bytes
/// has no job (with them it may still have none: the output can mention it).
const JOB_FIELD: &str = "\"job\"";

/// How often offsets are stored and lost partitions forgotten.
const TICK: Duration = Duration::from_millis(500);
/// How long a job may have results here without its manifest before a warning.
const MANIFEST_GRACE: Duration = Duration::from_secs(30);

/// What the gatherer needs from its worker.
pub(crate) struct Gatherer {
    pub cfg: Config,
    pub registry: Registry,
    pub producer: Writer,
    pub worker_id: String,
    pub metrics: Arc<Metrics>,
    pub counters: Arc<crate::Counters>,
    /// Told of every job result on the jobs topic, for the executor.
    pub ended: Arc<EndedJobs>,
}

/// A job with results on one of this gatherer's partitions and no job result yet.
struct OpenJob {
    partition: i32,
    /// Offset of the first result read: nothing below it may be forgotten.
    first_offset: i64,
    tally: Tally,
    /// A chord callback is running for it.
    gathering: bool,
    /// Said once that its manifest is missing.
    warned: bool,
    /// When its first result was read here.
    opened: Instant,
}

#[derive(Default)]
struct State {
    manifests: HashMap<String, Manifest>,
    finished: HashSet<String>,
    open: HashMap<String, OpenJob>,
    /// Next offset to read, per results partition.
    positions: HashMap<i32, i64>,
    /// Next offset to read, per jobs partition.
    jobs_positions: HashMap<i32, i64>,
    /// Paused results partitions and their skip points.
    idle: idle::Idle,
    /// The jobs topic has been read to its end once.
    caught_up: bool,
}

/// A chord callback's outcome, for the job it belongs to.
type Gathered = (String, Result<Value, String>);

impl Gatherer {
    /// Gathers until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), sluice_common::Error> {
        let cfg = &self.cfg;
        let counts = kafka::ensure_topics(cfg, &[&cfg.topics.jobs, &cfg.topics.results]).await?;
        let client_id = format!("{}-gather", self.worker_id);
        let results: Arc<StreamConsumer<QuietContext>> = Arc::new(
            kafka::gatherer_consumer_config(cfg, &client_id)
                .create_with_context(QuietContext)
                .map_err(sluice_common::Error::client)?,
        );
        results
            .subscribe(&[&cfg.topics.results])
            .map_err(sluice_common::Error::client)?;
        let jobs: StreamConsumer<QuietContext> = kafka::reader_config(cfg, &client_id)
            .create_with_context(QuietContext)
            .map_err(sluice_common::Error::client)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..counts[0].1 {
            tpl.add_partition_offset(&cfg.topics.jobs, p, Offset::Beginning)
                .map_err(sluice_common::Error::client)?;
        }
        jobs.assign(&tpl).map_err(sluice_common::Error::client)?;
        let job_partitions = counts[0].1 as usize;
        let (prober, mut marks) = idle::Prober::new(cfg, &client_id, counts[1].1, counts[0].1)?;
        tracing::info!(group = %cfg.worker.gather_group(), jobs = %cfg.topics.jobs, "job gatherer started");

        let mut st = State::default();
        let mut at_end = HashSet::new();
        let (done_tx, mut done_rx) = mpsc::channel::<Gathered>(64);
        let mut tick = tokio::time::interval(TICK);
        loop {
            let ready: Vec<JobResult> = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = results.recv() => match m {
                    Ok(msg) => self.on_result(&mut st, &msg, &done_tx).into_iter().collect(),
                    Err(e) => { tracing::warn!(error = %e, "gatherer: reading results"); vec![] }
                },
                m = jobs.recv() => match m {
                    Ok(msg) => {
                        st.jobs_positions.insert(msg.partition(), msg.offset() + 1);
                        self.on_job_record(&mut st, &msg, &done_tx)
                    }
                    Err(KafkaError::PartitionEOF(p)) => {
                        at_end.insert(p);
                        if at_end.len() >= job_partitions && !st.caught_up {
                            st.caught_up = true;
                            let ids: Vec<String> = st.open.keys().cloned().collect();
                            ids.iter().filter_map(|id| self.evaluate(&mut st, id, &done_tx)).collect()
                        } else {
                            vec![]
                        }
                    }
                    Err(e) => { tracing::warn!(error = %e, "gatherer: reading jobs"); vec![] }
                },
                Some((id, outcome)) = done_rx.recv() => {
                    match (st.open.get(&id), st.manifests.get(&id)) {
                        (Some(open), Some(m)) => vec![open.tally.conclude(m, outcome, &self.worker_id)],
                        _ => vec![],
                    }
                }
                Some(m) = marks.recv() => {
                    st.idle.probing = false;
                    st.idle.marks = m.filter(|_| quiet(&st));
                    vec![]
                }
                _ = tick.tick() => {
                    forget_lost_partitions(&mut st, &results, &cfg.topics.results);
                    warn_missing_manifests(&mut st);
                    self.metrics.jobs_open(st.open.len());
                    store_offsets(&st, &results, &cfg.topics.results);
                    probe_if_quiet(&mut st, &prober);
                    vec![]
                }
            };
            for job in ready {
                self.publish(&mut st, &results, job, &shutdown).await;
            }
            self.idle_or_wake(&mut st, &results);
        }
        store_offsets(&st, &results, &cfg.topics.results);
        // Closing commits the stored offsets; librdkafka may block on that.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || drop((results, jobs))),
        )
        .await;
        Ok(())
    }

    /// Pauses the results partitions once a probe's marks prove that no job
    /// can have results below them; resumes them as soon as a job is open.
    fn idle_or_wake(&self, st: &mut State, results: &Arc<StreamConsumer<QuietContext>>) {
        let topic = &self.cfg.topics.results;
        if !quiet(st) {
            if !st.idle.paused.is_empty() {
                let at = st.idle.wake();
                tracing::debug!(partitions = ?at, "gatherer: a job is open; reading results again");
                idle::resume(results, topic, &at);
            }
            st.idle.marks = None;
            return;
        }
        if !st
            .idle
            .marks
            .as_ref()
            .is_some_and(|m| m.jobs_read(&st.jobs_positions))
        {
            return;
        }
        let assigned: Vec<i32> = results.assignment().map_or_else(
            |_| vec![],
            |a| {
                a.elements_for_topic(topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            },
        );
        if assigned.is_empty() {
            // Kept until the group assigns partitions: marks stay true for
            // partitions assigned after they were taken, and a fresh worker
            // would otherwise read every result until the probe after its
            // assignment (half a second of results, seen in `sluice bench`).
            return;
        }
        let Some(marks) = st.idle.marks.take() else {
            return;
        };
        let newly = st.idle.skip_to(&marks, &assigned, &mut st.positions);
        if !newly.is_empty() {
            tracing::debug!(partitions = ?newly, "gatherer: no job open; results not read until one is");
            idle::pause(results, topic, &newly);
        }
        store_offsets(st, results, topic);
    }

    fn on_result(
        &self,
        st: &mut State,
        msg: &BorrowedMessage<'_>,
        done: &mpsc::Sender<Gathered>,
    ) -> Option<JobResult> {
        let (p, offset) = (msg.partition(), msg.offset());
        // Fetched before the pause took effect: read again from the skip point
        // if a job opens.
        if st.idle.skips(p) {
            return None;
        }
        self.metrics.job_result_read();
        self.counters
            .gathered_results
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        st.positions.insert(p, offset + 1);
        // Most results belong to no job: a result with one has a `job` field,
        // so one without the key's bytes is skipped unparsed (parsing every
        // result cost about 8k instructions per task; measured with callgrind).
        let payload = msg.payload()?;
        // `str::contains` searches with SIMD; a byte-window scan cost 3k.
        if std::str::from_utf8(payload).is_ok_and(|text| !text.contains(JOB_FIELD)) {
            return None;
        }
        // Records that are not results are `sluice results`' business, not ours.
        let r: TaskResult = serde_json::from_slice(payload).ok()?;
        let job = r.job.as_ref()?;
        if st.finished.contains(&job.id) {
            return None;
        }
        let open = st.open.entry(job.id.clone()).or_insert_with(|| {
            tracing::info!(job.id = %job.id, partition = p, offset, "gathering job");
            OpenJob {
                partition: p,
                first_offset: offset,
                tally: Tally::new(job.total),
                gathering: false,
                warned: false,
                opened: Instant::now(),
            }
        });
        if !open.tally.record(&r) {
            return None;
        }
        let id = job.id.clone();
        self.evaluate(st, &id, done)
    }

    fn on_job_record(
        &self,
        st: &mut State,
        msg: &BorrowedMessage<'_>,
        done: &mpsc::Sender<Gathered>,
    ) -> Vec<JobResult> {
        let record = match msg.payload().map(JobRecord::decode) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!(error = %e, partition = msg.partition(), offset = msg.offset(), "skipping a record on the jobs topic");
                return vec![];
            }
            None => return vec![],
        };
        match record {
            JobRecord::Manifest(m) => {
                if st.finished.contains(&m.job_id) {
                    return vec![];
                }
                let id = m.job_id.clone();
                st.manifests.insert(id.clone(), m);
                self.evaluate(st, &id, done).into_iter().collect()
            }
            JobRecord::Result(r) => {
                // Ours coming back, or another gatherer's (a duplicate owner).
                finish(st, &r.job_id);
                self.ended.ended(&r.job_id);
                vec![]
            }
        }
    }

    /// The job result of `id` when its verdict is final and needs no callback;
    /// starts the chord callback when it needs one.
    fn evaluate(
        &self,
        st: &mut State,
        id: &str,
        done: &mpsc::Sender<Gathered>,
    ) -> Option<JobResult> {
        if !st.caught_up {
            return None;
        }
        let (open, manifest) = (st.open.get_mut(id)?, st.manifests.get(id)?);
        if open.gathering {
            return None;
        }
        let outcome = match open.tally.verdict(&manifest.failure) {
            Verdict::Running => return None,
            Verdict::Fail(reason) => Err(reason),
            Verdict::Gather => match &manifest.gather {
                GatherSpec::Chord(kind) => {
                    open.gathering = true;
                    let payload = manifest
                        .gather
                        .apply(&open.tally.outputs())
                        .unwrap_or_default();
                    tokio::spawn(chord(
                        self.registry.clone(),
                        self.cfg.clone(),
                        id.to_string(),
                        kind.clone(),
                        payload,
                        done.clone(),
                    ));
                    return None;
                }
                g => g
                    .apply(&open.tally.outputs())
                    .map_err(|e| format!("gather `{g}` failed: {e}")),
            },
        };
        Some(open.tally.conclude(manifest, outcome, &self.worker_id))
    }

    /// Publishes `job` to the jobs topic until it is durable, if this gatherer
    /// still owns the job's partition; then forgets the job.
    async fn publish(
        &self,
        st: &mut State,
        results: &StreamConsumer<QuietContext>,
        job: JobResult,
        shutdown: &CancellationToken,
    ) {
        let Some(partition) = st.open.get(&job.job_id).map(|o| o.partition) else {
            return;
        };
        let owned = results.assignment().ok().is_some_and(|a| {
            a.find_partition(&self.cfg.topics.results, partition)
                .is_some()
        });
        if !owned {
            // The new owner rebuilds it from the topic and publishes it.
            st.open.remove(&job.job_id);
            return;
        }
        let mut job = job;
        let mut value = JobRecord::Result(job.clone()).encode();
        let mut backoff = Duration::from_millis(100);
        loop {
            let (topic, key) = (&self.cfg.topics.jobs, job.job_id.as_bytes());
            let sent = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.producer.send(topic, Some(key), &value, None) => r,
            };
            match sent {
                Ok(_) => break,
                // Retrying cannot help: the job fails, saying why, instead of hanging.
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                    if job.output.is_some() =>
                {
                    tracing::warn!(job.id = %job.job_id, bytes = value.len(), "job result too large for the jobs topic");
                    job.error = Some(format!(
                        "the gathered output made a {}-byte job result, larger than the producer's message.max.bytes; output dropped",
                        value.len()
                    ));
                    job.output = None;
                    job.state = JobState::Failed;
                    value = JobRecord::Result(job.clone()).encode();
                }
                Err(e) => {
                    tracing::warn!(error = %e, job.id = %job.job_id, "job result not acknowledged; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::info!(job.id = %job.job_id, state = %job.state, succeeded = job.succeeded, failed = job.failed, "job gathered");
        finish(st, &job.job_id);
        self.ended.ended(&job.job_id);
        self.metrics.job_gathered(job.state, st.open.len());
    }
}

/// No job this gatherer knows of is open: every job seen on the jobs topic has
/// a job result. Not whether the jobs topic was read to its end: a probe's marks
/// are only taken once it was read up to them (`Marks::jobs_read`), and a fresh
/// worker probes at once instead of after its first catch-up read.
fn quiet(st: &State) -> bool {
    st.manifests.is_empty() && st.open.is_empty()
}

/// Sends a probe out when no job is open and none is out already.
fn probe_if_quiet(st: &mut State, prober: &idle::Prober) {
    if quiet(st) && !st.idle.probing {
        st.idle.probing = true;
        prober.start();
    }
}

fn finish(st: &mut State, id: &str) {
    st.finished.insert(id.to_string());
    st.manifests.remove(id);
    st.open.remove(id);
}

/// Results of a job whose manifest is not on the jobs topic hold back the
/// partition's committed offset for as long as the job stays open: say so, once.
fn warn_missing_manifests(st: &mut State) {
    if !st.caught_up {
        return;
    }
    for (id, open) in st.open.iter_mut() {
        // The manifest was published before any sub-task; reading it may lag a little.
        let late = open.opened.elapsed() > MANIFEST_GRACE;
        if late && !open.warned && !st.manifests.contains_key(id) {
            open.warned = true;
            tracing::warn!(job.id = %id, partition = open.partition, offset = open.first_offset, "results of a job without a manifest on the jobs topic: it cannot be gathered, and this results partition's committed offset stays at its first result (publish jobs with `sluice job submit`)");
        }
    }
}

/// Drops jobs and positions of partitions this gatherer no longer owns.
fn forget_lost_partitions(st: &mut State, results: &StreamConsumer<QuietContext>, topic: &str) {
    let Ok(assigned) = results.assignment() else {
        return;
    };
    let owned = |p: i32| assigned.find_partition(topic, p).is_some();
    st.open.retain(|_, o| owned(o.partition));
    st.positions.retain(|p, _| owned(*p));
}

/// Per partition read so far, the offset below which every job is finished: the
/// first result of the oldest open job, else the next offset to read.
fn safe_offsets(st: &State) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = st
        .positions
        .iter()
        .map(|(p, next)| {
            let keep_from = st
                .open
                .values()
                .filter(|o| o.partition == *p)
                .map(|o| o.first_offset)
                .min()
                .unwrap_or(*next);
            (*p, keep_from.min(*next))
        })
        .collect();
    out.sort_unstable();
    out
}

/// Stores the [`safe_offsets`] for the next commit.
fn store_offsets(st: &State, results: &StreamConsumer<QuietContext>, topic: &str) {
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in safe_offsets(st) {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(offset));
    }
    if tpl.count() > 0 {
        if let Err(e) = results.store_offsets(&tpl) {
            tracing::debug!(error = %e, "gatherer: could not store offsets (partition revoked?)");
        }
    }
}

/// Runs the chord callback `kind` over `payload` (the collected outputs) with the
/// worker's retry policy and time limit for that kind.
async fn chord(
    registry: Registry,
    cfg: Config,
    job_id: String,
    kind: String,
    payload: Value,
    done: mpsc::Sender<Gathered>,
) {
    let outcome = match registry.get(&kind) {
        None => Err(format!(
            "gather callback: unknown kind `{kind}`; this worker runs: {}",
            registry.kinds().join(", ")
        )),
        Some(handler) => {
            let policy = RetryPolicy::for_task(&cfg.worker, &Task::new(kind.clone(), Value::Null));
            let limit = cfg
                .worker
                .kinds
                .get(&kind)
                .and_then(|k| k.timeout_ms)
                .or(cfg.worker.timeout_ms)
                .map(Duration::from_millis);
            let mut attempt = 1;
            loop {
                let ctx = TaskContext {
                    id: format!("{job_id}/gather"),
                    kind: kind.clone(),
                    payload: payload.clone(),
                    attempt,
                    key: None,
                    job: None,
                };
                let run = AssertUnwindSafe(handler.handle(ctx)).catch_unwind();
                let ran = match limit {
                    Some(l) => tokio::time::timeout(l, run).await.unwrap_or_else(|_| {
                        Ok(Err(HandlerError::retryable(format!(
                            "timed out after {} ms",
                            l.as_millis()
                        ))))
                    }),
                    None => run.await,
                };
                let err = match ran {
                    Ok(Ok(v)) => break Ok(v),
                    Ok(Err(HandlerError::Permanent(e))) => break Err(e),
                    Ok(Err(HandlerError::Retryable(e))) => e,
                    Err(_) => "handler panicked".to_string(),
                };
                if !policy.allows_after(attempt) {
                    break Err(err);
                }
                tokio::time::sleep(policy.backoff(attempt, rand::random())).await;
                attempt += 1;
            }
            .map_err(|e| format!("gather callback `{kind}` failed (attempt {attempt}): {e}"))
        }
    };
    let _ = done.send((job_id, outcome)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(partition: i32, first_offset: i64) -> OpenJob {
        OpenJob {
            partition,
            first_offset,
            tally: Tally::new(1),
            gathering: false,
            warned: false,
            opened: Instant::now(),
        }
    }

    #[test]
    fn offsets_stay_below_the_first_result_of_every_open_job() {
        let mut st = State::default();
        st.positions.insert(0, 100);
        st.positions.insert(1, 50);
        st.positions.insert(2, 7);
        st.open.insert("a".into(), open(0, 40));
        st.open.insert("b".into(), open(0, 12));
        st.open.insert("c".into(), open(1, 49));
        // Partition 0 keeps job b's results, 1 keeps c's, 2 has no open job.
        assert_eq!(safe_offsets(&st), vec![(0, 12), (1, 49), (2, 7)]);
        finish(&mut st, "b");
        assert_eq!(safe_offsets(&st)[0], (0, 40));
        finish(&mut st, "a");
        assert_eq!(safe_offsets(&st)[0], (0, 100));
        assert!(st.finished.contains("a") && st.finished.contains("b"));
    }
}
