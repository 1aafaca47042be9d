//! # smart
//!
//! The SMART peer: one binary, `smart`, runs on every node of the cluster (docs/DESIGN.md §1). This
//! library is the node runtime behind it; the protocol engines live in `smart-supervision`,
//! the actors in `smart-actors`, admission in `smart-admission`.
//!
//! ## Layout
//! - [`config`]: the node's TOML configuration, defaults and validation.
//! - [`persist`]: durable incarnation and highest epoch, replaced atomically.
//! - [`node`]: the node runtime: supervision tree, membership shell, TCP port, HTTP API.
//! - [`ops`]: the `smart` admin commands over the HTTP API, and their HTTP client.
//!
//! Local clusters, the demo and the case study are in `smart-testkit`, which this library
//! does not depend on.

pub mod config;
pub mod node;
pub mod ops;
pub mod persist;
