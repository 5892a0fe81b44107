//! The scheduling scenario (`--scenario scheduling`): each strategy of
//! docs/SCHEDULING.md against its baseline in the same run, on in-process
//! workers with their own topics and groups. `scripts/scheduling-report` runs it
//! and writes the figures into docs/SCHEDULING.md.
//!
//! - **Priority under saturation** ([`priority`]). One worker (4 slots, 20 ms
//!   tasks: about 200 tasks/s) gets a backlog of 500 low- and 500
//!   normal-priority tasks and, while it works through it, 150 high-priority
//!   tasks at 50/s. Baseline: the same tasks without priorities. Figures:
//!   p50/p99 queue wait (creation to start) per class, and the low class's
//!   share of starts while low and normal tasks both waited.
//! - **FIFO vs shortest-expected-first vs FIFO with the long-task lane**
//!   ([`policies`]) on a burst of 400 tasks, 320 short (10 ms) and 80 long
//!   (200 ms), interleaved, with `expected_ms`: mean and p99 completion time
//!   (creation to finish).
//! - **FIFO vs earliest-deadline-first** ([`policies`]) on a burst of 400 tasks
//!   of 10 ms (about 1 s of work on 4 slots) where every fifth task must finish
//!   within 400 ms of the burst and the rest within 10 s: the share of each
//!   class that finished by its deadline (a task whose deadline passed before
//!   it could start ends `expired` and counts as missed).
//! - **Resource-aware admission vs plain concurrency limits** ([`resources`]):
//!   a burst of heavy and light tasks against a capacity, resources on and off.
//! - **Per-kind rate limits** ([`rates`]): measured start rate per worker
//!   against the configured rate, and the same kind unlimited.
//! - **Adaptive concurrency vs fixed limits** ([`adaptive`]) against a handler
//!   whose latency and errors grow past a load knee.
//! - **Round-robin vs lag-aware partitioning** with one slow worker
//!   ([`partitioning`]): two workers × 2 slots share four partitions; `work`
//!   takes 10 ms on one and 40 ms on the other (250 tasks/s together); 1500
//!   keyless tasks arrive at 150/s. Figures: completion p50/p99 and the share
//!   the slow worker ran.
//! - **The scaling signal** ([`scaling`]): one worker under a load it cannot
//!   keep up with; the signal's value, then that many workers vs staying at one.
//!
//! Every run reads back one result per task, or fails.
//!
//! # Layout
//! - [`harness`]: topics per scenario, in-process workers, publishing, reading back.
//! - one file per strategy, each with its runs' figures and their Markdown.

mod adaptive;
mod harness;
mod partitioning;
mod policies;
mod priority;
mod rates;
mod resources;
mod scaling;

use serde::Serialize;
use sluice_common::Config;

/// Figures of every comparison.
#[derive(Debug, Serialize)]
pub struct Scheduling {
    pub priority: Vec<priority::PriorityRun>,
    pub policies: Vec<policies::PolicyRun>,
    pub deadlines: Vec<policies::DeadlineRun>,
    pub resources: Vec<resources::ResourceRun>,
    pub rates: Vec<rates::RateRun>,
    pub adaptive: Vec<adaptive::AdaptiveRun>,
    pub partitioning: Vec<partitioning::PartitionRun>,
    pub scaling: Vec<scaling::ScalingRun>,
}

/// Runs every comparison; `run` prefixes topic and group names.
pub async fn run(base: &Config, run: &str) -> anyhow::Result<Scheduling> {
    let mut base = base.clone();
    base.metrics.enabled = false;
    Ok(Scheduling {
        priority: priority::run(&base, run).await?,
        policies: policies::policies(&base, run).await?,
        deadlines: policies::deadlines(&base, run).await?,
        resources: resources::run(&base, run).await?,
        rates: rates::run(&base, run).await?,
        adaptive: adaptive::run(&base, run).await?,
        partitioning: partitioning::run(&base, run).await?,
        scaling: scaling::run(&base, run).await?,
    })
}

impl Scheduling {
    /// The figures as Markdown tables, as docs/SCHEDULING.md shows them.
    pub fn markdown(&self) -> String {
        [
            priority::markdown(&self.priority),
            policies::policies_markdown(&self.policies),
            policies::deadlines_markdown(&self.deadlines),
            resources::markdown(&self.resources),
            rates::markdown(&self.rates),
            adaptive::markdown(&self.adaptive),
            partitioning::markdown(&self.partitioning),
            scaling::markdown(&self.scaling),
        ]
        .join("\n")
    }
}
