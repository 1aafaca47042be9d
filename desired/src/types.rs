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

/// A Raft message from another member, decoded (what [`crate::DesiredStore::handle_rpc`]
/// acts on).
pub enum Incoming {
    /// Replicate entries, or a heartbeat.
    AppendEntries(openraft::raft::AppendEntriesRequest<TypeConfig>),
    /// A candidate's vote request.
    Vote(openraft::raft::VoteRequest<u64>),
    /// A chunk of a snapshot.
    InstallSnapshot(openraft::raft::InstallSnapshotRequest<TypeConfig>),
    /// A write forwarded to the leader (typed already).
    ClientWrite {
        /// The command.
        cmd: DesiredCmd,
        /// Milliseconds the sender waits.
        within_ms: u64,
    },
}

impl Incoming {
    /// The member a Raft message speaks for: the candidate of a vote request, the leader of
    /// entries or of a snapshot (`Some(None)` if it names none); `None` for a forwarded
    /// write, which any member may send.
    pub fn speaks_for(&self) -> Option<Option<u64>> {
        match self {
            Incoming::AppendEntries(r) => Some(r.vote.leader_id().voted_for()),
            Incoming::Vote(r) => Some(r.vote.leader_id().voted_for()),
            Incoming::InstallSnapshot(r) => Some(r.vote.leader_id().voted_for()),
            Incoming::ClientWrite { .. } => None,
        }
    }

    /// The message's kind, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Incoming::AppendEntries(_) => "append-entries",
            Incoming::Vote(_) => "vote",
            Incoming::InstallSnapshot(_) => "install-snapshot",
            Incoming::ClientWrite { .. } => "client-write",
        }
    }
}

/// Decodes the Raft library's message an RPC carries, size checked first. The error names
/// the kind of message and why (the receiver answers `Malformed` with it). Its fuzz target
/// is `raft_payload`.
pub fn decode_rpc(rpc: smart_proto::desired::RaftRpc) -> Result<Incoming, String> {
    use smart_proto::desired::RaftRpc;
    let named = |kind: &str, e: CodecError| format!("{kind}: {e}");
    Ok(match rpc {
        RaftRpc::AppendEntries(b) => {
            Incoming::AppendEntries(decode(&b).map_err(|e| named("append-entries", e))?)
        }
        RaftRpc::Vote(b) => Incoming::Vote(decode(&b).map_err(|e| named("vote", e))?),
        RaftRpc::InstallSnapshot(b) => {
            Incoming::InstallSnapshot(decode(&b).map_err(|e| named("install-snapshot", e))?)
        }
        RaftRpc::ClientWrite { cmd, within_ms } => Incoming::ClientWrite { cmd, within_ms },
    })
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
