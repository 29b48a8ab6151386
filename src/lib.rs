//! hookrelay turns sync webhooks into durable, confirmed RabbitMQ messages.
//!
//! The path of one webhook, and where each step lives:
//!
//! ```text
//! TCP peer ─► path (ingress::WebhookPath: optional secret token)
//!          ─► ingress::client_ip (peer + trusted X-Forwarded-For) ─► allowlist (ip_ranges)
//!          ─► header limits ─► x-client-id ─► content type, size ─► event::Event::parse
//!          ─► envelope (body as received + headers) ─► broker::Publisher (persistent, mandatory, confirmed)
//!          ─► 200 {"status":"accepted","id"} | 4xx/5xx JSON (ingress::error)
//! ```
//!
//! * [`config`]: settings from defaults, a TOML file and the environment.
//! * [`event`]: the domain types, built only by parsing.
//! * [`ip_ranges`]: allowlists and trusted-proxy lists.
//! * [`ingress`]: the public HTTP app; [`admin`]: health, readiness, metrics.
//! * [`envelope`]: what is published for a webhook.
//! * [`broker`]: the supervised connection, the topology, one confirmed publish.
//! * [`metrics`], [`telemetry`]: what operators see.
//! * [`startup`]: wires it all into an [`startup::Application`] ([`tls`] for an
//!   HTTPS listener); [`cli`]: the commands.
//! * [`replay`], [`tail`]: the operator's tools, with [`dead_letter`] (reading
//!   `x-death`) and [`topic`] (topic-pattern matching).

pub mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod envelope;
pub mod event;
pub mod ingress;
pub mod inspect;
pub mod ip_ranges;
pub mod metrics;
pub mod render;
pub mod replay;
pub mod spool;
pub mod startup;
pub mod tail;
pub mod telemetry;
pub mod tls;
pub mod topic;
