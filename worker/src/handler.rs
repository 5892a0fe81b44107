//! The `Handler` trait and the registry that maps task kinds to handlers.

use async_trait::async_trait;
use serde_json::Value;
use sluice_common::JobRef;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// What a handler sees of a task.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// Task id.
    pub id: String,
    /// Task kind.
    pub kind: String,
    /// Task payload (`null` when absent).
    pub payload: Value,
    /// Attempt number, starting at 1.
    pub attempt: u32,
    /// Kafka key, when the task had one.
    pub key: Option<String>,
    /// Job membership, when the task is a sub-task.
    pub job: Option<JobRef>,
}

/// Why a handler failed, split by what Sluice does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A transient failure: another attempt may succeed.
    #[error("{0}")]
    Retryable(String),
    /// The task can never succeed as it is (bad payload, rejected input).
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    /// A retryable failure.
    pub fn retryable(msg: impl Into<String>) -> Self {
        HandlerError::Retryable(msg.into())
    }
    /// A permanent failure.
    pub fn permanent(msg: impl Into<String>) -> Self {
        HandlerError::Permanent(msg.into())
    }
}

/// Runs tasks of one kind.
///
/// `handle` is called once per attempt, on a Tokio worker thread, with at most
/// `worker.concurrency` calls in flight per worker process. It must not block the
/// thread: CPU-heavy or blocking work belongs in `tokio::task::spawn_blocking`.
/// (The records of one poll turn start one after another on one thread, each
/// until it first waits: a handler that computes for long without awaiting
/// also holds back the start of the records behind it.)
/// A panic is caught and reported as a failed task; it does not take the worker down.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of a task and returns its output.
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError>;
}

/// A handler made from an async closure; see [`handler_fn`].
pub struct FnHandler<F>(F);

/// Wraps an async closure as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    FnHandler(f)
}

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    async fn handle(&self, task: TaskContext) -> Result<Value, HandlerError> {
        (self.0)(task).await
    }
}

/// Handlers by kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds (or replaces) the handler for `kind`.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// The handler for `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(kind)
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        self.handlers.keys().map(String::as_str).collect()
    }
}
