//! # smart-agent86
//!
//! Agent86, the node agent (thesis §4, docs/DESIGN.md §1): it runs service instances under
//! isolation (`smart-instance`), measures them every interval, executes the Control's
//! commands fenced by epoch at execution time (docs/DESIGN.md §2.4), migrates instances
//! (pre-copy restore, then handoff), and reports what a new Control rebuilds from.
//!
//! ## Layout
//! - [`engine`]: the pure engine ([`engine::Agent86Engine::handle`]: fencing, restarts,
//!   anomalies, health, state reports), tested on its exact commands.
//! - [`actor`]: the ractor shell that executes the engine's commands against the runtime,
//!   persists epochs and speaks the workload control API; its types are re-exported here.
//! - `port`: the `{listen}` port, held by the agent until the instance accepts on it.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod actor;
pub mod engine;
mod port;

pub use actor::*;
