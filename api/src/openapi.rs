//! The HTTP/JSON API as an OpenAPI 3.1 document, generated from the types of
//! [`crate::http`] and the message API (utoipa), for front-ends in other languages. Every
//! node serves it at `GET /openapi.json`; the committed copy is `api/openapi.json`, kept
//! equal to the generated one by a test (`SMART_BLESS=1 cargo test -p smart-api openapi`
//! rewrites it after a change).
//!
//! The functions below only describe routes (the handlers are the node's,
//! `smart_supervision::api_http`); a test of the node checks that every route described here
//! is served there.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::{
    AdmitClient, Done, ErrorBody, ErrorInfo, EventJson, EventRecord, NodeJson, NodePlacement,
    NodeUsageSeries, Nodes, Profiles, Resources, Service, ServiceSpec, Services, UsageHistory,
    UsagePoint,
};
use smart_proto::agent::Reservation;
use smart_proto::api::{
    ClusterStatus, ControlView, InstanceUse, MemberLoad, MemberStatus, Placement, VersionInfo,
};
use smart_proto::profile::{ProfileSource, ProfileSummary, VideoRef};

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token from the node's tokens file: `read` for GET, `admin` for the rest.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "SMART HTTP API",
        version = "1",
        description = "The operator's API of every SMART node (`http_listen`). A node that is not Control forwards to the Control. Errors are `ErrorBody` with a stable code; see the smart-api crate's `http` module."
    ),
    security(("token" = [])),
    modifiers(&Bearer),
    paths(
        status, version, nodes, drain, undrain, services, admit_service, service,
        stop_service, locate, admit_client, release_client, events, usage, profiles,
        profile, put_profile
    ),
    components(schemas(
        ClusterStatus, ControlView, MemberStatus, MemberLoad, VersionInfo, Placement,
        ErrorBody, ErrorInfo, Done, ServiceSpec, AdmitClient, Resources, Nodes, NodeJson,
        NodePlacement, InstanceUse, Reservation, Services, Service, EventRecord, EventJson,
        UsageHistory, NodeUsageSeries, UsagePoint, Profiles, ProfileSummary, ProfileSource,
        VideoRef
    ))
)]
pub struct ApiDoc;

/// The document as pretty JSON.
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the document serialises")
}

/// Members and the Control as the node asked sees them.
#[utoipa::path(get, path = "/v1/status", responses(
    (status = 200, body = ClusterStatus), (status = 401, body = ErrorBody)))]
pub fn status() {}

/// The node's versions and HTTP address.
#[utoipa::path(get, path = "/v1/version", responses((status = 200, body = VersionInfo)))]
pub fn version() {}

/// Every member, with the Control's view of the agents.
#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = Nodes)))]
pub fn nodes() {}

/// Move every service off a node; kept across Control failovers.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain",
    params(("id" = String, Path, description = "node id, `3` or `n3`")),
    responses((status = 200, body = Done), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub fn drain() {}

/// Take a drained node back into placement.
#[utoipa::path(post, path = "/v1/nodes/{id}/undrain",
    params(("id" = String, Path, description = "node id, `3` or `n3`")),
    responses((status = 200, body = Done), (status = 400, body = ErrorBody)))]
pub fn undrain() {}

/// Admitted services.
#[utoipa::path(get, path = "/v1/services", responses((status = 200, body = Services)))]
pub fn services() {}

/// Admit and place a service; answered once its instance runs.
#[utoipa::path(post, path = "/v1/services", request_body = ServiceSpec, responses(
    (status = 201, body = Placement), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 409, description = "admission said no", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub fn admit_service() {}

/// One service.
#[utoipa::path(get, path = "/v1/services/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Service), (status = 404, body = ErrorBody)))]
pub fn service() {}

/// Stop a service and release its reservation.
#[utoipa::path(delete, path = "/v1/services/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Done), (status = 404, body = ErrorBody)))]
pub fn stop_service() {}

/// Where a service's clients connect now (waits while it restarts).
#[utoipa::path(get, path = "/v1/services/{name}/location", params(("name" = String, Path)),
    responses((status = 200, body = Placement), (status = 404, body = ErrorBody)))]
pub fn locate() {}

/// Admit one client of a service (its `client` id is in the answer).
#[utoipa::path(post, path = "/v1/services/{name}/clients", params(("name" = String, Path)),
    request_body(content = Option<AdmitClient>, description = "optional: how to admit the service first"),
    responses((status = 201, body = Placement), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub fn admit_client() {}

/// Release one client of a service.
#[utoipa::path(delete, path = "/v1/services/{name}/clients/{id}",
    params(("name" = String, Path), ("id" = u64, Path, description = "the client id its admission returned")),
    responses((status = 200, body = Done), (status = 404, body = ErrorBody)))]
pub fn release_client() {}

/// The events the node hears, numbered: NDJSON of `EventRecord`, or SSE with
/// `Accept: text/event-stream` (the index is the event id; `Last-Event-ID` resumes).
#[utoipa::path(get, path = "/v1/events",
    params(
        ("from" = Option<u64>, Query, description = "start after this index (0: everything kept)"),
        ("follow" = Option<bool>, Query, description = "keep the stream open (default true)"),
    ),
    responses((status = 200, description = "one EventRecord per line", body = EventRecord, content_type = "application/x-ndjson"),
        (status = 503, description = "too many streams on this node", body = ErrorBody)))]
pub fn events() {}

/// Each member's load over the last minutes.
#[utoipa::path(get, path = "/v1/usage", responses((status = 200, body = UsageHistory)))]
pub fn usage() {}

/// Every service class's profile, summarised.
#[utoipa::path(get, path = "/v1/profiles", responses((status = 200, body = Profiles)))]
pub fn profiles() {}

/// One class's profile, whole: `class`, `source`, `version` and `profile` (the JSON
/// `smart profile` writes: `interval_ms`, `base` and `per_client` series of `cpu_cores` and
/// `net_bps`, `working_set_bytes`, `video`).
#[utoipa::path(get, path = "/v1/profiles/{class}", params(("class" = String, Path)),
    responses((status = 200, description = "the class's profile", body = Object), (status = 404, body = ErrorBody)))]
pub fn profile() {}

/// Store a class's profile (replacing it): the JSON `smart profile` writes, at most 1 MiB.
/// Admission uses it from the next request; it survives Control failovers.
#[utoipa::path(put, path = "/v1/profiles/{class}", params(("class" = String, Path)),
    request_body(content = Object, description = "a profile as `smart profile` writes it"),
    responses((status = 200, body = Done), (status = 400, description = "not a valid profile (the message says why)", body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub fn put_profile() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_openapi_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let now = json() + "\n";
        if std::env::var_os("SMART_BLESS").is_some() {
            std::fs::write(path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "api/openapi.json is stale: run SMART_BLESS=1 cargo test -p smart-api openapi"
        );
        let v: serde_json::Value = serde_json::from_str(&now).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        assert_eq!(v["paths"].as_object().unwrap().len(), 14);
        assert!(v["components"]["schemas"]["EventJson"].is_object());
    }
}
