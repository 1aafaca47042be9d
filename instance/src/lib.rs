//! # smart-instance
//!
//! Service instances under isolation (process groups, cgroup v1/v2), per-interval resource
//! sampling, the Agent86 node-agent engine and the Agent99 profiler behind `smart profile`
//! (docs/DESIGN.md §1, §3, §5; thesis §4.1.1, §5.3).
//!
//! ## How the pieces fit (what a node's shell wires)
//!
//! ```text
//!  Control ──ControlCommand──▶ Agent86Engine::handle(event, now) ──▶ Vec<Command>
//!                                   ▲                                 │
//!          Event::{Started, Exited, │                                 ├─ Start/Stop ──▶ InstanceRuntime
//!          Usage, Health, ...}      │                                 ├─ PersistEpoch ─▶ durable state
//!                                   │                                 └─ Reply/Report/Notify ─▶ Control
//!  every interval: Sampler::sample(runtime.probes(), now) ─▶ Event::Usage ─┘
//!                                                        └─▶ ProfileRefiner::push (online refinement)
//! ```
//!
//! - Runtime: [`runtime::auto_runtime`] (or [`runtime::CgroupDriver::new`], which also removes
//!   groups left by a crashed agent, or [`runtime::ProcessDriver::new`]). The trait is
//!   synchronous; call it from `spawn_blocking` in async code.
//! - Sampling: [`sample::Sampler`] with [`sample::SamplerConfig`] (NIC capacity, interfaces).
//! - Engine: [`agent86::Agent86Engine`] with [`agent86::Agent86Config`]; health inputs from
//!   [`agent86::read_health`].
//! - Profiler: [`profiler::ProfileArgs`] (clap `Args`) and [`profiler::run`] (synchronous).
//!
//! ## Layout
//! - [`procfs`]: parsers/readers for `/proc` (process stat, meminfo, net/dev).
//! - [`cgroup`]: cgroup v2/v1 detection, per-instance groups, limits, stale clean-up.
//! - [`runtime`]: the [`runtime::InstanceRuntime`] trait and its `process`/`cgroup` drivers.
//! - [`control`]: client of the workload control API (`usage`), with back-off.
//! - [`sample`]: the per-interval sampler of instances and node.
//! - [`agent86`]: the Agent86 node-agent engine (pure step function: fencing, restarts,
//!   anomalies, health, state reports).
//! - [`profiler`]: Agent99, `smart profile` ([`profiler::ProfileArgs`], [`profiler::run`]).
//! - [`refine`]: online refinement of profiles from Agent86 samples (bounded window).
//! - [`stats`]: summaries and distribution tables (thesis Tables 5.2/5.3).
#![warn(missing_docs)]

pub mod agent86;
pub mod cgroup;
pub mod control;
pub mod procfs;
pub mod profiler;
pub mod pull;
pub mod refine;
pub mod runtime;
pub mod sample;
pub mod stats;
