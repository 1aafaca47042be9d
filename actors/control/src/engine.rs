//! The Control's decisions as a pure step function (docs/DESIGN.md §2–§4): no tokio, no
//! sockets, no clocks. The actor shell ([`super::Control`]) feeds [`Input`]s with the
//! current time into [`ControlEngine::handle`] and executes the [`Output`]s it returns, in
//! order: agent commands, answers to API requests, events, the registry copy.
//!
//! The engine owns the soft state of the cluster: the services and where they run, the
//! `smart_admission` engine (eq. 4.1, per-node test, placement, MS, the Smart-GloVE client
//! rule), the last report of every agent, drained nodes and every in-flight operation on a
//! service (a start, or one step of a migration: see `moves`). Every agent
//! command it emits carries a request id; the shell answers each with
//! [`Input::Reply`] (the agent's answer or why there was none), so nothing happens behind
//! the engine's back and a command of a superseded operation is recognised and ignored.
//!
//! Life cycle: [`Input::Start`] asks every live agent for its report; the first
//! [`Input::Reports`] **rebuilds** (asks again the live agents the first round did not ask,
//! adopts running instances, stops duplicates, restarts what only the replicated registry
//! knows of a node that answered or died; what a silent node may run waits for it) and
//! emits [`Output::Rebuilt`]; from then on,
//! while the election engine lets it act ([`Input::SetActing`]), it serves API requests and
//! every [`Input::Tick`] starts a refresh round. An agent refusing a command at our epoch
//! ([`AgentReply::Refused`]) makes it emit [`Output::Stale`] once and do nothing more.
//!
//! ## Layout
//! The engine's state is a few types, each in its own module with its own tests:
//! - `table`: the services, their identity and placement;
//! - `moves`: the start and migration state machine, and the operation in
//!   flight on each service;
//! - `qos`: the QoS clocks (grace periods, releases, anomaly causes, idle);
//! - `profiles`: class profiles, admission profiles, reservations.
//!
//! [`ControlEngine`] owns them with the admission engine and the cluster view, and
//! coordinates them:
//! - this file: types, the step function, shared helpers;
//! - `api`: message-API requests;
//! - `rounds`: rebuild, refresh rounds, node failures, notices, releases;
//! - `reconcile`: one instance per service (duplicates, copies no Control admitted here,
//!   the stops it sent), and when a service is lost;
//! - `migration`: sending starts and the steps of moves;
//! - `qos_round`: the QoS actions of a refresh.

mod api;
mod migration;
mod moves;
mod profiles;
mod qos;
mod qos_round;
mod reconcile;
mod rounds;
mod table;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smart_admission::{AnyEngine, EngineConfig, Evicted, NodeSpec};
use smart_proto::agent::{
    AgentCommand, AgentReply, AgentReport, LaunchSpec, Reservation, ServiceIdentity,
};
use smart_proto::api::{ApiError, Event, Placement, Request, Response, ServiceSpec};
use smart_proto::node::{Replica, ReplicaEntry};
use smart_proto::profile::ProfileSource;
use smart_proto::{Epoch, NodeId, ServiceName};

use crate::peer::PeerError;

use moves::Moves;
pub use moves::{Move, Op, Why};
pub use profiles::{AdmissionSettings, MEM_LIMIT_SLACK, MIN_CPU_LIMIT};
use profiles::{Profiles, Stored};
use qos::QosBook;
use table::{Removed, ServiceTable};

/// Identifies an API request, chosen by the shell; the answer is [`Output::Reply`].
pub type ApiId = u64;
/// Identifies an agent command, chosen by the engine; answered by [`Input::Reply`].
pub type ReqId = u64;

pub use smart_membership::view::AgentAddr;

/// How the Control admits, reacts to what agents observe (anomalies, viewers leaving), and
/// its timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlTuning {
    /// At most one anomaly-triggered move per service within this time: one anomaly (or
    /// a service that is over its profile wherever it runs) does not cause repeated moves.
    pub anomaly_move_every: Duration,
    /// No client is released from usage reports within this time after a start or a
    /// migration of the service: viewers are still connecting or reconnecting.
    pub release_grace: Duration,
    /// Consecutive refreshes in which an instance must report fewer connected clients than
    /// were admitted (and settled) before the surplus is released.
    pub release_after: u32,
    /// A client admitted less than this long ago is tentative: its viewer may not have
    /// reached the distributor yet, so it is not released for being uncounted.
    pub arrival_window: Duration,
    /// Timeout of one request to an agent (reports, stops); the steps of a start or a
    /// migration get multiples of it (see `moves`).
    pub request_timeout: Duration,
    /// Admission, reservations, limits, refinement (`[admission]`).
    pub admission: AdmissionSettings,
}

impl Default for ControlTuning {
    fn default() -> Self {
        ControlTuning {
            anomaly_move_every: Duration::from_secs(60),
            release_grace: Duration::from_secs(10),
            release_after: 2,
            arrival_window: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
            admission: AdmissionSettings::default(),
        }
    }
}

/// What the engine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Begin: ask every live agent for its report (the rebuild round).
    Start,
    /// The refresh period passed: replicate the registry and start a refresh round.
    Tick,
    /// The live agents changed (membership): dead nodes are handled at once.
    Agents(Vec<AgentAddr>),
    /// The desired-state log changed (this node applied new entries): the services it
    /// holds. One this Control does not keep (another Control admitted it, on the side of a
    /// partition this one was not on) is restored at the next refresh round, unless a
    /// report shows a copy of it first. Nothing is stopped for being absent: services
    /// admitted on a viewer's demand are not in the log.
    Desired(Vec<ServiceSpec>),
    /// The answers of a report round (every agent answered or timed out), and when the
    /// round started.
    Reports {
        /// When the round's requests were sent.
        started: Instant,
        /// One per agent asked.
        results: Vec<(AgentAddr, Result<AgentReply, PeerError>)>,
    },
    /// The answer to [`Output::Command`] `req`.
    Reply {
        /// The command.
        req: ReqId,
        /// The agent's answer, or why there was none.
        result: Result<AgentReply, PeerError>,
    },
    /// A message-API request, answered by [`Output::Reply`] with the same `id`.
    Api {
        /// Chosen by the shell.
        id: ApiId,
        /// The request.
        req: Request,
    },
    /// The election engine re-asserted this Control at a higher epoch.
    SetEpoch(Epoch),
    /// Whether the Control may act (rebuilt and, in majority mode, leading the Raft group
    /// with a fresh quorum acknowledgement), as decided by the election engine, and until when: the shell feeds it from
    /// its acting source right before every other input, so the engine never decides on a
    /// lease that ran out (see [`ControlEngine::handle`]).
    SetActing {
        /// The epoch the decision is about.
        epoch: Epoch,
        /// May act.
        acting: bool,
        /// The instant acting stops being valid (`None`: no limit).
        until: Option<Instant>,
    },
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Ask every agent for its report (all at once, each within `timeout`), then feed the
    /// answers back as [`Input::Reports`].
    Round {
        /// The agents.
        agents: Vec<AgentAddr>,
        /// The epoch the requests carry.
        epoch: Epoch,
        /// Timeout of each request.
        timeout: Duration,
    },
    /// Send `cmd` to an agent at `epoch`; feed the answer back as [`Input::Reply`].
    Command {
        /// Request id.
        req: ReqId,
        /// The agent.
        to: AgentAddr,
        /// The epoch it carries.
        epoch: Epoch,
        /// What to do.
        cmd: AgentCommand,
        /// How long to wait for the answer.
        timeout: Duration,
    },
    /// Answer API request `id`.
    Reply {
        /// The request.
        id: ApiId,
        /// The answer.
        resp: Response,
    },
    /// Publish a message-API event to subscribers (on every node).
    Publish(Event),
    /// Send the registry copy to these agents (fire and forget).
    Replicate {
        /// Where.
        to: Vec<AgentAddr>,
        /// The copy.
        replica: Replica,
    },
    /// State rebuilt from `agents` reports: the election engine may let us act at `epoch`.
    Rebuilt {
        /// The epoch.
        epoch: Epoch,
        /// Agents that answered.
        agents: usize,
    },
    /// An agent refused a command: a newer Control exists at `highest`. Emitted once; the
    /// engine does nothing more.
    Stale {
        /// Our epoch.
        epoch: Epoch,
        /// The epoch the agent has seen.
        highest: Epoch,
    },
}

/// The Control's view, for status and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlStatus {
    /// Its epoch.
    pub epoch: Epoch,
    /// Rebuilt from agent reports.
    pub rebuilt: bool,
    /// Allowed to act by the election engine.
    pub acting: bool,
    /// Last report of each agent.
    pub agents: BTreeMap<NodeId, AgentReport>,
    /// Services: name → (node, instance, clients).
    pub services: BTreeMap<ServiceName, (NodeId, String, usize)>,
    /// Clients admitted in the admission engine (all services).
    pub engine_clients: usize,
    /// Nodes kept out of placement by a drain.
    pub drained: Vec<NodeId>,
}

/// What an outstanding agent command is for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pending {
    /// A step of the operation on `service` at `generation`.
    Step {
        service: ServiceName,
        generation: u64,
    },
    /// Stopping `instance` on `node` (a duplicate, or a stopped service's): remembered
    /// until a report shows it done (see `reconcile`).
    Stop { node: NodeId, instance: String },
    /// Fire and forget (a reservation update): only a refusal matters.
    Forget,
}

/// The Control engine.
pub struct ControlEngine {
    node: NodeId,
    tuning: ControlTuning,
    epoch: Epoch,
    rebuilt: bool,
    acting: bool,
    /// Until when `acting` is valid (`None`: no limit).
    acting_until: Option<Instant>,
    /// Decisions (agent commands, registry copies, answers, events) that steps taken while
    /// the Control could not act produced: the rebuild's, or those that follow an agent's
    /// answer. Sent at the first step at which it may act; dropped with the engine.
    held: Vec<Output>,
    stale: bool,
    round_in_flight: bool,
    /// Live agents (membership).
    live: BTreeMap<NodeId, SocketAddr>,
    /// Last report of each agent.
    registry: BTreeMap<NodeId, AgentReport>,
    admission: AnyEngine,
    profiles: Profiles,
    /// The services: identity and placement.
    table: ServiceTable,
    /// What is in flight on each service.
    moves: Moves,
    /// Each service's QoS clocks.
    qos: QosBook,
    /// Nodes in placement, with their address.
    nodes: BTreeMap<NodeId, SocketAddr>,
    drained: BTreeSet<NodeId>,
    /// Of `drained`, the nodes drained for failing a health check (undrained on recovery).
    health_drained: BTreeSet<NodeId>,
    /// Last notice number seen per agent.
    notices_seen: HashMap<NodeId, u64>,
    /// The registry copy this node held when the Control started.
    replica: Replica,
    /// Entries of that copy whose node is live but has not answered yet: restored when it
    /// answers without them, dies, or stays silent (see `reconcile`).
    awaiting: Vec<ReplicaEntry>,
    /// Services this Control stopped on purpose (idle, an operator's stop): not restored
    /// from the desired-state log while it still lists them (its removal is on its way).
    stopped: BTreeSet<ServiceName>,
    /// Refresh rounds since the rebuild (how long `awaiting` has waited).
    rounds_since_rebuild: u32,
    /// Agents the rebuild asked (it asks again the live ones it did not).
    asked: BTreeSet<NodeId>,
    /// Rebuild rounds so far.
    rebuild_rounds: u32,
    /// The time of the input being handled (set by [`ControlEngine::handle`]), for the
    /// helpers that run deep inside a step.
    clock: Option<Instant>,
    /// The stops this Control sent, until done.
    stops: reconcile::StopBook,
    replica_version: u64,
    next_req: ReqId,
    pending: HashMap<ReqId, Pending>,
    out: Vec<Output>,
}

/// Why the engine could not be made.
#[derive(Debug, thiserror::Error)]
#[error("admission engine: {0}")]
pub struct EngineSetupError(String);

impl ControlEngine {
    /// A Control elected at `epoch` on `node`, with the registry copy this node holds and
    /// the live agents.
    pub fn new(
        node: NodeId,
        epoch: Epoch,
        tuning: ControlTuning,
        replica: Replica,
        agents: &[AgentAddr],
    ) -> Result<Self, EngineSetupError> {
        let a = &tuning.admission;
        let admission = AnyEngine::new(
            a.estimator,
            EngineConfig {
                grid: a.grid,
                policy: a.policy,
                cluster_conf: a.confidence,
                ..EngineConfig::default()
            },
        )
        .map_err(|e| EngineSetupError(e.to_string()))?;
        let profiles = Profiles::new(&replica, &tuning.admission);
        let qos = QosBook::new(
            tuning.release_grace,
            tuning.release_after,
            tuning.admission.idle_stop_after,
        );
        Ok(Self {
            node,
            tuning,
            epoch,
            rebuilt: false,
            acting: false,
            acting_until: None,
            held: Vec::new(),
            stale: false,
            round_in_flight: false,
            live: agents.iter().map(|a| (a.node, a.addr)).collect(),
            registry: BTreeMap::new(),
            admission,
            profiles,
            table: ServiceTable::default(),
            moves: Moves::default(),
            qos,
            nodes: BTreeMap::new(),
            drained: replica.drained.iter().copied().collect(),
            health_drained: replica.health_drained.iter().copied().collect(),
            notices_seen: HashMap::new(),
            replica,
            awaiting: Vec::new(),
            stopped: BTreeSet::new(),
            rounds_since_rebuild: 0,
            asked: BTreeSet::new(),
            rebuild_rounds: 0,
            stops: reconcile::StopBook::default(),
            clock: None,
            replica_version: 0,
            next_req: 1,
            pending: HashMap::new(),
            out: Vec::new(),
        })
    }

    /// The step function.
    ///
    /// Nothing is decided while the Control may not act (not rebuilt, not told it may act,
    /// or past the instant its acting is valid until): a refresh tick does nothing, API
    /// requests are refused as retryable, a refresh round begun while it acted is abandoned
    /// when its answers come back (only a refusal of our epoch is heeded), and whatever
    /// another input leads to (the rebuild's stops and restarts, the next step of a start
    /// after its agent answered) is held until it may act again.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        self.clock = Some(now);
        if self.stale {
            // A deposed Control answers what it must and does nothing else.
            if let Input::Api { id, .. } = input {
                self.reply(id, Response::Error(ApiError::NoControl));
            }
            return std::mem::take(&mut self.out);
        }
        let api = matches!(input, Input::Api { .. });
        match input {
            Input::Start => self.push_round(),
            Input::Tick => self.start_round(now),
            Input::Desired(specs) => {
                self.stopped.retain(|n| specs.iter().any(|s| &s.name == n));
                for spec in specs {
                    let name = &spec.name;
                    if !self.table.contains(name)
                        && !self.stopped.contains(name)
                        && !self.awaiting.iter().any(|e| &e.spec.name == name)
                    {
                        self.awaiting.push(ReplicaEntry {
                            spec,
                            node: NodeId(0),
                            clients: 0,
                        });
                    }
                }
            }
            Input::Agents(agents) => {
                let before = std::mem::take(&mut self.live);
                self.live = agents.iter().map(|a| (a.node, a.addr)).collect();
                if self.may_act(now) {
                    // Dead nodes at once (the failure detector already waited).
                    self.remove_dead(now);
                    // A node that joins or comes back (a healed partition) may run copies
                    // of our services started on its side: hear it now rather than at the
                    // next refresh, so that duplicates are stopped without delay.
                    if self.live.keys().any(|n| !before.contains_key(n)) {
                        self.start_round(now);
                    }
                }
            }
            Input::Reports { started, results } => {
                self.round_in_flight = false;
                if self.rebuilt && !self.may_act(now) {
                    self.abandon_round(results);
                } else {
                    self.on_reports(started, results, now);
                }
            }
            Input::Reply { req, result } => self.on_reply(req, result, now),
            Input::Api { id, req } => {
                if !self.rebuilt {
                    self.reply(id, Response::Error(ApiError::Rebuilding));
                } else if !self.may_act(now) {
                    self.reply(id, Response::Error(ApiError::NoMajority));
                } else {
                    self.api(id, req, now);
                }
            }
            Input::SetEpoch(e) => self.epoch = self.epoch.max(e),
            Input::SetActing {
                epoch,
                acting,
                until,
            } => {
                if epoch == self.epoch {
                    self.acting = acting;
                    self.acting_until = until;
                }
            }
        }
        if self.stale {
            self.held.clear();
        } else if self.may_act(now) {
            if !self.held.is_empty() {
                let mut out = std::mem::take(&mut self.held);
                out.append(&mut self.out);
                self.out = out;
            }
        } else if !api {
            // Only the answers to refused API requests (above) leave now.
            let (hold, now_out): (Vec<Output>, Vec<Output>) =
                std::mem::take(&mut self.out).into_iter().partition(|o| {
                    matches!(
                        o,
                        Output::Command { .. }
                            | Output::Replicate { .. }
                            | Output::Reply { .. }
                            | Output::Publish(_)
                    )
                });
            self.held.extend(hold);
            self.out = now_out;
        }
        std::mem::take(&mut self.out)
    }

    /// Whether the Control may decide at `now`: rebuilt, told it may act, and within the
    /// instant its acting is valid until.
    pub fn may_act(&self, now: Instant) -> bool {
        self.rebuilt && self.acting && self.acting_until.is_none_or(|u| now < u)
    }

    /// The answers of a refresh round that came back when the Control may no longer act:
    /// nothing is decided from them (its lease ran out while they travelled), but an
    /// agent that refused our epoch still deposes us.
    fn abandon_round(&mut self, results: Vec<(AgentAddr, Result<AgentReply, PeerError>)>) {
        tracing::info!(node = %self.node, epoch = self.epoch, "may not act: refresh round abandoned");
        for (_, r) in results {
            if let Ok(AgentReply::Refused { highest, .. }) = r {
                return self.go_stale(highest);
            }
        }
    }

    /// The Control's view.
    pub fn status(&self) -> ControlStatus {
        ControlStatus {
            epoch: self.epoch,
            rebuilt: self.rebuilt,
            acting: self.acting,
            agents: self.registry.clone(),
            services: self
                .table
                .iter()
                .map(|(n, s)| {
                    (
                        n.clone(),
                        (
                            s.node(),
                            s.instance().unwrap_or_default().to_string(),
                            s.client_count(),
                        ),
                    )
                })
                .collect(),
            engine_clients: self.admission.client_count(),
            drained: self.drained.iter().copied().collect(),
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    // ---------------------------------------------------------------------------------
    // Helpers shared by the submodules
    // ---------------------------------------------------------------------------------

    /// Asks every live agent for its report, unless a round is in flight or we may not act.
    fn start_round(&mut self, now: Instant) {
        if self.may_act(now) && !self.round_in_flight {
            self.replicate();
            self.push_round();
        }
    }

    /// A report round of every live agent, in flight from now.
    fn push_round(&mut self) {
        self.round_in_flight = true;
        let agents = self.live_agents();
        self.out.push(Output::Round {
            agents,
            epoch: self.epoch,
            timeout: self.tuning.request_timeout,
        });
    }

    pub(crate) fn live_agents(&self) -> Vec<AgentAddr> {
        self.live
            .iter()
            .map(|(&node, &addr)| AgentAddr { node, addr })
            .collect()
    }

    pub(crate) fn reply(&mut self, id: ApiId, resp: Response) {
        self.out.push(Output::Reply { id, resp });
    }

    pub(crate) fn publish(&mut self, ev: Event) {
        self.out.push(Output::Publish(ev));
    }

    /// An agent's address: in placement, else live.
    pub(crate) fn addr_of(&self, node: NodeId) -> Option<AgentAddr> {
        self.nodes
            .get(&node)
            .or_else(|| self.live.get(&node))
            .map(|&addr| AgentAddr { node, addr })
    }

    /// Sends `cmd` to `node` for `pending`; false when the node has no address.
    pub(crate) fn command(
        &mut self,
        node: NodeId,
        cmd: AgentCommand,
        timeout: Duration,
        pending: Pending,
    ) -> Option<ReqId> {
        let to = self.addr_of(node)?;
        let req = self.next_req;
        self.next_req += 1;
        self.pending.insert(req, pending);
        self.out.push(Output::Command {
            req,
            to,
            epoch: self.epoch,
            cmd,
            timeout,
        });
        Some(req)
    }

    /// An agent refused our epoch: we are deposed.
    pub(crate) fn go_stale(&mut self, highest: Epoch) {
        if !self.stale {
            tracing::warn!(node = %self.node, epoch = self.epoch, highest, "agent refused our epoch: stepping down");
            self.stale = true;
            self.out.push(Output::Stale {
                epoch: self.epoch,
                highest,
            });
        }
    }

    /// Sends the registry copy to every live agent node (this one included).
    pub(crate) fn replicate(&mut self) {
        self.replica_version += 1;
        let replica = Replica {
            epoch: self.epoch,
            version: self.replica_version,
            services: self
                .table
                .values()
                .map(|s| ReplicaEntry {
                    spec: s.spec().clone(),
                    node: s.node(),
                    clients: s.client_count() as u64,
                })
                // Services still waiting for their node to answer are not forgotten if
                // this Control dies before it hears from it.
                .chain(self.awaiting.iter().cloned())
                .collect(),
            drained: self.drained.iter().copied().collect(),
            profiles: self.profiles.classes().cloned().collect(),
            health_drained: self.health_drained.iter().copied().collect(),
        };
        let to = self.live_agents();
        self.out.push(Output::Replicate { to, replica });
    }

    /// The launch of `name`'s next instance and its reservation (at its current clients).
    pub(crate) fn launch_for(&self, name: &str) -> (LaunchSpec, Reservation) {
        let s = &self.table[name];
        let reservation = self.profiles.reservation_of(s.profile(), s.client_count());
        let (cpu, mem) = self.tuning.admission.limits_of(&reservation);
        let mut launch = launch_of(s.spec());
        launch.cpu_cores = cpu;
        launch.memory_bytes = mem;
        (launch, reservation)
    }

    pub(crate) fn placement(&self, name: &str) -> Option<Placement> {
        self.table.get(name)?.placement()
    }

    /// A new service entry (not started yet): the admitted service `a` on `node`.
    pub(crate) fn insert_service(
        &mut self,
        spec: ServiceSpec,
        a: Evicted,
        source: ProfileSource,
        node: NodeId,
        generation: u64,
        now: Instant,
    ) -> ServiceName {
        let name = self.table.insert(spec, a, source, node, generation, now);
        self.stopped.remove(&name);
        // Admitted: whatever waited to restore it (the log's word arrives before the
        // engine decides, a registry copy's entry) is done.
        self.awaiting.retain(|e| e.spec.name != name);
        // Nothing of a former service of that name survives in the other books.
        self.moves.forget(&name);
        self.qos.track(&name, now);
        name
    }

    /// Forgets a service everywhere: its copy holds and its admission are released; what
    /// it still had (instance, waiters) is returned for the caller to stop or answer.
    pub(crate) fn remove_service(&mut self, name: &str) -> Option<Removed> {
        self.release_copy(name);
        let s = self.table.remove(name)?;
        self.moves.forget(name);
        self.qos.forget(name);
        let _ = self.admission.release_service(s.sid);
        Some(s)
    }

    /// A class profile was stored: say so.
    pub(crate) fn profile_stored(&mut self, stored: &Stored) {
        self.publish(Event::ProfileStored {
            class: stored.class.clone(),
            source: stored.source,
            version: stored.version,
        });
    }
}

/// The instance name of a service's `generation`.
pub(crate) fn instance_name(service: &str, generation: u64) -> String {
    let clean: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}.{generation}")
}

/// The generation in an instance name.
pub(crate) fn gen_of(instance: &str) -> u64 {
    instance
        .rsplit_once('.')
        .and_then(|(_, g)| g.parse().ok())
        .unwrap_or(0)
}

/// A service spec as an Agent86 launch: the service's identity travels as a typed field
/// ([`ServiceIdentity`]) that the agent reports back, so that a new Control can rebuild the
/// spec from a report ([`spec_of`]).
pub fn launch_of(spec: &ServiceSpec) -> LaunchSpec {
    LaunchSpec {
        service: spec.class.clone(),
        identity: Some(Box::new(ServiceIdentity {
            name: spec.name.clone(),
            per_client_bps: spec.per_client_bps,
            duration_ms: spec.duration_ms,
        })),
        command: spec.command.clone(),
        env: spec.env.clone(),
        cpu_cores: None,
        memory_bytes: None,
    }
}

/// The service spec behind a launch made by [`launch_of`] (`None` for launches without a
/// service identity).
pub fn spec_of(l: &LaunchSpec) -> Option<ServiceSpec> {
    let id = l.identity.as_ref()?;
    Some(ServiceSpec {
        name: id.name.clone(),
        class: l.service.clone(),
        command: l.command.clone(),
        env: l.env.clone(),
        per_client_bps: id.per_client_bps,
        duration_ms: id.duration_ms,
    })
}

/// A node's capacity, from its agent's report, with the configured VR and C.
pub(crate) fn node_spec(r: &AgentReport, a: &AdmissionSettings) -> NodeSpec {
    let mut spec = match r.usage {
        Some(u) if u.cpus > 0 && u.mem_total_bytes > 0 => NodeSpec::new(
            u.mem_total_bytes,
            u.cpus as f64,
            u.nic_capacity_bps.max(1) as f64,
        ),
        // Before the agent's first sample: a modest node, corrected by nothing later (the
        // engine keeps the spec it was added with), so err on the small side.
        _ => NodeSpec::new(1 << 30, 1.0, 1e9),
    };
    spec.vr = a.vr;
    spec.conf = a.confidence;
    spec
}
