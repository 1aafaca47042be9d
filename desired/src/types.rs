//! The Raft type configuration and the postcard codec of the Raft library's messages.

use std::io::Cursor;

use serde::Serialize;
use serde::de::DeserializeOwned;
use smart_proto::desired::{ApplyResult, DesiredCmd, RAFT_PAYLOAD_MAX};

openraft::declare_raft_types!(
    /// SMART's Raft types: the log carries [`DesiredCmd`]s, applying one answers an
    /// [`ApplyResult`]; a Raft node id is the inner number of a `smart_proto::NodeId`; nodes
    /// carry no address (the transport resolves it from the node's membership view when it
    /// sends); a snapshot is the postcard bytes of the `DesiredState`, in memory.
    pub TypeConfig:
        D = DesiredCmd,
        R = ApplyResult,
        NodeId = u64,
        Node = openraft::EmptyNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// Over [`RAFT_PAYLOAD_MAX`].
    #[error("payload of {len} bytes is over the {max} byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not postcard of the expected type.
    #[error("undecodable payload: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Decodes the Raft library's message an RPC carries, as [`crate::DesiredStore::handle_rpc`]
/// does before acting on it, and acts on nothing: for the decoder's fuzz target and for
/// diagnostics. `ClientWrite` carries a typed command (decoded with the envelope): `Ok`.
pub fn check_payload(rpc: &smart_proto::desired::RaftRpc) -> Result<(), String> {
    use smart_proto::desired::RaftRpc;
    let r = match rpc {
        RaftRpc::AppendEntries(b) => {
            decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(b).map(drop)
        }
        RaftRpc::Vote(b) => decode::<openraft::raft::VoteRequest<u64>>(b).map(drop),
        RaftRpc::InstallSnapshot(b) => {
            decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(b).map(drop)
        }
        RaftRpc::ClientWrite { .. } => Ok(()),
    };
    r.map_err(|e| e.to_string())
}

/// Encodes a Raft payload (no size check: the caller decides what an oversized one means).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_allocvec(value)?)
}

/// Decodes a Raft payload, refusing one over [`RAFT_PAYLOAD_MAX`] before decoding it.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > RAFT_PAYLOAD_MAX {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: RAFT_PAYLOAD_MAX,
        });
    }
    Ok(postcard::from_bytes(bytes)?)
}
