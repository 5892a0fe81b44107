//! Jobs that have ended, as the worker's gatherer reads them on the jobs topic.
//!
//! A job ends with one job result, published by the gatherer that decided it.
//! Sub-tasks still queued at that moment can only be left over from a job that
//! failed fast (`--fail-fast`), or from one whose submission broke off: every
//! other verdict waits for all sub-tasks. Running them would waste the workers'
//! time on outputs nobody gathers, so the executor asks here before each
//! attempt and ends such a sub-task as `cancelled` instead.
//!
//! The gatherer reads the whole jobs topic, so every worker with a gatherer
//! learns of every job result, whichever worker gathered it. Without a gatherer
//! (`worker.gatherer = false`) the set stays empty and sub-tasks run as usual.
//! The ids are kept for the worker's lifetime, like the gatherer's own record of
//! finished jobs.

use std::collections::HashSet;
use std::sync::RwLock;

/// Ids of jobs with a job result.
#[derive(Debug, Default)]
pub struct EndedJobs {
    // Read once per job sub-task, written once per job: a std lock is never
    // held across an await and costs a few atomic operations uncontended.
    ids: RwLock<HashSet<String>>,
}

impl EndedJobs {
    /// A job result for `job_id` was read.
    pub fn ended(&self, job_id: &str) {
        let mut ids = self.ids.write().unwrap_or_else(|e| e.into_inner());
        if !ids.contains(job_id) {
            ids.insert(job_id.to_string());
        }
    }

    /// Whether the job has a job result already.
    pub fn has_ended(&self, job_id: &str) -> bool {
        self.ids
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(job_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_has_ended_once_its_result_was_read() {
        let ended = EndedJobs::default();
        assert!(!ended.has_ended("j1"));
        ended.ended("j1");
        ended.ended("j1");
        assert!(ended.has_ended("j1"));
        assert!(!ended.has_ended("j2"));
    }
}
