//! # smart-actors
//!
//! The SMART actors of thesis chapter 4, each a ractor actor with one message enum and reply
//! ports (DESIGN §1):
//!
//! - [`agent86`]: the node agent, a shell around `smart_instance::agent86::Agent86Engine`:
//!   starts/stops/migrates instances under a runtime (process groups or cgroups), samples
//!   them every interval, executes Control commands **fenced by epoch at execution time**
//!   (DESIGN §2.4), and reports instances, reservations and usage so a new Control can
//!   rebuild.
//! - [`control`]: runs only on the elected node. Rebuilds its state from Agent86 reports
//!   (and the replicated registry copy) before acting (DESIGN §2.5), then admits and places
//!   services and clients with `smart_admission` (eq. 4.1, per-node tests, worst-fit, MS,
//!   the Smart-GloVE client rule), re-admits a dead node's services, drains nodes by live
//!   migration, moves anomalous instances, releases clients that left (from the
//!   distributors' own client counts), removes duplicates; steps down when an agent tells it
//!   a higher epoch exists.
//! - [`agent99`]: the profiler role (its engine is `smart-instance`'s profiler).
//! - [`frontend`]: the front-end role (message API entry point for clients).
//!
//! ## Layout
//! - [`proto`]: the node-to-node request/response types carried by the transport.
//! - [`epoch`]: the [`epoch::EpochStore`] seam through which actors persist epochs.
//!
//! The actors never touch sockets: the node runtime (the `smart` crate) gives them a
//! [`proto::PeerClient`] for outgoing requests and routes incoming ones to them, so the same
//! actors run over TCP in production and over an in-memory transport in tests.

pub mod agent86;
pub mod agent99;
pub mod control;
pub mod epoch;
pub mod frontend;
pub mod proto;
