//! How the operator's commands (`tail`, `events`, `inspect`) show a message:
//! AMQP headers as plain JSON, the body as JSON when it is JSON (key order
//! kept), and `user.loginName` redacted unless asked for raw output. Output
//! of these commands tends to end up in terminals, tickets and logs, and the
//! login name is personal data. Raw output is the body exactly as received,
//! byte for byte: a quarantined body with a duplicate key must show the very
//! duplicate its reason names, which parsing and printing again would hide.

use lapin::types::{AMQPValue, FieldTable};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Stands in for `user.loginName` unless raw output is asked for.
const REDACTED: &str = "[redacted]";

/// The body as JSON when it is JSON, else as a JSON string of its text.
/// Raw: exactly as received. Otherwise `user.loginName` is redacted.
pub fn body(data: &[u8], raw: bool) -> Box<RawValue> {
    let text = String::from_utf8_lossy(data);
    if raw && let Ok(verbatim) = RawValue::from_string(text.clone().into_owned()) {
        return verbatim;
    }
    let shown = match serde_json::from_slice::<Value>(data) {
        Ok(mut body) => {
            if let Some(login) = body.pointer_mut("/user/loginName") {
                *login = Value::String(REDACTED.to_owned());
            }
            body
        }
        Err(_) => Value::String(text.into_owned()),
    };
    serde_json::value::to_raw_value(&shown).expect("a JSON value serialises")
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
        let shown = body(BODY, false).get().to_owned();
        assert_eq!(
            shown,
            r#"{"hook":"SyncAccount","user":{"id":"u1","loginName":"[redacted]"},"account":{"id":"a1","provider":"p"}}"#,
            "redacted, key order kept"
        );
        assert_eq!(body(BODY, true).get().as_bytes(), BODY);
    }

    #[test]
    fn raw_is_the_body_as_received_duplicates_and_spacing_included() {
        let received = br#"{"hook":"SyncAccount", "hook":"SyncError","user":{"id":"u1"}}"#;
        assert_eq!(body(received, true).get().as_bytes(), received);
        assert_eq!(
            body(received, false).get(),
            r#"{"hook":"SyncError","user":{"id":"u1"}}"#,
            "not raw: parsed, so one hook"
        );
    }

    #[test]
    fn a_body_that_is_not_json_is_shown_as_text() {
        assert_eq!(body(b"{not json", false).get(), r#""{not json""#);
        assert_eq!(body(b"{not json", true).get(), r#""{not json""#);
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
