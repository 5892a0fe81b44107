//! What a bench run measures with: the task workload and the client profile,
//! checked once and applied to the configuration both pipelines share.

use crate::cli::{BenchArgs, BenchKindArg, ProfileArg};
use serde::Serialize;
use serde_json::{json, Value};
use sluice_common::config::{GroupProtocol, Ordering};
use sluice_common::task::now_ms;
use sluice_common::{Config, Task};

/// The work each task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Work {
    /// Returns at once.
    Noop,
    /// Sleeps this long.
    Sleep {
        /// Milliseconds.
        ms: u64,
    },
    /// Spins this many iterations.
    Cpu {
        /// Iterations.
        iterations: u64,
    },
}

impl Work {
    pub fn from_args(args: &BenchArgs) -> Work {
        match args.kind {
            BenchKindArg::Noop => Work::Noop,
            BenchKindArg::Sleep => Work::Sleep { ms: args.task_ms },
            BenchKindArg::Cpu => Work::Cpu {
                iterations: args.cpu_iterations,
            },
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Work::Noop => "noop",
            Work::Sleep { .. } => "sleep",
            Work::Cpu { .. } => "cpu",
        }
    }

    fn payload(self) -> Value {
        match self {
            Work::Noop => json!({}),
            Work::Sleep { ms } => json!({ "ms": ms }),
            Work::Cpu { iterations } => json!({ "iterations": iterations }),
        }
    }

    /// Task records for ids of one shape (`<prefix><n>`): the JSON around the
    /// id and the creation time is encoded once, so the load generator spends
    /// its time publishing, not serialising.
    pub fn template(self, prefix: &str, payload_bytes: usize) -> Template {
        // Sentinels stand in for the parts that change; ids of up to 20 digits
        // keep every record the same size give or take the digits.
        let record = self.record(format!("{prefix}{ID_MARK}"), payload_bytes);
        let text = String::from_utf8(record).expect("serde_json writes UTF-8");
        let (head, rest) = text.split_once(ID_MARK).expect("the id is in the record");
        let (middle, tail) = rest
            .split_once(&format!("\"created_ms\":{CREATED_MARK}"))
            .expect("the creation time is in the record");
        Template {
            head: head.as_bytes().to_vec(),
            middle: format!("{middle}\"created_ms\":").into_bytes(),
            tail: tail.as_bytes().to_vec(),
        }
    }

    /// The task record value of task `id`: a wire-v1 task padded to
    /// `payload_bytes` when the bare task is smaller.
    pub fn record(self, id: String, payload_bytes: usize) -> Vec<u8> {
        let mut task = Task::new(self.kind(), self.payload());
        let marked = id.ends_with(ID_MARK);
        task.id = Some(id);
        task.created_ms = Some(if marked { CREATED_MARK } else { now_ms() });
        let bare = task.encode();
        task.payload["pad"] = Value::String(String::new());
        let padded = task.encode().len();
        if payload_bytes <= padded {
            return bare;
        }
        task.payload["pad"] = Value::String("x".repeat(payload_bytes - padded));
        task.encode()
    }
}

const ID_MARK: &str = "@@ID@@";
const CREATED_MARK: u64 = 98_765_432_123_456_789;

/// A task record with blanks for the id's number and the creation time.
pub struct Template {
    head: Vec<u8>,
    middle: Vec<u8>,
    tail: Vec<u8>,
}

impl Template {
    /// Writes the record of task `n`, created now, into `out`.
    pub fn fill(&self, n: usize, out: &mut Vec<u8>) {
        use std::io::Write;
        out.clear();
        out.extend_from_slice(&self.head);
        let _ = write!(out, "{n}");
        out.extend_from_slice(&self.middle);
        let _ = write!(out, "{}", now_ms());
        out.extend_from_slice(&self.tail);
    }
}

/// Client settings of both pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Producer linger 5 ms, fetch waits up to 100 ms.
    Throughput,
    /// No linger, fetch waits of 1 ms.
    LowLatency,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Throughput => Profile::Throughput,
            ProfileArg::LowLatency => Profile::LowLatency,
        }
    }
}

impl Profile {
    /// Sets the profile's client settings and what every bench worker shares.
    pub fn apply(self, cfg: &mut Config) {
        let (linger_ms, fetch_wait_max_ms) = match self {
            Profile::Throughput => (5, 100),
            Profile::LowLatency => (0, 1),
        };
        cfg.producer.linger_ms = linger_ms;
        cfg.kafka.fetch_wait_max_ms = fetch_wait_max_ms;
        // Tasks carry unique keys (their ids, so the baseline can echo them
        // without parsing); ordering by key would give each its own lane for nothing.
        cfg.worker.ordering = Ordering::None;
        // Several workers share this process; an endpoint each would only take ports.
        cfg.metrics.enabled = false;
    }
}

/// Checks the arguments and prepares the shared configuration.
pub fn prepare(args: &BenchArgs, cfg: &mut Config) -> anyhow::Result<()> {
    anyhow::ensure!(args.tasks > 0, "--tasks must be at least 1");
    anyhow::ensure!(args.partitions > 0, "--partitions must be at least 1");
    anyhow::ensure!(
        args.workers > 0 && args.concurrency > 0 && args.scale_concurrency > 0,
        "--workers, --concurrency and --scale-concurrency must be at least 1"
    );
    anyhow::ensure!(
        args.rate.is_none_or(|r| r.is_finite() && r > 0.0),
        "--rate must be a positive number of tasks per second"
    );
    anyhow::ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be positive"
    );
    anyhow::ensure!(
        args.task_ms > 0 || !matches!(args.kind, BenchKindArg::Sleep),
        "--task-ms must be at least 1 for sleep tasks"
    );
    Profile::from(args.profile).apply(cfg);
    if !args.external_brokers {
        // KIP-848: members join without a group-wide barrier (the embedded broker
        // supports it), so adding a worker never stops the others.
        cfg.worker.group_protocol = GroupProtocol::Consumer;
        if let Some(enough) = partitions_kept_whole(args.tasks, args.payload_bytes, args.partitions)
        {
            eprintln!(
                "sluice bench: warning: {} tasks of {} bytes over {} partitions may outgrow what the embedded broker keeps (about 5 MiB per partition; it evicts the oldest records, read or not): tasks evicted before they are read count as lost. Use --partitions {enough} or more, or --brokers.",
                args.tasks, args.payload_bytes, args.partitions
            );
        }
    }
    Ok(())
}

/// What librdkafka's mock cluster keeps per partition before it evicts the
/// oldest batches (`rdkafka_mock.c`, `max_size`).
const EMBEDDED_PARTITION_BYTES: usize = 5 * 1024 * 1024;

/// A task record's size in a batch beyond its value: the bench's key (about
/// 25 bytes) and the record's own fields (varint lengths, timestamp and offset
/// deltas, attributes: about 12 bytes), rounded up.
const RECORD_OVERHEAD_BYTES: usize = 48;

/// `None` when `tasks` records of `payload_bytes` fit in `partitions` of the
/// embedded broker, else the partition count they would fit in.
fn partitions_kept_whole(tasks: usize, payload_bytes: usize, partitions: i32) -> Option<usize> {
    let bytes = tasks.saturating_mul(payload_bytes + RECORD_OVERHEAD_BYTES);
    let kept = EMBEDDED_PARTITION_BYTES;
    (bytes > kept * partitions as usize).then(|| bytes.div_ceil(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_that_outgrow_the_embedded_broker_are_told_how_many_partitions_fit() {
        // The default run (100k tasks of 128 bytes on 4 partitions) fits.
        assert_eq!(partitions_kept_whole(100_000, 128, 4), None);
        let enough = partitions_kept_whole(1_000_000, 128, 4).expect("does not fit");
        assert_eq!(partitions_kept_whole(1_000_000, 128, enough as i32), None);
        assert!(partitions_kept_whole(1_000_000, 128, enough as i32 - 1).is_some());
    }

    #[test]
    fn records_are_tasks_padded_to_the_asked_size() {
        let r = Work::Sleep { ms: 1 }.record("bench-1".into(), 300);
        assert_eq!(r.len(), 300);
        let t = Task::decode(Some(&r), 1 << 20).unwrap();
        assert_eq!(t.kind, "sleep");
        assert_eq!(t.payload["ms"], 1);
        assert_eq!(t.id.as_deref(), Some("bench-1"));
        let small = Work::Noop.record("x".into(), 1);
        assert!(Task::decode(Some(&small), 1 << 20).is_ok());
    }

    #[test]
    fn templates_fill_in_the_id_and_the_creation_time() {
        let t = Work::Cpu { iterations: 5 }.template("run-", 200);
        let mut out = Vec::new();
        t.fill(42, &mut out);
        let task = Task::decode(Some(&out), 1 << 20).unwrap();
        assert_eq!(task.id.as_deref(), Some("run-42"));
        assert_eq!(task.payload["iterations"], 5);
        let age = now_ms() - task.created_ms.unwrap();
        assert!(age < 60_000, "created {age} ms ago");
        assert!((190..=210).contains(&out.len()), "{} bytes", out.len());
    }
}
