//! Logging through `tracing`: human-readable text by default, one JSON object
//! per line with `log_format = "json"`. Verbosity follows `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// What is logged when `RUST_LOG` is unset: our own events, and only lapin's
/// warnings (it logs every connection step at info). Not lapin's channel
/// errors: every one also comes back to the operation that caused it, which
/// logs it once with what it means (a refused declare, a deleted queue), and
/// lapin's own line would repeat it as an unexplained ERROR.
const DEFAULT_FILTER: &str = "info,lapin=warn,lapin::channel=off,amq_protocol=warn";

/// Installs the global subscriber; a second call (as in tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
