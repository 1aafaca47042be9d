//! # smart-supervision
//!
//! The cluster runtime that every SMART node runs underneath its actors: authenticated
//! heartbeats, failure detection, Control election with epochs and fencing, restart policy,
//! and the framed TCP transport between nodes.
//!
//! ## Layout
//! - [`types`]: node ids, epochs, roles and the cluster key (HMAC-SHA256).
//! - [`wire`]: the authenticated, versioned UDP datagram format (heartbeats, claims).
//! - [`detector`]: the failure detector, a pure state machine.
//! - [`election`]: Control election with persisted epochs and fencing, a pure state machine.
//! - [`engine`]: membership + detector + election composed into one node engine that the
//!   runtime shell drives with inputs and time, executing the commands it returns.
//! - [`restart`]: restart intensity policy for the supervision tree.
//! - [`ratelog`]: rate-limited warnings with counts (hostile traffic must not flood logs).
//! - [`keys`]: `smart keys`: the cluster key, node key pairs and the public-key list.
//! - [`frame`]: TCP frames (length prefix, size limit, postcard envelope) and handshake.
//! - [`transport`]: the transport trait, its TCP and in-memory implementations, peer actors.
//! - [`udp`]: socket2 setup of the unicast and multicast heartbeat sockets.

pub mod detector;
pub mod election;
pub mod engine;
pub mod frame;
pub mod keys;
pub mod ratelog;
pub mod restart;
pub mod transport;
pub mod types;
pub mod udp;
pub mod wire;

pub use types::{ClusterKey, Epoch, Incarnation, NodeId, Role};
