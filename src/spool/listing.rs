//! What `hookrelay spool list` and `hookrelay spool retry` do: read the spool
//! file of a relay, running or not, and mark parked messages to be sent again.
//!
//! Only the relay moves rows between its tables (it keeps the counts that
//! `/readyz` and the metrics report), so `retry` only marks them; the relay
//! takes them back within a second, or at its next start.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::{SpoolError, store};

/// One spooled or parked message, as an operator sees it: no body (it holds
/// personal data), only what identifies it and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub seq: i64,
    pub state: State,
    pub message_id: Option<String>,
    /// `event` or `quarantine`.
    pub kind: String,
    /// An event's routing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// When it was spooled, RFC 3339.
    pub spooled_at: String,
    /// How many times RabbitMQ refused it.
    pub refusals: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parked_at: Option<String>,
    /// A refused message's next attempt, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// Marked by `hookrelay spool retry`, not yet taken back by the relay.
    pub retry_requested: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// In the backlog, waiting its turn to be published.
    Spooled,
    /// Refused by RabbitMQ, waiting for a retry beside the flow.
    Refused,
    /// Refused `spool.max_refusals` times and moved aside.
    Parked,
}

/// Every parked message, then every spooled one (backlog and refused), each
/// oldest first.
///
/// ```no_run
/// # fn run() -> Result<(), hookrelay::spool::SpoolError> {
/// use hookrelay::spool::listing::{State, list, request_retry};
///
/// let path = std::path::Path::new("/var/lib/hookrelay/spool.sqlite");
/// let parked: Vec<i64> = list(path)?
///     .iter()
///     .filter(|message| message.state == State::Parked)
///     .map(|message| message.seq)
///     .collect();
/// // The relay sends them again, at the back of its backlog.
/// request_retry(path, &parked)?;
/// # Ok(())
/// # }
/// ```
pub fn list(path: &Path) -> Result<Vec<Listed>, SpoolError> {
    let db = store::open(path, false)?;
    let mut listed = Vec::new();
    let mut parked = db.prepare(
        "SELECT seq, kind, routing_key, properties, spooled_at, refusals, last_error, parked_at, retry_requested
         FROM parked ORDER BY seq",
    )?;
    let rows = parked.query_map([], |row| {
        Ok(Listed {
            seq: row.get(0)?,
            state: State::Parked,
            message_id: message_id(&row.get::<_, Vec<u8>>(3)?),
            kind: row.get(1)?,
            routing_key: non_empty(row.get(2)?),
            spooled_at: rfc3339(row.get(4)?),
            refusals: row.get(5)?,
            last_error: non_empty(row.get(6)?),
            parked_at: Some(rfc3339(row.get(7)?)),
            retry_at: None,
            retry_requested: row.get(8)?,
        })
    })?;
    for row in rows {
        listed.push(row?);
    }
    let mut spooled = db.prepare(
        "SELECT seq, kind, routing_key, properties, spooled_at, refusals, last_error, retry_at
         FROM spool ORDER BY seq",
    )?;
    let rows = spooled.query_map([], |row| {
        let retry_at: Option<i64> = row.get(7)?;
        Ok(Listed {
            seq: row.get(0)?,
            state: match retry_at {
                Some(_) => State::Refused,
                None => State::Spooled,
            },
            message_id: message_id(&row.get::<_, Vec<u8>>(3)?),
            kind: row.get(1)?,
            routing_key: non_empty(row.get(2)?),
            spooled_at: rfc3339(row.get(4)?),
            refusals: row.get(5)?,
            last_error: row.get::<_, Option<String>>(6)?.and_then(non_empty),
            parked_at: None,
            retry_at: retry_at.map(rfc3339),
            retry_requested: false,
        })
    })?;
    for row in rows {
        listed.push(row?);
    }
    Ok(listed)
}

/// Marks the parked messages `seqs` (all of them when empty) to be sent again;
/// returns how many were marked.
pub fn request_retry(path: &Path, seqs: &[i64]) -> Result<usize, SpoolError> {
    let mut db = store::open(path, false)?;
    let tx = db.transaction()?;
    let marked = if seqs.is_empty() {
        tx.execute("UPDATE parked SET retry_requested = 1", [])?
    } else {
        let mut marked = 0;
        let mut mark = tx.prepare("UPDATE parked SET retry_requested = 1 WHERE seq = ?1")?;
        for seq in seqs {
            marked += mark.execute([seq])?;
        }
        marked
    };
    tx.commit()?;
    Ok(marked)
}

fn message_id(properties: &[u8]) -> Option<String> {
    store::decode_properties(properties)
        .ok()?
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
}

fn non_empty(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

fn rfc3339(millis: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(millis.max(0).cast_unsigned());
    humantime::format_rfc3339_millis(at).to_string()
}
