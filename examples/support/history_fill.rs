//! Shared by the benchmark examples (`#[path]`): fills a history stream with
//! events published as the relay publishes them, and reads this process's
//! resident memory.

use std::time::SystemTime;

use hookrelay::wire::headers::{
    self, ACCOUNT_ID, CLIENT_ID, RECEIVED_AT, RELAY_ID, RELAY_SEQ, USER_ID,
};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ExchangeKind};

/// The outcomes of the events, in turn: mostly syncs, some failures.
const OUTCOMES: [&str; 8] = [
    "sync.account",
    "sync.account",
    "sync.account",
    "sync.account",
    "sync.error.TemporaryFailureError",
    "sync.account",
    "sync.error.LoginFailedError",
    "sync.error.TemporaryFailureError",
];

/// The relay the events say stored them (`x-relay-id`), numbered from 1.
pub(crate) const RELAY: &str = "bench-fill";

/// Publishes the events to the stream through a fanout of its own,
/// confirmed, `in_flight` at once. With `announced`, each account's first
/// event is followed by the announcement of the change it made (an
/// `account.*` message naming it in `x-caused-by`), as a relay would have
/// published it: a history in which nothing is owed.
pub(crate) async fn fill(
    connection: &Connection,
    stream: &str,
    events: u64,
    accounts: u64,
    in_flight: usize,
    announced: bool,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let entry = format!("{stream}.in");
    channel
        .exchange_declare(
            entry.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            stream.into(),
            entry.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut pending = std::collections::VecDeque::new();
    for n in 0..events {
        let account = n % accounts;
        let outcome = OUTCOMES[usize::try_from((n / accounts) % 8).unwrap_or(0)];
        let mut found = FieldTable::default();
        headers::set_text(&mut found, CLIENT_ID, "bench-client");
        headers::set_text(&mut found, ACCOUNT_ID, &format!("acct-{account:08}"));
        headers::set_text(&mut found, USER_ID, &format!("user-{account:08}"));
        headers::set_text(
            &mut found,
            RECEIVED_AT,
            &humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        );
        // Fifty providers, as an app's users bank with many.
        let provider = format!("Bank {:02}", account % 50);
        let body = match outcome.strip_prefix("sync.error.") {
            Some(code) => format!(
                r#"{{"hook":"SyncError","user":{{"id":"user-{account:08}","loginName":"someone@example.com"}},"account":{{"id":"acct-{account:08}","provider":"{provider}"}},"error":"{code}"}}"#
            ),
            None => format!(
                r#"{{"hook":"SyncAccount","user":{{"id":"user-{account:08}","loginName":"someone@example.com"}},"account":{{"id":"acct-{account:08}","provider":"{provider}"}}}}"#
            ),
        };
        let id = uuid::Uuid::now_v7().to_string();
        let mut stamped = found.clone();
        headers::set_text(&mut stamped, RELAY_ID, RELAY);
        stamped.insert(
            RELAY_SEQ.into(),
            AMQPValue::LongLongInt(i64::try_from(n + 1)?),
        );
        let properties = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_delivery_mode(2)
            .with_headers(stamped);
        // Through a fanout, as the relay's entry exchange: the stream keeps
        // the routing key, which says the outcome.
        let confirm = channel
            .basic_publish(
                entry.as_str().into(),
                outcome.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?;
        pending.push_back(confirm);
        if announced && n < accounts {
            let mut headers = found;
            headers::set_text(&mut headers, headers::CAUSED_BY, &id);
            let announcement = channel
                .basic_publish(
                    entry.as_str().into(),
                    "account.ok".into(),
                    BasicPublishOptions::default(),
                    br#"{"state":"ok"}"#,
                    BasicProperties::default()
                        .with_message_id(uuid::Uuid::new_v4().to_string().into())
                        .with_delivery_mode(2)
                        .with_headers(headers),
                )
                .await?;
            pending.push_back(announcement);
        }
        while pending.len() >= in_flight {
            pending.pop_front().expect("one").await?;
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    channel
        .exchange_delete(entry.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}

/// This process's resident memory.
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
