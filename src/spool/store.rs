//! The spool's SQLite file: its schema, the migration from older versions, and
//! how a [`Message`] becomes a row and comes back.
//!
//! A row keeps what a message *is* (`kind`: an event with its routing key, or
//! a quarantined body), never an exchange or queue name: names are chosen by
//! the broker's topology when the message is published, so a renamed exchange
//! or a changed topology cannot strand what is spooled. The AMQP properties are
//! stored in AMQP's own wire encoding (the spec's format, via amq-protocol), so
//! nothing is re-derived on the way out.

use std::path::Path;
use std::time::Duration;

use amq_protocol::protocol::basic::{gen_properties, parse_properties};
use bytes::Bytes;
use lapin::BasicProperties;
use rusqlite::{Connection, OpenFlags};

use super::SpoolError;
use crate::wire::envelope::{Kind, Message};

/// The schema this version writes. Version 0 (before `PRAGMA user_version`
/// was set) stored an exchange name instead of a kind, and had no parking;
/// version 2 had no refused lane (`retry_at`).
const VERSION: i32 = 3;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS spool (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind        TEXT    NOT NULL, -- 'event' or 'quarantine'
        routing_key TEXT    NOT NULL, -- an event's routing key; '' for quarantine
        properties  BLOB    NOT NULL, -- AMQP basic properties, wire encoding
        body        BLOB    NOT NULL,
        size        INTEGER NOT NULL, -- bytes counted against spool.max_bytes
        spooled_at  INTEGER NOT NULL, -- milliseconds since the epoch
        refusals    INTEGER NOT NULL DEFAULT 0, -- times RabbitMQ refused it
        last_error  TEXT,             -- the last refusal, in RabbitMQ's words
        retry_at    INTEGER           -- NULL: in the backlog, published in order;
                                      -- else refused, retried beside the flow at
                                      -- this time (milliseconds since the epoch)
    );
    -- Messages RabbitMQ refused spool.max_refusals times: kept, out of the way.
    CREATE TABLE IF NOT EXISTS parked (
        seq             INTEGER PRIMARY KEY, -- its place in the spool when parked
        kind            TEXT    NOT NULL,
        routing_key     TEXT    NOT NULL,
        properties      BLOB    NOT NULL,
        body            BLOB    NOT NULL,
        size            INTEGER NOT NULL,
        spooled_at      INTEGER NOT NULL,
        refusals        INTEGER NOT NULL,
        last_error      TEXT    NOT NULL,
        parked_at       INTEGER NOT NULL,
        retry_requested INTEGER NOT NULL DEFAULT 0 -- set by `hookrelay spool retry`
    );";

/// How long a write waits for another process's (`hookrelay spool retry`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (or, with `create`, creates) the spool file and brings its schema up
/// to date.
pub(super) fn open(path: &Path, create: bool) -> Result<Connection, SpoolError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut db = Connection::open_with_flags(path, flags)?;
    db.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: appends do not block reads; FULL: every commit is fsync'd.
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    migrate(&mut db)?;
    Ok(db)
}

fn migrate(db: &mut Connection) -> Result<(), SpoolError> {
    let version: i32 = db.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > VERSION {
        return Err(SpoolError::NewerSchema(version));
    }
    if version == VERSION {
        return Ok(());
    }
    let tx = db.transaction()?;
    let from_v0 = tx
        .prepare("SELECT 1 FROM pragma_table_info('spool') WHERE name = 'exchange'")?
        .exists([])?;
    if from_v0 {
        tx.execute_batch("ALTER TABLE spool RENAME TO spool_v0;")?;
    }
    tx.execute_batch(SCHEMA)?;
    let has_lane = tx
        .prepare("SELECT 1 FROM pragma_table_info('spool') WHERE name = 'retry_at'")?
        .exists([])?;
    if !has_lane {
        tx.execute_batch("ALTER TABLE spool ADD COLUMN retry_at INTEGER;")?;
    }
    tx.execute_batch(
        "CREATE INDEX IF NOT EXISTS spool_refused ON spool (retry_at) WHERE retry_at IS NOT NULL;",
    )?;
    if from_v0 {
        // Version 0 sent quarantined bodies to the default exchange (an empty
        // exchange name) and events to the topic exchange.
        tx.execute_batch(
            "INSERT INTO spool (seq, kind, routing_key, properties, body, size, spooled_at)
                 SELECT seq,
                        CASE exchange WHEN '' THEN 'quarantine' ELSE 'event' END,
                        CASE exchange WHEN '' THEN '' ELSE routing_key END,
                        properties, body, size, spooled_at
                 FROM spool_v0 ORDER BY seq;
             DROP TABLE spool_v0;",
        )?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    Ok(())
}

/// A message as its row stores it.
pub(super) struct Row {
    pub kind: &'static str,
    pub routing_key: String,
    pub properties: Vec<u8>,
    pub size: u64,
}

impl Row {
    /// The routing key, as the refused lane names it.
    pub(super) fn lane_key(&self) -> &str {
        super::refused::lane_key(self.kind, &self.routing_key)
    }

    pub(super) fn of(message: &Message) -> Result<Row, SpoolError> {
        let (kind, routing_key) = match &message.kind {
            Kind::Event(key) => ("event", key.as_str().to_owned()),
            Kind::Quarantine => ("quarantine", String::new()),
        };
        let properties = cookie_factory::r#gen(gen_properties(&message.properties), Vec::new())
            .map(|(bytes, _)| bytes)
            .map_err(|_| SpoolError::Encode)?;
        let size = (kind.len() + routing_key.len() + properties.len() + message.body.len()) as u64;
        Ok(Row {
            kind,
            routing_key,
            properties,
            size,
        })
    }
}

/// The message a row stores; `Corrupt`, saying why, when it is not one this
/// relay writes.
pub(super) fn message(
    kind: &str,
    routing_key: &str,
    properties: &[u8],
    body: Vec<u8>,
) -> Result<Message, SpoolError> {
    let kind =
        match kind {
            "event" => Kind::Event(routing_key.parse().map_err(|err| {
                SpoolError::Corrupt(format!("routing key {routing_key:?}: {err}"))
            })?),
            "quarantine" => Kind::Quarantine,
            other => return Err(SpoolError::Corrupt(format!("unknown kind {other:?}"))),
        };
    Ok(Message {
        kind,
        body: Bytes::from(body),
        properties: decode_properties(properties)?,
    })
}

pub(super) fn decode_properties(bytes: &[u8]) -> Result<BasicProperties, SpoolError> {
    parse_properties(bytes)
        .map(|(_, properties)| properties)
        .map_err(|_| SpoolError::Corrupt("the AMQP properties cannot be decoded".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path() -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hookrelay-store-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("spool.sqlite")
    }

    #[test]
    fn a_version_0_spool_keeps_its_messages_as_events_and_quarantined_bodies() {
        let path = temp_path();
        let properties = cookie_factory::r#gen(
            gen_properties(&BasicProperties::default().with_delivery_mode(2)),
            Vec::new(),
        )
        .unwrap()
        .0;
        {
            // The schema and rows exactly as version 0 wrote them.
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE spool (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT, exchange TEXT NOT NULL,
                    routing_key TEXT NOT NULL, properties BLOB NOT NULL, body BLOB NOT NULL,
                    size INTEGER NOT NULL, spooled_at INTEGER NOT NULL);",
            )
            .unwrap();
            for (exchange, key, body) in [
                ("webhooks", "sync.account", "first"),
                ("", "webhooks.quarantine", "second"),
                ("webhooks", "sync.error.LoginFailedError", "third"),
            ] {
                db.execute(
                    "INSERT INTO spool (exchange, routing_key, properties, body, size, spooled_at)
                     VALUES (?1, ?2, ?3, ?4, 10, 0)",
                    rusqlite::params![exchange, key, properties, body.as_bytes()],
                )
                .unwrap();
            }
        }

        let db = open(&path, false).unwrap();

        let rows: Vec<Message> = db
            .prepare("SELECT kind, routing_key, properties, body FROM spool ORDER BY seq")
            .unwrap()
            .query_map([], |row| {
                Ok(message(
                    &row.get::<_, String>(0)?,
                    &row.get::<_, String>(1)?,
                    &row.get::<_, Vec<u8>>(2)?,
                    row.get(3)?,
                ))
            })
            .unwrap()
            .map(|row| row.unwrap().unwrap())
            .collect();
        let kinds: Vec<(Kind, &[u8])> =
            rows.iter().map(|m| (m.kind.clone(), &m.body[..])).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Event("sync.account".parse().unwrap()), &b"first"[..]),
                (Kind::Quarantine, &b"second"[..]),
                (
                    Kind::Event("sync.error.LoginFailedError".parse().unwrap()),
                    &b"third"[..]
                ),
            ]
        );
        let version: i32 = db
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
    }

    #[test]
    fn a_spool_from_a_newer_relay_is_not_touched() {
        let path = temp_path();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", VERSION + 1)
            .unwrap();

        assert!(matches!(
            open(&path, false),
            Err(SpoolError::NewerSchema(_))
        ));
    }

    #[test]
    fn a_row_that_is_not_a_message_of_ours_is_corrupt() {
        let properties =
            cookie_factory::r#gen(gen_properties(&BasicProperties::default()), Vec::new())
                .unwrap()
                .0;
        assert!(matches!(
            message("event", "not.a.key", &properties, vec![]),
            Err(SpoolError::Corrupt(_))
        ));
        assert!(matches!(
            message("other", "", &properties, vec![]),
            Err(SpoolError::Corrupt(_))
        ));
    }
}
