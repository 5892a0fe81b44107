//! Lag-aware partitioning of keyless tasks.
//!
//! Round-robin gives every partition the same share of keyless tasks, however
//! fast its consumer is; a slow worker then collects a backlog that grows for
//! as long as the load lasts. With `producer.partitioner = "lag_aware"` a
//! [`LagWatcher`] thread reads, every `producer.lag_refresh_ms`, the consumer
//! group's committed offsets and each partition's high watermark; a keyless
//! task then goes to the less loaded of two randomly chosen partitions
//! ("power of two choices"), where load is the partition's lag at the last
//! refresh plus the tasks this producer sent there since. Two choices rather
//! than the single least loaded partition: producers that share a stale view
//! would otherwise all pile onto the same partition until the next refresh.
//!
//! Keyed tasks are never moved: their partition is their key's (per-key order).
//! Until the first refresh, and for topics the group has never committed on,
//! keyless tasks are spread round-robin.

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::{kafka, Config};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Load per partition of one topic.
#[derive(Debug)]
pub struct LagTable {
    /// Lag at the last refresh; `None` until one succeeded.
    lag: RwLock<Option<Vec<i64>>>,
    /// Tasks sent per partition since the last refresh.
    sent: Vec<AtomicI64>,
}

impl LagTable {
    /// A table for `partitions` partitions, empty until refreshed.
    pub fn new(partitions: i32) -> Self {
        LagTable {
            lag: RwLock::new(None),
            sent: (0..partitions.max(1)).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// Replaces the lags (one per partition) and restarts the sent counts.
    pub fn refresh(&self, lags: Vec<i64>) {
        let mut l = self.lag.write().expect("lag lock");
        for s in &self.sent {
            s.store(0, Ordering::Relaxed);
        }
        *l = Some(lags);
    }

    /// The less loaded of partitions `a` and `b`, counted as sent there; `None`
    /// before the first refresh.
    pub fn choose(&self, a: i32, b: i32) -> Option<i32> {
        let lag = self.lag.read().expect("lag lock");
        let lag = lag.as_ref()?;
        let load = |p: i32| {
            lag.get(p as usize).copied().unwrap_or(0)
                + self.sent[p as usize].load(Ordering::Relaxed)
        };
        let pick = if load(b) < load(a) { b } else { a };
        self.sent[pick as usize].fetch_add(1, Ordering::Relaxed);
        Some(pick)
    }
}

/// The thread that keeps [`LagTable`]s current; stops when dropped.
pub struct LagWatcher {
    stop: Arc<AtomicBool>,
    tables: Arc<RwLock<HashMap<String, Arc<LagTable>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LagWatcher {
    /// Starts watching the lag of `group` (default: `worker.group`).
    pub fn start(cfg: &Config) -> Result<LagWatcher, sluice_common::Error> {
        let group = cfg
            .producer
            .lag_group
            .clone()
            .unwrap_or_else(|| cfg.worker.group.clone());
        let consumer = kafka::group_observer(cfg, &group)?;
        let stop = Arc::new(AtomicBool::new(false));
        let tables: Arc<RwLock<HashMap<String, Arc<LagTable>>>> = Arc::default();
        let every = Duration::from_millis(cfg.producer.lag_refresh_ms);
        let timeout = Duration::from_millis(cfg.kafka.connect_timeout_ms);
        let (s, t) = (stop.clone(), tables.clone());
        let thread = std::thread::Builder::new()
            .name("sluice-lag".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let watched: Vec<(String, Arc<LagTable>)> = t
                        .read()
                        .expect("tables lock")
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    for (topic, table) in watched {
                        match lags(&consumer, &topic, table.sent.len() as i32, timeout) {
                            Ok(Some(l)) => table.refresh(l),
                            Ok(None) => {}
                            Err(e) => {
                                tracing::debug!(error = %e, topic, "lag refresh failed; keeping the last view")
                            }
                        }
                    }
                    // Sleep in slices so that dropping the watcher is quick.
                    let mut left = every;
                    while !left.is_zero() && !s.load(Ordering::Relaxed) {
                        let step = left.min(Duration::from_millis(50));
                        std::thread::sleep(step);
                        left -= step;
                    }
                }
            })
            .map_err(|e| sluice_common::Error::Client(format!("lag watcher thread: {e}")))?;
        Ok(LagWatcher {
            stop,
            tables,
            thread: Some(thread),
        })
    }

    /// The table of `topic`, watched from now on.
    pub fn table(&self, topic: &str, partitions: i32) -> Arc<LagTable> {
        self.tables
            .write()
            .expect("tables lock")
            .entry(topic.to_string())
            .or_insert_with(|| Arc::new(LagTable::new(partitions)))
            .clone()
    }
}

impl Drop for LagWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lag per partition of `topic` for the observer's group; `None` while the
/// group has committed nothing there (no view yet: stay round-robin).
fn lags<C: Consumer<kafka::QuietContext>>(
    consumer: &C,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<Option<Vec<i64>>, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut any = false;
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let from = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(n)) => {
                any = true;
                n
            }
            _ => low,
        };
        out.push((high - from).max(0));
    }
    Ok(any.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_less_loaded_of_two_wins_and_sent_tasks_count_as_load() {
        let t = LagTable::new(3);
        assert_eq!(t.choose(0, 1), None, "no view yet");
        t.refresh(vec![10, 0, 4]);
        assert_eq!(t.choose(0, 1), Some(1));
        // Partition 1 takes tasks until its load passes partition 2's.
        let picks: Vec<i32> = (0..6).map(|_| t.choose(2, 1).unwrap()).collect();
        assert_eq!(picks, vec![1, 1, 1, 2, 1, 2]);
        t.refresh(vec![0, 50, 50]);
        assert_eq!(t.choose(1, 0), Some(0), "a refresh restarts the counts");
    }
}
