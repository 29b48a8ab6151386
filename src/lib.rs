//! hookrelay turns sync webhooks into durable, confirmed RabbitMQ messages.
//!
//! The path of one webhook, and where each step lives:
//!
//! ```text
//! TCP peer ─► path (ingress::WebhookPath: optional secret token)
//!          ─► ingress::client_ip (peer + trusted X-Forwarded-For) ─► allowlist (ip_ranges)
//!          ─► header limits ─► x-client-id ─► content type, size ─► event::Event::parse
//!          ─► envelope::Message (an event with its routing key, or a quarantined body)
//!          ─► delivery: broker::Publisher (persistent, mandatory, confirmed; the
//!             broker::Topology picks the names) or else the spool (fsync'd)
//!          ─► 200 {"status":"accepted","id"} | 4xx/5xx JSON (ingress::error)
//! ```
//!
//! * [`config`]: settings from defaults, a TOML file and the environment.
//! * [`event`]: the domain types, built only by parsing.
//! * [`ip_ranges`]: allowlists and trusted-proxy lists.
//! * [`ingress`]: the public HTTP app; [`admin`]: health, readiness, metrics.
//! * [`envelope`]: what is published for a webhook.
//! * [`broker`]: the supervised connection and its status, the topology (every
//!   RabbitMQ name), one confirmed publish.
//! * [`delivery`], [`spool`]: publish now or keep on disk until RabbitMQ can.
//! * [`metrics`], [`telemetry`]: what operators see.
//! * [`startup`]: wires it all into an [`startup::Application`] and watches its
//!   background tasks ([`tls`] for an HTTPS listener); [`cli`]: the commands.
//! * [`history`]: reading the event history stream back (`events`, `tail`,
//!   `replay --from-history`).
//! * [`replay`], [`tail`], [`inspect`]: the operator's tools, with
//!   [`dead_letter`] (reading `x-death`), [`render`] (showing a message) and
//!   [`topic`] (topic-pattern matching).

pub mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod delivery;
pub mod event;
pub mod history;
pub mod ingress;
pub mod metrics;
pub mod replay;
pub mod spool;
pub mod startup;
pub mod strict_json;
pub mod telemetry;
pub mod tls;
pub mod watch;
pub mod wire;
