//! Errors of the shared layer, split by what the caller does next.

/// A failure talking to Kafka or setting up a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No broker answered: check the address or start one. Not retried here.
    #[error("no Kafka broker answered at {brokers} within {waited_ms} ms ({cause}); is a broker running there? (`sluice broker` starts one)")]
    Unreachable {
        /// The configured bootstrap list.
        brokers: String,
        /// How long we waited.
        waited_ms: u64,
        /// librdkafka's reason.
        cause: String,
    },
    /// A topic is missing and could not be created.
    #[error("topic {topic}: {cause}")]
    Topic {
        /// Topic name.
        topic: String,
        /// Why.
        cause: String,
    },
    /// librdkafka rejected a configuration or operation.
    #[error("kafka client error: {0}")]
    Client(String),
    /// The metrics endpoint cannot listen: change `metrics.listen` or
    /// `metrics.port_search`, free the port, or set `metrics.enabled = false`.
    #[error("metrics endpoint: cannot listen on {addr} ({cause}); change metrics.listen or metrics.port_search, or set metrics.enabled = false")]
    Listen {
        /// The address or range tried.
        addr: String,
        /// The system's reason.
        cause: String,
    },
    /// The embedded broker could not start.
    #[error("embedded broker: {0}")]
    Broker(String),
}

impl Error {
    /// Wraps an rdkafka error.
    pub fn client(e: rdkafka::error::KafkaError) -> Error {
        Error::Client(e.to_string())
    }
}
