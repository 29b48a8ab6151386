//! A test relay's settings, as the `HOOKRELAY__…` environment the binary
//! reads: built once, then either loaded into [`Settings`] for a relay started
//! in-process or handed to the binary (see [`super::binary`]).

use std::collections::BTreeMap;
use std::path::Path;

use hookrelay::config::Settings;

/// The shared broker, unless `AMQP_URL` names another.
pub(crate) fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `HOOKRELAY__…` variables by name; a later `set` wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct RelayEnv(BTreeMap<String, String>);

impl RelayEnv {
    /// What every test relay needs: one client id, senders on 127.0.0.1, an
    /// exchange of its own (so tests run side by side on one broker), its own
    /// spool file, and the broker at `amqp_uri`. Every other setting is the
    /// product's default (history, accounts and their announcements
    /// included): a test about a setting changes it itself.
    pub(crate) fn new(client_id: &str, exchange: &str, spool: &Path, amqp_uri: &str) -> RelayEnv {
        let spool = spool.to_str().expect("a UTF-8 temp dir");
        RelayEnv(BTreeMap::new())
            .set("HOOKRELAY__INGRESS__CLIENT_IDS", client_id)
            .set("HOOKRELAY__INGRESS__ALLOWED_IPS", "127.0.0.1")
            .set("HOOKRELAY__AMQP__URI", amqp_uri)
            .set("HOOKRELAY__AMQP__EXCHANGE", exchange)
            .set("HOOKRELAY__SPOOL__PATH", spool)
    }

    pub(crate) fn set(mut self, key: &str, value: impl Into<String>) -> RelayEnv {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// Adds `pairs`, replacing what was set under the same names.
    pub(crate) fn with<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> RelayEnv {
        for (key, value) in pairs {
            self.0
                .insert(key.as_ref().to_owned(), value.as_ref().to_owned());
        }
        self
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The settings the binary would load from this environment and `config`.
    pub(crate) fn settings(&self, config: Option<&Path>) -> Settings {
        Settings::load_with_env(config, self.0.clone().into_iter().collect())
            .expect("the test relay's settings")
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
