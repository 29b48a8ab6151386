//! What `hookrelay spool list` and `hookrelay spool retry` do: read the spool
//! file of a relay, running or not, and mark parked messages to be sent again.
//!
//! Only the relay moves rows between its tables (it keeps the counts that
//! `/readyz` and the metrics report), so `retry` only marks them; the relay
//! takes them back within a second, or at its next start.

use schemars::JsonSchema;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::{SpoolError, store};
use crate::wire::envelope::Stamp;

/// One spooled or parked message, as an operator sees it: no body (it holds
/// personal data), only what identifies it and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "SpoolEntry")]
pub struct Listed {
    pub seq: i64,
    pub state: State,
    pub message_id: Option<String>,
    /// The event's `account-id`, to find what waits of one account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The relay that stored it (`x-relay-id`) and its number there
    /// (`x-relay-seq`): what `hookrelay audit` looks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_seq: Option<u64>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr)]
#[schemars(rename = "SpoolEntryState")]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum State {
    /// In the backlog, waiting its turn to be published.
    Spooled,
    /// Refused by RabbitMQ, waiting for a retry beside the flow.
    Refused,
    /// Refused `spool.max_refusals` times and moved aside.
    Parked,
}

/// Rows a page may read past without admitting them: a filter that matches
/// little in a spool of millions (RabbitMQ away for a day) answers in
/// bounded time, with a cursor to read on from.
pub const MAX_EXAMINED: usize = 20_000;

/// Every spooled message, parked, refused or in the backlog, in the order it
/// was spooled (`seq`; a parked one keeps its place; one sent again after
/// `spool retry` goes to the back).
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
    Ok(page(path, None, usize::MAX, |_| true)?.listed)
}

/// A page of the listing.
#[derive(Debug)]
pub struct Page {
    pub listed: Vec<Listed>,
    /// The `seq` to read on after, when there may be more.
    pub next: Option<i64>,
    /// Rows read for this page, admitted or not.
    pub examined: usize,
}

/// At most `limit` of the messages [`list`] gives that `keep` admits, with
/// `seq` above `after`, reading at most [`MAX_EXAMINED`] rows (unless the
/// limit is `usize::MAX`: the whole listing). One order over both tables (by
/// `seq`), so a row parked while someone pages keeps its place and is
/// neither skipped nor shown twice. A parked row taken back (`spool retry`)
/// gets a new `seq`, at the end, so a listing under way may show it again
/// there. Rows are read one at a time, so a page costs a page's memory.
pub fn page(
    path: &Path,
    after: Option<i64>,
    limit: usize,
    keep: impl Fn(&Listed) -> bool,
) -> Result<Page, SpoolError> {
    let db = store::open(path, false)?;
    let mut rows = db.prepare(
        "SELECT seq, kind, routing_key, properties, spooled_at, refusals, last_error,
                NULL AS retry_at, parked_at, retry_requested, 1 AS parked
         FROM parked WHERE seq > ?1
         UNION ALL
         SELECT seq, kind, routing_key, properties, spooled_at, refusals, last_error,
                retry_at, NULL, 0, 0
         FROM spool WHERE seq > ?1
         ORDER BY seq",
    )?;
    let rows = rows.query_map([after.unwrap_or(i64::MIN)], |row| {
        let parked: bool = row.get(10)?;
        let retry_at: Option<i64> = row.get(7)?;
        let identity = identify(&row.get::<_, Vec<u8>>(3)?);
        Ok(Listed {
            seq: row.get(0)?,
            state: match (parked, retry_at) {
                (true, _) => State::Parked,
                (false, Some(_)) => State::Refused,
                (false, None) => State::Spooled,
            },
            message_id: identity.message_id,
            account_id: identity.account_id,
            relay_id: identity.stamp.as_ref().map(|stamp| stamp.relay.to_string()),
            relay_seq: identity.stamp.map(|stamp| stamp.seq),
            kind: row.get(1)?,
            routing_key: non_empty(row.get(2)?),
            spooled_at: rfc3339(row.get(4)?),
            refusals: row.get(5)?,
            last_error: row.get::<_, Option<String>>(6)?.and_then(non_empty),
            parked_at: row.get::<_, Option<i64>>(8)?.map(rfc3339),
            retry_at: retry_at.map(rfc3339),
            retry_requested: row.get(9)?,
        })
    })?;
    let whole = limit == usize::MAX;
    let mut page = Page {
        listed: Vec::new(),
        next: None,
        examined: 0,
    };
    for row in rows {
        let row = row?;
        if page.examined == MAX_EXAMINED && !whole {
            // Read on from the last row read, admitted or not.
            page.next = Some(row.seq - 1);
            return Ok(page);
        }
        page.examined += 1;
        if !keep(&row) {
            continue;
        }
        if page.listed.len() == limit {
            page.next = page.listed.last().map(|last| last.seq);
            return Ok(page);
        }
        page.listed.push(row);
    }
    Ok(page)
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

/// A spooled message's id and account, read from its stored properties.
/// What identifies a spooled message: its id, its account, and which
/// relay stored it under which number.
struct Identity {
    message_id: Option<String>,
    account_id: Option<String>,
    stamp: Option<Stamp>,
}

fn identify(properties: &[u8]) -> Identity {
    let Ok(properties) = store::decode_properties(properties) else {
        return Identity {
            message_id: None,
            account_id: None,
            stamp: None,
        };
    };
    let headers = properties.headers().as_ref();
    Identity {
        message_id: properties.message_id().as_ref().map(|id| id.to_string()),
        account_id: crate::wire::headers::text(headers, crate::wire::headers::ACCOUNT_ID),
        stamp: Stamp::of(headers),
    }
}

fn non_empty(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

fn rfc3339(millis: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(millis.max(0).cast_unsigned());
    humantime::format_rfc3339_millis(at).to_string()
}
