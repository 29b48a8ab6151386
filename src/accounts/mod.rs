//! Accounts that need someone: what the sender's outcomes mean for one
//! account, folded from its events into a state a person can act on.
//!
//! `sync.*` routing keys are what the sender said; an account's [`State`] is
//! what it means: the user must reconnect, the sender's support must look at
//! it, or nothing is needed. [`state`] holds the rule, as one pure function
//! table-tested against the spec's sentences; [`book`](mod@book) folds the history's
//! events into every account's state; [`ledger`] adds what the announcer
//! owes, and `announcer` (a task of the relay) publishes each change as an
//! `account.<state>` message ([`AccountChange`](crate::wire::account::AccountChange));
//! [`live`] keeps a book current for the console.

pub(crate) mod announcer;
pub mod book;
pub mod ledger;
pub mod live;
pub mod state;

pub use book::{Book, Entry, Key};
pub use ledger::Ledger;
pub use live::LiveBook;
pub use state::{Account, ContactReason, Outcome, ReconnectReason, State, Transition};

use anyhow::Context;

use crate::broker::{self, Topology};
use crate::config::Settings;
use crate::history::{Filter, Reader, Recorded, Start};

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

/// One account's events, oldest first, each with the state it left the
/// account in and whether that was a change.
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
        if !event.routing_key.starts_with("sync.") {
            return;
        }
        let changed = book.apply(event);
        if let Some(entry) = Key::of(event).and_then(|key| book.get(&key)) {
            steps.push(Step {
                entry: entry.clone(),
                changed: changed.is_some(),
            });
        }
    })
    .await?;
    Ok(steps)
}

/// Which accounts a listing shows; every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// A state's name: `ok`, `needs_reconnect`, `retrying`,
    /// `contact_provider`, `unknown`.
    pub state: Option<String>,
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
            .as_deref()
            .is_none_or(|state| entry.state.name() == state)
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

/// An account after one of its events.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub entry: Entry,
    /// Whether this event changed the account's state.
    pub changed: bool,
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
        let mut reader = Reader::open(connection, stream, Start::First, false, filter).await?;
        while let Some(event) = reader.next().await.context("reading the history")? {
            each(&event);
        }
        reader.close().await;
        Ok(())
    })
    .await
}
