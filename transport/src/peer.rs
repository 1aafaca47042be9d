//! The per-peer actor: owns the outbound connection to one remote node.
//!
//! A [`Peer`] connects, runs the handshake (checking that the remote is the node it meant to
//! reach), and then carries requests and notifications. It reconnects by itself with
//! exponential backoff and jitter ([`Backoff`]) whenever the connection cannot be opened or
//! is lost. Every request has a deadline: its caller gets exactly one answer, the response,
//! a remote `Fault`, or an error ([`RequestError::Timeout`] at the deadline,
//! [`RequestError::Disconnected`] at once if the connection drops while it is in flight,
//! [`RequestError::Unavailable`] at once while the peer is unreachable). Requests made while
//! the first connection is being opened wait for it (within their deadline).
//!
//! Call it with [`request`] (a typed wrapper over ractor's `call` with a timeout) or send
//! [`PeerMsg::Notify`] for fire-and-forget messages. Inbound notifications from the remote
//! are forwarded to [`PeerArgs::notifications`].
//!
//! States: `Connecting` → `Up` → (lost) → `Backoff` → `Connecting` → … ; a generation number
//! tags each attempt so that late events from an old connection are ignored.
//!
//! ## Layout
//! - [`Backoff`]: the reconnection delay policy (pure).
//! - [`PeerArgs`], [`PeerMsg`], [`PeerStatus`]: how a peer is started, called and observed.
//! - [`Peer`] and its private state machine; [`request`] and [`status`]: typed call helpers.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::handshake::{self, Identity};
use super::session::{self, AbortOnDrop};
use super::{Counters, Endpoint, Message, MessageOf, Protocol, RequestError, Transport};
use crate::frame::FrameError;
use smart_proto::NodeId;
use smart_proto::error::RemoteError;

/// Reconnection delays: `initial · 2^attempt`, capped at `max`, then a uniformly random
/// point in its upper half (jitter, so that peers cut off together do not retry together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = exp / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

/// What a [`Peer`] is started with.
pub struct PeerArgs<P: Protocol> {
    /// The network seam.
    pub transport: Arc<dyn Transport>,
    /// The remote's listen address.
    pub addr: String,
    /// Our identity, key, limits and counters.
    pub endpoint: Endpoint,
    /// The node we expect at `addr` (the handshake fails otherwise); `None` accepts anyone
    /// holding the cluster key (e.g. a seed address whose node id is unknown).
    pub expect: Option<NodeId>,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Where inbound notifications go (dropped and counted when full or absent).
    pub notifications: Option<mpsc::Sender<(Identity, P::Notify)>>,
    /// Seed of the jitter generator (tests pass a fixed one).
    pub seed: u64,
}

impl<P: Protocol> PeerArgs<P> {
    /// Arguments with default backoff, no notification sink and a random seed.
    pub fn new(transport: Arc<dyn Transport>, addr: impl Into<String>, endpoint: Endpoint) -> Self {
        Self {
            transport,
            addr: addr.into(),
            endpoint,
            expect: None,
            backoff: Backoff::default(),
            notifications: None,
            seed: rand::random(),
        }
    }
}

/// The link state, as reported by [`PeerMsg::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LinkState {
    /// Opening a connection.
    Connecting,
    /// Connected and authenticated.
    Up {
        /// The remote.
        peer: Identity,
    },
    /// Waiting before the next attempt.
    Backoff {
        /// Why the last attempt failed or the connection was lost.
        last_error: String,
        /// Consecutive failed attempts.
        attempts: u32,
    },
}

/// A snapshot of a peer, for `smart status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// The remote address.
    pub addr: String,
    /// Link state.
    pub state: LinkState,
    /// Requests awaiting an answer.
    pub pending: usize,
}

/// Messages of the [`Peer`] actor.
pub enum PeerMsg<P: Protocol> {
    /// Send a request; the answer (or error) arrives on `reply` by `timeout` at the latest.
    Request {
        /// The request.
        body: P::Request,
        /// Deadline from now.
        timeout: Duration,
        /// Where the outcome goes.
        reply: RpcReplyPort<Result<P::Response, RequestError>>,
    },
    /// Send a notification if connected; otherwise (or if the queue is full) it is dropped
    /// and counted.
    Notify {
        /// The notification.
        body: P::Notify,
    },
    /// Report the link state.
    Status(RpcReplyPort<PeerStatus>),
    /// Internal events of the actor (connection tasks, timers).
    Event(PeerEvent<P>),
}

/// Internal event of a [`Peer`]; opaque.
pub struct PeerEvent<P: Protocol>(Ev<P>);

enum Ev<P: Protocol> {
    Connected {
        generation: u64,
        tx: mpsc::Sender<MessageOf<P>>,
        peer: Identity,
        writer: AbortOnDrop,
    },
    ConnectFailed {
        generation: u64,
        error: String,
    },
    Inbound {
        generation: u64,
        msg: MessageOf<P>,
    },
    Closed {
        generation: u64,
        error: String,
    },
    Retry {
        generation: u64,
    },
    Deadline {
        id: u64,
    },
    NotSent {
        id: u64,
        error: String,
    },
}

/// The per-peer actor. Spawn it with [`Peer::spawn`] (or `spawn_linked` under a supervisor).
pub struct Peer<P>(PhantomData<fn() -> P>);

impl<P> Default for Peer<P> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<P: Protocol> Peer<P> {
    /// Spawns an unsupervised peer actor (tests, tools). Nodes use
    /// `Actor::spawn_linked(name, Peer::default(), args, supervisor)`.
    pub async fn start(
        name: Option<String>,
        args: PeerArgs<P>,
    ) -> Result<ActorRef<PeerMsg<P>>, ractor::SpawnErr> {
        let (r, _join) = Actor::spawn(name, Peer::<P>::default(), args).await?;
        Ok(r)
    }
}

/// Extra time given to the actor mailbox over a request's own deadline, so that the actor's
/// `Timeout` answer normally wins over the caller-side one.
const CALL_MARGIN: Duration = Duration::from_millis(250);

/// Sends a request through a peer actor and waits for its outcome (at most about
/// `timeout`).
pub async fn request<P: Protocol>(
    peer: &ActorRef<PeerMsg<P>>,
    body: P::Request,
    timeout: Duration,
) -> Result<P::Response, RequestError> {
    match peer
        .call(
            |reply| PeerMsg::Request {
                body,
                timeout,
                reply,
            },
            Some(timeout + CALL_MARGIN),
        )
        .await
    {
        Ok(CallResult::Success(r)) => r,
        Ok(CallResult::Timeout) => Err(RequestError::Timeout(timeout)),
        Ok(CallResult::SenderError) | Err(_) => Err(RequestError::Stopped),
    }
}

/// Reads a peer's link state (`None` if the actor is gone or does not answer in time).
pub async fn status<P: Protocol>(
    peer: &ActorRef<PeerMsg<P>>,
    timeout: Duration,
) -> Option<PeerStatus> {
    match peer.call(PeerMsg::Status, Some(timeout)).await {
        Ok(CallResult::Success(s)) => Some(s),
        _ => None,
    }
}

enum Link<P: Protocol> {
    Connecting,
    Up {
        tx: mpsc::Sender<MessageOf<P>>,
        peer: Identity,
        _writer: AbortOnDrop,
    },
    Backoff {
        error: String,
    },
}

struct Pending<P: Protocol> {
    reply: RpcReplyPort<Result<P::Response, RequestError>>,
    timer: JoinHandle<Result<(), ractor::MessagingErr<PeerMsg<P>>>>,
    timeout: Duration,
}

/// State of a [`Peer`] actor.
pub struct PeerState<P: Protocol> {
    args: PeerArgs<P>,
    rng: ChaCha8Rng,
    generation: u64,
    link: Link<P>,
    attempts: u32,
    next_id: u64,
    pending: HashMap<u64, Pending<P>>,
    /// Requests made while connecting, sent once connected.
    queued: Vec<(u64, P::Request)>,
    /// The task running the current connection (connect, handshake, then reading).
    conn_task: Option<AbortOnDrop>,
}

impl<P: Protocol> PeerState<P> {
    fn start_connect(&mut self, myself: &ActorRef<PeerMsg<P>>) {
        self.generation += 1;
        self.link = Link::Connecting;
        let generation = self.generation;
        let me = myself.clone();
        let transport = self.args.transport.clone();
        let addr = self.args.addr.clone();
        let ep = self.args.endpoint.clone();
        let expect = self.args.expect;
        let span = tracing::info_span!("peer", node = %ep.identity, peer_addr = %addr, generation);
        let task = tokio::spawn(
            async move {
                let opened = async {
                    let mut raw =
                        tokio::time::timeout(ep.limits.connect_timeout, transport.connect(&addr))
                            .await
                            .map_err(|_| format!("connect to {addr} timed out"))?
                            .map_err(|e| format!("connect to {addr}: {e}"))?;
                    let session = handshake::initiate(&mut raw, &ep, expect)
                        .await
                        .map_err(|e| format!("handshake with {addr}: {e}"))?;
                    Ok::<_, String>((raw, session))
                };
                let (raw, session) = match opened.await {
                    Ok(x) => x,
                    Err(error) => {
                        Counters::inc(&ep.counters.connects_failed);
                        let _ = me.send_message(PeerMsg::Event(PeerEvent(Ev::ConnectFailed {
                            generation,
                            error,
                        })));
                        return;
                    }
                };
                let hook_me = me.clone();
                let est = session::establish::<P>(
                    raw,
                    session,
                    &ep,
                    Some(Box::new(move |id, e: FrameError| {
                        let _ = hook_me.send_message(PeerMsg::Event(PeerEvent(Ev::NotSent {
                            id,
                            error: e.to_string(),
                        })));
                    })),
                );
                let mut reader = est.reader;
                // Sent before any inbound message, from this same task: the actor sees them in
                // this order.
                if me
                    .send_message(PeerMsg::Event(PeerEvent(Ev::Connected {
                        generation,
                        tx: est.tx,
                        peer: est.peer,
                        writer: est.writer,
                    })))
                    .is_err()
                {
                    return;
                }
                let error = loop {
                    match reader.next().await {
                        Ok(env) => {
                            if me
                                .send_message(PeerMsg::Event(PeerEvent(Ev::Inbound {
                                    generation,
                                    msg: env.body,
                                })))
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => break e.to_string(),
                    }
                };
                let _ =
                    me.send_message(PeerMsg::Event(PeerEvent(Ev::Closed { generation, error })));
            }
            .instrument(span),
        );
        self.conn_task = Some(AbortOnDrop(task));
    }

    fn enter_backoff(&mut self, myself: &ActorRef<PeerMsg<P>>, error: String) {
        let delay = self.args.backoff.delay(self.attempts, &mut self.rng);
        if self.attempts == 0 {
            tracing::warn!(peer_addr = %self.args.addr, cause = %error, retry_in = ?delay, "peer unreachable");
        } else {
            tracing::debug!(peer_addr = %self.args.addr, cause = %error, retry_in = ?delay, "peer still unreachable");
        }
        self.attempts = self.attempts.saturating_add(1);
        for (id, _) in std::mem::take(&mut self.queued) {
            self.complete(id, Err(RequestError::Unavailable(error.clone())));
        }
        self.link = Link::Backoff { error };
        self.conn_task = None;
        let generation = self.generation;
        myself.send_after(delay, move || {
            PeerMsg::Event(PeerEvent(Ev::Retry { generation }))
        });
    }

    fn complete(&mut self, id: u64, result: Result<P::Response, RequestError>) {
        if let Some(p) = self.pending.remove(&id) {
            p.timer.abort();
            if result.is_err() {
                Counters::inc(&self.args.endpoint.counters.requests_failed);
            }
            let _ = p.reply.send(result);
        }
    }

    fn send(&mut self, id: u64, body: P::Request) {
        let Link::Up { tx, .. } = &self.link else {
            return;
        };
        match tx.try_send(Message::Request { id, body }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.complete(id, Err(RequestError::Overloaded))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.complete(id, Err(RequestError::Disconnected))
            }
        }
    }

    fn on_event(&mut self, myself: &ActorRef<PeerMsg<P>>, ev: Ev<P>) {
        match ev {
            Ev::Connected {
                generation,
                tx,
                peer,
                writer,
            } if generation == self.generation => {
                tracing::info!(%peer, peer_addr = %self.args.addr, "peer connected");
                self.attempts = 0;
                self.link = Link::Up {
                    tx,
                    peer,
                    _writer: writer,
                };
                for (id, body) in std::mem::take(&mut self.queued) {
                    if self.pending.contains_key(&id) {
                        self.send(id, body);
                    }
                }
            }
            Ev::ConnectFailed { generation, error } if generation == self.generation => {
                self.enter_backoff(myself, error);
            }
            Ev::Closed { generation, error } if generation == self.generation => {
                let ids: Vec<u64> = self.pending.keys().copied().collect();
                for id in ids {
                    self.complete(id, Err(RequestError::Disconnected));
                }
                self.enter_backoff(myself, error);
            }
            Ev::Inbound { generation, msg } if generation == self.generation => match msg {
                Message::Response { id, body } => self.complete(id, Ok(body)),
                Message::Fault { id, error } => self.complete(id, Err(RequestError::Fault(error))),
                Message::Notify { body } => {
                    let peer = match &self.link {
                        Link::Up { peer, .. } => *peer,
                        _ => return,
                    };
                    let delivered = self
                        .args
                        .notifications
                        .as_ref()
                        .is_some_and(|s| s.try_send((peer, body)).is_ok());
                    if !delivered {
                        Counters::inc(&self.args.endpoint.counters.notifications_dropped);
                    }
                }
                Message::Request { id, .. } => {
                    if let Link::Up { tx, .. } = &self.link {
                        let _ = tx.try_send(Message::Fault {
                            id,
                            error: RemoteError::Refused {
                                reason: "requests are not served on an outbound connection".into(),
                            },
                        });
                    }
                }
            },
            Ev::Retry { generation } if generation == self.generation => {
                if matches!(self.link, Link::Backoff { .. }) {
                    Counters::inc(&self.args.endpoint.counters.reconnects);
                    self.start_connect(myself);
                }
            }
            Ev::Deadline { id } => {
                if let Some(p) = self.pending.remove(&id) {
                    Counters::inc(&self.args.endpoint.counters.requests_timed_out);
                    let _ = p.reply.send(Err(RequestError::Timeout(p.timeout)));
                }
            }
            Ev::NotSent { id, error } => self.complete(id, Err(RequestError::NotSent(error))),
            // Late events from an earlier connection attempt.
            Ev::Connected { .. }
            | Ev::ConnectFailed { .. }
            | Ev::Closed { .. }
            | Ev::Inbound { .. }
            | Ev::Retry { .. } => {}
        }
    }

    fn status(&self) -> PeerStatus {
        PeerStatus {
            addr: self.args.addr.clone(),
            state: match &self.link {
                Link::Connecting => LinkState::Connecting,
                Link::Up { peer, .. } => LinkState::Up { peer: *peer },
                Link::Backoff { error } => LinkState::Backoff {
                    last_error: error.clone(),
                    attempts: self.attempts,
                },
            },
            pending: self.pending.len(),
        }
    }
}

impl<P: Protocol> Actor for Peer<P> {
    type Msg = PeerMsg<P>;
    type State = PeerState<P>;
    type Arguments = PeerArgs<P>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = PeerState {
            rng: ChaCha8Rng::seed_from_u64(args.seed),
            args,
            generation: 0,
            link: Link::Connecting,
            attempts: 0,
            next_id: 1,
            pending: HashMap::new(),
            queued: Vec::new(),
            conn_task: None,
        };
        state.start_connect(&myself);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ids: Vec<u64> = state.pending.keys().copied().collect();
        for id in ids {
            state.complete(id, Err(RequestError::Stopped));
        }
        state.conn_task = None;
        state.link = Link::Connecting;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PeerMsg::Request {
                body,
                timeout,
                reply,
            } => {
                if reply.is_closed() {
                    return Ok(());
                }
                if let Link::Backoff { error } = &state.link {
                    Counters::inc(&state.args.endpoint.counters.requests_failed);
                    let _ = reply.send(Err(RequestError::Unavailable(error.clone())));
                    return Ok(());
                }
                let id = state.next_id;
                state.next_id += 1;
                let timer = myself.send_after(timeout, move || {
                    PeerMsg::Event(PeerEvent(Ev::Deadline { id }))
                });
                state.pending.insert(
                    id,
                    Pending {
                        reply,
                        timer,
                        timeout,
                    },
                );
                if matches!(state.link, Link::Connecting) {
                    state.queued.push((id, body));
                } else {
                    state.send(id, body);
                }
            }
            PeerMsg::Notify { body } => {
                let sent = match &state.link {
                    Link::Up { tx, .. } => tx.try_send(Message::Notify { body }).is_ok(),
                    _ => false,
                };
                if !sent {
                    Counters::inc(&state.args.endpoint.counters.notifications_dropped);
                }
            }
            PeerMsg::Status(reply) => {
                let _ = reply.send(state.status());
            }
            PeerMsg::Event(PeerEvent(ev)) => state.on_event(&myself, ev),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (attempt, cap) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (30, 1000),
        ] {
            for _ in 0..50 {
                let d = b.delay(attempt, &mut rng);
                let cap = Duration::from_millis(cap);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "attempt {attempt}: {d:?} vs cap {cap:?}"
                );
            }
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| b.delay(3, &mut rng)).collect();
        assert!(spread.len() > 10, "jitter must spread retries");
    }
}
