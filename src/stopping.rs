//! The one way the relay tells its background tasks to stop: a [`Switch`]
//! that `run_until_stopped` (or the broker's shutdown) turns once, and a
//! [`Stopping`] each task holds and selects on.

use tokio::sync::watch;

/// Turned once, when the relay stops; every [`Stopping`] from it sees it.
#[derive(Debug)]
pub(crate) struct Switch(watch::Sender<bool>);

impl Switch {
    pub(crate) fn new() -> Switch {
        Switch(watch::Sender::new(false))
    }

    /// Tells every holder of a [`Stopping`] to stop.
    pub(crate) fn stop(&self) {
        self.0.send_replace(true);
    }

    pub(crate) fn subscribe(&self) -> Stopping {
        Stopping(self.0.subscribe())
    }
}

/// A task's side of the [`Switch`].
#[derive(Debug, Clone)]
pub(crate) struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Resolves once the relay is stopping (or the switch is gone, which
    /// means the same).
    pub(crate) async fn stopped(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }
}
