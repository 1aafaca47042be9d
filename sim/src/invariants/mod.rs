//! The invariants, one module each, checked by the simulator as it runs:
//! - [`acting`]: at most one acting Control per epoch; in majority mode at most one at any
//!   instant (after every event);
//! - [`fencing`]: an agent never executes a command with an epoch below one it already
//!   executed (at every agent step);
//! - [`lost`]: no service declared lost while a live node can run it (when declared);
//! - [`settled`]: after `Settle` (a quiet period on a healed, loss-free network): exactly one
//!   running instance per service the Control keeps and never two of any, every API request
//!   answered, no wedged Control;
//! - [`durable_registry`]: no acknowledged desired-state write lost: every service
//!   acknowledged to the operator, even before a whole-cluster restart, is kept (at every
//!   settle, when the run asks for it: the fuzz loop does).

pub mod acting;
pub mod durable_registry;
pub mod fencing;
pub mod lost;
pub mod settled;

use crate::world::Sim;

/// The checks run after every event.
pub(crate) fn after_event(sim: &mut Sim) {
    acting::one_at_a_time(sim);
}
