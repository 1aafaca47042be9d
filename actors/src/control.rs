//! Control: runs only on the elected node (thesis §4, DESIGN §1–§2).
//!
//! Lifecycle, driven by the node's election engine:
//! 1. spawned at a new epoch when this node wins an election;
//! 2. **rebuilds** its soft state from every live Agent86's report before it acts
//!    (DESIGN §2.5), then emits [`ControlEvent::Rebuilt`] so the election engine lets it act;
//! 3. refreshes the registry every `refresh` interval. Every request carries its epoch; an
//!    agent that has seen a higher one refuses it, and the Control then emits
//!    [`ControlEvent::Stale`] and stops: a deposed ("zombie") Control cannot act, even before
//!    it hears the new Control's heartbeat;
//! 4. stopped by the node when the election engine says to step down.
//!
//! Requests to agents run in spawned tasks whose results come back as messages, so the
//! mailbox (API requests, status) is never blocked on the network.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smart_api::{ApiError, Request, Response};
use smart_supervision::{Epoch, NodeId};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::proto::{AgentCommand, AgentReport, PeerClient, PeerError, PeerRequest, PeerResponse};

/// A live agent the Control can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentAddr {
    /// Its node id.
    pub node: NodeId,
    /// Its transport address.
    pub addr: SocketAddr,
}

/// What the Control tells the node runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// State rebuilt from `agents` reports: the Control may act at `epoch`.
    Rebuilt {
        /// The epoch.
        epoch: Epoch,
        /// Agents that answered.
        agents: usize,
    },
    /// An agent refused a command: a newer Control exists at `highest`.
    Stale {
        /// Our epoch.
        epoch: Epoch,
        /// The epoch the agent has seen.
        highest: Epoch,
    },
}

/// Callback through which the Control reports [`ControlEvent`]s.
pub type ControlEvents = Arc<dyn Fn(ControlEvent) + Send + Sync>;

/// Control's messages.
pub enum ControlMsg {
    /// Time to refresh the registry from the agents.
    Refresh,
    /// Results of a refresh round.
    Reports(Vec<(AgentAddr, Result<PeerResponse, PeerError>)>),
    /// A message-API request.
    Api(Request, RpcReplyPort<Response>),
    /// The Control's own view.
    Status(RpcReplyPort<ControlStatus>),
    /// The election engine re-asserted this Control at a higher epoch: use it from now on.
    SetEpoch(Epoch),
    /// Whether the Control may act (rebuilt and, in majority mode, holding a majority of
    /// leases), as decided by the election engine.
    SetActing {
        /// The epoch the decision is about.
        epoch: Epoch,
        /// May act.
        acting: bool,
    },
}

/// The Control's view, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlStatus {
    /// Its epoch.
    pub epoch: Epoch,
    /// Rebuilt from agent reports.
    pub rebuilt: bool,
    /// Allowed to act by the election engine.
    pub acting: bool,
    /// Last report of each agent.
    pub agents: BTreeMap<u64, AgentReport>,
}

/// Control's fixed configuration.
pub struct Control {
    /// This node.
    pub node: NodeId,
    /// The epoch this Control was elected at (it may be re-asserted higher later).
    pub epoch: Epoch,
    /// Outgoing requests.
    pub peers: Arc<dyn PeerClient>,
    /// The live agents, kept current by the node's membership.
    pub agents: watch::Receiver<Vec<AgentAddr>>,
    /// Where events go.
    pub events: ControlEvents,
    /// Registry refresh period.
    pub refresh: Duration,
    /// Timeout of each request to an agent.
    pub request_timeout: Duration,
}

/// Control's mutable state.
pub struct ControlState {
    epoch: Epoch,
    rebuilt: bool,
    acting: bool,
    registry: BTreeMap<u64, AgentReport>,
    stale: bool,
}

impl Control {
    fn round(&self, epoch: Epoch) -> JoinSet<(AgentAddr, Result<PeerResponse, PeerError>)> {
        let mut set = JoinSet::new();
        for agent in self.agents.borrow().iter().copied() {
            let peers = self.peers.clone();
            let req = PeerRequest::Agent {
                from: self.node,
                epoch,
                cmd: AgentCommand::Report,
            };
            let timeout = self.request_timeout;
            set.spawn(async move {
                let r = peers.request(agent.addr, req, timeout).await;
                (agent, r)
            });
        }
        set
    }

    /// Applies one round of answers. Returns false when the Control learned it is stale.
    fn apply(
        &self,
        st: &mut ControlState,
        results: Vec<(AgentAddr, Result<PeerResponse, PeerError>)>,
    ) -> bool {
        for (agent, r) in results {
            match r {
                Ok(PeerResponse::Report(rep)) => {
                    st.registry.insert(agent.node.0, rep);
                }
                Ok(PeerResponse::Refused { highest, .. }) => {
                    warn!(node = %self.node, epoch = st.epoch, highest, agent = %agent.node,
                        "agent refused our epoch: stepping down");
                    st.stale = true;
                    (self.events)(ControlEvent::Stale {
                        epoch: st.epoch,
                        highest,
                    });
                    return false;
                }
                Ok(other) => {
                    warn!(node = %self.node, agent = %agent.node, ?other, "unexpected agent answer")
                }
                Err(e) => {
                    // Dead or partitioned agents are the failure detector's business.
                    tracing::debug!(node = %self.node, agent = %agent.node, error = %e, "agent did not answer");
                }
            }
        }
        true
    }
}

impl Actor for Control {
    type Msg = ControlMsg;
    type State = ControlState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ControlState {
            epoch: self.epoch,
            rebuilt: false,
            acting: false,
            registry: BTreeMap::new(),
            stale: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Rebuild before acting: ask every live agent once, waiting for all answers (each
        // bounded by the request timeout).
        let results = self.round(st.epoch).join_all().await;
        if !self.apply(st, results) {
            myself.stop(Some("stale".into()));
            return Ok(());
        }
        st.rebuilt = true;
        info!(node = %self.node, epoch = st.epoch, agents = st.registry.len(), "control rebuilt its state");
        (self.events)(ControlEvent::Rebuilt {
            epoch: st.epoch,
            agents: st.registry.len(),
        });
        myself.send_interval(self.refresh, || ControlMsg::Refresh);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ControlMsg::Refresh => {
                if st.stale || !st.acting {
                    return Ok(());
                }
                let set = self.round(st.epoch);
                let me = myself.clone();
                tokio::spawn(async move {
                    let results = set.join_all().await;
                    let _ = me.send_message(ControlMsg::Reports(results));
                });
            }
            ControlMsg::Reports(results) => {
                if !st.stale && !self.apply(st, results) {
                    myself.stop(Some("stale".into()));
                }
            }
            ControlMsg::Api(req, reply) => {
                let resp = if !st.rebuilt {
                    Response::Error(ApiError::Rebuilding)
                } else if !st.acting {
                    Response::Error(ApiError::NoMajority)
                } else {
                    match req {
                        Request::Status => Response::Error(ApiError::BadRequest {
                            reason: "status is answered by every node, not the Control".into(),
                        }),
                        _ => Response::Error(ApiError::Internal {
                            reason: "service admission is not available in this build yet".into(),
                        }),
                    }
                };
                let _ = reply.send(resp);
            }
            ControlMsg::SetEpoch(epoch) => st.epoch = st.epoch.max(epoch),
            ControlMsg::SetActing { epoch, acting } => {
                if epoch == st.epoch {
                    st.acting = acting;
                }
            }
            ControlMsg::Status(reply) => {
                let _ = reply.send(ControlStatus {
                    epoch: st.epoch,
                    rebuilt: st.rebuilt,
                    acting: st.acting,
                    agents: st.registry.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent86::{Agent86, Agent86Msg};
    use crate::epoch::{EpochStore, MemoryEpochStore};
    use crate::proto::BoxFuture;
    use ractor::call_t;
    use std::sync::Mutex;

    /// Routes requests straight to in-process Agent86 actors by address.
    struct Direct(BTreeMap<SocketAddr, ActorRef<Agent86Msg>>);

    impl PeerClient for Direct {
        fn request(
            &self,
            to: SocketAddr,
            req: PeerRequest,
            timeout: Duration,
        ) -> BoxFuture<'_, Result<PeerResponse, PeerError>> {
            Box::pin(async move {
                let Some(a) = self.0.get(&to) else {
                    return Err(PeerError::Unreachable {
                        addr: to,
                        reason: "no such agent".into(),
                    });
                };
                let PeerRequest::Agent { from, epoch, cmd } = req else {
                    unreachable!("control only sends agent commands")
                };
                a.call(
                    |reply| Agent86Msg::Command {
                        from,
                        epoch,
                        cmd,
                        reply,
                    },
                    Some(timeout),
                )
                .await
                .map_err(|_| PeerError::Timeout(to))?
                .success_or(PeerError::Timeout(to))
            })
        }
    }

    async fn agent(node: u64, store: MemoryEpochStore) -> ActorRef<Agent86Msg> {
        Actor::spawn(
            None,
            Agent86 {
                node: NodeId(node),
                epochs: Arc::new(store),
                panic_on_message: None,
            },
            (),
        )
        .await
        .unwrap()
        .0
    }

    #[tokio::test]
    async fn rebuilds_from_reports_then_a_deposed_control_steps_down() {
        let stores = [MemoryEpochStore::new(0), MemoryEpochStore::new(0)];
        let mut routes = BTreeMap::new();
        let mut addrs = Vec::new();
        for (i, s) in stores.iter().enumerate() {
            let addr: SocketAddr = format!("127.0.0.{}:1", i + 1).parse().unwrap();
            routes.insert(addr, agent(i as u64 + 1, s.clone()).await);
            addrs.push(AgentAddr {
                node: NodeId(i as u64 + 1),
                addr,
            });
        }
        let peers: Arc<dyn PeerClient> = Arc::new(Direct(routes));
        let (_tx, rx) = watch::channel(addrs);
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let (c, handle) = Actor::spawn(
            None,
            Control {
                node: NodeId(1),
                epoch: 3,
                peers,
                agents: rx,
                events: Arc::new(move |e| ev.lock().unwrap().push(e)),
                refresh: Duration::from_millis(20),
                request_timeout: Duration::from_millis(500),
            },
            (),
        )
        .await
        .unwrap();
        let s = call_t!(c, ControlMsg::Status, 1000).unwrap();
        assert!(
            s.rebuilt && !s.acting,
            "rebuilt, but not acting until the engine says so"
        );
        c.send_message(ControlMsg::SetActing {
            epoch: 3,
            acting: true,
        })
        .unwrap();
        assert_eq!(s.agents.len(), 2);
        assert_eq!(
            events.lock().unwrap()[0],
            ControlEvent::Rebuilt {
                epoch: 3,
                agents: 2
            }
        );
        // A newer Control appears on agent 2's node: our next refresh is refused there.
        stores[1].raise(4).unwrap();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("stale control stops")
            .unwrap();
        assert!(events.lock().unwrap().contains(&ControlEvent::Stale {
            epoch: 3,
            highest: 4
        }));
    }
}
