//! librdkafka statistics into gauges: consumer lag and offsets per assigned
//! partition (from the group consumer), broker round-trip times and the queue
//! (from the worker's producer).
//!
//! Round-trip times come from the producer because the consumer's are mostly
//! waiting: a broker holds a fetch request open until records arrive or
//! `fetch.wait.max.ms` passes, and librdkafka counts that as round trip, so an
//! idle consumer reads as a slow broker.
//!
//! librdkafka reports every `metrics.statistics_interval_ms` through the
//! client context's `stats` callback. A series that a report no longer contains
//! (a revoked partition, a broker gone from the metadata) is removed, so the
//! gauges describe the latest report and nothing older.

use super::Metrics;
use prometheus::{Gauge, GaugeVec, IntGauge, IntGaugeVec};
use rdkafka::statistics::Statistics;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(super) struct StatsGauges {
    pub partition_lag: IntGaugeVec,
    pub lag: IntGauge,
    pub committed: IntGaugeVec,
    pub end: IntGaugeVec,
    pub broker_rtt: GaugeVec,
    pub producer_queue: Gauge,
    /// Assigned partitions with lag, for the scaling signal (not exported).
    pub lagging: AtomicUsize,
}

/// Label sets set by the previous report.
#[derive(Default)]
pub(super) struct Seen {
    partitions: HashSet<[String; 2]>,
    brokers: HashSet<String>,
}

impl Metrics {
    /// A statistics report of the worker's group consumer. Lag and offsets are
    /// exported for `assigned` partitions only: librdkafka keeps reporting
    /// partitions it once knew, with stale numbers. Partition -1 (librdkafka's
    /// internal unassigned partition) and unknown values (-1) are skipped. A
    /// partition the group never committed counts every record still in it
    /// (end minus start offset) as lag, as `sluice status` does, because workers
    /// start at the oldest record; librdkafka reports -1 there.
    pub fn consumer_statistics(&self, stats: &Statistics, assigned: &[(String, i32)]) {
        let g = &self.stats;
        let mut seen = self.stats_seen.lock().expect("statistics lock");
        let mut partitions = HashSet::new();
        let mut total = 0;
        let mut lagging = 0;
        for (topic, p) in stats
            .topics
            .iter()
            .flat_map(|(name, t)| t.partitions.values().map(move |p| (name, p)))
        {
            if p.partition < 0
                || !assigned
                    .iter()
                    .any(|(t, n)| t == topic && *n == p.partition)
            {
                continue;
            }
            let labels = [topic.clone(), p.partition.to_string()];
            let values = [labels[0].as_str(), labels[1].as_str()];
            let never_committed = p.committed_offset < 0 && p.lo_offset >= 0;
            let lag = if p.consumer_lag < 0 && never_committed && p.hi_offset >= p.lo_offset {
                p.hi_offset - p.lo_offset
            } else {
                p.consumer_lag
            };
            if lag >= 0 {
                g.partition_lag.with_label_values(&values).set(lag);
                total += lag;
                lagging += usize::from(lag > 0);
            } else {
                let _ = g.partition_lag.remove_label_values(&values);
            }
            if p.committed_offset >= 0 {
                g.committed
                    .with_label_values(&values)
                    .set(p.committed_offset);
            }
            if p.hi_offset >= 0 {
                g.end.with_label_values(&values).set(p.hi_offset);
            }
            partitions.insert(labels);
        }
        for gone in seen.partitions.difference(&partitions) {
            let values = [gone[0].as_str(), gone[1].as_str()];
            let _ = g.partition_lag.remove_label_values(&values);
            let _ = g.committed.remove_label_values(&values);
            let _ = g.end.remove_label_values(&values);
        }
        seen.partitions = partitions;
        g.lag.set(total);
        g.lagging.store(lagging, Ordering::Relaxed);
    }

    /// Assigned partitions with records after their committed offset, from the
    /// last statistics report.
    pub fn lagging_partitions(&self) -> usize {
        self.stats.lagging.load(Ordering::Relaxed)
    }

    /// A statistics report of the worker's producer (results, retries, dead
    /// letters): its queue, and round-trip times per broker. A broker without
    /// requests in the last interval keeps its previous value.
    pub fn producer_statistics(&self, stats: &Statistics) {
        let g = &self.stats;
        g.producer_queue.set(stats.msg_cnt as f64);
        let mut seen = self.stats_seen.lock().expect("statistics lock");
        let mut brokers = HashSet::new();
        for b in stats.brokers.values() {
            // Bootstrap and coordinator handles (node id -1) repeat real brokers.
            let Some(rtt) = b.rtt.as_ref().filter(|_| b.nodeid >= 0) else {
                continue;
            };
            // A window without requests reports 0, which is not a round trip.
            if rtt.cnt > 0 {
                g.broker_rtt
                    .with_label_values(&[b.name.as_str()])
                    .set(rtt.avg as f64 / 1e6);
            }
            brokers.insert(b.name.clone());
        }
        for gone in seen.brokers.difference(&brokers) {
            let _ = g.broker_rtt.remove_label_values(&[gone.as_str()]);
        }
        seen.brokers = brokers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lag: i64) -> Statistics {
        use rdkafka::statistics::{Broker, Partition, Topic, Window};
        let partition = |partition, consumer_lag, committed_offset, hi_offset| Partition {
            partition,
            consumer_lag,
            committed_offset,
            hi_offset,
            ..Partition::default()
        };
        let broker = |name: &str, nodeid, rtt| Broker {
            name: name.into(),
            nodeid,
            rtt,
            ..Broker::default()
        };
        let rtt = Window {
            avg: 2500,
            cnt: 3,
            ..Window::default()
        };
        let topic = Topic {
            topic: "t".into(),
            partitions: [
                partition(0, lag, 10, 10 + lag.max(0)),
                partition(1, 5, 1, 6),
                partition(2, 9, 1, 10),
                partition(-1, 100, -1, -1),
            ]
            .into_iter()
            .map(|p| (p.partition, p))
            .collect(),
            ..Topic::default()
        };
        Statistics {
            msg_cnt: 7,
            brokers: [
                broker("127.0.0.1:9092/1", 1, Some(rtt)),
                broker("127.0.0.1:9092/bootstrap", -1, Some(Window::default())),
            ]
            .into_iter()
            .map(|b| (b.name.clone(), b))
            .collect(),
            topics: [("t".to_string(), topic)].into_iter().collect(),
            ..Statistics::default()
        }
    }

    fn assigned(ps: &[i32]) -> Vec<(String, i32)> {
        ps.iter().map(|p| ("t".to_string(), *p)).collect()
    }

    #[test]
    fn lag_of_assigned_partitions_and_broker_rtt() {
        let m = Metrics::new();
        m.consumer_statistics(&report(3), &assigned(&[0, 1]));
        m.producer_statistics(&report(3));
        let text = m.render();
        for line in [
            "sluice_partition_lag_records{partition=\"0\",topic=\"t\"} 3",
            "sluice_partition_lag_records{partition=\"1\",topic=\"t\"} 5",
            "sluice_lag_records 8",
            "sluice_partition_committed_offset{partition=\"0\",topic=\"t\"} 10",
            "sluice_partition_end_offset{partition=\"1\",topic=\"t\"} 6",
            "sluice_broker_rtt_seconds{broker=\"127.0.0.1:9092/1\"} 0.0025",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        assert!(!text.contains("partition=\"2\""), "not assigned");
        assert!(!text.contains("partition=\"-1\""));
        assert!(!text.contains("bootstrap"));
    }

    #[test]
    fn revoked_partitions_and_unknown_lag_disappear() {
        let m = Metrics::new();
        m.consumer_statistics(&report(3), &assigned(&[0, 1]));
        m.consumer_statistics(&report(-1), &assigned(&[0]));
        let text = m.render();
        assert!(!text.contains("partition=\"1\""), "{text}");
        assert!(!text.contains("sluice_partition_lag_records{"), "{text}");
        assert!(text.contains("sluice_lag_records 0"));
        assert!(text.contains("sluice_partition_committed_offset{partition=\"0\""));
    }

    #[test]
    fn a_partition_never_committed_lags_by_all_its_records() {
        let m = Metrics::new();
        let mut r = report(0);
        let p = r
            .topics
            .get_mut("t")
            .unwrap()
            .partitions
            .get_mut(&1)
            .unwrap();
        (p.consumer_lag, p.committed_offset, p.lo_offset, p.hi_offset) = (-1, -1001, 4, 10);
        m.consumer_statistics(&r, &assigned(&[1]));
        assert!(m
            .render()
            .contains("sluice_partition_lag_records{partition=\"1\",topic=\"t\"} 6"));
    }

    #[test]
    fn producer_queue() {
        let m = Metrics::new();
        m.producer_statistics(&report(0));
        assert!(m.render().contains("sluice_producer_queue_messages 7"));
    }
}
