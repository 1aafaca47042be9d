//! The Forwarder (`actors/control/src/forward.rs`) and the operator's requests.
//!
//! A request entering a node is forwarded until its deadline: to the local Control actor
//! when this node has one (a call bounded by the time left), else to the view's Control as
//! `ApiWithin` with the time left; `NoControl`, `Rebuilding` and `NoMajority` are retried
//! every 100 ms; a timeout answers `TimedOut` at once, the deadline passing answers the
//! last retryable error.

use std::time::Duration;

use smart_control::forward::RETRY_EVERY;
use smart_control::peer::PeerError;
use smart_proto::api::{ApiError, Request, Response, ServiceSpec};
use smart_proto::node::{NodeRequest, NodeResponse};

use crate::history::{Acked, ClientReq};
use crate::world::{CtlMsg, Ev, Fwd, Origin, RpcKind, Sim, retryable};

impl Sim {
    /// Starts forwarding `req` from node `n` within `within`.
    pub(crate) fn forward(&mut self, n: usize, req: Request, within: Duration, origin: Origin) {
        let Some(boot) = self.boot(n) else { return };
        let fwd = self.next_fwd;
        self.next_fwd += 1;
        self.fwds.insert(
            fwd,
            Fwd {
                node: n,
                boot,
                req,
                deadline: self.now + within,
                last: None,
                origin,
                attempt: 0,
            },
        );
        self.attempt(fwd);
    }

    fn attempt(&mut self, fwd: u64) {
        let Some(f) = self.fwds.get_mut(&fwd) else {
            return;
        };
        let n = f.node;
        let left = f.deadline.saturating_sub(self.now);
        if left.is_zero() {
            let e = f.last.clone().unwrap_or(ApiError::TimedOut);
            self.forward_done(fwd, Response::Error(e));
            return;
        }
        f.attempt += 1;
        let attempt = f.attempt;
        let req = f.req.clone();
        let Some(p) = self.proc(n) else { return };
        if let Some(c) = &p.control {
            let cid = c.cid;
            self.tell_control(n, cid, CtlMsg::Api { fwd, attempt, req });
            self.push(left, Ev::CallTimeout { fwd, attempt });
            return;
        }
        let Some(target) = p.view.control else {
            self.forward_retry(fwd, attempt, ApiError::NoControl);
            return;
        };
        if target.node == self.nodes[n].id {
            self.forward_retry(fwd, attempt, ApiError::Rebuilding);
            return;
        }
        let Some(j) = self.ix(target.node) else {
            self.forward_retry(fwd, attempt, ApiError::NoControl);
            return;
        };
        let within_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        self.rpc(
            n,
            j,
            NodeRequest::ApiWithin { req, within_ms },
            left,
            RpcKind::Forward { fwd, attempt },
        );
    }

    /// The answer of attempt `attempt` (stale attempts are ignored).
    fn current(&self, fwd: u64, attempt: u64) -> bool {
        self.fwds
            .get(&fwd)
            .is_some_and(|f| f.attempt == attempt && self.boot(f.node) == Some(f.boot))
    }

    /// `Attempt::Retry`: again in 100 ms, or the deadline's answer.
    pub(crate) fn forward_retry(&mut self, fwd: u64, attempt: u64, e: ApiError) {
        if !self.current(fwd, attempt) {
            return;
        }
        let Some(f) = self.fwds.get_mut(&fwd) else {
            return;
        };
        f.last = Some(e);
        let left = f.deadline.saturating_sub(self.now);
        f.attempt += 1;
        let attempt = f.attempt;
        self.push(RETRY_EVERY.min(left), Ev::FwdWake { fwd, attempt });
    }

    pub(crate) fn on_fwd_wake(&mut self, fwd: u64, attempt: u64) {
        if self.current(fwd, attempt) {
            self.attempt(fwd);
        }
    }

    /// The local Control answered attempt `attempt`.
    pub(crate) fn forward_answer(&mut self, fwd: u64, attempt: u64, resp: Response) {
        if !self.current(fwd, attempt) {
            return;
        }
        match retryable(&resp) {
            Some(e) => self.forward_retry(fwd, attempt, e),
            None => self.forward_done(fwd, resp),
        }
    }

    /// The local call's bound passed: `TimedOut` at once.
    pub(crate) fn on_call_timeout(&mut self, fwd: u64, attempt: u64) {
        if self.current(fwd, attempt) {
            self.forward_done(fwd, Response::Error(ApiError::TimedOut));
        }
    }

    /// The Control's node answered an `ApiWithin`.
    pub(crate) fn on_forward_answer(
        &mut self,
        fwd: u64,
        attempt: u64,
        result: Result<NodeResponse, PeerError>,
    ) {
        if !self.current(fwd, attempt) {
            return;
        }
        match result {
            Ok(NodeResponse::Api(resp)) => self.forward_answer(fwd, attempt, resp),
            Ok(other) => self.forward_done(
                fwd,
                Response::Error(ApiError::Internal {
                    reason: format!("unexpected answer from the Control: {other:?}"),
                }),
            ),
            Err(PeerError::Timeout(_)) => {
                self.forward_done(fwd, Response::Error(ApiError::TimedOut))
            }
            Err(PeerError::Failed { reason, .. }) => {
                self.forward_done(fwd, Response::Error(ApiError::Internal { reason }))
            }
            Err(_) => self.forward_retry(fwd, attempt, ApiError::NoControl),
        }
    }

    fn forward_done(&mut self, fwd: u64, resp: Response) {
        let Some(f) = self.fwds.remove(&fwd) else {
            return;
        };
        match f.origin {
            Origin::Client(c) => self.client_answer(c, Some(resp)),
            Origin::Rpc { rpc } => {
                if let Some(caller) = self.rpc_caller(rpc) {
                    self.respond(f.node, caller, rpc, Ok(NodeResponse::Api(resp)));
                }
            }
        }
    }

    fn rpc_caller(&self, rpc: u64) -> Option<usize> {
        self.rpcs.get(&rpc).map(|r| r.caller)
    }

    /// The operator sends `req` to a random running node (none: it is not sent).
    pub(crate) fn client_send(&mut self, req: Request, then_clients: u32) {
        use rand::Rng;
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.proc(*i).is_some())
            .collect();
        if live.is_empty() {
            self.note(format!("no node runs: {req:?} not sent"));
            return;
        }
        let entry = live[self.rng.random_range(0..live.len())];
        let c = self.history.requests.len();
        self.history.requests.push(ClientReq {
            entry,
            req: req.clone(),
            issued: self.now,
            answer: None,
            then_clients,
        });
        self.note(format!("operator -> n{entry}: {}", short(&req)));
        self.forward(entry, req, super::BUDGET, Origin::Client(c));
    }

    /// The operator's request `c` is answered (`None`: its connection broke).
    pub(crate) fn client_answer(&mut self, c: usize, resp: Option<Response>) {
        let now = self.now;
        let era = self.history.era;
        let Some(r) = self.history.requests.get_mut(c) else {
            return;
        };
        if r.answer.is_some() {
            return;
        }
        r.answer = Some((now, resp.clone()));
        let (req, then) = (r.req.clone(), r.then_clients);
        self.note(format!(
            "operator <- {}: {}",
            short(&req),
            match &resp {
                Some(Response::Placed(p)) => format!("placed on n{}", p.node.0.saturating_sub(1)),
                Some(other) => format!("{other:?}"),
                None => "connection broken".into(),
            }
        ));
        let Some(Response::Placed(p)) = resp else {
            return;
        };
        let service = p.service.clone();
        let a = self.history.acked.entry(service.clone()).or_insert(Acked {
            at: now,
            clients: 0,
            era,
        });
        a.era = era;
        if matches!(req, Request::AdmitClient { .. }) {
            a.clients += 1;
        }
        for k in 0..then {
            self.client_send(
                Request::AdmitClient {
                    service: service.clone(),
                    spec: None,
                    key: Some(((c as u64) << 16) | u64::from(k)),
                },
                0,
            );
        }
    }
}

/// A simulated service: a distributor of a 400 kbit/s video.
pub(crate) fn spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        class: "distributor".into(),
        command: vec!["distributor".into(), "{listen}".into()],
        env: vec![],
        per_client_bps: Some(400_000),
        duration_ms: None,
    }
}

fn short(req: &Request) -> String {
    match req {
        Request::AdmitService(s) => format!("admit service {}", s.name),
        Request::AdmitClient { service, key, .. } => {
            format!("admit a client of {service} (key {key:?})")
        }
        other => format!("{other:?}"),
    }
}
