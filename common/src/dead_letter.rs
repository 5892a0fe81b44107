//! Dead-letter records: the original task record, unchanged (key and value), on the
//! dead-letter topic, with headers saying why it could not succeed. Part of the
//! wire format: `sluice dlq` and foreign tools read these headers.

/// Header names, all UTF-8 text values.
pub mod headers {
    /// Why the record was dead-lettered.
    pub const ERROR: &str = "sluice.error";
    /// Attempts made.
    pub const ATTEMPTS: &str = "sluice.attempts";
    /// Task id (derived from coordinates for unreadable records).
    pub const TASK_ID: &str = "sluice.task_id";
    /// Task kind, empty for unreadable records.
    pub const KIND: &str = "sluice.kind";
    /// Topic the record was consumed from.
    pub const TOPIC: &str = "sluice.original.topic";
    /// Its partition.
    pub const PARTITION: &str = "sluice.original.partition";
    /// Its offset.
    pub const OFFSET: &str = "sluice.original.offset";
    /// The worker that gave up.
    pub const WORKER: &str = "sluice.worker";
    /// When, Unix epoch ms.
    pub const TIME_MS: &str = "sluice.dead_lettered_ms";
}
