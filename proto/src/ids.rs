//! Identities shared by every layer: one type per concept.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's identity, unique in the cluster and stable across restarts (from config).
///
/// Serialised as its bare number (postcard varint, JSON number), so `"node_id": 3` in JSON.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;

    /// Accepts `3` and `n3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix('n').unwrap_or(s);
        digits
            .parse()
            .map(NodeId)
            .map_err(|_| format!("`{s}` is not a node id (expected e.g. 3 or n3)"))
    }
}

/// A Control epoch: a logical clock that only grows. Every Control command carries one.
pub type Epoch = u64;

/// A node's boot counter, persisted and incremented at every start, so that sequence
/// numbers restarting at zero after a reboot are not mistaken for replays.
pub type Incarnation = u64;

/// Name of a hosted service (e.g. the distributor of one video, `video-42`).
pub type ServiceName = String;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_parse_print_and_serialise_as_numbers() {
        assert_eq!("n7".parse::<NodeId>(), Ok(NodeId(7)));
        assert_eq!("7".parse::<NodeId>(), Ok(NodeId(7)));
        assert!("x7".parse::<NodeId>().is_err());
        assert_eq!(NodeId(7).to_string(), "n7");
        assert_eq!(serde_json::to_string(&NodeId(7)).unwrap(), "7");
        assert_eq!(postcard::to_allocvec(&NodeId(7)).unwrap(), vec![7]);
    }
}

/// The roles a node may play (from config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs service instances (Agent86). Every node has it unless configured otherwise.
    Agent,
    /// Runs the profiler (Agent99); gets a shorter election backoff (thesis §4.2.1).
    Profiler,
    /// Runs the front-end / message API for clients.
    FrontEnd,
    /// May be elected Control.
    Control,
}
