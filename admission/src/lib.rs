//! # smart-admission
//!
//! SMART's probabilistic admission control and placement (thesis §4.1, DESIGN §3–§4), as a
//! pure library with no I/O, and the `smart sim` discrete-event simulator.
//!
//! ## Layout
//! - [`profile`]: resource profiles (sample series per interval), the file format Agent99 writes.

pub mod profile;
