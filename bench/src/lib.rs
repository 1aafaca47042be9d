//! # smart-bench
//!
//! SMART's shipped demo and benchmarks, what runs *around* SMART nodes rather than inside
//! them: local clusters of real `smart node` processes (the demo, the benchmarks and the
//! multi-process test suites), the Smart-GloVE case study that `smart demo` runs, and
//! `smart bench`. No node runtime crate depends on it; the `smart` binary links it for its
//! `demo` and `bench` commands.
//!
//! ## Layout
//! - [`cluster`]: a local cluster of real node processes on loopback or namespace hosts.
//! - [`netns`]: hosts as network namespaces on a bridge (`smart demo --netns`).
//! - [`demo`]: `smart demo` options and `smart bench failover`.
//! - [`case_study`]: the demo itself, the Smart-GloVE case study.
//! - [`bench_frontend`]: `smart bench frontend`, the front-end's `/watch` latency.
//! - [`bench_api`]: `smart bench api`, the HTTP API's latency and the dashboard's delay.
//! - [`bench_migration`]: `smart bench migration`, the thesis's migration experiments
//!   across namespace hosts (root).
//! - [`bench_desired`]: `smart bench desired`, the desired-state log's write latency and a
//!   whole-cluster restart.
//! - [`videos`]: real H.264 + AAC videos (ffmpeg, cached) and an in-process origin.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod bench_api;
pub mod bench_desired;
pub mod bench_frontend;
pub mod bench_migration;
pub mod case_study;
pub mod cluster;
pub mod demo;
pub mod netns;
pub mod videos;
