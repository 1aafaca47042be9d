//! # smart-proto
//!
//! Every type that crosses a socket between SMART's processes, in one crate below all the
//! others (docs/ARCHITECTURE.md, "The protocol crate"): node ids and epochs, the message API,
//! node-to-node messages, the Control ↔ Agent86 vocabulary, the heartbeat datagrams and
//! their codec, and the workload control API with its one async client.
//!
//! Encodings: everything on the node transport is postcard (serde's data model; variant
//! indices are declaration order and are only ever appended); the workload control API is
//! one JSON object per line. One exception to "typed all the way": event notifications to
//! message-API subscribers travel as [`api::EventNote`], an event's postcard bytes inside a
//! byte string, so that a subscriber skips an event variant newer than itself instead of
//! losing its connection.
//!
//! ## Layout
//! - [`ids`]: [`NodeId`], [`Epoch`], [`Incarnation`], [`ServiceName`], [`Role`].
//! - [`key`]: [`ClusterKey`], the shared secret of heartbeats and handshakes.
//! - [`heartbeat`]: the authenticated, versioned UDP datagrams (heartbeats, claims,
//!   challenges, proofs) and their codec.
//! - [`api`]: the message API (requests, responses, events, status, typed errors).
//! - [`desired`]: the desired state (services, class profiles, drains), its commands, and
//!   the Raft messages that replicate it between control nodes.
//! - [`error`]: [`error::RemoteError`], why a node did not answer (the transport's fault).
//! - [`agent`]: Control → Agent86 commands, replies, reports and agent events.
//! - [`fence`]: epoch fencing of command execution, in one place.
//! - [`node`]: what a node's TCP port accepts ([`node::NodeRequest`]) and answers.
//! - [`http`]: the HTTP/JSON API's shapes (`/v1` on every node), with their OpenAPI schemas
//!   under the `openapi` feature; the routes are documented in `smart_api::http`.
//! - [`player`]: the player page's JSON (`/watch/{video}/where`).
//! - [`profile`]: resource profiles (what Agent99 writes, what admission reads).
//! - [`workload`]: the workload control API and [`workload::WorkloadClient`].
//! - [`stats`]: percentiles (nearest rank), the one implementation every crate reports with.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod agent;
pub mod api;
pub mod desired;
pub mod error;
pub mod fence;
pub mod heartbeat;
pub mod http;
pub mod ids;
pub mod key;
pub mod node;
pub mod pair;
pub mod player;
pub mod profile;
pub mod pull;
pub mod stats;
pub mod workload;

pub use ids::{Epoch, Incarnation, NodeId, Role, ServiceName};
pub use key::ClusterKey;
