//! The server side: accept, handshake, dispatch requests to a [`Handler`], push notifications.
//!
//! One accept loop per listener; one task per connection. A connection's failure (bad
//! handshake, wrong key, forged or oversized frame) closes that connection only and is
//! counted; the server keeps serving the others. Requests on one connection are served
//! concurrently (at most `Limits::max_in_flight`; beyond that the connection stops reading,
//! which pushes back on the sender); notifications are handled in arrival order.
//!
//! Stopping the server ([`ServerHandle::shutdown`], or dropping the handle) stops accepting
//! and closes every connection.
//!
//! ## Layout
//! - [`Handler`], [`RequestContext`]: what the application implements and receives.
//! - [`Connection`]: a handle to push notifications to one connection.
//! - [`Server`], [`ServerHandle`]: starting and stopping; private accept and per-connection loops.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::handshake::{self, Identity};
use super::session;
use super::{Counters, CountersSnapshot, Endpoint, Listener, Message, MessageOf, Protocol};
use super::{RawConn, Transport};
use crate::frame::FrameError;
use crate::types::Epoch;

/// Serves the requests of one protocol. Implemented by the node (Control, Agent86 front
/// doors) and the message-API server; it may forward to ractor actors with `call_t!`.
pub trait Handler<P: Protocol>: Send + Sync + 'static {
    /// Answers one request. An `Err` is sent to the requester as a `Fault` with this text.
    fn handle(
        &self,
        ctx: RequestContext<P>,
        req: P::Request,
    ) -> impl Future<Output = Result<P::Response, String>> + Send;

    /// Takes one notification from a connected peer (in arrival order per connection).
    fn notified(&self, ctx: RequestContext<P>, note: P::Notify) -> impl Future<Output = ()> + Send {
        let _ = (ctx, note);
        async {}
    }

    /// Decides, during the handshake, whether this identity may connect (default: anyone
    /// who proves the cluster key).
    fn allow(&self, peer: &Identity) -> bool {
        let _ = peer;
        true
    }

    /// A connection finished its handshake; keep `conn` to push notifications to it.
    fn connected(&self, conn: &Connection<P>) {
        let _ = conn;
    }

    /// A connection closed (not called for the connections cut by the server's own stop).
    fn disconnected(&self, conn: &Connection<P>) {
        let _ = conn;
    }
}

/// What a handler knows about the request it serves.
#[derive(Debug)]
pub struct RequestContext<P: Protocol> {
    /// The connection it came on (can push notifications back).
    pub conn: Connection<P>,
    /// The Control epoch stamped by the sender.
    pub epoch: Epoch,
    /// The frame's sequence number.
    pub seq: u64,
}

/// Why a notification could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The connection's queue is full; the notification was dropped and counted.
    #[error("connection send queue full")]
    Full,
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
}

/// A handle to one accepted connection: identity and notification push. Cheap to clone.
pub struct Connection<P: Protocol> {
    id: u64,
    peer: Identity,
    addr: Arc<str>,
    tx: mpsc::Sender<MessageOf<P>>,
    counters: Arc<Counters>,
}

impl<P: Protocol> Clone for Connection<P> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            peer: self.peer,
            addr: self.addr.clone(),
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<P: Protocol> std::fmt::Debug for Connection<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection#{}({} at {})", self.id, self.peer, self.addr)
    }
}

impl<P: Protocol> Connection<P> {
    /// Server-unique connection number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The authenticated peer.
    pub fn peer(&self) -> Identity {
        self.peer
    }

    /// The peer's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Queues a notification without waiting. A full queue drops it (counted): a slow
    /// subscriber must not stall the node.
    pub fn notify(&self, body: P::Notify) -> Result<(), NotifyError> {
        match self.tx.try_send(Message::Notify { body }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Counters::inc(&self.counters.notifications_dropped);
                Err(NotifyError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NotifyError::Closed),
        }
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Starts servers.
#[derive(Debug)]
pub struct Server;

/// A running server. Dropping it stops the server too.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl ServerHandle {
    /// The address clients connect to.
    pub fn local_addr(&self) -> &str {
        &self.local_addr
    }

    /// The endpoint's counters now.
    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// Stops accepting, closes every connection and waits until that is done.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Server {
    /// Binds `addr` on `transport` and serves it.
    pub async fn bind<P: Protocol, H: Handler<P>>(
        transport: &dyn Transport,
        addr: &str,
        ep: Endpoint,
        handler: Arc<H>,
    ) -> io::Result<ServerHandle> {
        let listener = transport.bind(addr).await?;
        Ok(Self::start(listener, ep, handler))
    }

    /// Serves an already bound listener (bind port 0 in tests, or pass a prepared one).
    pub fn start<P: Protocol, H: Handler<P>>(
        mut listener: Box<dyn Listener>,
        ep: Endpoint,
        handler: Arc<H>,
    ) -> ServerHandle {
        let local_addr = listener.local_addr();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let counters = ep.counters.clone();
        let next_conn = Arc::new(AtomicU64::new(1));
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    r = listener.accept() => match r {
                        Ok(raw) if conns.len() >= ep.limits.max_connections => {
                            Counters::inc(&ep.counters.connections_refused);
                            tracing::warn!(peer_addr = %raw.peer_addr, limit = ep.limits.max_connections, "too many connections, refusing");
                        }
                        Ok(raw) => {
                            Counters::inc(&ep.counters.connections_accepted);
                            let id = next_conn.fetch_add(1, Ordering::Relaxed);
                            let span = tracing::info_span!("conn", conn = id, node = %ep.identity);
                            conns.spawn(
                                serve_conn(raw, id, ep.clone(), handler.clone()).instrument(span),
                            );
                        }
                        Err(e) => {
                            tracing::warn!(cause = %e, "accept failed");
                            // Out of file descriptors and the like: do not spin.
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                }
            }
            // Dropping the set aborts every connection task, closing their sockets.
            drop(conns);
        });
        ServerHandle {
            local_addr,
            stop: Some(stop),
            task: Some(task),
            counters,
        }
    }
}

async fn serve_conn<P: Protocol, H: Handler<P>>(
    mut raw: RawConn,
    id: u64,
    ep: Endpoint,
    handler: Arc<H>,
) {
    let addr: Arc<str> = raw.peer_addr.clone().into();
    let session = match handshake::accept(&mut raw, &ep, |p| handler.allow(p)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(peer_addr = %addr, cause = %e, "inbound handshake failed");
            return;
        }
    };
    tracing::debug!(peer = %session.peer, peer_addr = %addr, "inbound connection authenticated");
    let est = session::establish::<P>(raw, session, &ep, None);
    let session::Established {
        peer,
        tx,
        mut reader,
        writer,
    } = est;
    let conn = Connection {
        id,
        peer,
        addr: addr.clone(),
        tx,
        counters: ep.counters.clone(),
    };
    handler.connected(&conn);
    let in_flight = Arc::new(Semaphore::new(ep.limits.max_in_flight.max(1)));
    let mut handlers = JoinSet::new();
    let why = loop {
        let env = match reader.next().await {
            Ok(env) => env,
            Err(e) => break e,
        };
        let ctx = RequestContext {
            conn: conn.clone(),
            epoch: env.epoch,
            seq: env.seq,
        };
        match env.body {
            Message::Request { id, body } => {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break FrameError::Closed;
                };
                let h = handler.clone();
                handlers.spawn(async move {
                    let tx = ctx.conn.tx.clone();
                    // In its own task so that a panicking handler becomes a fault for this
                    // request instead of a silent timeout.
                    let served = tokio::spawn(async move { h.handle(ctx, body).await }).await;
                    let reply = match served {
                        Ok(Ok(body)) => Message::Response { id, body },
                        Ok(Err(message)) => Message::Fault { id, message },
                        Err(e) => {
                            tracing::error!(%peer, request = id, cause = %e, "request handler failed");
                            Message::Fault {
                                id,
                                message: "request handler failed".into(),
                            }
                        }
                    };
                    let _ = tx.send(reply).await;
                    drop(permit);
                });
                while handlers.try_join_next().is_some() {}
            }
            Message::Notify { body } => handler.notified(ctx, body).await,
            Message::Response { .. } | Message::Fault { .. } => {
                // Only the connecting side sends requests; a response here is a protocol
                // violation.
                Counters::inc(&ep.counters.frames_rejected);
                tracing::warn!(%peer, "unsolicited response on an inbound connection");
                break FrameError::Closed;
            }
        }
    };
    match &why {
        FrameError::Closed => tracing::debug!(%peer, "inbound connection closed"),
        e => tracing::warn!(%peer, peer_addr = %addr, cause = %e, "inbound connection dropped"),
    }
    handler.disconnected(&conn);
    // Close the socket now even if subscribers still hold `Connection` clones.
    drop(writer);
    // Handlers already running finish their work (a half-done command is worse than a lost
    // answer); their responses go nowhere.
    handlers.detach_all();
}
