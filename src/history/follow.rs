//! Following the history for as long as the relay runs, as the console's
//! index and its live account book, and the dedup keys, do: a session reads
//! the stream on a connection of its own until it fails; then the follower
//! says so once, waits (1 s, doubling up to 30 s) and starts a new session.
//! A session that had caught up with the stream was healthy: a later loss is
//! said again and retried quickly.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::warn;

use crate::backoff::Backoff;
use crate::broker::{self, Broker};
use crate::stopping::Stopping;

/// What follows the history: its names, its flag, and one session's read.
pub(crate) trait Follower: Sync {
    /// Its name in a warning, e.g. `history index`.
    const WHAT: &'static str;
    /// What a failure costs until it reads again, for the warning.
    const MEANWHILE: &'static str;
    /// Its connection's name in RabbitMQ, e.g. `hookrelay-index`.
    const CONNECTION: &'static str;

    /// Set by a session once it has read to the end of the stream it saw.
    fn caught_up_flag(&self) -> &AtomicBool;

    /// Reads `stream` on `connection` for as long as it can.
    fn read(
        &self,
        connection: &lapin::Connection,
        stream: &str,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Keeps `follower` reading `stream` until `stopping` turns true, each
/// session on a connection of its own.
pub(crate) async fn follow<F: Follower>(
    follower: &F,
    broker: Broker,
    stream: String,
    stopping: Stopping,
) {
    let amqp = broker.amqp().clone();
    let session = || async {
        let connection = broker::connect(&amqp, amqp.tool_connection_name(F::CONNECTION)).await?;
        let result = follower.read(&connection, &stream).await;
        broker::close(&connection, &format!("{} stopped", F::WHAT)).await;
        result
    };
    let flag = follower.caught_up_flag();
    keep_following(F::WHAT, F::MEANWHILE, flag, &broker, stopping, session).await;
}

/// Runs `session` again and again until `stopping` turns true, the first
/// time once the relay is connected (a new exchange's stream does not exist
/// before the relay declares it: that is no failure to report). `caught_up`
/// is the follower's flag: a session sets it once it has reached the end of
/// the stream it saw; it is cleared between sessions. `meanwhile` says what
/// a failure costs, for its warning.
async fn keep_following<F, Fut>(
    what: &str,
    meanwhile: &str,
    caught_up: &AtomicBool,
    broker: &Broker,
    mut stopping: Stopping,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    tokio::select! {
        () = broker.connected() => {}
        () = stopping.stopped() => return,
    }
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut warned = false;
    loop {
        let result = tokio::select! {
            result = session() => result,
            () = stopping.stopped() => return,
        };
        if caught_up.swap(false, Ordering::AcqRel) {
            warned = false;
            backoff.reset();
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
        if !Backoff::sleep(backoff.next_delay(), &mut stopping).await {
            return;
        }
    }
}
