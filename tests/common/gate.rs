//! A port between a relay and the shared broker that a test controls, so
//! that RabbitMQ seems down, back, or stalled for that relay alone (the
//! broker itself is shared by every test and is never touched):
//! - closed: nothing listens there (RabbitMQ is down);
//! - [`Gate::open`]: every connection is forwarded to the broker;
//! - [`Gate::freeze`]: forwarding stops in both directions while the TCP
//!   connections stay up, so a publish sent then waits for its confirm
//!   until [`Gate::thaw`];
//! - [`Gate::close`]: every connection through it is cut and nothing listens
//!   any more (RabbitMQ went down), until [`Gate::open`] again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) struct Gate {
    port: u16,
    target: String,
    frozen: watch::Sender<bool>,
    /// Bytes the relay sent into the gate while it was frozen.
    held: Arc<AtomicU64>,
    listening: Option<tokio::task::JoinHandle<()>>,
    /// The forwarding tasks of every connection, cut by [`Gate::close`].
    pumps: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Gate {
    /// A closed gate to the broker at `amqp_url`.
    pub(crate) async fn closed(amqp_url: &str) -> Gate {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let uri: lapin::uri::AMQPUri = amqp_url.parse().unwrap();
        Gate {
            port,
            target: format!("{}:{}", uri.authority.host, uri.authority.port),
            frozen: watch::Sender::new(false),
            held: Arc::default(),
            listening: None,
            pumps: Arc::default(),
        }
    }

    /// The AMQP URI a relay uses to go through the gate.
    pub(crate) fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// From now on, connections reach the broker.
    pub(crate) async fn open(&mut self) {
        // After a close, the aborted listener lets go of the port once the
        // runtime has dropped its task: try again until then.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(_) if tries < 500 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(err) => panic!("rebind the gate's port: {err}"),
            }
        };
        let (target, frozen, held) = (self.target.clone(), self.frozen.clone(), self.held.clone());
        let pumps = self.pumps.clone();
        self.listening = Some(tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (relay_read, relay_write) = inbound.into_split();
                let (broker_read, broker_write) = outbound.into_split();
                let to_broker = tokio::spawn(pump(
                    relay_read,
                    broker_write,
                    frozen.subscribe(),
                    Some(held.clone()),
                ));
                let to_relay =
                    tokio::spawn(pump(broker_read, relay_write, frozen.subscribe(), None));
                let mut pumps = pumps.lock().unwrap();
                pumps.retain(|pump| !pump.is_finished());
                pumps.extend([to_broker, to_relay]);
            }
        }));
    }

    /// Stops forwarding (the connections stay open) until [`Gate::thaw`].
    pub(crate) fn freeze(&self) {
        self.held.store(0, Ordering::SeqCst);
        self.frozen.send_replace(true);
    }

    pub(crate) fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// RabbitMQ goes away: every connection through the gate is cut, and
    /// new ones are refused until [`Gate::open`].
    pub(crate) fn close(&mut self) {
        if let Some(listening) = self.listening.take() {
            listening.abort();
        }
        for pump in self.pumps.lock().unwrap().drain(..) {
            pump.abort();
        }
    }

    /// Bytes the relay sent while the gate was frozen (a publish in the air).
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}

/// Copies `from` to `to`, holding what it read while `frozen`; counts into
/// `held` what arrived meanwhile.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut frozen: watch::Receiver<bool>,
    held: Option<Arc<AtomicU64>>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        if *frozen.borrow() {
            if let Some(held) = &held {
                held.fetch_add(read as u64, Ordering::SeqCst);
            }
            if frozen.wait_for(|frozen| !*frozen).await.is_err() {
                return;
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
