//! Settings that hold secrets: RabbitMQ's URIs (with their passwords) and the
//! path token. They print masked everywhere (`Debug`, `Display`, the TOML
//! `hookrelay check-config` prints), so no log line or error can leak them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An AMQP URI whose password never reaches a log line or `check-config`.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUri(String);

/// A secret setting (the path token): shown as `****` everywhere it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

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

impl Serialize for AmqpUri {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}
