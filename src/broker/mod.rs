//! Talking to RabbitMQ: the supervised connection, the topology, one confirmed publish.

mod connection;
mod publisher;
pub mod topology;

pub use connection::{Broker, BrokerState, ConnectError, connect};
pub use publisher::{Outgoing, PublishError, Publisher, publish_confirmed};
