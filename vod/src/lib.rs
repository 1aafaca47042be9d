//! # smart-vod
//!
//! The Smart-GloVE data plane (thesis chapter 5): an MPEG-TS generator, an origin, a GloVE
//! distributor with a shared in-memory block cache and paced streaming, viewers that measure
//! QoE, the workload control API through which SMART's Agent86 drives an instance
//! (usage, checkpoint, restore, handoff, drain), and benchmarks.
//!
//! ## Layout
//! - [`ts`]: MPEG-TS generator, integrity checker, PCR bitrate estimate.
//! - [`scan`]: TS timing (PAT/PMT, PES timestamps, keyframes, PCR span) of real files.
//! - [`hls`]: HLS, the pure part: segment index, playlist, routes, sessions, allowance.
//! - [`hls_server`]: HLS in the distributor: playlist and segments from the block cache.
//! - [`hls_viewer`]: HLS viewers for load and QoE tests (playlist, then segments by buffer).
//! - [`http`]: lean HTTP/1.1 pieces (request heads via `httparse`, ranges, URLs, client).
//! - [`realvideo`]: real H.264 + AAC CBR test videos made with ffmpeg (`make-video --real`).
//! - [`tools`]: finding ffmpeg/chromium/node; tests skip without them unless required.
//! - [`logging`]: log set-up of both binaries (`SMART_LOG`, `SMART_LOG_FORMAT`, `--log-format`).
//! - [`origin`]: the origin server (Range, bitrate/duration headers).
//! - [`cache`]: the shared block cache of one video, pure logic.
//! - [`distributor`]: GloVE distributor: accept path, origin fetcher, modes, checkpoint.
//! - [`video`]: what the distributor, the pacers and HLS share: a video's cache entry, the
//!   mode, the counters, waiting for a block.
//! - [`pacer`]: the pacer threads that send every viewer its bytes on coalesced timers.
//! - [`workload`]: the workload control API's server side (the protocol and its client are in
//!   `smart_proto::workload`).
//! - [`viewer`]: playback model, one viewer, the load generator and its QoE summary.
//! - [`frontend`]: a minimal redirecting front-end (what SMART's FrontEnd does for viewers),
//!   which also serves the player page and its `where` contract.
//! - [`player`]: the HLS player page (`/play/{video}`) and its contract with a front-end.
//! - [`browser`]: headless Chromium for tests (playwright-core through `vod/ui/driver.mjs`).
//! - [`mod@bench`]: `vod bench streams` and `vod bench handoff`; [`bench_hls`]: `vod bench hls`.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

// The `vod` binary's error type: Cargo has no binary-only dependencies.
use anyhow as _;

pub mod bench;
pub mod bench_hls;
pub mod browser;
pub mod cache;
pub mod distributor;
pub mod frontend;
pub mod hls;
pub mod hls_server;
pub mod hls_viewer;
pub mod http;
pub mod logging;
pub mod origin;
pub mod pacer;
pub mod player;
pub mod realvideo;
pub mod scan;
pub mod tools;
pub mod ts;
pub mod video;
pub mod viewer;
pub mod workload;
