//! The node supervision tree (DESIGN §1) and its restart policy.
//!
//! ```text
//! NodeSupervisor            one-for-one, at most R restarts in W (config [supervision])
//! ├── Membership            heartbeats, failure detector, election (restart: new incarnation)
//! ├── Agent86               node agent, fenced commands
//! ├── PeerServer            TCP listener: node-to-node requests and the message API
//! ├── Agent99               only with the profiler role
//! ├── FrontEnd              only with the front-end role
//! ├── HttpFrontEnd          only with the front-end role: GET /watch/{video} -> 302
//! └── Control               only while this node is the elected Control (started and
//!                           stopped on membership's word; restarted at the same epoch)
//! ```
//!
//! ractor has no restart strategies: this actor is ours. When a child fails (panic or error)
//! or stops on its own, the supervisor asks `smart_supervision::restart::RestartTracker`:
//! within the intensity it restarts only that child; past it, it **escalates**: it stops the
//! tree and reports [`Exit::Escalated`], and `smart node` exits non-zero so that the service
//! manager (systemd, the demo, a test) restarts the whole process. A *fatal* failure to
//! persist an epoch (`EpochWriteError::Fatal`: EIO, EROFS, EACCES, ...) escalates at once
//! (the node must not act on epochs it cannot remember); a retryable one (EMFILE, ENOSPC,
//! ...) never reaches the supervisor: membership steps down and retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use smart_actors::agent86::{Agent86, AgentCore};
use smart_actors::agent99::Agent99;
use smart_actors::control::{Control, ControlEvent, ControlMsg, ControlTuning};
use smart_actors::proto::{PeerClient, PeerRequest};
use smart_supervision::Role;
use smart_supervision::restart::{Decision, RestartPolicy, RestartTracker};
use smart_supervision::transport::Endpoint;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::http_frontend::HttpFrontEnd;
use super::membership::{Membership, MembershipMsg};
use super::server::PeerServer;
use super::shared::Shared;
use crate::persist::EpochWriteError;

/// How the tree ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Still running.
    Running,
    /// Asked to stop.
    Shutdown,
    /// Restart intensity exceeded, or a fatal error: the process must exit non-zero.
    Escalated(String),
}

/// The supervisor's messages.
pub enum NodeMsg {
    /// Membership: this node became Control at `epoch`.
    StartControl {
        /// The epoch.
        epoch: u64,
    },
    /// Membership: the Control re-asserted at a higher epoch.
    ControlEpoch {
        /// The epoch.
        epoch: u64,
    },
    /// Membership: whether the Control may act.
    ControlActing {
        /// The epoch.
        epoch: u64,
        /// May act.
        acting: bool,
    },
    /// Membership: step down.
    StopControl,
    /// Stop the whole tree.
    Shutdown,
}

/// Which child an actor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Child {
    Membership,
    Agent86,
    PeerServer,
    Agent99,
    FrontEnd,
    HttpFrontEnd,
    Control,
}

/// The supervisor.
pub struct NodeSupervisor {
    /// Shared node state.
    pub shared: Arc<Shared>,
    /// Outgoing requests, for the actors that need them.
    pub peers: Arc<dyn PeerClient>,
    /// The transport endpoint (identity, key, counters) of the node's TCP port.
    pub endpoint: Endpoint,
    /// Where the outcome is published.
    pub exit: watch::Sender<Exit>,
    /// Fault injection for the supervision tests (from `SMART_FAULT`): the number of
    /// messages on which Agent86 panics, summed over its restarts.
    pub agent86_panics: Option<Arc<std::sync::atomic::AtomicU32>>,
    /// Agent86's engine, runtime and instances: outlive restarts of the actor.
    pub agent_core: Arc<AgentCore>,
}

/// The supervisor's state.
pub struct SupervisorState {
    children: HashMap<ActorId, Child>,
    /// Children we stopped on purpose: their termination is not a failure.
    stopping: Vec<ActorId>,
    tracker: RestartTracker,
    control: Option<(ActorCell, u64)>,
}

/// Spawns `actor` under the supervisor, registered as `name`.
async fn link<A: Actor<Arguments = ()>>(
    myself: &ActorRef<NodeMsg>,
    name: String,
    actor: A,
) -> Result<ActorCell, ActorProcessingErr> {
    Ok(
        Actor::spawn_linked(Some(name), actor, (), myself.get_cell())
            .await?
            .0
            .get_cell(),
    )
}

impl NodeSupervisor {
    async fn spawn_child(
        &self,
        myself: &ActorRef<NodeMsg>,
        st: &mut SupervisorState,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let shared = self.shared.clone();
        let cell: ActorCell = match child {
            Child::Membership => {
                link(
                    myself,
                    shared.name("membership"),
                    Membership {
                        shared: shared.clone(),
                        supervisor: myself.clone(),
                    },
                )
                .await?
            }
            Child::Agent86 => {
                link(
                    myself,
                    shared.name("agent86"),
                    Agent86 {
                        node: shared.id(),
                        epochs: shared.epochs.clone(),
                        core: self.agent_core.clone(),
                        panic_on_message: self.agent86_panics.clone(),
                    },
                )
                .await?
            }
            Child::PeerServer => {
                link(
                    myself,
                    shared.name("server"),
                    PeerServer {
                        shared: shared.clone(),
                        peers: self.peers.clone(),
                        endpoint: self.endpoint.clone(),
                    },
                )
                .await?
            }
            Child::Agent99 => {
                link(
                    myself,
                    shared.name("agent99"),
                    Agent99 { node: shared.id() },
                )
                .await?
            }
            Child::FrontEnd => {
                link(
                    myself,
                    shared.name("frontend"),
                    shared.forwarder(self.peers.clone()),
                )
                .await?
            }
            Child::HttpFrontEnd => {
                link(
                    myself,
                    shared.name("frontend-http"),
                    HttpFrontEnd {
                        shared: shared.clone(),
                        forwarder: shared.forwarder(self.peers.clone()),
                    },
                )
                .await?
            }
            Child::Control => {
                let Some((_, epoch)) = st.control.as_ref().map(|(c, e)| (c.clone(), *e)) else {
                    return Ok(());
                };
                return self.spawn_control(myself, st, epoch).await;
            }
        };
        st.children.insert(cell.get_id(), child);
        Ok(())
    }

    async fn spawn_control(
        &self,
        myself: &ActorRef<NodeMsg>,
        st: &mut SupervisorState,
        epoch: u64,
    ) -> Result<(), ActorProcessingErr> {
        let shared = self.shared.clone();
        let events_shared = shared.clone();
        let events = Arc::new(move |ev: ControlEvent| {
            let Some(m) = ractor::registry::where_is(events_shared.name("membership")) else {
                return;
            };
            let m: ActorRef<MembershipMsg> = m.into();
            let _ = match ev {
                ControlEvent::Rebuilt { epoch, .. } => {
                    m.send_message(MembershipMsg::RebuildDone(epoch))
                }
                ControlEvent::Stale { highest, .. } => {
                    m.send_message(MembershipMsg::ControlStale(highest))
                }
            };
        });
        let replica = shared
            .replica
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (actor, _) = Actor::spawn_linked(
            Some(shared.name("control")),
            Control {
                node: shared.id(),
                epoch,
                peers: self.peers.clone(),
                agents: shared.agents.subscribe(),
                events,
                publish: {
                    // Local subscribers, and every other live node's (fire and forget).
                    let sh = shared.clone();
                    let peers = self.peers.clone();
                    Arc::new(move |ev: smart_api::Event| {
                        sh.publish(ev.clone());
                        let to: Vec<_> = sh.others.borrow().clone();
                        let peers = peers.clone();
                        let t = sh.cfg.timing.request_timeout;
                        tokio::spawn(async move {
                            for addr in to {
                                let _ =
                                    peers.request(addr, PeerRequest::Event(ev.clone()), t).await;
                            }
                        });
                    })
                },
                refresh: Duration::from_secs(1),
                replica,
                request_timeout: shared.cfg.timing.request_timeout,
                tuning: ControlTuning {
                    anomaly_move_every: shared.cfg.timing.anomaly_move_every,
                    release_grace: shared.cfg.timing.client_release_grace,
                    ..Default::default()
                },
            },
            (),
            myself.get_cell(),
        )
        .await?;
        let cell = actor.get_cell();
        st.children.insert(cell.get_id(), Child::Control);
        st.control = Some((cell, epoch));
        Ok(())
    }

    fn stop_control(&self, st: &mut SupervisorState) {
        if let Some((cell, epoch)) = st.control.take() {
            info!(node = %self.shared.id(), epoch, "stopping control");
            st.stopping.push(cell.get_id());
            cell.stop(Some("step down".into()));
        }
    }

    fn escalate(&self, myself: &ActorRef<NodeMsg>, reason: String) {
        error!(node = %self.shared.id(), %reason, "escalating: stopping the node");
        let _ = self.exit.send(Exit::Escalated(reason));
        myself.stop(Some("escalated".into()));
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let cfg = &self.shared.cfg;
        let mut st = SupervisorState {
            children: HashMap::new(),
            stopping: Vec::new(),
            tracker: RestartTracker::new(RestartPolicy {
                max_restarts: cfg.supervision.max_restarts,
                within: cfg.supervision.within,
            }),
            control: None,
        };
        // The listener first, so that peers hearing our first heartbeat can reach us.
        let mut order = vec![Child::PeerServer, Child::Agent86];
        if cfg.has_role(Role::Profiler) {
            order.push(Child::Agent99);
        }
        if cfg.has_role(Role::FrontEnd) {
            order.push(Child::FrontEnd);
            order.push(Child::HttpFrontEnd);
        }
        order.push(Child::Membership);
        for child in order {
            self.spawn_child(&myself, &mut st, child).await?;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::StartControl { epoch } => {
                self.stop_control(st);
                self.spawn_control(&myself, st, epoch).await?;
            }
            NodeMsg::ControlEpoch { epoch } => {
                if let Some((cell, e)) = st.control.as_mut() {
                    *e = epoch;
                    let c: ActorRef<ControlMsg> = cell.clone().into();
                    let _ = c.send_message(ControlMsg::SetEpoch(epoch));
                }
            }
            NodeMsg::ControlActing { epoch, acting } => {
                if let Some((cell, _)) = st.control.as_ref() {
                    let c: ActorRef<ControlMsg> = cell.clone().into();
                    let _ = c.send_message(ControlMsg::SetActing { epoch, acting });
                }
            }
            NodeMsg::StopControl => self.stop_control(st),
            NodeMsg::Shutdown => {
                let _ = self.exit.send(Exit::Shutdown);
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mut fatal_persist = false;
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                // Typed: a fatal epoch-write error stops the node at once.
                fatal_persist = matches!(
                    err.downcast_ref::<EpochWriteError>(),
                    Some(EpochWriteError::Fatal { .. })
                );
                (cell, format!("failed: {err}"))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let Some(child) = st.children.remove(&id) else {
            return Ok(());
        };
        if let Some(pos) = st.stopping.iter().position(|s| *s == id) {
            st.stopping.swap_remove(pos);
            return Ok(());
        }
        if child == Child::Control && why.contains("stale") {
            // Deposed: not a failure. Membership hears the newer Control and moves on.
            st.control = None;
            return Ok(());
        }
        // Agent86 (smart-actors) still reports its epoch-write failures as text.
        if fatal_persist || (child == Child::Agent86 && why.contains("cannot persist epoch")) {
            self.escalate(&myself, format!("{child:?} {why}"));
            return Ok(());
        }
        self.shared.counters.incr("restarts");
        match st.tracker.on_failure(Instant::now()) {
            Decision::Restart { restarts_in_window } => {
                warn!(node = %self.shared.id(), ?child, %why, restarts_in_window, "restarting child");
                if let Err(e) = self.spawn_child(&myself, st, child).await {
                    self.escalate(&myself, format!("cannot restart {child:?}: {e}"));
                }
            }
            Decision::Escalate {
                restarts_in_window,
                within,
            } => {
                self.escalate(
                    &myself,
                    format!(
                        "{child:?} {why}; {restarts_in_window} restarts within {within:?} already"
                    ),
                );
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        _st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.exit.send_if_modified(|e| {
            if *e == Exit::Running {
                *e = Exit::Shutdown;
                true
            } else {
                false
            }
        });
        Ok(())
    }
}
