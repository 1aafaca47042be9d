//! # smart-vod
//!
//! The Smart-GloVE data plane (thesis chapter 5): an MPEG-TS generator, an origin, a GloVE
//! distributor with a shared in-memory block cache and paced streaming, viewers that measure
//! QoE, the workload control API through which SMART's Agent86 drives an instance
//! (usage, checkpoint, restore, handoff, drain), and benchmarks.
//!
//! ## Layout
//! - [`ts`]: MPEG-TS generator, integrity checker, PCR bitrate estimate.
//! - [`http`]: lean HTTP/1.1 pieces (request heads via `httparse`, ranges, URLs, client).
//! - [`origin`]: the origin server (Range, bitrate/duration headers).
//! - [`cache`]: the shared block cache of one video, pure logic.
//! - [`distributor`]: GloVE distributor: accept path, origin fetcher, modes, checkpoint.
//! - [`pacer`]: the pacer threads that send every viewer its bytes on coalesced timers.
//! - [`control`]: the workload control API (protocol docs, server, [`control::Client`]).
//! - [`viewer`]: playback model, one viewer, the load generator and its QoE summary.
//! - [`frontend`]: a minimal redirecting front-end (what SMART's FrontEnd does for viewers).
//! - [`bench`]: `vod bench streams` and `vod bench handoff`.

#![warn(missing_docs)]

pub mod bench;
pub mod cache;
pub mod control;
pub mod distributor;
pub mod frontend;
pub mod http;
pub mod origin;
pub mod pacer;
pub mod ts;
pub mod viewer;
