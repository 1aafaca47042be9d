//! # smart-proto
//!
//! Every type that crosses a socket between SMART's processes, in one crate below all the
//! others (docs/ARCHITECTURE.md, "The protocol crate"): node ids and epochs, the message API,
//! node-to-node messages, the Control ↔ Agent86 vocabulary and the workload control API
//! with its one async client. Heartbeat datagrams are the exception: they are private to the
//! membership engine and live, with their codec, in `smart_supervision::wire`.
//!
//! Encodings: everything on the node transport is postcard (serde's data model; variant
//! indices are declaration order and are only ever appended); the workload control API is
//! one JSON object per line. One exception to "typed all the way": event notifications to
//! message-API subscribers travel as [`api::EventNote`], an event's postcard bytes inside a
//! byte string, so that a subscriber skips an event variant newer than itself instead of
//! losing its connection.
//!
//! ## Layout
//! - [`ids`]: [`NodeId`], [`Epoch`], [`Incarnation`], [`ServiceName`].
//! - [`api`]: the message API (requests, responses, events, status, typed errors).
//! - [`agent`]: Control → Agent86 commands, replies, reports and agent events.
//! - [`fence`]: epoch fencing of command execution, in one place.
//! - [`node`]: what a node's TCP port accepts ([`node::NodeRequest`]) and answers.
//! - [`profile`]: resource profiles (what Agent99 writes, what admission reads).
//! - [`workload`]: the workload control API and [`workload::WorkloadClient`].

pub mod agent;
pub mod api;
pub mod fence;
pub mod ids;
pub mod node;
pub mod profile;
pub mod pull;
pub mod workload;

pub use ids::{Epoch, Incarnation, NodeId, ServiceName};
