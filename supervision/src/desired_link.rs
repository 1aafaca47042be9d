//! The desired-state Raft group over the node's transport: [`NodeRaftLink`] sends a
//! [`RaftRpc`] to another member as a `NodeRequest::Raft` on the authenticated TCP
//! transport, to the address membership knows for it (docs/DESIGN.md, "Desired state in a
//! Raft log"). The receiving port answers with `DesiredStore::handle_rpc`.

use std::sync::Arc;
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
}

impl RaftTransport for NodeRaftLink {
    fn call(&self, to: NodeId, rpc: RaftRpc, timeout: Duration) -> TransportFuture {
        let addr = self.view.borrow().others.get(&to).copied();
        let peers = self.peers.clone();
        Box::pin(async move {
            let unreachable = |reason: String| TransportUnreachable { to, reason };
            let addr = addr.ok_or_else(|| unreachable("not a live member".into()))?;
            match peers.request(addr, NodeRequest::Raft(rpc), timeout).await {
                Ok(NodeResponse::Raft(answer)) => Ok(answer),
                Ok(other) => Err(unreachable(format!("unexpected answer {other:?}"))),
                Err(e) => Err(unreachable(e.to_string())),
            }
        })
    }
}
