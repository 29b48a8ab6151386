//! Logging through `tracing`: human-readable text by default, one JSON object
//! per line with `log_format = "json"`. Verbosity follows `RUST_LOG`, except
//! that lines which would print a whole message, and lapin's own errors, are
//! never written.
//!
//! ERROR means a human must act, at any verbosity. lapin logs as errors what
//! the relay expects and handles: the passive declares that find an object
//! missing before the relay creates it, every step of a reconnection. Each
//! of those failures also comes back to the operation that caused it, and the
//! relay logs it once, with what it means and what to do, at the level it
//! deserves.

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
    let filter = levels.and(filter_fn(written));
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

/// False, whatever `RUST_LOG` says, for lapin's lines that print a whole
/// message (a returned message, a warning; every frame, trace: the body
/// holds `user.loginName`, personal data, and the relay logs a return
/// without it), and for lapin's errors (see the module's comment).
fn written(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    let lapin = target.starts_with("lapin") || target.starts_with("amq_protocol");
    let frames = *meta.level() == Level::TRACE
        && (target.starts_with("lapin::channels") || target.starts_with("lapin::frames"));
    let error = lapin && *meta.level() == Level::ERROR;
    !(frames || error || target.starts_with("lapin::returned_messages"))
}

#[cfg(test)]
mod tests {
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;

    use super::*;

    struct Site;
    impl tracing::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unimplemented!()
        }
    }
    static SITE: Site = Site;

    fn meta(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&SITE)),
            Kind::EVENT,
        )
    }

    #[test]
    fn lapins_errors_are_never_written_but_its_other_lines_and_ours_are() {
        assert!(!written(&meta("lapin::io_loop", Level::ERROR)));
        assert!(!written(&meta("lapin::channel", Level::ERROR)));
        assert!(written(&meta("lapin::io_loop", Level::WARN)));
        assert!(written(&meta("lapin::connection", Level::INFO)));
        assert!(written(&meta("hookrelay::broker::status", Level::ERROR)));
        assert!(!written(&meta("lapin::returned_messages", Level::WARN)));
        assert!(!written(&meta("lapin::frames", Level::TRACE)));
    }
}
