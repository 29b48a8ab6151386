//! The account state machine: one pure function, [`Account::apply`], from the
//! state an account is in and the outcome of its latest sync to the state it
//! is in now, and whether that is a change anyone should hear about.
//!
//! The rule follows the sender's spec (`SyncError`):
//!
//! | outcome | the spec says | state |
//! |---|---|---|
//! | `SyncAccount` | the account synced | `ok` |
//! | `LoginFailedError` | "requires a reconnection … new credentials" | `needs_reconnect` (credentials) |
//! | `SecurityQuestionError` | "a need of user input … a Reconnect process" | `needs_reconnect` (verification) |
//! | `TemporaryFailureError` | "no need to take action. But if this error keeps happening for the same account … contact us" | `retrying`, then `contact_provider` at the threshold |
//! | `UnhandledConnectorError`, `UnknownConnectorError` | "contact us with the account id" | `contact_provider` |
//! | any other code | (not in the spec yet) | `unknown` (with the code) |
//!
//! Two choices the spec leaves open:
//! - A temporary failure does not take an account out of `needs_reconnect`
//!   or `contact_provider`: the sender could not even try the account, so
//!   what the user or the sender's support must do is still to be done. The
//!   streak is still counted.
//! - The streak counts temporary failures in a row; any other outcome ends it.
//!
//! The sender syncs every account daily, so the same outcome comes again and
//! again: only a change of state (or of the reason within it) is a
//! [`Transition`]. Five daily `LoginFailedError`s are one.

use std::fmt;

use schemars::JsonSchema;
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::event::{ErrorCode, EventKind};
use crate::wire::account::{Reason, StateName};

/// What the latest sync of an account said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Synced,
    Failed(ErrorCode),
}

impl From<&EventKind> for Outcome {
    fn from(kind: &EventKind) -> Outcome {
        match kind {
            EventKind::SyncAccount => Outcome::Synced,
            EventKind::SyncError(code) => Outcome::Failed(code.clone()),
        }
    }
}

/// Why the user must reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectReason {
    /// `LoginFailedError`: new credentials.
    Credentials,
    /// `SecurityQuestionError`: a verification step (security question, 2FA).
    Verification,
}

/// Why the sender's support must look at the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactReason {
    /// `TemporaryFailureError`s in a row reached the threshold.
    RepeatedTemporaryFailures,
    /// `UnhandledConnectorError` or `UnknownConnectorError`.
    ConnectorError(String),
}

/// What an account needs, and from whom. Shown (and serialised) as the
/// announcement says it: `state`, `reason` and `code` ([`State::reason`], [`State::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Synced: nothing to do.
    Ok,
    /// The user must reconnect the account.
    NeedsReconnect { reason: ReconnectReason },
    /// Temporary failures, which the sender retries by itself.
    Retrying,
    /// The sender's support must look at it, with the account id.
    ContactProvider { because: ContactReason },
    /// An error code the spec does not list: routed, but its meaning unknown.
    Unknown { code: String },
    /// No event for `accounts.silent_after`: the sender stopped syncing it.
    /// Decided by the announcing relay's clock and read back from the
    /// history (`account.silent`), never by the fold of an event.
    Silent,
}

impl State {
    /// The state's name, as in the routing key `account.<name>`.
    pub fn name(&self) -> &'static str {
        StateName::from(self).as_str()
    }

    /// Why the account is in this state, where there is more than one reason.
    pub fn reason(&self) -> Option<Reason> {
        match self {
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
            State::Ok | State::Retrying | State::Unknown { .. } | State::Silent => None,
        }
    }

    /// The error code of the event that put the account in this state;
    /// `None` for `ok` and `silent`.
    pub fn code(&self) -> Option<&str> {
        match self {
            State::Ok | State::Silent => None,
            State::NeedsReconnect {
                reason: ReconnectReason::Credentials,
            } => Some("LoginFailedError"),
            State::NeedsReconnect {
                reason: ReconnectReason::Verification,
            } => Some("SecurityQuestionError"),
            State::Retrying
            | State::ContactProvider {
                because: ContactReason::RepeatedTemporaryFailures,
            } => Some("TemporaryFailureError"),
            State::ContactProvider {
                because: ContactReason::ConnectorError(code),
            }
            | State::Unknown { code } => Some(code),
        }
    }

    /// The state from what [`State::name`], [`State::reason`] and
    /// [`State::code`] say of it (as stored); `None` when they disagree.
    pub fn from_parts(
        name: StateName,
        reason: Option<Reason>,
        code: Option<&str>,
    ) -> Option<State> {
        let state = match (name, reason) {
            (StateName::Ok, None) => State::Ok,
            (StateName::NeedsReconnect, Some(Reason::Credentials)) => State::NeedsReconnect {
                reason: ReconnectReason::Credentials,
            },
            (StateName::NeedsReconnect, Some(Reason::Verification)) => State::NeedsReconnect {
                reason: ReconnectReason::Verification,
            },
            (StateName::Retrying, None) => State::Retrying,
            (StateName::ContactProvider, Some(Reason::RepeatedTemporaryFailures)) => {
                State::ContactProvider {
                    because: ContactReason::RepeatedTemporaryFailures,
                }
            }
            (StateName::ContactProvider, Some(Reason::ConnectorError)) => State::ContactProvider {
                because: ContactReason::ConnectorError(code?.to_owned()),
            },
            (StateName::Unknown, None) => State::Unknown {
                code: code?.to_owned(),
            },
            (StateName::Silent, None) => State::Silent,
            _ => return None,
        };
        Some(state)
    }
}

/// `{"state": …, "reason": …, "code": …}`, the announcement's vocabulary.
impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("state", &StateName::from(self))?;
        map.serialize_entry("reason", &self.reason())?;
        map.serialize_entry("code", &self.code())?;
        map.end()
    }
}

/// The shape [`State`] serialises to, for its JSON Schema.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct StateShape {
    state: StateName,
    /// Why, where a state has more than one reason.
    reason: Option<Reason>,
    /// The error code of the event that put the account in this state;
    /// null for `ok` and `silent`.
    code: Option<String>,
}

impl JsonSchema for State {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AccountState".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        StateShape::json_schema(generator)
    }
}

impl From<&State> for StateName {
    fn from(state: &State) -> StateName {
        match state {
            State::Ok => StateName::Ok,
            State::NeedsReconnect { .. } => StateName::NeedsReconnect,
            State::Retrying => StateName::Retrying,
            State::ContactProvider { .. } => StateName::ContactProvider,
            State::Unknown { .. } => StateName::Unknown,
            State::Silent => StateName::Silent,
        }
    }
}

/// `needs_reconnect (credentials)`, `contact_provider (connector_error:
/// UnhandledConnectorError)`, `unknown (RateLimitedError)`, `ok`: the words
/// of the JSON and the announcements, never Rust's.
impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match (self.reason(), self) {
            (Some(Reason::ConnectorError), _) => {
                write!(f, " (connector_error: {})", self.code().unwrap_or_default())
            }
            (Some(reason), _) => write!(f, " ({})", reason.as_str()),
            (None, State::Unknown { code }) => write!(f, " ({code})"),
            (None, _) => Ok(()),
        }
    }
}

/// One account as the fold knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub state: State,
    /// `TemporaryFailureError`s in a row, up to the latest outcome.
    pub streak: u32,
}

/// A change of an account's state: what consumers of `account.*` hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// `None` for an account's first event.
    pub previous: Option<State>,
    pub state: State,
    pub streak: u32,
}

impl Account {
    /// The account after `outcome`, and the transition, if its state changed.
    /// `account` is `None` for an account seen for the first time;
    /// `escalate_after` is `accounts.temporary_failures_to_escalate`.
    pub fn apply(
        account: Option<&Account>,
        outcome: &Outcome,
        escalate_after: u32,
    ) -> (Account, Option<Transition>) {
        let streak = match outcome {
            Outcome::Failed(code) if code.as_str() == "TemporaryFailureError" => {
                account.map_or(0, |a| a.streak).saturating_add(1)
            }
            _ => 0,
        };
        let state = match outcome {
            Outcome::Synced => State::Ok,
            Outcome::Failed(code) => match code.as_str() {
                "LoginFailedError" => State::NeedsReconnect {
                    reason: ReconnectReason::Credentials,
                },
                "SecurityQuestionError" => State::NeedsReconnect {
                    reason: ReconnectReason::Verification,
                },
                "TemporaryFailureError" => match account.map(|a| &a.state) {
                    // The user's or the support's action is still to be done.
                    Some(kept @ (State::NeedsReconnect { .. } | State::ContactProvider { .. })) => {
                        kept.clone()
                    }
                    _ if streak >= escalate_after => State::ContactProvider {
                        because: ContactReason::RepeatedTemporaryFailures,
                    },
                    _ => State::Retrying,
                },
                "UnhandledConnectorError" | "UnknownConnectorError" => State::ContactProvider {
                    because: ContactReason::ConnectorError(code.as_str().to_owned()),
                },
                other => State::Unknown {
                    code: other.to_owned(),
                },
            },
        };
        let previous = account.map(|a| a.state.clone());
        let transition = (previous.as_ref() != Some(&state)).then(|| Transition {
            previous,
            state: state.clone(),
            streak,
        });
        (Account { state, streak }, transition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESCALATE_AFTER: u32 = 3;

    fn failed(code: &str) -> Outcome {
        Outcome::Failed(ErrorCode::parse(code).unwrap())
    }

    /// Folds `outcomes` into one account; returns the states it went through
    /// (one per transition) and where it ended.
    fn fold(outcomes: &[Outcome]) -> (Vec<String>, Account) {
        let mut account: Option<Account> = None;
        let mut heard = Vec::new();
        for outcome in outcomes {
            let (next, transition) = Account::apply(account.as_ref(), outcome, ESCALATE_AFTER);
            if let Some(transition) = transition {
                heard.push(transition.state.to_string());
            }
            account = Some(next);
        }
        (heard, account.expect("at least one outcome"))
    }

    #[test]
    fn each_outcome_means_what_the_spec_says() {
        let cases: [(&str, Outcome, &str); 7] = [
            ("the account synced", Outcome::Synced, "ok"),
            (
                "LoginFailedError: requires a reconnection, new credentials",
                failed("LoginFailedError"),
                "needs_reconnect (credentials)",
            ),
            (
                "SecurityQuestionError: user input, a Reconnect process",
                failed("SecurityQuestionError"),
                "needs_reconnect (verification)",
            ),
            (
                "TemporaryFailureError: retried automatically, no need to take action",
                failed("TemporaryFailureError"),
                "retrying",
            ),
            (
                "UnhandledConnectorError: contact us with the account id",
                failed("UnhandledConnectorError"),
                "contact_provider (connector_error: UnhandledConnectorError)",
            ),
            (
                "UnknownConnectorError: contact us with the account id",
                failed("UnknownConnectorError"),
                "contact_provider (connector_error: UnknownConnectorError)",
            ),
            (
                "a code the spec does not list: routed, meaning unknown",
                failed("RateLimitedError"),
                "unknown (RateLimitedError)",
            ),
        ];
        for (sentence, outcome, expected) in cases {
            let (heard, _) = fold(&[outcome]);
            assert_eq!(heard, [expected], "{sentence}");
        }
    }

    #[test]
    fn a_daily_login_failure_is_heard_once_and_a_sync_ends_it() {
        let (heard, account) = fold(&[
            failed("LoginFailedError"),
            failed("LoginFailedError"),
            failed("LoginFailedError"),
            Outcome::Synced,
        ]);
        assert_eq!(heard, ["needs_reconnect (credentials)", "ok"]);
        assert_eq!(account.state, State::Ok);
    }

    #[test]
    fn temporary_failures_that_keep_happening_escalate_once_at_the_threshold() {
        // "if this error keeps happening for the same account, it is advised
        // to contact us with the account id"
        let temporary = failed("TemporaryFailureError");
        let (heard, _) = fold(&[temporary.clone(), temporary.clone()]);
        assert_eq!(heard, ["retrying"], "two are not yet 'keeps happening'");
        let (heard, account) = fold(&[temporary.clone(), temporary.clone(), temporary.clone()]);
        assert_eq!(
            heard,
            ["retrying", "contact_provider (repeated_temporary_failures)"],
            "the third, the threshold, escalates"
        );
        assert_eq!(account.streak, 3);
        let (heard, account) = fold(&[
            temporary.clone(),
            temporary.clone(),
            temporary.clone(),
            temporary,
        ]);
        assert_eq!(heard.len(), 2, "the fourth is not heard again: {heard:?}");
        assert_eq!(account.streak, 4);
    }

    #[test]
    fn a_streak_is_temporary_failures_in_a_row() {
        let (heard, account) = fold(&[
            failed("TemporaryFailureError"),
            failed("TemporaryFailureError"),
            Outcome::Synced,
            failed("TemporaryFailureError"),
            failed("TemporaryFailureError"),
        ]);
        assert_eq!(heard, ["retrying", "ok", "retrying"]);
        assert_eq!(account.streak, 2);
    }

    #[test]
    fn a_temporary_failure_leaves_what_someone_must_still_do() {
        let (heard, account) = fold(&[
            failed("SecurityQuestionError"),
            failed("TemporaryFailureError"),
            failed("TemporaryFailureError"),
            failed("TemporaryFailureError"),
        ]);
        assert_eq!(heard, ["needs_reconnect (verification)"]);
        assert_eq!(account.streak, 3);

        let (heard, _) = fold(&[
            failed("UnhandledConnectorError"),
            failed("TemporaryFailureError"),
        ]);
        assert_eq!(
            heard,
            ["contact_provider (connector_error: UnhandledConnectorError)"]
        );
    }

    #[test]
    fn a_new_reason_within_a_state_is_heard() {
        let (heard, _) = fold(&[
            failed("LoginFailedError"),
            failed("SecurityQuestionError"),
            failed("UnknownConnectorError"),
            failed("UnhandledConnectorError"),
        ]);
        assert_eq!(
            heard,
            [
                "needs_reconnect (credentials)",
                "needs_reconnect (verification)",
                "contact_provider (connector_error: UnknownConnectorError)",
                "contact_provider (connector_error: UnhandledConnectorError)",
            ]
        );
    }

    #[test]
    fn a_state_is_stored_and_shown_as_name_reason_and_code() {
        let states = [
            State::Ok,
            State::NeedsReconnect {
                reason: ReconnectReason::Credentials,
            },
            State::NeedsReconnect {
                reason: ReconnectReason::Verification,
            },
            State::Retrying,
            State::ContactProvider {
                because: ContactReason::RepeatedTemporaryFailures,
            },
            State::ContactProvider {
                because: ContactReason::ConnectorError("UnhandledConnectorError".into()),
            },
            State::Unknown {
                code: "RateLimitedError".into(),
            },
        ];
        for state in states {
            let parts = (StateName::from(&state), state.reason(), state.code());
            assert_eq!(
                State::from_parts(parts.0, parts.1, parts.2).as_ref(),
                Some(&state),
                "{state}"
            );
        }
        let json = serde_json::to_value(State::ContactProvider {
            because: ContactReason::ConnectorError("UnknownConnectorError".into()),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "contact_provider", "reason": "connector_error", "code": "UnknownConnectorError"})
        );
        assert_eq!(
            State::from_parts(StateName::Ok, Some(Reason::Credentials), None),
            None
        );
    }

    #[test]
    fn the_first_event_of_an_account_is_a_transition_from_nothing() {
        let (_, transition) = Account::apply(None, &Outcome::Synced, ESCALATE_AFTER);
        let transition = transition.expect("a first event is heard");
        assert_eq!(transition.previous, None);
        assert_eq!(transition.state, State::Ok);
    }
}
