//! The rules a loaded configuration must keep, each broken one reported in
//! one line that names its key.

use std::time::Duration;

use super::{ConfigError, Settings};
use crate::wire::topic::TopicPattern;

/// A shorter path token could be guessed by a patient scanner.
const MIN_PATH_TOKEN_LEN: usize = 16;

impl Settings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
        if let Some(token) = self.admin.console_token() {
            let token = token.expose();
            if token.len() < MIN_PATH_TOKEN_LEN || token.chars().any(char::is_whitespace) {
                return invalid(
                    "admin.token",
                    "must be at least 16 characters without spaces (e.g. `openssl rand -hex 32`)",
                );
            }
            if !self.server.admin_listen.ip().is_loopback() && self.admin.protected_by.is_none() {
                return invalid(
                    "admin.protected_by",
                    "is not set, and the console would listen on a non-loopback \
                     server.admin_listen: put it behind a TLS-terminating proxy (\"tls_proxy\") \
                     or publish its port on the host's loopback only (\"host_loopback\"), and \
                     say which here",
                );
            }
        }
        if let Some(origin) = &self.admin.public_origin
            && let Err(why) = web_origin(origin)
        {
            return invalid("admin.public_origin", why);
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
        if self.accounts.temporary_failures_to_escalate == 0 {
            return invalid(
                "accounts.temporary_failures_to_escalate",
                "must be at least 1 (the spec: \"if this error keeps happening\")",
            );
        }
        if self.accounts.silent_after > Duration::from_secs(366 * 24 * 3600) {
            return invalid(
                "accounts.silent_after",
                "must be at most a year (the sender syncs daily: \"26h\"), or \"0s\" for never",
            );
        }
        if self.providers.incident_accounts < 2 {
            return invalid(
                "providers.incident_accounts",
                "must be at least 2 (one account failing is that account's own state)",
            );
        }
        if self.providers.incident_window < Duration::from_secs(1) {
            return invalid(
                "providers.incident_window",
                "must be at least 1s (e.g. \"15m\")",
            );
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
            if queue.bindings.is_empty() && queue.changes.is_empty() {
                return invalid(
                    "queues.bindings",
                    "must list at least one routing-key pattern (or `changes` at least one)",
                );
            }
            if queue
                .bindings
                .iter()
                .chain(&queue.changes)
                .any(|b| b.is_empty() || b.len() > 255)
            {
                return invalid("queues.bindings", "patterns must be 1 to 255 characters");
            }
            let patterns = |list: &[String]| -> Vec<(String, TopicPattern)> {
                list.iter()
                    .filter_map(|b| Some((b.clone(), b.parse::<TopicPattern>().ok()?)))
                    .collect()
            };
            for (binding, pattern) in patterns(&queue.bindings) {
                if pattern.can_match_an_event() {
                    continue;
                }
                let problem = if pattern.can_match_a_change() {
                    format!(
                        "`{binding}` (queue {}) would match what the relay announces, which \
                         goes through its own exchange {}.changes, never the sender's: list it \
                         under `changes` instead (`changes = [\"{binding}\"]`)",
                        queue.name, self.amqp.exchange
                    )
                } else {
                    format!(
                        "`{binding}` (queue {}) matches no routing key the sender's events \
                         have: sync.account, or sync.error.<code> (see docs/src/consumer.md, \
                         \"Routing keys\")",
                        queue.name
                    )
                };
                return Err(ConfigError::Invalid {
                    key: "queues.bindings",
                    problem,
                });
            }
            if let Some((binding, _)) = patterns(&queue.changes)
                .into_iter()
                .find(|(_, pattern)| !pattern.can_match_a_change())
            {
                return Err(ConfigError::Invalid {
                    key: "queues.changes",
                    problem: format!(
                        "`{binding}` (queue {}) matches nothing the relay announces on {}.changes: \
                         account.<state>, the state one of {}, or provider.incident_opened and \
                         provider.incident_resolved (see docs/src/consumer.md, \"Routing keys\")",
                        queue.name,
                        self.amqp.exchange,
                        crate::wire::account::StateName::ALL
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            if queue
                .retry
                .iter()
                .any(|d| d.as_millis() == 0 || d.as_millis() > u128::from(u32::MAX))
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
}

/// `text` as a browser writes it in an `Origin` header: scheme and host,
/// lowercase, the port only when not the scheme's own, no user, no path
/// (`HTTPS://Relay.example.com:443/` is `https://relay.example.com`).
pub fn web_origin(text: &str) -> Result<String, &'static str> {
    const WHAT: &str = "must be an origin: http(s), a host (with its port when not the \
                        scheme's own), no user, path, query or fragment, e.g. \
                        \"https://relay.example.com\"";
    let url = url::Url::parse(text).map_err(|_| WHAT)?;
    let bare = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.host().is_some();
    match bare {
        true => Ok(url.origin().ascii_serialization()),
        false => Err(WHAT),
    }
}
