//! What the account announcer owes: the book of every account, folded from
//! the history, and the changes the history holds no announcement of.
//!
//! The announcer folds the history when it takes over (on start, or when
//! another relay's announcer went away), then takes the events of its queue
//! `<exchange>.accounts` one by one. An event of the queue is in one of three
//! places:
//! - folded from the history, and its change (if it made one) announced:
//!   the history holds an `account.*` message with `x-caused-by` = its id.
//!   Nothing to do: this is the event an earlier announcer published for,
//!   then stopped before it acknowledged it.
//! - folded, its change not announced: the earlier announcer stopped between
//!   the two. [`Ledger::take`] hands over the change it owes.
//! - not folded (it arrived after the fold's end): applied now.
//!
//! Which events of the queue were folded: the queue's first delivery (taken
//! before the fold) is the oldest nobody acknowledged, and the fold keeps the
//! id of that event and of every one after it ([`Ledger::expect_first`]).
//! The book's memory of each account's latest ids covers the rest (events of
//! two relays published at the same moment can reach the queue and the
//! history in a different order).
//!
//! So each change is announced once, whichever relay announces it and
//! however often announcers stop. Changes owed are kept oldest first and at
//! most [`MAX_OWED`]: more means a history written before the announcer ran
//! (an upgrade), whose changes nobody waits for and no queue still holds.

use std::collections::HashSet;

use indexmap::IndexMap;

use crate::history::Recorded;
use crate::wire::account::{self, AccountChange, Reason, StateName};

use super::book::{Book, Entry, outcome};
use super::state::{ContactReason, Outcome, ReconnectReason, State, Transition};

/// The most changes owed that are remembered.
pub const MAX_OWED: usize = 10_000;

/// The book, and what is owed.
#[derive(Debug)]
pub struct Ledger {
    book: Book,
    /// By the message id of the event that caused it, oldest first.
    owed: IndexMap<String, AccountChange>,
    /// The event the queue delivered first, before the fold.
    first: Option<String>,
    /// The ids of the events folded from `first` on: those the queue still
    /// holds, already in the book.
    backlog: HashSet<String>,
}

impl Ledger {
    /// `escalate_after` is `accounts.temporary_failures_to_escalate`.
    pub fn new(escalate_after: u32) -> Ledger {
        Ledger {
            book: Book::new(escalate_after),
            owed: IndexMap::new(),
            first: None,
            backlog: HashSet::new(),
        }
    }

    /// Before the fold: the message id of the queue's first delivery, the
    /// oldest event no announcer acknowledged. The fold remembers it and
    /// every event after it, so that the queue's backlog (however long, and
    /// however many events of one account it holds) is not applied twice.
    pub fn expect_first(&mut self, message_id: Option<String>) {
        self.first = message_id;
    }

    /// One message read from the history while catching up: a sync event
    /// into the book (its change owed), an announcement pays what it
    /// announced.
    pub fn fold(&mut self, event: &Recorded) {
        if event.routing_key.starts_with(account::ROUTING_PREFIX) {
            if let Some(cause) = account::caused_by(event.properties.headers().as_ref()) {
                self.owed.shift_remove(&cause);
            }
            return;
        }
        if let Some(id) = event.message_id()
            && (!self.backlog.is_empty() || self.first.as_ref() == Some(&id))
        {
            self.backlog.insert(id);
        }
        if let Some(change) = self.apply(event) {
            if self.owed.len() == MAX_OWED {
                self.owed.shift_remove_index(0);
            }
            self.owed.insert(change.caused_by.clone(), change);
        }
    }

    /// One event delivered by the announcer's queue: the change to announce
    /// now, if it made one that is not announced yet.
    pub fn take(&mut self, event: &Recorded) -> Option<AccountChange> {
        if let Some(id) = event.message_id() {
            if let Some(change) = self.owed.shift_remove(&id) {
                self.backlog.remove(&id);
                return Some(change);
            }
            if self.backlog.remove(&id) {
                return None;
            }
        }
        self.apply(event)
    }

    /// Changes folded from the history that it holds no announcement of.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    pub fn book(&self) -> &Book {
        &self.book
    }

    /// Applies `event` to the book; the change it made, as announced.
    fn apply(&mut self, event: &Recorded) -> Option<AccountChange> {
        let (key, transition) = self.book.apply(event)?;
        let entry = self.book.get(&key)?;
        Some(change(entry, &transition, event))
    }
}

/// The announcement of `transition`, which `event` caused and left the
/// account as `entry` says.
fn change(entry: &Entry, transition: &Transition, event: &Recorded) -> AccountChange {
    let code = match outcome(&event.routing_key) {
        Some(Outcome::Failed(code)) => Some(code.as_str().to_owned()),
        _ => None,
    };
    AccountChange {
        client_id: entry.key.client_id.clone(),
        account_id: entry.key.account_id.clone(),
        user_id: entry.user_id.clone(),
        provider: entry.provider.clone(),
        state: StateName::from(&transition.state),
        previous_state: transition.previous.as_ref().map(StateName::from),
        reason: reason(&transition.state),
        code,
        streak: transition.streak,
        since: entry.since.clone(),
        caused_by: event.message_id().unwrap_or_default(),
    }
}

fn reason(state: &State) -> Option<Reason> {
    match state {
        State::NeedsReconnect {
            reason: ReconnectReason::Credentials,
        } => Some(Reason::Credentials),
        State::NeedsReconnect {
            reason: ReconnectReason::Verification,
        } => Some(Reason::Verification),
        State::ContactProvider {
            because: ContactReason::RepeatedTemporaryFailures,
        } => Some(Reason::RepeatedTemporaryFailures),
        State::ContactProvider {
            because: ContactReason::ConnectorError(_),
        } => Some(Reason::ConnectorError),
        State::Ok | State::Retrying | State::Unknown { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::book::tests::event as of_account;

    fn event(id: &str, routing_key: &str) -> Recorded {
        of_account(id, "a-1", routing_key)
    }

    fn announcement(of: &AccountChange) -> Recorded {
        Recorded {
            offset: 0,
            routing_key: of.routing_key(),
            properties: of.properties(std::time::SystemTime::now()),
            body: of.body(),
        }
    }

    #[test]
    fn a_change_the_history_announced_is_not_announced_again() {
        let mut first = Ledger::new(3);
        let failed = event("e-1", "sync.error.LoginFailedError");
        let change = first.take(&failed).expect("a first event is a change");
        assert_eq!(change.routing_key(), "account.needs_reconnect");
        assert_eq!(change.reason, Some(Reason::Credentials));
        assert_eq!(change.code.as_deref(), Some("LoginFailedError"));
        assert_eq!(change.caused_by, "e-1");

        // The next announcer folds the event and its announcement, then the
        // queue delivers the event again (the first stopped before its ack).
        let mut next = Ledger::new(3);
        next.fold(&failed);
        next.fold(&announcement(&change));
        assert_eq!(next.owed(), 0);
        assert_eq!(next.take(&failed), None);
    }

    #[test]
    fn a_change_the_history_holds_no_announcement_of_is_owed_once() {
        let failed = event("e-1", "sync.error.LoginFailedError");
        let mut next = Ledger::new(3);
        next.fold(&failed);
        assert_eq!(next.owed(), 1);
        let change = next.take(&failed).expect("owed");
        assert_eq!(change.state, StateName::NeedsReconnect);
        assert_eq!(next.take(&failed), None, "paid");
    }

    #[test]
    fn an_event_after_the_fold_is_applied_and_a_repeat_is_no_change() {
        let mut ledger = Ledger::new(3);
        ledger.fold(&event("e-1", "sync.error.LoginFailedError"));
        ledger.fold(&announcement(
            &ledger.clone_owed().pop().expect("the first event's change"),
        ));
        assert_eq!(
            ledger.take(&event("e-2", "sync.error.LoginFailedError")),
            None
        );
        let synced = ledger
            .take(&event("e-3", "sync.account"))
            .expect("a change");
        assert_eq!(synced.state, StateName::Ok);
        assert_eq!(synced.previous_state, Some(StateName::NeedsReconnect));
        assert_eq!(synced.code, None);
    }

    #[test]
    fn a_long_backlog_of_one_account_is_not_applied_twice() {
        // Twenty events of one account were folded, and are all still in
        // the queue (the last announcer stopped before acknowledging them):
        // more than the book's memory of ids per account.
        let sent: Vec<Recorded> = (0..20)
            .map(|n| match n % 2 {
                0 => event(&format!("e-{n}"), "sync.error.LoginFailedError"),
                _ => event(&format!("e-{n}"), "sync.account"),
            })
            .collect();
        let mut next = Ledger::new(3);
        next.expect_first(sent[0].message_id());
        for event in &sent {
            next.fold(event);
            if let Some(change) = next.clone_owed().pop() {
                next.fold(&announcement(&change));
            }
        }
        let again: Vec<_> = sent.iter().filter_map(|e| next.take(e)).collect();
        assert_eq!(again, [], "each was folded and announced");
        let newer = next.take(&event("e-20", "sync.error.LoginFailedError"));
        assert_eq!(newer.map(|c| c.state), Some(StateName::NeedsReconnect));
    }

    #[test]
    fn owed_changes_are_bounded_keeping_the_newest() {
        let mut ledger = Ledger::new(3);
        for n in 0..=MAX_OWED {
            ledger.fold(&of_account(
                &format!("e-{n}"),
                &format!("a-{n}"),
                "sync.account",
            ));
        }
        assert_eq!(ledger.owed(), MAX_OWED);
        assert!(!ledger.owed.contains_key("e-0"), "the oldest went first");
        assert!(ledger.owed.contains_key(&format!("e-{MAX_OWED}")));
    }

    impl Ledger {
        fn clone_owed(&self) -> Vec<AccountChange> {
            self.owed.values().cloned().collect()
        }
    }
}
