//! # smart-actors
//!
//! The SMART actors of thesis chapter 4, each a thin ractor shell around a pure engine, with
//! one message enum and reply ports (docs/ARCHITECTURE.md):
//!
//! - [`control`]: runs only on the elected node. Its decisions are
//!   [`control::engine::ControlEngine`]'s (admission and placement with `smart_admission`,
//!   rebuild from Agent86 reports, node failures, drains, anomalies, releases, and the
//!   migration state machine); the actor executes them.
//! - [`agent86`]: the node agent, a shell around `smart_instance::agent86::Agent86Engine`:
//!   starts/stops/migrates instances under a runtime (process groups or cgroups), samples
//!   them every interval, executes Control commands **fenced by epoch at execution time**
//!   (docs/DESIGN.md §2.4), and reports what a new Control rebuilds from.
//!
//! ## Layout
//! - [`peer`]: the [`peer::PeerClient`] seam through which actors send node-to-node
//!   requests (the wire types are `smart_proto`'s).
//! - [`view`]: [`view::ClusterView`], the cluster as membership publishes it.
//! - [`epoch`]: the [`epoch::EpochStore`] seam through which actors persist epochs, and the
//!   [`epoch::Fatal`] error type the supervisor escalates on.
//!
//! The actors never touch sockets: the node runtime (the `smart` crate) gives them a
//! [`peer::PeerClient`] for outgoing requests and routes incoming ones to them, so the same
//! actors run over TCP in production and over in-process routes in tests.

pub mod agent86;
pub mod control;
pub mod epoch;
pub mod peer;
pub mod view;
