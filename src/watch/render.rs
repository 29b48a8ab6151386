//! How the operator's commands (`tail`, `events`, `inspect`) show a message:
//! AMQP headers as plain JSON, the body as JSON when it is JSON (key order
//! kept), and `user.loginName` redacted unless asked for raw output. Output
//! of these commands tends to end up in terminals, tickets and logs, and the
//! login name is personal data. Raw output is the body exactly as received,
//! byte for byte: a quarantined body with a duplicate key must show the very
//! duplicate its reason names, which parsing and printing again would hide.

use std::sync::LazyLock;

use lapin::types::{AMQPValue, FieldTable};
use regex::Regex;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Stands in for `user.loginName` unless raw output is asked for.
const REDACTED: &str = "[redacted]";

/// A `loginName` (in any case, as the JSON masking) and its value in a body
/// that is not JSON (quarantined: cut short, a key twice, not closed): a
/// string up to its closing quote or the end of the text, an array or an
/// object up to its end (not nested), or any other token.
static LOGIN_NAME_IN_TEXT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#""(?i-u:loginname)"\s*:\s*(?:"(?:[^"\\]|\\.)*(?:"|\\?$)|\[[^\]]*(?:\]|$)|\{[^}]*(?:\}|$)|[^,}\]\s]*)"#)
        .expect("a valid pattern")
});

/// How a body is shown: with every `loginName` masked, or as received (the
/// CLI's `--raw`, the console's logged reveal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shown {
    #[default]
    Masked,
    AsReceived,
}

impl Shown {
    /// From a `--raw` or `reveal` flag.
    pub fn as_received_if(raw: bool) -> Shown {
        match raw {
            true => Shown::AsReceived,
            false => Shown::Masked,
        }
    }
}

/// The body as JSON when it is JSON, else as a JSON string of its text;
/// [`Shown::Masked`] masks every `loginName`.
pub fn body(data: &[u8], shown: Shown) -> Box<RawValue> {
    let raw = shown == Shown::AsReceived;
    let text = String::from_utf8_lossy(data);
    if raw && let Ok(verbatim) = RawValue::from_string(text.clone().into_owned()) {
        return verbatim;
    }
    let shown = match serde_json::from_slice::<Value>(data) {
        Ok(mut body) => {
            mask_login_names(&mut body);
            body
        }
        // Not JSON (a quarantined body): shown as text, its login names masked.
        Err(_) if raw => Value::String(text.into_owned()),
        Err(_) => Value::String(
            LOGIN_NAME_IN_TEXT
                .replace_all(&text, format!(r#""loginName":"{REDACTED}""#))
                .into_owned(),
        ),
    };
    serde_json::value::to_raw_value(&shown).expect("a JSON value serialises")
}

/// Masks every `loginName` in `value`, wherever it is: a body in the
/// quarantine may have any shape (a batch, a wrapper, `user` as a list).
fn mask_login_names(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (key, inner) in fields.iter_mut() {
                if key.eq_ignore_ascii_case("loginName") {
                    *inner = Value::String(REDACTED.to_owned());
                } else {
                    mask_login_names(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_login_names),
        _ => {}
    }
}

/// AMQP headers as plain JSON (lapin's own serde form is tagged by type).
pub fn headers(table: Option<&FieldTable>) -> Value {
    table.map_or(Value::Null, table_to_json)
}

fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(key, value)| (key.to_string(), value_to_json(value)))
            .collect::<Map<String, Value>>(),
    )
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::Float(f) => (*f).into(),
        AMQPValue::Double(f) => (*f).into(),
        AMQPValue::ShortString(s) => s.to_string().into(),
        AMQPValue::LongString(s) => s.to_string().into(),
        AMQPValue::FieldArray(a) => a.as_slice().iter().map(value_to_json).collect(),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned().into(),
        AMQPValue::DecimalValue(d) => format!("{d:?}").into(),
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"hook":"SyncAccount","user":{"id":"u1","loginName":"alice"},"account":{"id":"a1","provider":"p"}}"#;

    #[test]
    fn the_login_name_is_redacted_unless_raw() {
        let shown = body(BODY, Shown::Masked).get().to_owned();
        assert_eq!(
            shown,
            r#"{"hook":"SyncAccount","user":{"id":"u1","loginName":"[redacted]"},"account":{"id":"a1","provider":"p"}}"#,
            "redacted, key order kept"
        );
        assert_eq!(body(BODY, Shown::AsReceived).get().as_bytes(), BODY);
    }

    #[test]
    fn raw_is_the_body_as_received_duplicates_and_spacing_included() {
        let received = br#"{"hook":"SyncAccount", "hook":"SyncError","user":{"id":"u1"}}"#;
        assert_eq!(body(received, Shown::AsReceived).get().as_bytes(), received);
        assert_eq!(
            body(received, Shown::Masked).get(),
            r#"{"hook":"SyncError","user":{"id":"u1"}}"#,
            "not raw: parsed, so one hook"
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_shown_as_text() {
        assert_eq!(body(b"{not json", Shown::Masked).get(), r#""{not json""#);
        assert_eq!(
            body(b"{not json", Shown::AsReceived).get(),
            r#""{not json""#
        );
    }

    #[test]
    fn a_login_name_in_a_body_that_is_not_json_is_masked_too() {
        let cases: [(&[u8], &str); 7] = [
            // Cut short after the name.
            (
                br#"{"hook":"SyncAccount","user":{"id":"u1","loginName":"jane@example.com"},"acc"#,
                "jane@example.com",
            ),
            // Cut short inside the name.
            (
                br#"{"hook":"SyncAccount","user":{"id":"u1","loginName" : "jane@exam"#,
                "jane@exam",
            ),
            // An escaped quote inside it, and the key twice, cut short.
            (br#"{"user":{"loginName":"ja\"ne","loginName":"jo"#, "jo"),
            (
                br#"{"user":{"loginName":"ja\"ne","loginName":"jo"#,
                r#"ja\"ne"#,
            ),
            // Not a string.
            (br#"{"user":{"loginName":12345,"id":"u1"}"#, "12345"),
            // Another case, as the JSON masking takes it.
            (
                br#"{"user":{"LoginName":"jane@example.com","id"#,
                "jane@example.com",
            ),
            // An array of names, cut short inside it.
            (
                br#"{"user":{"loginname":["jane@example.com","jo@ex"#,
                "jo@ex",
            ),
        ];
        for (received, name) in cases {
            let shown = body(received, Shown::Masked).get().to_owned();
            assert!(!shown.contains(name), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        assert!(
            body(cases[0].0, Shown::AsReceived)
                .get()
                .contains("jane@example.com"),
            "raw shows it"
        );
    }

    #[test]
    fn a_login_name_anywhere_in_a_json_body_is_masked() {
        let shapes: [&[u8]; 3] = [
            br#"[{"user":{"id":"u1","loginName":"jane"}},{"user":{"loginName":"joe"}}]"#,
            br#"{"data":{"user":{"loginName":"jane"}},"loginname":"joe"}"#,
            br#"{"user":[{"loginName":"jane"},{"id":"u1"}],"hook":"SyncAccount"}"#,
        ];
        for received in shapes {
            let shown = body(received, Shown::Masked).get().to_owned();
            assert!(!shown.contains("jane") && !shown.contains("joe"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
    }

    #[test]
    fn headers_become_plain_json() {
        let mut table = FieldTable::default();
        table.insert("hook".into(), AMQPValue::LongString("SyncError".into()));
        table.insert("x-error-known".into(), AMQPValue::Boolean(true));
        assert_eq!(
            headers(Some(&table)),
            serde_json::json!({"hook": "SyncError", "x-error-known": true})
        );
        assert_eq!(headers(None), Value::Null);
    }
}
