//! # smart-membership
//!
//! Who is in the cluster and who is its Control (docs/DESIGN.md §2): authenticated
//! heartbeats over UDP multicast and unicast seeds, a failure detector, the Control
//! election with persisted epochs and fencing (random backoff; the younger Control steps
//! down in available mode, a lease from a majority in majority mode), and the view of the
//! cluster every other actor of a node reads.
//!
//! The protocol is a pure engine ([`engine::NodeEngine::handle`], inputs and the time in,
//! outputs to execute back), tested on its exact outputs; [`actor::Membership`] is the thin
//! ractor shell that owns the sockets, persists epochs before acting on them and tells the
//! node's supervisor when to start or stop its Control.
//!
//! ## Layout
//! - [`detector`]: the failure detector, a pure state machine.
//! - [`election`]: Control election with persisted epochs and fencing, a pure state machine.
//! - [`engine`]: detector + election + the heartbeat codec composed into the node engine.
//! - [`udp`]: socket2 setup of the unicast and multicast heartbeat sockets.
//! - [`view`]: [`view::ClusterView`], what membership publishes (the Control, live agents).
//! - [`epoch`]: the [`epoch::EpochStore`] seam through which actors persist epochs, and the
//!   [`epoch::Fatal`] error the supervisor escalates on.
//! - [`persist`], [`durable`]: the node's durable incarnation and highest epoch on disk.
//! - [`messages`]: the Membership actor's messages, and what it tells the supervisor.
//! - [`actor`]: the Membership actor.
//!
//! The heartbeat datagrams themselves are in `smart_proto::heartbeat`, with every other type
//! that crosses a socket.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod actor;
pub mod detector;
pub mod durable;
pub mod election;
pub mod engine;
pub mod epoch;
pub mod messages;
pub mod persist;
pub mod udp;
pub mod view;
