//! hookrelay turns sync webhooks into durable, confirmed RabbitMQ messages.
//!
//! The path of one webhook, and where each step lives:
//!
//! ```text
//! TCP peer ─► path (ingress: optional secret token)
//!          ─► ingress::client_ip (peer + trusted X-Forwarded-For) ─► allowlist (config::IpRanges)
//!          ─► header limits ─► x-client-id ─► content type, size ─► event::Event::parse
//!          ─► wire::envelope::Message (an event with its routing key, or a quarantined body)
//!          ─► ingress copies (an identical copy in flight here: stored once, one 2xx)
//!          ─► delivery: broker::Publisher (persistent, mandatory, confirmed; the
//!             broker::Topology picks the names) or else the spool (fsync'd)
//!          ─► 200 {"status":"accepted","id","stored"} | 4xx/5xx JSON (ingress::error)
//!
//! <exchange>.history ─► derived: one follower per relay, into its SQLite store
//!          (the console's index, every account's state in event time, the changes owed)
//!          ─► accounts announcer (one relay at a time) ─► <exchange>.changes (account.<state>)
//! ```
//!
//! One module per idea:
//!
//! * [`config`]: settings from defaults, a TOML file and the environment.
//! * [`event`]: the domain types, built only by parsing.
//! * [`wire`]: the protocol on RabbitMQ: header names, the envelope, the
//!   `account.<state>` message, the contract (`docs/asyncapi.yaml`),
//!   dead-letter and retry headers, topic patterns, the `x-dedup-key` hash.
//! * [`ingress`]: the public HTTP app; `admin`: health, readiness, metrics,
//!   and the operator console (`/api/`, `docs/openapi.yaml`, and its pages).
//! * [`broker`]: RabbitMQ: names, declaring, the supervised connection and its
//!   status, one confirmed publish.
//! * `delivery`, [`spool`]: publish now, or keep on disk until RabbitMQ can.
//! * `metrics`, [`telemetry`]: what operators see; [`traces`]: W3C trace
//!   context on every message, and spans over OTLP.
//! * [`startup`]: wires it all into an [`startup::Application`] and watches
//!   its background tasks; [`cli`]: the commands.
//! * [`history`]: reading the event history stream back, newest first, and
//!   the index of it.
//! * [`derived`]: what the relay derives from the history, in a SQLite file
//!   of its own that one follower per relay keeps current.
//! * [`accounts`]: what the outcomes mean for each account, in event time;
//!   the relay announces each change as `account.<state>`.
//! * [`replay`]: sending messages again (dead letters, quarantine, history),
//!   one pass for all three.
//! * [`watch`]: looking without touching (`tail`, `inspect`).
//! * [`consumer`]: the consumer library for apps written in Rust (the crate
//!   [`hookrelay_consumer`], which needs none of the relay), with its settings
//!   read from the relay's configuration.
//!
//! The library is what the `hookrelay` binary, the tests and other Rust
//! programs (a console, an app's consumer) call. Its entry points:
//!
//! | to | call |
//! |---|---|
//! | load settings | [`config::Settings::load`] |
//! | run the relay | [`startup::Application::build`], then `run_until_stopped` |
//! | consume events | [`consumer::Consumer`] |
//! | replay dead letters | [`replay::dead_letters::replay`] |
//! | send quarantined bodies on | [`replay::quarantine::redrive`] |
//! | replay from the history | [`replay::history::replay`] |
//! | read the history | [`history::Reader`], [`history::newest`] |
//! | what a relay derived (index, accounts) | [`derived::Store`] |
//! | accounts by what they need | [`accounts::book()`], [`accounts::timeline()`] |
//! | look at a queue | [`watch::inspect::inspect`] |
//! | watch events go by | [`watch::tail::tail`] |
//! | list or retry the spool | [`spool::listing`] |
//! | the contract | [`wire::contract::asyncapi`] |

pub mod accounts;
mod admin;
pub mod audit;
mod backoff;
pub mod broker;
pub mod cli;
pub mod config;
pub mod consumer;
mod delivery;
pub mod derived;
mod file_lock;
pub mod history;
pub mod ingress;
mod metrics;
pub mod replay;
pub mod spool;
pub mod startup;
mod stopping;
pub mod telemetry;
pub mod traces;
mod unpoisoned;
pub mod watch;
/// The wire protocol, a crate of its own ([`hookrelay_wire`]): re-exported so
/// that `hookrelay::wire` and `hookrelay::event` name what they always did.
pub use admin::openapi;
pub use hookrelay_wire as wire;
pub use hookrelay_wire::event;
