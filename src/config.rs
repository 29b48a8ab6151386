//! `Settings`: built-in defaults, then an optional TOML file, then environment
//! variables (`HOOKRELAY__<SECTION>__<KEY>`, lists comma-separated).
//!
//! The built-in defaults are `config/default.toml`, compiled into the binary, so
//! the documented defaults and the real ones cannot drift apart. Every problem
//! is reported as one line that names the key.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ip_ranges::IpRanges;

/// The documented defaults, compiled in.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override settings.
const ENV_PREFIX: &str = "HOOKRELAY";

/// A shorter path token could be guessed by a patient scanner.
const MIN_PATH_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub log_format: LogFormat,
    pub server: ServerSettings,
    pub ingress: IngressSettings,
    pub amqp: AmqpSettings,
    pub spool: SpoolSettings,
    pub history: HistorySettings,
    #[serde(default)]
    pub queues: Vec<QueueSettings>,
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
}

/// A consumer queue the relay declares and binds for its users.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub name: String,
    pub bindings: Vec<String>,
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
    /// dead letters instead of refusing the publish (README, "Slow and full
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

/// An AMQP URI whose password never reaches a log line or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUri(String);

/// A secret setting (the path token): shown as `****` everywhere it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

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
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| {
            Err(ConfigError::Invalid {
                key,
                problem: problem.to_owned(),
            })
        };
        if self.ingress.client_ids.is_empty() {
            return invalid(
                "ingress.client_ids",
                "is empty: set the client app id(s) the sender puts in x-client-id \
                 (HOOKRELAY__INGRESS__CLIENT_IDS)",
            );
        }
        if self.ingress.allowed_ips.is_empty() {
            return invalid(
                "ingress.allowed_ips",
                "is empty: nobody could send webhooks",
            );
        }
        if !self.server.webhook_path.starts_with('/') {
            return invalid("server.webhook_path", "must start with `/`");
        }
        if self.server.max_body_bytes == 0 {
            return invalid("server.max_body_bytes", "must be greater than 0");
        }
        if self.server.body_timeout_ms == 0 {
            return invalid("server.body_timeout_ms", "must be greater than 0");
        }
        if self.server.header_timeout_ms == 0 {
            return invalid("server.header_timeout_ms", "must be greater than 0");
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be greater than 0");
        }
        if self.server.max_headers == 0 || self.server.max_header_bytes == 0 {
            return invalid(
                "server.max_headers",
                "max_headers and max_header_bytes must be greater than 0",
            );
        }
        if let Some(token) = &self.server.path_token {
            let token = token.expose();
            if token.len() < MIN_PATH_TOKEN_LEN
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return invalid(
                    "server.path_token",
                    "must be at least 16 characters of A-Z, a-z, 0-9, `-` and `_` \
                     (e.g. `openssl rand -hex 16`)",
                );
            }
        }
        if self.amqp.uri.is_empty() {
            return invalid("amqp.uri", "is empty: name at least one RabbitMQ node");
        }
        if let Some(url) = &self.amqp.management_url
            && !url.starts_with("http://")
        {
            return invalid(
                "amqp.management_url",
                "must be an http:// URL of RabbitMQ's management API, e.g. \
                 http://127.0.0.1:15672 (https is not supported yet: reach it on the \
                 broker's private network)",
            );
        }
        if self.spool.enabled && self.spool.max_bytes == 0 {
            return invalid("spool.max_bytes", "must be greater than 0");
        }
        if self.spool.enabled && self.spool.path.as_os_str().is_empty() {
            return invalid("spool.path", "must name a file");
        }
        if self.amqp.confirm_timeout_ms == 0 {
            return invalid("amqp.confirm_timeout_ms", "must be greater than 0");
        }
        if self.amqp.channels == 0 {
            return invalid("amqp.channels", "must be greater than 0");
        }
        if self.history.enabled && self.history.max_age < Duration::from_secs(1) {
            return invalid("history.max_age", "must be at least 1s (e.g. \"7d\")");
        }
        if self.history.enabled && self.history.max_bytes.as_u64() == 0 {
            return invalid(
                "history.max_bytes",
                "must be greater than 0 (e.g. \"1GiB\")",
            );
        }
        if self.amqp.topology_check_secs == 0 {
            return invalid("amqp.topology_check_secs", "must be greater than 0");
        }
        if self.spool.enabled && self.spool.max_refusals == 0 {
            return invalid("spool.max_refusals", "must be greater than 0");
        }
        if self.spool.enabled && self.spool.refused_retry_delay < Duration::from_millis(10) {
            return invalid(
                "spool.refused_retry_delay",
                "must be at least 10ms (e.g. \"1s\")",
            );
        }
        // Derived names add up to 12 characters; AMQP names are at most 255 bytes.
        if self.amqp.exchange.is_empty() || self.amqp.exchange.len() > 200 {
            return invalid("amqp.exchange", "must be 1 to 200 characters");
        }
        for queue in &self.queues {
            if queue.name.is_empty() || queue.name.len() > 255 || queue.name.starts_with("amq.") {
                return invalid(
                    "queues.name",
                    "must be 1 to 255 characters, not starting with `amq.`",
                );
            }
            if queue.bindings.is_empty() {
                return invalid(
                    "queues.bindings",
                    "must list at least one routing-key pattern",
                );
            }
            if queue.bindings.iter().any(|b| b.is_empty() || b.len() > 255) {
                return invalid("queues.bindings", "patterns must be 1 to 255 characters");
            }
            let cannot_match = queue.bindings.iter().find(|binding| {
                binding
                    .parse::<crate::wire::topic::TopicPattern>()
                    .is_ok_and(|pattern| !pattern.can_match_an_event())
            });
            if let Some(binding) = cannot_match {
                return Err(ConfigError::Invalid {
                    key: "queues.bindings",
                    problem: format!(
                        "`{binding}` (queue {}) matches no routing key the relay publishes: \
                         sync.account, or sync.error.<code> (see README, \"Routing keys\")",
                        queue.name
                    ),
                });
            }
            if queue
                .retry
                .iter()
                .any(|d| d.as_millis() == 0 || d.as_millis() > u32::MAX as u128)
            {
                return invalid(
                    "queues.retry",
                    "each delay must be at least 1ms and at most 49 days (e.g. [\"30s\", \"5m\"])",
                );
            }
            if queue.name.len() > 240 && !queue.retry.is_empty() {
                return invalid(
                    "queues.name",
                    "with retry tiers, at most 240 characters (<name>.retry.<n> must fit 255)",
                );
            }
            if queue.delivery_limit == 0 {
                return invalid("queues.delivery_limit", "must be greater than 0");
            }
            if queue.max_length == Some(0) || queue.max_length_bytes == Some(0) {
                return invalid(
                    "queues.max_length",
                    "max_length and max_length_bytes must be greater than 0 (leave them out \
                     for an unbounded queue)",
                );
            }
        }
        Ok(())
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

impl AmqpUri {
    /// The user, password and virtual host, for RabbitMQ's management API.
    pub fn credentials(&self) -> (String, Secret, String) {
        match lapin::uri::AMQPUri::from_str(&self.0) {
            Ok(uri) => (
                uri.authority.userinfo.username,
                Secret::new(uri.authority.userinfo.password),
                uri.vhost,
            ),
            Err(_) => (String::new(), Secret::new(""), "/".to_owned()),
        }
    }

    /// The URI itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URI with its password replaced by `****`.
    pub fn masked(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                let password = if userinfo.contains(':') { ":****" } else { "" };
                format!(
                    "{scheme}://{user}{password}@{host}{}",
                    &rest[authority_end..]
                )
            }
            None => self.0.clone(),
        }
    }
}

/// A string that is not an AMQP URI, and why (the URI itself is not repeated:
/// it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an AMQP URI ({0})")]
pub struct InvalidAmqpUri(String);

impl FromStr for AmqpUri {
    type Err = InvalidAmqpUri;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        lapin::uri::AMQPUri::from_str(s)
            .map(|_| AmqpUri(s.to_owned()))
            .map_err(InvalidAmqpUri)
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUri({})", self.masked())
    }
}

impl fmt::Display for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for AmqpUri {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Secret {
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself: only for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("****")
    }
}

/// A list of durations written for humans (`["30s", "5m"]`).
mod human_durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| humantime::parse_duration(text).map_err(serde::de::Error::custom))
            .collect()
    }

    pub fn serialize<S: Serializer>(
        durations: &[Duration],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = durations
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        serde::Serialize::serialize(&texts, serializer)
    }
}

/// A duration written for humans (`"7d"`, `"36h"`), as humantime reads it.
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*duration).to_string())
    }
}

/// An optional secret; an empty value (as `HOOKRELAY__SERVER__PATH_TOKEN=`
/// gives it) means "not set".
fn optional_secret<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?
        .filter(|s| !s.is_empty())
        .map(Secret))
}

impl Serialize for AmqpUri {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

/// A list given as a TOML array or as one comma-separated string (as
/// environment variables give it). Entries are trimmed and blank ones dropped,
/// so `HOOKRELAY__INGRESS__CLIENT_IDS=` means "none".
fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;

    impl<'de> serde::de::Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings or a comma-separated string")
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(value.split(',').map(str::to_owned).collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = seq.next_element::<String>()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }

    Ok(deserializer
        .deserialize_any(ListVisitor)?
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

fn amqp_uris<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<AmqpUri>, D::Error> {
    string_list(deserializer)?
        .iter()
        .map(|uri| uri.parse().map_err(serde::de::Error::custom))
        .collect()
}

fn ip_ranges<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpRanges, D::Error> {
    string_list(deserializer)?
        .join(",")
        .parse()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_with_env(None, env(pairs))
    }

    const WITH_ID: (&str, &str) = ("HOOKRELAY__INGRESS__CLIENT_IDS", "app-1");

    #[test]
    fn the_default_spool_is_where_the_system_keeps_state_never_the_working_directory() {
        let path = |vars: &[(&str, &str)]| {
            let vars: HashMap<String, String> = env(vars);
            SpoolSettings::default_path(|name| vars.get(name).cloned())
        };
        assert_eq!(
            path(&[("STATE_DIRECTORY", "/var/lib/hr"), ("HOME", "/home/u")]),
            PathBuf::from("/var/lib/hr/spool.sqlite")
        );
        assert_eq!(
            path(&[("XDG_STATE_HOME", "/s"), ("HOME", "/home/u")]),
            PathBuf::from("/s/hookrelay/spool.sqlite")
        );
        assert_eq!(
            path(&[("HOME", "/home/u")]),
            PathBuf::from("/home/u/.local/state/hookrelay/spool.sqlite")
        );
        assert_eq!(path(&[]), PathBuf::from("/var/lib/hookrelay/spool.sqlite"));
        let settings = load(&[WITH_ID, ("HOME", "/home/u")]).unwrap();
        assert!(
            settings.spool.path.is_absolute(),
            "{:?}",
            settings.spool.path
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = load(&[WITH_ID]).unwrap();
        assert_eq!(s.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(s.server.webhook_path, "/webhooks");
        assert_eq!(s.server.max_body_bytes, 64 * 1024);
        assert_eq!(s.amqp.exchange, "webhooks");
        assert_eq!(s.amqp.uri.len(), 1);
        assert_eq!(
            s.amqp.uri[0].expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert!(s.spool.enabled);
        assert_eq!(s.spool.max_bytes, 1024 * 1024 * 1024);
        assert_eq!(s.log_format, LogFormat::Text);
        for sender in [
            "52.60.234.183",
            "52.60.240.87",
            "52.60.241.79",
            "52.60.242.161",
        ] {
            assert!(
                s.ingress.allowed_ips.contains(sender.parse().unwrap()),
                "{sender}"
            );
        }
        assert!(!s.ingress.allowed_ips.contains("127.0.0.1".parse().unwrap()));
        assert!(s.ingress.trusted_proxies.is_empty());
        assert!(s.server.path_token.is_none());
        assert!(s.server.tls.is_none());
    }

    #[test]
    fn an_empty_path_token_means_none_and_a_set_one_is_masked() {
        let unset = load(&[WITH_ID, ("HOOKRELAY__SERVER__PATH_TOKEN", "")]).unwrap();
        assert!(unset.server.path_token.is_none());

        let token = "0123456789abcdef-_XYZ";
        let s = load(&[WITH_ID, ("HOOKRELAY__SERVER__PATH_TOKEN", token)]).unwrap();
        assert_eq!(s.server.path_token.as_ref().unwrap().expose(), token);
        for shown in [s.to_masked_toml(), format!("{s:?}")] {
            assert!(!shown.contains(token), "{shown}");
        }
    }

    #[test]
    fn max_connections_is_shared_by_the_workers() {
        let s = load(&[
            WITH_ID,
            ("HOOKRELAY__SERVER__WORKERS", "3"),
            ("HOOKRELAY__SERVER__MAX_CONNECTIONS", "100"),
        ])
        .unwrap();
        assert_eq!(s.server.max_connections_per_worker(), 34);
    }

    #[test]
    fn environment_overrides_with_comma_separated_lists() {
        let s = load(&[
            ("HOOKRELAY__INGRESS__CLIENT_IDS", "0012, app-2"),
            ("HOOKRELAY__INGRESS__ALLOWED_IPS", "127.0.0.1,10.0.0.0/8"),
            ("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "192.168.0.0/16"),
            ("HOOKRELAY__SERVER__LISTEN", "127.0.0.1:0"),
            ("HOOKRELAY__SERVER__MAX_BODY_BYTES", "1024"),
            ("HOOKRELAY__AMQP__EXCHANGE", "events"),
            ("HOOKRELAY__AMQP__CONFIRM_TIMEOUT_MS", "250"),
            ("HOOKRELAY__LOG_FORMAT", "json"),
            ("HOOKRELAY__SPOOL__ENABLED", "false"),
            (
                "HOOKRELAY__AMQP__URI",
                "amqp://a:1@n1/%2f, amqp://a:1@n2/%2f",
            ),
        ])
        .unwrap();
        assert!(!s.spool.enabled);
        assert_eq!(s.amqp.uri.len(), 2);
        assert_eq!(s.amqp.uri[1].masked(), "amqp://a:****@n2/%2f");
        assert_eq!(s.ingress.client_ids, ["0012", "app-2"]);
        assert!(s.ingress.allowed_ips.contains("10.2.3.4".parse().unwrap()));
        assert!(
            s.ingress
                .trusted_proxies
                .contains("192.168.1.1".parse().unwrap())
        );
        assert_eq!(s.server.listen.port(), 0);
        assert_eq!(s.server.max_body_bytes, 1024);
        assert_eq!(s.amqp.exchange, "events");
        assert_eq!(s.amqp.confirm_timeout(), Duration::from_millis(250));
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn a_file_is_layered_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("hookrelay-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(
            &path,
            r#"
[amqp]
exchange = "from-file"
[ingress]
client_ids = ["file-id"]
[[queues]]
name = "reprompt"
bindings = ["sync.error.LoginFailedError", "sync.error.SecurityQuestionError"]
type = "quorum"
"#,
        )
        .unwrap();
        let s = Settings::load_with_env(
            Some(&path),
            env(&[("HOOKRELAY__AMQP__EXCHANGE", "from-env")]),
        )
        .unwrap();
        assert_eq!(s.amqp.exchange, "from-env");
        assert_eq!(s.ingress.client_ids, ["file-id"]);
        assert_eq!(s.queues.len(), 1);
        assert_eq!(s.queues[0].kind(), QueueType::Quorum);
        assert_eq!(s.queues[0].bindings.len(), 2);
        assert_eq!(s.server.webhook_path, "/webhooks", "defaults still apply");
    }

    #[test]
    fn a_queue_without_a_type_follows_amqp_queue_type() {
        let dir = std::env::temp_dir().join(format!("hookrelay-qtype-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.toml");
        std::fs::write(
            &path,
            r##"
[ingress]
client_ids = ["file-id"]
[[queues]]
name = "untyped"
bindings = ["#"]
[[queues]]
name = "classic"
bindings = ["#"]
type = "classic"
"##,
        )
        .unwrap();
        let load = |queue_type: &str| {
            Settings::load_with_env(
                Some(&path),
                env(&[("HOOKRELAY__AMQP__QUEUE_TYPE", queue_type)]),
            )
            .unwrap()
        };

        let on_cluster = load("quorum");
        assert_eq!(on_cluster.amqp.queue_type, QueueType::Quorum);
        assert_eq!(on_cluster.queues[0].kind(), QueueType::Quorum);
        assert_eq!(
            on_cluster.queues[1].kind(),
            QueueType::Classic,
            "a set type stays"
        );

        let single = load("classic");
        assert_eq!(single.queues[0].kind(), QueueType::Classic);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "ingress.client_ids"),
            (
                &[("HOOKRELAY__INGRESS__CLIENT_IDS", " , ")],
                "ingress.client_ids",
            ),
            (
                &[WITH_ID, ("HOOKRELAY__INGRESS__ALLOWED_IPS", "10.0.0.0/33")],
                "ingress.allowed_ips",
            ),
            (
                &[
                    WITH_ID,
                    ("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "proxy.local"),
                ],
                "ingress.trusted_proxies",
            ),
            (
                &[WITH_ID, ("HOOKRELAY__AMQP__URI", "http://nope")],
                "amqp.uri",
            ),
            (
                &[WITH_ID, ("HOOKRELAY__SERVER__LISTEN", "localhost")],
                "server.listen",
            ),
            (
                &[WITH_ID, ("HOOKRELAY__SERVER__MAX_BODY_BYTES", "lots")],
                "server.max_body_bytes",
            ),
            (
                &[WITH_ID, ("HOOKRELAY__SERVER__PATH_TOKEN", "short")],
                "server.path_token",
            ),
            (
                &[
                    WITH_ID,
                    ("HOOKRELAY__SERVER__PATH_TOKEN", "sixteen-chars/../x"),
                ],
                "server.path_token",
            ),
            (
                &[WITH_ID, ("HOOKRELAY__SERVER__MAX_CONNECTIONS", "0")],
                "server.max_connections",
            ),
            (
                &[WITH_ID, ("HOOKRELAY__SERVER__WEBHOOK_PATH", "webhooks")],
                "server.webhook_path",
            ),
            (&[WITH_ID, ("HOOKRELAY__LOG_FORMAT", "xml")], "log_format"),
            (
                &[WITH_ID, ("HOOKRELAY__SERVER__LISTN", "0.0.0.0:1")],
                "listn",
            ),
            (&[WITH_ID, ("HOOKRELAY__NOPE", "1")], "nope"),
        ];
        for (pairs, key) in cases {
            let err = load(pairs).expect_err(key).to_string();
            assert!(err.contains(key), "{pairs:?}: `{err}` should name {key}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn the_password_is_masked_wherever_the_uri_is_shown() {
        let s = load(&[
            WITH_ID,
            (
                "HOOKRELAY__AMQP__URI",
                "amqps://relay:s3cret@mq.example:5671/prod",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.amqp.uri[0].masked(),
            "amqps://relay:****@mq.example:5671/prod"
        );
        for shown in [s.to_masked_toml(), format!("{s:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("mq.example"), "{shown}");
        }
        assert_eq!(
            s.amqp.uri[0].expose(),
            "amqps://relay:s3cret@mq.example:5671/prod"
        );
    }
}
