//! The node's TCP port: node-to-node requests and the message API, over
//! `smart_supervision::transport` (framed, authenticated), and the outgoing side
//! ([`TransportPeers`]: one peer actor per remote node, created on first use).
//!
//! Routing of inbound requests:
//! - `Internal` (nodes only): Control commands for Agent86, executed with its fencing;
//! - `Api(Status)`: answered by this node's membership;
//! - `Api(Subscribe)`: the connection joins the event subscribers;
//! - any other `Api` request: to the local Control when this node is Control, else forwarded
//!   to the Control with retries across a failover (the front-end logic).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, call_t};
use smart_actors::agent86::Agent86Msg;
use smart_actors::control::ControlMsg;
use smart_actors::frontend::FrontEnd;
use smart_actors::proto::{BoxFuture, PeerClient, PeerError, PeerRequest, PeerResponse};
use smart_api::{ApiError, NodeProtocol, NodeRequest, NodeResponse, Request, Response};
use smart_supervision::transport::peer::{self, Peer, PeerArgs, PeerMsg};
use smart_supervision::transport::tcp::TcpTransport;
use smart_supervision::transport::{
    Endpoint, Handler, RequestContext, RequestError, Server, ServerHandle,
};
use tracing::info;

use super::membership::MembershipMsg;
use super::shared::Shared;

/// Encodes a node-internal body.
fn seal<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("node messages serialise")
}

/// Decodes a node-internal body, refusing trailing bytes.
fn open<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    let (v, rest) = postcard::take_from_bytes(b).map_err(|e| format!("malformed body: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after body", rest.len()));
    }
    Ok(v)
}

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
        req: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<PeerResponse, PeerError>> {
        Box::pin(async move {
            let peer = self.peer(to).await?;
            let body = match req {
                PeerRequest::Api(r) => NodeRequest::Api(r),
                other => NodeRequest::Internal(seal(&other)),
            };
            match peer::request(&peer, body, timeout).await {
                Ok(NodeResponse::Api(r)) => Ok(PeerResponse::Api(r)),
                Ok(NodeResponse::Internal(b)) => {
                    open(&b).map_err(|reason| PeerError::Unreachable { addr: to, reason })
                }
                Err(RequestError::Timeout(_)) => Err(PeerError::Timeout(to)),
                Err(e) => Err(PeerError::Unreachable {
                    addr: to,
                    reason: e.to_string(),
                }),
            }
        })
    }
}

/// Serves the node's TCP port.
pub struct NodeHandler {
    shared: Arc<Shared>,
    forwarder: FrontEnd,
}

impl NodeHandler {
    fn timeout_ms(&self) -> u64 {
        self.shared.cfg.timing.request_timeout.as_millis() as u64
    }

    /// Adds the transport's counters and Agent86's fencing figures to a status answer.
    async fn extend_counters(&self, counters: &mut Vec<(String, u64)>) {
        if let Ok(serde_json::Value::Object(map)) =
            serde_json::to_value(self.shared.transport.snapshot())
        {
            for (k, v) in map {
                counters.push((format!("transport_{k}"), v.as_u64().unwrap_or(0)));
            }
        }
        if let Some(a) = ractor::registry::where_is(self.shared.name("agent86")) {
            let a: ActorRef<Agent86Msg> = a.into();
            if let Ok(r) = call_t!(a, Agent86Msg::Report, self.timeout_ms()) {
                // Executed epochs must never go down: this counts violations, from the
                // agent's own record of what it executed.
                let regressions = r
                    .recent_commands
                    .windows(2)
                    .filter(|w| w[1].0 < w[0].0)
                    .count() as u64;
                counters.push(("agent_refused_stale".into(), r.refused_stale));
                counters.push(("agent_epoch_regressions".into(), regressions));
                counters.push((
                    "agent_recent_commands".into(),
                    r.recent_commands.len() as u64,
                ));
            }
        }
        counters.sort();
    }

    async fn internal(&self, req: PeerRequest) -> Result<PeerResponse, String> {
        match req {
            PeerRequest::Agent { from, epoch, cmd } => {
                let agent: ActorRef<Agent86Msg> =
                    ractor::registry::where_is(self.shared.name("agent86"))
                        .ok_or("agent86 is restarting")?
                        .into();
                call_t!(
                    agent,
                    |reply| Agent86Msg::Command {
                        from,
                        epoch,
                        cmd,
                        reply
                    },
                    self.timeout_ms()
                )
                .map_err(|e| format!("agent86: {e}"))
            }
            PeerRequest::Api(r) => Ok(PeerResponse::Api(self.api(r, None).await)),
            PeerRequest::Replica(copy) => {
                *self
                    .shared
                    .replica
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = copy;
                Ok(PeerResponse::Done)
            }
            PeerRequest::Event(ev) => {
                self.shared.publish(ev);
                Ok(PeerResponse::Done)
            }
        }
    }

    async fn api(&self, req: Request, ctx: Option<&RequestContext<NodeProtocol>>) -> Response {
        match req {
            Request::Status => {
                let Some(m) = ractor::registry::where_is(self.shared.name("membership")) else {
                    return Response::Error(ApiError::Internal {
                        reason: "membership is restarting".into(),
                    });
                };
                let m: ActorRef<MembershipMsg> = m.into();
                match call_t!(m, MembershipMsg::Status, self.timeout_ms()) {
                    Ok(mut s) => {
                        self.extend_counters(&mut s.counters).await;
                        Response::Status(s)
                    }
                    Err(e) => Response::Error(ApiError::Internal {
                        reason: format!("membership: {e}"),
                    }),
                }
            }
            Request::Subscribe => {
                let Some(ctx) = ctx else {
                    return Response::Error(ApiError::BadRequest {
                        reason: "subscribe on a direct connection".into(),
                    });
                };
                self.shared
                    .subscribers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(ctx.conn.clone());
                Response::Ok
            }
            other => {
                if let Some(c) = ractor::registry::where_is(self.shared.name("control")) {
                    let c: ActorRef<ControlMsg> = c.into();
                    match call_t!(c, ControlMsg::Api, self.timeout_ms(), other.clone()) {
                        Ok(r) => return r,
                        Err(_) => {
                            // Stepping down meanwhile: fall through to forwarding.
                        }
                    }
                }
                self.forwarder.forward(other).await
            }
        }
    }
}

impl Handler<NodeProtocol> for NodeHandler {
    async fn handle(
        &self,
        ctx: RequestContext<NodeProtocol>,
        req: NodeRequest,
    ) -> Result<NodeResponse, String> {
        match req {
            NodeRequest::Internal(bytes) => {
                if ctx.conn.peer().node_id().is_none() {
                    self.shared.counters.incr("refused_internal_from_client");
                    return Err("node-internal requests are accepted from nodes only".into());
                }
                let req: PeerRequest = open(&bytes)?;
                let resp = self.internal(req).await?;
                Ok(NodeResponse::Internal(seal(&resp)))
            }
            NodeRequest::Api(r) => Ok(NodeResponse::Api(self.api(r, Some(&ctx)).await)),
        }
    }
}

/// The actor owning the listener, so that the supervision tree restarts it like any child.
pub struct PeerServer {
    /// Shared node state.
    pub shared: Arc<Shared>,
    /// Outgoing requests (for forwarding to the Control).
    pub peers: Arc<dyn PeerClient>,
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
        let handler = Arc::new(NodeHandler {
            shared: self.shared.clone(),
            forwarder: self.shared.forwarder(self.peers.clone()),
        });
        let addr = self.shared.cfg.listen.to_string();
        let h = Server::bind(&TcpTransport, &addr, self.endpoint.clone(), handler)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        info!(node = %self.shared.id(), %addr, "transport listening");
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
