//! # smart-desired
//!
//! SMART's *desired state* — what an operator or a client asked for and expects to outlive
//! any restart — kept in a replicated, persisted Raft log on the control nodes
//! (docs/DESIGN.md, "Desired state in a Raft log").
//!
//! **Desired vs observed.** The desired state ([`DesiredState`]) is the services admitted,
//! the class profiles stored and the nodes drained (by an operator, or by the Control for a
//! failed health check). It changes only by a [`DesiredCmd`] appended to the log and
//! applied, in log order, by the pure [`DesiredState::apply`]. The *observed* state —
//! which nodes are alive, where each instance runs, how many clients it serves — is not
//! here: the Control rebuilds it from the agents' reports and acts to make it match the
//! desired one.
//!
//! **Consensus.** openraft does elections, replication, commits, snapshots and log
//! compaction; this crate gives it storage, a state machine and a network. The voters are
//! the static set of control nodes; every voter initialises the group with that set when its
//! log is pristine. A write commits once a majority of them has it on disk, so a side of a
//! partition without a majority cannot change the desired state: its writes fail with
//! [`WriteError::NoMajority`] within their deadline, and its leader (if it had one) stops
//! satisfying [`DesiredStore::leads_with_quorum`] — the condition for acting as the Control.
//!
//! **Persistence.** One redb file per node, `<dir>/desired.redb`: the log entries, the
//! vote, the commit index and the current snapshot. Each change is one redb transaction,
//! durable (fsynced) when it commits, and only then acknowledged to openraft. The state
//! itself is in memory; a restart loads the snapshot and re-applies the committed entries
//! after it. A snapshot (the postcard bytes of the state) is built every
//! [`DesiredConfig::snapshot_every`] entries (1,000 by default); the log is then purged up
//! to it but for the last [`DesiredConfig::logs_kept_after_snapshot`] entries. A follower
//! that needs purged entries gets the snapshot instead, in chunks of
//! [`DesiredConfig::snapshot_chunk_bytes`] (256 KiB by default), well under the node
//! transport's 1 MiB frame.
//!
//! **Transport.** Raft messages travel as [`smart_proto::desired::RaftRpc`]s (openraft's
//! messages as postcard bytes inside, checked against
//! [`smart_proto::desired::RAFT_PAYLOAD_MAX`] before decoding) over a [`RaftTransport`]
//! the node implements on its authenticated TCP transport; the receiving node answers with
//! [`DesiredStore::handle_rpc`]. A write on a follower is forwarded to the leader
//! ([`smart_proto::desired::RaftRpc::ClientWrite`]).
//!
//! ## Layout
//! - [`store`]: [`DesiredStore`] (open, write, state, leadership, RPC handling, shutdown),
//!   [`DesiredConfig`], the errors.
//! - [`network`]: the [`RaftTransport`] trait the node implements, and openraft's network
//!   adapter over it.
//! - `log_store`: the log, vote and commit index in redb (openraft's `RaftLogStorage`).
//! - `state_machine`: [`DesiredState`] and its snapshots (openraft's `RaftStateMachine`).
//! - [`types`]: openraft's type configuration.
//! - [`mem`]: an in-memory transport with partitions, for tests and benchmarks.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

mod log_store;
pub mod mem;
pub mod network;
mod state_machine;
pub mod store;
#[cfg(test)]
mod suite;
pub mod types;

pub use network::{RaftTransport, TransportFuture, TransportUnreachable};
pub use smart_proto::desired::{ApplyResult, DesiredCmd, DesiredState, Written};
pub use store::{
    CMD_MAX, DesiredConfig, DesiredStatus, DesiredStore, OpenError, RaftRole, STORE_FILE,
    WriteError,
};
pub use types::TypeConfig;
