//! The HTTP/JSON API (`/v1` on every node's `http_listen`), for servers and clients alike:
//! its routes, error codes and event stream. The shapes are defined once, in
//! `smart_proto::http` (re-exported here), and where the HTTP API shows a message-API type
//! it is that type itself (`ServiceSpec`, `Placement`, `ClusterStatus`, ...); events are
//! [`EventJson`], declared together with the message API's `Event`. `Resources` is the one
//! amount type of its own: its field names (`memory_bytes`, `network_bps`) are the JSON's,
//! while `Reservation` (shown as is in `InstanceUse.reserved`) keeps the message API's.
//!
//! ## Routes
//! Every route needs `Authorization: Bearer <token>`; `GET` routes need a `read` token,
//! the others an `admin` token. Requests to a node that is not the Control are forwarded to
//! the Control (with retries across a failover), so any node will do.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /v1/status` | | [`ClusterStatus`](crate::ClusterStatus) (what `smart status --json` prints) |
//! | `GET /v1/version` | | [`VersionInfo`](crate::VersionInfo) |
//! | `GET /v1/nodes` | | [`Nodes`] |
//! | `GET /v1/services` | | [`Services`] |
//! | `GET /v1/services/{name}` | | [`Service`] |
//! | `GET /v1/services/{name}/location` | | [`Placement`](crate::Placement) (waits while the service restarts) |
//! | `POST /v1/services` | [`ServiceSpec`] | `201` [`Placement`](crate::Placement) |
//! | `DELETE /v1/services/{name}` | | [`Done`] |
//! | `POST /v1/services/{name}/clients` | [`AdmitClient`] (or no body) | `201` [`Placement`](crate::Placement) with `client`: its id |
//! | `DELETE /v1/services/{name}/clients/{id}` | | [`Done`] |
//! | `POST /v1/nodes/{id}/drain`, `/undrain` | | [`Done`] |
//! | `GET /v1/events?from=INDEX` | | a stream of [`EventRecord`]s (below) |
//! | `GET /v1/usage` | | [`UsageHistory`]: each member's load over the last minutes |
//! | `GET /v1/profiles` | | [`Profiles`]: each service class's profile, summarised |
//! | `GET /v1/profiles/{class}` | | the class's profile: `class`, `source`, `version` and `profile` (the `smart profile` JSON) |
//! | `PUT /v1/profiles/{class}` | a profile as `smart profile` writes it (at most 1 MiB) | [`Done`] |
//!
//! The same as an OpenAPI document: [`crate::openapi`] (`GET /openapi.json` on every node).
//! Node ids in paths are `3` or `n3`. Bodies are JSON (`Content-Type: application/json`),
//! at most 64 KiB; unknown fields are refused.
//!
//! ## Errors
//! Every error is [`ErrorBody`]: `{"error": {"code", "message", "retryable"}}`. `retryable`
//! is true when the same request may succeed later (an election or a rebuild in progress).
//!
//! | code | status | when |
//! |---|---|---|
//! | `bad_request` | 400 | malformed JSON (the message says where), a bad path or query |
//! | `unauthorized` | 401 | no token or an unknown one |
//! | `forbidden` | 403 | a `read` token on a write route |
//! | `not_found` | 404 | no such service, node, client or route |
//! | `method_not_allowed` | 405 | |
//! | `rejected` | 409 | admission said no, or a drain cannot move everything |
//! | `payload_too_large` | 413 | a body over 64 KiB |
//! | `unsupported_media_type` | 415 | a body without `Content-Type: application/json` |
//! | `internal` | 500 | a node could not carry the request out |
//! | `no_control`, `rebuilding`, `no_majority` | 503 | retryable: no Control right now |
//! | `not_committed` | 503 | the desired-state log could not take the change (the message says why, e.g. no majority of the control nodes reachable); nothing was done; retry once the partition heals |
//! | `timeout` | 504 | no answer in time (retryable) |
//! | `too_many_streams` | 503 | too many open event streams on this node (retryable) |
//!
//! ## Events
//! `GET /v1/events` streams newline-delimited JSON (`application/x-ndjson`), or Server-Sent
//! Events when asked with `Accept: text/event-stream` (the index is the SSE `id`, and
//! `Last-Event-ID` resumes). Each record is [`EventRecord`]: `index`, `at_ms` and the event's
//! fields with its `type`. `from=INDEX` (or `Last-Event-ID`) starts after that index; `0`
//! (the default) sends every event the node still keeps first. A `gap` record says events
//! were missed (older than the node's ring, or the node restarted). `follow=false` sends
//! what is kept and ends. Empty lines (NDJSON) or comments (SSE) keep idle streams alive.
//!
//! Indices are the answering node's: they grow through Control failovers and across the
//! node's restarts (see `smart_node::events`), so a client that stays with a node resumes
//! exactly; a client that moves to another node starts again from that node's ring.

pub use smart_proto::http::*;

pub use smart_proto::api::{EventJson, ServiceSpec};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiError, Event, NodeId};

    #[test]
    fn events_are_flat_json_with_a_type() {
        let r = EventRecord {
            index: 3005,
            at_ms: 1,
            event: (&Event::MemberChanged {
                node: NodeId(2),
                alive: false,
            })
                .into(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"index": 3005, "at_ms": 1, "type": "member_changed", "node": 2, "alive": false})
        );
        assert_eq!(serde_json::from_value::<EventRecord>(v).unwrap(), r);
    }

    #[test]
    fn specs_refuse_unknown_fields_and_default_the_optional_ones() {
        let s: ServiceSpec =
            serde_json::from_str(r#"{"name":"v","class":"distributor","command":["x"]}"#).unwrap();
        assert!(s.env.is_empty() && s.per_client_bps.is_none());
        let e = serde_json::from_str::<ServiceSpec>(
            r#"{"name":"v","class":"d","command":[],"colour":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn every_api_error_has_a_code_and_a_status() {
        let (code, status) = error_code(&ApiError::NoControl);
        assert_eq!((code, status), ("no_control", 503));
        let b = ErrorBody::from(&ApiError::Rejected {
            reason: "cpu".into(),
        });
        assert_eq!(b.error.code, "rejected");
        assert!(!b.error.retryable);
    }
}
