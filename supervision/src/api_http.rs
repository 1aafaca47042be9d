//! The operator's HTTP surface on `http_listen`: the `/v1` JSON API (shapes, routes and
//! error codes in `smart_api::http`), `/metrics` for Prometheus and the dashboard at `/ui`.
//!
//! Requests are routed like the TCP port's ([`Dispatcher`]): a node that is not Control
//! forwards to the Control, with retries across a failover. Serving is
//! [`smart_node::http::serve`] (connection cap, request-head timeout); on top of it every request
//! has a deadline ([`REQUEST_DEADLINE`], 504 past it), bodies are limited to
//! [`MAX_BODY`], event streams to [`MAX_STREAMS`] at once, and every refusal is a JSON
//! error with a stable code. `/v1` and `/metrics` need a token (see [`crate::tokens`]):
//! `read` for `GET`, `admin` for the rest; `/openapi.json` (the API's OpenAPI document) and
//! the dashboard's static files need none (the dashboard asks for a token and sends it with
//! its own `/v1` requests).
//!
//! The actor also samples every member's load (from this node's heartbeats) every
//! [`USAGE_EVERY`] for [`USAGE_KEEP`], which `/v1/usage` serves and the dashboard charts.
//!
//! ## Layout
//! - [`ApiHttp`]: the supervised actor (listener, serving task, sampler);
//! - `router` and its handlers; [`Failure`]: errors as JSON.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{delete, get, post};
use ractor::{Actor, ActorProcessingErr, ActorRef, call_t};
use serde::Deserialize;
use smart_api::http::{
    AdmitClient, Done, ErrorBody, EventJson, EventRecord, NodeJson, NodePlacement, NodeUsageSeries,
    Nodes, Profiles, Resources, Service, ServiceSpec, Services, UsageHistory, UsagePoint,
};
use smart_api::{ApiError, NodeReport, Placement, Request, Response};
use smart_control::ControlMsg;
use smart_proto::NodeId;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span};

use crate::dashboard;
use crate::dispatch::Dispatcher;
use crate::metrics::{NodeMetrics, Sample};
use crate::tokens::{AuthError, Scope, TokenStore};
use smart_config::NodeConfig;
use smart_control::node_reports;
use smart_node::counters::Counters;
use smart_node::events::{Subscribers, unix_ms};
use smart_node::http::{HttpLimits, serve};

/// Longest time a request may take before it is answered 504 (a forwarded request retries
/// across a failover for up to five request timeouts; this is above that).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Largest profile body (`PUT /v1/profiles/{class}`): a profile travels whole in node
/// frames (1 MiB) and in the replica.
pub const MAX_PROFILE_BODY: usize = 1024 * 1024;
/// Event streams open at once on one node.
pub const MAX_STREAMS: usize = 256;
/// A quiet event stream gets a keep-alive this often.
pub const KEEPALIVE: Duration = Duration::from_secs(10);
/// How often members' load is sampled for `/v1/usage`.
pub const USAGE_EVERY: Duration = Duration::from_secs(2);
/// How long samples are kept.
pub const USAGE_KEEP: Duration = Duration::from_secs(300);

/// An error answer.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    body: ErrorBody,
    www_authenticate: bool,
}

impl Failure {
    fn new(status: u16, code: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: ErrorBody::new(code, message, retryable),
            www_authenticate: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message, false)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let (code, status) = smart_api::http::error_code(&e);
        Self::new(status, code, e.to_string(), e.is_retryable())
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized => Self {
                www_authenticate: true,
                ..Self::new(401, "unauthorized", e.to_string(), false)
            },
            AuthError::Forbidden => Self::new(403, "forbidden", e.to_string(), false),
        }
    }
}

impl From<BytesRejection> for Failure {
    fn from(e: BytesRejection) -> Self {
        let status = e.status().as_u16();
        if status == 413 {
            Self::new(
                413,
                "payload_too_large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
                false,
            )
        } else {
            Self::new(status, "bad_request", e.body_text(), false)
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> HttpResponse {
        let mut r = (self.status, axum::Json(self.body)).into_response();
        if self.www_authenticate {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"smart\""),
            );
        }
        r
    }
}

type Answer<T> = Result<T, Failure>;

/// Per-member load samples for `/v1/usage`.
#[derive(Default)]
struct History {
    nodes: BTreeMap<NodeId, VecDeque<UsagePoint>>,
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    dispatch: Dispatcher,
    subscribers: Arc<Subscribers>,
    tokens: Arc<TokenStore>,
    metrics: Arc<NodeMetrics>,
    history: Arc<Mutex<History>>,
    streams: Arc<Semaphore>,
}

/// Everything the HTTP surface needs from the node.
#[derive(Clone)]
pub struct ApiHttpContext {
    /// The node's configuration.
    pub cfg: Arc<NodeConfig>,
    /// Request routing.
    pub dispatch: Dispatcher,
    /// Events.
    pub subscribers: Arc<Subscribers>,
    /// API tokens.
    pub tokens: Arc<TokenStore>,
    /// Metrics.
    pub metrics: Arc<NodeMetrics>,
    /// Node counters (connections refused over the cap).
    pub counters: Arc<Counters>,
}

/// The actor owning the listener, so that the supervision tree restarts it like any child.
pub struct ApiHttp {
    /// What it serves.
    pub ctx: ApiHttpContext,
}

/// Its serving and sampling tasks, aborted when it stops.
pub struct ApiHttpState {
    tasks: Vec<JoinHandle<()>>,
}

impl Actor for ApiHttp {
    type Msg = ();
    type State = ApiHttpState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx = &self.ctx;
        let node = ctx.cfg.id();
        let Some(addr) = ctx.cfg.http_listen else {
            return Ok(ApiHttpState { tasks: Vec::new() });
        };
        let tls = match &ctx.cfg.http_tls {
            Some(t) => Some(
                smart_node::tls::acceptor(&t.cert_file, &t.key_file)
                    .map_err(|e| format!("http_tls: {e}"))?,
            ),
            None => None,
        };
        let listener = smart_node::http::listen(addr)
            .map_err(|e| format!("cannot listen on http_listen {addr}: {e}"))?;
        let state = AppState {
            dispatch: ctx.dispatch.clone(),
            subscribers: ctx.subscribers.clone(),
            tokens: ctx.tokens.clone(),
            metrics: ctx.metrics.clone(),
            history: Default::default(),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        };
        let span = info_span!("api_http", %node);
        let sampler = tokio::spawn(sample_usage(state.clone()).instrument(span.clone()));
        let app = router(state);
        let server = tokio::spawn(
            serve(
                listener,
                app,
                HttpLimits::default(),
                tls.clone(),
                ctx.counters.clone(),
                "api_http",
            )
            .instrument(span),
        );
        info!(%node, %addr, tls = tls.is_some(), "HTTP API, metrics and dashboard listening");
        Ok(ApiHttpState {
            tasks: vec![server, sampler],
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for t in st.tasks.drain(..) {
            t.abort();
        }
        Ok(())
    }
}

/// Samples every member's load from this node's status, forever.
async fn sample_usage(state: AppState) {
    let mut tick = tokio::time::interval(USAGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let keep = (USAGE_KEEP.as_millis() / USAGE_EVERY.as_millis()) as usize;
    loop {
        tick.tick().await;
        let Ok(s) = state.dispatch.status().await else {
            continue;
        };
        let at_ms = unix_ms();
        let mut h = state.history.lock().unwrap_or_else(|p| p.into_inner());
        for m in &s.members {
            let q = h.nodes.entry(m.node_id).or_default();
            if q.len() == keep {
                q.pop_front();
            }
            q.push_back(UsagePoint {
                at_ms,
                alive: m.alive,
                cpu_cores: f64::from(m.load.cpu_milli) / 1000.0,
                memory_bytes: u64::from(m.load.mem_used_mib) << 20,
                network_bps: f64::from(m.load.net_kbps) * 1000.0,
            });
        }
        // Members no longer listed fade out once their samples are old.
        h.nodes.retain(|_, q| {
            q.back()
                .is_some_and(|p| at_ms.saturating_sub(p.at_ms) < USAGE_KEEP.as_millis() as u64)
        });
    }
}

/// The routes (see `smart_api::http`).
fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/version", get(version))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{id}/drain", post(drain))
        .route("/v1/nodes/{id}/undrain", post(undrain))
        .route("/v1/services", get(services).post(admit_service))
        .route("/v1/services/{name}", get(service).delete(stop_service))
        .route("/v1/services/{name}/location", get(locate))
        .route("/v1/services/{name}/clients", post(admit_client))
        .route("/v1/services/{name}/clients/{id}", delete(release_client))
        .route("/v1/events", get(events))
        .route("/v1/usage", get(usage))
        .route("/v1/profiles", get(profiles))
        .route(
            "/v1/profiles/{class}",
            get(profile)
                .put(put_profile)
                .layer(DefaultBodyLimit::max(MAX_PROFILE_BODY)),
        )
        // Behind a read token too: the figures name every service and node.
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(v1)
        .route("/openapi.json", get(openapi))
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .route("/ui", get(dashboard::page))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/ui/{file}", get(dashboard::asset))
        .fallback(|| async { Failure::new(404, "not_found", "no such route", false) })
        .method_not_allowed_fallback(|| async {
            Failure::new(
                405,
                "method_not_allowed",
                "method not allowed on this route",
                false,
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .with_state(state)
}

/// Answers 504 past [`REQUEST_DEADLINE`] (the head of a stream is answered at once), and
/// counts every answer by status class.
async fn deadline(State(st): State<AppState>, req: HttpRequest, next: Next) -> HttpResponse {
    let r = match tokio::time::timeout(REQUEST_DEADLINE, next.run(req)).await {
        Ok(r) => r,
        Err(_) => Failure::new(504, "timeout", "no answer in time; retry", true).into_response(),
    };
    st.metrics.http(r.status().as_u16());
    r
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `/v1` needs a token: `read` for `GET`, `admin` for the rest.
async fn authenticate(
    State(st): State<AppState>,
    req: HttpRequest,
    next: Next,
) -> Answer<HttpResponse> {
    let needs = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Scope::Read
    } else {
        Scope::Admin
    };
    let grant = st.tokens.check(bearer(req.headers()), needs)?;
    tracing::debug!(token = %grant.name, method = %req.method(), path = %req.uri().path(), "api request");
    Ok(next.run(req).await)
}

/// The answer to `req`, or its error answer as a failure.
async fn ask(st: &AppState, req: Request) -> Answer<Response> {
    match st.dispatch.request(req).await {
        Response::Error(e) => Err(e.into()),
        r => Ok(r),
    }
}

fn unexpected(r: Response) -> Failure {
    Failure::new(
        500,
        "internal",
        format!("unexpected answer from the cluster: {r:?}"),
        false,
    )
}

/// A JSON body: `Content-Type: application/json` and a value of `T` (the error says where
/// it is wrong). An empty body is `T::default()` when `optional`.
fn parse_json<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
    optional: bool,
) -> Answer<T> {
    if body.is_empty() && optional {
        return Ok(T::default());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json")
        });
    if !json {
        return Err(Failure::new(
            415,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
            false,
        ));
    }
    serde_json::from_slice(body).map_err(|e| Failure::bad_request(format!("malformed JSON: {e}")))
}

fn node_id(s: &str) -> Answer<NodeId> {
    s.parse().map_err(Failure::bad_request)
}

async fn status(State(st): State<AppState>) -> Answer<axum::Json<smart_api::ClusterStatus>> {
    Ok(axum::Json(st.dispatch.status().await?))
}

async fn version(State(st): State<AppState>) -> axum::Json<smart_api::VersionInfo> {
    axum::Json(st.dispatch.version())
}

/// The Control's view of the agents, if there is a Control that answers.
async fn reports(st: &AppState) -> Option<Vec<NodeReport>> {
    match st.dispatch.request(Request::Nodes).await {
        Response::Nodes(n) => Some(n),
        _ => None,
    }
}

async fn nodes(State(st): State<AppState>) -> Answer<axum::Json<Nodes>> {
    let (status, reports) = tokio::join!(st.dispatch.status(), reports(&st));
    let status = status?;
    let reports = reports.unwrap_or_default();
    let nodes = status
        .members
        .into_iter()
        .map(|m| {
            let placement =
                reports
                    .iter()
                    .find(|r| r.node_id == m.node_id)
                    .map(|r| NodePlacement {
                        drained: r.drained,
                        vr: r.vr,
                        capacity: r.usage.map(|u| Resources {
                            cpu_cores: f64::from(u.cpus),
                            memory_bytes: u.mem_total_bytes,
                            network_bps: u.nic_capacity_bps as f64,
                        }),
                        usage: r.usage.map(|u| Resources {
                            cpu_cores: u.cpu_busy_cores,
                            memory_bytes: u.mem_total_bytes.saturating_sub(u.mem_available_bytes),
                            network_bps: u.net_bps,
                        }),
                        reserved: r.reserved.into(),
                        instances: r.instances.clone(),
                    });
            NodeJson {
                node_id: m.node_id,
                address: m.address,
                http: m.http,
                alive: m.alive,
                roles: m.roles,
                last_heard_ms: m.last_heard_ms,
                load: m.load,
                placement,
            }
        })
        .collect();
    Ok(axum::Json(Nodes {
        control: status.control,
        nodes,
    }))
}

async fn service_list(st: &AppState) -> Answer<Vec<Service>> {
    let (list, reports) = tokio::join!(ask(st, Request::Services), reports(st));
    let list = match list? {
        Response::Services(s) => s,
        other => return Err(unexpected(other)),
    };
    let reports = reports.unwrap_or_default();
    Ok(list
        .into_iter()
        .map(|s| {
            let inst = reports
                .iter()
                .flat_map(|r| r.instances.iter())
                .find(|i| i.instance == s.instance);
            Service {
                name: s.placement.service,
                node: s.placement.node,
                endpoint: s.placement.endpoint,
                instance: s.instance,
                clients: s.clients,
                clients_connected: inst.and_then(|i| i.clients),
                reserved: Some(s.reservation.into()),
                usage: inst.and_then(|i| {
                    Some(Resources {
                        cpu_cores: i.cpu_cores?,
                        memory_bytes: i.mem_bytes.unwrap_or(0),
                        network_bps: i.net_bps.unwrap_or(0.0),
                    })
                }),
                profile: s.profile,
                limits_enforced: s.limits_enforced,
            }
        })
        .collect())
}

async fn profiles(State(st): State<AppState>) -> Answer<axum::Json<Profiles>> {
    match ask(&st, Request::Profiles).await? {
        Response::Profiles(profiles) => Ok(axum::Json(Profiles { profiles })),
        other => Err(unexpected(other)),
    }
}

async fn profile(
    State(st): State<AppState>,
    Path(class): Path<String>,
) -> Answer<axum::Json<smart_proto::profile::ClassProfile>> {
    match ask(&st, Request::Profile { class }).await? {
        Response::Profile(p) => Ok(axum::Json(*p)),
        other => Err(unexpected(other)),
    }
}

/// Wraps a profile for [`parse_json`], which needs a default for optional bodies (this one
/// is required).
#[derive(Deserialize, Default)]
#[serde(transparent)]
struct ProfileBody(Option<smart_proto::profile::ServiceProfile>);

async fn put_profile(
    State(st): State<AppState>,
    Path(class): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<axum::Json<Done>> {
    let body = body.map_err(|e| {
        if e.status().as_u16() == 413 {
            Failure::new(
                413,
                "payload_too_large",
                format!("profiles are limited to {MAX_PROFILE_BODY} bytes"),
                false,
            )
        } else {
            e.into()
        }
    })?;
    let ProfileBody(p) = parse_json(&headers, &body, false)?;
    let profile = p.ok_or_else(|| Failure::bad_request("the body is not a profile"))?;
    done(
        ask(
            &st,
            Request::PutProfile {
                class,
                profile: Box::new(profile),
            },
        )
        .await?,
    )
}

async fn services(State(st): State<AppState>) -> Answer<axum::Json<Services>> {
    Ok(axum::Json(Services {
        services: service_list(&st).await?,
    }))
}

async fn service(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Answer<axum::Json<Service>> {
    service_list(&st)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .map(axum::Json)
        .ok_or_else(|| ApiError::NotFound {
            what: format!("service {name}"),
        })
        .map_err(Into::into)
}

fn placed(r: Response) -> Answer<(StatusCode, axum::Json<Placement>)> {
    match r {
        Response::Placed(p) => Ok((StatusCode::CREATED, axum::Json(p))),
        other => Err(unexpected(other)),
    }
}

fn done(r: Response) -> Answer<axum::Json<Done>> {
    match r {
        Response::Ok => Ok(axum::Json(Done { ok: true })),
        other => Err(unexpected(other)),
    }
}

/// `ServiceSpec` has no default; this wraps it for [`parse_json`].
#[derive(Deserialize, Default)]
#[serde(transparent)]
struct Spec(Option<ServiceSpec>);

async fn admit_service(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, axum::Json<Placement>)> {
    let Spec(spec) = parse_json(&headers, &body?, false)?;
    let spec =
        spec.ok_or_else(|| Failure::bad_request("malformed JSON: expected a service spec"))?;
    placed(ask(&st, Request::AdmitService(spec)).await?)
}

async fn stop_service(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Answer<axum::Json<Done>> {
    done(ask(&st, Request::StopService { service: name }).await?)
}

async fn locate(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Answer<(StatusCode, axum::Json<Placement>)> {
    let (_, p) = placed(ask(&st, Request::Locate { service: name }).await?)?;
    Ok((StatusCode::OK, p))
}

/// The idempotency key of an admission: the caller's `Idempotency-Key` header (a decimal
/// u64: a client that retries its own call sends the same one), else a fresh one for this
/// call, so that the retries inside the node (forward attempts across a failover) admit
/// one client.
fn idempotency_key(headers: &HeaderMap) -> Result<u64, Failure> {
    match headers.get("idempotency-key") {
        None => Ok(rand::random()),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| Failure::bad_request("Idempotency-Key must be a decimal u64")),
    }
}

async fn admit_client(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer<(StatusCode, axum::Json<Placement>)> {
    let b: AdmitClient = parse_json(&headers, &body?, true)?;
    let key = idempotency_key(&headers)?;
    if b.spec.as_ref().is_some_and(|s| s.name != name) {
        return Err(Failure::bad_request(
            "spec.name differs from the path's service",
        ));
    }
    placed(
        ask(
            &st,
            Request::AdmitClient {
                service: name,
                spec: b.spec,
                key: Some(key),
            },
        )
        .await?,
    )
}

async fn release_client(
    State(st): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Answer<axum::Json<Done>> {
    let client = id
        .parse::<u64>()
        .map_err(|_| Failure::bad_request(format!("`{id}` is not a client id")))?;
    done(
        ask(
            &st,
            Request::ReleaseClient {
                service: name,
                client: Some(client),
            },
        )
        .await?,
    )
}

async fn drain(State(st): State<AppState>, Path(id): Path<String>) -> Answer<axum::Json<Done>> {
    done(
        ask(
            &st,
            Request::Drain {
                node: node_id(&id)?,
            },
        )
        .await?,
    )
}

async fn undrain(State(st): State<AppState>, Path(id): Path<String>) -> Answer<axum::Json<Done>> {
    done(
        ask(
            &st,
            Request::Undrain {
                node: node_id(&id)?,
            },
        )
        .await?,
    )
}

async fn usage(State(st): State<AppState>) -> axum::Json<UsageHistory> {
    let h = st.history.lock().unwrap_or_else(|p| p.into_inner());
    axum::Json(UsageHistory {
        interval_ms: USAGE_EVERY.as_millis() as u64,
        nodes: h
            .nodes
            .iter()
            .map(|(n, q)| NodeUsageSeries {
                node_id: *n,
                points: q.iter().copied().collect(),
            })
            .collect(),
    })
}

/// `GET /v1/events` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Start after this index (0: everything kept).
    #[serde(default)]
    from: Option<u64>,
    /// Keep the stream open for new events (default true).
    #[serde(default = "yes")]
    follow: bool,
}

fn yes() -> bool {
    true
}

/// One record in the stream's framing.
fn frame(sse: bool, r: &EventRecord) -> Bytes {
    let json = serde_json::to_string(r).unwrap_or_default();
    if sse {
        Bytes::from(format!("id: {}\ndata: {json}\n\n", r.index))
    } else {
        Bytes::from(format!("{json}\n"))
    }
}

async fn events(
    State(st): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer<HttpResponse> {
    let Query(q) = query.map_err(|e| Failure::bad_request(e.body_text()))?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Failure::bad_request("Last-Event-ID must be an event index"))?,
        ),
    };
    let from = last_event_id.or(q.from).unwrap_or(0);
    let permit = st.streams.clone().try_acquire_owned().map_err(|_| {
        Failure::new(
            503,
            "too_many_streams",
            format!(
                "this node serves at most {MAX_STREAMS} event streams; retry or ask another node"
            ),
            true,
        )
    })?;
    let follow = q.follow;
    let subs = st.subscribers.clone();
    let rx = subs.log().watch();
    struct Cursor {
        subs: Arc<Subscribers>,
        rx: tokio::sync::watch::Receiver<u64>,
        last: u64,
        pending: VecDeque<Bytes>,
        done: bool,
        _permit: tokio::sync::OwnedSemaphorePermit,
    }
    let cursor = Cursor {
        subs,
        rx,
        last: from,
        pending: VecDeque::new(),
        done: false,
        _permit: permit,
    };
    let stream = futures::stream::unfold(cursor, move |mut c| async move {
        loop {
            if let Some(b) = c.pending.pop_front() {
                return Some((Ok::<_, Infallible>(b), c));
            }
            if c.done {
                return None;
            }
            c.rx.borrow_and_update();
            let since = c.subs.log().since(c.last);
            if let Some((a, b)) = since.missed {
                c.pending.push_back(frame(
                    sse,
                    &EventRecord {
                        index: b,
                        at_ms: unix_ms(),
                        event: EventJson::Gap { from: a, to: b },
                    },
                ));
                c.last = c.last.max(b);
            }
            for r in &since.records {
                c.pending.push_back(frame(
                    sse,
                    &EventRecord {
                        index: r.index,
                        at_ms: r.at_ms,
                        event: (&r.event).into(),
                    },
                ));
                c.last = r.index;
            }
            if !c.pending.is_empty() {
                continue;
            }
            if !follow {
                c.done = true;
                continue;
            }
            tokio::select! {
                changed = c.rx.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep(KEEPALIVE) => {
                    let ka = if sse { ": keepalive\n\n" } else { "\n" };
                    return Some((Ok(Bytes::from_static(ka.as_bytes())), c));
                }
            }
        }
    });
    let ctype = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let mut r = Body::from_stream(stream).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(r)
}

/// The API's OpenAPI document (`smart_api::openapi`), generated once.
async fn openapi() -> HttpResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(smart_api::openapi::json).clone();
    let mut r = doc.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn metrics(State(st): State<AppState>) -> HttpResponse {
    let d = &st.dispatch;
    let mut sample = Sample {
        status: d.status().await.ok(),
        events_heard: st.subscribers.heard(),
        event_streams: (MAX_STREAMS - st.streams.available_permits()) as u64,
        ..Sample::default()
    };
    if let Some(c) = d.routes.control()
        && let Ok(s) = call_t!(
            c,
            ControlMsg::Status,
            d.cfg.timing.request_timeout.as_millis() as u64
        )
    {
        sample.nodes = Some(node_reports(&s, d.cfg.admission.vr));
        sample.services = Some(
            s.services
                .iter()
                .map(|(n, (_, _, clients))| (n.clone(), *clients as u64))
                .collect(),
        );
    }
    let mut r = st.metrics.render(&sample).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
