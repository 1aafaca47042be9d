//! # smart-api
//!
//! The SMART message API (docs/DESIGN.md §6): what a front-end such as GloVE's Supervisor, or the
//! `smart` admin commands, say to any node of the cluster. Requests addressed to a node that
//! is not the Control are forwarded by it to the Control, so a client needs only one address.
//!
//! ## Layout
//! The types are defined in `smart-proto` (the crate of everything that crosses a socket)
//! and re-exported here, so a Rust front-end needs only this crate.
//!
//! - [`Request`] / [`Response`]: one request, one response, over the node's TCP transport.
//! - [`Event`]: what subscribers are pushed (admissions, migrations, failures, Control changes).
//! - [`ClusterStatus`]: the answer to `Status`, also printed by `smart status --json`.
//! - [`ApiError`]: typed errors, each saying whether a retry can help.
//! - [`NodeRequest`] / [`NodeResponse`] / [`NodeProtocol`]: what a node's TCP port speaks:
//!   the message API, plus node-to-node messages that a node refuses from clients.
//! - [`http`]: the HTTP/JSON API's shapes, routes and error codes (`/v1` on every node).
//! - [`openapi`]: the HTTP API as an OpenAPI document (`api/openapi.json`, `GET /openapi.json`).
//! - [`client`]: [`client::ApiClient`], the async client (several node addresses, fail-over,
//!   typed error answers, version check on connect); `examples/supervisor.rs` is a
//!   minimal external front-end (admit a video's distributor and a viewer, follow events).
//!
//! ## Requests and what answers them
//! | request | answer | by |
//! |---|---|---|
//! | `Status` | `Status(ClusterStatus)` | the node asked |
//! | `Subscribe` | `Ok`, then `Event` notifications on that connection | the node asked (the Control fans events out to every node) |
//! | `AdmitService(spec)` | `Placed` once its instance runs, or `Error(Rejected)` | the Control |
//! | `AdmitClient{service, spec}` | `Placed` (the service's instance), `Error(Rejected)` or `Error(NotFound)` (no such service and no `spec` to admit it from) | the Control |
//! | `ReleaseClient{service, client}` (the id `Placed.client` gave, or the newest), `StopService{service}` | `Ok` or `Error(NotFound)` | the Control |
//! | `Undrain{node}` | `Ok`, or `Error(BadRequest)` when the node is not drained | the Control |
//! | `Drain{node}` | `Ok` (moves start), or `Error(Rejected)` naming what cannot move | the Control |
//! | `Locate{service}` | `Placed` (waits while the service restarts) or `Error(NotFound)` | the Control |
//! | `Services` | `Services(Vec<ServiceStatus>)` | the Control |
//! | `Version` | `Version(VersionInfo)`: crate, API, wire and heartbeat versions, HTTP address | the node asked (clients send it first, on connect) |
//! | `Nodes` | `Nodes(Vec<NodeReport>)`: capacity, usage, reservations, VR, drains, instances | the Control's node |
//!
//! In a `ServiceSpec` command, `{listen}` is replaced by an address Agent86 picks on the
//! chosen node; the instance's endpoint is `http://{listen}/`.
//!
//! ## Wire format
//! Messages travel inside the SMART TCP transport (`smart_transport`): frames with a
//! 4-byte big-endian length, opened by a client's Noise handshake
//! `Noise_XX_25519_ChaChaPoly_BLAKE2s` (`ClientHello`: a throw-away static key, the API
//! token in the encrypted third message, the node's key checked against `nodes.pub`; the
//! wire format is in `smart_transport::handshake`), then postcard envelopes encrypted and authenticated with
//! ChaCha20-Poly1305. A client sends `NodeRequest::Api(Request)` and receives
//! `NodeResponse::Api(Response)`; subscribers receive [`EventNote`] notifications: an
//! [`Event`]'s postcard bytes inside a byte string, so that a client skips (and counts) an
//! event variant newer than itself instead of losing the connection. All are encoded with
//! postcard (serde's data model: enums are a varint variant index followed by the fields in
//! order; integers are varints; strings and vectors are a varint length then the
//! bytes/elements; `Option` is a 0/1 byte then the value).
//! Variant indices are the declaration order below and are never reused: new variants are
//! only appended, and [`API_VERSION`] changes when a message changes shape.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod client;
pub mod http;
pub mod openapi;

pub use smart_proto::api::*;
pub use smart_proto::node::{NodeRequest, NodeResponse};
pub use smart_proto::{Epoch, NodeId, ServiceName};

pub use smart_transport::NodeProtocol;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_postcard() {
        let s = Response::Status(ClusterStatus {
            node_id: NodeId(2),
            highest_epoch: 7,
            control: Some(ControlView {
                node_id: NodeId(1),
                epoch: 7,
            }),
            members: vec![MemberStatus {
                node_id: NodeId(1),
                address: "127.0.0.1:7101".into(),
                alive: true,
                roles: vec!["agent".into()],
                last_heard_ms: 40,
                incarnation: 3,
                load: MemberLoad::default(),
                http: Some("http://127.0.0.1:7180".into()),
            }],
            counters: vec![("dropped_bad_tag".into(), 2)],
        });
        let bytes = postcard::to_allocvec(&s).unwrap();
        assert_eq!(postcard::from_bytes::<Response>(&bytes).unwrap(), s);
    }

    #[test]
    fn retryable_errors_are_the_transient_ones() {
        assert!(ApiError::NoControl.is_retryable());
        assert!(
            !ApiError::Rejected {
                reason: "cpu".into()
            }
            .is_retryable()
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(0u8..=255, 0..256)) {
            let _ = postcard::from_bytes::<Request>(&bytes);
            let _ = postcard::from_bytes::<Response>(&bytes);
        }
    }
}
