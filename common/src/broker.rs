//! The embedded broker: librdkafka's mock cluster behind a fixed address.
//!
//! The mock cluster speaks the real Kafka protocol, so any Kafka client (kcat,
//! Python, Java) can use it, but it binds its broker to a random loopback port and
//! advertises that port in metadata. Clients need a stable bootstrap address, so a
//! small TCP forwarder listens on the requested address and relays to the mock
//! broker; after bootstrap, clients follow the advertised `127.0.0.1:<port>`, which
//! is why the embedded broker serves clients on this machine only.
//!
//! Limits (librdkafka's, not ours): data is in memory only; a partition keeps at
//! most about 5 MiB or 100k batches and evicts older data; there is no CreateTopics
//! API (topics are created here at start, or auto-created on first metadata request).
//! It is for development and tests, not production.
//!
//! Faults can be injected ([`Fault`]): request errors per API, the broker going
//! down and up, added round-trip time, so tests can prove recovery.

use crate::error::Error;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A topic the broker creates at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
}

impl std::str::FromStr for TopicSpec {
    type Err = String;
    /// Parses `NAME` or `NAME:PARTITIONS`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, partitions) = match s.rsplit_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<i32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{p}` is not a partition count in `{s}`"))?,
            ),
            None => (s, 0),
        };
        if name.is_empty() {
            return Err(format!("empty topic name in `{s}`"));
        }
        Ok(TopicSpec {
            name: name.to_string(),
            partitions,
        })
    }
}

/// A fault to inject into the embedded broker, for testing recovery.
///
/// Text form (one per line on `sluice broker`'s stdin):
/// `errors <api> <count> <error>`, `clear <api>`, `down`, `up`, `rtt <ms>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The next `count` requests of `api` fail with `error`.
    Errors {
        /// Request type.
        api: RDKafkaApiKey,
        /// How many requests fail.
        count: usize,
        /// The error they fail with.
        error: RDKafkaRespErr,
    },
    /// Forget pending errors of `api`.
    Clear(RDKafkaApiKey),
    /// The broker stops answering (connections closed, new ones refused).
    Down,
    /// The broker answers again.
    Up,
    /// Every response is delayed by this long.
    RoundTrip(Duration),
}

const APIS: &[(&str, RDKafkaApiKey)] = &[
    ("Produce", RDKafkaApiKey::Produce),
    ("Fetch", RDKafkaApiKey::Fetch),
    ("ListOffsets", RDKafkaApiKey::ListOffsets),
    ("Metadata", RDKafkaApiKey::Metadata),
    ("OffsetCommit", RDKafkaApiKey::OffsetCommit),
    ("OffsetFetch", RDKafkaApiKey::OffsetFetch),
    ("FindCoordinator", RDKafkaApiKey::FindCoordinator),
    ("JoinGroup", RDKafkaApiKey::JoinGroup),
    ("Heartbeat", RDKafkaApiKey::Heartbeat),
    ("LeaveGroup", RDKafkaApiKey::LeaveGroup),
    ("SyncGroup", RDKafkaApiKey::SyncGroup),
    ("InitProducerId", RDKafkaApiKey::InitProducerId),
];

const ERRORS: &[(&str, RDKafkaRespErr)] = &[
    ("transport", RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT),
    (
        "not_leader",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
    ),
    (
        "request_timed_out",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
    ),
    (
        "coordinator_not_available",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
    ),
    (
        "not_coordinator",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
    ),
    (
        "coordinator_load_in_progress",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
    ),
    (
        "rebalance_in_progress",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
    ),
    (
        "not_enough_replicas",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    ),
    (
        "unknown_topic_or_partition",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    ),
];

fn lookup<T: Copy>(table: &[(&str, T)], name: &str, what: &str) -> Result<T, String> {
    table
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            format!("unknown {what} `{name}`; one of: {}", names.join(", "))
        })
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |w: &str| {
            w.parse::<u64>()
                .map_err(|_| format!("`{w}` is not a number"))
        };
        match words.as_slice() {
            ["errors", api, count, error] => Ok(Fault::Errors {
                api: lookup(APIS, api, "api")?,
                count: number(count)? as usize,
                error: lookup(ERRORS, error, "error")?,
            }),
            ["clear", api] => Ok(Fault::Clear(lookup(APIS, api, "api")?)),
            ["down"] => Ok(Fault::Down),
            ["up"] => Ok(Fault::Up),
            ["rtt", ms] => Ok(Fault::RoundTrip(Duration::from_millis(number(ms)?))),
            _ => Err(format!(
                "cannot read fault `{line}`; expected `errors <api> <count> <error>`, `clear <api>`, `down`, `up` or `rtt <ms>`"
            )),
        }
    }
}

enum Command {
    CreateTopic(TopicSpec, mpsc::Sender<Result<(), String>>),
    Inject(Fault, mpsc::Sender<Result<(), String>>),
    Stop,
}

/// A running embedded broker. Dropping it stops the broker.
pub struct EmbeddedBroker {
    listen: SocketAddr,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    forwarder: CancellationToken,
}

impl EmbeddedBroker {
    /// Starts a one-node mock cluster with `topics` (partition count 0 means
    /// `default_partitions`) and a forwarder listening on `listen` (port 0 picks one).
    ///
    /// The broker runs on its own thread with its own small runtime, so it keeps
    /// serving even when the caller's runtime is busy or blocked.
    pub fn start(
        listen: SocketAddr,
        topics: &[TopicSpec],
        default_partitions: i32,
    ) -> Result<EmbeddedBroker, Error> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| Error::Broker(format!("cannot listen on {listen}: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Broker(e.to_string()))?;
        let listen = listener
            .local_addr()
            .map_err(|e| Error::Broker(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let topics: Vec<TopicSpec> = topics
            .iter()
            .map(|t| TopicSpec {
                name: t.name.clone(),
                partitions: if t.partitions > 0 {
                    t.partitions
                } else {
                    default_partitions
                },
            })
            .collect();
        let forwarder = CancellationToken::new();
        let stop = forwarder.clone();
        // MockCluster is !Send: it lives and dies on this thread.
        let thread = std::thread::Builder::new()
            .name("sluice-broker".into())
            .spawn(move || serve(topics, listener, stop, ready_tx, rx))
            .map_err(|e| Error::Broker(e.to_string()))?;
        ready_rx
            .recv()
            .map_err(|_| Error::Broker("mock cluster thread died".into()))?
            .map_err(Error::Broker)?;
        Ok(EmbeddedBroker {
            listen,
            commands: tx,
            thread: Some(thread),
            forwarder,
        })
    }

    /// The bootstrap address clients should use.
    pub fn bootstrap(&self) -> String {
        self.listen.to_string()
    }

    /// Creates a topic (an existing one is left as it is).
    pub fn create_topic(&self, spec: TopicSpec) -> Result<(), Error> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(Command::CreateTopic(spec, tx))
            .map_err(|_| Error::Broker("broker stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Broker("broker stopped".into()))?
            .map_err(Error::Broker)
    }
}

impl EmbeddedBroker {
    /// Injects a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) -> Result<(), Error> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(Command::Inject(fault, tx))
            .map_err(|_| Error::Broker("broker stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Broker("broker stopped".into()))?
            .map_err(Error::Broker)
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.forwarder.cancel();
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    topics: Vec<TopicSpec>,
    listener: std::net::TcpListener,
    stop: CancellationToken,
    ready: mpsc::Sender<Result<(), String>>,
    commands: mpsc::Receiver<Command>,
) {
    let cluster = match MockCluster::new(1) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("mock cluster: {e}")));
            return;
        }
    };
    for t in &topics {
        if let Err(e) = cluster.create_topic(&t.name, t.partitions, 1) {
            let _ = ready.send(Err(format!("creating topic {}: {e}", t.name)));
            return;
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("forwarder runtime: {e}")));
            return;
        }
    };
    let upstream = cluster.bootstrap_servers();
    let forwarder = {
        let _guard = runtime.enter();
        match TcpListener::from_std(listener) {
            Ok(l) => std::thread::spawn(move || runtime.block_on(forward(l, upstream, stop))),
            Err(e) => {
                let _ = ready.send(Err(format!("listener: {e}")));
                return;
            }
        }
    };
    let _ = ready.send(Ok(()));
    while let Ok(cmd) = commands.recv() {
        match cmd {
            Command::CreateTopic(t, reply) => {
                let _ = reply.send(
                    cluster
                        .create_topic(&t.name, t.partitions.max(1), 1)
                        .map_err(|e| e.to_string()),
                );
            }
            Command::Inject(fault, reply) => {
                let r = match fault {
                    Fault::Errors { api, count, error } => {
                        cluster.request_errors(api, &vec![error; count]);
                        Ok(())
                    }
                    Fault::Clear(api) => {
                        cluster.clear_request_errors(api);
                        Ok(())
                    }
                    Fault::Down => cluster.broker_down(1),
                    Fault::Up => cluster.broker_up(1),
                    Fault::RoundTrip(d) => cluster.broker_round_trip_time(1, d),
                };
                let _ = reply.send(r.map_err(|e| e.to_string()));
            }
            Command::Stop => break,
        }
    }
    let _ = forwarder.join();
}

async fn forward(listener: TcpListener, upstream: String, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut client, _)) = accepted else {
            continue;
        };
        let upstream = upstream.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_kafka_clients_and_creates_unknown_topics_quickly() {
        let b = EmbeddedBroker::start(
            "127.0.0.1:0".parse().unwrap(),
            &[TopicSpec {
                name: "given".into(),
                partitions: 3,
            }],
            1,
        )
        .unwrap();
        let mut cfg = crate::Config::default();
        cfg.kafka.brokers = b.bootstrap();
        let started = std::time::Instant::now();
        let counts = crate::kafka::ensure_topics(&cfg, &["given", "fresh"])
            .await
            .unwrap();
        assert_eq!(counts[0], ("given".to_string(), 3));
        assert_eq!(counts[1].0, "fresh");
        assert!(counts[1].1 >= 1);
        // The mock has no CreateTopics; asking it anyway would hang for a request timeout.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        b.create_topic(TopicSpec {
            name: "made".into(),
            partitions: 5,
        })
        .unwrap();
        assert_eq!(
            crate::kafka::ensure_topics(&cfg, &["made"]).await.unwrap()[0].1,
            5
        );
    }

    #[test]
    fn faults_parse_and_name_the_alternatives() {
        assert_eq!(
            "errors Produce 3 not_leader".parse::<Fault>().unwrap(),
            Fault::Errors {
                api: RDKafkaApiKey::Produce,
                count: 3,
                error: RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION
            }
        );
        assert_eq!(
            "rtt 250".parse::<Fault>().unwrap(),
            Fault::RoundTrip(Duration::from_millis(250))
        );
        assert_eq!("down".parse::<Fault>().unwrap(), Fault::Down);
        let e = "errors Produce 3 nope".parse::<Fault>().unwrap_err();
        assert!(e.contains("unknown error `nope`; one of: transport"), "{e}");
        assert!("explode".parse::<Fault>().is_err());
    }

    #[test]
    fn topic_specs_parse() {
        assert_eq!(
            "a.b:3".parse::<TopicSpec>().unwrap(),
            TopicSpec {
                name: "a.b".into(),
                partitions: 3
            }
        );
        assert_eq!("a".parse::<TopicSpec>().unwrap().partitions, 0);
        assert!("a:x".parse::<TopicSpec>().is_err());
        assert!("a:0".parse::<TopicSpec>().is_err());
        assert!(":3".parse::<TopicSpec>().is_err());
    }
}
