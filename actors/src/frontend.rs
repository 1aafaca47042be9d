//! The front-end role (thesis §4, GloVE's Supervisor; DESIGN §1, §6).
//!
//! Receives client requests and asks the Control. This actor is where message-API requests
//! enter on a front-end node: it forwards them to the current Control and retries the
//! transient failures (no Control, Control rebuilding) across a failover, within a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smart_api::{ApiError, Request, Response};
use smart_supervision::NodeId;
use tokio::sync::watch;

use crate::proto::{PeerClient, PeerRequest, PeerResponse};

/// Front-end messages.
pub enum FrontEndMsg {
    /// A client request to forward to the Control.
    Forward(Request, RpcReplyPort<Response>),
}

/// Front-end configuration.
#[derive(Clone)]
pub struct FrontEnd {
    /// This node.
    pub node: NodeId,
    /// Transport address of the current Control (`None` while there is none).
    pub control: watch::Receiver<Option<SocketAddr>>,
    /// Outgoing requests.
    pub peers: Arc<dyn PeerClient>,
    /// Total time a request may spend retrying across a failover.
    pub deadline: Duration,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
}

impl FrontEnd {
    /// Forwards with retries on transient errors until the deadline.
    pub async fn forward(&self, req: Request) -> Response {
        let give_up = tokio::time::Instant::now() + self.deadline;
        let mut last = ApiError::NoControl;
        loop {
            let target = *self.control.borrow();
            if let Some(addr) = target {
                match self
                    .peers
                    .request(addr, PeerRequest::Api(req.clone()), self.attempt_timeout)
                    .await
                {
                    Ok(PeerResponse::Api(Response::Error(e))) if e.is_retryable() => last = e,
                    Ok(PeerResponse::Api(resp)) => return resp,
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

impl Actor for FrontEnd {
    type Msg = FrontEndMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _st: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FrontEndMsg::Forward(req, reply) => {
                // Retrying across a failover takes time: never hold the mailbox meanwhile.
                let me = self.clone();
                tokio::spawn(async move {
                    let resp = me.forward(req).await;
                    let _ = reply.send(resp);
                });
            }
        }
        Ok(())
    }
}
