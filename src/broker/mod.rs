//! Talking to RabbitMQ: the supervised connection and its state, the topology
//! (every name the relay uses), the publishing channels, one confirmed publish.

pub mod browse;
mod channels;
mod connection;
pub mod management;
mod publisher;
mod status;
mod topology;

pub use connection::{Broker, ConnectError, close, close_channel, connect, with_tool_connection};
pub use publisher::{Outgoing, PublishError, Publisher, publish_confirmed};
pub use status::{BrokerState, Status};
pub use topology::{
    Address, Conflict, Declared, Outdated, Topology, consumer_queue_arguments, refusal_text,
};
