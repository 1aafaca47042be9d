//! The network adapter: openraft's RPCs as [`RaftRpc`]s over a [`RaftTransport`] the node
//! provides (its authenticated TCP transport; [`crate::mem`] in tests).

// openraft's network trait returns its `RPCError` by value; the helpers here pass it on.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::EmptyNode;
use openraft::error::{
    InstallSnapshotError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use smart_proto::NodeId;
use smart_proto::desired::{RAFT_PAYLOAD_MAX, RaftRpc, RaftRpcAnswer};
use tokio::time::Instant;

use crate::types::{TypeConfig, decode, encode};

/// The future a [`RaftTransport`] answers with.
pub type TransportFuture =
    Pin<Box<dyn Future<Output = Result<RaftRpcAnswer, TransportUnreachable>> + Send + 'static>>;

/// How Raft messages reach another control node: the node implements it over its
/// authenticated TCP transport (a `NodeRequest` carrying the [`RaftRpc`], answered by the
/// receiver's [`crate::DesiredStore::handle_rpc`]).
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `rpc` to node `to` and waits at most `timeout` for its answer. The address of
    /// `to` is the transport's business (the node's membership view).
    fn call(&self, to: NodeId, rpc: RaftRpc, timeout: Duration) -> TransportFuture;
}

/// No answer from a node: not connected, refused, timed out, or the connection broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{to} unreachable: {reason}")]
pub struct TransportUnreachable {
    /// The node.
    pub to: NodeId,
    /// Why.
    pub reason: String,
}

/// When each peer last answered a Raft message: what a write that timed out reports as
/// "reachable".
#[derive(Debug, Default)]
pub(crate) struct Reach {
    last_answer: Mutex<BTreeMap<u64, Instant>>,
}

impl Reach {
    pub(crate) fn answered(&self, peer: u64) {
        if let Ok(mut m) = self.last_answer.lock() {
            m.insert(peer, Instant::now());
        }
    }

    /// Peers among `peers` that answered within `window`.
    pub(crate) fn answered_within(
        &self,
        peers: impl Iterator<Item = u64>,
        window: Duration,
    ) -> usize {
        let Ok(m) = self.last_answer.lock() else {
            return 0;
        };
        let now = Instant::now();
        peers
            .filter(|p| m.get(p).is_some_and(|t| now.duration_since(*t) <= window))
            .count()
    }
}

/// Makes one [`Client`] per peer.
pub(crate) struct NetworkFactory {
    pub(crate) transport: Arc<dyn RaftTransport>,
    pub(crate) reach: Arc<Reach>,
    /// The pause after a peer did not answer, before openraft tries it again.
    pub(crate) backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Client;

    async fn new_client(&mut self, target: u64, _node: &EmptyNode) -> Client {
        Client {
            target,
            transport: self.transport.clone(),
            reach: self.reach.clone(),
            backoff: self.backoff,
        }
    }
}

/// openraft's connection to one peer.
pub(crate) struct Client {
    target: u64,
    transport: Arc<dyn RaftTransport>,
    reach: Arc<Reach>,
    backoff: Duration,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, EmptyNode, RaftError<u64, E>>;

impl Client {
    /// Sends one Raft RPC and decodes the receiver's `Result<Resp, RaftError<E>>`.
    async fn call<Resp, E>(&self, rpc: RaftRpc, timeout: Duration) -> Result<Resp, RpcErr<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let kind = rpc.kind();
        let answer = self
            .transport
            .call(NodeId(self.target), rpc, timeout)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        self.reach.answered(self.target);
        let bytes = match answer {
            RaftRpcAnswer::Reply(bytes) => bytes,
            // Unreachable rather than a network error, so that openraft backs off instead of
            // retrying at once a peer that cannot understand us (another version).
            other => {
                let e = UnexpectedAnswer(format!("{kind}: {other:?}"));
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        let result: Result<Resp, RaftError<u64, E>> =
            decode(&bytes).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// An answer that does not fit the request.
#[derive(Debug, thiserror::Error)]
#[error("unexpected answer to {0}")]
struct UnexpectedAnswer(String);

fn encode_request<T: Serialize, E: std::error::Error>(req: &T) -> Result<Vec<u8>, RpcErr<E>> {
    encode(req).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        let entries = rpc.entries.len() as u64;
        let bytes = encode_request(&rpc)?;
        if bytes.len() > RAFT_PAYLOAD_MAX {
            // openraft sends fewer entries per message from now on.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint((entries / 2).max(1)),
            ));
        }
        self.call(RaftRpc::AppendEntries(bytes), option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        // The chunk size is checked against the payload limit when the store opens.
        let bytes = encode_request(&rpc)?;
        self.call(RaftRpc::InstallSnapshot(bytes), option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        let bytes = encode_request(&rpc)?;
        self.call(RaftRpc::Vote(bytes), option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
