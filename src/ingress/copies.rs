//! Identical copies of a webhook in flight on this relay: one publish, one 2xx.
//!
//! The sender stops sending an event only once it hears a 2xx, and sends it
//! again when it times out. Repeats are events (a `TemporaryFailureError`
//! that "keeps happening" is the spec's own signal), so every copy the sender
//! delivers is published, except one: a copy that arrives while a
//! byte-identical one from the same client is still being stored here (the
//! sender gave up waiting and sent again). That copy joins the first one's
//! *flight*: the message is stored once, and only the newest copy waiting
//! hears the answer (200 with the stored message's id); every older copy is
//! answered 503 *superseded* at once. If the flight fails, the newest copy
//! stores itself. So, for each client and body, the 2xx answers equal the
//! messages stored, whatever the timing: the sender can never lose an event
//! to us, and consumers get one message per 2xx.
//!
//! A flight runs in a task of its own (on the HTTP worker that started it),
//! not in the request that started it: a sender that hangs up does not cancel
//! a publish half-way, so the copy that joined it never publishes the same
//! webhook a second time.
//!
//! Copies on two relays behind a balancer are two events, each published and
//! answered 2xx once: the consumer sees the same `x-dedup-key` on both.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::unpoisoned::Locked;
use bytes::Bytes;
use tokio::sync::watch;

/// The flights in progress, by client id and body.
pub(crate) struct Copies<T> {
    flights: Mutex<HashMap<Copy, Arc<Flight<T>>>>,
}

/// What makes two webhooks the same copy: the client id and the exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Copy {
    client_id: String,
    body: Bytes,
}

/// One store of one webhook, and the copies waiting for it.
struct Flight<T> {
    waiting: watch::Sender<Waiting>,
    /// Taken by the newest copy once the flight has landed.
    outcome: Mutex<Option<Landed<T>>>,
}

/// Which copy the flight answers, and whether it has landed.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// The ticket of the newest copy: the one the answer is for.
    newest: u64,
    landed: bool,
}

/// How a flight ended.
enum Landed<T> {
    Done(T),
    /// Its task ended without an outcome (the worker stopping).
    Abandoned,
}

/// What one copy hears.
#[derive(Debug)]
pub(crate) enum Answer<T> {
    /// The flight this copy started or joined landed, and this copy is the
    /// newest: it answers for the stored message. `started`: this copy's own
    /// message was stored (it did not join another's flight).
    Landed { outcome: T, started: bool },
    /// A newer identical copy joined while this one waited: it answers.
    Superseded,
    /// The flight's task ended without an outcome.
    Abandoned,
}

impl<T: 'static> Copies<T> {
    pub(crate) fn new() -> Arc<Copies<T>> {
        Arc::new(Copies {
            flights: Mutex::new(HashMap::new()),
        })
    }

    /// Stores this copy: joins the flight of an identical copy in flight, or
    /// starts one with `store`, run in a task of its own on the current
    /// worker (a `LocalSet`: actix's workers run in one). Waits for the
    /// answer this copy gets.
    pub(crate) async fn store<F, Fut>(
        self: &Arc<Self>,
        client_id: &str,
        body: &Bytes,
        store: F,
    ) -> Answer<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + 'static,
    {
        let copy = Copy {
            client_id: client_id.to_owned(),
            body: body.clone(),
        };
        let (flight, ticket) = match self.lock().entry(copy) {
            Entry::Occupied(joined) => {
                let flight = joined.get().clone();
                let mut ticket = 0;
                flight.waiting.send_modify(|waiting| {
                    waiting.newest += 1;
                    ticket = waiting.newest;
                });
                (flight, ticket)
            }
            Entry::Vacant(vacant) => {
                let copy = vacant.key().clone();
                let flight = vacant.insert(Arc::new(Flight::new())).clone();
                let landing = Landing {
                    copies: self.clone(),
                    copy: Some(copy),
                    flight: flight.clone(),
                };
                let stored = store();
                tokio::task::spawn_local(async move { landing.land(stored.await) });
                (flight, 0)
            }
        };
        let mut waiting = flight.waiting.subscribe();
        let seen = *waiting
            .wait_for(|w| w.newest != ticket || w.landed)
            .await
            .expect("the flight holds its sender");
        if seen.newest != ticket {
            return Answer::Superseded;
        }
        match flight.outcome.locked().take() {
            Some(Landed::Done(outcome)) => Answer::Landed {
                outcome,
                started: ticket == 0,
            },
            Some(Landed::Abandoned) | None => Answer::Abandoned,
        }
    }

    /// Flights in progress.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Copy, Arc<Flight<T>>>> {
        self.flights.locked()
    }
}

impl<T> Flight<T> {
    fn new() -> Flight<T> {
        Flight {
            waiting: watch::Sender::new(Waiting {
                newest: 0,
                landed: false,
            }),
            outcome: Mutex::new(None),
        }
    }
}

/// Ends a flight: out of the map first (a copy that comes after the landing
/// is a new event), then its outcome to the newest copy. Dropped without
/// landing (its task cancelled), it lands as abandoned, so no copy waits
/// forever.
struct Landing<T> {
    copies: Arc<Copies<T>>,
    /// `None` once landed.
    copy: Option<Copy>,
    flight: Arc<Flight<T>>,
}

impl<T> Landing<T> {
    fn land(mut self, outcome: T) {
        self.finish(Landed::Done(outcome));
    }

    fn finish(&mut self, landed: Landed<T>) {
        let Some(copy) = self.copy.take() else {
            return;
        };
        self.copies.flights.locked().remove(&copy);
        *self.flight.outcome.locked() = Some(landed);
        self.flight.waiting.send_modify(|w| w.landed = true);
    }
}

impl<T> Drop for Landing<T> {
    fn drop(&mut self) {
        self.finish(Landed::Abandoned);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use tokio::sync::oneshot;
    use tokio::task::LocalSet;

    use super::*;

    const BODY: &[u8] = br#"{"hook":"SyncAccount"}"#;

    /// A store that lands when the test says, counting how often it started.
    fn gated(started: &Rc<Cell<u32>>) -> (oneshot::Sender<u32>, impl FnOnce() -> Gate + use<>) {
        let (open, gate) = oneshot::channel();
        let started = started.clone();
        (open, move || {
            started.set(started.get() + 1);
            Gate(gate)
        })
    }

    struct Gate(oneshot::Receiver<u32>);

    impl Future for Gate {
        type Output = u32;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<u32> {
            std::pin::Pin::new(&mut self.0)
                .poll(cx)
                .map(|r| r.unwrap_or(0))
        }
    }

    #[tokio::test]
    async fn a_copy_in_flight_joins_it_the_older_is_superseded_and_one_is_stored() {
        LocalSet::new()
            .run_until(async {
                let copies = Copies::<u32>::new();
                let started = Rc::new(Cell::new(0));
                let body = Bytes::from_static(BODY);
                let (land, store) = gated(&started);
                let first = tokio::task::spawn_local({
                    let (copies, body) = (copies.clone(), body.clone());
                    async move { copies.store("app", &body, store).await }
                });
                tokio::task::yield_now().await;
                let (_, never) = gated(&started);
                let retry = tokio::task::spawn_local({
                    let (copies, body) = (copies.clone(), body.clone());
                    async move { copies.store("app", &body, never).await }
                });
                tokio::task::yield_now().await;

                assert!(
                    matches!(first.await.unwrap(), Answer::Superseded),
                    "the first copy is answered at once: the retry answers for it"
                );
                land.send(7).unwrap();
                assert!(matches!(
                    retry.await.unwrap(),
                    Answer::Landed {
                        outcome: 7,
                        started: false
                    }
                ));
                assert_eq!(started.get(), 1, "stored once");
                assert_eq!(copies.in_flight(), 0);
            })
            .await;
    }

    #[tokio::test]
    async fn a_copy_after_the_landing_is_a_new_event_and_another_body_or_client_never_joins() {
        LocalSet::new()
            .run_until(async {
                let copies = Copies::<u32>::new();
                let started = Rc::new(Cell::new(0));
                let body = Bytes::from_static(BODY);
                for _ in 0..2 {
                    let (land, store) = gated(&started);
                    land.send(1).unwrap();
                    let answer = copies.store("app", &body, store).await;
                    assert!(matches!(answer, Answer::Landed { started: true, .. }));
                }
                assert_eq!(started.get(), 2, "one after the other: two events");

                let (land_a, store_a) = gated(&started);
                let (land_b, store_b) = gated(&started);
                let (land_c, store_c) = gated(&started);
                let other_body = Bytes::from_static(br#"{"hook":"SyncAccount" }"#);
                let a = copies.store("app", &body, store_a);
                let b = copies.store("other-app", &body, store_b);
                let c = copies.store("app", &other_body, store_c);
                land_a.send(1).unwrap();
                land_b.send(2).unwrap();
                land_c.send(3).unwrap();
                let (a, b, c) = tokio::join!(a, b, c);
                for answer in [a, b, c] {
                    assert!(matches!(answer, Answer::Landed { started: true, .. }));
                }
                assert_eq!(started.get(), 5);
            })
            .await;
    }

    #[tokio::test]
    async fn a_flight_whose_task_is_cancelled_lands_as_abandoned() {
        let copies = Copies::<u32>::new();
        let body = Bytes::from_static(BODY);
        let started = Rc::new(Cell::new(0));
        let (_land, store) = gated(&started);
        let set = LocalSet::new();
        let waiting = set.spawn_local({
            let (copies, body) = (copies.clone(), body.clone());
            async move { copies.store("app", &body, store).await }
        });
        // Runs the copy until its flight is in the air, then drops the
        // worker's tasks, the flight's included, as a stopping worker does.
        set.run_until(async {
            while copies.in_flight() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        drop(set);
        assert!(
            waiting.await.is_err(),
            "the waiting copy went with its worker"
        );
        assert_eq!(copies.in_flight(), 0, "nothing is left in flight");
    }
}
