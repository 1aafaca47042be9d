//! Control engine tests on the exact outputs it emits (openraft style): each test drives the
//! engine with inputs and a hand-made clock and asserts the commands, answers and events.
//! One file per concern; the harness and the expected outputs' builders are in
//! [`support`].

mod admission;
mod failures;
mod moves;
mod profiles;
mod qos;
mod rebuild;
mod reconcile;
mod support;

// The actor's own tests run the engine with the same settings.
pub(crate) use support::settings;
