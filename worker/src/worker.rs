//! The worker supervisor: serves metrics and health, sets up clients, starts the
//! poll thread, routes records into lanes, and on shutdown drains within a
//! deadline.

use crate::admission::Admission;
use crate::consumer::{poll_loop, PollLimits, WorkerContext};
use crate::counters::Counters;
use crate::ended_jobs::EndedJobs;
use crate::execute::Executor;
use crate::external::External;
use crate::gatherer::Gatherer;
use crate::handler::Registry;
use crate::lanes::Lanes;
use crate::outbox::Outbox;
use crate::scheduler::Scheduler;
use crate::valve::Valve;
use crate::writer::{KeyPartitioner, Writer, WriterContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use sluice_common::routing::Routes;
use sluice_common::telemetry::default_worker_id;
use sluice_common::{exporter, kafka, Config, Health, Metrics};
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long past the shutdown deadline leaving the group may take.
const LEAVE_GRACE: Duration = Duration::from_secs(15);

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Cluster unreachable, topics missing, bad client settings: fix and restart.
    #[error(transparent)]
    Setup(#[from] sluice_common::Error),
    /// Too many records were dead-lettered too fast; the worker stopped (after
    /// draining and committing) so a person can look.
    #[error("stopped by the safety valve: {0}")]
    SafetyValve(String),
    /// A configured handler replaces a built-in one or cannot be used.
    #[error("handler `{kind}`: {why}")]
    Handler {
        /// Task kind.
        kind: String,
        /// Why.
        why: String,
    },
}

/// What a worker did, returned when it stops.
#[derive(Debug)]
pub struct Summary {
    /// The worker's id.
    pub worker_id: String,
    /// Result and abandon counts.
    pub counters: Arc<Counters>,
    /// Tasks still running when the shutdown deadline passed (they run again elsewhere).
    pub unfinished_at_shutdown: usize,
}

/// Adds the external-process handlers of `cfg` to `registry`.
pub fn with_external_handlers(
    mut registry: Registry,
    cfg: &Config,
) -> Result<Registry, WorkerError> {
    for (kind, h) in &cfg.worker.handlers {
        if registry.get(kind).is_some() {
            return Err(WorkerError::Handler {
                kind: kind.clone(),
                why: "a handler for this kind is already registered".into(),
            });
        }
        registry.register(kind.clone(), External::new(h.clone()));
    }
    Ok(registry)
}

/// Runs a worker until `shutdown` is cancelled, then drains and commits.
pub async fn run(
    cfg: Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<Summary, WorkerError> {
    run_with(cfg, registry, shutdown, Arc::new(Counters::default())).await
}

/// [`run`], updating `counters` as it goes so the caller can watch progress.
pub async fn run_with(
    cfg: Config,
    registry: Registry,
    shutdown: CancellationToken,
    counters: Arc<Counters>,
) -> Result<Summary, WorkerError> {
    let worker_id = cfg.worker.id.clone().unwrap_or_else(default_worker_id);
    let w = &cfg.worker;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    // First, so that probes get answers (live; not ready, starting) while the
    // worker connects, and a bad address fails before anything else starts.
    let endpoint_stop = CancellationToken::new();
    let _endpoint_guard = endpoint_stop.clone().drop_guard();
    let metrics_url = if cfg.metrics.enabled {
        let url = exporter::start(
            &cfg.metrics,
            metrics.clone(),
            health.clone(),
            endpoint_stop.clone(),
        )
        .await?;
        tracing::info!(url = %url, "metrics served");
        Some(url)
    } else {
        None
    };
    metrics.worker_started(&worker_id, &w.group, &registry.kinds());
    // The lanes of this worker's pool, then its retry topic.
    let routes = Routes::new(&cfg.topics, w.pool.as_deref());
    let consumed = routes.consumed();
    let (retry_topic, dlq_topic) = (routes.retry().to_string(), cfg.topics.dead_letter_topic());
    let mut topics: Vec<&str> = consumed.iter().map(String::as_str).collect();
    topics.extend([cfg.topics.results.as_str(), dlq_topic.as_str()]);
    kafka::ensure_topics(&cfg, &topics).await?;
    let cfg = kafka::adapted_to_cluster(cfg).await;
    let w = &cfg.worker;
    let (done_tx, done_rx) = mpsc::channel();
    // Result writes to do again, from the producer's delivery callback.
    let (redo_tx, mut redo_rx) = tokio::sync::mpsc::unbounded_channel();
    let awaiting_ack = Arc::new(AtomicUsize::new(0));
    let producer = Writer::new(kafka::worker_producer(
        &cfg,
        &worker_id,
        WriterContext {
            metrics: metrics.clone(),
            counters: counters.clone(),
            completions: done_tx.clone(),
            awaiting_ack: awaiting_ack.clone(),
            redo: redo_tx,
            // A `partitioner` set in the configuration is librdkafka's to apply.
            partitioner: (!cfg.kafka.librdkafka_options.contains_key("partitioner"))
                .then_some(KeyPartitioner),
        },
    )?);
    // The caller's token, or the safety valve, stops the worker.
    let shutdown = shutdown.child_token();
    // So does dropping this future (its task aborted, or its runtime shutting
    // down, say after a test panicked): the poll thread is a blocking-pool
    // thread that only the token ends, and a runtime waits for those when it
    // shuts down, so without this the process would hang.
    let _stop_when_dropped = shutdown.clone().drop_guard();

    let admission = Arc::new(Admission::new(shutdown.clone(), counters.clone()));
    let context = WorkerContext::new(
        done_rx,
        admission.clone(),
        Duration::from_millis(w.drain_timeout_ms),
        metrics.clone(),
        health.clone(),
    );
    let consumer: BaseConsumer<WorkerContext> = kafka::worker_consumer_config(&cfg, &worker_id)
        .create_with_context(context)
        .map_err(sluice_common::Error::client)?;
    let subscription: Vec<&str> = consumed.iter().map(String::as_str).collect();
    consumer
        .subscribe(&subscription)
        .map_err(sluice_common::Error::client)?;
    metrics.topics_consumed(&subscription);
    tracing::info!(worker.id = %worker_id, group = %w.group, topics = %consumed.join(","), concurrency = w.concurrency, ordering = ?w.ordering, kinds = %registry.kinds().join(","), metrics = metrics_url.as_deref().unwrap_or("off"), "worker started");

    let ended_jobs = Arc::new(EndedJobs::default());
    let gatherer = cfg.worker.gatherer.then(|| {
        let g = Gatherer {
            cfg: cfg.clone(),
            registry: registry.clone(),
            producer: producer.clone(),
            worker_id: worker_id.clone(),
            metrics: metrics.clone(),
            counters: counters.clone(),
            ended: ended_jobs.clone(),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = g.run(stop).await {
                tracing::error!(error = %e, "the job gatherer could not start; jobs of this group may not finish");
            }
        })
    });

    let give_up = CancellationToken::new();
    let scheduler = Scheduler::new(w, routes.clone(), metrics.clone());
    let kinds: Vec<String> = registry.kinds().iter().map(|k| k.to_string()).collect();
    let history = tokio::spawn(scheduler.clone().learn_history(cfg.clone(), kinds));
    let signal = tokio::spawn(scheduler.clone().signal_scaling(
        counters.clone(),
        w.scheduler.scaling_drain_s,
        Duration::from_millis(w.scheduler.scaling_interval_ms),
        shutdown.clone(),
    ));
    let executor = Arc::new(Executor {
        registry,
        outbox: Outbox {
            writer: producer.clone(),
            results: cfg.topics.results.clone(),
            retry: retry_topic,
            dead_letter: dlq_topic,
            worker_id: worker_id.clone(),
            write_check: kafka::WriteCheck::new(&cfg),
        },
        cfg: w.clone(),
        admission,
        completions: done_tx,
        stopping: shutdown.clone(),
        give_up: give_up.clone(),
        counters: counters.clone(),
        metrics: metrics.clone(),
        valve: Valve::new(w.max_dead_letters_per_minute, shutdown.clone()),
        scheduler,
        ended_jobs,
    });
    let tasks = TaskTracker::new();
    let lanes = Lanes::new(w.ordering, executor.clone(), tasks.clone());
    // Each failed result write is retried on its own, like any other write.
    let redoing = {
        let (executor, tasks, give_up) = (executor.clone(), tasks.clone(), give_up.clone());
        tokio::spawn(async move {
            loop {
                let redo = tokio::select! {
                    r = redo_rx.recv() => r,
                    _ = give_up.cancelled() => None,
                };
                let Some(redo) = redo else { break };
                let executor = executor.clone();
                tasks.spawn(async move { executor.outbox.redo(redo, &executor.give_up).await });
            }
            // Past the deadline: what is left is not durable; its tasks run again elsewhere.
            redo_rx.close();
            while let Ok(redo) = redo_rx.try_recv() {
                executor
                    .outbox
                    .writer
                    .context()
                    .report(redo.pending.completion, false);
            }
        })
    };

    let lane_topics: Vec<String> = routes.lanes().iter().map(|l| routes.topic(*l)).collect();
    let limits = PollLimits {
        max_buffered: w.max_buffered_tasks,
        awaiting_ack,
        shutdown_timeout: Duration::from_millis(w.shutdown_timeout_ms),
        // One lane: the whole buffer is the one topic's (and the retry topic's).
        lane_topics: if lane_topics.len() > 1 {
            lane_topics
        } else {
            Vec::new()
        },
    };
    let stop = shutdown.clone();
    // The poll thread starts tasks itself (no channel hop): its blocking-pool
    // thread is inside the runtime, and `max_buffered_tasks` bounds what it hands out.
    let mut poller = {
        let lanes = lanes.clone();
        tokio::task::spawn_blocking(move || {
            poll_loop(consumer, |taken| lanes.submit(taken), stop, limits)
        })
    };

    // Past the shutdown deadline, stop retrying result deliveries: those tasks'
    // offsets stay uncommitted and the tasks run again elsewhere.
    let deadline = Duration::from_millis(w.shutdown_timeout_ms);
    let watchdog = {
        let (shutdown, give_up) = (shutdown.clone(), give_up.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(deadline).await;
            give_up.cancel();
        })
    };

    let ended = tokio::select! {
        r = &mut poller => Some(r),
        _ = shutdown.cancelled() => None,
    };
    // The poll thread drains within shutdown_timeout_ms and bounds its final
    // commit; closing the consumer can still wait on a vanished broker, so this
    // does not wait for ever either.
    let report = match ended {
        Some(r) => Ok(r),
        None => tokio::time::timeout(deadline + LEAVE_GRACE, poller).await,
    };
    let report = match report {
        Ok(r) => r.unwrap_or_default(),
        Err(_) => {
            tracing::error!(
                "the consumer did not close in time (broker unreachable?); stopping without it"
            );
            Default::default()
        }
    };
    give_up.cancel();
    let _ = redoing.await;
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    watchdog.abort();
    signal.abort();
    history.abort();
    if let Some(g) = gatherer {
        if tokio::time::timeout(LEAVE_GRACE, g).await.is_err() {
            tracing::error!("the job gatherer did not stop in time");
        }
    }
    let _ = producer.producer().flush(Duration::from_secs(5));
    tracing::info!(worker.id = %worker_id, finished = counters.total_finished(), "worker stopped");
    if let Some(reason) = executor.valve.tripped() {
        return Err(WorkerError::SafetyValve(reason));
    }
    Ok(Summary {
        worker_id,
        counters,
        unfinished_at_shutdown: report.unfinished_at_shutdown,
    })
}
