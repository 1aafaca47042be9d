//! # smart-actors
//!
//! The SMART actors of thesis chapter 4: Control, Agent86, Agent99 and the front-end.
