//! # smart-supervision
//!
//! The cluster runtime that every SMART node runs underneath its actors: authenticated
//! heartbeats, failure detection, Control election with epochs and fencing, restart policy,
//! and the framed TCP transport between nodes.
//!
//! ## Layout
//! - [`types`]: node ids, epochs, roles and the cluster key (HMAC-SHA256).

pub mod types;

pub use types::{ClusterKey, Epoch, Incarnation, NodeId, Role};
