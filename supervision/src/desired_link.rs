//! The desired-state Raft group over the node's transport: [`NodeRaftLink`] sends a
//! [`RaftRpc`] to another member as a `NodeRequest::Raft` on the authenticated TCP
//! transport, to the address membership knows for it (docs/DESIGN.md, "Desired state in a
//! Raft log"). The receiving port answers with `DesiredStore::handle_rpc`.
//!
//! A member that left the view (a Control that handed over and is stopping, a node the
//! failure detector gave up on) is still tried at its last known address: a leaving leader
//! stays up for its successor's vote, and the successor must be able to ask it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smart_control::peer::PeerClient;
use smart_desired::{RaftTransport, TransportFuture, TransportUnreachable};
use smart_membership::view::ClusterView;
use smart_proto::NodeId;
use smart_proto::desired::RaftRpc;
use smart_proto::node::{NodeRequest, NodeResponse};
use tokio::sync::watch;

/// Raft messages over the node transport.
pub struct NodeRaftLink {
    /// Outgoing requests.
    pub peers: Arc<dyn PeerClient>,
    /// Who is where (the other live members' transport addresses).
    pub view: watch::Receiver<ClusterView>,
    /// The last address the view gave for each member (kept up to date by a task that
    /// follows the view).
    known: Arc<Mutex<BTreeMap<NodeId, SocketAddr>>>,
}

impl NodeRaftLink {
    /// A link over `peers`, addressed by `view`. Spawns the task that remembers every
    /// address the view gives (it ends with the view).
    pub fn new(peers: Arc<dyn PeerClient>, view: watch::Receiver<ClusterView>) -> Self {
        let known = Arc::new(Mutex::new(BTreeMap::new()));
        let mut rx = view.clone();
        let remember = known.clone();
        tokio::spawn(async move {
            loop {
                let others = rx.borrow_and_update().others.clone();
                remember
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(others);
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        NodeRaftLink { peers, view, known }
    }

    /// Where `to` is: in the view, else where it last was.
    fn address(&self, to: NodeId) -> Option<SocketAddr> {
        let live = self.view.borrow().others.get(&to).copied();
        live.or_else(|| {
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&to)
                .copied()
        })
    }
}

impl RaftTransport for NodeRaftLink {
    fn call(&self, to: NodeId, rpc: RaftRpc, timeout: Duration) -> TransportFuture {
        let addr = self.address(to);
        let peers = self.peers.clone();
        Box::pin(async move {
            let unreachable = |reason: String| TransportUnreachable { to, reason };
            let addr = addr.ok_or_else(|| unreachable("address not known yet".into()))?;
            match peers.request(addr, NodeRequest::Raft(rpc), timeout).await {
                Ok(NodeResponse::Raft(answer)) => Ok(answer),
                Ok(other) => Err(unreachable(format!("unexpected answer {other:?}"))),
                Err(e) => Err(unreachable(e.to_string())),
            }
        })
    }
}
