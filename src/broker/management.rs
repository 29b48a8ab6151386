//! RabbitMQ's management HTTP API, for what AMQP cannot tell: the policies in
//! effect on a queue, and so whether a full queue sheds its oldest messages
//! or refuses new ones (and pushes back on the relay). Optional:
//! `amqp.management_url`.
//!
//! The rule for which setting wins was checked on RabbitMQ 3.10.8 (a queue of
//! one message, publisher confirms):
//!
//! - a classic queue's `x-overflow` argument wins over a policy's `overflow`;
//!   a quorum queue's policy wins over its argument;
//! - without either, a queue overflows by `drop-head`;
//! - `reject-publish` and `reject-publish-dlx` nack the publish that does not
//!   fit (after the other queues bound to its key took it); `drop-head`
//!   dead-letters the oldest message and acks.

use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{AmqpSettings, Secret};

/// How long to wait for RabbitMQ to collect a queue's statistics (a queue
/// or a policy a few seconds old has none yet: its policy is not shown).
/// RabbitMQ collects every 5 s; a loaded broker can take several rounds.
const STATS_WAIT: Duration = Duration::from_secs(60);
const STATS_POLL: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the management API, with the credentials of `amqp.uri`.
pub(crate) struct Management {
    http: reqwest::Client,
    base: String,
    vhost: String,
    user: String,
    password: Secret,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ManagementError {
    #[error("the management API at {url} did not answer: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the management API at {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("RabbitMQ has no statistics for queue {0} yet; run again in a few seconds")]
    NoStatistics(String),
}

/// A queue as the management API shows it.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct QueueState {
    /// `classic`, `quorum` or `stream`.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// The policy in effect, by name.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub operator_policy: Option<String>,
    /// The policy and operator policy in effect, merged by RabbitMQ.
    #[serde(default)]
    pub effective_policy_definition: Option<Map<String, Value>>,
    /// Absent until RabbitMQ has collected the queue's statistics.
    #[serde(default)]
    messages: Option<u64>,
}

/// The vhost's policies, as [`Management::policies`] read them.
#[derive(Debug, Default)]
pub(crate) struct Policies(Vec<PolicyRule>);

/// A policy as the management API lists it: enough to tell whether RabbitMQ
/// applies it to a queue.
#[derive(Debug, Deserialize)]
struct PolicyRule {
    pattern: String,
    #[serde(rename = "apply-to", default)]
    apply_to: String,
}

impl PolicyRule {
    /// Whether this policy applies to the queue `name`. RabbitMQ's patterns
    /// are PCRE; one the `regex` crate cannot read counts as applying, which
    /// costs a longer wait, never a wrong report.
    fn applies_to_queue(&self, name: &str) -> bool {
        matches!(self.apply_to.as_str(), "all" | "queues")
            && regex::Regex::new(&self.pattern).map_or(true, |pattern| pattern.is_match(name))
    }
}

/// Where a setting in effect comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SetBy {
    Argument,
    Policy(String),
    Default,
}

/// How a queue overflows when full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overflow {
    /// `drop-head`, `reject-publish` or `reject-publish-dlx`.
    pub mode: String,
    pub set_by: SetBy,
    /// The length limits in effect, e.g. `max-length 1 (policy p)`; none
    /// means the queue never overflows.
    pub limits: Vec<String>,
}

impl Overflow {
    /// Whether a full queue refuses (nacks) the publish instead of shedding:
    /// a length limit with a `reject-publish` overflow.
    pub(crate) fn pushes_back(&self) -> bool {
        !self.limits.is_empty() && self.mode.starts_with("reject-publish")
    }
}

impl QueueState {
    /// How this queue overflows, by RabbitMQ's rule of precedence.
    pub(crate) fn overflow(&self) -> Overflow {
        let policy = self.effective_policy_definition.as_ref();
        let policy_name = self
            .policy
            .clone()
            .or_else(|| self.operator_policy.clone())
            .unwrap_or_default();
        let argument = self.arguments.get("x-overflow").and_then(Value::as_str);
        let from_policy = policy
            .and_then(|p| p.get("overflow"))
            .and_then(Value::as_str);
        let (mode, set_by) = match (self.kind.as_str(), argument, from_policy) {
            ("quorum", _, Some(mode)) | (_, None, Some(mode)) => {
                (mode, SetBy::Policy(policy_name.clone()))
            }
            (_, Some(mode), _) => (mode, SetBy::Argument),
            (_, None, None) => ("drop-head", SetBy::Default),
        };
        let mut limits = Vec::new();
        for (argument, key) in [
            ("x-max-length", "max-length"),
            ("x-max-length-bytes", "max-length-bytes"),
        ] {
            if let Some(value) = self.arguments.get(argument) {
                limits.push(format!("{key} {value} (argument)"));
            }
            if let Some(value) = policy.and_then(|p| p.get(key)) {
                limits.push(format!("{key} {value} (policy {policy_name})"));
            }
        }
        Overflow {
            mode: mode.to_owned(),
            set_by,
            limits,
        }
    }
}

impl Management {
    /// A client for `amqp.management_url`, when it is set.
    pub(crate) fn new(amqp: &AmqpSettings) -> Option<Management> {
        let base = amqp
            .management_url
            .as_ref()?
            .trim_end_matches('/')
            .to_owned();
        let (user, password, vhost) = amqp.uri.first()?.credentials();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .ok()?;
        Some(Management {
            http,
            base,
            vhost,
            user,
            password,
        })
    }

    /// The queues bound to `exchange`.
    pub(crate) async fn queues_bound_to(
        &self,
        exchange: &str,
    ) -> Result<Vec<String>, ManagementError> {
        let mut queues: Vec<String> = self
            .bindings_from(exchange)
            .await?
            .into_iter()
            .map(|(queue, _)| queue)
            .collect();
        queues.sort();
        queues.dedup();
        Ok(queues)
    }

    /// Every binding of a queue to `exchange`: the queue and its pattern.
    pub(crate) async fn bindings_from(
        &self,
        exchange: &str,
    ) -> Result<Vec<(String, String)>, ManagementError> {
        #[derive(Deserialize)]
        struct Binding {
            destination: String,
            destination_type: String,
            routing_key: String,
        }
        let path = format!(
            "/api/exchanges/{}/{}/bindings/source",
            encode(&self.vhost),
            encode(exchange)
        );
        let bindings: Vec<Binding> = self.get(&path).await?;
        Ok(bindings
            .into_iter()
            .filter(|b| b.destination_type == "queue")
            .map(|b| (b.destination, b.routing_key))
            .collect())
    }

    /// A queue's state, once RabbitMQ has statistics for it and shows the
    /// policy that applies to it (within [`STATS_WAIT`]). A queue seconds old
    /// has no statistics yet; a new quorum queue gets its policy a moment
    /// after its first statistics, which would show no policy at all.
    /// `policies` is [`Management::policies`], read once for every queue.
    pub(crate) async fn queue(
        &self,
        name: &str,
        policies: &Policies,
    ) -> Result<QueueState, ManagementError> {
        let path = format!("/api/queues/{}/{}", encode(&self.vhost), encode(name));
        let expects_policy = policies.0.iter().any(|rule| rule.applies_to_queue(name));
        let started = Instant::now();
        loop {
            let state: QueueState = self.get(&path).await?;
            let policy_shown = state.policy.is_some() || state.operator_policy.is_some();
            if state.messages.is_some() && (policy_shown || !expects_policy) {
                return Ok(state);
            }
            if started.elapsed() > STATS_WAIT {
                return Err(ManagementError::NoStatistics(name.to_owned()));
            }
            tokio::time::sleep(STATS_POLL).await;
        }
    }

    /// The policies and operator policies of the vhost. None when the user
    /// may not list them: then a queue's own view is all there is.
    pub(crate) async fn policies(&self) -> Policies {
        let mut rules = Vec::new();
        for kind in ["policies", "operator-policies"] {
            let path = format!("/api/{kind}/{}", encode(&self.vhost));
            rules.extend(self.get::<Vec<PolicyRule>>(&path).await.unwrap_or_default());
        }
        Policies(rules)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ManagementError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |err: reqwest::Error| ManagementError::Unreachable {
            url: self.base.clone(),
            reason: err.to_string(),
        };
        let response = self
            .http
            .get(&url)
            .basic_auth(&self.user, Some(self.password.expose()))
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(ManagementError::Status {
                url: self.base.clone(),
                status: response.status().as_u16(),
            });
        }
        response.json().await.map_err(unreachable)
    }
}

/// Percent-encodes one path segment (a vhost `/` is `%2F`).
/// A path segment: everything but RFC 3986's unreserved characters encoded.
fn encode(segment: &str) -> String {
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(segment, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_policy_applies_to_the_queues_its_pattern_matches_and_an_unreadable_one_to_all() {
        let rule = |pattern: &str, apply_to: &str| PolicyRule {
            pattern: pattern.to_owned(),
            apply_to: apply_to.to_owned(),
        };
        assert!(rule(r"^app\.reprompt$", "queues").applies_to_queue("app.reprompt"));
        assert!(rule("reprompt", "all").applies_to_queue("app.reprompt"));
        assert!(!rule(r"^app\.reprompt$", "queues").applies_to_queue("app.reprompt2"));
        assert!(!rule(".*", "exchanges").applies_to_queue("app.reprompt"));
        // PCRE's lookahead, which the regex crate does not read: assume it applies.
        assert!(rule("^(?!amq\\.).*", "queues").applies_to_queue("app.reprompt"));
    }

    fn queue(kind: &str, arguments: Value, policy: Option<Value>) -> QueueState {
        QueueState {
            kind: kind.to_owned(),
            arguments: arguments.as_object().cloned().unwrap_or_default(),
            policy: policy.as_ref().map(|_| "p".to_owned()),
            operator_policy: None,
            effective_policy_definition: policy.and_then(|p| p.as_object().cloned()),
            messages: Some(0),
        }
    }

    /// Each row as seen on RabbitMQ 3.10.8: does a full queue push back?
    #[test]
    fn which_queues_push_back_follows_rabbitmqs_precedence() {
        let cases = [
            // An unbounded queue never overflows, whatever its mode.
            (
                queue("quorum", json!({"x-overflow": "reject-publish"}), None),
                false,
            ),
            (
                queue("classic", json!({}), Some(json!({"max-length": 1}))),
                false,
            ),
            (
                queue(
                    "quorum",
                    json!({"x-overflow": "reject-publish"}),
                    Some(json!({"max-length": 1})),
                ),
                true,
            ),
            // Classic: the argument wins over the policy.
            (
                queue(
                    "classic",
                    json!({"x-overflow": "drop-head"}),
                    Some(json!({"max-length": 1, "overflow": "reject-publish"})),
                ),
                false,
            ),
            (
                queue(
                    "classic",
                    json!({}),
                    Some(json!({"max-length": 1, "overflow": "reject-publish"})),
                ),
                true,
            ),
            // Quorum: the policy wins over the argument, either way.
            (
                queue(
                    "quorum",
                    json!({"x-overflow": "drop-head", "x-max-length": 1}),
                    Some(json!({"overflow": "reject-publish"})),
                ),
                true,
            ),
            (
                queue(
                    "quorum",
                    json!({"x-overflow": "reject-publish"}),
                    Some(json!({"max-length": 1, "overflow": "drop-head"})),
                ),
                false,
            ),
            (
                queue(
                    "classic",
                    json!({"x-overflow": "reject-publish-dlx", "x-max-length": 5}),
                    None,
                ),
                true,
            ),
        ];
        for (n, (state, pushes_back)) in cases.iter().enumerate() {
            assert_eq!(
                state.overflow().pushes_back(),
                *pushes_back,
                "case {n}: {state:?} -> {:?}",
                state.overflow()
            );
        }
    }

    #[test]
    fn the_overflow_says_what_set_it() {
        let state = queue(
            "quorum",
            json!({"x-overflow": "reject-publish"}),
            Some(json!({"max-length": 1})),
        );
        let overflow = state.overflow();
        assert_eq!(overflow.mode, "reject-publish");
        assert_eq!(overflow.set_by, SetBy::Argument);
        assert_eq!(overflow.limits, ["max-length 1 (policy p)"]);
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("webhooks.in"), "webhooks.in");
        assert_eq!(encode("a b"), "a%20b");
    }
}
