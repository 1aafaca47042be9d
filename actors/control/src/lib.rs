//! # smart-control
//!
//! The Control: runs only on the elected node (thesis §4, §5.6; docs/DESIGN.md §1–§4).
//!
//! The decisions are [`ControlEngine`]'s, a pure step function (see [`engine`]); this actor
//! is its thin shell. It turns API requests, agent answers, membership changes and the
//! refresh timer into [`Input`]s, and executes the [`Output`]s: each agent command in a task
//! of its own (so the mailbox never waits on the network) whose answer comes back as
//! [`Input::Reply`]; report rounds likewise; answers to API callers through their reply
//! ports; events through [`Control::publish`]; election news through [`Control::events`].
//!
//! Lifecycle, driven by the node's election engine:
//! 1. spawned at an epoch when this node wins an election (or is re-asserted after a crash
//!    of this actor: a new epoch, so agents fence whatever the dead incarnation had in
//!    flight);
//! 2. **rebuilds** before it serves anything: `post_start` runs the first report round to
//!    completion (each request bounded by the request timeout) and emits
//!    [`ControlEvent::Rebuilt`];
//! 3. refreshes every `refresh`; acts only while its [`ActingSource`] says so: the shell
//!    reads it right before every step of the engine (so a lease that ran out during a
//!    pause is never acted on), and [`ControlMsg::ActingChanged`] wakes it when it changes;
//! 4. deposed when an agent refuses its epoch: it emits [`ControlEvent::Stale`] and stops
//!    with the typed error [`Deposed`], which the supervisor recognises as "not a failure".
//!
//! Every task it spawns lives in its state's `JoinSet`: when the actor stops, for any
//! reason, they are aborted with it, so no work of a dead Control incarnation survives it.
//!
//! ## Layout
//! - [`engine`]: the pure engine, its inputs and outputs, the migration state machine.
//! - [`desired`]: what the Control writes to and restores from the desired-state log.
//! - [`Control`], [`ControlMsg`], [`ControlEvent`], [`Deposed`]: the actor.
//! - [`settings`]: the Control's admission settings from the node's `[admission]` config.
//! - [`peer`]: the [`peer::PeerClient`] seam through which the Control (and whoever
//!   forwards to it) sends node-to-node requests.
//! - [`forward`]: [`forward::Forwarder`], how any actor of any node reaches the Control
//!   across failovers, within the deadline its caller set.
//! - [`nodes`]: the `Nodes` answer (every agent node as the Control sees it), which the
//!   actor gives itself from the engine's status and the configured VR.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod desired;
pub mod engine;
pub mod forward;
pub mod nodes;
pub mod peer;
pub mod settings;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smart_desired::DesiredStore;
use smart_proto::agent::{AgentCommand, AgentReply};
use smart_proto::api::{Event, Request, Response};
use smart_proto::desired::DesiredCmd;
use smart_proto::node::{NodeRequest, NodeResponse, Replica};
use smart_proto::{Epoch, NodeId, ServiceName};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, info_span, warn};

pub use nodes::node_reports;

pub use engine::{
    AdmissionSettings, AgentAddr, ApiId, ControlEngine, ControlStatus, ControlTuning, Input,
    Output, launch_of, spec_of,
};

use crate::peer::{PeerClient, PeerError};
use smart_membership::view::{ActingLease, ClusterView};

/// What the Control tells the node runtime (for the election engine).
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
    /// An admission request was decided (for metrics): the engine's step, timed.
    Decided {
        /// `service` for `AdmitService`, `client` for `AdmitClient`.
        request: &'static str,
        /// Admission's reason, when it said no.
        rejected: Option<String>,
        /// How long the engine's step took.
        took: Duration,
    },
}

/// The error a deposed Control stops with: the supervisor sees it in `ActorFailed` and
/// treats it as a normal end, not a failure to restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deposed: epoch {epoch} is below {highest}")]
pub struct Deposed {
    /// Our epoch.
    pub epoch: Epoch,
    /// The epoch an agent has seen.
    pub highest: Epoch,
}

/// Callback through which the Control reports [`ControlEvent`]s.
pub type ControlEvents = Arc<dyn Fn(ControlEvent) + Send + Sync>;
/// Callback through which the Control publishes message-API [`Event`]s to subscribers.
pub type Publish = Arc<dyn Fn(Event) + Send + Sync>;

/// Control's messages.
pub enum ControlMsg {
    /// Time to refresh the registry from the agents.
    Tick,
    /// An input for the engine (answers of the Control's own tasks; tests inject reports).
    Input(Input),
    /// A message-API request.
    Api(Request, RpcReplyPort<Response>),
    /// The Control's own view.
    Status(RpcReplyPort<ControlStatus>),
    /// A message-API request whose desired-state change was written to the log (or could
    /// not be): now decided by the engine, or refused with the reason.
    Committed {
        /// The request.
        req: Request,
        /// Where its answer goes.
        reply: RpcReplyPort<Response>,
        /// The write's outcome.
        written: Result<(), String>,
    },
    /// The election engine re-asserted this Control at a higher epoch: use it from now on.
    SetEpoch(Epoch),
    /// The election engine changed whether the Control may act: read the [`ActingSource`]
    /// (what was held while it could not act may leave now).
    ActingChanged,
}

/// Where the Control learns, right before every step of its engine, whether and until when
/// it may act: the node's membership (its election engine's word, with Raft's quorum lease
/// in majority mode, published after every input, see [`ActingLease`]), or any other authority that can say so without going stale.
pub trait ActingSource: Send + Sync {
    /// The latest word.
    fn lease(&self) -> ActingLease;
}

impl ActingSource for watch::Receiver<ActingLease> {
    fn lease(&self) -> ActingLease {
        *self.borrow()
    }
}

/// Control's fixed configuration.
pub struct Control {
    /// This node.
    pub node: NodeId,
    /// The epoch this Control was elected (or re-asserted) at.
    pub epoch: Epoch,
    /// Whether the election engine lets it act from the start (a restart of the actor
    /// within a term that was already acting).
    pub acting: bool,
    /// Whether and until when it may act, read before every step.
    pub acting_source: Arc<dyn ActingSource>,
    /// Outgoing requests.
    pub peers: Arc<dyn PeerClient>,
    /// The cluster as the node's membership sees it (the live agents).
    pub view: watch::Receiver<ClusterView>,
    /// Where election news goes.
    pub events: ControlEvents,
    /// Where message-API events go (subscribers).
    pub publish: Publish,
    /// Registry refresh period.
    pub refresh: Duration,
    /// The registry copy this node last received from a Control.
    pub replica: Replica,
    /// The desired-state log (docs/DESIGN.md, "Desired state in a Raft log"): what an
    /// operator changes is written there before the engine acts on it, and a new Control
    /// restores from it what no agent runs. `None` in tests of the Control alone.
    pub desired: Option<DesiredStore>,
    /// Reactions and timeouts.
    pub tuning: ControlTuning,
}

/// Control's mutable state.
pub struct ControlState {
    engine: ControlEngine,
    replies: HashMap<ApiId, RpcReplyPort<Response>>,
    next_api: ApiId,
    /// Every task the actor started: aborted when the state is dropped (the actor stops).
    tasks: JoinSet<()>,
    /// Admissions whose service was written to the desired-state log before the engine
    /// decided: a refusal removes it again.
    written_admits: HashMap<ApiId, ServiceName>,
    /// The profile versions this Control asked the log to keep (asked once each).
    profiles_written: HashMap<String, u64>,
    /// The health drains this Control last asked the log to keep (each change asked once).
    health_written: Option<BTreeSet<NodeId>>,
}

/// How long a Control waits before asking again an agent whose node has not heard of it
/// yet ([`smart_proto::error::VIEW_BEHIND`]).
pub const VIEW_BEHIND_RETRY: Duration = Duration::from_millis(20);

/// One command to an agent and its answer, as the engine wants it. An agent whose node
/// has not heard of this Control yet is asked again every [`VIEW_BEHIND_RETRY`] until
/// `timeout` (its view catches up within a heartbeat).
async fn agent_call(
    peers: &dyn PeerClient,
    to: AgentAddr,
    epoch: Epoch,
    cmd: AgentCommand,
    timeout: Duration,
) -> Result<AgentReply, PeerError> {
    // Tokio's clock: tests that pause time see the retries' sleeps.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let req = NodeRequest::Agent {
            epoch,
            cmd: cmd.clone(),
        };
        match peers.request(to.addr, req, left).await {
            Ok(NodeResponse::Agent(r)) => return Ok(r),
            Ok(other) => {
                return Err(PeerError::Failed {
                    addr: to.addr,
                    reason: format!("unexpected answer {other:?}"),
                });
            }
            Err(PeerError::Unavailable { what, .. })
                if what == smart_proto::error::VIEW_BEHIND
                    && tokio::time::Instant::now() + VIEW_BEHIND_RETRY < deadline =>
            {
                tokio::time::sleep(VIEW_BEHIND_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Control {
    /// Hands a message-API request to the engine.
    fn api(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        req: Request,
        reply: RpcReplyPort<Response>,
    ) -> Result<(), ActorProcessingErr> {
        let id = st.next_api;
        st.next_api += 1;
        st.replies.insert(id, reply);
        self.feed(myself, st, Input::Api { id, req })
    }

    /// Whether a desired-state change is worth writing before the engine sees `req`: the
    /// engine acts now, and an admission names a service it does not have yet.
    fn worth_writing(&self, st: &ControlState, req: &Request) -> bool {
        let may_act = self
            .acting_source
            .lease()
            .valid(st.engine.epoch(), Instant::now());
        desired::worth_writing(&st.engine.status(), may_act, req)
    }

    /// A service the engine stopped for good (idle, an operator's stop) leaves the desired
    /// state: a whole-cluster restart must not start it again. (An operator's stop was
    /// written before; the log then no longer holds it and nothing is written.)
    fn forget_stopped(&self, st: &mut ControlState, service: &ServiceName) {
        let Some(store) = &self.desired else { return };
        if !store.state().services.contains_key(service) {
            return;
        }
        let (store, within, node) = (store.clone(), self.tuning.request_timeout, self.node);
        let cmd = DesiredCmd::RemoveService {
            name: service.clone(),
        };
        st.tasks.spawn(async move {
            if let Err(e) = store.write(cmd, within).await {
                warn!(%node, error = %e, "stopped service not removed from the desired-state log");
            }
        });
    }

    /// Class profiles are decided by the engine (measured, refined, put): the newer ones
    /// it replicates are written to the desired-state log after the fact.
    fn sync_profiles(&self, st: &mut ControlState, replica: &Replica) {
        let Some(store) = &self.desired else { return };
        let kept = store.state();
        for p in &replica.profiles {
            if kept
                .profiles
                .get(&p.class)
                .is_some_and(|k| k.version >= p.version)
                || st.profiles_written.get(&p.class) >= Some(&p.version)
            {
                continue;
            }
            st.profiles_written.insert(p.class.clone(), p.version);
            let (store, within, node) = (store.clone(), self.tuning.request_timeout, self.node);
            let cmd = DesiredCmd::PutProfile(Box::new(p.clone()));
            st.tasks.spawn(async move {
                if let Err(e) = store.write(cmd, within).await {
                    warn!(%node, error = %e, "class profile not written to the desired-state log");
                }
            });
        }
    }

    /// Health drains are decided by the engine from the agents' checks: each change of the
    /// set it replicates is written to the desired-state log after the fact (a drain for a
    /// node newly failing, an undrain for one that recovered), so that a whole-cluster
    /// restart keeps a sick node out of placement.
    fn sync_health_drains(&self, st: &mut ControlState, replica: &Replica) {
        let Some(store) = &self.desired else { return };
        let now: BTreeSet<NodeId> = replica.health_drained.iter().copied().collect();
        let before = st
            .health_written
            .clone()
            .unwrap_or_else(|| store.state().health_drained.clone());
        if now == before {
            st.health_written = Some(now);
            return;
        }
        let cmds = desired::health_drain_changes(&before, &now);
        st.health_written = Some(now);
        let (store, within, node) = (store.clone(), self.tuning.request_timeout, self.node);
        st.tasks.spawn(async move {
            for cmd in cmds {
                let what = cmd.summary();
                if let Err(e) = store.write(cmd, within).await {
                    warn!(%node, error = %e, change = %what, "health drain not written to the desired-state log");
                }
            }
        });
    }

    /// One step of the engine, told first what the acting source says now (and again after
    /// a re-assertion, which changes the epoch the word is about).
    fn step(&self, st: &mut ControlState, input: Input, now: Instant) -> Vec<Output> {
        let mut out = self.sync_acting(st, now);
        let epoch = st.engine.epoch();
        out.extend(st.engine.handle(input, now));
        if st.engine.epoch() != epoch {
            out.extend(self.sync_acting(st, now));
        }
        out
    }

    /// Tells the engine whether it may act at its epoch, and until when.
    fn sync_acting(&self, st: &mut ControlState, now: Instant) -> Vec<Output> {
        let lease = self.acting_source.lease();
        let epoch = st.engine.epoch();
        st.engine.handle(
            Input::SetActing {
                epoch,
                acting: lease.epoch == Some(epoch),
                until: lease.until,
            },
            now,
        )
    }

    /// Executes the engine's outputs. Returns the deposition, if one was among them.
    fn execute(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        outputs: Vec<Output>,
    ) -> Option<Deposed> {
        let mut deposed = None;
        for out in outputs {
            match out {
                Output::Round {
                    agents,
                    epoch,
                    timeout,
                } => {
                    let (peers, me) = (self.peers.clone(), myself.clone());
                    st.tasks.spawn(async move {
                        let started = Instant::now();
                        let results = round(&*peers, agents, epoch, timeout).await;
                        let _ =
                            me.send_message(ControlMsg::Input(Input::Reports { started, results }));
                    });
                }
                Output::Command {
                    req,
                    to,
                    epoch,
                    cmd,
                    timeout,
                } => {
                    let (peers, me) = (self.peers.clone(), myself.clone());
                    st.tasks.spawn(async move {
                        let result = agent_call(&*peers, to, epoch, cmd, timeout).await;
                        let _ = me.send_message(ControlMsg::Input(Input::Reply { req, result }));
                    });
                }
                Output::Reply { id, resp } => {
                    if let Some(name) = st.written_admits.remove(&id)
                        && matches!(resp, Response::Error(_))
                        && let Some(store) = &self.desired
                    {
                        // Refused after its write: the log must not keep a service that
                        // was never admitted.
                        let (store, within) = (store.clone(), self.tuning.request_timeout);
                        let node = self.node;
                        st.tasks.spawn(async move {
                            if let Err(e) = store
                                .write(DesiredCmd::RemoveService { name: name.clone() }, within)
                                .await
                            {
                                warn!(%node, service = %name, error = %e, "refused admission still in the desired-state log");
                            }
                        });
                    }
                    if let Some(port) = st.replies.remove(&id) {
                        let _ = port.send(resp);
                    }
                }
                Output::Publish(ev) => {
                    if let Event::Stopped { service, .. } = &ev {
                        self.forget_stopped(st, service);
                    }
                    (self.publish)(ev)
                }
                Output::Replicate { to, replica } => {
                    self.sync_profiles(st, &replica);
                    self.sync_health_drains(st, &replica);
                    let t = self.tuning.request_timeout;
                    for a in to {
                        let (peers, r) = (self.peers.clone(), replica.clone());
                        st.tasks.spawn(async move {
                            let _ = peers.request(a.addr, NodeRequest::Replica(r), t).await;
                        });
                    }
                }
                Output::Rebuilt { epoch, agents } => {
                    (self.events)(ControlEvent::Rebuilt { epoch, agents })
                }
                Output::Stale { epoch, highest } => {
                    (self.events)(ControlEvent::Stale { epoch, highest });
                    deposed = Some(Deposed { epoch, highest });
                }
            }
        }
        // Forget the tasks that are done.
        while st.tasks.try_join_next().is_some() {}
        deposed
    }

    fn feed(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        input: Input,
    ) -> Result<(), ActorProcessingErr> {
        // Admission requests are timed and their outcome reported (for metrics).
        let admission = match &input {
            Input::Api {
                id,
                req: Request::AdmitService(_),
            } => Some((*id, "service")),
            Input::Api {
                id,
                req: Request::AdmitClient { .. },
            } => Some((*id, "client")),
            _ => None,
        };
        let t0 = Instant::now();
        let outputs = self.step(st, input, t0);
        if let Some((id, request)) = admission {
            let took = t0.elapsed();
            let reply = outputs.iter().find_map(|o| match o {
                Output::Reply { id: i, resp } if *i == id => Some(resp),
                _ => None,
            });
            // Placed, or waiting for its instance: admitted. Other errors (not acting, no
            // such service, a bad spec) decided nothing.
            let rejected = match reply {
                Some(Response::Error(smart_proto::api::ApiError::Rejected { reason })) => {
                    Some(Some(reason.clone()))
                }
                Some(Response::Error(_)) => None,
                _ => Some(None),
            };
            if let Some(rejected) = rejected {
                (self.events)(ControlEvent::Decided {
                    request,
                    rejected,
                    took,
                });
            }
        }
        match self.execute(myself, st, outputs) {
            Some(d) => Err(Box::new(d)),
            None => Ok(()),
        }
    }
}

/// Asks every agent for its report at once.
async fn round(
    peers: &dyn PeerClient,
    agents: Vec<AgentAddr>,
    epoch: Epoch,
    timeout: Duration,
) -> Vec<(AgentAddr, Result<AgentReply, PeerError>)> {
    let asks = agents.into_iter().map(|a| async move {
        let r = agent_call(peers, a, epoch, AgentCommand::Report, timeout).await;
        (a, r)
    });
    futures::future::join_all(asks).await
}

/// How long a new Control waits for its node to catch up with the desired-state log.
const BARRIER_WAIT: Duration = Duration::from_millis(300);

impl Actor for Control {
    type Msg = ControlMsg;
    type State = ControlState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        let agents = self.view.borrow().agents.clone();
        let replica = match &self.desired {
            Some(store) => {
                // Read the log once this node has applied everything committed: a barrier
                // written now is applied after them. Bounded: without a majority (a
                // minority side in available mode) the local state is all there is.
                if let Err(e) = store.write(DesiredCmd::Barrier, BARRIER_WAIT).await {
                    warn!(node = %self.node, error = %e, "desired-state log not caught up; restoring from the local copy");
                }
                desired::restore_from(self.replica.clone(), &store.state())
            }
            None => self.replica.clone(),
        };
        let mut engine =
            ControlEngine::new(self.node, self.epoch, self.tuning.clone(), replica, &agents)?;
        if self.acting {
            let lease = self.acting_source.lease();
            engine.handle(
                Input::SetActing {
                    epoch: self.epoch,
                    acting: lease.epoch == Some(self.epoch),
                    until: lease.until,
                },
                Instant::now(),
            );
        }
        Ok(ControlState {
            engine,
            replies: HashMap::new(),
            next_api: 1,
            tasks: JoinSet::new(),
            written_admits: HashMap::new(),
            profiles_written: HashMap::new(),
            health_written: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = info_span!("control", node = %self.node, epoch = self.epoch);
        async {
            // Rebuild before serving anything: the first round runs to completion here
            // (each request bounded by the request timeout).
            let t0 = Instant::now();
            // The rebuild asks every live agent of the view as it is now (docs/DESIGN.md
            // §2.5); before the rebuild this only sets the engine's live set.
            let known = self.view.borrow().agents.clone();
            st.engine.handle(Input::Agents(known.clone()), t0);
            let outputs = self.step(st, Input::Start, t0);
            let mut rest = Vec::new();
            for out in outputs {
                match out {
                    Output::Round {
                        agents,
                        epoch,
                        timeout,
                    } => {
                        let results = round(&*self.peers, agents, epoch, timeout).await;
                        rest.extend(self.step(
                            st,
                            Input::Reports {
                                started: t0,
                                results,
                            },
                            Instant::now(),
                        ));
                    }
                    other => rest.push(other),
                }
            }
            if let Some(d) = self.execute(&myself, st, rest) {
                return Err(Box::new(d) as ActorProcessingErr);
            }
            myself.send_interval(self.refresh, || ControlMsg::Tick);
            let mut rx = self.view.clone();
            let me = myself.clone();
            st.tasks.spawn(async move {
                // From the agents the rebuild knew: a change while it ran is sent at once.
                let mut last = known;
                loop {
                    let agents = rx.borrow_and_update().agents.clone();
                    if agents != last {
                        last = agents.clone();
                        if me
                            .send_message(ControlMsg::Input(Input::Agents(agents)))
                            .is_err()
                        {
                            return;
                        }
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            });
            // The desired-state log as this node applies it: what another Control admitted
            // (on a side of a partition this one was not on) is restored here too.
            if let Some(store) = &self.desired {
                let mut rx = store.subscribe();
                let me = myself.clone();
                st.tasks.spawn(async move {
                    // The rebuild read the state at start: only changes from now on.
                    rx.borrow_and_update();
                    while rx.changed().await.is_ok() {
                        let specs: Vec<smart_proto::api::ServiceSpec> =
                            rx.borrow_and_update().services.values().cloned().collect();
                        if me
                            .send_message(ControlMsg::Input(Input::Desired(specs)))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _span = info_span!("control", node = %self.node, epoch = st.engine.epoch()).entered();
        match msg {
            ControlMsg::Tick => self.feed(&myself, st, Input::Tick),
            ControlMsg::Input(input) => self.feed(&myself, st, input),
            ControlMsg::Api(Request::Nodes, reply) => {
                // Not the engine's: a view of its state for displays, with the VR it admits
                // with.
                let s = st.engine.status();
                let _ = reply.send(if s.rebuilt {
                    Response::Nodes(node_reports(&s, self.tuning.admission.vr))
                } else {
                    Response::Error(smart_proto::api::ApiError::Rebuilding)
                });
                Ok(())
            }
            ControlMsg::Api(req, reply) => match (&self.desired, desired::desired_change(&req)) {
                // A change of the desired state is written first and acknowledged only once
                // committed; the engine decides after that. Not while the engine would
                // refuse anyway (not acting, rebuilding), nor for a service it already
                // has (an admission of a known name is the engine's to answer).
                (Some(store), Some(cmd)) if self.worth_writing(st, &req) => {
                    let (store, me) = (store.clone(), myself.clone());
                    let within = self.tuning.request_timeout;
                    st.tasks.spawn(async move {
                        let written = store
                            .write(cmd, within)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string());
                        let _ = me.send_message(ControlMsg::Committed {
                            req,
                            reply,
                            written,
                        });
                    });
                    Ok(())
                }
                _ => self.api(&myself, st, req, reply),
            },
            ControlMsg::Committed {
                req,
                reply,
                written,
            } => match written {
                Ok(()) => {
                    let admit = match &req {
                        Request::AdmitService(spec) => Some(spec.name.clone()),
                        _ => None,
                    };
                    let id = st.next_api;
                    if let Some(name) = admit {
                        st.written_admits.insert(id, name);
                    }
                    self.api(&myself, st, req, reply)
                }
                Err(reason) => {
                    warn!(node = %self.node, %reason, ?req, "desired-state change not committed; nothing done");
                    let _ = reply.send(Response::Error(smart_proto::api::ApiError::NotCommitted {
                        reason,
                    }));
                    Ok(())
                }
            },
            ControlMsg::Status(reply) => {
                let _ = reply.send(st.engine.status());
                Ok(())
            }
            ControlMsg::SetEpoch(epoch) => self.feed(&myself, st, Input::SetEpoch(epoch)),
            ControlMsg::ActingChanged => {
                let outputs = self.sync_acting(st, Instant::now());
                match self.execute(&myself, st, outputs) {
                    Some(d) => Err(Box::new(d)),
                    None => Ok(()),
                }
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        st.tasks.abort_all();
        if !st.replies.is_empty() {
            warn!(node = %self.node, waiting = st.replies.len(), "control stopping with requests in flight");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
