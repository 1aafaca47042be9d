//! The members' HTTP API addresses, for `members[].http` in every status answer.
//!
//! A member's HTTP address is configuration of that member (`http_listen`), so it is asked
//! for rather than carried: when a member comes up (it appears among the live members of the
//! cluster view), this node sends it a message-API `Version` request over the node transport
//! and keeps the `http` of the answer, keyed by the member's transport address. Every entry
//! is asked again after [`REFRESH`], so a member restarted with another `http_listen` is
//! seen within that time. The heartbeat datagram is left alone: it must stay small (it is
//! sent ten times a second to every member) and its format is the election's.
//!
//! ## Layout
//! - [`MemberDirectory`]: the addresses and the task that learns them ([`MemberDirectory::run`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smart_api::{NodeRequest, NodeResponse, Request, Response};
use smart_control::peer::PeerClient;
use smart_membership::view::ClusterView;
use smart_proto::NodeId;
use tokio::sync::watch;
use tokio::time::Instant;

/// A member's entry is asked again after this long.
pub const REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Entry {
    http: Option<String>,
    asked: Instant,
}

/// What this node knows of its members' HTTP addresses.
#[derive(Default)]
pub struct MemberDirectory {
    known: Mutex<HashMap<SocketAddr, Entry>>,
}

impl MemberDirectory {
    /// The HTTP base URL of the member at transport address `addr`, if known.
    pub fn http_of(&self, addr: SocketAddr) -> Option<String> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .and_then(|e| e.http.clone())
    }

    fn due(&self, addrs: &[SocketAddr], now: Instant) -> Vec<SocketAddr> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        addrs
            .iter()
            .copied()
            .filter(|a| {
                known
                    .get(a)
                    .is_none_or(|e| now.saturating_duration_since(e.asked) >= REFRESH)
            })
            .collect()
    }

    fn learn(&self, addr: SocketAddr, http: Option<String>, asked: Instant) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, Entry { http, asked });
    }

    /// Learns the live members' addresses as they come up, until the view's sender is
    /// dropped (the node stops). Failed requests are asked again at the next change or
    /// within a few seconds.
    pub async fn run(
        self: Arc<Self>,
        node: NodeId,
        mut view: watch::Receiver<ClusterView>,
        peers: Arc<dyn PeerClient>,
        timeout: Duration,
    ) {
        loop {
            let others: Vec<_> = view.borrow_and_update().others.values().copied().collect();
            let now = Instant::now();
            let asks = self.due(&others, now).into_iter().map(|addr| {
                let peers = peers.clone();
                async move {
                    let r = peers
                        .request(addr, NodeRequest::Api(Request::Version), timeout)
                        .await;
                    (addr, r)
                }
            });
            for (addr, r) in futures::future::join_all(asks).await {
                match r {
                    Ok(NodeResponse::Api(Response::Version(v))) => {
                        tracing::debug!(%node, member = %v.node_id, http = ?v.http, "learned a member's HTTP address");
                        self.learn(addr, v.http, now);
                    }
                    // A node of another API version: do not ask it again before REFRESH.
                    Ok(_) => self.learn(addr, None, now),
                    Err(e) => {
                        tracing::debug!(%node, %addr, error = %e, "member did not tell its version")
                    }
                }
            }
            tokio::select! {
                r = view.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
        }
    }
}
