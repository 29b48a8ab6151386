//! `x-dedup-key`: what identifies an event, hashed, so that a consumer can
//! tell the sender's retry of a webhook (the same key, another `message_id`)
//! from a new event. The relay publishes every copy the sender delivers
//! (repeats are events: "if this error keeps happening… contact us"); the
//! key is for consumers that want to drop a retry, and the recipe is in
//! docs/src/consumer.md so that any language can compute it.

use sha2::{Digest, Sha256};

use crate::event::Event;

/// The SHA-256 of what identifies an event (64 hex digits in `x-dedup-key`):
/// hook, client id, user id, account id, provider and error code, never
/// `loginName`. Each field is hashed as its UTF-8 length in decimal, `:`,
/// and its bytes (an absent provider or error code as the empty string), so
/// no two lists of fields hash alike; docs/src/consumer.md shows it in Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey([u8; 32]);

impl DedupKey {
    pub fn of(event: &Event, client_id: &str) -> DedupKey {
        let fields = [
            event.hook(),
            client_id,
            event.user_id(),
            event.account_id(),
            event.provider().unwrap_or(""),
            event.error_code().map_or("", |code| code.as_str()),
        ];
        let mut hash = Sha256::new();
        let mut digits = [0u8; 20];
        for field in fields {
            hash.update(decimal(field.len(), &mut digits));
            hash.update(b":");
            hash.update(field);
        }
        DedupKey(hash.finalize().into())
    }

    /// The key as the `x-dedup-key` header writes it: 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
        }
        hex
    }
}

/// `n` in decimal ASCII, written at the end of `buffer`.
fn decimal(mut n: usize, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &str) -> Event {
        Event::parse(body.as_bytes()).unwrap()
    }

    const ACCOUNT: &str = r#"{"hook":"SyncAccount","user":{"id":"u1","loginName":"alice"},"account":{"id":"a1","provider":"bank"}}"#;

    fn key() -> DedupKey {
        DedupKey::of(&event(ACCOUNT), "app")
    }

    #[test]
    fn the_key_is_what_identifies_the_event_and_not_the_login_name() {
        let same = DedupKey::of(&event(&ACCOUNT.replace("alice", "bob")), "app");
        assert_eq!(key(), same);
        assert_eq!(key().to_hex().len(), 64);
        for other in [
            DedupKey::of(&event(ACCOUNT), "other-app"),
            DedupKey::of(&event(&ACCOUNT.replace("\"u1\"", "\"u2\"")), "app"),
            DedupKey::of(&event(&ACCOUNT.replace("\"a1\"", "\"a2\"")), "app"),
            DedupKey::of(&event(&ACCOUNT.replace("bank", "other bank")), "app"),
            DedupKey::of(
                &event(
                    &ACCOUNT
                        .replace("SyncAccount", "SyncError")
                        .replace("\"bank\"}", "\"bank\"},\"error\":\"LoginFailedError\""),
                ),
                "app",
            ),
        ] {
            assert_ne!(key(), other);
        }
    }

    #[test]
    fn the_key_is_the_documented_hash() {
        // The recipe of docs/src/consumer.md, spelled out: a consumer in
        // another language computes the same key.
        let mut hash = Sha256::new();
        hash.update(b"11:SyncAccount3:app2:u12:a14:bank0:");
        let expected: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key().to_hex(), expected);
    }
}
