//! Outgoing node-to-node requests, as the actors see them: a [`PeerClient`] given by the
//! node runtime (TCP in production, in-process routes in tests), so the same actors run
//! over any transport. The messages themselves are `smart_proto::node`'s.
//!
//! A [`PeerError`] keeps apart what the Control must treat differently: a peer that did not
//! answer ([`PeerError::Timeout`], [`PeerError::Unreachable`]: maybe dead) and a peer that
//! answered that it would not or could not serve the request ([`PeerError::Refused`],
//! [`PeerError::Unavailable`], [`PeerError::Failed`]: alive, from its typed
//! [`RemoteError`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use smart_proto::error::RemoteError;
use smart_proto::node::{NodeRequest, NodeResponse};

/// Why a request to a peer got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No answer within the deadline (or the peer said the deadline passed).
    #[error("request to {0} timed out")]
    Timeout(SocketAddr),
    /// Could not connect, or the connection broke: the peer may be dead.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer is alive and will not serve this request from us (e.g. "not the
    /// Control"): retrying it there does not help; asking another node may.
    #[error("{addr} refused: {reason}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer is alive and the part that serves the request is away for a moment (e.g.
    /// Agent86 restarting): retry shortly.
    #[error("{addr}: {what} is unavailable")]
    Unavailable {
        /// The peer.
        addr: SocketAddr,
        /// What is away.
        what: String,
    },
    /// The peer is alive and failed while serving the request.
    #[error("{addr} failed the request: {reason}")]
    Failed {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

impl PeerError {
    /// The error for a peer at `addr` that answered with `e`.
    pub fn remote(addr: SocketAddr, e: RemoteError) -> Self {
        match e {
            RemoteError::Refused { reason } => PeerError::Refused { addr, reason },
            RemoteError::Unavailable { what } => PeerError::Unavailable { addr, what },
            RemoteError::TimedOut => PeerError::Timeout(addr),
            RemoteError::Internal { reason } => PeerError::Failed { addr, reason },
        }
    }

    /// True when the peer answered (it is alive), whatever it said.
    pub fn peer_answered(&self) -> bool {
        matches!(
            self,
            PeerError::Refused { .. } | PeerError::Unavailable { .. } | PeerError::Failed { .. }
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_remote_error_is_a_distinct_peer_error_and_none_looks_unreachable() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let refused = PeerError::remote(
            a,
            RemoteError::Refused {
                reason: "not the Control".into(),
            },
        );
        assert_eq!(
            refused,
            PeerError::Refused {
                addr: a,
                reason: "not the Control".into()
            }
        );
        let away = PeerError::remote(
            a,
            RemoteError::Unavailable {
                what: "agent86".into(),
            },
        );
        assert_eq!(
            away,
            PeerError::Unavailable {
                addr: a,
                what: "agent86".into()
            }
        );
        assert_eq!(
            PeerError::remote(a, RemoteError::TimedOut),
            PeerError::Timeout(a)
        );
        let failed = PeerError::remote(a, RemoteError::Internal { reason: "x".into() });
        assert_eq!(
            failed,
            PeerError::Failed {
                addr: a,
                reason: "x".into()
            }
        );
        assert!(refused.peer_answered() && away.peer_answered() && failed.peer_answered());
        let dead = PeerError::Unreachable {
            addr: a,
            reason: "connection refused".into(),
        };
        assert!(!dead.peer_answered());
        assert!(!PeerError::Timeout(a).peer_answered());
    }
}
