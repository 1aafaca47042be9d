//! # smart-api
//!
//! The SMART message API: wire types and an async client, so that a front-end such as
//! GloVE's Supervisor can embed SMART.
