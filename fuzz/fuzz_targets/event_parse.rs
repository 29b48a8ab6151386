//! `Event::parse` on any bytes: it returns, never panics, whatever it accepts
//! routes to a key that cannot escape its place in the topic exchange, and it
//! never accepts a body with a key twice in one object.
#![no_main]

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

use hookrelay::event::Event;
use libfuzzer_sys::fuzz_target;
use regex::Regex;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

static SAFE_ROUTING_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^sync\.(account|error\.[A-Za-z][A-Za-z0-9_]{0,63})$").unwrap());

fuzz_target!(|body: &[u8]| {
    match Event::parse(body) {
        Ok(event) => {
            let key = event.routing_key();
            assert!(
                SAFE_ROUTING_KEY.is_match(key.as_str()),
                "unsafe key {key:?}"
            );
            assert!(!event.user_id().is_empty() && !event.account_id().is_empty());
            assert!(!has_duplicate_key(body), "accepted a duplicate key");
        }
        Err(err) => {
            // The reason goes into a header and a log line: bounded, one line.
            let reason = err.reason();
            assert!(reason.len() < 200 && !reason.contains('\n'), "{reason:?}");
        }
    }
});

/// Whether some object in `body` has a key twice. Written apart from the
/// relay's strict parser (a set of keys per object, values skipped), so that
/// each checks the other.
fn has_duplicate_key(body: &[u8]) -> bool {
    let found = Cell::new(false);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let _ = Keys(&found).deserialize(&mut deserializer);
    found.get()
}

#[derive(Clone, Copy)]
struct Keys<'a>(&'a Cell<bool>);

impl<'de> DeserializeSeed<'de> for Keys<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Keys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                self.0.set(true);
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}
