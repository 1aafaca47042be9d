//! The async message-API client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), smart_api::client::ClientError> {
//! use smart_api::client::ApiClient;
//! let key = smart_supervision::ClusterKey::load("cluster.key".as_ref())
//!     .map_err(|e| smart_api::client::ClientError::Key(e.to_string()))?;
//! let client = ApiClient::connect("127.0.0.1:7101", key).await?;
//! let status = client.status().await?;
//! println!("control: {:?}", status.control);
//! # Ok(()) }
//! ```

use std::time::Duration;

use smart_supervision::ClusterKey;
use smart_supervision::transport::client::ConnectError;
use smart_supervision::transport::tcp::TcpTransport;
use smart_supervision::transport::{Client, Endpoint, RequestError};

use crate::{
    ApiError, ClusterStatus, Event, NodeProtocol, NodeRequest, NodeResponse, Request, Response,
};

/// Default timeout of one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The key could not be loaded.
    #[error("cluster key: {0}")]
    Key(String),
    /// Could not connect or authenticate.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The request got no answer or the connection broke.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The node answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The node answered something this client did not expect.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// A connection to one node's message API.
pub struct ApiClient {
    inner: Client<NodeProtocol>,
    timeout: Duration,
}

impl ApiClient {
    /// Connects to `addr` (a node's `listen` address) and authenticates with `key`.
    pub async fn connect(addr: &str, key: ClusterKey) -> Result<Self, ClientError> {
        let inner = Client::connect(&TcpTransport, addr, Endpoint::client(key)).await?;
        Ok(Self {
            inner,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Uses `timeout` for every later request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one request; an [`Response::Error`] becomes [`ClientError::Api`].
    pub async fn request(&self, req: Request) -> Result<Response, ClientError> {
        match self
            .inner
            .request(NodeRequest::Api(req), self.timeout)
            .await?
        {
            NodeResponse::Api(Response::Error(e)) => Err(ClientError::Api(e)),
            NodeResponse::Api(r) => Ok(r),
            other => Err(ClientError::Unexpected(format!(
                "node-internal answer to an API request: {other:?}"
            ))),
        }
    }

    /// Members and Control as the connected node sees them.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        match self.request(Request::Status).await? {
            Response::Status(s) => Ok(s),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Subscribes to events; read them with [`ApiClient::next_event`].
    pub async fn subscribe(&self) -> Result<(), ClientError> {
        match self.request(Request::Subscribe).await? {
            Response::Ok => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The next pushed event; `None` when the connection closed.
    pub async fn next_event(&self) -> Option<Event> {
        self.inner.next_notification().await
    }
}
