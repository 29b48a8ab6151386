//! What a consumer needs to know: where RabbitMQ is and which queue to
//! consume. Nothing of the relay's own configuration.

use std::time::Duration;

/// Where to consume from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// RabbitMQ's nodes, tried in order until one answers
    /// (`amqp://user:password@host:5672/%2f`, or `amqps://` for TLS with the
    /// system's roots).
    pub nodes: Vec<String>,
    /// The queue to consume: a `[[queues]]` entry of the relay's, which
    /// declares it and its retry tiers.
    pub queue: String,
    /// The relay's `amqp.exchange` (`webhooks` by default): a message that
    /// arrived without naming its route is retried as if it came through the
    /// relay's entry exchange.
    pub exchange: String,
    /// At most this many messages unacknowledged, and handlers running, at once.
    pub prefetch: u16,
    /// How long a retry copy's publish may wait for RabbitMQ's confirm.
    pub confirm_timeout: Duration,
    /// The connection's name in `rabbitmqctl list_connections`.
    pub connection_name: String,
}

impl Settings {
    /// A consumer of `queue` on the RabbitMQ at `uri`, with the relay's
    /// default exchange, a prefetch of 10 and a 10 s confirm timeout.
    pub fn new(uri: impl Into<String>, queue: impl Into<String>) -> Settings {
        let queue = queue.into();
        Settings {
            nodes: vec![uri.into()],
            connection_name: format!("hookrelay-consumer-{queue}"),
            queue,
            exchange: "webhooks".to_owned(),
            prefetch: 10,
            confirm_timeout: Duration::from_secs(10),
        }
    }
}
