//! The set of [`Peer`] actors of a node, keyed by node id.
//!
//! The node keeps it in step with membership: [`PeerSet::ensure`] when a member is heard of
//! (or its address changes), [`PeerSet::remove`] when it leaves. Callers then address nodes
//! by id: [`PeerSet::request`], [`PeerSet::notify`]. Peer actors are spawned linked to the
//! supervisor given at construction, if any.
//!
//! ## Layout
//! - [`PeerSet`]: the map and its methods; peers are the [`Peer`] actors of [`super::peer`].

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorRef};
use tokio::sync::mpsc;

use super::handshake::Identity;
use super::peer::{self, Backoff, Peer, PeerArgs, PeerMsg, PeerStatus};
use super::{Counters, Endpoint, Protocol, RequestError, Transport};
use smart_proto::NodeId;

/// One node's outbound peers.
pub struct PeerSet<P: Protocol> {
    transport: Arc<dyn Transport>,
    endpoint: Endpoint,
    backoff: Backoff,
    notifications: Option<mpsc::Sender<(Identity, P::Notify)>>,
    supervisor: Option<ActorCell>,
    peers: DashMap<NodeId, (String, ActorRef<PeerMsg<P>>)>,
}

impl<P: Protocol> std::fmt::Debug for PeerSet<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerSet({} peers)", self.peers.len())
    }
}

impl<P: Protocol> PeerSet<P> {
    /// An empty set. `notifications` receives what remote nodes push on our connections;
    /// `supervisor` (if any) supervises every peer actor.
    pub fn new(
        transport: Arc<dyn Transport>,
        endpoint: Endpoint,
        backoff: Backoff,
        notifications: Option<mpsc::Sender<(Identity, P::Notify)>>,
        supervisor: Option<ActorCell>,
    ) -> Self {
        Self {
            transport,
            endpoint,
            backoff,
            notifications,
            supervisor,
            peers: DashMap::new(),
        }
    }

    /// Makes sure a peer actor to `node` at `addr` runs; replaces one with another address.
    pub async fn ensure(
        &self,
        node: NodeId,
        addr: &str,
    ) -> Result<ActorRef<PeerMsg<P>>, ractor::SpawnErr> {
        if let Some(e) = self.peers.get(&node)
            && e.0 == addr
        {
            return Ok(e.1.clone());
        }
        let mut args = PeerArgs::new(self.transport.clone(), addr, self.endpoint.clone());
        args.expect = Some(node);
        args.backoff = self.backoff;
        args.notifications = self.notifications.clone();
        let name = None;
        let new = match &self.supervisor {
            Some(sup) => Actor::spawn_linked(name, Peer::<P>::default(), args, sup.clone()).await?,
            None => Actor::spawn(name, Peer::<P>::default(), args).await?,
        }
        .0;
        // A concurrent `ensure` may have won the race for the same address: keep its actor.
        let mut entry = self
            .peers
            .entry(node)
            .or_insert_with(|| (addr.to_owned(), new.clone()));
        if entry.1.get_id() != new.get_id() {
            if entry.0 == addr {
                new.stop(None);
                return Ok(entry.1.clone());
            }
            let old = std::mem::replace(&mut *entry, (addr.to_owned(), new.clone()));
            old.1.stop(Some("address changed".into()));
        }
        Ok(new)
    }

    /// Stops and forgets the peer of `node`.
    pub fn remove(&self, node: NodeId) {
        if let Some((_, (_, p))) = self.peers.remove(&node) {
            p.stop(Some("removed".into()));
        }
    }

    /// The peer actor of `node`.
    pub fn get(&self, node: NodeId) -> Option<ActorRef<PeerMsg<P>>> {
        self.peers.get(&node).map(|e| e.1.clone())
    }

    /// The nodes with a peer.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.peers.iter().map(|e| *e.key()).collect();
        v.sort();
        v
    }

    /// Sends a request to `node` (`Unavailable` if it has no peer).
    pub async fn request(
        &self,
        node: NodeId,
        body: P::Request,
        timeout: Duration,
    ) -> Result<P::Response, RequestError> {
        let Some(p) = self.get(node) else {
            Counters::inc(&self.endpoint.counters.requests_failed);
            return Err(RequestError::Unavailable(format!(
                "no connection to {node}"
            )));
        };
        peer::request(&p, body, timeout).await
    }

    /// Sends a notification to `node` (dropped and counted if it has no peer or no link).
    pub fn notify(&self, node: NodeId, body: P::Notify) {
        match self.get(node) {
            Some(p) if p.send_message(PeerMsg::Notify { body }).is_ok() => {}
            _ => Counters::inc(&self.endpoint.counters.notifications_dropped),
        }
    }

    /// The link state of every peer (peers that do not answer within `timeout` are left out).
    pub async fn statuses(&self, timeout: Duration) -> Vec<(NodeId, PeerStatus)> {
        let peers: Vec<(NodeId, ActorRef<PeerMsg<P>>)> =
            self.peers.iter().map(|e| (*e.key(), e.1.clone())).collect();
        let mut out = Vec::with_capacity(peers.len());
        for (n, p) in peers {
            if let Some(s) = peer::status(&p, timeout).await {
                out.push((n, s));
            }
        }
        out.sort_by_key(|(n, _)| *n);
        out
    }

    /// Stops every peer.
    pub fn stop_all(&self) {
        for e in self.peers.iter() {
            e.1.stop(None);
        }
        self.peers.clear();
    }
}
