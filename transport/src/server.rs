//! The server side: accept, handshake, dispatch requests to a [`Handler`], push notifications.
//!
//! One accept loop per listener; one task per connection. A connection's failure (bad
//! handshake, wrong key, forged or oversized frame) closes that connection only and is
//! counted; the server keeps serving the others.
//!
//! Admission ([`Limits`](super::Limits)): connections still handshaking are
//! unauthenticated, so they get a quota of their own (`max_handshaking`, and
//! `max_handshaking_per_addr` per IP) and the short `handshake_timeout`; when a quota is
//! full the oldest handshaking connection that has not sent a byte yet is evicted (else the
//! oldest one), never the newcomer, so sockets held open by a stranger cannot lock out a
//! real client, which speaks at once. Authenticated connections count
//! against `max_connections` and `max_connections_per_addr`. Refusals and failed
//! handshakes are counted exactly and logged at WARN at most once per 10 s per kind. Requests on one connection are served
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

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument;

use super::handshake::{self, Identity};
use super::session;
use super::{Counters, CountersSnapshot, Endpoint, Listener, Message, MessageOf, Protocol};
use super::{RawConn, Transport};
use crate::frame::FrameError;
use smart_proto::Epoch;
use smart_proto::error::RemoteError;

/// Serves the requests of one protocol. Implemented by the node (Control, Agent86 front
/// doors) and the message-API server; it may forward to ractor actors with `call_t!`.
pub trait Handler<P: Protocol>: Send + Sync + 'static {
    /// Answers one request. An `Err` is sent to the requester as a `Fault` carrying it.
    fn handle(
        &self,
        ctx: RequestContext<P>,
        req: P::Request,
    ) -> impl Future<Output = Result<P::Response, RemoteError>> + Send;

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
    peer_key: [u8; super::noise::KEY_LEN],
    addr: Arc<str>,
    tx: mpsc::Sender<MessageOf<P>>,
    counters: Arc<Counters>,
}

impl<P: Protocol> Clone for Connection<P> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            peer: self.peer,
            peer_key: self.peer_key,
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

    /// The authenticated peer. An [`Identity::Node`] was proven by that node's key (as
    /// listed in the endpoint's key book); an [`Identity::Client`] only by the cluster key.
    pub fn peer(&self) -> Identity {
        self.peer
    }

    /// The static (Noise) public key the peer proved in the handshake.
    pub fn peer_key(&self) -> [u8; super::noise::KEY_LEN] {
        self.peer_key
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
        let admission = Arc::new(Mutex::new(Admission::default()));
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    r = listener.accept() => match r {
                        Ok(raw) => {
                            Counters::inc(&ep.counters.connections_accepted);
                            let id = next_conn.fetch_add(1, Ordering::Relaxed);
                            let host = host_of(&raw.peer_addr);
                            let spoke = raw.spoke;
                            let mut adm = lock(&admission);
                            let victims = adm.make_room(id, &host, spoke, &ep.limits);
                            evict(&ep, victims);
                            let span = tracing::info_span!("conn", conn = id, node = %ep.identity);
                            let guard = AdmissionGuard { id, host: host.clone(), admission: admission.clone() };
                            let abort = conns.spawn(
                                serve_conn(raw, id, ep.clone(), handler.clone(), guard, spoke).instrument(span),
                            );
                            adm.admit(id, host, spoke, abort);
                        }
                        Err(e) => {
                            ep.warnings.warn("accept_failed", format_args!("accept failed: {e}"));
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The address part of `host:port` (the whole string for in-memory names).
fn host_of(peer_addr: &str) -> String {
    match peer_addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => peer_addr.to_string(),
    }
}

fn evict(ep: &Endpoint, victims: Vec<AbortHandle>) {
    for victim in victims {
        victim.abort();
        Counters::inc(&ep.counters.handshakes_evicted);
        ep.warnings.warn(
            "handshakes_evicted",
            format_args!(
                "connection quota full: evicted the oldest unauthenticated connection (slow clients, or a connection flood)"
            ),
        );
    }
}

/// Who holds which slot. Connection ids grow, so the first entry of a map is the oldest.
///
/// Three pools: *silent* connections (accepted, nothing received yet: what a stranger's
/// idle sockets look like), *handshaking* ones (spoke, not authenticated yet) and
/// *established* ones. A real client speaks at once and leaves the silent pool within
/// milliseconds, so silent sockets only ever evict each other.
#[derive(Default)]
struct Admission {
    silent: BTreeMap<u64, AbortHandle>,
    handshaking: BTreeMap<u64, (String, AbortHandle)>,
    handshaking_per_addr: HashMap<String, usize>,
    established: std::collections::HashSet<u64>,
    established_per_addr: HashMap<String, usize>,
    /// Established connections of nodes: their own pool.
    nodes: std::collections::HashSet<u64>,
    /// Connections that spoke before their task was registered (first frame raced the
    /// accept loop): moved to the handshaking pool when registered.
    early: std::collections::HashSet<u64>,
}

impl Admission {
    /// Frees a slot for connection `id` from `host` in the pool it enters (silent, or
    /// handshaking if it `spoke`): returns the tasks to abort, oldest first.
    fn make_room(
        &mut self,
        id: u64,
        host: &str,
        spoke: bool,
        limits: &super::Limits,
    ) -> Vec<AbortHandle> {
        let mut victims = Vec::new();
        if !spoke {
            if self.silent.len() >= limits.max_silent.max(1)
                && let Some((_, a)) = self.silent.pop_first()
            {
                victims.push(a);
            }
            return victims;
        }
        if self.handshaking_per_addr.get(host).copied().unwrap_or(0)
            >= limits.max_handshaking_per_addr.max(1)
            && let Some(old) = self
                .handshaking
                .iter()
                .find(|(k, (h, _))| h == host && **k != id)
                .map(|(k, _)| *k)
        {
            victims.extend(self.remove_handshaking(old));
        }
        if self.handshaking.len() >= limits.max_handshaking.max(1)
            && let Some(old) = self.handshaking.keys().copied().find(|k| *k != id)
        {
            victims.extend(self.remove_handshaking(old));
        }
        victims
    }

    fn admit(&mut self, id: u64, host: String, spoke: bool, abort: AbortHandle) {
        if spoke || self.early.remove(&id) {
            *self.handshaking_per_addr.entry(host.clone()).or_default() += 1;
            self.handshaking.insert(id, (host, abort));
        } else {
            self.silent.insert(id, abort);
        }
    }

    /// Connection `id` sent its first frame: from the silent pool to the handshaking one.
    fn spoke(&mut self, id: u64, host: &str, limits: &super::Limits) -> Vec<AbortHandle> {
        let Some(abort) = self.silent.remove(&id) else {
            // Not registered yet (the accept loop holds the lock while registering, so
            // this only happens if it was evicted, or spoke before `admit`).
            if !self.established.contains(&id) && !self.handshaking.contains_key(&id) {
                self.early.insert(id);
            }
            return Vec::new();
        };
        let victims = self.make_room(id, host, true, limits);
        *self
            .handshaking_per_addr
            .entry(host.to_string())
            .or_default() += 1;
        self.handshaking.insert(id, (host.to_string(), abort));
        victims
    }

    fn remove_handshaking(&mut self, id: u64) -> Option<AbortHandle> {
        let (host, abort) = self.handshaking.remove(&id)?;
        decrement(&mut self.handshaking_per_addr, &host);
        Some(abort)
    }

    /// The handshake of `id` succeeded: an established slot, if one is free in its pool
    /// (nodes and clients have one each).
    fn promote(&mut self, id: u64, host: &str, node: bool, limits: &super::Limits) -> bool {
        self.remove_handshaking(id);
        self.silent.remove(&id);
        if node {
            if self.nodes.len() >= limits.max_node_connections {
                return false;
            }
            self.nodes.insert(id);
            return true;
        }
        let per = self.established_per_addr.get(host).copied().unwrap_or(0);
        if self.established.len() >= limits.max_connections
            || per >= limits.max_connections_per_addr
        {
            return false;
        }
        self.established.insert(id);
        *self
            .established_per_addr
            .entry(host.to_string())
            .or_default() += 1;
        true
    }
}

fn decrement(m: &mut HashMap<String, usize>, host: &str) {
    if let Some(n) = m.get_mut(host) {
        *n -= 1;
        if *n == 0 {
            m.remove(host);
        }
    }
}

/// A placeholder source (never read).
struct Closed;

impl super::FrameSource for Closed {
    fn recv(&mut self, _max: u32) -> super::BoxFuture<'_, Result<Vec<u8>, FrameError>> {
        Box::pin(async { Err(FrameError::Closed) })
    }
}

/// Releases a connection's slot when its task ends (or is aborted).
struct AdmissionGuard {
    id: u64,
    host: String,
    admission: Arc<Mutex<Admission>>,
}

/// Applies the silent timeout to the first frame and moves its connection from the silent
/// pool to the handshaking one when it arrives.
struct Spoken {
    inner: Box<dyn super::FrameSource>,
    mark: Option<(AdmissionGuardRef, Endpoint)>,
}

struct AdmissionGuardRef {
    id: u64,
    host: String,
    admission: Arc<Mutex<Admission>>,
}

impl super::FrameSource for Spoken {
    fn recv(&mut self, max: u32) -> super::BoxFuture<'_, Result<Vec<u8>, FrameError>> {
        Box::pin(async move {
            let Some((g, ep)) = self.mark.take() else {
                return self.inner.recv(max).await;
            };
            let t = ep.limits.silent_timeout;
            let r = match tokio::time::timeout(t, self.inner.recv(max)).await {
                Ok(r) => r,
                Err(_) => Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing received within {t:?}"),
                ))),
            };
            if r.is_ok() {
                let victims = lock(&g.admission).spoke(g.id, &g.host, &ep.limits);
                evict(&ep, victims);
            }
            r
        })
    }
}

impl AdmissionGuard {
    fn promote(&mut self, node: bool, limits: &super::Limits) -> bool {
        lock(&self.admission).promote(self.id, &self.host, node, limits)
    }
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        let mut adm = lock(&self.admission);
        // Evicted connections were removed already; the others hold one of two slots.
        adm.early.remove(&self.id);
        if adm.silent.remove(&self.id).is_some() {
        } else if adm.handshaking.contains_key(&self.id) {
            adm.remove_handshaking(self.id);
        } else if adm.established.remove(&self.id) {
            decrement(&mut adm.established_per_addr, &self.host);
        } else {
            adm.nodes.remove(&self.id);
        }
    }
}

async fn serve_conn<P: Protocol, H: Handler<P>>(
    mut raw: RawConn,
    id: u64,
    ep: Endpoint,
    handler: Arc<H>,
    mut guard: AdmissionGuard,
    spoke: bool,
) {
    let addr: Arc<str> = raw.peer_addr.clone().into();
    let source = std::mem::replace(&mut raw.source, Box::new(Closed));
    raw.source = Box::new(Spoken {
        inner: source,
        mark: (!spoke).then(|| {
            (
                AdmissionGuardRef {
                    id: guard.id,
                    host: guard.host.clone(),
                    admission: guard.admission.clone(),
                },
                ep.clone(),
            )
        }),
    });
    let session = match handshake::accept(&mut raw, &ep, |p| handler.allow(p)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(peer_addr = %addr, cause = %e, "inbound handshake failed");
            ep.warnings.warn(
                "handshake_failed",
                format_args!("inbound handshake failed (peer {addr}): {e}"),
            );
            return;
        }
    };
    let node = matches!(session.peer, crate::handshake::Identity::Node { .. });
    if !guard.promote(node, &ep.limits) {
        Counters::inc(&ep.counters.connections_refused);
        ep.warnings.warn(
            "connection_refused",
            format_args!(
                "too many connections (limit {} in all, {} per address): refusing {addr}",
                ep.limits.max_connections, ep.limits.max_connections_per_addr
            ),
        );
        return;
    }
    tracing::debug!(peer = %session.peer, peer_addr = %addr, "inbound connection authenticated");
    let peer_key = session.peer_key;
    let est = session::establish::<P>(raw, session, &ep, None);
    let session::Established {
        peer,
        tx,
        mut reader,
        writer,
        sent,
    } = est;
    let conn = Connection {
        id,
        peer,
        peer_key,
        addr: addr.clone(),
        tx,
        counters: ep.counters.clone(),
    };
    handler.connected(&conn);
    let in_flight = Arc::new(Semaphore::new(ep.limits.max_in_flight.max(1)));
    let mut handlers = JoinSet::new();
    let max_in_flight = ep.limits.max_in_flight.max(1);
    // Clients only: nodes keep their connections however quiet.
    let idle_after = (!node).then_some(ep.limits.client_idle_timeout);
    let why = loop {
        let next = match idle_after {
            None => reader.next().await,
            Some(idle) => {
                // One read future for the whole wait (a frame half read when the timer
                // fires must not be lost): the timer only looks at the connection's
                // activity, and closes it when there was none either way.
                let read = reader.next();
                tokio::pin!(read);
                let mut seen = sent.load(std::sync::atomic::Ordering::Relaxed);
                loop {
                    tokio::select! {
                        r = &mut read => break r,
                        () = tokio::time::sleep(idle) => {
                            let now = sent.load(std::sync::atomic::Ordering::Relaxed);
                            let busy = in_flight.available_permits() < max_in_flight;
                            if now != seen || busy {
                                seen = now;
                                continue;
                            }
                            Counters::inc(&ep.counters.clients_idle_closed);
                            break Err(FrameError::Io(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("idle client: no frame either way for {idle:?}"),
                            )));
                        }
                    }
                }
            }
        };
        let env = match next {
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
                        Ok(Err(error)) => Message::Fault { id, error },
                        Err(e) => {
                            tracing::error!(%peer, request = id, cause = %e, "request handler failed");
                            Message::Fault {
                                id,
                                error: RemoteError::Internal {
                                    reason: "request handler failed".into(),
                                },
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
        // An idle client's close is routine (counted, not logged at WARN).
        FrameError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
            tracing::debug!(%peer, peer_addr = %addr, cause = %e, "inbound connection closed")
        }
        e => tracing::warn!(%peer, peer_addr = %addr, cause = %e, "inbound connection dropped"),
    }
    handler.disconnected(&conn);
    // Close the socket now even if subscribers still hold `Connection` clones.
    drop(writer);
    // Handlers already running finish their work (a half-done command is worse than a lost
    // answer); their responses go nowhere.
    handlers.detach_all();
}
