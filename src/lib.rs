//! # smart
//!
//! The SMART peer: one binary, `smart`, runs on every node of the cluster (DESIGN §1). This
//! library is the node runtime behind it; the protocol engines live in `smart-supervision`,
//! the actors in `smart-actors`, admission in `smart-admission`.
//!
//! ## Layout
//! - [`config`]: the node's TOML configuration, defaults and validation.
//! - [`persist`]: durable incarnation and highest epoch, replaced atomically.

pub mod config;
pub mod persist;
