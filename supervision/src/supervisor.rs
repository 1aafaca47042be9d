//! The node supervision tree (docs/ARCHITECTURE.md) and its restart policy.
//!
//! ```text
//! NodeSupervisor            one-for-one, at most R restarts in W (config [supervision])
//! ├── PeerServer            TCP listener: node-to-node requests and the message API
//! ├── Agent86               node agent, fenced commands
//! ├── HttpFrontEnd          only with the front-end role: /watch (302 or relay), HLS, /play
//! ├── ApiHttp               with `http_listen`: the /v1 JSON API, /metrics, /ui
//! ├── Membership            heartbeats, failure detector, election (restart: new incarnation)
//! └── Control               only while this node is the elected Control (started and
//!                           stopped on membership's word)
//! ```
//!
//! ractor has no restart strategies: this actor is ours. When a child fails (panic or error)
//! or stops on its own, the supervisor asks `smart_supervision::restart::RestartTracker`:
//! within the intensity it restarts only that child; past it, it **escalates**: it stops the
//! tree and reports [`Exit::Escalated`], and `smart node` exits non-zero so that the service
//! manager (systemd, the demo, a test) restarts the whole process. A child failing with a
//! [`Fatal`] error (an epoch that could not be persisted) escalates at once: the node must
//! not act on epochs it cannot remember. A fatal failure to
//! persist an epoch (EIO, EROFS, EACCES, ...) escalates at once; a retryable one (EMFILE,
//! ENOSPC, ...) never reaches the supervisor: membership steps down and retries. Errors are
//! told apart by type, never by text.
//!
//! The Control is special: a Control that stops with [`Deposed`] ended normally (a newer
//! Control exists; membership steps down when it hears it). A Control that *fails* is
//! restarted at a **new epoch**: the supervisor asks membership to re-assert, and spawns
//! the new actor when membership reports the new epoch, so agents refuse whatever the
//! failed incarnation still had in flight.
//!
//! The supervisor owns the [`Routes`]: every (re)spawn publishes the child's new handle,
//! and whoever needs an actor reads it there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::restart::{Decision, RestartPolicy, RestartTracker};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use smart_agent86::{Agent86, AgentCore};
use smart_api::NodeRequest;
use smart_control::peer::PeerClient;
use smart_control::{Control, ControlEvent, ControlMsg, ControlTuning, Deposed};
use smart_membership::epoch::Fatal;
use smart_membership::view::{ActingLease, ClusterView};
use smart_proto::{ClusterKey, Epoch, Role};
use smart_transport::Endpoint;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, error, info, info_span, warn};

use crate::api_http::{ApiHttp, ApiHttpContext};
use crate::directory::MemberDirectory;
use crate::dispatch::Dispatcher;
use crate::metrics::{self, NodeMetrics};
use crate::replica::ReplicaStore;
use crate::routes::Routes;
use crate::server::{PeerServer, PortContext};
use crate::tokens::TokenStore;
use smart_config::{ElectionMode, NodeConfig};
use smart_control::forward::Forwarder;
use smart_frontend::HttpFrontEnd;
use smart_membership::actor::{Membership, RaftLink};
use smart_membership::durable::DurableState;
use smart_membership::messages::{MembershipMsg, NodeMsg};
use smart_node::counters::Counters;
use smart_node::events::Subscribers;

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

/// How long a leaving Raft leader stays up for its successor's vote (majority mode): an
/// election round trip on a LAN takes milliseconds; past this the others elect without it.
const HANDOVER_VOTE_WAIT: Duration = Duration::from_secs(1);

/// Which child an actor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Child {
    Membership,
    Agent86,
    PeerServer,
    HttpFrontEnd,
    ApiHttp,
    Control,
}

/// The supervisor: everything the children are made of.
pub struct NodeSupervisor {
    /// The node's configuration.
    pub cfg: Arc<NodeConfig>,
    /// The desired-state log.
    pub desired: smart_desired::DesiredStore,
    /// The cluster key (heartbeats).
    pub key: ClusterKey,
    /// The heartbeat keyring (the cluster key alone unless `[heartbeat] keys_file`).
    pub ring: smart_proto::heartbeat::Keyring,
    /// This node's pair keys with every member (from its node key and the key book): a
    /// datagram is believed only with the tag of the member it names.
    pub member_keys: smart_proto::pair::MemberKeys,
    /// Rate-limited WARN lines.
    pub warnings: Arc<smart_transport::ratelog::WarnLimiter>,
    /// Durable epochs and incarnation.
    pub durable: Arc<DurableState>,
    /// Outgoing requests.
    pub peers: Arc<dyn PeerClient>,
    /// The transport endpoint (identity, key, counters) of the node's TCP port.
    pub endpoint: Endpoint,
    /// The cluster view membership publishes.
    pub view: Arc<watch::Sender<ClusterView>>,
    /// Whether (and until when) the local Control may act, as membership publishes it.
    pub acting: Arc<watch::Sender<ActingLease>>,
    /// Node counters.
    pub counters: Arc<Counters>,
    /// Event subscribers of this node (and its ring of recent events).
    pub subscribers: Arc<Subscribers>,
    /// Prometheus metrics.
    pub metrics: Arc<NodeMetrics>,
    /// API tokens of the HTTP API.
    pub tokens: Arc<TokenStore>,
    /// The members' HTTP addresses.
    pub directory: Arc<MemberDirectory>,
    /// The registry copy.
    pub replica: Arc<ReplicaStore>,
    /// Typed handles to the children, refreshed on every spawn.
    pub routes: Routes,
    /// Where the outcome is published.
    pub exit: watch::Sender<Exit>,
    /// Fault injection for the supervision tests (from `SMART_FAULT`): the number of
    /// messages on which Agent86 panics, summed over its restarts.
    pub agent86_panics: Option<Arc<std::sync::atomic::AtomicU32>>,
    /// Agent86's engine, runtime and instances: outlive restarts of the actor.
    pub agent_core: Arc<AgentCore>,
    /// How this node's Control admits (`[admission]`, the default profile loaded).
    pub admission: smart_control::AdmissionSettings,
}

/// The Control's term on this node, while this node is Control.
struct ControlSlot {
    epoch: Epoch,
    acting: bool,
    actor: Option<ActorRef<ControlMsg>>,
}

/// The supervisor's state.
pub struct SupervisorState {
    children: HashMap<ActorId, Child>,
    /// Children we stopped on purpose: their termination is not a failure.
    stopping: Vec<ActorId>,
    tracker: RestartTracker,
    control: Option<ControlSlot>,
    /// Membership has run before (a respawn takes a new incarnation).
    membership_started: bool,
}

impl NodeSupervisor {
    /// Majority mode: membership's link to the desired-state log's Raft, whose leader is
    /// the Control.
    fn raft_link(&self) -> Option<RaftLink> {
        if self.cfg.election.mode != ElectionMode::Majority {
            return None;
        }
        let desired = self.desired.clone();
        Some(RaftLink {
            leadership: self.desired.leadership(),
            elect: Arc::new(move || {
                let desired = desired.clone();
                tokio::spawn(async move { desired.elect_now().await });
            }),
        })
    }

    fn forwarder(&self) -> Forwarder {
        Forwarder {
            node: self.cfg.id(),
            view: self.view.subscribe(),
            peers: self.peers.clone(),
            local: self.routes.readers().control,
            budget: self.cfg.timing.budget(),
        }
    }

    fn dispatcher(&self) -> Dispatcher {
        Dispatcher {
            cfg: self.cfg.clone(),
            routes: self.routes.readers(),
            forwarder: self.forwarder(),
            transport: self.endpoint.counters.clone(),
            directory: self.directory.clone(),
            desired: self.desired.clone(),
        }
    }

    async fn spawn_child(
        &self,
        myself: &ActorRef<NodeMsg>,
        st: &mut SupervisorState,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let cell: ActorCell = match child {
            Child::Membership => {
                let restart = std::mem::replace(&mut st.membership_started, true);
                let (a, _) = Actor::spawn_linked(
                    None,
                    Membership {
                        cfg: self.cfg.clone(),
                        ring: self.ring.clone(),
                        member_keys: self.member_keys.clone(),
                        warnings: self.warnings.clone(),
                        durable: self.durable.clone(),
                        view: self.view.clone(),
                        acting: self.acting.clone(),
                        counters: self.counters.clone(),
                        subscribers: self.subscribers.clone(),
                        load: self.routes.readers().load_source(),
                        supervisor: myself.clone(),
                        restart,
                        raft: self.raft_link(),
                    },
                    (),
                    myself.get_cell(),
                )
                .await?;
                self.routes.membership.send_replace(Some(a.clone()));
                a.get_cell()
            }
            Child::Agent86 => {
                let (a, _) = Actor::spawn_linked(
                    None,
                    Agent86 {
                        node: self.cfg.id(),
                        epochs: self.durable.clone(),
                        core: self.agent_core.clone(),
                        panic_on_message: self.agent86_panics.clone(),
                    },
                    (),
                    myself.get_cell(),
                )
                .await?;
                self.routes.agent86.send_replace(Some(a.clone()));
                a.get_cell()
            }
            Child::PeerServer => {
                let ctx = PortContext {
                    desired: Some(self.desired.clone()),
                    cfg: self.cfg.clone(),
                    routes: self.routes.readers(),
                    dispatch: self.dispatcher(),
                    subscribers: self.subscribers.clone(),
                    replica: self.replica.clone(),
                    counters: self.counters.clone(),
                    view: self.view.subscribe(),
                    warnings: self.warnings.clone(),
                };
                let (a, _) = Actor::spawn_linked(
                    None,
                    PeerServer {
                        ctx,
                        listen: self.cfg.listen,
                        endpoint: self.endpoint.clone(),
                    },
                    (),
                    myself.get_cell(),
                )
                .await?;
                a.get_cell()
            }
            Child::HttpFrontEnd => {
                let (a, _) = Actor::spawn_linked(
                    None,
                    HttpFrontEnd {
                        cfg: self.cfg.clone(),
                        counters: self.counters.clone(),
                        forwarder: self.forwarder(),
                        subscribers: self.subscribers.clone(),
                        warnings: self.warnings.clone(),
                    },
                    (),
                    myself.get_cell(),
                )
                .await?;
                a.get_cell()
            }
            Child::ApiHttp => {
                let (a, _) = Actor::spawn_linked(
                    None,
                    ApiHttp {
                        ctx: ApiHttpContext {
                            cfg: self.cfg.clone(),
                            dispatch: self.dispatcher(),
                            subscribers: self.subscribers.clone(),
                            tokens: self.tokens.clone(),
                            metrics: self.metrics.clone(),
                            counters: self.counters.clone(),
                        },
                    },
                    (),
                    myself.get_cell(),
                )
                .await?;
                a.get_cell()
            }
            Child::Control => return Ok(()),
        };
        st.children.insert(cell.get_id(), child);
        Ok(())
    }

    async fn spawn_control(
        &self,
        myself: &ActorRef<NodeMsg>,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let Some(slot) = st.control.as_ref() else {
            return Ok(());
        };
        let membership = self.routes.readers().membership;
        let metrics = self.metrics.clone();
        let events = Arc::new(move |ev: ControlEvent| {
            if let ControlEvent::Decided {
                request,
                rejected,
                took,
            } = ev
            {
                metrics.decision(&metrics::Decision {
                    request,
                    rejected,
                    took,
                });
                return;
            }
            let Some(m) = membership.borrow().clone() else {
                return;
            };
            let _ = match ev {
                ControlEvent::Rebuilt { epoch, .. } => {
                    m.send_message(MembershipMsg::RebuildDone(epoch))
                }
                ControlEvent::Stale { highest, .. } => {
                    m.send_message(MembershipMsg::ControlStale(highest))
                }
                ControlEvent::Decided { .. } => return,
            };
        });
        // Local subscribers, and every other live node's (fire and forget).
        let publish = {
            let subscribers = self.subscribers.clone();
            let view = self.view.subscribe();
            let peers = self.peers.clone();
            let t = self.cfg.timing.request_timeout;
            Arc::new(move |ev: smart_api::Event| {
                subscribers.publish(&ev);
                let to: Vec<_> = view.borrow().others.values().copied().collect();
                let peers = peers.clone();
                tokio::spawn(async move {
                    for addr in to {
                        let _ = peers.request(addr, NodeRequest::Event(ev.clone()), t).await;
                    }
                });
            })
        };
        let (actor, _) = Actor::spawn_linked(
            None,
            Control {
                node: self.cfg.id(),
                epoch: slot.epoch,
                acting: slot.acting,
                // The one source of whether this Control may act.
                acting_source: Arc::new(self.acting.subscribe()),
                peers: self.peers.clone(),
                view: self.view.subscribe(),
                events,
                publish,
                refresh: Duration::from_secs(1),
                replica: self.replica.get(),
                desired: Some(self.desired.clone()),
                tuning: ControlTuning {
                    anomaly_move_every: self.cfg.timing.anomaly_move_every,
                    release_grace: self.cfg.timing.client_release_grace,
                    arrival_window: self.cfg.timing.client_arrival_window,
                    request_timeout: self.cfg.timing.request_timeout,
                    admission: self.admission.clone(),
                    ..Default::default()
                },
            },
            (),
            myself.get_cell(),
        )
        .await?;
        st.children.insert(actor.get_id(), Child::Control);
        self.routes.control.send_replace(Some(actor.clone()));
        if let Some(slot) = st.control.as_mut() {
            slot.actor = Some(actor);
        }
        Ok(())
    }

    fn stop_control(&self, st: &mut SupervisorState) {
        if let Some(slot) = st.control.take() {
            info!(node = %self.cfg.id(), epoch = slot.epoch, "stopping control");
            self.routes.control.send_replace(None);
            if let Some(a) = slot.actor {
                st.stopping.push(a.get_id());
                a.stop(Some("step down".into()));
            }
        }
    }

    fn escalate(&self, myself: &ActorRef<NodeMsg>, reason: String) {
        error!(node = %self.cfg.id(), %reason, "escalating: stopping the node");
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
        let cfg = &self.cfg;
        let mut st = SupervisorState {
            children: HashMap::new(),
            stopping: Vec::new(),
            tracker: RestartTracker::new(RestartPolicy {
                max_restarts: cfg.supervision.max_restarts,
                within: cfg.supervision.within,
            }),
            control: None,
            membership_started: false,
        };
        // The listener first, so that peers hearing our first heartbeat can reach us.
        let mut order = vec![Child::PeerServer, Child::Agent86];
        if cfg.has_role(Role::FrontEnd) {
            order.push(Child::HttpFrontEnd);
        }
        if cfg.http_listen.is_some() {
            order.push(Child::ApiHttp);
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
        let span = info_span!("supervisor", node = %self.cfg.id());
        self.on_msg(myself, msg, st).instrument(span).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = info_span!("supervisor", node = %self.cfg.id());
        self.on_child_event(myself, evt, st).instrument(span).await
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

impl NodeSupervisor {
    async fn on_msg(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::StartControl { epoch, acting } => {
                self.stop_control(st);
                st.control = Some(ControlSlot {
                    epoch,
                    acting,
                    actor: None,
                });
                self.spawn_control(&myself, st).await?;
            }
            NodeMsg::ControlEpoch { epoch } => {
                if let Some(slot) = st.control.as_mut() {
                    slot.epoch = epoch;
                    match &slot.actor {
                        Some(a) => {
                            let _ = a.send_message(ControlMsg::SetEpoch(epoch));
                        }
                        // The re-assertion asked for after a failure: the new actor.
                        None => self.spawn_control(&myself, st).await?,
                    }
                }
            }
            NodeMsg::ControlActing { epoch, acting } => {
                if let Some(slot) = st.control.as_mut()
                    && slot.epoch == epoch
                {
                    slot.acting = acting;
                    if let Some(a) = &slot.actor {
                        let _ = a.send_message(ControlMsg::ActingChanged);
                    }
                }
            }
            NodeMsg::StopControl => self.stop_control(st),
            NodeMsg::Shutdown => {
                // A planned stop hands the Control over instead of leaving the cluster to
                // detect a failure: the actor stops commanding first, then membership names
                // a successor, which claims at once. Bounded: a wedged membership actor
                // must not hold the stop.
                self.stop_control(st);
                if let Some(m) = self.routes.readers().membership() {
                    let left = m
                        .call(MembershipMsg::Leave, Some(Duration::from_millis(500)))
                        .await;
                    if !matches!(left, Ok(ractor::rpc::CallResult::Success(()))) {
                        warn!(node = %self.cfg.id(), "membership did not confirm the leave");
                    }
                }
                // Majority mode: the successor asks Raft for an election at once; the
                // other voters still honour our lease, so it needs our vote. Keep the
                // transport and the Raft member up until it has it (bounded).
                if self.cfg.election.mode == ElectionMode::Majority
                    && self.desired.leadership().borrow().leader
                    && !self.desired.wait_leadership_moved(HANDOVER_VOTE_WAIT).await
                {
                    warn!(node = %self.cfg.id(), "no successor took the raft leadership in time");
                }
                let _ = self.exit.send(Exit::Shutdown);
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn on_child_event(
        &self,
        myself: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err)),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
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
        if child == Child::Control
            && let Some(slot) = st.control.as_mut()
            && slot.actor.as_ref().is_some_and(|a| a.get_id() == id)
        {
            slot.actor = None;
            self.routes.control.send_replace(None);
        }
        let why = match &failure {
            Some(err) => {
                if child == Child::Control && err.downcast_ref::<Deposed>().is_some() {
                    // Deposed: not a failure. Membership hears the newer Control and moves on.
                    return Ok(());
                }
                if let Some(fatal) = Fatal::of(err.as_ref()) {
                    self.escalate(&myself, format!("{child:?}: {fatal}"));
                    return Ok(());
                }
                format!("failed: {err}")
            }
            None => "stopped on its own".to_string(),
        };
        self.counters.incr("restarts");
        match st.tracker.on_failure(Instant::now()) {
            Decision::Restart { restarts_in_window } => {
                warn!(node = %self.cfg.id(), ?child, %why, restarts_in_window, "restarting child");
                if child == Child::Control {
                    // Restarted at a new epoch, once membership has re-asserted.
                    if let Some(m) = self.routes.readers().membership() {
                        let _ = m.send_message(MembershipMsg::Reassert);
                    }
                } else if let Err(e) = self.spawn_child(&myself, st, child).await {
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
}
