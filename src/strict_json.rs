//! JSON read the way every reader would read it: a body with the same key
//! twice in one object, at any depth, is refused.
//!
//! JSON parsers disagree about duplicate keys (serde_json keeps the last one,
//! others the first or an error). The relay publishes the body byte for byte,
//! so if it read `{"hook":"SyncAccount","hook":"SyncError"}` one way and a
//! consumer the other, the routing key and what the consumer acts on would
//! disagree. The check is the lookup that inserting into an object does
//! anyway, and the path of a duplicate is only built when there is one.

use std::cell::RefCell;
use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Why a body is not strict JSON.
#[derive(Debug)]
pub enum StrictError {
    /// Not JSON at all.
    Syntax(serde_json::Error),
    /// A key appears twice in one object: its path, e.g. `user.id`, at most
    /// [`MAX_PATH`] characters (deeper paths keep their end, after `….`).
    /// Keys that are not plain words are written `?`: the path goes into logs
    /// and headers, and a key can hold anything.
    DuplicateKey(String),
}

/// Parses `body`, refusing duplicate keys.
pub fn from_slice(body: &[u8]) -> Result<Value, StrictError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let seed = Strict {
        duplicate: &duplicate,
    };
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (_, Some(mut path)) => {
            path.reverse();
            Err(StrictError::DuplicateKey(shorten(&path)))
        }
        (Ok(value), None) => Ok(value),
        (Err(err), None) => Err(StrictError::Syntax(err)),
    }
}

/// Builds a `Value`, noting the path of the first duplicate key it meets.
#[derive(Clone, Copy)]
struct Strict<'a> {
    /// The path of the duplicate key, innermost key first: filled in as the
    /// error travels up, so that reading a body without one costs no path.
    duplicate: &'a RefCell<Option<Vec<String>>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = match map.next_value_seed(self) {
                Ok(value) => value,
                Err(err) => {
                    if let Some(path) = self.duplicate.borrow_mut().as_mut() {
                        path.push(shown(&key));
                    }
                    return Err(err);
                }
            };
            match object.entry(key) {
                Entry::Vacant(entry) => {
                    entry.insert(value);
                }
                Entry::Occupied(entry) => {
                    *self.duplicate.borrow_mut() = Some(vec![shown(entry.key())]);
                    return Err(de::Error::custom("duplicate key"));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// The longest path a duplicate-key reason shows, so that the reason stays
/// one short line whatever the nesting.
pub const MAX_PATH: usize = 60;

/// `path` joined with dots, keeping its end within [`MAX_PATH`] characters.
fn shorten(path: &[String]) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut length = 0;
    for key in path.iter().rev() {
        let added = key.len() + usize::from(!kept.is_empty());
        if length + added > MAX_PATH {
            break;
        }
        length += added;
        kept.push(key);
    }
    if kept.is_empty() {
        // One plain word longer than the whole budget.
        let last = path.last().map_or("", String::as_str);
        return format!("…{}", &last[last.len() - (MAX_PATH - 1)..]);
    }
    kept.reverse();
    let shown = kept.join(".");
    if kept.len() < path.len() {
        format!("….{shown}")
    } else {
        shown
    }
}

/// A key as a path may show it: a plain word, or `?`.
fn shown(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if plain {
        key.to_owned()
    } else {
        "?".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate(body: &str) -> Option<String> {
        match from_slice(body.as_bytes()) {
            Err(StrictError::DuplicateKey(path)) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn a_key_twice_at_any_depth_is_refused_with_its_path() {
        assert_eq!(
            duplicate(r#"{"hook":"a","hook":"b"}"#).as_deref(),
            Some("hook")
        );
        assert_eq!(
            duplicate(r#"{"user":{"id":"1","id":"2"}}"#).as_deref(),
            Some("user.id")
        );
        assert_eq!(
            duplicate(r#"{"a":[{"b":{"c":1,"c":2}}]}"#).as_deref(),
            Some("a.b.c")
        );
        assert_eq!(
            duplicate(r#"{"alice@example.com":1,"alice@example.com":2}"#).as_deref(),
            Some("?"),
            "a key that is not a plain word is not quoted"
        );
    }

    #[test]
    fn a_deep_path_keeps_its_end_and_stays_short() {
        let deep = format!(
            "{}{{\"k\":1,\"k\":2}}{}",
            r#"{"a":"#.repeat(40),
            "}".repeat(40)
        );
        let path = duplicate(&deep).unwrap();
        assert!(path.len() <= MAX_PATH + "….".len(), "{path}");
        assert!(path.starts_with("….") && path.ends_with("a.a.k"), "{path}");
        let long_key = "x".repeat(64);
        let body = format!(r#"{{"{long_key}":{{"{long_key}":1,"{long_key}":2}}}}"#);
        let path = duplicate(&body).unwrap();
        assert!(path.len() <= MAX_PATH + "…".len(), "{path}");
    }

    #[test]
    fn the_same_key_in_different_objects_is_fine() {
        let value =
            from_slice(br#"{"user":{"id":"1"},"account":{"id":"2"},"x":[{"id":1},{"id":2}]}"#)
                .unwrap();
        assert_eq!(value["account"]["id"], "2");
    }

    #[test]
    fn values_come_out_as_serde_json_reads_them() {
        let body = br#"{"a":1,"b":-2,"c":1.5,"d":"s","e":null,"f":true,"g":[1,{"h":"i"}],"j":18446744073709551615}"#;
        let strict = from_slice(body).unwrap();
        let loose: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(strict, loose);
        assert_eq!(strict.to_string(), loose.to_string(), "key order kept");
    }

    #[test]
    fn not_json_is_a_syntax_error() {
        for body in ["", "{", r#"{"a":1}x"#, "nul"] {
            assert!(
                matches!(from_slice(body.as_bytes()), Err(StrictError::Syntax(_))),
                "{body}"
            );
        }
    }
}
