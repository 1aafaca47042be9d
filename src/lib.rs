//! # smart
//!
//! The SMART peer: one binary, `smart`, runs on every node of the cluster (DESIGN §1). This
//! library is the node runtime behind it; the protocol engines live in `smart-supervision`,
//! the actors in `smart-actors`, admission in `smart-admission`.
//!
//! ## Layout
//! - [`config`]: the node's TOML configuration, defaults and validation.
//! - [`persist`]: durable incarnation and highest epoch, replaced atomically.
//! - [`node`]: the node runtime: supervision tree, membership shell, TCP port.
//! - [`cluster`]: a local cluster of real node processes (demo, benchmarks, tests).
//! - [`demo`]: `smart demo` options and `smart bench failover`.
//! - [`case_study`]: the demo itself, the Smart-GloVE case study.

pub mod case_study;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod keys;
pub mod node;
pub mod persist;
