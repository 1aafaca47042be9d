//! Where a message-API request is answered, in one place for the node's two API surfaces
//! (the TCP port and the HTTP API), so both route alike:
//!
//! | request | answered by |
//! |---|---|
//! | `Status` | this node's membership, with the transport and Agent86 counters and every member's HTTP address |
//! | `Version` | this node |
//! | `Nodes` | the Control's node, from the Control's own view (forwarded there from other nodes) |
//! | `Subscribe` | the surface itself (a transport connection, or an HTTP event stream) |
//! | anything else | the local Control when this node is Control, else forwarded to the Control with retries across a failover |
//!
//! ## Layout
//! - [`Dispatcher`]: the routing; [`node_reports`]: a `Nodes` answer from a Control's view.

use std::sync::Arc;
use std::time::Duration;

use ractor::call_t;
use smart_agent86::Agent86Msg;
use smart_api::{
    API_VERSION, ApiError, ClusterStatus, InstanceUse, NodeReport, Request, Response, VersionInfo,
};
use smart_control::{ControlMsg, ControlStatus, spec_of};

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
}

/// The fraction of capacity admission may fill (VR): the Control's node specs use the
/// admission engine's default.
pub fn admission_vr() -> f64 {
    smart_admission::NodeSpec::new(1, 1.0, 1.0).vr
}

/// A `Nodes` answer from a Control's view: every agent it has a report from.
pub fn node_reports(s: &ControlStatus) -> Vec<NodeReport> {
    let vr = admission_vr();
    s.agents
        .iter()
        .map(|(node, r)| NodeReport {
            node_id: *node,
            drained: s.drained.contains(node),
            usage: r.usage,
            reserved: r.reserved_total,
            vr,
            instances: r
                .instances
                .iter()
                .map(|i| InstanceUse {
                    instance: i.instance.clone(),
                    service: spec_of(&i.launch).map(|s| s.name),
                    reserved: i.reservation,
                    cpu_cores: i.usage.as_ref().map(|u| u.cpu_cores),
                    net_bps: i.usage.as_ref().and_then(|u| u.net_bps),
                    mem_bytes: i.usage.as_ref().map(|u| u.mem_bytes),
                    clients: i.usage.as_ref().and_then(|u| u.clients),
                })
                .collect(),
        })
        .collect()
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

    /// Answers `req` (anything but `Subscribe`).
    pub async fn request(&self, req: Request) -> Response {
        match req {
            Request::Status => match self.status().await {
                Ok(s) => Response::Status(s),
                Err(e) => Response::Error(e),
            },
            Request::Version => Response::Version(self.version()),
            Request::Subscribe => Response::Error(ApiError::BadRequest {
                reason: "subscribe on a transport connection or GET /v1/events".into(),
            }),
            Request::Nodes => {
                if let Some(c) = self.routes.control()
                    && let Ok(s) = call_t!(c, ControlMsg::Status, self.timeout_ms())
                {
                    return if s.rebuilt {
                        Response::Nodes(node_reports(&s))
                    } else {
                        Response::Error(ApiError::Rebuilding)
                    };
                }
                self.forwarder.forward(Request::Nodes).await
            }
            other => {
                if let Some(c) = self.routes.control() {
                    match call_t!(c, ControlMsg::Api, self.timeout_ms(), other.clone()) {
                        Ok(r) => return r,
                        Err(_) => {
                            // Stepping down meanwhile: fall through to forwarding.
                        }
                    }
                }
                self.forwarder.forward(other).await
            }
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

    /// Adds the transport's counters and Agent86's fencing figures to a status answer.
    async fn extend_counters(&self, counters: &mut Vec<(String, u64)>) {
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
