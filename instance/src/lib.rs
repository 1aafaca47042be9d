//! # smart-instance
//!
//! Service instances under isolation (process groups, cgroup v1/v2), per-interval resource
//! sampling, the workload control API's usage poller and the checkpoint pull between nodes
//! (docs/DESIGN.md §1, §3, §5; thesis §4.1.1). Agent86 runs its instances through it and
//! Agent99 profiles a service with it.
//!
//! - Runtime: [`runtime::auto_runtime`] (or [`runtime::CgroupDriver::new`], which also removes
//!   groups left by a crashed agent, or [`runtime::ProcessDriver::new`]). The trait is
//!   synchronous; call it from `spawn_blocking` in async code.
//! - Sampling: [`sample::Sampler`] with [`sample::SamplerConfig`] (NIC capacity, interfaces).
//!
//! ## Layout
//! - [`procfs`]: parsers/readers for `/proc` (process stat, meminfo, net/dev).
//! - [`cgroup`]: cgroup v2/v1 detection, per-instance groups, limits, stale clean-up.
//! - [`runtime`]: the [`runtime::InstanceRuntime`] trait and its `process`/`cgroup` drivers.
//! - [`usage`]: the workload control API's `usage` poller, with back-off.
//! - [`sample`]: the per-interval sampler of instances and node.
//! - [`pull`]: the checkpoint pull of a migration between nodes.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod cgroup;
pub mod procfs;
pub mod pull;
pub mod runtime;
pub mod sample;
pub mod usage;
