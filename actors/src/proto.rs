//! Node-to-node requests and responses, carried in the transport's envelope body.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use smart_supervision::{Epoch, NodeId};

/// A command from a Control to an Agent86. Every command is fenced by its epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentCommand {
    /// Send your state (instances, reservations, usage); used to rebuild and to refresh.
    Report,
}

/// What an Agent86 knows, for a Control to rebuild from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AgentReport {
    /// The reporting node.
    pub node: u64,
    /// Names of the service instances it runs.
    pub instances: Vec<String>,
    /// The last commands it executed, oldest first: `(epoch, control node id)`. Lets tests
    /// and operators check from outside that executed epochs never go down.
    pub recent_commands: Vec<(Epoch, u64)>,
    /// Commands refused because their epoch was below the highest seen.
    pub refused_stale: u64,
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Control → Agent86.
    Agent {
        /// The Control sending it.
        from: NodeId,
        /// The Control's epoch.
        epoch: Epoch,
        /// What to do.
        cmd: AgentCommand,
    },
    /// A message-API request (from a client, or forwarded by a node to the Control).
    Api(smart_api::Request),
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Agent86 state.
    Report(AgentReport),
    /// The command's epoch was below the highest the agent has seen: the sender is stale.
    Refused {
        /// The command's epoch.
        epoch: Epoch,
        /// The agent's highest epoch.
        highest: Epoch,
    },
    /// The command failed.
    Failed(String),
    /// Answer to an API request.
    Api(smart_api::Response),
}

/// Why a request to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No answer within the deadline.
    #[error("request to {0} timed out")]
    Timeout(SocketAddr),
    /// Could not connect or the connection broke.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A boxed future, so that [`PeerClient`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Outgoing requests, given to actors by the node runtime.
pub trait PeerClient: Send + Sync + 'static {
    /// Sends `req` to the node listening at `to` and waits at most `timeout` for the answer.
    fn request(
        &self,
        to: SocketAddr,
        req: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<PeerResponse, PeerError>>;
}
