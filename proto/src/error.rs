//! Why a node could not answer a request, as it travels on the node transport (the
//! transport's `Fault` frame carries it): typed, so that a requester tells a node that
//! refused ("not the Control"), a part of a live node that is briefly away ("agent86 is
//! restarting"), a request whose deadline passed, and an internal failure apart, and none of
//! them from a node that is unreachable (which it learns from the transport, not from here).

use serde::{Deserialize, Serialize};

/// A remote node's reason for not answering a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// The node will not serve this request from this sender (e.g. agent commands from a
    /// node that is not the Control, node-internal requests from a client). Retrying the
    /// same request at the same node does not help; asking the right node may.
    #[error("refused: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// The part of the node that serves the request is away for a moment (restarting,
    /// overloaded): the node is alive, retry shortly.
    #[error("unavailable: {what}")]
    Unavailable {
        /// What is away.
        what: String,
    },
    /// The request's deadline passed before the node could answer it.
    #[error("deadline passed")]
    TimedOut,
    /// The node failed while serving the request.
    #[error("internal error: {reason}")]
    Internal {
        /// Why.
        reason: String,
    },
}

/// What a node answers `Unavailable` with when a request stamped by a Control at an epoch
/// above its view arrives (a new Control it has not heard of yet): it refuses at once
/// rather than wait for gossip, and the sender, which knows it is the Control, asks again
/// shortly (within its own deadline).
pub const VIEW_BEHIND: &str = "this node's view of the Control (behind the sender's epoch)";

impl RemoteError {
    /// True when the same request at the same node may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RemoteError::Unavailable { .. } | RemoteError::TimedOut
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_through_postcard() {
        for e in [
            RemoteError::Refused {
                reason: "not the Control".into(),
            },
            RemoteError::Unavailable {
                what: "agent86".into(),
            },
            RemoteError::TimedOut,
            RemoteError::Internal {
                reason: "boom".into(),
            },
        ] {
            let bytes = postcard::to_allocvec(&e).unwrap();
            assert_eq!(postcard::from_bytes::<RemoteError>(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn an_unknown_variant_is_an_error_not_a_panic() {
        assert!(postcard::from_bytes::<RemoteError>(&[9, 1, b'x']).is_err());
        assert!(postcard::from_bytes::<RemoteError>(&[0, 200]).is_err());
    }
}
