//! The CLI's HTTP client for a node's `/v1` API (reqwest, plain HTTP): a bearer token,
//! several node addresses tried in turn, and errors that keep the API's code, so the CLI can
//! choose its exit code.
//!
//! Fail-over: a request that could not reach a node (connection refused, no answer) moves
//! on to the next address. `GET`s are also sent again after a timeout; other requests are
//! sent to another node only when the first never connected, so an admission is never
//! made twice.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use smart_api::http::ErrorBody;

/// Why a CLI request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpsError {
    /// No node could be reached.
    #[error("no node answered at {addrs}: {cause}")]
    Unreachable {
        /// The addresses tried.
        addrs: String,
        /// The last failure.
        cause: String,
    },
    /// The node answered with an error.
    #[error("{status}: {} ({}{})", .body.error.message, .body.error.code, if .body.error.retryable { ", retry later" } else { "" })]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error.
        body: ErrorBody,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The command was given something it cannot use.
    #[error("{0}")]
    Usage(String),
}

/// Exit codes of the `smart` admin commands (docs/operations.md, "Exit codes").
pub(crate) mod exit {
    /// The command failed (refused by the cluster: rejected, not found, bad request, ...).
    pub(crate) const FAILED: u8 = 1;
    /// Bad command line or configuration (clap also exits 2 on usage errors).
    pub(crate) const USAGE: u8 = 2;
    /// No node could be reached.
    pub(crate) const UNREACHABLE: u8 = 3;
    /// The token was refused (401) or lacks the scope (403).
    pub(crate) const AUTH: u8 = 4;
    /// The cluster cannot answer right now (no Control, rebuilding, timeout): retry.
    pub(crate) const RETRY: u8 = 5;
}

impl OpsError {
    /// The exit code for this failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            OpsError::Unreachable { .. } => exit::UNREACHABLE,
            OpsError::Api {
                status: 401 | 403, ..
            } => exit::AUTH,
            OpsError::Api { body, .. } if body.error.retryable => exit::RETRY,
            OpsError::Api { .. } | OpsError::Protocol(_) => exit::FAILED,
            OpsError::Usage(_) => exit::USAGE,
        }
    }
}

/// A client for one cluster's HTTP API.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    bases: Vec<String>,
    token: Option<String>,
    http: reqwest::Client,
}

impl HttpClient {
    /// A client for `bases` (`http://host:port` or `https://`, tried in order), with
    /// `token`; each request may take `timeout`. An `https://` node is checked against the
    /// CA certificates of `ca` (PEM) when given, else the system's roots.
    pub(crate) fn new(
        bases: Vec<String>,
        token: Option<String>,
        timeout: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, OpsError> {
        if bases.is_empty() {
            return Err(OpsError::Usage(
                "no node address: give --addr URL (or SMART_ADDR), or --config NODE.toml".into(),
            ));
        }
        smart_node::tls::install_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .read_timeout(timeout);
        if let Some(ca) = ca {
            let bad = |e: String| OpsError::Usage(format!("CA file {}: {e}", ca.display()));
            let certs = smart_node::tls::load_certs(ca).map_err(|e| bad(e.to_string()))?;
            let certs = certs
                .iter()
                .map(|c| reqwest::Certificate::from_der(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| OpsError::Usage(format!("HTTP client: {e}")))?;
        let bases = bases
            .into_iter()
            .map(|b| {
                let b = b.trim().trim_end_matches('/').to_string();
                if b.contains("://") {
                    b
                } else {
                    format!("http://{b}")
                }
            })
            .collect();
        Ok(Self { bases, token, http })
    }

    /// The addresses, in the order they are tried.
    pub(crate) fn bases(&self) -> &[String] {
        &self.bases
    }

    /// Sends `method path` (with a JSON `body`), failing over between nodes (see the module
    /// docs), and returns the raw answer of the first node that gave one.
    pub(crate) async fn send_raw<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        stream: bool,
    ) -> Result<reqwest::Response, OpsError> {
        self.send_raw_keyed(method, path, body, stream, None).await
    }

    /// [`Self::send_raw`], with an `Idempotency-Key` header on every try when `key` is
    /// given (the same on each node tried, so that the call takes effect once).
    async fn send_raw_keyed<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        stream: bool,
        key: Option<u64>,
    ) -> Result<reqwest::Response, OpsError> {
        let mut last = String::new();
        for base in &self.bases {
            let mut req = self.http.request(method.clone(), format!("{base}{path}"));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(k) = key {
                req = req.header("idempotency-key", k.to_string());
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            if !stream {
                req = req.timeout(Duration::from_secs(60));
            }
            match req.send().await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    let again = e.is_connect() || method == Method::GET;
                    last = format!("{base}: {e}");
                    if !again {
                        break;
                    }
                }
            }
        }
        Err(OpsError::Unreachable {
            addrs: self.bases.join(", "),
            cause: last,
        })
    }

    /// Sends a request and decodes its JSON answer (or its error).
    pub(crate) async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, OpsError> {
        self.send_decoded(method, path, body, None).await
    }

    /// Sends a non-idempotent request (an admission) with one idempotency key for this
    /// call: however the request is retried on its way, it takes effect once.
    pub(crate) async fn send_once<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, OpsError> {
        self.send_decoded(method, path, body, Some(call_key()))
            .await
    }

    /// Sends (with `key` as its `Idempotency-Key`, if any) and decodes the JSON answer.
    async fn send_decoded<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        key: Option<u64>,
    ) -> Result<T, OpsError> {
        let r = self.send_raw_keyed(method, path, body, false, key).await?;
        let status = r.status();
        let bytes = r
            .bytes()
            .await
            .map_err(|e| OpsError::Protocol(format!("reading the answer: {e}")))?;
        decode(status, &bytes)
    }

    /// `GET path`.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, OpsError> {
        self.send::<(), T>(Method::GET, path, None).await
    }
}

/// A fresh idempotency key: the process's randomly seeded hasher over the clock (unique
/// per call without a random number generator of its own).
fn call_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// Decodes an answer: `T` on success, the API's error otherwise.
pub(crate) fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, OpsError> {
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|e| {
            OpsError::Protocol(format!(
                "{e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        });
    }
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => Err(OpsError::Api {
            status: status.as_u16(),
            body,
        }),
        Err(_) => Err(OpsError::Api {
            status: status.as_u16(),
            body: ErrorBody::new(
                "http",
                format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
                status.is_server_error(),
            ),
        }),
    }
}
