//! Where a task goes: lanes and the topics that carry them.
//!
//! A *lane* is a class of tasks a worker schedules separately: three priority
//! lanes (`high`, `normal`, `low`) and a `long` lane for tasks expected to run
//! long. Each lane of a *base topic* is its own Kafka topic, so a backlog in one
//! lane never sits in front of another lane's records in a partition:
//!
//! | lane     | topic          | holds                                          |
//! |----------|----------------|------------------------------------------------|
//! | `high`   | `<base>.high`  | `priority` > 0                                 |
//! | `normal` | `<base>`       | `priority` 0 or absent                         |
//! | `low`    | `<base>.low`   | `priority` < 0                                 |
//! | `long`   | `<base>.long`  | expected run time ≥ `producer.long_task_ms`    |
//!
//! The normal lane is the base topic itself, so producers and foreign clients
//! that know nothing about lanes keep working unchanged. Three priority lanes
//! rather than one per priority value: every lane topic costs a fetch per
//! partition and a share an operator has to reason about, and three levels are
//! what people set in practice; the full `priority` value still orders tasks
//! *within* a worker.
//!
//! The base topic is `topics.tasks`, or `<topics.tasks>.pool.<class>` for tasks
//! whose `resources` name a `class`: a pool's topics are consumed only by the
//! workers configured with `worker.pool = "<class>"`.

use crate::config::TopicsConfig;
use std::fmt;

/// A scheduling lane, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// `priority` > 0.
    High,
    /// `priority` 0 or absent.
    Normal,
    /// Tasks expected to run long (routed by the producer).
    Long,
    /// `priority` < 0.
    Low,
}

impl Lane {
    /// Every lane, in the order a worker prefers them under load.
    pub const ALL: [Lane; 4] = [Lane::High, Lane::Normal, Lane::Long, Lane::Low];

    /// The priority lane of a task's `priority`.
    pub fn for_priority(priority: Option<i32>) -> Lane {
        match priority.unwrap_or(0) {
            p if p > 0 => Lane::High,
            0 => Lane::Normal,
            _ => Lane::Low,
        }
    }

    /// Position in [`Lane::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value and config key.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Long => "long",
            Lane::Low => "low",
        }
    }

    fn suffix(self) -> Option<&'static str> {
        match self {
            Lane::Normal => None,
            other => Some(other.as_str()),
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The topic layout of one base topic under a [`TopicsConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    base: String,
    retry: String,
    priority_lanes: bool,
    long_lane: bool,
}

impl Routes {
    /// The routes of the pool `class`, or of the general pool when `None`.
    pub fn new(topics: &TopicsConfig, class: Option<&str>) -> Routes {
        let (base, retry) = match class {
            None => (topics.tasks.clone(), topics.retry_topic()),
            Some(c) => {
                let base = pool_topic(&topics.tasks, c);
                let retry = format!("{base}.retry");
                (base, retry)
            }
        };
        Routes {
            base,
            retry,
            priority_lanes: topics.priority_lanes,
            long_lane: topics.long_lane,
        }
    }

    /// The base topic (the normal lane).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Where tasks of this pool wait for their next attempt.
    pub fn retry(&self) -> &str {
        &self.retry
    }

    /// Lanes that have topics under this configuration.
    pub fn lanes(&self) -> Vec<Lane> {
        Lane::ALL
            .into_iter()
            .filter(|l| match l {
                Lane::Normal => true,
                Lane::High | Lane::Low => self.priority_lanes,
                Lane::Long => self.long_lane,
            })
            .collect()
    }

    /// The topic of `lane`; lanes without a topic here fall back to the base.
    pub fn topic(&self, lane: Lane) -> String {
        match lane.suffix() {
            Some(s) if self.lanes().contains(&lane) => format!("{}.{s}", self.base),
            _ => self.base.clone(),
        }
    }

    /// Where a task with `priority` goes; `long` when it is expected to run long.
    pub fn topic_for(&self, priority: Option<i32>, long: bool) -> String {
        if long && self.long_lane {
            return self.topic(Lane::Long);
        }
        self.topic(Lane::for_priority(priority))
    }

    /// Every topic a worker of this pool consumes: the lanes, then the retry topic.
    pub fn consumed(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lanes().into_iter().map(|l| self.topic(l)).collect();
        v.push(self.retry.clone());
        v
    }

    /// The lane a record of `topic` belongs to, when `topic` is a lane topic.
    pub fn lane_of_topic(&self, topic: &str) -> Option<Lane> {
        self.lanes().into_iter().find(|l| self.topic(*l) == topic)
    }
}

/// The base topic of the pool `class`.
pub fn pool_topic(tasks: &str, class: &str) -> String {
    format!("{tasks}.pool.{class}")
}

/// Checks that `class` can be part of a topic name.
pub fn check_class(class: &str) -> Result<(), String> {
    if class.is_empty()
        || class.len() > 100
        || !class
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "resource class `{class}` must be 1 to 100 characters of a-z, A-Z, 0-9, `-` and `_` (it becomes part of a topic name)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(lanes: bool, long: bool) -> TopicsConfig {
        TopicsConfig {
            tasks: "t".into(),
            priority_lanes: lanes,
            long_lane: long,
            ..TopicsConfig::default()
        }
    }

    #[test]
    fn priorities_map_to_lanes_by_sign() {
        assert_eq!(Lane::for_priority(None), Lane::Normal);
        assert_eq!(Lane::for_priority(Some(0)), Lane::Normal);
        assert_eq!(Lane::for_priority(Some(7)), Lane::High);
        assert_eq!(Lane::for_priority(Some(-1)), Lane::Low);
    }

    #[test]
    fn lane_topics_exist_only_when_enabled() {
        let off = Routes::new(&topics(false, false), None);
        assert_eq!(off.topic_for(Some(5), true), "t");
        assert_eq!(off.consumed(), vec!["t", "t.retry"]);
        let on = Routes::new(&topics(true, true), None);
        assert_eq!(on.topic_for(Some(5), false), "t.high");
        assert_eq!(on.topic_for(Some(-5), false), "t.low");
        assert_eq!(on.topic_for(None, false), "t");
        assert_eq!(on.topic_for(Some(5), true), "t.long");
        assert_eq!(
            on.consumed(),
            vec!["t.high", "t", "t.long", "t.low", "t.retry"]
        );
        assert_eq!(on.lane_of_topic("t.low"), Some(Lane::Low));
        assert_eq!(on.lane_of_topic("t.retry"), None);
    }

    #[test]
    fn pools_have_their_own_topics_and_retries() {
        let gpu = Routes::new(&topics(true, false), Some("gpu"));
        assert_eq!(gpu.base(), "t.pool.gpu");
        assert_eq!(gpu.topic_for(Some(1), false), "t.pool.gpu.high");
        assert_eq!(gpu.retry(), "t.pool.gpu.retry");
        assert!(check_class("gpu-a100_x").is_ok());
        assert!(check_class("a.b").is_err());
        assert!(check_class("").is_err());
    }
}
