//! hookrelay turns sync webhooks into durable, confirmed RabbitMQ messages.
//!
//! The path of one webhook, and where each step lives:
//!
//! ```text
//! TCP peer ─► path (ingress: optional secret token)
//!          ─► ingress::client_ip (peer + trusted X-Forwarded-For) ─► allowlist (config::IpRanges)
//!          ─► header limits ─► x-client-id ─► content type, size ─► event::Event::parse
//!          ─► dedup (a retry of one accepted within the window: 200 duplicate)
//!          ─► wire::envelope::Message (an event with its routing key, or a quarantined body)
//!          ─► delivery: broker::Publisher (persistent, mandatory, confirmed; the
//!             broker::Topology picks the names) or else the spool (fsync'd)
//!          ─► 200 {"status":"accepted","id"} | 4xx/5xx JSON (ingress::error)
//! ```
//!
//! One module per idea:
//!
//! * [`config`]: settings from defaults, a TOML file and the environment.
//! * [`event`]: the domain types, built only by parsing.
//! * [`wire`]: the protocol on RabbitMQ: header names, the envelope, the
//!   `account.<state>` message, the contract (`docs/asyncapi.yaml`),
//!   dead-letter and retry headers, topic patterns.
//! * [`ingress`]: the public HTTP app; `admin`: health, readiness, metrics,
//!   and the operator console (`/api/`, `docs/openapi.yaml`, and its pages).
//! * [`broker`]: RabbitMQ: names, declaring, the supervised connection and its
//!   status, one confirmed publish.
//! * [`dedup`]: the sender's retries recognised by their `x-dedup-key`.
//! * `delivery`, [`spool`]: publish now, or keep on disk until RabbitMQ can.
//! * `metrics`, [`telemetry`]: what operators see; [`traces`]: W3C trace
//!   context on every message, and spans over OTLP.
//! * [`startup`]: wires it all into an [`startup::Application`] and watches
//!   its background tasks; [`cli`]: the commands.
//! * [`history`]: reading the event history stream back, newest first, and
//!   the console's index of it.
//! * [`accounts`]: what the outcomes mean for each account, folded from the
//!   history; the relay announces each change as `account.<state>`.
//! * [`replay`]: sending messages again (dead letters, quarantine, history),
//!   one pass for all three.
//! * [`watch`]: looking without touching (`tail`, `inspect`).
//! * [`consumer`]: a consumer library for apps written in Rust.
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
//! | index the history | [`history::Index`] |
//! | accounts by what they need | [`accounts::book()`], [`accounts::timeline()`] |
//! | look at a queue | [`watch::inspect::inspect`] |
//! | watch events go by | [`watch::tail::tail`] |
//! | list or retry the spool | [`spool::listing`] |
//! | the contract | [`wire::contract::asyncapi`] |

pub mod accounts;
mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod dedup;
mod delivery;
pub mod event;
pub mod history;
pub mod ingress;
mod metrics;
pub mod replay;
pub mod spool;
pub mod startup;
pub mod telemetry;
pub mod traces;
pub mod watch;
pub mod wire;
