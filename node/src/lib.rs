//! # smart-node
//!
//! What the actors of one SMART node share, below all of them: the node's named
//! [`counters::Counters`] (dropped datagrams, refusals, restarts; shown by `smart status`),
//! the node's event stream ([`events::Subscribers`]: message-API subscribers and a numbered
//! ring of recent events that the HTTP API and the front-end's page follow), and HTTP serving
//! under limits ([`http::serve`]: a connection cap and a request-head timeout), used by the
//! front-end and by the operator's HTTP API.
//!
//! ## Layout
//! - [`counters`]: named counters.
//! - [`events`]: event subscribers and the ring.
//! - [`http`]: HTTP serving with connection caps and head timeouts (axum on hyper).
//! - [`tls`]: TLS for the HTTP API (rustls), and the certificates `smart tls` makes.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod counters;
pub mod events;
pub mod http;
pub mod tls;
