//! `hookrelay tail`: watch events go by. Binds a temporary, exclusive,
//! auto-deleted queue to the exchange with the given patterns and hands over
//! each message as it arrives. The queue vanishes with the connection, so
//! tailing never leaves anything behind or takes messages from a consumer.

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::broker;
use crate::config::AmqpSettings;
use crate::topic::TopicPattern;

/// Stands in for `user.loginName` unless `--raw` is given.
const REDACTED: &str = "[redacted]";

/// One message as `tail` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Tailed {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub headers: Value,
    /// The body as JSON when it is JSON (key order kept), else as text.
    pub body: Value,
}

/// Tails until `count` messages were seen (or forever). `on_ready` runs once
/// the queue is bound, before the first message can arrive. Unless `raw`,
/// `user.loginName` is redacted: tail output tends to end up in terminals,
/// tickets and logs, and the login name is personal data.
pub async fn tail(
    amqp: &AmqpSettings,
    patterns: &[TopicPattern],
    count: Option<usize>,
    raw: bool,
    on_ready: impl FnOnce(),
    mut on_message: impl FnMut(Tailed),
) -> anyhow::Result<()> {
    let name = amqp.tool_connection_name("hookrelay-tail");
    let connection = broker::connect(amqp, name).await?;
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    let temporary = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), temporary, FieldTable::default())
        .await
        .context("cannot declare a temporary queue")?;
    for pattern in patterns {
        channel
            .queue_bind(
                queue.name().clone(),
                amqp.exchange.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| {
                format!(
                    "cannot bind to exchange {} (run `hookrelay declare`?)",
                    amqp.exchange
                )
            })?;
    }
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "hookrelay-tail".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .context("cannot consume")?;
    on_ready();

    let mut seen = 0;
    while count.is_none_or(|count| seen < count) {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery.context("the connection to RabbitMQ was lost")?;
        let properties = &delivery.properties;
        on_message(Tailed {
            routing_key: delivery.routing_key.to_string(),
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            headers: properties
                .headers()
                .as_ref()
                .map_or(Value::Null, table_to_json),
            body: body(&delivery.data, raw),
        });
        seen += 1;
    }
    let _ = connection.close(200, "tail done".into()).await;
    Ok(())
}

fn body(data: &[u8], raw: bool) -> Value {
    let Ok(mut body) = serde_json::from_slice::<Value>(data) else {
        return Value::String(String::from_utf8_lossy(data).into_owned());
    };
    if !raw && let Some(login) = body.pointer_mut("/user/loginName") {
        *login = Value::String(REDACTED.to_owned());
    }
    body
}

/// AMQP header values as plain JSON (lapin's own serde form is tagged by type).
pub fn table_to_json(table: &FieldTable) -> Value {
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
        let shown = body(BODY, false).to_string();
        assert_eq!(
            shown,
            r#"{"hook":"SyncAccount","user":{"id":"u1","loginName":"[redacted]"},"account":{"id":"a1","provider":"p"}}"#,
            "redacted, key order kept"
        );
        assert_eq!(body(BODY, true).to_string().as_bytes(), BODY);
    }

    #[test]
    fn a_body_that_is_not_json_is_shown_as_text() {
        assert_eq!(
            body(b"{not json", false),
            Value::String("{not json".to_owned())
        );
    }
}
