//! # smart-admission
//!
//! SMART's probabilistic admission control and placement (thesis §4.1, §5.6, docs/DESIGN.md §3–§4),
//! as a pure library with no I/O, and the `smart sim` discrete-event simulator.
//!
//! The Control actor owns one [`Engine`] and calls it for every decision
//! ([`Engine::admit_service`], [`Engine::admit_client`], releases, node changes); each call
//! returns what to execute (a node, and migrations to perform first) or a [`Rejection`] that
//! left the state unchanged.
//!
//! ## Layout
//! - [`profile`]: resource profiles (sample series per interval), the file format Agent99 writes.
//! - [`refine`]: online refinement of class profiles from Agent86 samples (bounded window).
//! - [`stats`]: percentiles, summaries and distribution tables (thesis Tables 5.2/5.3).
//! - [`scale`]: a class profile scaled to one video, and the reservation it implies.
//! - [`synthetic`]: synthetic profiles from the thesis's measured distributions (Tables 5.2,
//!   5.3), with bursts, and heavy-tailed ones for stress.
//! - [`estimator`]: the [`Estimator`] trait and `empirical`, `gaussian`, `chernoff`, `peak`,
//!   `mean`, all with exact incremental add/remove.
//! - [`tree`]: the placement index (tournament tree over free memory with per-subtree
//!   headroom maxima) and the policies.
//! - [`engine`]: admission (eq. 4.1 fast reject, per-node test), placement, Migrate the
//!   Smallest, the Smart-GloVE client rule, releases, node changes.
//! - [`any`]: [`AnyEngine`], the engine with the estimator chosen at run time (config).
//! - [`sim`]: `smart sim`, the deterministic VoD simulation comparing estimators × policies.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod any;
pub mod engine;
pub mod estimator;
pub mod profile;
pub mod refine;
pub mod scale;
pub mod sim;
pub mod stats;
pub mod synthetic;
pub mod tree;

pub use any::AnyEngine;
pub use engine::{
    ClientDecision, ClientId, Decision, Engine, EngineConfig, EngineError, Evicted, Migration,
    NodeId, NodeSpec, NodeStatus, ProfileId, Rejection, ServiceId,
};
pub use estimator::{
    Chernoff, Empirical, Estimator, EstimatorKind, Gaussian, Mean, Peak, Resource,
};
pub use tree::Policy;
