//! How any part of a node reaches the Control with a message-API request, within the
//! deadline its first caller set (the front-end per viewer request, the HTTP API or the TCP
//! port per request): retrying the transient failures (no Control, Control rebuilding,
//! an unreachable or refusing Control node) until that deadline, so that a client waits
//! across a Control failover instead of failing.
//!
//! Every step takes the time left, never a fixed timeout of its own:
//! - on the Control's node, the request goes to the local Control actor through its typed
//!   route (never over a socket to itself), waiting as long as the deadline allows;
//! - elsewhere, to the Control's node as [`NodeRequest::ApiWithin`] carrying the time left,
//!   with the transport's timeout set to the same time left;
//! - a request whose deadline passes answers [`ApiError::TimedOut`], unless an earlier
//!   attempt said something more precise (`NoControl`, `Rebuilding`, ...).
//!
//! Non-idempotent requests are safe to retry here because they carry an idempotency key
//! (`AdmitClient::key`), which the Control answers once.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor::rpc::CallResult;
use smart_membership::view::ClusterView;
use smart_proto::NodeId;
use smart_proto::api::{ApiError, Request, Response};
use smart_proto::node::{NodeRequest, NodeResponse};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ControlMsg;
use crate::peer::{PeerClient, PeerError};

/// Pause between two attempts (a failover takes a few heartbeats).
pub const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Forwards requests to the Control.
#[derive(Clone)]
pub struct Forwarder {
    /// This node.
    pub node: NodeId,
    /// Where the Control is.
    pub view: watch::Receiver<ClusterView>,
    /// Outgoing requests.
    pub peers: Arc<dyn PeerClient>,
    /// This node's Control, while this node is Control (the supervisor's route).
    pub local: watch::Receiver<Option<ActorRef<ControlMsg>>>,
    /// The deadline of a request whose caller set none (`[timing] request_budget`).
    pub budget: Duration,
}

impl Forwarder {
    /// Forwards `req` with the default deadline (now + the budget).
    pub async fn forward(&self, req: Request) -> Response {
        self.forward_by(req, Instant::now() + self.budget).await
    }

    /// Forwards `req`, retrying transient errors, until `deadline`.
    pub async fn forward_by(&self, req: Request, deadline: Instant) -> Response {
        let mut last: Option<ApiError> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Response::Error(last.unwrap_or(ApiError::TimedOut));
            }
            match self.attempt(&req, left).await {
                Attempt::Answer(resp) => return resp,
                Attempt::Retry(e) => last = Some(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(RETRY_EVERY.min(left)).await;
        }
    }

    /// One attempt within `left`.
    async fn attempt(&self, req: &Request, left: Duration) -> Attempt {
        let local = self.local.borrow().clone();
        if let Some(control) = local {
            return match control
                .call(|r| ControlMsg::Api(req.clone(), r), Some(left))
                .await
            {
                Ok(CallResult::Success(resp)) => Attempt::of(resp),
                Ok(CallResult::Timeout) => Attempt::Answer(Response::Error(ApiError::TimedOut)),
                // Stopped meanwhile (deposed, restarting): the view will tell where next.
                Ok(CallResult::SenderError) | Err(_) => Attempt::Retry(ApiError::NoControl),
            };
        }
        let target = self.view.borrow().control;
        let Some(target) = target else {
            return Attempt::Retry(ApiError::NoControl);
        };
        if target.node == self.node {
            // This node is Control and its actor is (re)starting: wait for the route, not a
            // socket to ourselves.
            return Attempt::Retry(ApiError::Rebuilding);
        }
        let within_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        let fwd = NodeRequest::ApiWithin {
            req: req.clone(),
            within_ms,
        };
        match self.peers.request(target.addr, fwd, left).await {
            Ok(NodeResponse::Api(resp)) => Attempt::of(resp),
            Ok(other) => Attempt::Answer(Response::Error(ApiError::Internal {
                reason: format!("unexpected answer from the Control: {other:?}"),
            })),
            Err(PeerError::Timeout(_)) => Attempt::Answer(Response::Error(ApiError::TimedOut)),
            Err(PeerError::Failed { reason, .. }) => {
                Attempt::Answer(Response::Error(ApiError::Internal { reason }))
            }
            // Refused (the node we thought Control is not, or not yet) or unavailable: it
            // is alive and the view will catch up; unreachable: a failover is under way.
            Err(e) => {
                tracing::debug!(node = %self.node, error = %e, "control not reached; retrying");
                Attempt::Retry(ApiError::NoControl)
            }
        }
    }
}

/// What one attempt came to.
enum Attempt {
    /// The answer to give the caller.
    Answer(Response),
    /// A transient failure: try again while the deadline allows.
    Retry(ApiError),
}

impl Attempt {
    fn of(resp: Response) -> Self {
        match resp {
            Response::Error(e) if e.is_retryable() => Attempt::Retry(e),
            resp => Attempt::Answer(resp),
        }
    }
}
