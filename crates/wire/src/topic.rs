//! AMQP topic patterns, matched the way a topic exchange matches them: words
//! separated by `.`, `*` matches exactly one word, `#` zero or more.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern(String);

impl TopicPattern {
    pub fn matches(&self, routing_key: &str) -> bool {
        let pattern: Vec<&str> = self.0.split('.').collect();
        let key: Vec<&str> = routing_key.split('.').collect();
        matches_words(&pattern, &key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether some routing key the relay publishes can match: `sync.account`,
    /// or `sync.error.<code>` for any code (the sender adds codes, so any word
    /// counts). A binding that cannot (`sync.acount`) is a typo that would
    /// leave its queue empty forever.
    pub fn can_match_an_event(&self) -> bool {
        if self.matches("sync.account") {
            return true;
        }
        // The code is the one free word: only equality with a word of the
        // pattern (or a wildcard) can decide, so those words, and one more,
        // are every case there is.
        let words = self.0.split('.').filter(|w| !matches!(*w, "*" | "#"));
        std::iter::once("AnyCode")
            .chain(words)
            .any(|code| self.matches(&format!("sync.error.{code}")))
    }
}

impl TopicPattern {
    /// Whether some routing key the relay announces can match:
    /// `account.<state>` for one of the states it knows, or
    /// `provider.<kind>`.
    pub fn can_match_a_change(&self) -> bool {
        super::changes::routing_keys()
            .iter()
            .any(|key| self.matches(key))
    }
}

fn matches_words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| matches_words(rest, &key[skip..])),
        Some((&"*", rest)) => !key.is_empty() && matches_words(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && matches_words(rest, &key[1..]),
    }
}

/// A string that cannot be a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a topic pattern is 1 to 255 characters")]
pub struct InvalidPattern;

impl FromStr for TopicPattern {
    type Err = InvalidPattern;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 255 {
            Err(InvalidPattern)
        } else {
            Ok(TopicPattern(s.to_owned()))
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_semantics() {
        let cases = [
            ("#", "sync.account", true),
            ("#", "a", true),
            ("sync.#", "sync", true),
            ("sync.#", "sync.error.LoginFailedError", true),
            ("sync.*", "sync.account", true),
            ("sync.*", "sync.error.LoginFailedError", false),
            ("sync.error.*", "sync.error.LoginFailedError", true),
            ("sync.error.*", "sync.error", false),
            ("*.error.#", "sync.error.X", true),
            ("#.LoginFailedError", "sync.error.LoginFailedError", true),
            (
                "#.LoginFailedError",
                "sync.error.SecurityQuestionError",
                false,
            ),
            ("sync.#.X", "sync.X", true),
            ("sync.account", "sync.account", true),
            ("sync.account", "sync.accounts", false),
            ("sync.account", "sync.account.extra", false),
        ];
        for (pattern, key, expected) in cases {
            let pattern: TopicPattern = pattern.parse().unwrap();
            assert_eq!(pattern.matches(key), expected, "{pattern} vs {key}");
        }
    }

    #[test]
    fn a_pattern_must_be_able_to_match_an_event() {
        let can = |pattern: &str| {
            pattern
                .parse::<TopicPattern>()
                .unwrap()
                .can_match_an_event()
        };
        for pattern in [
            "#",
            "sync.#",
            "sync.account",
            "sync.error.*",
            "sync.error.LoginFailedError",
            "sync.error.BrandNewError",
            "#.LoginFailedError",
            "*.*.Foo",
            "sync.*",
        ] {
            assert!(can(pattern), "{pattern}");
        }
        for pattern in [
            "sync.acount",
            "sync.errors.*",
            "sync.error",
            "account.#",
            "sync.error.*.x",
        ] {
            assert!(!can(pattern), "{pattern}");
        }
    }

    #[test]
    fn an_empty_pattern_is_refused() {
        assert!("".parse::<TopicPattern>().is_err());
    }
}
