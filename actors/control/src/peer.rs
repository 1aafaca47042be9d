//! Outgoing node-to-node requests, as the actors see them: a [`PeerClient`] given by the
//! node runtime (TCP in production, in-process routes in tests), so the same actors run
//! over any transport. The messages themselves are `smart_proto::node`'s.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use smart_proto::node::{NodeRequest, NodeResponse};

/// Why a request to a peer got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No answer within the deadline.
    #[error("request to {0} timed out")]
    Timeout(SocketAddr),
    /// Could not connect, the connection broke, or the peer failed the request.
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
        req: NodeRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<NodeResponse, PeerError>>;
}
