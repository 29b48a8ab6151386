//! `Settings`: built-in defaults, then an optional TOML file, then environment
//! variables (`HOOKRELAY__<SECTION>__<KEY>`, lists comma-separated).
//!
//! The built-in defaults are `config/default.toml`, compiled into the binary, so
//! the documented defaults and the real ones cannot drift apart. Every problem
//! is reported as one line that names the key (`validate`).
//!
//! * `secret`: the settings that print masked (URIs, the path token).
//! * [`ip_ranges`]: allowlists and trusted-proxy lists.
//! * `de`: how values are read (human durations, comma-separated lists).

mod de;
pub mod ip_ranges;
mod secret;
mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

use de::{
    amqp_uris, human_duration, human_durations, ip_ranges, optional_path, optional_protection,
    optional_secret, optional_string, string_list,
};
pub use ip_ranges::IpRanges;
pub use secret::{AmqpUri, InvalidAmqpUri, Secret};
pub use validate::web_origin;

/// The documented defaults, compiled in.
const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Prefix of the environment variables that override settings.
const ENV_PREFIX: &str = "HOOKRELAY";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub log_format: LogFormat,
    pub server: ServerSettings,
    pub ingress: IngressSettings,
    pub amqp: AmqpSettings,
    pub spool: SpoolSettings,
    pub history: HistorySettings,
    pub accounts: AccountsSettings,
    pub providers: ProvidersSettings,
    pub audit: AuditSettings,
    pub admin: AdminSettings,
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub queues: Vec<QueueSettings>,
}

/// Traces: W3C trace context on every message, and spans exported over OTLP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP collector's base address (`http://collector:4318`):
    /// spans go to `<it>/v1/traces` as JSON. Unset: nothing is exported.
    #[serde(default, deserialize_with = "optional_string")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// The public listener: it serves the webhook path and nothing else.
    pub listen: SocketAddr,
    /// The private listener: health, readiness and metrics.
    pub admin_listen: SocketAddr,
    pub webhook_path: String,
    pub max_body_bytes: usize,
    /// How long a body may take to arrive once the headers are in; a slower
    /// one gets 408 (actix's own timeout covers only the headers).
    pub body_timeout_ms: u64,
    /// How long a new connection may take to send its request head.
    pub header_timeout_ms: u64,
    /// How long an idle keep-alive connection is kept open.
    pub keep_alive_secs: u64,
    /// Open connections on the public listener, all workers together.
    pub max_connections: usize,
    /// The most request headers, and header bytes, a webhook may carry.
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// When set, the webhook path is `<webhook_path>/<token>`.
    #[serde(default, deserialize_with = "optional_secret")]
    pub path_token: Option<Secret>,
    /// When set, the public listener speaks TLS only.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout_secs: u64,
}

/// The public listener's certificate chain and private key, PEM files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    #[serde(deserialize_with = "ip_ranges")]
    pub allowed_ips: IpRanges,
    #[serde(deserialize_with = "ip_ranges")]
    pub trusted_proxies: IpRanges,
    #[serde(deserialize_with = "string_list")]
    pub client_ids: Vec<String>,
    /// Gone: every copy the sender delivers is published (repeats are
    /// events). Still read, so that a configuration that sets it starts,
    /// with a warning ([`Settings::warnings`]).
    #[serde(default, deserialize_with = "optional_string", skip_serializing)]
    pub dedup_window: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// One URI, or the nodes of a cluster: the first that answers is used.
    #[serde(deserialize_with = "amqp_uris")]
    pub uri: Vec<AmqpUri>,
    pub exchange: String,
    pub confirm_timeout_ms: u64,
    /// Publishing channels kept open, each in confirm mode.
    pub channels: usize,
    /// How often the relay declares its topology again while connected, so
    /// that a queue or exchange deleted at runtime comes back.
    pub topology_check_secs: u64,
    /// The type of the relay's own queues (unrouted, dead-letter, quarantine),
    /// of retry tiers, and of consumer queues that do not say.
    pub queue_type: QueueType,
    /// RabbitMQ's management API (`http://host:15672`), for what AMQP cannot
    /// tell: the policies in effect on a queue. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_url: Option<String>,
}

/// The local spool that keeps accepted webhooks while RabbitMQ cannot.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSettings {
    pub enabled: bool,
    /// Unset: [`SpoolSettings::default_path`], filled in by [`Settings::load`].
    #[serde(default)]
    pub path: PathBuf,
    pub max_bytes: u64,
    /// How many times RabbitMQ may refuse one message (nack, return, channel
    /// error) before it is parked: each attempt copies it again into every
    /// other queue bound to its routing key, so the attempts are bounded.
    pub max_refusals: u32,
    /// The pause before a refused message is tried again; four times longer
    /// after each next refusal.
    #[serde(with = "human_duration")]
    pub refused_retry_delay: Duration,
}

/// The event history: a RabbitMQ stream that keeps every event.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    pub enabled: bool,
    /// Events older than this are dropped from the stream.
    #[serde(with = "human_duration")]
    pub max_age: Duration,
    /// The stream is kept under about this size, oldest events dropped first.
    pub max_bytes: bytesize::ByteSize,
    /// The relay's SQLite file of what it derives from the stream (the
    /// console's index of events, every account's state, the changes it
    /// owes); beside the spool file when unset ([`Settings::history_index_path`]).
    #[serde(default, deserialize_with = "optional_path")]
    pub index_path: Option<PathBuf>,
}

/// Accounts that need someone (`hookrelay accounts`): each account's state,
/// folded from its events in the history.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsSettings {
    pub enabled: bool,
    /// `TemporaryFailureError`s in a row after which the sender's support
    /// should look at the account.
    pub temporary_failures_to_escalate: u32,
    /// An account with no event for this long is `silent` (announced once,
    /// by the announcing relay); `0s`: never.
    #[serde(with = "human_duration")]
    pub silent_after: Duration,
}

/// Provider incidents: many accounts of one provider failing at once, which
/// is the sender's connector, not its users ([`crate::wire::provider`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersSettings {
    /// Distinct accounts of one provider in `contact_provider` within
    /// `incident_window` that open an incident; as many synced again
    /// resolve it.
    pub incident_accounts: u32,
    /// How close in time their failures must be; an event of the provider
    /// this long after its last failure resolves the incident.
    #[serde(with = "human_duration")]
    pub incident_window: Duration,
}

/// The relay's identity and numbers, which `hookrelay audit` reckons with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Whether stored webhooks are numbered.
    pub enabled: bool,
    /// How long a number may be missing from the history before the relay's
    /// follower counts it (`hookrelay_audit_gaps`).
    #[serde(with = "human_duration")]
    pub missing_after: Duration,
    /// `x-relay-id`; unset: a UUID made at the first start, kept in the
    /// state file.
    #[serde(default, deserialize_with = "optional_string")]
    pub relay_id: Option<String>,
    /// The state file; unset: beside the spool file
    /// ([`Settings::audit_state_path`]).
    #[serde(default, deserialize_with = "optional_path")]
    pub state_path: Option<PathBuf>,
}

/// The operator console (`/api/` and its pages on `server.admin_listen`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// The console's token; the console is off without one. Read from
    /// `token_file` at load when that is set.
    #[serde(deserialize_with = "optional_secret")]
    pub token: Option<Secret>,
    /// A file holding the token (a Docker or Kubernetes secret).
    #[serde(default, deserialize_with = "optional_path")]
    pub token_file: Option<PathBuf>,
    /// Moved to `history.index_path`; still read ([`Settings::warnings`]).
    #[serde(default, deserialize_with = "optional_path", skip_serializing)]
    pub index_path: Option<PathBuf>,
    /// What protects a console on a non-loopback `admin_listen`, which is
    /// refused otherwise.
    #[serde(default, deserialize_with = "optional_protection")]
    pub protected_by: Option<Protection>,
    /// The origin users open the console at (`https://relay.example.com`),
    /// when a proxy in front rewrites `Host`: requests that change something
    /// must come from it, and an `https` one makes cookies `Secure`.
    #[serde(default, deserialize_with = "optional_string")]
    pub public_origin: Option<String>,
    /// Proxies in front of the console whose `X-Forwarded-For` is believed,
    /// for the address the brake on guessing counts (the ingress's are not:
    /// trusting the console's proxy must not widen who may send webhooks).
    #[serde(default, deserialize_with = "ip_ranges")]
    pub trusted_proxies: IpRanges,
}

/// What keeps a console on a non-loopback address from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protection {
    /// A TLS-terminating proxy in front of it (cookies are then `Secure`).
    TlsProxy,
    /// A port published on the host's loopback only (`127.0.0.1:9090:9090`).
    HostLoopback,
}

impl AdminSettings {
    /// The console's token, when the console is on.
    pub fn console_token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }
}

/// A consumer queue the relay declares and binds for its users.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub name: String,
    /// Patterns bound on the sender's exchange (`amqp.exchange`): `sync.*`.
    #[serde(default)]
    pub bindings: Vec<String>,
    /// Patterns bound on the relay's own exchange of what it derives,
    /// `<exchange>.changes`: `account.<state>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// Unset: `amqp.queue_type` (filled in by [`Settings::load`]).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<QueueType>,
    /// Delays of the retry tiers `<name>.retry.<n>`, in order (`["30s", "5m"]`).
    #[serde(default, with = "human_durations")]
    pub retry: Vec<Duration>,
    /// For a quorum queue: deliveries after which RabbitMQ dead-letters a
    /// message that keeps coming back (a consumer that crashes on it).
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    /// A length bound the relay sets on the queue (`x-max-length`), with
    /// `x-overflow: drop-head`: a full queue sheds its oldest message to the
    /// dead letters instead of refusing the publish (docs/src/operating.md, "Slow and full
    /// consumers").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// The same in bytes of message bodies (`x-max-length-bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length_bytes: Option<u64>,
}

/// RabbitMQ 4.0's own default for quorum queues.
fn default_delivery_limit() -> u32 {
    20
}

impl QueueSettings {
    /// A queue bound with `bindings`, without retry tiers.
    pub fn new(name: &str, bindings: &[&str], kind: QueueType) -> QueueSettings {
        QueueSettings {
            name: name.to_owned(),
            bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
            changes: Vec::new(),
            kind: Some(kind),
            retry: Vec::new(),
            delivery_limit: default_delivery_limit(),
            max_length: None,
            max_length_bytes: None,
        }
    }

    /// Whether the relay bounds the queue's length (messages or bytes).
    pub fn is_bounded(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }

    /// Classic or quorum.
    pub fn kind(&self) -> QueueType {
        self.kind.unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

/// Read by hand, so a typo is answered in the user's terms (serde's own
/// message is "enum QueueType does not have variant constructor qorum").
impl TryFrom<String> for QueueType {
    type Error = String;

    fn try_from(value: String) -> Result<QueueType, String> {
        match value.as_str() {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!(
                "`{other}` is not a queue type: use \"classic\" or \"quorum\""
            )),
        }
    }
}

/// A setting that stops startup, in one line that names its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not a `#[source]`: its message already says everything, and a source
    // would print it twice in `{:#}`.
    #[error("configuration: {0}")]
    Load(config::ConfigError),
    #[error("configuration: {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

impl From<config::ConfigError> for ConfigError {
    fn from(err: config::ConfigError) -> Self {
        ConfigError::Load(err)
    }
}

impl Settings {
    /// Loads defaults, then `file` if given, then the process environment.
    ///
    /// ```no_run
    /// # fn run() -> Result<(), hookrelay::config::ConfigError> {
    /// use hookrelay::config::Settings;
    ///
    /// let settings = Settings::load(Some("relay.toml".as_ref()))?;
    /// println!("publishing to {}", settings.amqp.exchange);
    /// # Ok(())
    /// # }
    /// ```
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_with_env(file, std::env::vars().collect())
    }

    /// Like [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        // Values stay strings (no `try_parsing`: it would turn the client id
        // "0012" into the number 12); lists are split by `string_list` below.
        let environment = Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(Some(env.clone().into_iter().collect()));
        let mut settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        let default_type = settings.amqp.queue_type;
        for queue in &mut settings.queues {
            queue.kind.get_or_insert(default_type);
        }
        if settings.spool.path.as_os_str().is_empty() {
            settings.spool.path = SpoolSettings::default_path(|name| env.get(name).cloned());
        }
        if let Some(path) = &settings.admin.token_file {
            let token = std::fs::read_to_string(path).map_err(|err| ConfigError::Invalid {
                key: "admin.token_file",
                problem: format!("cannot read {}: {err}", path.display()),
            })?;
            settings.admin.token = Some(Secret::new(token.trim()));
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Where the relay keeps what it derives from the history:
    /// `history.index_path`, else the older `admin.index_path`, else beside
    /// the spool file and named after it (`spool.sqlite`:
    /// `history-index.sqlite`; `spool-2.sqlite`: `spool-2.history-index.sqlite`),
    /// so that relays with spools of their own have indexes of their own.
    pub fn history_index_path(&self) -> PathBuf {
        self.history
            .index_path
            .clone()
            .or_else(|| self.admin.index_path.clone())
            .unwrap_or_else(|| self.beside_the_spool("history-index.sqlite"))
    }

    /// A file of the relay's named `name` in the spool's folder, prefixed
    /// with the spool file's name unless that is `spool`: relays with spools
    /// of their own get files of their own.
    fn beside_the_spool(&self, name: &str) -> PathBuf {
        let name = match self.spool.path.file_stem().and_then(|s| s.to_str()) {
            Some("spool") | None => name.to_owned(),
            Some(stem) => format!("{stem}.{name}"),
        };
        self.spool.path.with_file_name(name)
    }

    /// The relay's state file (its identity and numbers): `audit.state_path`,
    /// else beside the spool file and named after it (`spool.sqlite`:
    /// `relay.state`; `spool-2.sqlite`: `spool-2.relay.state`).
    pub fn audit_state_path(&self) -> PathBuf {
        self.audit
            .state_path
            .clone()
            .unwrap_or_else(|| self.beside_the_spool("relay.state"))
    }

    /// What the settings say that an operator should change, each with what
    /// to do: settings this version still reads but no longer uses as they
    /// say, and combinations that work worse than they could. Said once at
    /// start, as warnings.
    pub fn warnings(&self) -> Vec<String> {
        let mut said = Vec::new();
        if let Some(window) = &self.ingress.dedup_window {
            said.push(format!(
                "ingress.dedup_window ({window}) is no longer used: every copy of a webhook the \
                 sender delivers is published, since repeats are events (a TemporaryFailureError \
                 that keeps happening, an on-demand sync); only an identical copy that arrives \
                 while the first is still being stored is stored once. Consumers that want to \
                 drop the sender's retries compare `x-dedup-key`. Remove the setting"
            ));
        }
        if self.admin.token.is_some()
            && self.admin.protected_by == Some(Protection::TlsProxy)
            && self.admin.trusted_proxies.is_empty()
        {
            said.push(
                "admin.protected_by is tls_proxy but admin.trusted_proxies is empty: every \
                 console user then has the proxy's address, so ten wrong tokens from anyone \
                 brake everyone's token logins for a minute (sessions keep working). List the \
                 proxy in admin.trusted_proxies"
                    .to_owned(),
            );
        }
        if let Some(path) = &self.admin.index_path {
            said.push(format!(
                "admin.index_path ({}) moved to history.index_path (the file now also holds \
                 every account's state); it is used as set, rename the setting",
                path.display()
            ));
        }
        said
    }

    /// The settings as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

impl SpoolSettings {
    /// Where the spool is kept when `spool.path` is not set: where the system
    /// keeps a service's state, never the working directory (two relays
    /// started from one folder would otherwise share a spool by accident).
    /// systemd's `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/hookrelay`, else
    /// `~/.local/state/hookrelay`, else `/var/lib/hookrelay`.
    pub fn default_path(var: impl Fn(&str) -> Option<String>) -> PathBuf {
        let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let folder = set("STATE_DIRECTORY")
            .or_else(|| set("XDG_STATE_HOME").map(|state| state.join("hookrelay")))
            .or_else(|| set("HOME").map(|home| home.join(".local/state/hookrelay")))
            .unwrap_or_else(|| PathBuf::from("/var/lib/hookrelay"));
        folder.join("spool.sqlite")
    }
}

impl ServerSettings {
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    /// Worker threads the public listener will run.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// actix counts `max_connections` per worker; ours is for all of them.
    pub fn max_connections_per_worker(&self) -> usize {
        self.max_connections.div_ceil(self.worker_count())
    }
}

impl AmqpSettings {
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }

    pub fn topology_check_interval(&self) -> Duration {
        Duration::from_secs(self.topology_check_secs)
    }

    /// The relay's connection name, as operators see it in the management UI
    /// (and tests close it by): `hookrelay@<host>/<exchange>`.
    pub fn connection_name(&self) -> String {
        self.tool_connection_name("hookrelay")
    }

    /// The connection name of a command other than `serve`, e.g. `hookrelay-replay`.
    pub fn tool_connection_name(&self, tool: &str) -> String {
        let host = gethostname::gethostname();
        format!("{tool}@{}/{}", host.to_string_lossy(), self.exchange)
    }
}

#[cfg(test)]
mod tests;
