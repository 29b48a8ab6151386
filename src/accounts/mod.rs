//! Accounts that need someone: what the sender's outcomes mean for one
//! account, folded from its events into a state a person can act on.
//!
//! `sync.*` routing keys are what the sender said; an account's [`State`] is
//! what it means: the user must reconnect, the sender's support must look at
//! it, or nothing is needed. [`state`] holds the rule, as one pure function
//! table-tested against the spec's sentences; [`book`](mod@book) applies it
//! to each account in event time (a late event changes nothing); the
//! relay's derived store ([`crate::derived`]) keeps every account's state
//! and the changes it owes, and `announcer` (a task of the relay, one relay
//! at a time) publishes each change once as an `account.<state>` message
//! ([`AccountChange`](crate::wire::account::AccountChange)) through
//! `<exchange>.changes`.

pub(crate) mod announcer;
pub mod book;
pub mod state;

pub use book::{Book, Entry, Fold, Key, LastEvent, Report};
pub use state::{Account, ContactReason, Outcome, ReconnectReason, State, Transition};

use anyhow::Context;

use crate::broker::{self, Topology};
use crate::config::Settings;
use crate::history::{Ends, Filter, Reader, Recorded, Start};
use crate::wire::account::StateName;

/// Every account's state, folded from the whole history (oldest event
/// first). Accounts silent for longer than the history keeps events are not
/// in it.
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use hookrelay::accounts::{self, State};
/// use hookrelay::config::Settings;
///
/// let settings = Settings::load(Some("relay.toml".as_ref()))?;
/// let book = accounts::book(&settings).await?;
/// for entry in book.entries() {
///     if let State::NeedsReconnect { .. } = entry.state {
///         println!("ask user {} to reconnect account {}", entry.user_id, entry.key.account_id);
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub async fn book(settings: &Settings) -> anyhow::Result<Book> {
    let mut book = Book::new(settings.accounts.temporary_failures_to_escalate);
    read_history(settings, Filter::default(), |event| {
        book.apply(event);
    })
    .await?;
    Ok(book)
}

/// One account's events, in the order the history holds them, each with
/// the state it left the account in, whether that was a change, and
/// whether it came late (older than an event applied before it: it changed
/// nothing).
pub async fn timeline(
    settings: &Settings,
    account_id: &str,
    client_id: Option<&str>,
) -> anyhow::Result<Vec<Step>> {
    let mut book = Book::new(settings.accounts.temporary_failures_to_escalate);
    let filter = Filter {
        account_id: Some(account_id.to_owned()),
        client_id: client_id.map(str::to_owned),
        ..Filter::default()
    };
    let mut steps = Vec::new();
    read_history(settings, filter, |event| {
        if let Some((report, folded)) = book.apply(event)
            && let Some(entry) = book.get(&report.key)
        {
            steps.push(Step::of(entry, report, &folded));
        }
    })
    .await?;
    Ok(steps)
}

/// One account's timeline from the console's index, oldest first: each
/// event (`rows`, oldest first, all of one account) with the state it left
/// the account in. The index holds no body, so no provider; and no
/// `account.silent` read back.
pub fn timeline_of_rows(rows: &[crate::history::index::Row], escalate_after: u32) -> Vec<Step> {
    let mut entry: Option<Entry> = None;
    let mut steps = Vec::new();
    for report in rows.iter().filter_map(Report::of_row) {
        let folded = book::fold(entry.as_ref(), &report, escalate_after);
        if let Fold::Applied { entry: now, .. } = &folded {
            entry = Some(now.clone());
        }
        if let Some(entry) = &entry {
            steps.push(Step::of(entry, report, &folded));
        }
    }
    steps
}

/// Which accounts a listing shows; every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub state: Option<StateName>,
    pub client_id: Option<String>,
    pub provider: Option<String>,
    /// In their state since this time or later.
    pub since: Option<std::time::SystemTime>,
}

impl Selection {
    pub fn admits(&self, entry: &Entry) -> bool {
        let since = || {
            entry
                .since
                .as_deref()
                .and_then(|since| humantime::parse_rfc3339_weak(since).ok())
        };
        self.state
            .is_none_or(|state| StateName::from(&entry.state) == state)
            && self
                .client_id
                .as_deref()
                .is_none_or(|id| entry.key.client_id == id)
            && self
                .provider
                .as_deref()
                .is_none_or(|provider| entry.provider.as_deref() == Some(provider))
            && self
                .since
                .is_none_or(|at| since().is_some_and(|since| since >= at))
    }
}

impl Step {
    fn of(entry: &Entry, report: Report, folded: &Fold) -> Step {
        let (changed, late) = match folded {
            Fold::Applied { transition, .. } => (transition.is_some(), false),
            Fold::Late => (false, true),
        };
        Step {
            entry: entry.clone(),
            event: report.event,
            changed,
            late,
        }
    }
}

/// An account after one of its events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// The account after this event.
    #[serde(flatten)]
    pub entry: Entry,
    /// This event.
    pub event: LastEvent,
    /// Whether this event changed the account's state.
    pub changed: bool,
    /// Whether it came after a newer event of the account (a spooled or
    /// re-driven webhook): then it changed nothing.
    pub late: bool,
}

async fn read_history(
    settings: &Settings,
    filter: Filter,
    mut each: impl FnMut(&Recorded),
) -> anyhow::Result<()> {
    if !settings.accounts.enabled {
        anyhow::bail!("accounts are off ([accounts] enabled = false)");
    }
    let topology = Topology::of(settings);
    let Some(stream) = topology.history_stream() else {
        anyhow::bail!(
            "the history is off ([history] enabled = false): accounts are folded from it"
        );
    };
    broker::with_tool_connection(&settings.amqp, "hookrelay-accounts", async |connection| {
        let mut reader =
            Reader::open(connection, stream, Start::First, Ends::AtTheEnd, filter).await?;
        while let Some(event) = reader.next().await.context("reading the history")? {
            each(&event);
        }
        reader.close().await;
        Ok(())
    })
    .await
}
