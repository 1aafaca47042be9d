//! # smart-transport
//!
//! The TCP transport between nodes (and between message-API clients and nodes).
//!
//! A connection goes through three layers:
//!
//! 1. **Frames** ([`crate::frame`]): a u32 big-endian length prefix and a payload, with the
//!    size limit checked before allocating. The [`Transport`] trait is the network seam: it
//!    only moves whole frames ([`FrameSink`]/[`FrameSource`]), over TCP ([`tcp`]) or over
//!    in-memory channels ([`mem`]) that can cut links and drop frames for cluster tests.
//! 2. **Handshake** ([`handshake`]): Noise `XXpsk3` ([`noise`]): both sides prove their static
//!    key and the cluster key; a node id is believed only with the key listed for it in the
//!    key book. A wrong key, a borrowed identity, garbage or an oversized handshake frame
//!    closes the connection, is counted, and never disturbs other connections.
//! 3. **Messages** ([`Message`]): postcard [`crate::frame::Envelope`]s, encrypted and
//!    authenticated with the connection's Noise cipher, carrying `Request{id, body}` / `Response{id, body}` / `Fault{id, error}` /
//!    `Notify{body}`. The [`peer`] actor (one per remote node, ractor) and the plain async
//!    [`client`] send requests, each with a timeout, and correlate responses; the [`server`]
//!    accepts, authenticates and dispatches requests to a [`server::Handler`], and pushes
//!    notifications to its connections.
//!
//! # Wire format of the message layer
//!
//! The frame and envelope layout are in [`crate::frame`], the handshake in [`handshake`].
//! The envelope body is the postcard encoding of [`Message`]:
//!
//! ```text
//! Message = 0 Request  { id: u64 varint, body: Req }     initiator -> acceptor only
//!         | 1 Response { id: u64 varint, body: Resp }    answers the Request with this id
//!         | 2 Fault    { id: u64 varint, error: RemoteError }  the request failed remotely
//!                                                  (smart_proto::error::RemoteError, typed)
//!         | 3 Notify   { body: Note }                    either direction, no answer
//! ```
//!
//! Request ids are chosen by the requester, unique per connection. Requests only flow from
//! the side that opened the connection to the side that accepted it (node A's requests to B
//! go over A's connection to B; B's to A over B's own connection to A); notifications flow
//! both ways, and are how a server streams events to message-API subscribers. `Req`, `Resp`
//! and `Note` are the application's types, bundled by a [`Protocol`].
//!
//! # Example
//!
//! A protocol, a handler, a server and a client, here over the in-memory network (use
//! [`tcp::TcpTransport`] and `"127.0.0.1:0"` for real sockets; nothing else changes):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use smart_transport::{
//!     mem::MemNetwork, Client, Endpoint, Handler, Protocol, RequestContext, Server,
//! };
//! use smart_proto::{ClusterKey, NodeId};
//! use smart_proto::error::RemoteError;
//!
//! struct Status;
//! impl Protocol for Status {
//!     type Request = String;
//!     type Response = usize;
//!     type Notify = String;
//! }
//!
//! struct Len;
//! impl Handler<Status> for Len {
//!     async fn handle(&self, _ctx: RequestContext<Status>, req: String) -> Result<usize, RemoteError> {
//!         Ok(req.len())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let key = ClusterKey::from_bytes(b"a cluster key of enough length").unwrap();
//! let net = MemNetwork::new(1);
//! let node = Endpoint::node(NodeId(1), 1, key.clone());
//! let server = Server::bind(&net.transport("n1"), "n1", node, Arc::new(Len)).await.unwrap();
//!
//! let client = Client::<Status>::connect(&net.transport("cli"), server.local_addr(), Endpoint::client(key))
//!     .await
//!     .unwrap();
//! assert_eq!(client.request("hello".into(), Duration::from_secs(1)).await, Ok(5));
//! assert_eq!(server.counters().handshakes_ok, 1);
//! # });
//! ```
//!
//! ## Layout
//! - this file: the [`Transport`] seam, [`Protocol`], [`Message`], [`Endpoint`], [`Limits`],
//!   [`Counters`].
//! - [`tcp`]: the TCP implementation (tokio, `TCP_NODELAY`).
//! - [`mem`]: the in-memory implementation with link cuts and frame drops.
//! - [`noise`]: node keys, key books and the connection cipher.
//! - [`handshake`]: the Noise handshake and identity check.
//! - [`session`]: sealing/opening data frames on an authenticated connection.
//! - [`peer`]: the per-peer ractor actor (reconnect with backoff, request correlation).
//! - [`peer_set`]: a node's peer actors keyed by node id, kept in step with membership.
//! - [`server`]: the listener, handshake and dispatch of inbound connections.
//! - [`client`]: the plain async client for `smart status` and the message API.
//! - [`frame`], [`error`]: frames, envelopes and the handshake codec; every way they fail.
//! - [`keys`]: `smart keys`: the cluster key, node key pairs and the public-key list.
//! - [`ratelog`]: rate-limited warnings with counts (hostile traffic must not flood logs).
//! - [`NodeProtocol`]: what a SMART node's port speaks, bundled for this transport.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::frame::{DEFAULT_MAX_FRAME, FrameError};
use smart_proto::error::RemoteError;
use smart_proto::{ClusterKey, Epoch, Incarnation, NodeId};

pub mod client;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod keys;
pub mod mem;
pub mod noise;
pub mod peer;
pub mod peer_set;
pub mod ratelog;
pub mod server;
pub mod session;
pub mod tcp;

pub use client::Client;
pub use handshake::{HandshakeError, Identity};
pub use peer::{Backoff, Peer, PeerArgs, PeerMsg, PeerStatus};
pub use peer_set::PeerSet;
pub use server::{Connection, Handler, RequestContext, Server, ServerHandle};

/// A boxed, sendable future: the return type of the [`Transport`] seam's methods, so that the
/// trait stays object-safe and a node can hold an `Arc<dyn Transport>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The sending half of a raw (not yet authenticated) connection: moves whole frames.
pub trait FrameSink: Send + 'static {
    /// Sends one whole frame, length prefix included, as built by [`crate::frame`].
    fn send(&mut self, frame: Vec<u8>) -> BoxFuture<'_, io::Result<()>>;
}

/// The receiving half of a raw connection.
pub trait FrameSource: Send + 'static {
    /// Receives the next frame's payload (prefix stripped). A prefix announcing more than
    /// `max` bytes is refused with [`FrameError::TooLarge`] before anything is allocated; a
    /// clean close between frames is [`FrameError::Closed`].
    fn recv(&mut self, max: u32) -> BoxFuture<'_, Result<Vec<u8>, FrameError>>;
}

/// A raw connection as the seam yields it.
pub struct RawConn {
    /// Outgoing frames.
    pub sink: Box<dyn FrameSink>,
    /// Incoming frames.
    pub source: Box<dyn FrameSource>,
    /// The remote address, for logs and per-address limits.
    pub peer_addr: String,
    /// Bytes were already waiting when the connection was accepted: the peer spoke at once,
    /// as real clients do (idle sockets held open by a stranger never do).
    pub spoke: bool,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawConn({})", self.peer_addr)
    }
}

/// Accepts raw connections.
pub trait Listener: Send + 'static {
    /// Waits for the next inbound connection.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<RawConn>>;
    /// The address peers should connect to (with the real port when bound to port 0).
    fn local_addr(&self) -> String;
}

/// The network seam: opens and accepts raw framed connections. Implemented over TCP
/// ([`tcp::TcpTransport`]) and in memory ([`mem::MemTransport`]); both pass the same
/// conformance suite (`transport/tests/transport_conformance.rs`).
pub trait Transport: Send + Sync + 'static {
    /// Opens a connection to `addr`.
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<RawConn>>;
    /// Listens on `addr`.
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>>;
}

/// The application types carried by a connection.
pub trait Protocol: Send + Sync + 'static {
    /// Request bodies (initiator to acceptor).
    type Request: Serialize + DeserializeOwned + Send + Sync + std::fmt::Debug + 'static;
    /// Response bodies.
    type Response: Serialize + DeserializeOwned + Send + Sync + std::fmt::Debug + 'static;
    /// Notification bodies (either direction).
    type Notify: Serialize + DeserializeOwned + Send + Sync + std::fmt::Debug + 'static;
}

/// The envelope body on a connection: see the module docs for its wire encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<Req, Resp, Note> {
    /// A request; must be answered by a `Response` or a `Fault` with the same id.
    Request {
        /// Chosen by the requester, unique per connection.
        id: u64,
        /// The request.
        body: Req,
    },
    /// The answer to a request.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        body: Resp,
    },
    /// The request could not be served (refused, unavailable, deadline passed, failed).
    Fault {
        /// The request's id.
        id: u64,
        /// Why, typed, so that the requester can tell a refusal from a failure.
        error: RemoteError,
    },
    /// A one-way message.
    Notify {
        /// The notification.
        body: Note,
    },
}

/// The [`Message`] type of a protocol.
pub type MessageOf<P> =
    Message<<P as Protocol>::Request, <P as Protocol>::Response, <P as Protocol>::Notify>;

/// Sizes and timeouts of the transport. All are configuration; the defaults suit a LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest data payload accepted or sent. Use the same value on every node: a frame
    /// above the receiver's limit closes the connection.
    pub max_frame: u32,
    /// Time allowed for the whole handshake; a peer that stalls it is dropped.
    pub handshake_timeout: Duration,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Outgoing messages queued per connection before senders are told it is full.
    pub send_queue: usize,
    /// Requests served concurrently per inbound connection; beyond it reading pauses.
    pub max_in_flight: usize,
    /// Authenticated *client* connections a server holds at once; beyond it a client that
    /// completes its handshake is closed and counted in `connections_refused`.
    pub max_connections: usize,
    /// Authenticated client connections from one address (IP) at once; beyond it, as above.
    pub max_connections_per_addr: usize,
    /// Authenticated *node* connections (peers that proved a node key of the key book) at
    /// once: a pool of their own, so that clients, however many, never keep a member out.
    pub max_node_connections: usize,
    /// Connections accepted that have sent nothing yet (what a stranger's idle sockets look
    /// like), at once; a new one beyond it evicts the oldest silent one
    /// (`handshakes_evicted`). Real clients speak at once and leave this pool in
    /// milliseconds, so idle sockets only ever evict each other.
    pub max_silent: usize,
    /// A connection that sends nothing for this long after it was accepted is closed.
    pub silent_timeout: Duration,
    /// Connections that spoke but are not authenticated yet, at once; a new one beyond it
    /// evicts the oldest.
    pub max_handshaking: usize,
    /// Connections still handshaking from one address at once; a new one beyond it evicts
    /// that address's oldest.
    pub max_handshaking_per_addr: usize,
    /// An authenticated *client* connection that has neither sent a frame nor been sent one
    /// (an answer, an event) for this long, and has no request in progress, is closed
    /// (`clients_idle_closed`): a client that went quiet does not keep its place in the
    /// client pool; it reconnects when it next asks. Node connections are never closed for
    /// being idle.
    pub client_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            send_queue: 256,
            max_in_flight: 64,
            max_connections: 1024,
            max_connections_per_addr: 256,
            max_node_connections: 1024,
            max_silent: 2048,
            silent_timeout: Duration::from_millis(500),
            max_handshaking: 128,
            max_handshaking_per_addr: 16,
            client_idle_timeout: Duration::from_secs(600),
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Transport counters, shared by every connection of a node (or client) and read by
        /// `smart status`. Monotonic; read them with [`Counters::snapshot`].
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`Counters`] at one instant.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct CountersSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Reads every counter.
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Data frames sent.
    frames_sent,
    /// Data frames received and accepted.
    frames_received,
    /// Frames refused after the handshake (oversized, truncated, forged, replayed,
    /// malformed, wrong sender); each closes its connection.
    frames_rejected,
    /// Handshakes completed.
    handshakes_ok,
    /// Handshakes failed for any reason (includes `handshakes_bad_key`).
    handshakes_failed,
    /// Handshakes failed because the peer could not prove the cluster key.
    handshakes_bad_key,
    /// Handshakes refused because the peer claimed a node id whose key it does not hold.
    handshakes_wrong_identity,
    /// Client handshakes refused because the token is not one this node accepts.
    handshakes_bad_token,
    /// Inbound connections accepted by a server (before the handshake).
    connections_accepted,
    /// Authenticated inbound connections closed because the server (or their address)
    /// already held its limit of established connections.
    connections_refused,
    /// Handshaking connections closed to make room for a newer one (handshake quota full).
    handshakes_evicted,
    /// Outbound connection attempts that failed (connect or handshake).
    connects_failed,
    /// Reconnection attempts by peers after losing or failing to open a connection.
    reconnects,
    /// Requests that got no answer before their deadline.
    requests_timed_out,
    /// Requests failed because their connection was lost or unavailable.
    requests_failed,
    /// Notifications dropped because a queue was full.
    notifications_dropped,
    /// Client connections closed after `client_idle_timeout` without a frame either way.
    clients_idle_closed,
}

impl Counters {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who we are on the wire and what we share with every connection: identity, keys,
/// limits, counters, and the current Control epoch stamped on every envelope.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Our identity, proven in every handshake.
    pub identity: Identity,
    /// The cluster key (the handshake's pre-shared key is derived from it).
    pub key: ClusterKey,
    /// Our static Noise key: a node's own key (its id is bound to it in every key book), or
    /// a client's (random unless given).
    pub node_key: Arc<noise::NodeKey>,
    /// Which static key may present which node id.
    pub book: Arc<noise::KeyBook>,
    /// Sizes and timeouts.
    pub limits: Limits,
    /// Counters shared by all connections of this endpoint.
    pub counters: Arc<Counters>,
    /// The highest Control epoch this node knows; the node updates it and every envelope
    /// sent carries its current value.
    pub epoch: Arc<AtomicU64>,
    /// Rate limit of the WARN lines about refused or failed connections.
    pub warnings: Arc<crate::ratelog::WarnLimiter>,
    /// A client's API token: with it, a client connects without the cluster key (see
    /// [`handshake`]).
    pub client_token: Option<String>,
    /// How an acceptor judges clients' tokens; `None`: it admits no token client.
    pub client_auth: Option<handshake::ClientAuth>,
}

impl Endpoint {
    /// The endpoint of a node with a random static key and an unchecked key book: any
    /// node id is believed from anyone holding the cluster key. For tests and in-process
    /// tools; `smart node` uses [`Endpoint::with_keys`] with its configured keys.
    pub fn node(id: NodeId, incarnation: Incarnation, key: ClusterKey) -> Self {
        Self::new(Identity::Node { id, incarnation }, key)
    }

    /// The same endpoint with this static key and this key book (checked identities).
    pub fn with_keys(mut self, node_key: noise::NodeKey, book: noise::KeyBook) -> Self {
        self.node_key = Arc::new(node_key);
        self.book = Arc::new(book);
        self
    }

    /// The endpoint of a message-API client admitted by the cluster key, with a random
    /// client id (in-process tools and tests of the transport; `smart node` admits only
    /// token clients: [`Endpoint::token_client`]).
    pub fn client(key: ClusterKey) -> Self {
        Self::new(
            Identity::Client {
                id: rand::random(),
                scope: None,
            },
            key,
        )
    }

    /// The endpoint of a message-API client that presents `token` (no cluster key): the
    /// node that answers must prove a key that `book` lists for it.
    pub fn token_client(token: &str, book: noise::KeyBook) -> Self {
        let mut ep = Self::new(
            Identity::Client {
                id: rand::random(),
                scope: None,
            },
            // Unused by a token client's handshake; a random key so that nothing a
            // client holds is a cluster secret.
            ClusterKey::from_bytes(&rand::random::<[u8; 32]>()).expect("32 bytes is long enough"),
        );
        ep.client_token = Some(token.to_string());
        ep.book = Arc::new(book);
        ep
    }

    /// The same endpoint judging token clients with `auth`.
    pub fn with_client_auth(mut self, auth: handshake::ClientAuth) -> Self {
        self.client_auth = Some(auth);
        self
    }

    /// An endpoint with default limits and fresh counters, a random static key and an
    /// unchecked key book (see [`Endpoint::node`]).
    pub fn new(identity: Identity, key: ClusterKey) -> Self {
        Self {
            identity,
            key,
            node_key: Arc::new(noise::NodeKey::generate()),
            book: Arc::new(noise::KeyBook::unchecked()),
            limits: Limits::default(),
            counters: Arc::new(Counters::default()),
            epoch: Arc::new(AtomicU64::new(0)),
            warnings: Arc::new(crate::ratelog::WarnLimiter::default()),
            client_token: None,
            client_auth: None,
        }
    }

    /// The same endpoint with other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The epoch stamped on outgoing envelopes.
    pub fn current_epoch(&self) -> Epoch {
        self.epoch.load(Ordering::Relaxed)
    }
}

/// Why a request failed, as seen by the requester.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No answer before the deadline. The request may or may not have been executed.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The peer is unreachable right now (connecting failed; reconnection is scheduled).
    #[error("peer unavailable: {0}")]
    Unavailable(String),
    /// The connection was lost while the request was in flight; it may have been executed.
    #[error("connection lost while the request was in flight")]
    Disconnected,
    /// The remote side answered that it could not serve the request, and why.
    #[error("remote fault: {0}")]
    Fault(RemoteError),
    /// The request could not be encoded within the frame size limit.
    #[error("request not sent: {0}")]
    NotSent(String),
    /// The connection's send queue is full (the peer is not reading fast enough).
    #[error("send queue full")]
    Overloaded,
    /// The peer actor or client is stopped.
    #[error("transport stopped")]
    Stopped,
}

/// The protocol of a node's TCP port: the message API and node-to-node requests
/// ([`smart_proto::node::NodeRequest`]), their answers, and event notifications.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeProtocol;

impl Protocol for NodeProtocol {
    type Request = smart_proto::node::NodeRequest;
    type Response = smart_proto::node::NodeResponse;
    type Notify = smart_proto::api::EventNote;
}
