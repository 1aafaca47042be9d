//! An in-memory [`RaftTransport`] for tests and benchmarks: a router between the
//! [`DesiredStore`]s of one process, with partitions and heals.
//!
//! Every message is encoded to postcard and decoded again on its way, as on the node
//! transport, so that what a test passes would also cross a socket.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smart_proto::NodeId;
use smart_proto::desired::{RaftRpc, RaftRpcAnswer};

use crate::DesiredStore;
use crate::network::{RaftTransport, TransportFuture, TransportUnreachable};

#[derive(Default)]
struct Routes {
    nodes: BTreeMap<NodeId, DesiredStore>,
    /// Links cut, each as (smaller id, larger id): cut both ways.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Messages delivered, by kind.
    delivered: BTreeMap<&'static str, u64>,
}

/// Routes Raft messages between the stores registered with it.
#[derive(Clone, Default)]
pub struct MemRouter {
    routes: Arc<Mutex<Routes>>,
}

fn link(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

impl MemRouter {
    /// A new router with no nodes.
    pub fn new() -> Self {
        Self::default()
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // A test that panicked while holding the lock poisons it; the routes stay usable.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport node `me` sends with.
    pub fn transport(&self, me: NodeId) -> Arc<MemTransport> {
        Arc::new(MemTransport {
            me,
            router: self.clone(),
        })
    }

    /// Delivers messages for `store`'s node to it (replacing an earlier registration).
    pub fn register(&self, store: DesiredStore) {
        self.routes().nodes.insert(store.id(), store);
    }

    /// Stops delivering to `node` (it has shut down).
    pub fn unregister(&self, node: NodeId) {
        self.routes().nodes.remove(&node);
    }

    /// Cuts every link between a node of `a` and a node of `b`.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut r = self.routes();
        for x in a {
            for y in b {
                if x != y {
                    r.cut.insert(link(*x, *y));
                }
            }
        }
    }

    /// Cuts `node` off from every other node registered.
    pub fn isolate(&self, node: NodeId) {
        let others: Vec<NodeId> = self.routes().nodes.keys().copied().collect();
        self.partition(&[node], &others);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.routes().cut.clear();
    }

    /// Messages of `kind` ([`RaftRpc::kind`]) delivered so far.
    pub fn delivered(&self, kind: &str) -> u64 {
        self.routes().delivered.get(kind).copied().unwrap_or(0)
    }

    fn target(&self, from: NodeId, to: NodeId) -> Result<DesiredStore, String> {
        let r = self.routes();
        if r.cut.contains(&link(from, to)) {
            return Err("partitioned".into());
        }
        r.nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| "not running".into())
    }
}

/// One node's side of a [`MemRouter`].
pub struct MemTransport {
    me: NodeId,
    router: MemRouter,
}

impl RaftTransport for MemTransport {
    fn call(&self, to: NodeId, rpc: RaftRpc, timeout: Duration) -> TransportFuture {
        let from = self.me;
        let router = self.router.clone();
        Box::pin(async move {
            let unreachable = |reason: String| TransportUnreachable { to, reason };
            let store = router.target(from, to).map_err(unreachable)?;
            let kind = rpc.kind();
            let wire = postcard::to_allocvec(&rpc).map_err(|e| unreachable(e.to_string()))?;
            let rpc: RaftRpc =
                postcard::from_bytes(&wire).map_err(|e| unreachable(e.to_string()))?;
            let answer = tokio::time::timeout(timeout, store.handle_rpc(from, rpc))
                .await
                .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?;
            // A link cut while the request was in flight loses the answer.
            router.target(from, to).map_err(unreachable)?;
            *router.routes().delivered.entry(kind).or_default() += 1;
            let wire = postcard::to_allocvec(&answer).map_err(|e| unreachable(e.to_string()))?;
            postcard::from_bytes::<RaftRpcAnswer>(&wire).map_err(|e| unreachable(e.to_string()))
        })
    }
}
