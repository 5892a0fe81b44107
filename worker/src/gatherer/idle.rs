//! Idling: a gatherer reads no results while no job can have any.
//!
//! Most results belong to no job, yet a gatherer that reads them all pays for
//! every one: 4.3k instructions per task in the worker and as many again in
//! librdkafka and the broker serving its fetches (docs/BENCHMARKS.md). So while
//! no job is open, the gatherer pauses its results partitions and only keeps a
//! *skip point* per partition moving: an offset below which no result can
//! belong to a job it has yet to gather.
//!
//! Why skipping is safe: a job's manifest is acknowledged on the jobs topic
//! before any of its sub-tasks is published (`sluice job submit`, WIRE.md), so
//! its results are appended to the results topic after that acknowledgement.
//! A probe takes the results topic's end offsets `H`, *then* the jobs topic's
//! end offsets `J`. Once the gatherer has read the jobs topic up to `J` and
//! still knows no unfinished job, every job it has not seen has its manifest at
//! or after `J`: acknowledged after `H` was taken, so all its results are at or
//! after `H`. Results below `H` can be skipped, and `H` stored as the
//! partition's committed offset.
//!
//! A manifest that makes a job open resumes reading at the skip points; the
//! records between the last probe and now are read like any others.

use crate::consumer::wake_fetchers;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::kafka::{self, QuietContext};
use sluice_common::Config;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// End offsets taken by one probe: the results topic's first, then the jobs
/// topic's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Marks {
    /// Results partition → its end offset.
    pub results: HashMap<i32, i64>,
    /// Jobs partition → its end offset.
    pub jobs: HashMap<i32, i64>,
}

impl Marks {
    /// Whether the jobs topic has been read up to these marks, given the next
    /// offset to read per jobs partition.
    pub fn jobs_read(&self, jobs_next: &HashMap<i32, i64>) -> bool {
        self.jobs
            .iter()
            .all(|(p, end)| *end <= 0 || jobs_next.get(p).is_some_and(|next| next >= end))
    }
}

/// Which results partitions are paused, and where each resumes.
#[derive(Debug, Default)]
pub(super) struct Idle {
    /// A probe is out.
    pub probing: bool,
    /// The last probe's marks, waiting until the jobs topic is read up to them.
    pub marks: Option<Marks>,
    /// Results partitions paused here, with the offset to resume at. A
    /// partition stays listed after it is revoked: librdkafka keeps the
    /// application's pause flag on it, also when it is assigned again.
    pub paused: HashMap<i32, i64>,
}

impl Idle {
    /// Whether results of partition `p` are skipped now.
    pub fn skips(&self, p: i32) -> bool {
        self.paused.contains_key(&p)
    }

    /// Takes `marks` as the new skip points for the `assigned` partitions, each
    /// no lower than the next offset already read there (`positions`, which it
    /// updates so that the skip point is stored as the partition's offset).
    /// Returns the partitions to pause now (those not paused yet).
    pub fn skip_to(
        &mut self,
        marks: &Marks,
        assigned: &[i32],
        positions: &mut HashMap<i32, i64>,
    ) -> Vec<i32> {
        let mut newly = Vec::new();
        for &p in assigned {
            let Some(end) = marks.results.get(&p) else {
                continue;
            };
            let at = positions.get(&p).map_or(*end, |next| (*next).max(*end));
            positions.insert(p, at);
            if self.paused.insert(p, at).is_none() {
                newly.push(p);
            }
        }
        newly
    }

    /// Forgets every pause, returning the partitions to resume and the offset
    /// each resumes at.
    pub fn wake(&mut self) -> Vec<(i32, i64)> {
        self.marks = None;
        let mut all: Vec<(i32, i64)> = self.paused.drain().collect();
        all.sort_unstable();
        all
    }
}

/// Takes [`Marks`] with a client of its own, off the gatherer's task.
pub(super) struct Prober {
    client: Arc<BaseConsumer<QuietContext>>,
    /// The results topic and its partition count.
    results: (String, i32),
    /// The jobs topic and its partition count.
    jobs: (String, i32),
    timeout: Duration,
    marks: mpsc::Sender<Option<Marks>>,
}

impl Prober {
    /// A prober for `cfg`'s topics, and where its marks arrive (`None` for a
    /// probe that failed: the gatherer then reads on).
    pub fn new(
        cfg: &Config,
        client_id: &str,
        results_partitions: i32,
        jobs_partitions: i32,
    ) -> Result<(Prober, mpsc::Receiver<Option<Marks>>), sluice_common::Error> {
        let client = kafka::reader_config(cfg, &format!("{client_id}-probe"))
            .create_with_context(QuietContext)
            .map_err(sluice_common::Error::client)?;
        let (tx, rx) = mpsc::channel(1);
        let prober = Prober {
            client: Arc::new(client),
            results: (cfg.topics.results.clone(), results_partitions),
            jobs: (cfg.topics.jobs.clone(), jobs_partitions),
            timeout: Duration::from_millis(cfg.kafka.connect_timeout_ms),
            marks: tx,
        };
        Ok((prober, rx))
    }

    /// Takes the results topic's end offsets, then the jobs topic's.
    pub fn start(&self) {
        let (client, results, jobs) =
            (self.client.clone(), self.results.clone(), self.jobs.clone());
        let (timeout, tx) = (self.timeout, self.marks.clone());
        // ListOffsets requests block: keep them off the async threads.
        tokio::task::spawn_blocking(move || {
            let marks = end_offsets(&client, &results, timeout).and_then(|results| {
                let jobs = end_offsets(&client, &jobs, timeout)?;
                Ok(Marks { results, jobs })
            });
            let marks = marks
                .inspect_err(
                    |e| tracing::debug!(error = %e, "gatherer: end offsets not taken; reading on"),
                )
                .ok();
            let _ = tx.blocking_send(marks);
        });
    }
}

/// Every partition's end offset, in one ListOffsets request per leader: a
/// timestamp of -1 asks for the latest offset.
fn end_offsets(
    client: &BaseConsumer<QuietContext>,
    (topic, partitions): &(String, i32),
    timeout: Duration,
) -> Result<HashMap<i32, i64>, rdkafka::error::KafkaError> {
    let mut query = TopicPartitionList::new();
    for p in 0..*partitions {
        query.add_partition_offset(topic, p, Offset::End)?;
    }
    let found = client.offsets_for_times(query, timeout)?;
    let mut out = HashMap::new();
    for e in found.elements() {
        e.error()?;
        if let Offset::Offset(o) = e.offset() {
            out.insert(e.partition(), o);
        } else {
            return Err(rdkafka::error::KafkaError::OffsetFetch(
                rdkafka::error::RDKafkaErrorCode::OffsetOutOfRange,
            ));
        }
    }
    Ok(out)
}

/// Pauses `partitions` of `topic`.
pub(super) fn pause(consumer: &StreamConsumer<QuietContext>, topic: &str, partitions: &[i32]) {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    if let Err(e) = consumer.pause(&tpl) {
        tracing::warn!(error = %e, "gatherer: could not pause results partitions");
    }
}

/// Resumes `partitions` of `topic`, each assigned one at its skip point, and
/// wakes the fetcher: a resume alone leaves librdkafka's broker thread asleep
/// for up to a second ([`wake_fetchers`]).
pub(super) fn resume(
    consumer: &Arc<StreamConsumer<QuietContext>>,
    topic: &str,
    partitions: &[(i32, i64)],
) {
    let assigned = consumer.assignment().unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    for (p, at) in partitions {
        // Seek while paused: librdkafka then resumes at the new offset.
        if assigned.find_partition(topic, *p).is_some() {
            if let Err(e) = consumer.seek(topic, *p, Offset::Offset(*at), Duration::ZERO) {
                tracing::debug!(error = %e, partition = p, "gatherer: seek to the skip point failed; reading from the last position");
            }
        }
        tpl.add_partition(topic, *p);
    }
    if let Err(e) = consumer.resume(&tpl) {
        tracing::warn!(error = %e, "gatherer: could not resume results partitions");
    }
    let consumer = consumer.clone();
    // Watermark requests block: keep them off the async threads.
    tokio::task::spawn_blocking(move || wake_fetchers(&*consumer));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(results: &[(i32, i64)], jobs: &[(i32, i64)]) -> Marks {
        Marks {
            results: results.iter().copied().collect(),
            jobs: jobs.iter().copied().collect(),
        }
    }

    #[test]
    fn the_jobs_topic_must_be_read_up_to_the_marks() {
        let m = marks(&[], &[(0, 5), (1, 0)]);
        // Partition 1 is empty: nothing to read there.
        assert!(!m.jobs_read(&HashMap::new()));
        assert!(!m.jobs_read(&[(0, 4)].into_iter().collect()));
        assert!(m.jobs_read(&[(0, 5)].into_iter().collect()));
        assert!(m.jobs_read(&[(0, 9), (1, 3)].into_iter().collect()));
    }

    #[test]
    fn skip_points_never_go_below_what_was_read_and_only_move_forward() {
        let mut idle = Idle::default();
        let mut positions: HashMap<i32, i64> = [(0, 50)].into_iter().collect();
        // Partition 0 was read past its mark; 1 never read; 2 not assigned.
        let first = marks(&[(0, 40), (1, 70), (2, 9)], &[]);
        assert_eq!(idle.skip_to(&first, &[0, 1], &mut positions), vec![0, 1]);
        assert_eq!(positions, [(0, 50), (1, 70)].into_iter().collect());
        assert!(idle.skips(0) && idle.skips(1) && !idle.skips(2));
        // A later probe moves the skip points; nothing new to pause.
        let later = marks(&[(0, 60), (1, 80)], &[]);
        assert!(idle.skip_to(&later, &[0, 1], &mut positions).is_empty());
        assert_eq!(idle.wake(), vec![(0, 60), (1, 80)]);
        assert!(!idle.skips(0) && idle.marks.is_none());
    }
}
