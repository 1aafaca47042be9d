//! # smart-sim
//!
//! A seeded, single-threaded, virtual-time simulator of a whole SMART cluster over the real
//! engines: every node runs the membership [`NodeEngine`](smart_membership::engine::NodeEngine),
//! an [`Agent86Engine`](smart_agent86::engine::Agent86Engine) and, while its membership
//! engine makes it Control, a [`ControlEngine`](smart_control::ControlEngine). The simulator
//! plays every shell around them — the Membership actor, the node supervisor, the Control
//! actor, Agent86's actor, the node's TCP port, the Forwarder — as the real ones do
//! (docs/ARCHITECTURE.md, "The engines" and "The supervision tree of a node"), and a
//! simulated instance runtime.
//!
//! Everything is deterministic for a seed: one event queue on virtual time, one seeded
//! generator for the network and the runtime, each node's membership randomness seeded
//! from it. Each node has its own clock (an offset of up to years and a rate off by up to
//! ±1 %): only durations cross the wire. Every heartbeat goes through the real codec with
//! the cluster key; every request between nodes (agent commands, report rounds, registry
//! copies, forwarded API requests) goes through the simulated [`net::Network`]: seeded
//! delays (hence reordering), loss (datagrams dropped, TCP segments retransmitted),
//! partitions and one-way cuts. Nodes can be killed (all but the disk — highest epoch and
//! incarnation — is lost), restarted, paused (SIGSTOP: nothing handled, then a time
//! jump), and the whole cluster stopped and started.
//!
//! Scenarios are data ([`op::Op`], printable as a log); [`op::generate`] draws one from a
//! seed. [`run::run`] applies a scenario and checks the [`invariants`] after every event,
//! every agent and Control step, and at every settle; a [`run::Failure`] prints the seed,
//! the operations, the end of the event log and the command that replays it.
//!
//! Each node's timers (membership ticks, refreshes, sampling, request timeouts) run at its
//! clock's rate.
//!
//! Majority mode runs a model of the desired-state log's Raft leadership (`raft`), and both
//! modes a model of the log's contents: a write commits when its node reaches a majority,
//! the Control writes an operator's change before acting, restores from the log at start
//! and hears of its changes once per refresh.
//!
//! What is not modelled: the transport's handshakes and per-connection ordering (each
//! request and answer has its own delay); the actors' processing time (a step takes no
//! virtual time; messages between a node's actors are delivered in order at the same
//! instant); failures of the actors themselves (no panics, so no supervisor restarts and
//! no re-assertions after a Control failure); epoch writes that fail; a host that dies
//! (a killed node's host answers "connection refused"); the Forwarder's deadline in a
//! node's skewed clock (it runs in virtual time); health checks, anomalies (usage stays
//! within reservations), profiles, drains, events to subscribers, heartbeat load summaries.
//!
//! ## Layout
//! - [`op`]: the scenario language and the random generator.
//! - [`net`]: links, partitions, cuts, loss, delays.
//! - `world`: [`Sim`], nodes and processes, the event queue, requests between nodes.
//! - `shell`: the shells (membership and supervisor, Control, Agent86 and the TCP port,
//!   Forwarder and operator).
//! - [`history`]: what the invariants read.
//! - [`invariants`]: one module per invariant.
//! - [`run`]: running a scenario, [`run::Failure`].

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod history;
pub mod invariants;
pub mod net;
pub mod op;
mod raft;
pub mod run;
mod shell;
mod world;

pub use op::{Op, Who, generate};
pub use run::{Failure, Options, Outcome, run};
pub use world::{Mode, Setup, Sim, Stats};
