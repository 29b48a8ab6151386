//! Talking to RabbitMQ.
//!
//! * [`Topology`] (`names`): every RabbitMQ name the relay uses, pure;
//!   `arguments`: what each object is declared with; `declare`: declaring
//!   them all and reporting what RabbitMQ refused.
//! * `connect`: opening and closing connections, the relay's and the commands'.
//! * `session`: one connection, ready to publish; `channels`: its pool of
//!   confirming channels.
//! * `Broker` (`supervisor`): the relay's connection, kept up by a
//!   supervisor task; `status`: the state it is in, the one place that
//!   changes it (and the metrics and log lines that say so).
//! * `Publisher`: one confirmed publish of a relay message; `browse`:
//!   reading a queue without taking from it; `management`: RabbitMQ's
//!   management API, for what AMQP cannot tell; `upgrade`: what an earlier
//!   version left on the broker that this one routes differently.

mod arguments;
pub(crate) mod browse;
pub use browse::{QueueStats, stats as queue_stats};
mod channels;
mod connect;
mod declare;
pub(crate) mod management;
mod names;
mod publisher;
mod returns;
mod session;
mod status;
mod supervisor;
mod upgrade;

pub use arguments::consumer_queue_arguments;
pub(crate) use connect::close_channel;
pub use connect::{ConnectError, close, connect, with_tool_connection};
pub(crate) use declare::refusal_text;
pub use declare::{Conflict, Declared, Outdated};
pub use names::{Address, Topology};
pub(crate) use publisher::Publisher;
pub use publisher::{Outgoing, PublishError, publish_all, publish_confirmed};
pub use returns::Rescued;
pub use status::{BrokerState, Status};
pub(crate) use supervisor::Broker;
