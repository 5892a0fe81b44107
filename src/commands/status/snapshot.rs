//! One look at a consumer group: who is in it, what each partition has committed,
//! how far behind it is, and how fast commits move between two looks.
//!
//! Everything is read from outside the group. The observer consumer carries the
//! group's id only so that OffsetFetch answers for that group; it never subscribes,
//! so it never joins, never triggers a rebalance and never commits.
//!
//! What each broker answers:
//! - Committed offsets (OffsetFetch) and watermarks (ListOffsets): every broker
//!   Sluice supports, and for both group protocols.
//! - Members and their assignments (ListGroups + DescribeGroups): Apache Kafka, for
//!   classic-protocol groups. librdkafka's mock cluster (the embedded broker)
//!   implements neither request, whatever the group protocol. Tansu 0.6 on SQLite
//!   storage fails to read back its own group record and drops the connection (its
//!   log shows a `SerdeJson` "expected struct GroupDetail" error); on `memory://`
//!   storage it lists member ids without client ids or assignments. KIP-848
//!   (`group.protocol=consumer`) groups are described by ConsumerGroupDescribe,
//!   which rust-rdkafka 0.38 does not expose, not by DescribeGroups.
//!   Where members cannot be read, the snapshot says why and keeps everything else.

use super::assignment;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sluice_common::kafka::{self, QuietContext};
use sluice_common::{Config, Error};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A group's state on one topic at one moment.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct Snapshot {
    /// Consumer group.
    pub group: String,
    /// Task topic.
    pub topic: String,
    /// Wall-clock time of the snapshot, ms since the Unix epoch.
    pub at_ms: u64,
    /// Group state as the broker reports it (`Stable`, `Empty`, …); `None` when
    /// the broker cannot describe the group.
    pub state: Option<String>,
    /// Members, or `None` when this broker cannot list them (see
    /// `members_unavailable`).
    pub members: Option<Vec<Member>>,
    /// Why `members` is `None`.
    pub members_unavailable: Option<String>,
    /// Every partition of the topic, in order.
    pub partitions: Vec<PartitionStatus>,
    /// Sum of `lag` over partitions.
    pub total_lag: i64,
    /// Sum of committed offsets (partitions without a commit count 0).
    pub committed_total: i64,
    /// Commit rate since the previous snapshot; `None` for the first one.
    pub throughput: Option<Throughput>,
    /// When the offsets were read, for rates; not part of the output.
    #[serde(skip)]
    read_at: Option<Instant>,
}

/// One group member.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct Member {
    /// Broker-assigned member id.
    pub member_id: String,
    /// The client's `client.id`: a Sluice worker's id. Empty when the broker
    /// does not report it.
    pub client_id: String,
    /// Where the member connects from, as the broker sees it.
    pub host: String,
    /// Partitions of the task topic assigned to this member.
    pub partitions: Vec<i32>,
    /// Why the assignment could not be read, if it could not.
    pub assignment_error: Option<String>,
}

/// One partition of the task topic.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct PartitionStatus {
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset: the next task it will run. `None` when the
    /// group has never committed on this partition.
    pub committed: Option<i64>,
    /// Oldest offset still in the partition.
    pub low_watermark: i64,
    /// Offset the next published task will get.
    pub high_watermark: i64,
    /// Tasks not yet committed: high watermark minus the committed offset, or
    /// minus the low watermark when nothing is committed (workers start at the
    /// oldest task then).
    pub lag: i64,
    /// Client id of the member that holds the partition, when known.
    pub member: Option<String>,
}

/// How fast the group commits.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct Throughput {
    /// Tasks committed per second over the window.
    pub tasks_per_s: f64,
    /// Tasks committed in the window.
    pub tasks: i64,
    /// Window length, ms.
    pub window_ms: u64,
}

impl Member {
    /// The name to show: the client id, or the member id when the broker
    /// reports no client id.
    pub fn name(&self) -> &str {
        if self.client_id.is_empty() {
            &self.member_id
        } else {
            &self.client_id
        }
    }
}

impl PartitionStatus {
    /// Where the group's consumption stands: its commit, or the oldest offset the
    /// group would start from when it has none.
    fn position(&self) -> i64 {
        self.committed.unwrap_or(self.low_watermark)
    }
}

impl Snapshot {
    /// Adds the commit rate since `earlier`. Offsets moving backwards (a reset)
    /// count as zero rather than negative work.
    pub fn with_throughput_since(mut self, earlier: &Snapshot) -> Snapshot {
        let (Some(now), Some(then)) = (self.read_at, earlier.read_at) else {
            return self;
        };
        let before: BTreeMap<i32, i64> = earlier
            .partitions
            .iter()
            .map(|p| (p.partition, p.position()))
            .collect();
        let tasks: i64 = self
            .partitions
            .iter()
            .filter_map(|p| before.get(&p.partition).map(|b| (p.position() - b).max(0)))
            .sum();
        let window = now.saturating_duration_since(then);
        self.throughput = Some(Throughput {
            tasks_per_s: tasks as f64 / window.as_secs_f64().max(1e-3),
            tasks,
            window_ms: window.as_millis() as u64,
        });
        self
    }
}

/// Reads group snapshots; one per `take`.
pub struct Observer {
    consumer: BaseConsumer<QuietContext>,
    cfg: Config,
    group: String,
    topic: String,
}

impl Observer {
    /// Connects, and fails early when no broker answers.
    pub fn connect(cfg: &Config, group: &str, topic: &str) -> Result<Observer, Error> {
        let consumer = kafka::group_observer(cfg, group)?;
        kafka::wait_reachable(consumer.client(), cfg)?;
        Ok(Observer {
            consumer,
            cfg: cfg.clone(),
            group: group.to_string(),
            topic: topic.to_string(),
        })
    }

    /// Takes a snapshot. Blocks on broker round trips: call it off the reactor.
    pub fn take(&self) -> Result<Snapshot, Error> {
        let timeout = Duration::from_millis(self.cfg.kafka.connect_timeout_ms);
        let topic = &self.topic;
        let count =
            kafka::partition_count(self.consumer.client(), topic, timeout)?.ok_or_else(|| {
                Error::Topic {
                    topic: topic.clone(),
                    cause: "does not exist".into(),
                }
            })?;

        let mut tpl = TopicPartitionList::new();
        for p in 0..count {
            tpl.add_partition(topic, p);
        }
        let read_at = Instant::now();
        let committed = self
            .consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| Error::Client(format!("committed offsets of {}: {e}", self.group)))?;
        let committed: BTreeMap<i32, Option<i64>> = committed
            .elements_for_topic(topic)
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(n) => (e.partition(), Some(n)),
                _ => (e.partition(), None),
            })
            .collect();

        let (state, members, members_unavailable) = match self.members(timeout) {
            Ok((state, members)) => (state, Some(members), None),
            Err(why) => (None, None, Some(why)),
        };
        let holder: BTreeMap<i32, &str> = members
            .iter()
            .flatten()
            .flat_map(|m| m.partitions.iter().map(|p| (*p, m.name())))
            .collect();

        let mut partitions = Vec::with_capacity(count as usize);
        for p in 0..count {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(|e| Error::Client(format!("watermarks of {topic}/{p}: {e}")))?;
            let committed = committed.get(&p).copied().flatten();
            let mut status = PartitionStatus {
                partition: p,
                committed,
                low_watermark: low,
                high_watermark: high,
                lag: 0,
                member: holder.get(&p).map(|m| m.to_string()),
            };
            // Watermarks are read after commits, so a commit beyond the high
            // watermark means the topic was recreated under the group: not
            // negative lag.
            status.lag = (high - status.position()).max(0);
            partitions.push(status);
        }
        Ok(Snapshot {
            group: self.group.clone(),
            topic: topic.clone(),
            at_ms: sluice_common::task::now_ms(),
            state,
            total_lag: partitions.iter().map(|p| p.lag).sum(),
            committed_total: partitions.iter().filter_map(|p| p.committed).sum(),
            members,
            members_unavailable,
            partitions,
            throughput: None,
            read_at: Some(read_at),
        })
    }

    /// The group's state and members, or why the broker cannot say.
    fn members(&self, timeout: Duration) -> Result<(Option<String>, Vec<Member>), String> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), timeout)
            .map_err(|e| match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::UnsupportedFeature) => {
                    "it does not implement ListGroups/DescribeGroups".to_string()
                }
                Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                    "it closed the connection on ListGroups/DescribeGroups".to_string()
                }
                _ => format!("ListGroups/DescribeGroups failed: {e}"),
            })?;
        let Some(info) = list.groups().iter().find(|g| g.name() == self.group) else {
            // The broker answered and knows no such live group: no members.
            // A group that exists only as committed offsets is not always listed.
            return Ok((None, vec![]));
        };
        let members = info
            .members()
            .iter()
            .map(|m| {
                let (partitions, assignment_error) =
                    match assignment::parse(m.assignment().unwrap_or_default()) {
                        Ok(mut a) => (a.remove(&self.topic).unwrap_or_default(), None),
                        Err(e) => (vec![], Some(e.to_string())),
                    };
                Member {
                    member_id: m.id().to_string(),
                    client_id: m.client_id().to_string(),
                    host: m.client_host().to_string(),
                    partitions,
                    assignment_error,
                }
            })
            .collect();
        Ok((Some(info.state().to_string()), members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(positions: &[(Option<i64>, i64)], read_at: Instant) -> Snapshot {
        Snapshot {
            group: "g".into(),
            topic: "t".into(),
            at_ms: 0,
            state: None,
            members: None,
            members_unavailable: None,
            partitions: positions
                .iter()
                .enumerate()
                .map(|(i, (committed, low))| PartitionStatus {
                    partition: i as i32,
                    committed: *committed,
                    low_watermark: *low,
                    high_watermark: 100,
                    lag: 0,
                    member: None,
                })
                .collect(),
            total_lag: 0,
            committed_total: 0,
            throughput: None,
            read_at: Some(read_at),
        }
    }

    #[test]
    fn throughput_counts_commits_per_second_from_the_start_position() {
        let t0 = Instant::now();
        let before = snapshot(&[(Some(10), 0), (None, 5), (Some(50), 0)], t0);
        // Partition 1 had no commit: its workers started at the low watermark 5.
        // Partition 2 was reset backwards: no negative work.
        let after = snapshot(
            &[(Some(30), 0), (Some(15), 5), (Some(40), 0)],
            t0 + Duration::from_secs(2),
        )
        .with_throughput_since(&before);
        let t = after.throughput.unwrap();
        assert_eq!(t.tasks, 30);
        assert_eq!(t.window_ms, 2000);
        assert!((t.tasks_per_s - 15.0).abs() < 1e-9, "{}", t.tasks_per_s);
    }
}
