//! Following the history for as long as the relay runs, as the console's
//! index and its live account book do: a session reads the stream on a
//! connection of its own until it fails; then the follower says so once,
//! waits (1 s, doubling up to 30 s) and starts a new session. A session that
//! had caught up with the stream was healthy: a later loss is said again and
//! retried quickly.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::broker::Broker;

/// Runs `session` again and again until `stopping` turns true, the first
/// time once the relay is connected (a new exchange's stream does not exist
/// before the relay declares it: that is no failure to report). `caught_up`
/// is the follower's flag: a session sets it once it has reached the end of
/// the stream it saw; it is cleared between sessions. `meanwhile` says what
/// a failure costs, for its warning.
pub(crate) async fn keep_following<F, Fut>(
    what: &str,
    meanwhile: &str,
    caught_up: &AtomicBool,
    broker: &Broker,
    mut stopping: watch::Receiver<bool>,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    tokio::select! {
        () = broker.connected() => {}
        _ = stopping.wait_for(|stop| *stop) => return,
    }
    let mut backoff = Duration::from_secs(1);
    let mut warned = false;
    loop {
        let result = tokio::select! {
            result = session() => result,
            _ = stopping.wait_for(|stop| *stop) => return,
        };
        if caught_up.swap(false, Ordering::AcqRel) {
            warned = false;
            backoff = Duration::from_secs(1);
        }
        if let Err(err) = result
            && !warned
        {
            warn!(
                error = format!("{err:#}"),
                "{what}: cannot follow the history; retrying ({meanwhile})"
            );
            warned = true;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
