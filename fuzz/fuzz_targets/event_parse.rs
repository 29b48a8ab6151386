//! `Event::parse` on any bytes: it returns, never panics, and whatever it
//! accepts routes to a key that cannot escape its place in the topic exchange.
#![no_main]

use std::sync::LazyLock;

use hookrelay::event::Event;
use libfuzzer_sys::fuzz_target;
use regex::Regex;

static SAFE_ROUTING_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^sync\.(account|error\.[A-Za-z][A-Za-z0-9_]{0,63})$").unwrap());

fuzz_target!(|body: &[u8]| {
    match Event::parse(body) {
        Ok(event) => {
            let key = event.routing_key();
            assert!(
                SAFE_ROUTING_KEY.is_match(key.as_str()),
                "unsafe key {key:?}"
            );
            assert!(!event.user_id().is_empty() && !event.account_id().is_empty());
        }
        Err(err) => {
            // The reason goes into a header and a log line: bounded, one line.
            let reason = err.reason();
            assert!(reason.len() < 200 && !reason.contains('\n'), "{reason:?}");
        }
    }
});
