//! JSON read the way every reader would read it: a body with the same key
//! twice in one object, at any depth, is refused.
//!
//! JSON parsers disagree about duplicate keys (serde_json keeps the last one,
//! others the first or an error). The relay publishes the body byte for byte,
//! so if it read `{"hook":"SyncAccount","hook":"SyncError"}` one way and a
//! consumer the other, the routing key and what the consumer acts on would
//! disagree. The check is a lookup among the object's keys so far, borrowed
//! from the body, and the path of a duplicate is only built when there is one.
//!
//! No document tree is built. A reader ([`Event::parse`](crate::event::Event::parse))
//! reads the fields it needs through [`Text`] and [`Object`], and every other
//! value is walked by [`Skip`], which checks it the same way and keeps nothing:
//! building a `serde_json::Value` first costs a share of the relay's
//! instructions per webhook that BENCHMARKS.md gives.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

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

/// Reads the whole of `body` with `seed`, which reads objects through
/// [`object`] and skips what it does not keep with [`Skip`], all sharing
/// `duplicates`. Anything after the value is a syntax error.
pub fn read<'de, S: DeserializeSeed<'de>>(
    body: &'de [u8],
    seed: S,
    duplicates: &Duplicates,
) -> Result<S::Value, StrictError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, duplicates.0.take()) {
        (_, Some(mut path)) => {
            path.reverse();
            Err(StrictError::DuplicateKey(shorten(&path)))
        }
        (Ok(value), None) => Ok(value),
        (Err(err), None) => Err(StrictError::Syntax(err)),
    }
}

/// Checks that `body` is strict JSON, keeping nothing.
pub fn check(body: &[u8]) -> Result<(), StrictError> {
    let duplicates = Duplicates::default();
    read(body, Skip(&duplicates), &duplicates)
}

/// The path of the first duplicate key, innermost key first: filled in as the
/// error travels up, so that reading a body without one costs no path.
#[derive(Default)]
pub struct Duplicates(RefCell<Option<Vec<String>>>);

/// Reads one object's entries: `entry` reads the value under each key (with
/// `map.next_value_seed`). A key met twice is refused once its value has been
/// read, as a parser that inserts into a map finds it.
pub fn object<'de, A: MapAccess<'de>>(
    mut map: A,
    duplicates: &Duplicates,
    mut entry: impl FnMut(&str, &mut A) -> Result<(), A::Error>,
) -> Result<(), A::Error> {
    let mut seen = Seen::default();
    while let Some(Key(key)) = map.next_key()? {
        if let Err(err) = entry(&key, &mut map) {
            if let Some(path) = duplicates.0.borrow_mut().as_mut() {
                path.push(shown(&key));
            }
            return Err(err);
        }
        if let Err(key) = seen.insert(key) {
            *duplicates.0.borrow_mut() = Some(vec![shown(&key)]);
            return Err(de::Error::custom("duplicate key"));
        }
    }
    Ok(())
}

/// A key as the reader hands it: borrowed from the body unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s.to_owned())))
    }
}

/// The keys of one object so far. Objects are small: a scan, until one is not
/// (a body can hold thousands of keys, and a scan of each would be quadratic).
#[derive(Default)]
struct Seen<'de> {
    few: Vec<Cow<'de, str>>,
    many: HashSet<Cow<'de, str>>,
}

const FEW: usize = 16;

impl<'de> Seen<'de> {
    /// Adds `key`, or gives it back if it is there already.
    fn insert(&mut self, key: Cow<'de, str>) -> Result<(), Cow<'de, str>> {
        if self.few.len() < FEW {
            if self.few.contains(&key) {
                return Err(key);
            }
            self.few.push(key);
            return Ok(());
        }
        if self.few.contains(&key) || self.many.contains(&key) {
            return Err(key);
        }
        self.many.insert(key);
        Ok(())
    }
}

/// A documented field as a body has it.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Found<T> {
    #[default]
    Missing,
    Is(T),
    /// Present, but another JSON type.
    Other,
}

impl<T> Found<T> {
    /// The same finding, with what was found turned into something else.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Found<U> {
        match self {
            Found::Missing => Found::Missing,
            Found::Is(value) => Found::Is(f(value)),
            Found::Other => Found::Other,
        }
    }
}

/// The fields of an object that a reader keeps; the rest it skips.
pub trait Fields<'de> {
    /// Reads the value under `key`, with [`Text`], another [`Object`], or [`Skip`].
    fn entry<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        duplicates: &Duplicates,
    ) -> Result<(), A::Error>;
}

/// Reads a string, borrowed from the body where it can be.
#[derive(Clone, Copy)]
pub struct Text<'a>(pub &'a Duplicates);

/// Reads an object into `T`.
pub struct Object<'a, T> {
    pub duplicates: &'a Duplicates,
    pub fields: T,
}

/// Walks any value, checking its objects, keeping nothing.
#[derive(Clone, Copy)]
pub struct Skip<'a>(pub &'a Duplicates);

impl<'de> DeserializeSeed<'de> for Text<'_> {
    type Value = Found<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let shape = Shape {
            duplicates: self.0,
            keep: Keep::<Nothing>::Text,
        };
        Ok(match deserializer.deserialize_any(shape)? {
            Found::Is(Kept::Text(text)) => Found::Is(text),
            Found::Missing => Found::Missing,
            Found::Is(Kept::Object(_)) | Found::Other => Found::Other,
        })
    }
}

impl<'de, T: Fields<'de>> DeserializeSeed<'de> for Object<'_, T> {
    type Value = Found<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let shape = Shape {
            duplicates: self.duplicates,
            keep: Keep::Object(self.fields),
        };
        Ok(match deserializer.deserialize_any(shape)? {
            Found::Is(Kept::Object(fields)) => Found::Is(fields),
            Found::Missing => Found::Missing,
            Found::Is(Kept::Text(_)) | Found::Other => Found::Other,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Skip<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let shape = Shape {
            duplicates: self.0,
            keep: Keep::<Nothing>::Nothing,
        };
        deserializer.deserialize_any(shape).map(drop)
    }
}

/// What a [`Shape`] keeps: a string, an object, or nothing.
enum Keep<T> {
    Text,
    Object(T),
    Nothing,
}

/// What was read when the value had the shape kept.
enum Kept<'de, T> {
    Text(Cow<'de, str>),
    Object(T),
}

/// [`Fields`] of an object nobody keeps.
struct Nothing;

impl<'de> Fields<'de> for Nothing {
    fn entry<A: MapAccess<'de>>(
        &mut self,
        _: &str,
        map: &mut A,
        duplicates: &Duplicates,
    ) -> Result<(), A::Error> {
        map.next_value_seed(Skip(duplicates))
    }
}

/// One visitor for the three readers: every value is read in full and
/// checked, whatever is kept of it.
struct Shape<'a, T> {
    duplicates: &'a Duplicates,
    keep: Keep<T>,
}

impl<T> Shape<'_, T> {
    fn text<'de, E>(self, text: impl FnOnce() -> Cow<'de, str>) -> Result<Found<Kept<'de, T>>, E> {
        Ok(match self.keep {
            Keep::Text => Found::Is(Kept::Text(text())),
            _ => Found::Other,
        })
    }
}

impl<'de, T: Fields<'de>> Visitor<'de> for Shape<'_, T> {
    type Value = Found<Kept<'de, T>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Found::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Found::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Found::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Found::Other)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Found::Other)
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        self.text(|| Cow::Borrowed(s))
    }

    /// A string with escapes, which the reader unescaped into a buffer of its own.
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        self.text(|| Cow::Owned(s.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element_seed(Skip(self.duplicates))?.is_some() {}
        Ok(Found::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let duplicates = self.duplicates;
        match self.keep {
            Keep::Object(mut fields) => {
                object(map, duplicates, |key, map| {
                    fields.entry(key, map, duplicates)
                })?;
                Ok(Found::Is(Kept::Object(fields)))
            }
            _ => {
                object(map, duplicates, |_, map| {
                    map.next_value_seed(Skip(duplicates))
                })?;
                Ok(Found::Other)
            }
        }
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

/// The whole document as a `serde_json::Value`, read strictly: what
/// `Event::parse` read before it kept only its fields, kept for the tests that
/// check the two read every body alike.
#[cfg(test)]
pub(crate) fn tree(body: &[u8]) -> Result<serde_json::Value, StrictError> {
    let duplicates = Duplicates::default();
    read(body, Tree(&duplicates), &duplicates)
}

#[cfg(test)]
#[derive(Clone, Copy)]
struct Tree<'a>(&'a Duplicates);

#[cfg(test)]
impl<'de> DeserializeSeed<'de> for Tree<'_> {
    type Value = serde_json::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

#[cfg(test)]
impl<'de> Visitor<'de> for Tree<'_> {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(b.into())
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(n.into())
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(n.into())
    }

    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        Ok(n.into())
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(s.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(items.into())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let mut entries = serde_json::Map::new();
        object(map, self.0, |key, map| {
            entries.insert(key.to_owned(), map.next_value_seed(self)?);
            Ok(())
        })?;
        Ok(entries.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate(body: &str) -> Option<String> {
        match check(body.as_bytes()) {
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
        check(br#"{"user":{"id":"1"},"account":{"id":"2"},"x":[{"id":1},{"id":2}]}"#).unwrap();
    }

    #[test]
    fn every_kind_of_value_is_read_as_serde_json_reads_it() {
        let body = br#"{"a":1,"b":-2,"c":1.5,"d":"s\u00e9","e":null,"f":true,"g":[1,{"h":"i"}],"j":18446744073709551615,"k\n":{}}"#;
        check(body).unwrap();
        let loose: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(tree(body).unwrap().to_string(), loose.to_string());
    }

    #[test]
    fn a_key_twice_is_found_however_many_keys_the_object_has() {
        // Past FEW keys, the keys seen move to a set: both must find it.
        for n in [2, FEW, FEW + 1, 1000] {
            let keys: Vec<String> = (0..n).map(|i| format!(r#""k{i}":{i}"#)).collect();
            let unique = format!("{{{}}}", keys.join(","));
            assert!(check(unique.as_bytes()).is_ok(), "{n} keys");
            for twice in [0, n / 2, n - 1] {
                let body = format!("{{{},{}}}", keys.join(","), keys[twice]);
                assert_eq!(
                    duplicate(&body),
                    Some(format!("k{twice}")),
                    "{n} keys, k{twice} twice"
                );
            }
        }
    }

    #[test]
    fn an_escaped_key_is_the_key_it_spells() {
        assert_eq!(duplicate(r#"{"id":1,"\u0069d":2}"#).as_deref(), Some("id"));
    }

    #[test]
    fn not_json_is_a_syntax_error() {
        for body in ["", "{", r#"{"a":1}x"#, "nul"] {
            assert!(
                matches!(check(body.as_bytes()), Err(StrictError::Syntax(_))),
                "{body}"
            );
        }
    }
}
