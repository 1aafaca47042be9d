//! The node's TCP port: node-to-node requests and the message API, over
//! `smart_transport` (framed, authenticated), and the outgoing side
//! ([`TransportPeers`]: one peer actor per remote node, created on first use).
//!
//! Routing of inbound requests ([`NodeRequest`]):
//! - `Agent` (nodes only): Control commands for Agent86, accepted only when the
//!   connection's authenticated node (the Noise static key the handshake proved; the
//!   session already drops envelopes whose `from` differs from it) is the Control of this
//!   node's view, then executed with Agent86's fencing; from any other node refused and
//!   counted in `agent_command_not_from_control` (see [`FromControl`]);
//! - `Replica` (nodes only): accepted from the view's Control only (else counted in
//!   `replica_not_from_control`) and at most at the view's epoch (else counted in
//!   `replica_above_view_epoch`), kept when newer than the copy this node has by (epoch,
//!   version);
//! - `Event` (nodes only): from the view's Control only (else counted in
//!   `event_not_from_control`), pushed to this node's subscribers;
//! - `Api(Subscribe)`: the connection joins the event subscribers;
//! - any other `Api` request: to the [`Dispatcher`] (status and version here, the rest to
//!   the local Control or forwarded to the Control with retries across a failover), by the
//!   deadline the sender gave (`ApiWithin`), else within `[timing] request_budget`.
//!
//! A request this node will not or cannot serve is answered with a typed
//! [`RemoteError`] in the transport's fault: `Refused` (node-internal requests from a
//! client, agent commands or registry copies from a node that is not the Control),
//! `Unavailable` (Agent86 restarting), `TimedOut` (Agent86 did not finish within the
//! command's timeout), `Internal` (Agent86 failed), so that the sender tells them from a
//! node that is unreachable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use smart_agent86::Agent86Msg;
use smart_api::{NodeProtocol, NodeRequest, NodeResponse, Request, Response};
use smart_control::peer::{BoxFuture, PeerClient, PeerError};
use smart_membership::view::{ClusterView, FromControl};
use smart_proto::agent::AgentReply;
use smart_proto::error::RemoteError;
use smart_proto::{Epoch, NodeId};
use smart_transport::handshake::{ClientScope, Identity};
use smart_transport::peer::{self, Peer, PeerArgs, PeerMsg};
use smart_transport::ratelog::WarnLimiter;
use smart_transport::tcp::TcpTransport;
use smart_transport::{Endpoint, Handler, RequestContext, RequestError, Server, ServerHandle};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span};

use crate::dispatch::Dispatcher;
use crate::replica::ReplicaStore;
use crate::routes::RouteReaders;
use smart_config::NodeConfig;
use smart_node::counters::Counters;
use smart_node::events::Subscribers;

/// Outgoing requests over TCP, one [`Peer`] actor per destination.
pub struct TransportPeers {
    endpoint: Endpoint,
    peers: DashMap<SocketAddr, ActorRef<PeerMsg<NodeProtocol>>>,
}

impl TransportPeers {
    /// Peers speaking as `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            peers: DashMap::new(),
        }
    }

    async fn peer(&self, to: SocketAddr) -> Result<ActorRef<PeerMsg<NodeProtocol>>, PeerError> {
        if let Some(p) = self.peers.get(&to) {
            return Ok(p.clone());
        }
        let args = PeerArgs::new(
            Arc::new(TcpTransport),
            to.to_string(),
            self.endpoint.clone(),
        );
        let p =
            Peer::<NodeProtocol>::start(None, args)
                .await
                .map_err(|e| PeerError::Unreachable {
                    addr: to,
                    reason: e.to_string(),
                })?;
        // Two callers may race to create it: keep one, stop the other.
        let kept = self.peers.entry(to).or_insert(p.clone()).clone();
        if kept.get_id() != p.get_id() {
            p.stop(None);
        }
        Ok(kept)
    }

    /// Stops every peer actor.
    pub fn stop_all(&self) {
        for p in self.peers.iter() {
            p.stop(None);
        }
        self.peers.clear();
    }
}

impl PeerClient for TransportPeers {
    fn request(
        &self,
        to: SocketAddr,
        req: NodeRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<NodeResponse, PeerError>> {
        Box::pin(async move {
            let peer = self.peer(to).await?;
            peer::request(&peer, req, timeout)
                .await
                .map_err(|e| match e {
                    RequestError::Timeout(_) => PeerError::Timeout(to),
                    // The peer answered: alive, and it says why not.
                    RequestError::Fault(remote) => PeerError::remote(to, remote),
                    e => PeerError::Unreachable {
                        addr: to,
                        reason: e.to_string(),
                    },
                })
        })
    }
}

/// What the TCP port needs from the node.
#[derive(Clone)]
pub struct PortContext {
    /// The node's configuration.
    pub cfg: Arc<NodeConfig>,
    /// The node's actors.
    pub routes: RouteReaders,
    /// Where message-API requests are answered (shared with the HTTP API).
    pub dispatch: Dispatcher,
    /// Event subscribers.
    pub subscribers: Arc<Subscribers>,
    /// The registry copy.
    pub replica: Arc<ReplicaStore>,
    /// Node counters.
    pub counters: Arc<Counters>,
    /// The cluster view (who is Control).
    pub view: watch::Receiver<ClusterView>,
    /// Rate-limited WARN lines for refused traffic.
    pub warnings: Arc<WarnLimiter>,
    /// The desired-state log (its Raft messages arrive here).
    pub desired: Option<smart_desired::DesiredStore>,
}

/// Serves the node's TCP port.
pub struct NodeHandler {
    ctx: PortContext,
}

impl NodeHandler {
    /// How long a request from a node that may be a Control this node has not heard of
    /// yet waits for the view to catch up (half a request timeout).
    /// Whether `from` stamping `epoch` is the Control of this node's view, judged at once:
    /// a sender above the view's epoch (a Control this node has not heard of yet) is told
    /// to ask again ([`smart_proto::error::VIEW_BEHIND`]), never waited for, so that no
    /// member can hold a handler while it tries to move the view.
    fn judge_sender(&self, from: NodeId, epoch: Epoch) -> FromControl {
        self.ctx.view.borrow().sender_is_control(from, epoch)
    }

    async fn api(
        &self,
        req: Request,
        deadline: tokio::time::Instant,
        ctx: &RequestContext<NodeProtocol>,
    ) -> Response {
        match req {
            Request::Subscribe => {
                self.ctx.subscribers.add(ctx.conn.clone());
                Response::Ok
            }
            other => self.ctx.dispatch.request_by(other, deadline).await,
        }
    }
}

impl Handler<NodeProtocol> for NodeHandler {
    /// Members (their node key) and clients with an API token; not a client that holds
    /// only the cluster key.
    fn allow(&self, peer: &Identity) -> bool {
        match peer {
            Identity::Node { .. } | Identity::Client { scope: Some(_), .. } => true,
            Identity::Client { scope: None, .. } => {
                self.ctx.counters.incr("clients_without_token_refused");
                false
            }
        }
    }

    async fn handle(
        &self,
        ctx: RequestContext<NodeProtocol>,
        req: NodeRequest,
    ) -> Result<NodeResponse, RemoteError> {
        let span = info_span!("port", node = %self.ctx.cfg.id(), peer = ?ctx.conn.peer().node_id());
        async move {
            let from = ctx.conn.peer().node_id();
            if req.nodes_only() && from.is_none() {
                self.ctx.counters.incr("refused_internal_from_client");
                return Err(RemoteError::Refused {
                    reason: "node-internal requests are accepted from nodes only".into(),
                });
            }
            if let Identity::Client {
                scope: Some(ClientScope::Read),
                ..
            } = ctx.conn.peer()
                && let NodeRequest::Api(r) | NodeRequest::ApiWithin { req: r, .. } = &req
                && !r.is_read_only()
            {
                self.ctx.counters.incr("client_requests_forbidden");
                return Err(RemoteError::Refused {
                    reason: "this client's token may only read; the request needs an admin token"
                        .into(),
                });
            }
            let now = tokio::time::Instant::now();
            match req {
                NodeRequest::Api(r) => {
                    let deadline = now + self.ctx.cfg.timing.budget();
                    Ok(NodeResponse::Api(self.api(r, deadline, &ctx).await))
                }
                NodeRequest::ApiWithin { req, within_ms } => {
                    // The sender's deadline, never beyond this node's own budget (a client
                    // asking for hours does not hold a handler that long).
                    let within = Duration::from_millis(within_ms).min(self.ctx.cfg.timing.budget());
                    Ok(NodeResponse::Api(self.api(req, now + within, &ctx).await))
                }
                NodeRequest::Agent { epoch, cmd } => {
                    let from = from.expect("checked: nodes only");
                    match self.judge_sender(from, epoch) {
                        FromControl::Yes => {}
                        FromControl::NotYet => {
                            self.ctx.counters.incr("agent_command_above_view");
                            return Err(RemoteError::Unavailable {
                                what: smart_proto::error::VIEW_BEHIND.into(),
                            });
                        }
                        verdict => {
                            self.ctx.counters.incr("agent_command_not_from_control");
                            self.ctx.warnings.warn(
                                "agent_command_not_from_control",
                                format_args!(
                                    "refused an agent command from {from} at epoch {epoch}: \
                                     not the Control ({verdict:?})"
                                ),
                            );
                            return match verdict {
                                // A deposed Control: told so, as Agent86's fencing would.
                                FromControl::No { epoch: highest, .. } if epoch < highest => {
                                    Ok(NodeResponse::Agent(AgentReply::Refused { epoch, highest }))
                                }
                                _ => Err(RemoteError::Refused {
                                    reason: format!(
                                        "agent commands are accepted from the Control only; \
                                         {from} at epoch {epoch} is not ({verdict:?})"
                                    ),
                                }),
                            };
                        }
                    }
                    let agent =
                        self.ctx
                            .routes
                            .agent86()
                            .ok_or_else(|| RemoteError::Unavailable {
                                what: "agent86 (restarting)".into(),
                            })?;
                    // As long as the Control waits for it: a restore that copies a cache
                    // across hosts takes far longer than one request timeout.
                    let budget = self.ctx.cfg.timing.request_timeout * cmd.timeout_multiple();
                    let reply = agent
                        .call(
                            |reply| Agent86Msg::Command {
                                from,
                                epoch,
                                cmd,
                                reply,
                            },
                            Some(budget),
                        )
                        .await;
                    match reply {
                        Ok(CallResult::Success(r)) => Ok(NodeResponse::Agent(r)),
                        Ok(CallResult::Timeout) => Err(RemoteError::TimedOut),
                        // Stopped or restarting while it had the command.
                        Ok(CallResult::SenderError) | Err(_) => Err(RemoteError::Unavailable {
                            what: "agent86 (stopped while executing the command)".into(),
                        }),
                    }
                }
                NodeRequest::Replica(r) => {
                    let from = from.expect("checked: nodes only");
                    let verdict = self.judge_sender(from, r.epoch);
                    if verdict == FromControl::NotYet {
                        // The next copy is sent anyway; this one is not waited for.
                        self.ctx.counters.incr("replica_above_view");
                        return Err(RemoteError::Unavailable {
                            what: smart_proto::error::VIEW_BEHIND.into(),
                        });
                    }
                    if verdict != FromControl::Yes {
                        self.ctx.counters.incr("replica_not_from_control");
                        self.ctx.warnings.warn(
                            "replica_not_from_control",
                            format_args!(
                                "refused a registry copy from {from} at epoch {} version {}: \
                                 not the Control ({verdict:?})",
                                r.epoch, r.version
                            ),
                        );
                        return Err(RemoteError::Refused {
                            reason: format!(
                                "registry copies are accepted from the Control only; {from} is not"
                            ),
                        });
                    }
                    // Bounded by the view's epoch: a copy stamped far above it (even by the
                    // Control's own node) would outrank every real copy for good. The
                    // Control's next copy, once the view has its epoch, is taken.
                    let view_epoch = self.ctx.view.borrow().control.map_or(0, |c| c.epoch);
                    if r.epoch > view_epoch {
                        self.ctx.counters.incr("replica_above_view_epoch");
                        return Err(RemoteError::Refused {
                            reason: format!(
                                "registry copy at epoch {} is above the view's ({view_epoch})",
                                r.epoch
                            ),
                        });
                    }
                    // Counted either way: a test waits for the copies it needs to arrive.
                    if self.ctx.replica.offer(r) {
                        self.ctx.counters.incr("replica_accepted");
                    } else {
                        self.ctx.counters.incr("replica_refused_older");
                    }
                    Ok(NodeResponse::Done)
                }
                // Only the Control publishes cluster events; what another member says in its
                // name (a placement, a service moved) could steer viewers: refused, counted.
                NodeRequest::Event(ev) => {
                    let from = from.expect("checked: nodes only");
                    let control = self.ctx.view.borrow().control.map(|c| c.node);
                    if control != Some(from) {
                        self.ctx.counters.incr("event_not_from_control");
                        return Err(RemoteError::Refused {
                            reason: format!(
                                "events are accepted from the Control only; {from} is not"
                            ),
                        });
                    }
                    self.ctx.subscribers.publish(&ev);
                    Ok(NodeResponse::Done)
                }
                // From another member (nodes only, authenticated); the store refuses one
                // that speaks for another member than the sender, the Raft engine checks
                // terms and the voter set, the decoder sizes.
                NodeRequest::Raft(rpc) => match &self.ctx.desired {
                    Some(store) => {
                        let from = from.expect("checked: nodes only");
                        Ok(NodeResponse::Raft(store.handle_rpc(from, rpc).await))
                    }
                    None => Err(RemoteError::Unavailable {
                        what: "the desired-state log (not open yet)".into(),
                    }),
                },
            }
        }
        .instrument(span)
        .await
    }
}

/// The actor owning the listener, so that the supervision tree restarts it like any child.
pub struct PeerServer {
    /// What requests are routed to.
    pub ctx: PortContext,
    /// The listen address.
    pub listen: SocketAddr,
    /// The endpoint (identity, key, counters).
    pub endpoint: Endpoint,
}

impl Actor for PeerServer {
    type Msg = ();
    type State = Option<ServerHandle>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx = self.ctx.clone();
        let node = ctx.cfg.id();
        let handler = Arc::new(NodeHandler { ctx });
        let addr = self.listen.to_string();
        let h = Server::bind(&TcpTransport, &addr, self.endpoint.clone(), handler)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        info!(%node, %addr, "transport listening");
        Ok(Some(h))
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(h) = st.take() {
            h.shutdown().await;
        }
        Ok(())
    }
}
