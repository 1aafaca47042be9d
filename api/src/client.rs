//! The async message-API client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), smart_api::client::ClientError> {
//! use smart_api::client::ApiClient;
//! use smart_api::{Request, Response};
//! use smart_api::client::Credentials;
//! // An API token (`smart tokens new`), and the key book that says which key each node
//! // proves: the client never holds the cluster key.
//! let creds = Credentials::load("my-admin-token", "nodes.pub".as_ref())?;
//! // Any node will do; the client fails over to the next when one is lost.
//! let client = ApiClient::connect_any(&["10.0.0.1:7101", "10.0.0.2:7101"], creds).await?;
//! println!("node speaks API v{:?}", client.server_version().map(|v| v.api_version));
//! match client.request(Request::Services).await? {
//!     Response::Services(s) => println!("{} services", s.len()),
//!     Response::Error(e) if e.is_retryable() => println!("retry later: {e}"),
//!     other => println!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! ## Behaviour
//! - **A client is not a node**: it presents an API token (a read token may only read; an
//!   admin token may do everything), never the cluster key, and it believes only a node
//!   that proves the key its key book lists for it.
//! - **Typed errors reach the caller**: [`ApiClient::request`] returns the node's answer,
//!   [`Response::Error`] included, so callers can tell a retryable refusal
//!   ([`ApiError::is_retryable`]) from a final one. Only transport failures are `Err`. The
//!   typed helpers ([`ApiClient::status`], [`ApiClient::subscribe`]) turn an error answer
//!   into [`ClientError::Api`].
//! - **Version on connect**: every connection starts with [`Request::Version`]; the answer
//!   is kept ([`ApiClient::server_version`]) and a different [`API_VERSION`] is logged.
//! - **Fail-over**: given several node addresses, the client connects to the first that
//!   answers. When its connection is lost (or a read-only request times out), it connects
//!   to the next address and, for requests that are safe to repeat (status, services,
//!   locate, version, nodes, subscribe, drain), sends the request again there. Requests that
//!   change state (admissions, releases, stops, undrain) are not repeated: their error says
//!   the answer was lost, and the caller decides. A subscription is renewed on the new
//!   connection; events pushed while there was none are missed (the HTTP API's
//!   `/v1/events` can resume from an index).
//! - **Unknown events are skipped**: an event variant newer than this build arrives as
//!   [`EventNote::Unknown`]; [`ApiClient::next_event`] skips it and counts it
//!   ([`ApiClient::skipped_events`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smart_transport::client::ConnectError;
use smart_transport::noise::KeyBook;
use smart_transport::tcp::TcpTransport;
use smart_transport::{Client, Endpoint, RequestError};

use crate::{
    API_VERSION, ApiError, ClusterStatus, Event, EventNote, NodeProtocol, NodeRequest,
    NodeResponse, Request, Response, VersionInfo,
};

/// Default timeout of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The credentials could not be loaded.
    #[error("credentials: {0}")]
    Key(String),
    /// Could not connect or authenticate (to any of the addresses).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The request got no answer or the connection broke.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The node answered with an error (from the typed helpers only).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The node answered something this client did not expect.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// One connection and what its node said on connect.
struct Conn {
    client: Client<NodeProtocol>,
    /// Index of its address in `ApiClient::addrs`.
    at: usize,
    version: Option<VersionInfo>,
}

/// What a client presents and checks: its API token, and the nodes' public keys.
#[derive(Clone)]
pub struct Credentials {
    token: String,
    book: KeyBook,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        write!(f, "Credentials({} nodes)", self.book.nodes().count())
    }
}

impl Credentials {
    /// `token`, checking nodes against `book`.
    pub fn new(token: impl Into<String>, book: KeyBook) -> Self {
        Self {
            token: token.into(),
            book,
        }
    }

    /// `token`, checking nodes against the key book file `nodes_pub` (`nodes.pub`).
    pub fn load(
        token: impl Into<String>,
        nodes_pub: &std::path::Path,
    ) -> Result<Self, ClientError> {
        let book = KeyBook::load(nodes_pub).map_err(|e| ClientError::Key(e.to_string()))?;
        Ok(Self::new(token, book))
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::token_client(&self.token, self.book.clone())
    }
}

/// A message-API client over one or several nodes' addresses (see the module docs).
pub struct ApiClient {
    addrs: Vec<String>,
    creds: Credentials,
    timeout: Duration,
    conn: Mutex<Arc<Conn>>,
    /// Serialises fail-overs, so that tasks that lose the connection together reconnect once.
    failing_over: tokio::sync::Mutex<()>,
    subscribed: AtomicBool,
    skipped: AtomicU64,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiClient({:?})", self.addrs)
    }
}

/// True for requests that may be sent again after their answer was lost.
fn repeatable(req: &Request) -> bool {
    matches!(
        req,
        Request::Status
            | Request::Services
            | Request::Locate { .. }
            | Request::Version
            | Request::Nodes
            | Request::Subscribe
            | Request::Drain { .. }
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ApiClient {
    /// Connects to `addr` (a node's `listen` address) with `creds`.
    pub async fn connect(addr: &str, creds: Credentials) -> Result<Self, ClientError> {
        Self::connect_any(&[addr], creds).await
    }

    /// Connects to the first of `addrs` that accepts and answers `Version`; later failures
    /// move to the next address (see the module docs).
    pub async fn connect_any(addrs: &[&str], creds: Credentials) -> Result<Self, ClientError> {
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let conn = open(&addrs, &creds, 0, DEFAULT_TIMEOUT).await?;
        Ok(Self {
            addrs,
            creds,
            timeout: DEFAULT_TIMEOUT,
            conn: Mutex::new(Arc::new(conn)),
            failing_over: tokio::sync::Mutex::new(()),
            subscribed: AtomicBool::new(false),
            skipped: AtomicU64::new(0),
        })
    }

    /// Uses `timeout` for every later request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What the connected node said on connect (`None` if it did not answer `Version`).
    pub fn server_version(&self) -> Option<VersionInfo> {
        lock(&self.conn).version.clone()
    }

    /// The address of the node connected now.
    pub fn connected_to(&self) -> String {
        self.addrs[lock(&self.conn).at].clone()
    }

    /// Events skipped because this build does not know their variant.
    pub fn skipped_events(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    fn current(&self) -> Arc<Conn> {
        lock(&self.conn).clone()
    }

    /// Replaces `failed` by a connection to the next address that answers (trying every
    /// address once, starting after `failed`'s). Renews the subscription.
    async fn fail_over(&self, failed: &Arc<Conn>) -> Result<Arc<Conn>, ClientError> {
        let _one = self.failing_over.lock().await;
        let now = self.current();
        if !Arc::ptr_eq(&now, failed) {
            return Ok(now); // another task already moved on
        }
        let start = (failed.at + 1) % self.addrs.len();
        let conn = Arc::new(open(&self.addrs, &self.creds, start, self.timeout).await?);
        tracing::info!(to = %self.addrs[conn.at], "message API client failed over");
        if self.subscribed.load(Ordering::SeqCst) {
            let r = conn
                .client
                .request(NodeRequest::Api(Request::Subscribe), self.timeout)
                .await?;
            if !matches!(r, NodeResponse::Api(Response::Ok)) {
                return Err(ClientError::Unexpected(format!("subscribe: {r:?}")));
            }
        }
        *lock(&self.conn) = conn.clone();
        Ok(conn)
    }

    /// Sends one request and returns the node's answer, [`Response::Error`] included: only
    /// transport failures are `Err`.
    pub async fn request(&self, req: Request) -> Result<Response, ClientError> {
        let conn = self.current();
        let first = conn
            .client
            .request(NodeRequest::Api(req.clone()), self.timeout)
            .await;
        let err = match first {
            Ok(r) => return api_answer(r),
            Err(e) => e,
        };
        // Fail over when the connection is gone, or when a request that is safe to repeat
        // timed out (the node may be stopped); with one address, reconnect to it.
        let lost = conn.client.is_closed()
            || matches!(
                err,
                RequestError::Disconnected | RequestError::Unavailable(_) | RequestError::Stopped
            );
        let timed_out = matches!(err, RequestError::Timeout(_));
        if !(lost || timed_out && repeatable(&req)) {
            return Err(err.into());
        }
        let conn = self.fail_over(&conn).await?;
        if !repeatable(&req) {
            // The next request goes to the new connection; whether this one ran is unknown.
            return Err(err.into());
        }
        api_answer(
            conn.client
                .request(NodeRequest::Api(req), self.timeout)
                .await?,
        )
    }

    /// Members and Control as the connected node sees them.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        match self.request(Request::Status).await? {
            Response::Status(s) => Ok(s),
            Response::Error(e) => Err(e.into()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Subscribes to events; read them with [`ApiClient::next_event`]. The subscription
    /// follows the client's fail-overs.
    pub async fn subscribe(&self) -> Result<(), ClientError> {
        self.subscribed.store(true, Ordering::SeqCst);
        match self.request(Request::Subscribe).await? {
            Response::Ok => Ok(()),
            Response::Error(e) => Err(e.into()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The next pushed event; `None` when the connection closed and (for a subscriber) no
    /// other node could be reached. Events of unknown variants are skipped and counted.
    pub async fn next_event(&self) -> Option<Event> {
        loop {
            let conn = self.current();
            match conn.client.next_notification().await {
                Some(EventNote::Known(e)) => return Some(e),
                Some(EventNote::Unknown(bytes)) => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(len = bytes.len(), "skipped an event of an unknown variant");
                }
                None => {
                    if !self.subscribed.load(Ordering::SeqCst)
                        || self.fail_over(&conn).await.is_err()
                    {
                        return None;
                    }
                }
            }
        }
    }
}

fn api_answer(r: NodeResponse) -> Result<Response, ClientError> {
    match r {
        NodeResponse::Api(r) => Ok(r),
        other => Err(ClientError::Unexpected(format!(
            "node-internal answer to an API request: {other:?}"
        ))),
    }
}

/// Connects to the first address, from `start` round the list, that accepts the handshake
/// and answers; asks it for its version.
async fn open(
    addrs: &[String],
    creds: &Credentials,
    start: usize,
    timeout: Duration,
) -> Result<Conn, ClientError> {
    let mut last: Option<ClientError> = None;
    for i in 0..addrs.len() {
        let at = (start + i) % addrs.len();
        let client = match Client::connect(&TcpTransport, &addrs[at], creds.endpoint()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(addr = %addrs[at], cause = %e, "node not reachable, trying the next");
                last = Some(e.into());
                continue;
            }
        };
        let version = match client
            .request(NodeRequest::Api(Request::Version), timeout)
            .await
        {
            Ok(NodeResponse::Api(Response::Version(v))) => {
                if v.api_version != API_VERSION {
                    tracing::warn!(
                        node = %v.node_id,
                        theirs = v.api_version,
                        ours = API_VERSION,
                        "the node speaks another message-API version"
                    );
                }
                Some(v)
            }
            // Answered, but not with a version: a node of another API version.
            Ok(_) => None,
            Err(e) => {
                last = Some(e.into());
                continue;
            }
        };
        return Ok(Conn {
            client,
            at,
            version,
        });
    }
    Err(last.unwrap_or_else(|| ClientError::Unexpected("no node address given".into())))
}
