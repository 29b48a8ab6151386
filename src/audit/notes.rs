//! What a relay says about its numbers in the history, beside the events:
//! where a run's numbers start (and how the run before it ended), and which
//! numbers were burned. A note goes straight into the history stream
//! (through the default exchange), so no consumer ever receives one, and
//! history readers skip notes unless they ask for them (`Filter::notes`).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{FieldTable, ShortString};
use serde::{Deserialize, Serialize};

use super::numbering::Previous;
use crate::broker::{self, Outgoing};
use crate::config::AmqpSettings;
use crate::wire::headers::{RECEIVED_AT, RELAY_ID, RELAY_NOTE, set_text};

/// How long a note waits for RabbitMQ's confirm.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// One note, its body as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "note", rename_all = "snake_case")]
pub enum Note {
    /// A run began: its numbers start at `first`. `ended`: how the runs
    /// before it ended that no note has said yet (the one before it; more
    /// when a run never reached RabbitMQ).
    Started {
        relay_id: String,
        first: u64,
        ended: Vec<Previous>,
    },
    /// Numbers taken by requests that ended without storing their webhook
    /// (answered 503, or abandoned by the sender): never stored.
    Burned { relay_id: String, numbers: Vec<u64> },
}

impl Note {
    fn kind(&self) -> &'static str {
        match self {
            Note::Started { .. } => "started",
            Note::Burned { .. } => "burned",
        }
    }

    /// The relay the note is about.
    pub fn relay_id(&self) -> &str {
        match self {
            Note::Started { relay_id, .. } | Note::Burned { relay_id, .. } => relay_id,
        }
    }

    /// The note a history message is, if it is one.
    pub fn of(properties: &BasicProperties, body: &[u8]) -> Option<Note> {
        properties
            .headers()
            .as_ref()
            .filter(|headers| headers.inner().contains_key(RELAY_NOTE))?;
        serde_json::from_slice(body).ok()
    }
}

/// Whether a message of the history is a relay's note.
pub fn is_note(headers: Option<&FieldTable>) -> bool {
    headers.is_some_and(|headers| headers.inner().contains_key(RELAY_NOTE))
}

/// Writes `note` into the history stream `stream`, confirmed, on a
/// connection of its own (notes are rare: a start, a burn).
pub async fn write(amqp: &AmqpSettings, stream: &str, note: &Note) -> anyhow::Result<()> {
    let mut headers = FieldTable::default();
    set_text(&mut headers, RELAY_NOTE, note.kind());
    set_text(&mut headers, RELAY_ID, note.relay_id());
    set_text(
        &mut headers,
        RECEIVED_AT,
        &humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    );
    let message = Outgoing {
        exchange: String::new(),
        routing_key: stream.to_owned(),
        body: Bytes::from(serde_json::to_vec(note)?),
        properties: BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(uuid::Uuid::now_v7().to_string()))
            .with_app_id(ShortString::from("hookrelay"))
            .with_headers(headers),
    };
    broker::with_tool_connection(amqp, "hookrelay-audit", async |connection| {
        let channel = broker::browse::confirming_channel(connection).await?;
        broker::publish_confirmed(&channel, &message, CONFIRM_WITHIN).await?;
        broker::close_channel(&channel, "relay note written").await;
        Ok(())
    })
    .await
}
