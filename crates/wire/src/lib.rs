//! The wire protocol: what a message of hookrelay's looks like on RabbitMQ,
//! for the relay, its tools and every consumer.
//!
//! A crate of its own, below everything that runs: it names no runtime
//! state and depends on no tokio, lapin, actix or SQLite, so the relay's
//! layers depend on it and it on none of them (the compiler keeps it so).
//!
//! * [`event`]: the sender's webhook, parsed strictly into a typed event.
//! * [`account`]: the `account.*` message, one per change of an account's state.
//! * [`provider`]: the `provider.*` message, one per provider incident
//!   opened or resolved.
//! * [`client`]: the `client.silent` message, when a client's accounts all went quiet.
//! * [`changes`]: what the relay announces on `<exchange>.changes`, both kinds.
//! * [`headers`]: every header name, and typed readers for them.
//! * [`envelope`]: the message the relay publishes for a webhook.
//! * [`contract`]: the same as Rust types, from which `docs/asyncapi.yaml`
//!   is generated.
//! * [`topic`]: routing keys' topic patterns, as RabbitMQ matches them.
//! * [`death`]: reading `x-death`, and the headers of a replayed dead letter.
//! * [`retry`]: the retry protocol between a consumer and its retry tiers.

pub mod account;
pub mod changes;
pub mod client;
pub mod contract;
pub mod death;
pub mod dedup_key;
pub mod envelope;
pub mod event;
pub mod headers;
pub mod provider;
pub mod retry;
pub mod topic;
