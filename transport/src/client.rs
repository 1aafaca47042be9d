//! A plain async client (no actor system needed) for `smart status` and the message API.
//!
//! [`Client::connect`] opens one authenticated connection to any node's listen address. Each
//! [`Client::request`] has its own timeout; notifications pushed by the server are read with
//! [`Client::next_notification`]. The client does not reconnect: when the connection is lost
//! every pending request fails with [`RequestError::Disconnected`], `next_notification`
//! returns `None`, and the caller connects again (to the same or another node).
//!
//! ## Layout
//! - [`Client`]: connect (to one address or the first of several), request, notify,
//!   next_notification.
//! - [`ConnectError`]: why connecting failed.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::handshake::{self, HandshakeError, Identity};
use super::session::{self, AbortOnDrop};
use super::{Counters, Endpoint, Message, MessageOf, Protocol, RequestError, Transport};
use smart_proto::error::RemoteError;

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// Opening the connection took too long.
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The limit.
        after: Duration,
    },
    /// The handshake failed (wrong cluster key, not a SMART node, ...).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The address.
        addr: String,
        /// The cause.
        source: HandshakeError,
    },
}

type Waiters<P> =
    Mutex<HashMap<u64, oneshot::Sender<Result<<P as Protocol>::Response, RequestError>>>>;

/// A connection to one node. Requests may be issued concurrently from several tasks
/// (`&self`); dropping the client closes the connection.
pub struct Client<P: Protocol> {
    peer: Identity,
    tx: mpsc::Sender<MessageOf<P>>,
    waiters: Arc<Waiters<P>>,
    next_id: AtomicU64,
    notes: tokio::sync::Mutex<mpsc::Receiver<P::Notify>>,
    closed: Arc<AtomicBool>,
    counters: Arc<Counters>,
    _reader: AbortOnDrop,
    _writer: AbortOnDrop,
}

impl<P: Protocol> std::fmt::Debug for Client<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client(to {})", self.peer)
    }
}

/// Notifications buffered per client before new ones are dropped (and counted).
const NOTE_QUEUE: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<P: Protocol> Client<P> {
    /// Connects to `addr` and runs the handshake with `ep` (usually [`Endpoint::client`]).
    pub async fn connect(
        transport: &dyn Transport,
        addr: &str,
        ep: Endpoint,
    ) -> Result<Self, ConnectError> {
        let after = ep.limits.connect_timeout;
        let mut raw = match tokio::time::timeout(after, transport.connect(addr)).await {
            Err(_) => {
                return Err(ConnectError::Timeout {
                    addr: addr.into(),
                    after,
                });
            }
            Ok(Err(source)) => {
                return Err(ConnectError::Io {
                    addr: addr.into(),
                    source,
                });
            }
            Ok(Ok(raw)) => raw,
        };
        let session = handshake::initiate(&mut raw, &ep, None)
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: addr.into(),
                source,
            })?;
        let waiters: Arc<Waiters<P>> = Arc::new(Mutex::new(HashMap::new()));
        let hook_waiters = waiters.clone();
        let est = session::establish::<P>(
            raw,
            session,
            &ep,
            Some(Box::new(move |id, e| {
                if let Some(w) = lock(&hook_waiters).remove(&id) {
                    let _ = w.send(Err(RequestError::NotSent(e.to_string())));
                }
            })),
        );
        let (note_tx, note_rx) = mpsc::channel(NOTE_QUEUE);
        let closed = Arc::new(AtomicBool::new(false));
        let mut reader = est.reader;
        let reply_tx = est.tx.clone();
        let r_waiters = waiters.clone();
        let r_closed = closed.clone();
        let counters = ep.counters.clone();
        let r_counters = counters.clone();
        let peer = est.peer;
        let reader_task = tokio::spawn(async move {
            let why = loop {
                let env = match reader.next().await {
                    Ok(env) => env,
                    Err(e) => break e,
                };
                match env.body {
                    Message::Response { id, body } => {
                        if let Some(w) = lock(&r_waiters).remove(&id) {
                            let _ = w.send(Ok(body));
                        }
                    }
                    Message::Fault { id, error } => {
                        if let Some(w) = lock(&r_waiters).remove(&id) {
                            let _ = w.send(Err(RequestError::Fault(error)));
                        }
                    }
                    Message::Notify { body } => {
                        if note_tx.try_send(body).is_err() {
                            Counters::inc(&r_counters.notifications_dropped);
                        }
                    }
                    Message::Request { id, .. } => {
                        let _ = reply_tx.try_send(Message::Fault {
                            id,
                            error: RemoteError::Refused {
                                reason: "clients do not serve requests".into(),
                            },
                        });
                    }
                }
            };
            tracing::debug!(%peer, cause = %why, "client connection closed");
            r_closed.store(true, Ordering::SeqCst);
            for (_, w) in lock(&r_waiters).drain() {
                let _ = w.send(Err(RequestError::Disconnected));
            }
        });
        Ok(Self {
            peer,
            tx: est.tx,
            waiters,
            next_id: AtomicU64::new(1),
            notes: tokio::sync::Mutex::new(note_rx),
            closed,
            counters,
            _reader: AbortOnDrop(reader_task),
            _writer: est.writer,
        })
    }

    /// Connects to the first of `addrs` that accepts (in order); the error of the last
    /// attempt if none does. For clients that may talk to any node of the cluster.
    pub async fn connect_any(
        transport: &dyn Transport,
        addrs: &[String],
        ep: Endpoint,
    ) -> Result<Self, ConnectError> {
        let mut last = ConnectError::Io {
            addr: String::new(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no address given"),
        };
        for a in addrs {
            match Self::connect(transport, a, ep.clone()).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(addr = %a, cause = %e, "node not reachable, trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The node at the other end.
    pub fn peer(&self) -> Identity {
        self.peer
    }

    /// True once the connection is lost.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends a request and waits for its answer, at most `timeout`.
    pub async fn request(
        &self,
        body: P::Request,
        timeout: Duration,
    ) -> Result<P::Response, RequestError> {
        if self.is_closed() {
            return Err(RequestError::Disconnected);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (w_tx, w_rx) = oneshot::channel();
        lock(&self.waiters).insert(id, w_tx);
        // The reader sets `closed` before failing the waiters it finds, so a waiter inserted
        // after that is caught here instead of waiting for its timeout.
        if self.is_closed() {
            lock(&self.waiters).remove(&id);
            return Err(RequestError::Disconnected);
        }
        let outcome = tokio::time::timeout(timeout, async {
            if self.tx.send(Message::Request { id, body }).await.is_err() {
                return Err(RequestError::Disconnected);
            }
            w_rx.await.unwrap_or(Err(RequestError::Disconnected))
        })
        .await;
        match outcome {
            Ok(r) => {
                if r.is_err() {
                    Counters::inc(&self.counters.requests_failed);
                }
                r
            }
            Err(_) => {
                lock(&self.waiters).remove(&id);
                Counters::inc(&self.counters.requests_timed_out);
                Err(RequestError::Timeout(timeout))
            }
        }
    }

    /// Queues a one-way notification to the node.
    pub fn notify(&self, body: P::Notify) -> Result<(), RequestError> {
        match self.tx.try_send(Message::Notify { body }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(RequestError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(RequestError::Disconnected),
        }
    }

    /// The next notification pushed by the node; `None` once the connection is closed and
    /// every buffered notification has been read.
    pub async fn next_notification(&self) -> Option<P::Notify> {
        self.notes.lock().await.recv().await
    }
}
