//! Control: runs only on the elected node (thesis §4, §5.6; DESIGN §1–§4).
//!
//! Lifecycle, driven by the node's election engine:
//! 1. spawned at a new epoch when this node wins an election;
//! 2. **rebuilds** its soft state from every live Agent86's report before it acts
//!    (DESIGN §2.5): each running instance is adopted into the admission engine on the node
//!    that runs it (with the clients its instance reports), and duplicates started during a
//!    partition are stopped (the instance with more clients is kept). Then it emits
//!    [`ControlEvent::Rebuilt`] so the election engine lets it act;
//! 3. refreshes every `refresh` interval. Every request carries its epoch; an agent that has
//!    seen a higher one refuses it, and the Control then emits [`ControlEvent::Stale`] and
//!    stops: a deposed ("zombie") Control cannot act;
//! 4. stopped by the node when the election engine says to step down.
//!
//! While acting it serves the message API with the `smart_admission` engine:
//! - `AdmitService`: eq. 4.1 cluster test, per-node test, placement (worst-fit over the
//!   tournament tree), MS migrations when nothing fits; then `Start` on the chosen Agent86;
//! - `AdmitClient`: the Smart-GloVE rule (§5.6): the client joins its service's instance; if
//!   that node is full, MS moves another service away first;
//! - `ReleaseClient`, `StopService`, `Locate`, `Services`;
//! - `Drain`: every service of the node is re-admitted elsewhere and live-migrated; a node
//!   whose agent reports a failed health check is drained the same way (thesis §4.2.2).
//!
//! Reactions to what agents observe (timings in [`ControlTuning`]):
//! - an instance flagged by its Agent86 as persistently over its reservation (thesis
//!   §4.1.1, [`AgentEvent::Anomaly`]) is moved live to another node where its service fits
//!   (`Engine::move_elsewhere`, the same migration path as drain and MS;
//!   `Event::Migrated{reason: "anomaly"}`), at most once per service per
//!   `anomaly_move_every`; otherwise it stays and `Event::Notice` says why;
//! - viewers leave without telling the front-end (it answered a redirect): when an instance
//!   reports fewer connected clients than were admitted (the `clients` of the workload
//!   control API `usage`) for `release_after` consecutive refreshes, outside the
//!   `release_grace` after an admission, start or migration, the surplus is released in the
//!   admission engine and `Event::Notice` says so.
//!
//! Node failures (an agent leaves the live set that membership publishes) re-admit the dead
//! node's services elsewhere; a service whose instance crashed past its restart policy is
//! re-admitted too. Migrations go through both Agent86s and the workload control API
//! (pre-copy `restore` on the target, then `handoff` on the source); a workload without the
//! API is restarted on the target instead and the operator is told (event + warning).
//!
//! Requests to agents run in spawned tasks whose results come back as messages, so the
//! mailbox (API requests, status) is never blocked on the network.
//!
//! Profiles: services of class `distributor` (and any class) get a profile built from the
//! thesis's measured distributor shape (`smart_admission::synthetic`) at the spec's
//! per-client bitrate, registered once per `(class, bitrate)`.
//!
//! ## Layout
//! - [`Control`], [`ControlMsg`], [`ControlStatus`], [`ControlEvent`]: the actor.
//! - `Registry` / `Svc`: the services as the Control knows them.
//! - `launch_of` / `spec_of`: a service spec to an Agent86 launch and back (what rebuild
//!   reads from reports).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smart_admission::synthetic::{Gen, VideoSpec, distributor};
use smart_admission::{
    ClientId, Empirical, Engine, EngineConfig, Evicted, NodeKey, NodeSpec, ProfileId, ServiceId,
};
use smart_api::{ApiError, Event, Placement, Request, Response, ServiceSpec, ServiceStatus};
use smart_supervision::{Epoch, NodeId};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::proto::{
    AgentCommand, AgentEvent, AgentReport, InstanceInfo, InstanceState, LaunchSpec, PeerClient,
    PeerError, PeerRequest, PeerResponse, ReplicaEntry, Reservation,
};

/// Environment variable carrying the service name in an instance's launch.
pub const ENV_SERVICE: &str = "SMART_SERVICE";
/// Environment variable carrying the per-client bitrate in an instance's launch.
pub const ENV_PER_CLIENT_BPS: &str = "SMART_PER_CLIENT_BPS";

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
/// Callback through which the Control publishes message-API [`Event`]s to subscribers.
pub type Publish = Arc<dyn Fn(Event) + Send + Sync>;

/// Why a service moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Ms,
    Drain,
    NodeFailure,
    Crashed,
    Health,
    Anomaly,
}

impl Why {
    fn as_str(self) -> &'static str {
        match self {
            Why::Ms => "ms",
            Why::Drain => "drain",
            Why::NodeFailure => "node-failure",
            Why::Crashed => "crashed",
            Why::Health => "health",
            Why::Anomaly => "anomaly",
        }
    }
}

/// Control's messages.
pub enum ControlMsg {
    /// Time to refresh the registry from the agents.
    Refresh,
    /// Results of a refresh round, and when the round started.
    Reports(
        std::time::Instant,
        Vec<(AgentAddr, Result<PeerResponse, PeerError>)>,
    ),
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
    /// The set of live agents changed (membership).
    AgentsChanged,
    /// A start or move finished (internal).
    Placed(Box<Outcome>),
}

/// The result of starting or moving a service's instance (internal).
pub struct Outcome {
    service: String,
    generation: u64,
    result: Result<(u64, InstanceInfo), String>,
    from: Option<u64>,
    why: Option<Why>,
    /// Old instance left running by a failed live migration (stopped by the task).
    note: Option<String>,
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
    pub agents: BTreeMap<u64, AgentReport>,
    /// Services: name → (node, instance, clients).
    pub services: BTreeMap<String, (u64, String, usize)>,
    /// Clients admitted in the admission engine (all services).
    pub engine_clients: usize,
}

/// How the Control reacts to what agents observe (anomalies, viewers leaving).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlTuning {
    /// At most one anomaly-triggered move per service within this time: one anomaly (or
    /// a service that is over its profile wherever it runs) does not cause repeated moves.
    pub anomaly_move_every: Duration,
    /// No client is released from usage reports within this time after a client admission,
    /// a start or a migration of the service: viewers are still connecting or reconnecting.
    pub release_grace: Duration,
    /// Consecutive refreshes in which an instance must report fewer connected clients than
    /// were admitted before the surplus is released.
    pub release_after: u32,
}

impl Default for ControlTuning {
    fn default() -> Self {
        ControlTuning {
            anomaly_move_every: Duration::from_secs(60),
            release_grace: Duration::from_secs(10),
            release_after: 2,
        }
    }
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
    /// Where message-API events go (subscribers).
    pub publish: Publish,
    /// Registry refresh period.
    pub refresh: Duration,
    /// Timeout of each request to an agent.
    pub request_timeout: Duration,
    /// The registry copy this node last received from a Control (empty if none).
    pub replica: Vec<ReplicaEntry>,
    /// Reactions to anomalies and departed viewers.
    pub tuning: ControlTuning,
}

/// A service as the Control knows it.
struct Svc {
    spec: ServiceSpec,
    sid: ServiceId,
    profile: ProfileId,
    node: u64,
    /// Current instance (`<name>.<generation>`) and its endpoint/socket once started.
    generation: u64,
    info: Option<InstanceInfo>,
    clients: Vec<ClientId>,
    /// A start or move is in flight.
    busy: bool,
    /// Client admissions waiting for the first start.
    waiting: Vec<RpcReplyPort<Response>>,
    /// When its current instance was confirmed (reports older than this may not list it).
    placed_at: std::time::Instant,
    /// When its last client was admitted.
    admitted_at: std::time::Instant,
    /// Consecutive refreshes in which its instance reported fewer clients than admitted.
    fewer_seen: u32,
    /// When it was last moved because of an anomaly.
    anomaly_moved: Option<std::time::Instant>,
}

/// Control's mutable state.
pub struct ControlState {
    epoch: Epoch,
    rebuilt: bool,
    acting: bool,
    registry: BTreeMap<u64, AgentReport>,
    stale: bool,
    engine: Engine<Empirical>,
    profiles: HashMap<(String, u64), ProfileId>,
    services: BTreeMap<String, Svc>,
    by_sid: HashMap<ServiceId, String>,
    /// Nodes in the engine, with their address.
    nodes: BTreeMap<u64, SocketAddr>,
    drained: BTreeSet<u64>,
    /// Last notice number seen per agent.
    notices_seen: HashMap<u64, u64>,
}

fn instance_name(service: &str, generation: u64) -> String {
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

fn gen_of(instance: &str) -> u64 {
    instance
        .rsplit_once('.')
        .and_then(|(_, g)| g.parse().ok())
        .unwrap_or(0)
}

/// A service spec as an Agent86 launch: the name and bitrate travel in the environment so
/// that a new Control can rebuild the spec from a report ([`spec_of`]).
pub fn launch_of(spec: &ServiceSpec) -> LaunchSpec {
    let mut env = spec.env.clone();
    env.push((ENV_SERVICE.into(), spec.name.clone()));
    if let Some(b) = spec.per_client_bps {
        env.push((ENV_PER_CLIENT_BPS.into(), b.to_string()));
    }
    LaunchSpec {
        service: spec.class.clone(),
        command: spec.command.clone(),
        env,
        cpu_cores: None,
        memory_bytes: None,
    }
}

/// The service spec behind a launch made by [`launch_of`] (`None` for other launches).
pub fn spec_of(l: &LaunchSpec) -> Option<ServiceSpec> {
    let get = |k: &str| l.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Some(ServiceSpec {
        name: get(ENV_SERVICE)?,
        class: l.service.clone(),
        command: l.command.clone(),
        env: l
            .env
            .iter()
            .filter(|(k, _)| k != ENV_SERVICE && k != ENV_PER_CLIENT_BPS)
            .cloned()
            .collect(),
        per_client_bps: get(ENV_PER_CLIENT_BPS).and_then(|v| v.parse().ok()),
    })
}

fn node_spec(r: &AgentReport) -> NodeSpec {
    match r.usage {
        Some(u) if u.cpus > 0 && u.mem_total_bytes > 0 => NodeSpec::new(
            u.mem_total_bytes,
            u.cpus as f64,
            u.nic_capacity_bps.max(1) as f64,
        ),
        // Before the agent's first sample: a modest node, corrected by nothing later (the
        // engine keeps the spec it was added with), so err on the small side.
        _ => NodeSpec::new(1 << 30, 1.0, 1e9),
    }
}

impl ControlState {
    fn profile(&mut self, spec: &ServiceSpec) -> Result<ProfileId, String> {
        let bps = spec.per_client_bps.unwrap_or(400_000);
        let key = (spec.class.clone(), bps);
        if let Some(p) = self.profiles.get(&key) {
            return Ok(*p);
        }
        let video = VideoSpec {
            bitrate_bps: bps as f64,
            duration_s: 600.0,
            cache_fraction: 0.2,
        };
        let p = distributor(
            &video,
            &Gen {
                len: 64,
                seed: bps,
                shared: None,
            },
        );
        let id = self
            .engine
            .register_profile(&p)
            .map_err(|e| e.to_string())?;
        self.profiles.insert(key, id);
        Ok(id)
    }

    fn reservation(spec: &ServiceSpec, clients: usize) -> Reservation {
        let bps = spec.per_client_bps.unwrap_or(400_000) as f64;
        Reservation {
            cpu_cores: 0.05,
            net_bps: bps * (clients.max(1) as f64),
            mem_bytes: VideoSpec {
                bitrate_bps: bps,
                duration_s: 600.0,
                cache_fraction: 0.2,
            }
            .working_set_bytes(),
        }
    }

    fn placement(&self, name: &str) -> Option<Placement> {
        let s = self.services.get(name)?;
        Some(Placement {
            service: name.to_string(),
            node: s.node,
            endpoint: s.info.as_ref()?.endpoint.clone().unwrap_or_default(),
        })
    }
}

fn rejected(r: impl std::fmt::Display) -> Response {
    Response::Error(ApiError::Rejected {
        reason: r.to_string(),
    })
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

    fn stale(&self, st: &mut ControlState, highest: Epoch) {
        if !st.stale {
            warn!(node = %self.node, epoch = st.epoch, highest, "agent refused our epoch: stepping down");
            st.stale = true;
            (self.events)(ControlEvent::Stale {
                epoch: st.epoch,
                highest,
            });
        }
    }

    /// Applies one round of answers. Returns false when the Control learned it is stale.
    fn apply(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        started: std::time::Instant,
        results: Vec<(AgentAddr, Result<PeerResponse, PeerError>)>,
    ) -> bool {
        let first = !st.rebuilt;
        let mut answered = BTreeSet::new();
        for (agent, r) in results {
            match r {
                Ok(PeerResponse::Report(rep)) => {
                    if !st.nodes.contains_key(&agent.node.0)
                        && !st.drained.contains(&agent.node.0)
                        && st
                            .engine
                            .add_node(NodeKey(agent.node.0), node_spec(&rep))
                            .is_ok()
                    {
                        info!(node = %self.node, agent = %agent.node, "agent joins placement");
                    }
                    st.nodes.insert(agent.node.0, agent.addr);
                    st.registry.insert(agent.node.0, rep);
                    answered.insert(agent.node.0);
                }
                Ok(PeerResponse::Refused { highest, .. }) => {
                    self.stale(st, highest);
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
        if first {
            self.adopt_all(st);
        } else {
            self.reconcile(myself, st, started, &answered);
        }
        true
    }

    /// After a rebuild: services in the replicated registry that no live agent runs (their
    /// node died together with the old Control) are admitted again and started.
    fn restore_replica(&self, myself: &ActorRef<ControlMsg>, st: &mut ControlState) {
        for e in &self.replica {
            if st.services.contains_key(&e.spec.name) {
                continue;
            }
            let Ok(profile) = st.profile(&e.spec) else {
                continue;
            };
            match st
                .engine
                .admit_service(profile, e.clients.min(u32::MAX as u64) as u32)
            {
                Ok(d) => {
                    warn!(service = %e.spec.name, dead = e.node, node = d.node.0,
                        "service known only from the registry copy: restarting it");
                    let name = e.spec.name.clone();
                    st.by_sid.insert(d.service, name.clone());
                    st.services.insert(
                        name.clone(),
                        Svc {
                            spec: e.spec.clone(),
                            sid: d.service,
                            profile,
                            node: d.node.0,
                            // Above any generation the old Control started, so a copy that
                            // reappears later is the stray one.
                            generation: 1000,
                            info: None,
                            clients: d.clients,
                            busy: true,
                            waiting: Vec::new(),
                            placed_at: std::time::Instant::now(),
                            admitted_at: std::time::Instant::now(),
                            fewer_seen: 0,
                            anomaly_moved: None,
                        },
                    );
                    self.start(myself, st, &name, Some(e.node), Why::NodeFailure);
                }
                Err(r) => (self.publish)(Event::Lost {
                    service: e.spec.name.clone(),
                    reason: r.to_string(),
                }),
            }
        }
    }

    /// Sends the registry copy to every live agent node (this one included).
    fn replicate(&self, st: &ControlState) {
        let copy: Vec<ReplicaEntry> = st
            .services
            .values()
            .map(|s| ReplicaEntry {
                spec: s.spec.clone(),
                node: s.node,
                clients: s.clients.len() as u64,
            })
            .collect();
        for a in self.agents.borrow().iter() {
            let (peers, addr, req, t) = (
                self.peers.clone(),
                a.addr,
                PeerRequest::Replica(copy.clone()),
                self.request_timeout,
            );
            tokio::spawn(async move {
                let _ = peers.request(addr, req, t).await;
            });
        }
    }

    /// Rebuild: every instance in the reports joins the engine where it runs; duplicates
    /// (a partition, or a start that a dead Control never confirmed) are stopped.
    fn adopt_all(&self, st: &mut ControlState) {
        let mut found: BTreeMap<String, Vec<(u64, InstanceInfo)>> = BTreeMap::new();
        for (node, rep) in &st.registry {
            for i in &rep.instances {
                if matches!(i.state, InstanceState::Running | InstanceState::Starting)
                    && let Some(spec) = spec_of(&i.launch)
                {
                    found.entry(spec.name).or_default().push((*node, i.clone()));
                }
            }
        }
        let mut next_sid = 1u64;
        let mut next_client = 1u64;
        for (name, mut copies) in found {
            // Keep the copy with most clients, then the newest generation.
            copies.sort_by_key(|(_, i)| {
                (
                    std::cmp::Reverse(i.usage.as_ref().and_then(|u| u.clients).unwrap_or(0)),
                    std::cmp::Reverse(gen_of(&i.instance)),
                )
            });
            let (node, info) = copies.remove(0);
            for (n, dup) in copies {
                warn!(service = %name, node = n, instance = %dup.instance, "stopping a duplicate instance");
                self.send(
                    st,
                    n,
                    AgentCommand::Stop {
                        instance: dup.instance,
                    },
                );
            }
            let Some(spec) = spec_of(&info.launch) else {
                continue;
            };
            let Ok(profile) = st.profile(&spec) else {
                continue;
            };
            let n = info.usage.as_ref().and_then(|u| u.clients).unwrap_or(0) as u64;
            let clients: Vec<ClientId> = (0..n).map(|k| ClientId(next_client + k)).collect();
            next_client += n;
            let sid = ServiceId(next_sid);
            next_sid += 1;
            let ev = Evicted {
                service: sid,
                profile,
                clients: clients.clone(),
            };
            if let Err(e) = st.engine.adopt(&ev, NodeKey(node)) {
                warn!(service = %name, error = %e, "cannot adopt a running service");
                continue;
            }
            info!(service = %name, node, instance = %info.instance, clients = n, "adopted a running service");
            st.by_sid.insert(sid, name.clone());
            st.services.insert(
                name,
                Svc {
                    spec,
                    sid,
                    profile,
                    node,
                    generation: gen_of(&info.instance),
                    info: Some(info),
                    clients,
                    busy: false,
                    waiting: Vec::new(),
                    placed_at: std::time::Instant::now(),
                    admitted_at: std::time::Instant::now(),
                    fewer_seen: 0,
                    anomaly_moved: None,
                },
            );
        }
    }

    /// Refresh: nodes gone from the live set, instances lost, notices, strays.
    fn reconcile(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        started: std::time::Instant,
        answered: &BTreeSet<u64>,
    ) {
        let live: BTreeSet<u64> = self.agents.borrow().iter().map(|a| a.node.0).collect();
        let dead: Vec<u64> = st
            .nodes
            .keys()
            .filter(|n| !live.contains(n))
            .copied()
            .collect();
        for n in dead {
            self.node_down(myself, st, n);
        }
        // Notices: a crashed instance given up by its agent is re-admitted elsewhere.
        let mut crashed = Vec::new();
        let mut unhealthy = Vec::new();
        let mut anomalies = Vec::new();
        for (node, rep) in &st.registry {
            let mut seen = st.notices_seen.get(node).copied().unwrap_or(0);
            let max = rep.notices.iter().map(|(s, _)| *s).max().unwrap_or(0);
            if max < seen {
                // A restarted agent numbers from 1 again.
                seen = 0;
            }
            for (seq, ev) in &rep.notices {
                if *seq <= seen {
                    continue;
                }
                match ev {
                    AgentEvent::InstanceFailed { instance, .. } => {
                        crashed.push((*node, instance.clone()))
                    }
                    AgentEvent::NodeHealth {
                        check,
                        healthy: false,
                        detail,
                    } => unhealthy.push((*node, format!("{check}: {detail}"))),
                    AgentEvent::Anomaly {
                        instance,
                        resource,
                        observed,
                        reserved,
                    } => anomalies.push((
                        *node,
                        instance.clone(),
                        format!("{resource:?} at {observed:.3}, reserved {reserved:.3}"),
                    )),
                    _ => {}
                }
            }
            st.notices_seen.insert(*node, max);
        }
        // A node failing a health check is drained (thesis §4.2.2: migrate its services
        // before it fails).
        for (node, why) in unhealthy {
            if st.drained.contains(&node) || !st.nodes.contains_key(&node) {
                continue;
            }
            warn!(node, %why, "node unhealthy: draining it");
            let _ = self.drain_node(myself, st, node, Why::Health);
        }
        for (node, instance, what) in anomalies {
            self.on_anomaly(myself, st, node, &instance, &what);
        }
        self.release_departed(st, answered);
        for (node, instance) in crashed {
            let name = st
                .services
                .iter()
                .find(|(_, s)| {
                    s.node == node && s.info.as_ref().is_some_and(|i| i.instance == instance)
                })
                .map(|(n, _)| n.clone());
            if let Some(name) = name {
                warn!(service = %name, node, %instance, "instance failed past its restart policy: re-admitting");
                self.readmit(myself, st, &name, Why::Crashed);
            }
        }
        // Lost instances: the node answered a round that began after the instance was
        // confirmed, and does not list it (the agent restarted, or gave up on it).
        let lost: Vec<String> = st
            .services
            .iter()
            .filter(|(_, s)| !s.busy && s.placed_at < started && answered.contains(&s.node))
            .filter(|(_, s)| {
                let Some(info) = &s.info else { return false };
                !st.registry
                    .get(&s.node)
                    .is_some_and(|r| r.instances.iter().any(|i| i.instance == info.instance))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in lost {
            warn!(service = %name, "instance missing from its node's report: re-admitting");
            self.readmit(myself, st, &name, Why::Crashed);
        }
        // Strays: instances of known services that are not their current instance.
        let mut strays = Vec::new();
        for (node, rep) in &st.registry {
            for i in &rep.instances {
                let Some(spec) = spec_of(&i.launch) else {
                    continue;
                };
                if i.state != InstanceState::Running {
                    continue;
                }
                if let Some(s) = st.services.get(&spec.name)
                    && !s.busy
                    && gen_of(&i.instance) < s.generation
                {
                    strays.push((*node, i.instance.clone()));
                }
            }
        }
        for (node, instance) in strays {
            warn!(node, %instance, "stopping a stale duplicate instance");
            self.send(st, node, AgentCommand::Stop { instance });
        }
    }

    /// An instance runs persistently over its reservation (thesis §4.1.1): move it live to
    /// another node where its service fits, through the same path as drain and MS, at most
    /// once per service per `tuning.anomaly_move_every`; otherwise keep it and say why.
    fn on_anomaly(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        node: u64,
        instance: &str,
        what: &str,
    ) {
        let now = std::time::Instant::now();
        let Some((name, s)) = st.services.iter_mut().find(|(_, s)| {
            s.node == node && s.info.as_ref().is_some_and(|i| i.instance == instance)
        }) else {
            return;
        };
        let name = name.clone();
        let kept = |why: String| {
            warn!(service = %name, node, %instance, %what, %why, "anomaly: service kept where it is");
            (self.publish)(Event::Notice {
                service: name.clone(),
                node,
                reason: format!("anomaly ({what}): kept on n{node}: {why}"),
            });
        };
        if s.busy {
            return kept("a start or move is already in progress".into());
        }
        if let Some(t) = s.anomaly_moved
            && now.duration_since(t) < self.tuning.anomaly_move_every
        {
            return kept(format!(
                "already moved for an anomaly {:.0} s ago (at most one move per {:.0} s)",
                now.duration_since(t).as_secs_f64(),
                self.tuning.anomaly_move_every.as_secs_f64()
            ));
        }
        let sid = s.sid;
        match st.engine.move_elsewhere(sid) {
            Ok(to) => {
                s.anomaly_moved = Some(now);
                warn!(service = %name, node, %instance, %what, to = to.0, "anomaly: moving the service");
                self.migrate(myself, st, sid, node, to.0, Why::Anomaly);
            }
            Err(r) => kept(format!("no other node fits ({r})")),
        }
    }

    /// Viewers leave without telling the front-end (it answered a redirect): when an
    /// instance reports fewer connected clients than were admitted for its service, for
    /// `tuning.release_after` consecutive refreshes and outside the grace period after an
    /// admission, start or migration, the surplus is released in the admission engine.
    fn release_departed(&self, st: &mut ControlState, answered: &BTreeSet<u64>) {
        let now = std::time::Instant::now();
        let mut released = Vec::new();
        for (name, s) in st.services.iter_mut() {
            let reported = match (&s.info, answered.contains(&s.node)) {
                (Some(info), true) if !s.busy => st
                    .registry
                    .get(&s.node)
                    .and_then(|r| r.instances.iter().find(|i| i.instance == info.instance))
                    .and_then(|i| i.usage.as_ref())
                    .and_then(|u| u.clients),
                _ => None,
            };
            let admitted = s.clients.len();
            let recent =
                now.duration_since(s.placed_at.max(s.admitted_at)) < self.tuning.release_grace;
            let Some(reported) = reported.map(|r| r as usize) else {
                continue;
            };
            if recent || reported >= admitted {
                s.fewer_seen = 0;
                continue;
            }
            s.fewer_seen += 1;
            if s.fewer_seen < self.tuning.release_after {
                continue;
            }
            s.fewer_seen = 0;
            let gone = s.clients.split_off(reported);
            released.push((name.clone(), s.node, gone, reported, admitted));
        }
        for (name, node, gone, reported, admitted) in released {
            for c in &gone {
                let _ = st.engine.release_client(*c);
            }
            info!(service = %name, node, released = gone.len(), reported, admitted,
                "viewers left: released their admissions");
            (self.publish)(Event::Notice {
                service: name,
                node,
                reason: format!(
                    "released {} client(s): its instance reports {reported} connected, {admitted} were admitted",
                    gone.len()
                ),
            });
        }
    }

    /// Fire-and-forget command to an agent (stale answers are noticed at the next refresh).
    fn send(&self, st: &ControlState, node: u64, cmd: AgentCommand) {
        let Some(addr) = st.nodes.get(&node).copied().or_else(|| {
            self.agents
                .borrow()
                .iter()
                .find(|a| a.node.0 == node)
                .map(|a| a.addr)
        }) else {
            return;
        };
        let peers = self.peers.clone();
        let req = PeerRequest::Agent {
            from: self.node,
            epoch: st.epoch,
            cmd,
        };
        let t = self.request_timeout;
        tokio::spawn(async move {
            let _ = peers.request(addr, req, t).await;
        });
    }

    fn node_down(&self, myself: &ActorRef<ControlMsg>, st: &mut ControlState, node: u64) {
        st.nodes.remove(&node);
        st.registry.remove(&node);
        st.notices_seen.remove(&node);
        let evicted = st.engine.node_failed(NodeKey(node)).unwrap_or_default();
        warn!(node = %self.node, dead = node, services = evicted.len(), "node down: re-admitting its services");
        for ev in evicted {
            let Some(name) = st.by_sid.get(&ev.service).cloned() else {
                continue;
            };
            match st.engine.readmit(&ev) {
                Ok(d) => {
                    for m in &d.migrations {
                        self.migrate(myself, st, m.service, m.from.0, m.to.0, Why::Ms);
                    }
                    let Some(s) = st.services.get_mut(&name) else {
                        continue;
                    };
                    s.node = d.node.0;
                    self.start(myself, st, &name, Some(node), Why::NodeFailure);
                }
                Err(r) => {
                    warn!(service = %name, reason = %r, "service lost: no node can take it");
                    if let Some(s) = st.services.remove(&name) {
                        st.by_sid.remove(&s.sid);
                    }
                    (self.publish)(Event::Lost {
                        service: name,
                        reason: r.to_string(),
                    });
                }
            }
        }
    }

    /// Re-admits a service whose instance is gone from its node.
    fn readmit(&self, myself: &ActorRef<ControlMsg>, st: &mut ControlState, name: &str, why: Why) {
        let Some(s) = st.services.get(name) else {
            return;
        };
        let (sid, profile, from) = (s.sid, s.profile, s.node);
        let clients = st.engine.release_service(sid).unwrap_or_default();
        let ev = Evicted {
            service: sid,
            profile,
            clients,
        };
        match st.engine.readmit(&ev) {
            Ok(d) => {
                if let Some(s) = st.services.get_mut(name) {
                    s.node = d.node.0;
                }
                self.start(myself, st, name, Some(from), why);
            }
            Err(r) => {
                if let Some(s) = st.services.remove(name) {
                    st.by_sid.remove(&s.sid);
                }
                (self.publish)(Event::Lost {
                    service: name.to_string(),
                    reason: r.to_string(),
                });
            }
        }
    }

    /// Starts the service's next instance on its (engine-chosen) node.
    fn start(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        name: &str,
        from: Option<u64>,
        why: Why,
    ) {
        let Some(s) = st.services.get_mut(name) else {
            return;
        };
        s.generation += 1;
        s.busy = true;
        // The old instance is gone: clients wait for the new one (Locate and AdmitClient
        // queue until it runs) instead of being sent to a dead endpoint.
        s.info = None;
        let generation = s.generation;
        let node = s.node;
        let instance = instance_name(name, generation);
        let cmd = AgentCommand::Start {
            instance,
            launch: launch_of(&s.spec),
            reservation: ControlState::reservation(&s.spec, s.clients.len()),
        };
        let addr = st.nodes.get(&node).copied();
        let peers = self.peers.clone();
        let (me, epoch, from_node, t) = (myself.clone(), st.epoch, self.node, self.request_timeout);
        let service = name.to_string();
        tokio::spawn(async move {
            let result = match addr {
                None => Err(format!("node n{node} has no address")),
                Some(addr) => agent_call(&*peers, addr, from_node, epoch, cmd, t * 5).await,
            }
            .map(|info| (node, info));
            let _ = me.send_message(ControlMsg::Placed(Box::new(Outcome {
                service,
                generation,
                result,
                from,
                why: from.map(|_| why),
                note: None,
            })));
        });
    }

    /// Moves a service from `from` to `to` (the engine already placed it at `to`): live
    /// migration through the workload control API, or a restart on the target when the
    /// instance cannot hand over.
    fn migrate(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        sid: ServiceId,
        from: u64,
        to: u64,
        why: Why,
    ) {
        let Some(name) = st.by_sid.get(&sid).cloned() else {
            return;
        };
        let (src_addr, dst_addr) = (st.nodes.get(&from).copied(), st.nodes.get(&to).copied());
        let Some(s) = st.services.get_mut(&name) else {
            return;
        };
        s.node = to;
        let Some(old) = s.info.clone() else {
            // Not started yet: its start will go to the new node.
            return;
        };
        s.generation += 1;
        s.busy = true;
        let generation = s.generation;
        let new_instance = instance_name(&name, generation);
        let launch = launch_of(&s.spec);
        let reservation = ControlState::reservation(&s.spec, s.clients.len());
        let peers = self.peers.clone();
        let (me, epoch, me_node, t) = (myself.clone(), st.epoch, self.node, self.request_timeout);
        tokio::spawn(async move {
            let (Some(src), Some(dst)) = (src_addr, dst_addr) else {
                return;
            };
            let mut note = None;
            if !old.speaks_api {
                // No workload control API: restart on the target, then stop the old one;
                // its clients reconnect through the front-end. The operator is told.
                warn!(service = %name, instance = %old.instance,
                    "no workload control API: restarting elsewhere instead of live migration");
                let start = AgentCommand::Start {
                    instance: new_instance.clone(),
                    launch,
                    reservation,
                };
                let result = agent_call(&*peers, dst, me_node, epoch, start, t * 5).await;
                if result.is_ok() {
                    let stop = AgentCommand::Stop {
                        instance: old.instance.clone(),
                    };
                    let _ = agent_call(&*peers, src, me_node, epoch, stop, t * 5).await;
                }
                let _ = me.send_message(ControlMsg::Placed(Box::new(Outcome {
                    service: name,
                    generation,
                    result: result.map(|i| (to, i)),
                    from: Some(from),
                    why: Some(why),
                    note: Some("no workload control API".into()),
                })));
                return;
            }
            let migrate_in = AgentCommand::MigrateIn {
                instance: new_instance.clone(),
                launch: launch.clone(),
                reservation,
                source: from,
                source_control: old.control_socket.clone(),
                reserved_as: None,
            };
            let mut result = agent_call(&*peers, dst, me_node, epoch, migrate_in, t * 30).await;
            if result.is_err() {
                // Restore failed (no control API?): a fresh start on the target.
                note = Some("restore failed; restarted on the target".to_string());
                let start = AgentCommand::Start {
                    instance: new_instance.clone(),
                    launch,
                    reservation,
                };
                result = agent_call(&*peers, dst, me_node, epoch, start, t * 5).await;
            }
            if let Ok(info) = &result {
                let out = AgentCommand::MigrateOut {
                    instance: old.instance.clone(),
                    target: to,
                    target_url: info.endpoint.clone().unwrap_or_default(),
                };
                if let Err(e) = agent_call(&*peers, src, me_node, epoch, out, t * 10).await {
                    note = Some(format!(
                        "no live hand-over ({e}); the old instance was stopped and its clients reconnect through the front-end"
                    ));
                    let stop = AgentCommand::Stop {
                        instance: old.instance.clone(),
                    };
                    let _ = agent_call(&*peers, src, me_node, epoch, stop, t * 5).await;
                }
            }
            let _ = me.send_message(ControlMsg::Placed(Box::new(Outcome {
                service: name,
                generation,
                result: result.map(|i| (to, i)),
                from: Some(from),
                why: Some(why),
                note,
            })));
        });
    }

    fn on_placed(&self, myself: &ActorRef<ControlMsg>, st: &mut ControlState, o: Outcome) {
        let Some(s) = st.services.get_mut(&o.service) else {
            return;
        };
        if s.generation != o.generation {
            return;
        }
        s.busy = false;
        match o.result {
            Ok((node, info)) => {
                info!(service = %o.service, node, instance = %info.instance, endpoint = ?info.endpoint, "service instance running");
                s.node = node;
                s.info = Some(info);
                s.placed_at = std::time::Instant::now();
                let p = st.placement(&o.service).expect("just set");
                if let Some(note) = &o.note {
                    warn!(service = %o.service, %note, "service restarted instead of live-migrated");
                }
                match (o.from, o.why) {
                    (Some(from), Some(why)) => (self.publish)(Event::Migrated {
                        service: o.service.clone(),
                        from,
                        to: node,
                        reason: match &o.note {
                            Some(n) => format!("{} (restarted: {n})", why.as_str()),
                            None => why.as_str().to_string(),
                        },
                    }),
                    _ => (self.publish)(Event::Admitted(p.clone())),
                }
                // Answered after the event, so a client that hears back sees it published.
                let waiting =
                    std::mem::take(&mut st.services.get_mut(&o.service).expect("present").waiting);
                for w in waiting {
                    let _ = w.send(Response::Placed(p.clone()));
                }
            }
            Err(e) if e.starts_with("refused:") => {
                let highest = e
                    .trim_start_matches("refused:")
                    .parse()
                    .unwrap_or(st.epoch + 1);
                self.stale(st, highest);
                myself.stop(Some("stale".into()));
            }
            Err(e) => {
                warn!(service = %o.service, error = %e, "could not start the service's instance");
                let s = st.services.remove(&o.service).expect("present");
                st.by_sid.remove(&s.sid);
                let _ = st.engine.release_service(s.sid);
                for w in s.waiting {
                    let _ = w.send(Response::Error(ApiError::Internal {
                        reason: format!("could not start {}: {e}", o.service),
                    }));
                }
                (self.publish)(Event::Lost {
                    service: o.service,
                    reason: e,
                });
            }
        }
    }

    /// Moves every service off `node` (live migration where possible) and keeps the node
    /// out of placement. What cannot move stays, and the node stays in service; the error
    /// names those services.
    fn drain_node(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        node: u64,
        why: Why,
    ) -> Result<(), String> {
        st.drained.insert(node);
        let evicted = st.engine.remove_node(NodeKey(node)).unwrap_or_default();
        let mut failed = Vec::new();
        let mut stay = Vec::new();
        for ev in evicted {
            let Some(name) = st.by_sid.get(&ev.service).cloned() else {
                continue;
            };
            match st.engine.readmit(&ev) {
                Ok(d) => {
                    for m in &d.migrations {
                        self.migrate(myself, st, m.service, m.from.0, m.to.0, Why::Ms);
                    }
                    self.migrate(myself, st, ev.service, node, d.node.0, why);
                }
                Err(r) => {
                    failed.push(format!("{name}: {r}"));
                    stay.push(ev);
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        // The node stays in service with what could not move.
        st.drained.remove(&node);
        let spec = st.registry.get(&node).map(node_spec);
        if let Some(spec) = spec
            && st.engine.add_node(NodeKey(node), spec).is_ok()
        {
            for ev in &stay {
                let _ = st.engine.adopt(ev, NodeKey(node));
            }
        }
        warn!(node, services = ?failed, "drain incomplete: no room elsewhere");
        Err(format!("no room elsewhere for {}", failed.join(", ")))
    }

    fn api(
        &self,
        myself: &ActorRef<ControlMsg>,
        st: &mut ControlState,
        req: Request,
        reply: RpcReplyPort<Response>,
    ) {
        let resp = match req {
            Request::Status | Request::Subscribe => Response::Error(ApiError::BadRequest {
                reason: "answered by every node, not the Control".into(),
            }),
            Request::AdmitService(spec) => {
                if st.services.contains_key(&spec.name) {
                    match st.placement(&spec.name) {
                        Some(p) => Response::Placed(p),
                        None => {
                            st.services
                                .get_mut(&spec.name)
                                .expect("present")
                                .waiting
                                .push(reply);
                            return;
                        }
                    }
                } else if spec.command.is_empty() {
                    Response::Error(ApiError::BadRequest {
                        reason: "service spec has an empty command".into(),
                    })
                } else {
                    match st.profile(&spec) {
                        Err(e) => Response::Error(ApiError::BadRequest { reason: e }),
                        Ok(profile) => match st.engine.admit_service(profile, 0) {
                            Err(r) => rejected(r),
                            Ok(d) => {
                                for m in &d.migrations {
                                    self.migrate(myself, st, m.service, m.from.0, m.to.0, Why::Ms);
                                }
                                let name = spec.name.clone();
                                st.by_sid.insert(d.service, name.clone());
                                st.services.insert(
                                    name.clone(),
                                    Svc {
                                        spec,
                                        sid: d.service,
                                        profile,
                                        node: d.node.0,
                                        generation: 0,
                                        info: None,
                                        clients: Vec::new(),
                                        busy: true,
                                        waiting: vec![reply],
                                        placed_at: std::time::Instant::now(),
                                        admitted_at: std::time::Instant::now(),
                                        fewer_seen: 0,
                                        anomaly_moved: None,
                                    },
                                );
                                self.start(myself, st, &name, None, Why::Ms);
                                return;
                            }
                        },
                    }
                }
            }
            Request::AdmitClient { service } => {
                let Some(s) = st.services.get(&service) else {
                    let _ = reply.send(Response::Error(ApiError::NotFound {
                        what: format!("service {service}"),
                    }));
                    return;
                };
                match st.engine.admit_client(s.sid) {
                    Err(r) => rejected(r),
                    Ok(d) => {
                        for m in &d.migrations {
                            self.migrate(myself, st, m.service, m.from.0, m.to.0, Why::Ms);
                        }
                        let s = st.services.get_mut(&service).expect("present");
                        s.clients.push(d.client);
                        s.admitted_at = std::time::Instant::now();
                        match st.placement(&service) {
                            Some(p) => Response::Placed(p),
                            None => {
                                st.services
                                    .get_mut(&service)
                                    .expect("present")
                                    .waiting
                                    .push(reply);
                                return;
                            }
                        }
                    }
                }
            }
            Request::ReleaseClient { service } => match st.services.get_mut(&service) {
                None => Response::Error(ApiError::NotFound {
                    what: format!("service {service}"),
                }),
                Some(s) => match s.clients.pop() {
                    Some(c) => {
                        let _ = st.engine.release_client(c);
                        Response::Ok
                    }
                    None => Response::Error(ApiError::NotFound {
                        what: format!("a client of {service}"),
                    }),
                },
            },
            Request::StopService { service } => match st.services.remove(&service) {
                None => Response::Error(ApiError::NotFound {
                    what: format!("service {service}"),
                }),
                Some(s) => {
                    st.by_sid.remove(&s.sid);
                    let _ = st.engine.release_service(s.sid);
                    if let Some(i) = s.info {
                        self.send(
                            st,
                            s.node,
                            AgentCommand::Stop {
                                instance: i.instance,
                            },
                        );
                    }
                    Response::Ok
                }
            },
            Request::Locate { service } => match st.placement(&service) {
                Some(p) => Response::Placed(p),
                None => match st.services.get_mut(&service) {
                    // Starting or restarting: answered once it runs.
                    Some(s) => {
                        s.waiting.push(reply);
                        return;
                    }
                    None => Response::Error(ApiError::NotFound {
                        what: format!("service {service}"),
                    }),
                },
            },
            Request::Services => Response::Services(
                st.services
                    .keys()
                    .filter_map(|n| {
                        let s = &st.services[n];
                        Some(ServiceStatus {
                            placement: st.placement(n)?,
                            instance: s.info.as_ref()?.instance.clone(),
                            clients: s.clients.len() as u64,
                        })
                    })
                    .collect(),
            ),
            Request::Drain { node } => {
                if !st.nodes.contains_key(&node) {
                    Response::Error(ApiError::NotFound {
                        what: format!("node n{node}"),
                    })
                } else {
                    match self.drain_node(myself, st, node, Why::Drain) {
                        Ok(()) => Response::Ok,
                        Err(reason) => Response::Error(ApiError::Rejected { reason }),
                    }
                }
            }
        };
        let _ = reply.send(resp);
    }
}

/// One command to an agent; `Instance` answers give the instance, others an empty one.
async fn agent_call(
    peers: &dyn PeerClient,
    addr: SocketAddr,
    from: NodeId,
    epoch: Epoch,
    cmd: AgentCommand,
    timeout: Duration,
) -> Result<InstanceInfo, String> {
    match peers
        .request(addr, PeerRequest::Agent { from, epoch, cmd }, timeout)
        .await
    {
        Ok(PeerResponse::Instance(i)) => Ok(i),
        Ok(PeerResponse::Done) => Ok(InstanceInfo {
            instance: String::new(),
            launch: LaunchSpec::default(),
            state: InstanceState::Running,
            reservation: Reservation::default(),
            endpoint: None,
            control_socket: String::new(),
            speaks_api: false,
            usage: None,
            restarts: 0,
        }),
        Ok(PeerResponse::Refused { highest, .. }) => Err(format!("refused:{highest}")),
        Ok(PeerResponse::Failed(e)) => Err(e),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
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
        let engine = Engine::new(
            Empirical,
            EngineConfig {
                grid: 64,
                ..EngineConfig::default()
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(ControlState {
            epoch: self.epoch,
            rebuilt: false,
            acting: false,
            registry: BTreeMap::new(),
            stale: false,
            engine,
            profiles: HashMap::new(),
            services: BTreeMap::new(),
            by_sid: HashMap::new(),
            nodes: BTreeMap::new(),
            drained: BTreeSet::new(),
            notices_seen: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Rebuild before acting: ask every live agent once, waiting for all answers (each
        // bounded by the request timeout).
        let t0 = std::time::Instant::now();
        let results = self.round(st.epoch).join_all().await;
        if !self.apply(&myself, st, t0, results) {
            myself.stop(Some("stale".into()));
            return Ok(());
        }
        st.rebuilt = true;
        for (n, rep) in &st.registry {
            let max = rep.notices.iter().map(|(s, _)| *s).max().unwrap_or(0);
            st.notices_seen.insert(*n, max);
        }
        self.restore_replica(&myself, st);
        info!(node = %self.node, epoch = st.epoch, agents = st.registry.len(), services = st.services.len(), "control rebuilt its state");
        (self.events)(ControlEvent::Rebuilt {
            epoch: st.epoch,
            agents: st.registry.len(),
        });
        myself.send_interval(self.refresh, || ControlMsg::Refresh);
        let mut rx = self.agents.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if me.send_message(ControlMsg::AgentsChanged).is_err() {
                    return;
                }
            }
        });
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
                self.replicate(st);
                let t0 = std::time::Instant::now();
                let set = self.round(st.epoch);
                let me = myself.clone();
                tokio::spawn(async move {
                    let results = set.join_all().await;
                    let _ = me.send_message(ControlMsg::Reports(t0, results));
                });
            }
            ControlMsg::Reports(t0, results) => {
                if !st.stale && !self.apply(&myself, st, t0, results) {
                    myself.stop(Some("stale".into()));
                }
            }
            ControlMsg::AgentsChanged => {
                if st.stale || !st.acting {
                    return Ok(());
                }
                // Dead nodes at once (the failure detector already waited); new ones are
                // added by the next report round.
                let live: BTreeSet<u64> = self.agents.borrow().iter().map(|a| a.node.0).collect();
                let dead: Vec<u64> = st
                    .nodes
                    .keys()
                    .filter(|n| !live.contains(n))
                    .copied()
                    .collect();
                for n in dead {
                    self.node_down(&myself, st, n);
                }
            }
            ControlMsg::Placed(o) => self.on_placed(&myself, st, *o),
            ControlMsg::Api(req, reply) => {
                if !st.rebuilt {
                    let _ = reply.send(Response::Error(ApiError::Rebuilding));
                } else if !st.acting {
                    let _ = reply.send(Response::Error(ApiError::NoMajority));
                } else if st.stale {
                    let _ = reply.send(Response::Error(ApiError::NoControl));
                } else {
                    self.api(&myself, st, req, reply);
                }
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
                    services: st
                        .services
                        .iter()
                        .map(|(n, s)| {
                            (
                                n.clone(),
                                (
                                    s.node,
                                    s.info
                                        .as_ref()
                                        .map(|i| i.instance.clone())
                                        .unwrap_or_default(),
                                    s.clients.len(),
                                ),
                            )
                        })
                        .collect(),
                    engine_clients: st.engine.client_count(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod test_support {
    //! Shared by the Control's test modules.
    use super::*;
    use crate::agent86::{Agent86, Agent86Msg, Agent86Settings, AgentCore};
    use crate::epoch::MemoryEpochStore;
    use crate::proto::BoxFuture;

    /// Routes agent commands straight to in-process Agent86 actors by address; other
    /// requests (replicas, events) and unknown addresses fail like an unreachable peer.
    pub(super) struct Direct(pub(super) BTreeMap<SocketAddr, ActorRef<Agent86Msg>>);

    impl PeerClient for Direct {
        fn request(
            &self,
            to: SocketAddr,
            req: PeerRequest,
            timeout: Duration,
        ) -> BoxFuture<'_, Result<PeerResponse, PeerError>> {
            Box::pin(async move {
                let a = self.0.get(&to).ok_or(PeerError::Timeout(to))?;
                let PeerRequest::Agent { from, epoch, cmd } = req else {
                    return Err(PeerError::Timeout(to));
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

    /// Spawns Agent86 actors for nodes `1..=nodes` (process runtime under `dir`, node `n`
    /// on 127.0.0.n), each reachable through [`Direct`] at `127.0.0.n:1`.
    pub(super) async fn spawn_agents(
        dir: &std::path::Path,
        nodes: u64,
    ) -> (
        BTreeMap<SocketAddr, ActorRef<Agent86Msg>>,
        Vec<AgentAddr>,
        Vec<Arc<AgentCore>>,
    ) {
        let mut routes = BTreeMap::new();
        let mut addrs = Vec::new();
        let mut cores = Vec::new();
        for n in 1..=nodes {
            let core = AgentCore::new(
                NodeId(n),
                Agent86Settings {
                    ready_timeout: Duration::from_millis(100),
                    ..Agent86Settings::new(
                        dir.join(format!("n{n}")),
                        format!("127.0.0.{n}").parse().unwrap(),
                    )
                },
                0,
            )
            .unwrap();
            cores.push(core.clone());
            let (a, _) = Actor::spawn(
                None,
                Agent86 {
                    node: NodeId(n),
                    epochs: Arc::new(MemoryEpochStore::new(0)),
                    core,
                    panic_on_message: None,
                },
                (),
            )
            .await
            .unwrap();
            let addr: SocketAddr = format!("127.0.0.{n}:1").parse().unwrap();
            routes.insert(addr, a);
            addrs.push(AgentAddr {
                node: NodeId(n),
                addr,
            });
        }
        (routes, addrs, cores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent86::{Agent86, Agent86Msg};
    use crate::epoch::{EpochStore, MemoryEpochStore};
    use ractor::call_t;
    use std::sync::Mutex;

    /// Routes requests straight to in-process Agent86 actors by address.
    use super::test_support::Direct;

    async fn agent(node: u64, store: MemoryEpochStore) -> ActorRef<Agent86Msg> {
        let dir = std::env::temp_dir().join(format!(
            "smart-control-test-{}-{node}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let core = crate::agent86::AgentCore::new(
            NodeId(node),
            crate::agent86::Agent86Settings::new(&dir, "127.0.0.1".parse().unwrap()),
            store.highest(),
        )
        .unwrap();
        Actor::spawn(
            None,
            Agent86 {
                node: NodeId(node),
                epochs: Arc::new(store),
                core,
                panic_on_message: None,
            },
            (),
        )
        .await
        .unwrap()
        .0
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::SeqCst)
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
                publish: Arc::new(|_| {}),
                refresh: Duration::from_millis(20),
                request_timeout: Duration::from_millis(500),
                replica: Vec::new(),
                tuning: ControlTuning::default(),
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

#[cfg(test)]
mod admission_tests {
    use super::*;
    use ractor::call_t;
    use std::sync::Mutex;

    use super::test_support::{Direct, spawn_agents};

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            class: "distributor".into(),
            command: vec!["sh".into(), "-c".into(), "exec sleep 60 # {listen}".into()],
            env: vec![],
            per_client_bps: Some(400_000),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admits_places_starts_and_readmits_a_dead_nodes_services() {
        let dir = tempfile::tempdir().unwrap();
        let (routes, addrs, cores) = spawn_agents(dir.path(), 2).await;
        let (tx, rx) = watch::channel(addrs.clone());
        let published = Arc::new(Mutex::new(Vec::new()));
        let p2 = published.clone();
        let (c, _) = Actor::spawn(
            None,
            Control {
                node: NodeId(1),
                epoch: 1,
                peers: Arc::new(Direct(routes)),
                agents: rx,
                events: Arc::new(|_| {}),
                publish: Arc::new(move |e| p2.lock().unwrap().push(e)),
                refresh: Duration::from_millis(200),
                request_timeout: Duration::from_secs(2),
                replica: Vec::new(),
                tuning: ControlTuning::default(),
            },
            (),
        )
        .await
        .unwrap();
        c.send_message(ControlMsg::SetActing {
            epoch: 1,
            acting: true,
        })
        .unwrap();
        let api = |r: Request| {
            let c = c.clone();
            async move { call_t!(c, ControlMsg::Api, 10_000, r).unwrap() }
        };
        // Two services, placed by the engine (worst-fit).
        let Response::Placed(a) = api(Request::AdmitService(spec("video-a"))).await else {
            panic!("not placed")
        };
        let Response::Placed(b) = api(Request::AdmitService(spec("video-b"))).await else {
            panic!("not placed")
        };
        assert!([1, 2].contains(&a.node) && [1, 2].contains(&b.node));
        assert!(
            a.endpoint
                .starts_with(&format!("http://127.0.0.{}:", a.node))
        );
        // A client joins its service's instance (Smart-GloVE rule).
        assert_eq!(
            api(Request::AdmitClient {
                service: "video-a".into()
            })
            .await,
            Response::Placed(a.clone())
        );
        // Unknown services are an explained error.
        assert!(matches!(
            api(Request::AdmitClient {
                service: "nope".into()
            })
            .await,
            Response::Error(ApiError::NotFound { .. })
        ));
        // Node of video-a dies: it is re-admitted on the other node, with a new endpoint.
        let dead = a.node;
        tx.send(addrs.iter().copied().filter(|x| x.node.0 != dead).collect())
            .unwrap();
        cores[(dead - 1) as usize].stop_all();
        let mut moved = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Response::Placed(p) = api(Request::Locate {
                service: "video-a".into(),
            })
            .await
                && p.node != dead
            {
                moved = Some(p);
                break;
            }
        }
        let moved = moved.expect("re-admitted elsewhere");
        assert_ne!(moved.endpoint, a.endpoint);
        let ev = published.lock().unwrap().clone();
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Migrated { service, reason, .. }
                if service == "video-a" && reason == "node-failure")),
            "{ev:?}"
        );
        let s = call_t!(c, ControlMsg::Status, 1000).unwrap();
        assert_eq!(s.services["video-a"].2, 1, "its client came along");
        // Only one node is left: a drain of it has nowhere to go, says so, and leaves
        // everything in place.
        let survivor = moved.node;
        let r = api(Request::Drain { node: survivor }).await;
        assert!(
            matches!(&r, Response::Error(ApiError::Rejected { reason }) if reason.contains("video-a")),
            "{r:?}"
        );
        let Response::Placed(still) = api(Request::Locate {
            service: "video-a".into(),
        })
        .await
        else {
            panic!()
        };
        assert_eq!(still.node, survivor);
        // The dead node comes back (empty). Then the survivor fails a health check (its
        // agent's notice): it is drained, both services move back, by restart since `sleep`
        // has no workload control API, and the events say so.
        tx.send(addrs.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let st = call_t!(c, ControlMsg::Status, 1000).unwrap();
        let mut rep = st.agents[&survivor].clone();
        rep.notices.push((
            1_000,
            AgentEvent::NodeHealth {
                check: "memory_available".into(),
                healthy: false,
                detail: "1 % available".into(),
            },
        ));
        let addr = addrs.iter().find(|a| a.node.0 == survivor).unwrap().addr;
        c.send_message(ControlMsg::Reports(
            std::time::Instant::now() - Duration::from_secs(5),
            vec![(
                AgentAddr {
                    node: NodeId(survivor),
                    addr,
                },
                Ok(PeerResponse::Report(rep)),
            )],
        ))
        .unwrap();
        let mut done = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let ev = published.lock().unwrap().clone();
            let restarted = ev
                .iter()
                .filter(|e| matches!(e, Event::Migrated { reason, to, .. }
                    if reason.starts_with("health") && reason.contains("no workload control API") && *to == dead))
                .count();
            if restarted == 2 {
                done = true;
                break;
            }
        }
        assert!(done, "{:?}", published.lock().unwrap());
        for svc in ["video-a", "video-b"] {
            let Response::Placed(p) = api(Request::Locate {
                service: svc.into(),
            })
            .await
            else {
                panic!()
            };
            assert_eq!(p.node, dead, "{svc} moved off the drained node");
        }
        for core in cores {
            core.stop_all();
        }
    }
}

#[cfg(test)]
mod reaction_tests {
    //! The Control's reactions to what agents observe: anomalies (thesis §4.1.1) and
    //! viewers who left without telling the front-end.
    use super::*;
    use crate::agent86::AgentCore;
    use crate::proto::UsageReading;
    use ractor::call_t;
    use smart_instance::agent86::Resource;
    use std::sync::Mutex;

    use super::test_support::{Direct, spawn_agents};

    struct Cluster {
        c: ActorRef<ControlMsg>,
        published: Arc<Mutex<Vec<Event>>>,
        addrs: Vec<AgentAddr>,
        cores: Vec<Arc<AgentCore>>,
        _dir: tempfile::TempDir,
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            for core in &self.cores {
                core.stop_all();
            }
            self.c.stop(None);
        }
    }

    impl Cluster {
        async fn new(nodes: u64, tuning: ControlTuning) -> Cluster {
            let dir = tempfile::tempdir().unwrap();
            let (routes, addrs, cores) = spawn_agents(dir.path(), nodes).await;
            let (tx, rx) = watch::channel(addrs.clone());
            std::mem::forget(tx);
            let published = Arc::new(Mutex::new(Vec::new()));
            let p2 = published.clone();
            let (c, _) = Actor::spawn(
                None,
                Control {
                    node: NodeId(1),
                    epoch: 1,
                    peers: Arc::new(Direct(routes)),
                    agents: rx,
                    events: Arc::new(|_| {}),
                    publish: Arc::new(move |e| p2.lock().unwrap().push(e)),
                    refresh: Duration::from_millis(200),
                    request_timeout: Duration::from_secs(2),
                    replica: Vec::new(),
                    tuning,
                },
                (),
            )
            .await
            .unwrap();
            c.send_message(ControlMsg::SetActing {
                epoch: 1,
                acting: true,
            })
            .unwrap();
            Cluster {
                c,
                published,
                addrs,
                cores,
                _dir: dir,
            }
        }

        async fn api(&self, r: Request) -> Response {
            call_t!(self.c, ControlMsg::Api, 10_000, r).unwrap()
        }

        async fn status(&self) -> ControlStatus {
            call_t!(self.c, ControlMsg::Status, 1000).unwrap()
        }

        async fn admit(&self, name: &str) -> Placement {
            match self.api(Request::AdmitService(spec(name))).await {
                Response::Placed(p) => p,
                other => panic!("{other:?}"),
            }
        }

        /// The node's last report, once it lists `instance`.
        async fn report_listing(&self, node: u64, instance: &str) -> AgentReport {
            for _ in 0..100 {
                let s = self.status().await;
                if let Some(r) = s.agents.get(&node)
                    && r.instances.iter().any(|i| i.instance == instance)
                {
                    return r.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("n{node} never reported {instance}");
        }

        /// Delivers `rep` as if a refresh round had brought it.
        fn inject(&self, rep: AgentReport) {
            let addr = self.addrs.iter().find(|a| a.node.0 == rep.node).unwrap();
            self.c
                .send_message(ControlMsg::Reports(
                    std::time::Instant::now() - Duration::from_secs(5),
                    vec![(*addr, Ok(PeerResponse::Report(rep)))],
                ))
                .unwrap();
        }

        fn events(&self) -> Vec<Event> {
            self.published.lock().unwrap().clone()
        }
    }

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            class: "distributor".into(),
            command: vec!["sh".into(), "-c".into(), "exec sleep 60 # {listen}".into()],
            env: vec![],
            per_client_bps: Some(400_000),
        }
    }

    fn anomaly(instance: &str) -> AgentEvent {
        AgentEvent::Anomaly {
            instance: instance.into(),
            resource: Resource::Cpu,
            observed: 0.5,
            reserved: 0.05,
        }
    }

    fn instance_of(s: &ControlStatus, service: &str) -> String {
        s.services[service].1.clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_anomalous_instance_is_moved_once_then_kept_by_the_rate_limit() {
        let cl = Cluster::new(2, ControlTuning::default()).await;
        let a = cl.admit("video-a").await;
        let from = a.node;
        let to = 3 - from;
        let inst = instance_of(&cl.status().await, "video-a");
        let mut rep = cl.report_listing(from, &inst).await;
        rep.notices.push((1_000, anomaly(&inst)));
        cl.inject(rep);
        // Moved to the other node (restart: `sleep` has no workload control API).
        let mut moved = Vec::new();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            moved = cl
                .events()
                .into_iter()
                .filter(|e| matches!(e, Event::Migrated { .. }))
                .collect();
            if !moved.is_empty() {
                break;
            }
        }
        assert_eq!(
            moved,
            vec![Event::Migrated {
                service: "video-a".into(),
                from,
                to,
                reason: "anomaly (restarted: no workload control API)".into(),
            }]
        );
        let Response::Placed(p) = cl
            .api(Request::Locate {
                service: "video-a".into(),
            })
            .await
        else {
            panic!()
        };
        assert_eq!(p.node, to);
        // The new instance is flagged too, right away: kept, because of the rate limit.
        let inst2 = instance_of(&cl.status().await, "video-a");
        assert_ne!(inst2, inst);
        let mut rep = cl.report_listing(to, &inst2).await;
        rep.notices.push((2_000, anomaly(&inst2)));
        cl.inject(rep);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ev = cl.events();
        assert_eq!(
            ev.iter()
                .filter(|e| matches!(e, Event::Migrated { .. }))
                .count(),
            1,
            "{ev:?}"
        );
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Notice { service, node, reason }
                if service == "video-a" && *node == to
                    && reason.starts_with("anomaly (Cpu at 0.500, reserved 0.050): kept on n")
                    && reason.contains("already moved for an anomaly"))),
            "{ev:?}"
        );
        assert_eq!(cl.status().await.services["video-a"].0, to);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_anomalous_instance_with_nowhere_to_go_is_kept_and_the_event_says_why() {
        let cl = Cluster::new(1, ControlTuning::default()).await;
        let a = cl.admit("video-a").await;
        let inst = instance_of(&cl.status().await, "video-a");
        let mut rep = cl.report_listing(a.node, &inst).await;
        rep.notices.push((1_000, anomaly(&inst)));
        cl.inject(rep);
        let mut notice = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            notice = cl.events().into_iter().find_map(|e| match e {
                Event::Notice { reason, node, .. } => Some((node, reason)),
                _ => None,
            });
            if notice.is_some() {
                break;
            }
        }
        let (node, reason) = notice.expect("a notice");
        assert_eq!(node, a.node);
        assert!(reason.contains("no other node fits"), "{reason}");
        let ev = cl.events();
        assert!(
            !ev.iter().any(|e| matches!(e, Event::Migrated { .. })),
            "{ev:?}"
        );
        let s = cl.status().await;
        assert_eq!(
            (s.services["video-a"].0, &s.services["video-a"].1),
            (a.node, &inst)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_left_are_released_after_two_refreshes_outside_the_grace_period() {
        let grace = Duration::from_millis(400);
        let cl = Cluster::new(
            1,
            ControlTuning {
                release_grace: grace,
                ..ControlTuning::default()
            },
        )
        .await;
        let a = cl.admit("video-a").await;
        for _ in 0..3 {
            assert!(matches!(
                cl.api(Request::AdmitClient {
                    service: "video-a".into()
                })
                .await,
                Response::Placed(_)
            ));
        }
        let inst = instance_of(&cl.status().await, "video-a");
        let rep = cl.report_listing(a.node, &inst).await;
        let with_clients = |n: u32| {
            let mut r = rep.clone();
            for i in &mut r.instances {
                if i.instance == inst {
                    i.usage = Some(UsageReading {
                        instance: inst.clone(),
                        cpu_cores: 0.0,
                        net_bps: None,
                        mem_bytes: 0,
                        clients: Some(n),
                    });
                }
            }
            r
        };
        let admitted = |s: &ControlStatus| s.services["video-a"].2;
        // Within the grace period after the last admission: nothing is released.
        cl.inject(with_clients(1));
        cl.inject(with_clients(1));
        let s = cl.status().await;
        assert_eq!((admitted(&s), s.engine_clients), (3, 3));
        tokio::time::sleep(grace + Duration::from_millis(100)).await;
        // One refresh with fewer viewers is not enough; a refresh with all of them resets.
        cl.inject(with_clients(1));
        assert_eq!(admitted(&cl.status().await), 3);
        cl.inject(with_clients(3));
        cl.inject(with_clients(1));
        assert_eq!(admitted(&cl.status().await), 3);
        // The second consecutive one releases the surplus: 2 clients.
        cl.inject(with_clients(1));
        let s = cl.status().await;
        assert_eq!((admitted(&s), s.engine_clients), (1, 1));
        let ev = cl.events();
        assert!(
            ev.contains(&Event::Notice {
                service: "video-a".into(),
                node: a.node,
                reason: "released 2 client(s): its instance reports 1 connected, 3 were admitted"
                    .into(),
            }),
            "{ev:?}"
        );
        // The engine freed them: the Control's view and a further release agree.
        assert_eq!(
            cl.api(Request::ReleaseClient {
                service: "video-a".into()
            })
            .await,
            Response::Ok
        );
        assert!(matches!(
            cl.api(Request::ReleaseClient {
                service: "video-a".into()
            })
            .await,
            Response::Error(ApiError::NotFound { .. })
        ));
    }
}
