//! Forwarding of message-API requests to the current Control, retrying the transient
//! failures (no Control, Control rebuilding) within a deadline, so that a client waits
//! across a Control failover instead of failing. Used by the TCP port for requests that
//! reach a node that is not Control, and by the front-end's HTTP side.

use std::sync::Arc;
use std::time::Duration;

use crate::peer::PeerClient;
use smart_membership::view::ClusterView;
use smart_proto::NodeId;
use smart_proto::api::{ApiError, Request, Response};
use smart_proto::node::{NodeRequest, NodeResponse};
use tokio::sync::watch;

/// Forwards requests to the Control.
#[derive(Clone)]
pub struct Forwarder {
    /// This node.
    pub node: NodeId,
    /// Where the Control is.
    pub view: watch::Receiver<ClusterView>,
    /// Outgoing requests.
    pub peers: Arc<dyn PeerClient>,
    /// Total time a request may spend retrying across a failover.
    pub deadline: Duration,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
}

impl Forwarder {
    /// Forwards with retries on transient errors until the deadline.
    pub async fn forward(&self, req: Request) -> Response {
        let give_up = tokio::time::Instant::now() + self.deadline;
        let mut last = ApiError::NoControl;
        loop {
            let target = self.view.borrow().control.map(|c| c.addr);
            if let Some(addr) = target {
                match self
                    .peers
                    .request(addr, NodeRequest::Api(req.clone()), self.attempt_timeout)
                    .await
                {
                    Ok(NodeResponse::Api(Response::Error(e))) if e.is_retryable() => last = e,
                    Ok(NodeResponse::Api(resp)) => return resp,
                    Ok(other) => {
                        return Response::Error(ApiError::Internal {
                            reason: format!("unexpected answer from the Control: {other:?}"),
                        });
                    }
                    Err(e) => {
                        tracing::debug!(node = %self.node, error = %e, "control unreachable; retrying");
                        last = ApiError::NoControl;
                    }
                }
            }
            if tokio::time::Instant::now() >= give_up {
                return Response::Error(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
