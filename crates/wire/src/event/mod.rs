//! The domain: a sync webhook, parsed once at the edge into a typed [`Event`].
//!
//! The rule, in one place ([`Event::parse`]): an event needs what routing and
//! its headers need, `hook`, `user.id`, `account.id`, and `error` for a
//! `SyncError`; without one of these it is quarantined. The other documented
//! fields, `user.loginName` and `account.provider`, the relay never uses: an
//! event without them, or with another type, is passed through with a
//! [`SchemaWarning`] (the `x-schema-warnings` header, a metric), not
//! quarantined. Unknown fields are allowed (the sender adds fields over time).
//! A body with a duplicate key is refused (see [`strict_json`]).
//!
//! An `Event` that exists is valid: its ids are non-empty and its [`RoutingKey`] is
//! safe to hand to a topic exchange (no `.`, `*` or `#` can come from the payload).
//! Parsing never echoes payload values in its error messages, because those
//! messages travel into logs and message headers and the payload carries
//! personal data (`user.loginName`).

pub mod strict_json;

use std::borrow::Cow;

use serde::de::MapAccess;

use strict_json::{Duplicates, Fields, Found, Object, Skip, StrictError, Text};

/// The error codes the sender documents. Others are still routed (the sender's own
/// lists disagree and it adds codes over time), but flagged as unknown.
pub const KNOWN_ERROR_CODES: [&str; 5] = [
    "LoginFailedError",
    "SecurityQuestionError",
    "TemporaryFailureError",
    "UnhandledConnectorError",
    "UnknownConnectorError",
];

/// The longest error code accepted: 1 letter + 63 word characters.
const MAX_CODE_LEN: usize = 64;

/// A webhook the sender documents, with the fields consumers route and react on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    kind: EventKind,
    user_id: String,
    account_id: String,
    /// `account.provider` when it is a string: part of the dedup key.
    provider: Option<String>,
    warnings: Vec<SchemaWarning>,
}

/// A documented field the relay does not need, absent or of another type:
/// the event is passed through, flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SchemaWarning {
    pub field: OptionalField,
    pub problem: FieldProblem,
}

/// The documented fields an event may go without.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptionalField {
    /// `user.loginName`: personal data the relay never reads.
    LoginName,
    /// `account.provider`: informational.
    Provider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldProblem {
    Missing,
    NotAString,
}

/// Which hook fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// An account synced successfully.
    SyncAccount,
    /// An account failed to sync, and why.
    SyncError(ErrorCode),
}

/// The `error` of a `SyncError`: a word that is safe inside a routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorCode(String);

/// A topic-exchange routing key built from an [`Event`] (or read back from the
/// spool, where its `FromStr` checks it again); never from raw input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingKey(String);

/// Why a body is not a valid event. The text names the field, never its value
/// (only a hook name that is a plain word is quoted: it is not personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not valid JSON ({category} error at line {line} column {column})")]
    Syntax {
        category: &'static str,
        line: usize,
        column: usize,
    },
    /// The key's path, e.g. `user.id`; a key that is not a plain word is `?`.
    #[error("the key `{0}` appears twice in one object: JSON readers disagree on which one counts")]
    DuplicateKey(String),
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    #[error("unknown hook `{0}`: expected SyncAccount or SyncError")]
    UnknownHook(String),
    #[error("unknown hook: expected SyncAccount or SyncError")]
    UnreadableHook,
    #[error("`error` must match ^[A-Za-z][A-Za-z0-9_]{{0,63}}$")]
    InvalidErrorCode,
}

/// A stored routing key that is not one an [`Event`] can have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an event routing key")]
pub struct InvalidRoutingKey;

impl Event {
    /// Parses a webhook body: see the rule at the top of this module.
    pub fn parse(body: &[u8]) -> Result<Event, ParseError> {
        let duplicates = Duplicates::default();
        let root = Object {
            duplicates: &duplicates,
            fields: Root::default(),
        };
        let Found::Is(root) = strict_json::read(body, root, &duplicates)? else {
            return Err(ParseError::NotAnObject);
        };
        root.event()
    }

    /// The documented fields this event goes without.
    pub fn warnings(&self) -> &[SchemaWarning] {
        &self.warnings
    }

    /// The hook's name as the sender spells it.
    pub fn hook(&self) -> &'static str {
        match self.kind {
            EventKind::SyncAccount => "SyncAccount",
            EventKind::SyncError(_) => "SyncError",
        }
    }

    pub fn error_code(&self) -> Option<&ErrorCode> {
        match &self.kind {
            EventKind::SyncAccount => None,
            EventKind::SyncError(code) => Some(code),
        }
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// `account.provider`, when the body has it as a string.
    pub fn provider(&self) -> Option<&str> {
        self.provider.as_deref()
    }

    /// `sync.account` or `sync.error.<code>`.
    pub fn routing_key(&self) -> RoutingKey {
        match &self.kind {
            EventKind::SyncAccount => RoutingKey("sync.account".to_owned()),
            EventKind::SyncError(code) => RoutingKey(format!("sync.error.{}", code.0)),
        }
    }
}

impl ErrorCode {
    /// Accepts `^[A-Za-z][A-Za-z0-9_]{0,63}$`: one routing-key word, no wildcards.
    pub fn parse(code: &str) -> Result<ErrorCode, ParseError> {
        if is_word(code) {
            Ok(ErrorCode(code.to_owned()))
        } else {
            Err(ParseError::InvalidErrorCode)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the sender documents this code.
    pub fn is_known(&self) -> bool {
        KNOWN_ERROR_CODES.contains(&self.0.as_str())
    }
}

impl RoutingKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RoutingKey {
    type Err = InvalidRoutingKey;

    /// Accepts exactly the keys an [`Event`] produces.
    fn from_str(key: &str) -> Result<RoutingKey, InvalidRoutingKey> {
        let valid = key == "sync.account" || key.strip_prefix("sync.error.").is_some_and(is_word);
        if valid {
            Ok(RoutingKey(key.to_owned()))
        } else {
            Err(InvalidRoutingKey)
        }
    }
}

impl From<StrictError> for ParseError {
    fn from(err: StrictError) -> ParseError {
        match err {
            StrictError::Syntax(err) => syntax_error(err),
            StrictError::DuplicateKey(path) => ParseError::DuplicateKey(path),
        }
    }
}

impl ParseError {
    /// The reason, fit for a log line, a message header and an HTTP answer.
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

fn is_word(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_CODE_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// serde_json's syntax messages carry a position but no payload values; its data
/// messages can quote values, which is why fields are checked by hand below.
fn syntax_error(err: serde_json::Error) -> ParseError {
    use serde_json::error::Category;
    ParseError::Syntax {
        category: match err.classify() {
            Category::Io => "Io",
            Category::Syntax => "Syntax",
            Category::Data => "Data",
            Category::Eof => "Eof",
        },
        line: err.line(),
        column: err.column(),
    }
}

/// The top-level fields an event is read from.
#[derive(Default)]
struct Root<'de> {
    hook: Found<Cow<'de, str>>,
    user: Found<Party<'de>>,
    account: Found<Party<'de>>,
    error: Found<Cow<'de, str>>,
}

/// `user` or `account`: an id, and one documented field the relay does not
/// use (`loginName`, `provider`), of which only its type is kept.
struct Party<'de> {
    /// The other field's key.
    other_key: &'static str,
    id: Found<Cow<'de, str>>,
    other: Found<Cow<'de, str>>,
}

impl<'de> Party<'de> {
    fn new(other_key: &'static str) -> Party<'de> {
        Party {
            other_key,
            id: Found::Missing,
            other: Found::Missing,
        }
    }
}

impl Root<'_> {
    /// The rule, in the order its reasons are given: the fields routing needs,
    /// then the documented ones it does not, then the hook and its error.
    fn event(self) -> Result<Event, ParseError> {
        let hook = required_str(self.hook, "hook")?;
        let user = required_object(self.user, "user")?;
        let account = required_object(self.account, "account")?;
        let user_id = required_non_empty(user.id, "user.id")?;
        let account_id = required_non_empty(account.id, "account.id")?;
        let mut warnings = Vec::new();
        // Documented, never kept: the login name is personal data.
        optional_str(
            user.other.map(drop),
            OptionalField::LoginName,
            &mut warnings,
        );
        let provider = match account.other {
            Found::Is(provider) => Some(provider.into_owned()),
            other => {
                optional_str(other.map(drop), OptionalField::Provider, &mut warnings);
                None
            }
        };

        let kind = match hook.as_ref() {
            "SyncAccount" => EventKind::SyncAccount,
            "SyncError" => {
                EventKind::SyncError(ErrorCode::parse(&required_str(self.error, "error")?)?)
            }
            other if is_word(other) => return Err(ParseError::UnknownHook(other.to_owned())),
            _ => return Err(ParseError::UnreadableHook),
        };
        Ok(Event {
            kind,
            user_id: user_id.into_owned(),
            account_id: account_id.into_owned(),
            provider,
            warnings,
        })
    }
}

impl<'de> Fields<'de> for Root<'de> {
    fn entry<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        duplicates: &Duplicates,
    ) -> Result<(), A::Error> {
        let party = |other_key| Object {
            duplicates,
            fields: Party::new(other_key),
        };
        match key {
            "hook" => self.hook = map.next_value_seed(Text(duplicates))?,
            "user" => self.user = map.next_value_seed(party("loginName"))?,
            "account" => self.account = map.next_value_seed(party("provider"))?,
            "error" => self.error = map.next_value_seed(Text(duplicates))?,
            _ => map.next_value_seed(Skip(duplicates))?,
        }
        Ok(())
    }
}

impl<'de> Fields<'de> for Party<'de> {
    fn entry<A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        duplicates: &Duplicates,
    ) -> Result<(), A::Error> {
        if key == "id" {
            self.id = map.next_value_seed(Text(duplicates))?;
        } else if key == self.other_key {
            self.other = map.next_value_seed(Text(duplicates))?;
        } else {
            map.next_value_seed(Skip(duplicates))?;
        }
        Ok(())
    }
}

/// Notes a warning when an optional documented field is absent or not a string.
fn optional_str(found: Found<()>, field: OptionalField, warnings: &mut Vec<SchemaWarning>) {
    let problem = match found {
        Found::Missing => FieldProblem::Missing,
        Found::Is(()) => return,
        Found::Other => FieldProblem::NotAString,
    };
    warnings.push(SchemaWarning { field, problem });
}

impl OptionalField {
    pub fn as_str(self) -> &'static str {
        match self {
            OptionalField::LoginName => "user.loginName",
            OptionalField::Provider => "account.provider",
        }
    }
}

impl FieldProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldProblem::Missing => "missing",
            FieldProblem::NotAString => "not a string",
        }
    }
}

impl std::fmt::Display for SchemaWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field.as_str(), self.problem.as_str())
    }
}

fn required_object<'de>(
    found: Found<Party<'de>>,
    field: &'static str,
) -> Result<Party<'de>, ParseError> {
    required(found, field, "an object")
}

fn required_str<'de>(
    found: Found<Cow<'de, str>>,
    field: &'static str,
) -> Result<Cow<'de, str>, ParseError> {
    required(found, field, "a string")
}

/// A field that must be there, and of the type `expected` names.
fn required<T>(
    found: Found<T>,
    field: &'static str,
    expected: &'static str,
) -> Result<T, ParseError> {
    match found {
        Found::Is(value) => Ok(value),
        Found::Missing => Err(ParseError::Missing(field)),
        Found::Other => Err(ParseError::WrongType { field, expected }),
    }
}

fn required_non_empty<'de>(
    found: Found<Cow<'de, str>>,
    field: &'static str,
) -> Result<Cow<'de, str>, ParseError> {
    match required_str(found, field)? {
        text if text.is_empty() => Err(ParseError::Empty(field)),
        text => Ok(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(extra: &str) -> String {
        format!(
            r#"{{"hook":"SyncAccount","user":{{"id":"u1","loginName":"alice"}},"account":{{"id":"a1","provider":"bank"}}{extra}}}"#
        )
    }

    fn error(code: &str) -> String {
        format!(
            r#"{{"hook":"SyncError","user":{{"id":"u1","loginName":"alice"}},"account":{{"id":"a1","provider":"bank"}},"error":{code}}}"#
        )
    }

    #[test]
    fn valid_payloads_parse_into_their_routing_key() {
        let cases = [
            (account(""), "sync.account"),
            (account(r#","extra":{"nested":[1,2]}"#), "sync.account"),
            (
                error(r#""LoginFailedError""#),
                "sync.error.LoginFailedError",
            ),
            (
                error(r#""SecurityQuestionError""#),
                "sync.error.SecurityQuestionError",
            ),
            (
                error(r#""TemporaryFailureError""#),
                "sync.error.TemporaryFailureError",
            ),
            (
                error(r#""UnhandledConnectorError""#),
                "sync.error.UnhandledConnectorError",
            ),
            (
                error(r#""UnknownConnectorError""#),
                "sync.error.UnknownConnectorError",
            ),
            (error(r#""BrandNewError""#), "sync.error.BrandNewError"),
            (error(r#""a""#), "sync.error.a"),
        ];
        for (body, key) in cases {
            let event = Event::parse(body.as_bytes())
                .unwrap_or_else(|e| panic!("{body} should parse, got {e}"));
            assert_eq!(event.routing_key().as_str(), key, "for {body}");
            assert_eq!(event.user_id(), "u1");
            assert_eq!(event.account_id(), "a1");
        }
    }

    #[test]
    fn documented_fields_routing_does_not_need_are_flagged_not_refused() {
        let cases = [
            (account(""), vec![]),
            (
                account("").replace(r#","loginName":"alice""#, ""),
                vec!["user.loginName missing"],
            ),
            (
                account("").replace(r#","provider":"bank""#, ""),
                vec!["account.provider missing"],
            ),
            (
                account("")
                    .replace(r#""loginName":"alice""#, r#""loginName":null"#)
                    .replace(r#","provider":"bank""#, r#","provider":7"#),
                vec![
                    "user.loginName not a string",
                    "account.provider not a string",
                ],
            ),
        ];
        for (body, expected) in cases {
            let event = Event::parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
            let warnings: Vec<String> = event.warnings().iter().map(|w| w.to_string()).collect();
            assert_eq!(warnings, expected, "{body}");
            assert_eq!(event.routing_key().as_str(), "sync.account");
        }
    }

    #[test]
    fn the_longest_allowed_code_is_routed_whole() {
        let code = format!("A{}", "_".repeat(63));
        let event = Event::parse(error(&format!("\"{code}\"")).as_bytes()).unwrap();
        assert_eq!(event.routing_key().as_str(), format!("sync.error.{code}"));
    }

    #[test]
    fn only_event_routing_keys_read_back() {
        for key in [
            "sync.account",
            "sync.error.LoginFailedError",
            "sync.error.a",
        ] {
            assert_eq!(key.parse::<RoutingKey>().unwrap().as_str(), key);
        }
        for key in [
            "",
            "sync",
            "sync.error.",
            "sync.error.#",
            "sync.error.a.b",
            "x.account",
        ] {
            assert!(key.parse::<RoutingKey>().is_err(), "{key}");
        }
    }

    #[test]
    fn documented_codes_are_known_and_others_are_not() {
        for code in KNOWN_ERROR_CODES {
            assert!(ErrorCode::parse(code).unwrap().is_known(), "{code}");
        }
        assert!(!ErrorCode::parse("NewCode").unwrap().is_known());
    }

    #[test]
    fn invalid_payloads_are_refused_with_a_reason() {
        let cases = [
            ("not json".to_owned(), "not valid JSON"),
            ("".to_owned(), "not valid JSON"),
            ("[1]".to_owned(), "must be a JSON object"),
            (
                r#"{"user":{},"account":{}}"#.to_owned(),
                "`hook` is missing",
            ),
            (
                account("").replace("SyncAccount", "SyncThing"),
                "unknown hook `SyncThing`",
            ),
            (
                account("").replace("SyncAccount", "sync.#"),
                "unknown hook:",
            ),
            (
                account("").replace(r#""id":"u1""#, r#""id":"""#),
                "`user.id` must not be empty",
            ),
            (
                account("").replace(r#""id":"u1""#, r#""id":7"#),
                "`user.id` must be a string",
            ),
            (
                account("").replace(r#""id":"a1""#, r#""id":"""#),
                "`account.id` must not be empty",
            ),
            (
                account("").replace(
                    r#""hook":"SyncAccount""#,
                    r#""hook":"SyncAccount","hook":"SyncError""#,
                ),
                "the key `hook` appears twice",
            ),
            (
                account("").replace(r#""id":"a1""#, r#""id":"a1","id":"a2""#),
                "the key `account.id` appears twice",
            ),
            (
                account(r#","extra":{"deep":[{"k":1,"k":2}]}"#),
                "the key `extra.deep.k` appears twice",
            ),
            (
                account("").replace(
                    r#""user":{"id":"u1","loginName":"alice"}"#,
                    r#""user":"alice""#,
                ),
                "`user` must be an object",
            ),
            (error("null"), "`error` must be a string"),
            (
                account("").replace("SyncAccount", "SyncError"),
                "`error` is missing",
            ),
            (error(r#""""#), "`error` must match"),
            (error(r#""Login.Failed""#), "`error` must match"),
            (error(r#""Login*""#), "`error` must match"),
            (error(r##""#""##), "`error` must match"),
            (error(r#""1Error""#), "`error` must match"),
            (error(r#""Lögin""#), "`error` must match"),
            (
                error(&format!(r#""A{}""#, "b".repeat(64))),
                "`error` must match",
            ),
        ];
        for (body, expected) in cases {
            let err = Event::parse(body.as_bytes()).expect_err(&body);
            assert!(
                err.reason().contains(expected),
                "for {body}: expected a reason containing {expected:?}, got {:?}",
                err.reason()
            );
        }
    }

    #[test]
    fn a_body_nested_past_the_reader_limit_is_refused_not_overflowed() {
        // serde_json stops at 128 levels; every value is walked, so a deep
        // body must end in that error, not in a stack overflow.
        for (open, close) in [("[", "]"), (r#"{"x":"#, "}")] {
            let body = format!("{}1{}", open.repeat(100_000), close.repeat(100_000));
            let err = Event::parse(body.as_bytes()).unwrap_err();
            assert!(matches!(err, ParseError::Syntax { .. }), "{err:?}");
            let body = format!("{}1{}", open.repeat(100), close.repeat(100));
            assert!(!matches!(
                Event::parse(body.as_bytes()),
                Err(ParseError::Syntax { .. })
            ));
        }
    }

    #[test]
    fn reasons_never_quote_payload_values() {
        let bodies = [
            r#"{"hook":"SyncAccount","user":{"id":12345,"loginName":"alice"},"account":{"id":"a1","provider":"p"}}"#,
            r#"{"hook":"SyncAccount","user":{"id":"u1","alice@example.com":1,"alice@example.com":2},"account":{"id":"a1"}}"#,
            r#"{"hook":"SyncAccount","user":"alice@example.com","account":{"id":"a1","provider":"p"}}"#,
            r#"{"hook":"SyncError","user":{"id":"u1","loginName":"alice@example.com"},"account":{"id":"a1","provider":"p"},"error":"alice@example.com"}"#,
        ];
        for body in bodies {
            let reason = Event::parse(body.as_bytes())
                .unwrap_err()
                .reason()
                .to_owned();
            assert!(!reason.contains("alice"), "{reason}");
            assert!(!reason.contains("12345"), "{reason}");
        }
    }

    mod properties {
        use proptest::prelude::*;
        use regex::Regex;
        use serde_json::json;

        use super::super::*;

        /// The issue's invariant, written as the regex itself rather than as
        /// code that could share a mistake with `is_word`.
        fn is_safe_routing_key(key: &str) -> bool {
            Regex::new(r"^sync\.(account|error\.[A-Za-z][A-Za-z0-9_]{0,63})$")
                .unwrap()
                .is_match(key)
        }

        /// A hook name: the two real ones, near misses, or anything.
        fn hook() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("SyncAccount".to_owned()),
                Just("SyncError".to_owned()),
                "Sync[A-Za-z]{0,8}",
                any::<String>(),
            ]
        }

        /// An error code: plausible words, routing-key metacharacters, or anything.
        fn code() -> impl Strategy<Value = String> {
            prop_oneof![
                "[A-Za-z][A-Za-z0-9_]{0,70}",
                // Around the 64-character limit.
                "[A-Za-z][A-Za-z0-9_]{61,65}",
                "[A-Za-z.*#_ -]{0,10}",
                any::<String>(),
            ]
        }

        /// The fields as they were read from a whole `serde_json::Value`,
        /// before `Event::parse` kept only its fields: the oracle the direct
        /// reading must agree with on every body, answer and reason alike.
        fn parse_from_tree(body: &[u8]) -> Result<Event, ParseError> {
            use serde_json::{Map, Value};
            let value = crate::event::strict_json::tree(body)?;
            let root = value.as_object().ok_or(ParseError::NotAnObject)?;
            let field = |obj: &Map<String, Value>, key: &str| match obj.get(key) {
                None => Found::Missing,
                Some(Value::String(s)) => Found::Is(Cow::Owned(s.clone())),
                Some(_) => Found::Other,
            };
            let party = |key: &'static str, other_key| match root.get(key) {
                None => Found::Missing,
                Some(Value::Object(obj)) => Found::Is(Party {
                    other_key,
                    id: field(obj, "id"),
                    other: field(obj, other_key),
                }),
                Some(_) => Found::Other,
            };
            Root {
                hook: field(root, "hook"),
                user: party("user", "loginName"),
                account: party("account", "provider"),
                error: field(root, "error"),
            }
            .event()
        }

        /// Any JSON value, with the keys the rule reads at any depth.
        fn json() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just(r#""SyncAccount""#.to_owned()),
                Just(r#""SyncError""#.to_owned()),
                Just(r#""\u0053yncError""#.to_owned()),
                Just(r#""LoginFailedError""#.to_owned()),
                Just(r#""""#.to_owned()),
                Just(r#""u1""#.to_owned()),
                Just(r#""a.b""#.to_owned()),
                Just("7".to_owned()),
                Just("-2.5e3".to_owned()),
                Just("null".to_owned()),
                Just("true".to_owned()),
            ];
            let key = prop_oneof![
                Just("hook"),
                Just("user"),
                Just("id"),
                Just("loginName"),
                Just("provider"),
                Just("error"),
                Just("x"),
            ];
            leaf.prop_recursive(3, 24, 4, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..3)
                        .prop_map(|items| format!("[{}]", items.join(","))),
                    proptest::collection::vec((key.clone(), inner), 0..4).prop_map(|entries| {
                        let entries: Vec<String> = entries
                            .iter()
                            .map(|(k, v)| format!(r#""{k}":{v}"#))
                            .collect();
                        format!("{{{}}}", entries.join(","))
                    }),
                ]
            })
        }

        /// One object's entries from `fields`, each kept with probability
        /// 0.95 and one in thirty written twice (half of those with an escaped
        /// key), with another key added one time in four, in any order.
        fn entries(
            fields: Vec<(&'static str, BoxedStrategy<String>)>,
        ) -> impl Strategy<Value = String> {
            let fields: Vec<_> = fields
                .into_iter()
                .map(|(key, value)| {
                    (proptest::bool::weighted(0.95), 0..60u8, value).prop_map(
                        move |(kept, how, value)| match (kept, how) {
                            (false, _) => vec![],
                            (true, 0) => vec![format!(r#""{key}":{value}"#); 2],
                            (true, 1) => vec![
                                format!(r#""{key}":{value}"#),
                                format!(r#""\u00{:x}{}":{value}"#, key.as_bytes()[0], &key[1..]),
                            ],
                            (true, _) => vec![format!(r#""{key}":{value}"#)],
                        },
                    )
                })
                .collect();
            (fields, proptest::option::weighted(0.25, json()))
                .prop_map(|(fields, extra)| {
                    let mut entries: Vec<String> = fields.into_iter().flatten().collect();
                    entries.extend(extra.map(|value| format!(r#""x":{value}"#)));
                    entries
                })
                .prop_shuffle()
                .prop_map(|entries| format!("{{{}}}", entries.join(",")))
        }

        /// A webhook body, valid or nearly: every field the rule reads, each
        /// right or wrong in one of the ways it can be; sometimes not an
        /// object at all, cut short, or followed by something.
        fn body() -> impl Strategy<Value = Vec<u8>> {
            // A string from `good` most of the time, else from `bad`, else any value.
            let text = |good: &'static [&'static str], bad: &'static [&'static str]| {
                let quoted = |list: &[&str]| -> Vec<String> {
                    list.iter().map(|s| format!("\"{s}\"")).collect()
                };
                prop_oneof![
                    16 => proptest::sample::select(quoted(good)),
                    1 => proptest::sample::select(quoted(bad)),
                    1 => json(),
                ]
                .boxed()
            };
            let party = |other: &'static str| {
                let fields = vec![
                    ("id", text(&["u1", "a-1"], &[""])),
                    (other, text(&["someone"], &["é"])),
                ];
                prop_oneof![12 => entries(fields), 1 => json()].boxed()
            };
            let root = entries(vec![
                (
                    "hook",
                    text(
                        &["SyncAccount", "SyncError", "\\u0053yncError"],
                        &["SyncThing", "sync.#"],
                    ),
                ),
                ("user", party("loginName")),
                ("account", party("provider")),
                (
                    "error",
                    text(&["LoginFailedError", "NewCode"], &["Login.Failed", ""]),
                ),
            ]);
            let value = prop_oneof![9 => root, 1 => json()];
            (
                value,
                0..20u8,
                prop_oneof![36 => Just(""), 2 => Just(" "), 1 => Just("x"), 1 => Just("}")],
            )
                .prop_map(|(value, cut, tail)| {
                    // One body in twenty is cut short somewhere, as bytes: the
                    // cut may fall inside a character.
                    let mut body = value.into_bytes();
                    if cut == 0 {
                        body.truncate(body.len() / 2);
                    }
                    body.extend_from_slice(tail.as_bytes());
                    body
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn fields_are_read_as_from_the_whole_tree(body in body()) {
                prop_assert_eq!(Event::parse(&body), parse_from_tree(&body), "{}", String::from_utf8_lossy(&body));
            }
        }

        proptest! {
            #[test]
            fn any_bytes_parse_or_fail_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Ok(event) = Event::parse(&body) {
                    prop_assert!(is_safe_routing_key(event.routing_key().as_str()));
                }
            }

            #[test]
            fn a_parsed_event_always_has_a_safe_routing_key(
                hook in hook(),
                code in code(),
                user_id in any::<String>(),
                login in "[a-z]{10}@example\\.org",
            ) {
                let body = json!({
                    "hook": hook,
                    "user": {"id": user_id, "loginName": login},
                    "account": {"id": "a-1", "provider": "Bank"},
                    "error": code,
                })
                .to_string();
                match Event::parse(body.as_bytes()) {
                    Ok(event) => {
                        let key = event.routing_key();
                        prop_assert!(is_safe_routing_key(key.as_str()), "{}", key.as_str());
                        if let Some(parsed) = event.error_code() {
                            prop_assert_eq!(parsed.as_str(), code.as_str());
                        }
                    }
                    // The reason travels into headers and logs: never the login.
                    Err(err) => prop_assert!(!err.reason().contains(&login)),
                }
            }
        }
    }
}
