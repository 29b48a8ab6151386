//! Logging through `tracing`: human-readable text by default, one JSON object
//! per line with `log_format = "json"`. Verbosity follows `RUST_LOG`, except
//! that lines which would print a whole message are never written.

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::LogFormat;

/// What is logged when `RUST_LOG` is unset: our own events, and only lapin's
/// warnings (it logs every connection step at info). Not lapin's channel
/// errors: every one also comes back to the operation that caused it, which
/// logs it once with what it means (a refused declare, a deleted queue), and
/// lapin's own line would repeat it as an unexplained ERROR.
const DEFAULT_FILTER: &str = "info,lapin=warn,lapin::channel=off,amq_protocol=warn";

/// Installs the global subscriber; a second call (as in tests) is a no-op.
pub fn init(format: LogFormat) {
    let levels =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let filter = levels.and(filter_fn(carries_no_message));
    let layer = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// False for lapin's lines that print a whole message, whatever `RUST_LOG`
/// says: a returned message (a warning), and every frame (trace). The body
/// holds `user.loginName`, personal data, which stays out of logs; the relay
/// logs a return without it.
fn carries_no_message(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    let frames = *meta.level() == Level::TRACE
        && (target.starts_with("lapin::channels") || target.starts_with("lapin::frames"));
    !(frames || target.starts_with("lapin::returned_messages"))
}
