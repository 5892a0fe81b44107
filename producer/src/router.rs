//! Which topic a task goes to: its pool, its priority lane, the long-task lane.
//!
//! The layout is [`sluice_common::routing`]'s: `resources.class` picks the pool
//! (`<tasks>.pool.<class>`), then with `topics.long_lane` a task expected to run
//! at least `producer.long_task_ms` goes to the pool's long lane, else with
//! `topics.priority_lanes` its `priority` picks `high`, `normal` or `low`. A
//! task's expected time is its `expected_ms`, else `producer.expected_ms` of its
//! kind; without either it is not a long task.

use crate::input::InputError;
use sluice_common::config::{Config, TopicsConfig};
use sluice_common::resources::Needs;
use sluice_common::routing::Routes;
use sluice_common::Task;
use std::collections::BTreeMap;

/// Routes tasks of one configuration.
#[derive(Debug, Clone)]
pub struct Router {
    topics: TopicsConfig,
    general: Routes,
    long_task_ms: u64,
    expected_ms: BTreeMap<String, u64>,
}

impl Router {
    /// The router of `cfg`.
    pub fn new(cfg: &Config) -> Self {
        Router {
            topics: cfg.topics.clone(),
            general: Routes::new(&cfg.topics, None),
            long_task_ms: cfg.producer.long_task_ms,
            expected_ms: cfg.producer.expected_ms.clone(),
        }
    }

    /// The lane topics of the general pool, created when a publisher connects.
    pub fn general_topics(&self) -> Vec<String> {
        self.general
            .lanes()
            .into_iter()
            .map(|l| self.general.topic(l))
            .collect()
    }

    /// The topic for `task`; an error when its `resources` are malformed.
    pub fn topic(&self, task: &Task) -> Result<String, InputError> {
        let needs = Needs::parse(task.resources.as_ref()).map_err(InputError::NotTask)?;
        let pool;
        let routes = match &needs.class {
            None => &self.general,
            Some(class) => {
                pool = Routes::new(&self.topics, Some(class));
                &pool
            }
        };
        let expected = task
            .expected_ms
            .or_else(|| self.expected_ms.get(&task.kind).copied());
        let long = expected.is_some_and(|ms| ms >= self.long_task_ms);
        Ok(routes.topic_for(task.priority, long))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn router(lanes: bool) -> Router {
        let mut cfg = Config::default();
        cfg.topics.tasks = "t".into();
        cfg.topics.priority_lanes = lanes;
        cfg.topics.long_lane = lanes;
        cfg.producer.long_task_ms = 1000;
        cfg.producer.expected_ms.insert("render".into(), 5000);
        Router::new(&cfg)
    }

    fn task(kind: &str, f: impl FnOnce(&mut Task)) -> Task {
        let mut t = Task::new(kind, json!(null));
        f(&mut t);
        t
    }

    #[test]
    fn priority_pool_and_expected_time_pick_the_topic() {
        let r = router(true);
        assert_eq!(r.topic(&task("x", |_| {})).unwrap(), "t");
        assert_eq!(
            r.topic(&task("x", |t| t.priority = Some(3))).unwrap(),
            "t.high"
        );
        assert_eq!(
            r.topic(&task("x", |t| t.priority = Some(-3))).unwrap(),
            "t.low"
        );
        assert_eq!(r.topic(&task("render", |_| {})).unwrap(), "t.long");
        assert_eq!(
            r.topic(&task("render", |t| t.expected_ms = Some(10)))
                .unwrap(),
            "t",
            "the task's own estimate wins"
        );
        assert_eq!(
            r.topic(&task("x", |t| t.resources =
                Some(json!({"class": "gpu", "gpu": 1}))))
                .unwrap(),
            "t.pool.gpu"
        );
        assert!(r
            .topic(&task("x", |t| t.resources = Some(json!({"cpu": "lots"}))))
            .is_err());
        assert_eq!(r.general_topics(), vec!["t.high", "t", "t.long", "t.low"]);
    }

    #[test]
    fn without_lanes_everything_but_pools_stays_on_the_task_topic() {
        let r = router(false);
        assert_eq!(
            r.topic(&task("render", |t| t.priority = Some(9))).unwrap(),
            "t"
        );
        assert_eq!(
            r.topic(&task("x", |t| t.resources = Some(json!({"class": "gpu"}))))
                .unwrap(),
            "t.pool.gpu"
        );
    }
}
