//! Where a message-API request is answered, in one place for the node's two API surfaces
//! (the TCP port and the HTTP API), so both route alike:
//!
//! | request | answered by |
//! |---|---|
//! | `Status` | this node's membership, with the transport and Agent86 counters and every member's HTTP address |
//! | `Version` | this node |
//! | `Subscribe` | the surface itself (a transport connection, or an HTTP event stream) |
//! | anything else (`Nodes` included) | the Control, through [`Forwarder`]: the local Control actor through its route when this node is Control (never a socket to itself), else the Control's node over TCP, with retries across a failover |
//!
//! Every request has a deadline: the caller's ([`Dispatcher::request_by`]: the time a
//! forwarding node said it still waits), else now + `[timing] request_budget`. The
//! forwarding uses what is left of it; past it the answer is `Error(TimedOut)`.
//!
//! ## Layout
//! - [`Dispatcher`]: the routing.

use std::sync::Arc;
use std::time::Duration;

use ractor::call_t;
use smart_agent86::Agent86Msg;
use smart_api::{API_VERSION, ApiError, ClusterStatus, Request, Response, VersionInfo};
use tokio::time::Instant;

use crate::directory::MemberDirectory;
use crate::routes::RouteReaders;
use smart_config::NodeConfig;
use smart_control::forward::Forwarder;
use smart_membership::messages::MembershipMsg;

/// Routes message-API requests (see the module docs).
#[derive(Clone)]
pub struct Dispatcher {
    /// The node's configuration.
    pub cfg: Arc<NodeConfig>,
    /// The node's actors.
    pub routes: RouteReaders,
    /// Forwarding to the Control.
    pub forwarder: Forwarder,
    /// The transport's counters.
    pub transport: Arc<smart_transport::Counters>,
    /// The members' HTTP addresses.
    pub directory: Arc<MemberDirectory>,
    /// The desired-state log (its Raft status goes into status answers).
    pub desired: smart_desired::DesiredStore,
}

impl Dispatcher {
    fn timeout(&self) -> Duration {
        self.cfg.timing.request_timeout
    }

    fn timeout_ms(&self) -> u64 {
        self.timeout().as_millis() as u64
    }

    /// This node's versions.
    pub fn version(&self) -> VersionInfo {
        VersionInfo {
            node_id: self.cfg.id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: API_VERSION,
            wire_version: smart_transport::frame::PROTOCOL_VERSION,
            heartbeat_version: smart_proto::heartbeat::VERSION,
            http: self.cfg.http_url(),
        }
    }

    /// Answers `req` (anything but `Subscribe`) within the request budget.
    pub async fn request(&self, req: Request) -> Response {
        self.request_by(req, Instant::now() + self.cfg.timing.budget())
            .await
    }

    /// Answers `req` (anything but `Subscribe`) by `deadline`.
    pub async fn request_by(&self, req: Request, deadline: Instant) -> Response {
        match req {
            Request::Status => match self.status().await {
                Ok(s) => Response::Status(s),
                Err(e) => Response::Error(e),
            },
            Request::Version => Response::Version(self.version()),
            Request::Subscribe => Response::Error(ApiError::BadRequest {
                reason: "subscribe on a transport connection or GET /v1/events".into(),
            }),
            other => self.forwarder.forward_by(other, deadline).await,
        }
    }

    /// Members and Control as this node sees them, with counters and HTTP addresses.
    pub async fn status(&self) -> Result<ClusterStatus, ApiError> {
        let m = self.routes.membership().ok_or_else(|| ApiError::Internal {
            reason: "membership is restarting".into(),
        })?;
        let mut s = call_t!(m, MembershipMsg::Status, self.timeout_ms()).map_err(|e| {
            ApiError::Internal {
                reason: format!("membership: {e}"),
            }
        })?;
        self.extend_counters(&mut s.counters).await;
        for m in &mut s.members {
            m.http = if m.node_id == self.cfg.id() {
                self.cfg.http_url()
            } else {
                m.address
                    .parse()
                    .ok()
                    .and_then(|a| self.directory.http_of(a))
            };
        }
        Ok(s)
    }

    /// Adds the transport's counters, the desired-state log's Raft status and Agent86's
    /// fencing figures to a status answer.
    async fn extend_counters(&self, counters: &mut Vec<(String, u64)>) {
        let d = self.desired.status();
        counters.extend([
            ("desired_term".to_string(), d.term),
            ("desired_leader".to_string(), d.leader.map_or(0, |l| l.0)),
            (
                "desired_leads_with_quorum".to_string(),
                u64::from(self.desired.leads_with_quorum()),
            ),
            (
                "desired_last_log_index".to_string(),
                d.last_log_index.unwrap_or(0),
            ),
            (
                "desired_last_applied".to_string(),
                d.last_applied.unwrap_or(0),
            ),
            ("desired_rpc_impostor".to_string(), d.impostor_rpcs),
        ]);
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(self.transport.snapshot())
        {
            for (k, v) in map {
                counters.push((format!("transport_{k}"), v.as_u64().unwrap_or(0)));
            }
        }
        if let Some(a) = self.routes.agent86()
            && let Ok(r) = call_t!(a, Agent86Msg::Report, self.timeout_ms())
        {
            // Executed epochs must never go down: this counts violations, from the
            // agent's own record of what it executed.
            let regressions = r
                .recent_commands
                .windows(2)
                .filter(|w| w[1].0 < w[0].0)
                .count() as u64;
            counters.push(("agent_refused_stale".into(), r.refused_stale));
            counters.push(("agent_epoch_regressions".into(), regressions));
            counters.push((
                "agent_recent_commands".into(),
                r.recent_commands.len() as u64,
            ));
        }
        counters.sort();
    }
}
