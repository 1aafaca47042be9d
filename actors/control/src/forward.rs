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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use ractor::{Actor, ActorProcessingErr};
    use smart_membership::view::ControlAt;
    use smart_proto::api::Placement;

    use super::*;
    use crate::peer::BoxFuture;

    /// Records every request; answers each with `answer` after `delay`.
    struct Recorder {
        sent: Mutex<Vec<(SocketAddr, NodeRequest, Duration)>>,
        delay: Duration,
        answer: Result<NodeResponse, PeerError>,
    }

    impl PeerClient for Recorder {
        fn request(
            &self,
            to: SocketAddr,
            req: NodeRequest,
            timeout: Duration,
        ) -> BoxFuture<'_, Result<NodeResponse, PeerError>> {
            self.sent.lock().unwrap().push((to, req, timeout));
            Box::pin(async move {
                if self.delay >= timeout {
                    tokio::time::sleep(timeout).await;
                    return Err(PeerError::Timeout(to));
                }
                tokio::time::sleep(self.delay).await;
                self.answer.clone()
            })
        }
    }

    fn recorder(delay: Duration, answer: Result<NodeResponse, PeerError>) -> Arc<Recorder> {
        Arc::new(Recorder {
            sent: Mutex::new(Vec::new()),
            delay,
            answer,
        })
    }

    fn placed() -> Response {
        Response::Placed(Placement {
            service: "v".into(),
            node: NodeId(2),
            endpoint: "http://x/".into(),
            client: Some(1),
        })
    }

    /// A stand-in for the Control actor: answers every API request with `placed()`.
    struct FakeControl;

    impl Actor for FakeControl {
        type Msg = ControlMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _: ActorRef<ControlMsg>,
            _: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _: ActorRef<ControlMsg>,
            msg: ControlMsg,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            if let ControlMsg::Api(_, reply) = msg {
                let _ = reply.send(placed());
            }
            Ok(())
        }
    }

    fn forwarder(
        control: Option<NodeId>,
        local: Option<ActorRef<ControlMsg>>,
        peers: Arc<Recorder>,
    ) -> Forwarder {
        let view = ClusterView {
            control: control.map(|node| ControlAt {
                node,
                epoch: 1,
                addr: format!("127.0.0.1:{}", 7000 + node.0).parse().unwrap(),
            }),
            ..Default::default()
        };
        Forwarder {
            node: NodeId(1),
            view: watch::channel(view).1,
            peers,
            local: watch::channel(local).1,
            budget: Duration::from_secs(10),
        }
    }

    fn admit() -> Request {
        Request::AdmitClient {
            service: "v".into(),
            spec: None,
            key: Some(3),
        }
    }

    #[tokio::test]
    async fn on_the_control_node_the_request_goes_to_the_local_actor_never_a_socket() {
        let (control, handle) = Actor::spawn(None, FakeControl, ()).await.unwrap();
        let peers = recorder(Duration::ZERO, Ok(NodeResponse::Done));
        let f = forwarder(Some(NodeId(1)), Some(control.clone()), peers.clone());
        assert_eq!(f.forward(admit()).await, placed());
        assert!(peers.sent.lock().unwrap().is_empty());
        control.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_local_control_restarts_it_waits_for_the_route_not_a_socket_to_itself() {
        let peers = recorder(Duration::ZERO, Ok(NodeResponse::Done));
        let f = forwarder(Some(NodeId(1)), None, peers.clone());
        let t0 = Instant::now();
        let r = f.forward_by(admit(), t0 + Duration::from_secs(3)).await;
        assert_eq!(r, Response::Error(ApiError::Rebuilding));
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        assert!(peers.sent.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_remote_control_gets_the_time_left_and_one_attempt_not_a_fixed_timeout() {
        // The Control takes 6 s (a start): within the 10 s deadline, one attempt answers.
        let peers = recorder(Duration::from_secs(6), Ok(NodeResponse::Api(placed())));
        let f = forwarder(Some(NodeId(2)), None, peers.clone());
        let t0 = Instant::now();
        assert_eq!(
            f.forward_by(admit(), t0 + Duration::from_secs(10)).await,
            placed()
        );
        let sent = peers.sent.lock().unwrap();
        assert_eq!(sent.len(), 1);
        let (to, req, timeout) = &sent[0];
        assert_eq!(*to, "127.0.0.1:7002".parse::<SocketAddr>().unwrap());
        assert_eq!(*timeout, Duration::from_secs(10));
        assert_eq!(
            *req,
            NodeRequest::ApiWithin {
                req: admit(),
                within_ms: 10_000
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_passes_answers_a_typed_timeout() {
        let peers = recorder(Duration::from_secs(60), Ok(NodeResponse::Api(placed())));
        let f = forwarder(Some(NodeId(2)), None, peers.clone());
        let t0 = Instant::now();
        assert_eq!(
            f.forward_by(admit(), t0 + Duration::from_secs(2)).await,
            Response::Error(ApiError::TimedOut)
        );
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        assert_eq!(peers.sent.lock().unwrap().len(), 1);
        // Already passed: answered at once, nothing sent.
        assert_eq!(
            f.forward_by(admit(), Instant::now()).await,
            Response::Error(ApiError::TimedOut)
        );
        assert_eq!(peers.sent.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_control_node_is_retried_a_failing_one_is_not() {
        let refused = recorder(
            Duration::ZERO,
            Err(PeerError::Refused {
                addr: "127.0.0.1:7002".parse().unwrap(),
                reason: "not the Control".into(),
            }),
        );
        let f = forwarder(Some(NodeId(2)), None, refused.clone());
        let t0 = Instant::now();
        assert_eq!(
            f.forward_by(admit(), t0 + Duration::from_secs(1)).await,
            Response::Error(ApiError::NoControl)
        );
        assert!(
            refused.sent.lock().unwrap().len() >= 5,
            "retried every 100 ms"
        );
        let failed = recorder(
            Duration::ZERO,
            Err(PeerError::Failed {
                addr: "127.0.0.1:7002".parse().unwrap(),
                reason: "boom".into(),
            }),
        );
        let f = forwarder(Some(NodeId(2)), None, failed.clone());
        assert_eq!(
            f.forward(admit()).await,
            Response::Error(ApiError::Internal {
                reason: "boom".into()
            })
        );
        assert_eq!(failed.sent.lock().unwrap().len(), 1);
    }
}
