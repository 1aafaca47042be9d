//! The Control's decisions as a pure step function (docs/DESIGN.md §2–§4): no tokio, no
//! sockets, no clocks. The actor shell ([`super::Control`]) feeds [`Input`]s with the
//! current time into [`ControlEngine::handle`] and executes the [`Output`]s it returns, in
//! order: agent commands, answers to API requests, events, the registry copy.
//!
//! The engine owns the soft state of the cluster: the services and where they run, the
//! `smart_admission` engine (eq. 4.1, per-node test, placement, MS, the Smart-GloVE client
//! rule), the last report of every agent, drained nodes and every in-flight operation on a
//! service (a start, or one step of a migration: see [`moves`](self::moves)). Every agent
//! command it emits carries a request id; the shell answers each with
//! [`Input::Reply`] (the agent's answer or why there was none), so nothing happens behind
//! the engine's back and a command of a superseded operation is recognised and ignored.
//!
//! Life cycle: [`Input::Start`] asks every live agent for its report; the first
//! [`Input::Reports`] **rebuilds** (adopts running instances, stops duplicates, restarts
//! what only the replicated registry knows) and emits [`Output::Rebuilt`]; from then on,
//! while the election engine lets it act ([`Input::SetActing`]), it serves API requests and
//! every [`Input::Tick`] starts a refresh round. An agent refusing a command at our epoch
//! ([`AgentReply::Refused`]) makes it emit [`Output::Stale`] once and do nothing more.
//!
//! ## Layout
//! - this file: types, the step function, API requests;
//! - [`rounds`](self::rounds): rebuild, refresh rounds, node failures, notices, releases;
//! - [`moves`](self::moves): starts and the migration state machine.

mod moves;
mod profiles;
mod qos;
mod rounds;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smart_admission::{AnyEngine, ClientId, EngineConfig, Evicted, NodeSpec, ProfileId, ServiceId};
use smart_proto::agent::{
    AgentCommand, AgentReply, AgentReport, InstanceReport, LaunchSpec, Reservation,
};
use smart_proto::api::{ApiError, Event, Placement, Request, Response, ServiceSpec, ServiceStatus};
use smart_proto::node::{Replica, ReplicaEntry};
use smart_proto::profile::ProfileSource;
use smart_proto::{Epoch, NodeId, ServiceName};

use crate::peer::PeerError;

pub use moves::{Move, Op, Why};
pub use profiles::{AdmissionSettings, MEM_LIMIT_SLACK, MIN_CPU_LIMIT};

/// Environment variable carrying the service name in an instance's launch.
pub const ENV_SERVICE: &str = "SMART_SERVICE";
/// Environment variable carrying the per-client bitrate in an instance's launch.
pub const ENV_PER_CLIENT_BPS: &str = "SMART_PER_CLIENT_BPS";
/// Environment variable carrying the video's duration in an instance's launch.
pub const ENV_DURATION_MS: &str = "SMART_DURATION_MS";

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
    /// No client is released from usage reports within this time after a client admission,
    /// a start or a migration of the service: viewers are still connecting or reconnecting.
    pub release_grace: Duration,
    /// Consecutive refreshes in which an instance must report fewer connected clients than
    /// were admitted before the surplus is released.
    pub release_after: u32,
    /// Timeout of one request to an agent (reports, stops); the steps of a start or a
    /// migration get multiples of it (see [`moves`](self::moves)).
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
    /// Whether the Control may act (rebuilt and, in majority mode, holding a majority of
    /// leases), as decided by the election engine.
    SetActing {
        /// The epoch the decision is about.
        epoch: Epoch,
        /// May act.
        acting: bool,
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

/// A service as the Control knows it.
#[derive(Debug)]
pub(crate) struct Svc {
    pub(crate) spec: ServiceSpec,
    pub(crate) sid: ServiceId,
    pub(crate) profile: ProfileId,
    /// Where admission placed it (during a move: the target).
    pub(crate) node: NodeId,
    /// Generation of its newest instance (`<name>.<generation>`).
    pub(crate) generation: u64,
    /// Its current instance, once running (`None` while starting or restarting).
    pub(crate) info: Option<InstanceReport>,
    pub(crate) clients: Vec<ClientId>,
    /// What is in flight on it.
    pub(crate) op: Op,
    /// API requests waiting for its first (or next) instance, with the client each
    /// admitted (if any).
    pub(crate) waiting: Vec<(ApiId, Option<ClientId>)>,
    /// When its current instance was confirmed (reports older than this may not list it).
    pub(crate) placed_at: Instant,
    /// When its last client was admitted.
    pub(crate) admitted_at: Instant,
    /// Consecutive refreshes in which its instance reported fewer clients than admitted.
    pub(crate) fewer_seen: u32,
    /// When it was last moved because of an anomaly.
    pub(crate) anomaly_moved: Option<Instant>,
    /// Resources it was already grown or moved for (never twice for the same cause).
    pub(crate) anomaly_causes: Vec<smart_proto::agent::Resource>,
    /// Where its profile comes from.
    pub(crate) source: ProfileSource,
    /// Since when its instance has reported no clients (and none are admitted).
    pub(crate) idle_since: Option<Instant>,
    /// Network held on both nodes for a migration's copy (released when the move ends).
    pub(crate) copy_holds: Vec<ServiceId>,
}

impl Svc {
    pub(crate) fn busy(&self) -> bool {
        !matches!(self.op, Op::Idle)
    }
}

/// What an outstanding agent command is for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pending {
    /// A step of the operation on `service` at `generation`.
    Step {
        service: ServiceName,
        generation: u64,
    },
    /// Fire and forget (stopping a duplicate): only a refusal matters.
    Forget,
}

/// The Control engine.
pub struct ControlEngine {
    pub(crate) node: NodeId,
    pub(crate) tuning: ControlTuning,
    pub(crate) epoch: Epoch,
    pub(crate) rebuilt: bool,
    pub(crate) acting: bool,
    pub(crate) stale: bool,
    pub(crate) round_in_flight: bool,
    /// Live agents (membership).
    pub(crate) live: BTreeMap<NodeId, SocketAddr>,
    /// Last report of each agent.
    pub(crate) registry: BTreeMap<NodeId, AgentReport>,
    pub(crate) admission: AnyEngine,
    pub(crate) profiles: profiles::Profiles,
    pub(crate) services: BTreeMap<ServiceName, Svc>,
    pub(crate) by_sid: HashMap<ServiceId, ServiceName>,
    /// Nodes in placement, with their address.
    pub(crate) nodes: BTreeMap<NodeId, SocketAddr>,
    pub(crate) drained: BTreeSet<NodeId>,
    /// Of `drained`, the nodes drained for failing a health check (undrained on recovery).
    pub(crate) health_drained: BTreeSet<NodeId>,
    /// Last notice number seen per agent.
    pub(crate) notices_seen: HashMap<NodeId, u64>,
    /// The registry copy this node held when the Control started.
    pub(crate) replica: Replica,
    pub(crate) replica_version: u64,
    pub(crate) next_req: ReqId,
    pub(crate) pending: HashMap<ReqId, Pending>,
    pub(crate) out: Vec<Output>,
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
        Ok(Self {
            node,
            tuning,
            epoch,
            rebuilt: false,
            acting: false,
            stale: false,
            round_in_flight: false,
            live: agents.iter().map(|a| (a.node, a.addr)).collect(),
            registry: BTreeMap::new(),
            admission,
            profiles: profiles::Profiles::from_replica(&replica),
            services: BTreeMap::new(),
            by_sid: HashMap::new(),
            nodes: BTreeMap::new(),
            drained: replica.drained.iter().copied().collect(),
            health_drained: replica.health_drained.iter().copied().collect(),
            notices_seen: HashMap::new(),
            replica,
            replica_version: 0,
            next_req: 1,
            pending: HashMap::new(),
            out: Vec::new(),
        })
    }

    /// The step function.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        if self.stale {
            // A deposed Control answers what it must and does nothing else.
            if let Input::Api { id, .. } = input {
                self.reply(id, Response::Error(ApiError::NoControl));
            }
            return std::mem::take(&mut self.out);
        }
        match input {
            Input::Start => {
                self.round_in_flight = true;
                let agents = self.live_agents();
                self.out.push(Output::Round {
                    agents,
                    epoch: self.epoch,
                    timeout: self.tuning.request_timeout,
                });
            }
            Input::Tick => {
                if self.rebuilt && self.acting && !self.round_in_flight {
                    self.replicate();
                    self.round_in_flight = true;
                    let agents = self.live_agents();
                    self.out.push(Output::Round {
                        agents,
                        epoch: self.epoch,
                        timeout: self.tuning.request_timeout,
                    });
                }
            }
            Input::Agents(agents) => {
                self.live = agents.iter().map(|a| (a.node, a.addr)).collect();
                if self.rebuilt && self.acting {
                    // Dead nodes at once (the failure detector already waited); new ones
                    // are added by the next report round.
                    self.remove_dead(now);
                }
            }
            Input::Reports { started, results } => {
                self.round_in_flight = false;
                self.on_reports(started, results, now);
            }
            Input::Reply { req, result } => self.on_reply(req, result, now),
            Input::Api { id, req } => {
                if !self.rebuilt {
                    self.reply(id, Response::Error(ApiError::Rebuilding));
                } else if !self.acting {
                    self.reply(id, Response::Error(ApiError::NoMajority));
                } else {
                    self.api(id, req, now);
                }
            }
            Input::SetEpoch(e) => self.epoch = self.epoch.max(e),
            Input::SetActing { epoch, acting } => {
                if epoch == self.epoch {
                    self.acting = acting;
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// The Control's view.
    pub fn status(&self) -> ControlStatus {
        ControlStatus {
            epoch: self.epoch,
            rebuilt: self.rebuilt,
            acting: self.acting,
            agents: self.registry.clone(),
            services: self
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
                .services
                .values()
                .map(|s| ReplicaEntry {
                    spec: s.spec.clone(),
                    node: s.node,
                    clients: s.clients.len() as u64,
                })
                .collect(),
            drained: self.drained.iter().copied().collect(),
            profiles: self.profiles.classes.values().cloned().collect(),
            health_drained: self.health_drained.iter().copied().collect(),
        };
        let to = self.live_agents();
        self.out.push(Output::Replicate { to, replica });
    }

    /// The launch of `name`'s next instance and its reservation (at its current clients).
    pub(crate) fn launch_for(&self, name: &str) -> (LaunchSpec, Reservation) {
        let s = &self.services[name];
        let reservation = self.reservation_of(s.profile, s.clients.len());
        let (cpu, mem) = self.limits_of(&reservation);
        let mut launch = launch_of(&s.spec);
        launch.cpu_cores = cpu;
        launch.memory_bytes = mem;
        (launch, reservation)
    }

    pub(crate) fn placement(&self, name: &str) -> Option<Placement> {
        let s = self.services.get(name)?;
        Some(Placement {
            service: name.to_string(),
            node: s.node,
            endpoint: s.info.as_ref()?.endpoint.clone().unwrap_or_default(),
            client: None,
        })
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
        let Evicted {
            service: sid,
            profile,
            clients,
        } = a;
        let name = spec.name.clone();
        self.by_sid.insert(sid, name.clone());
        self.services.insert(
            name.clone(),
            Svc {
                spec,
                sid,
                profile,
                node,
                generation,
                info: None,
                clients,
                op: Op::Idle,
                waiting: Vec::new(),
                placed_at: now,
                admitted_at: now,
                fewer_seen: 0,
                anomaly_moved: None,
                anomaly_causes: Vec::new(),
                source,
                idle_since: None,
                copy_holds: Vec::new(),
            },
        );
        name
    }

    // ---------------------------------------------------------------------------------
    // The message API
    // ---------------------------------------------------------------------------------

    fn api(&mut self, id: ApiId, req: Request, now: Instant) {
        let resp = match req {
            // Answered by the node asked (`Nodes`: by the Control's node, from `status()`).
            Request::Status | Request::Subscribe | Request::Version | Request::Nodes => {
                Response::Error(ApiError::BadRequest {
                    reason: "answered by the node runtime, not the Control engine".into(),
                })
            }
            Request::AdmitService(spec) => match self.admit_service(spec, now) {
                Ok(name) => match self.placement(&name) {
                    Some(p) => Response::Placed(p),
                    None => return self.wait_for(&name, id, None),
                },
                Err(e) => Response::Error(e),
            },
            Request::AdmitClient { service, spec } => {
                if !self.services.contains_key(&service) {
                    match spec {
                        // The first viewer of a video: admit its service, then the client,
                        // in one request.
                        Some(spec) if spec.name == service => {
                            if let Err(e) = self.admit_service(spec, now) {
                                return self.reply(id, Response::Error(e));
                            }
                        }
                        Some(_) => {
                            return self.reply(
                                id,
                                Response::Error(ApiError::BadRequest {
                                    reason: "spec.name differs from the service".into(),
                                }),
                            );
                        }
                        None => {
                            return self.reply(
                                id,
                                Response::Error(ApiError::NotFound {
                                    what: format!("service {service}"),
                                }),
                            );
                        }
                    }
                }
                match self.admit_client(&service, now) {
                    Err(e) => Response::Error(e),
                    Ok(client) => match self.placement(&service) {
                        Some(p) => Response::Placed(Placement {
                            client: Some(client.0),
                            ..p
                        }),
                        None => return self.wait_for(&service, id, Some(client)),
                    },
                }
            }
            Request::ReleaseClient { service, client } => match self.services.get_mut(&service) {
                None => Response::Error(ApiError::NotFound {
                    what: format!("service {service}"),
                }),
                Some(s) => {
                    let gone = match client {
                        None => s.clients.pop(),
                        Some(c) => s
                            .clients
                            .iter()
                            .position(|x| x.0 == c)
                            .map(|i| s.clients.remove(i)),
                    };
                    match gone {
                        Some(c) => {
                            let _ = self.admission.release_client(c);
                            Response::Ok
                        }
                        None => Response::Error(ApiError::NotFound {
                            what: match client {
                                Some(c) => format!("client {c} of {service}"),
                                None => format!("a client of {service}"),
                            },
                        }),
                    }
                }
            },
            Request::StopService { service } => {
                if self.stop_service(&service, "stopped by an operator".into()) {
                    Response::Ok
                } else {
                    Response::Error(ApiError::NotFound {
                        what: format!("service {service}"),
                    })
                }
            }
            Request::Locate { service } => match self.placement(&service) {
                Some(p) => Response::Placed(p),
                // Starting or restarting: answered once it runs.
                None if self.services.contains_key(&service) => {
                    return self.wait_for(&service, id, None);
                }
                None => Response::Error(ApiError::NotFound {
                    what: format!("service {service}"),
                }),
            },
            Request::Services => Response::Services(
                self.services
                    .iter()
                    .filter_map(|(n, s)| {
                        let info = s.info.as_ref()?;
                        Some(ServiceStatus {
                            placement: self.placement(n)?,
                            instance: info.instance.clone(),
                            clients: s.clients.len() as u64,
                            reservation: self.reservation_of(s.profile, s.clients.len()),
                            usage: self
                                .registry
                                .get(&s.node)
                                .and_then(|r| r.instance(&info.instance))
                                .and_then(|i| i.usage.clone()),
                            profile: s.source,
                            limits_enforced: info.limits_enforced,
                        })
                    })
                    .collect(),
            ),
            Request::PutProfile { class, profile } => {
                match self.store_profile(&class, *profile, ProfileSource::Measured) {
                    Ok(_) => {
                        self.replicate();
                        Response::Ok
                    }
                    Err(e) => Response::Error(e),
                }
            }
            Request::Profiles => Response::Profiles(
                self.profiles
                    .classes
                    .values()
                    .map(|c| c.summary())
                    .collect(),
            ),
            Request::Profile { class } => match self.profiles.classes.get(&class) {
                Some(c) => Response::Profile(Box::new(c.clone())),
                None => Response::Error(ApiError::NotFound {
                    what: format!("a profile for class {class}"),
                }),
            },
            Request::Undrain { node } => match self.undrain(node) {
                Ok(()) => Response::Ok,
                Err(e) => Response::Error(e),
            },
            Request::Drain { node } => {
                if !self.nodes.contains_key(&node) {
                    Response::Error(ApiError::NotFound {
                        what: format!("node {node}"),
                    })
                } else {
                    match self.drain_node(node, Why::Drain) {
                        Ok(()) => Response::Ok,
                        Err(reason) => Response::Error(ApiError::Rejected { reason }),
                    }
                }
            }
        };
        self.reply(id, resp);
    }

    fn wait_for(&mut self, service: &str, id: ApiId, client: Option<ClientId>) {
        if let Some(s) = self.services.get_mut(service) {
            s.waiting.push((id, client));
        }
    }

    /// A drained node comes back into placement (with its last reported capacity).
    pub(crate) fn undrain(&mut self, node: NodeId) -> Result<(), ApiError> {
        if !self.drained.contains(&node) {
            return Err(ApiError::BadRequest {
                reason: format!("{node} is not drained"),
            });
        }
        let spec = self
            .registry
            .get(&node)
            .map(|r| node_spec(r, &self.tuning.admission))
            .ok_or_else(|| ApiError::NotFound {
                what: format!("a report from {node} (is it alive?)"),
            })?;
        self.admission
            .add_node(node, spec)
            .map_err(|e| ApiError::Internal {
                reason: e.to_string(),
            })?;
        self.drained.remove(&node);
        tracing::info!(%node, "node back in placement");
        self.publish(Event::Notice {
            service: String::new(),
            node,
            reason: "undrained: back in placement".into(),
        });
        Ok(())
    }

    /// Admits and starts a new service (or finds the one of that name).
    fn admit_service(&mut self, spec: ServiceSpec, now: Instant) -> Result<ServiceName, ApiError> {
        if self.services.contains_key(&spec.name) {
            return Ok(spec.name);
        }
        if spec.command.is_empty() {
            return Err(ApiError::BadRequest {
                reason: "service spec has an empty command".into(),
            });
        }
        let (profile, source) = self
            .profile_of(&spec)
            .map_err(|reason| ApiError::Rejected { reason })?;
        let d = self
            .admission
            .admit_service(profile, 0)
            .map_err(|r| ApiError::Rejected {
                reason: r.to_string(),
            })?;
        for m in &d.migrations {
            self.migrate(m.service, m.from, m.to, Why::Ms);
        }
        let admitted = Evicted {
            service: d.service,
            profile,
            clients: Vec::new(),
        };
        let name = self.insert_service(spec, admitted, source, d.node, 0, now);
        self.start(&name, None, Why::Ms);
        Ok(name)
    }

    /// Admits one client of a known service (Smart-GloVE rule).
    fn admit_client(&mut self, service: &str, now: Instant) -> Result<ClientId, ApiError> {
        let sid = self.services[service].sid;
        let d = self
            .admission
            .admit_client(sid)
            .map_err(|r| ApiError::Rejected {
                reason: r.to_string(),
            })?;
        for m in &d.migrations {
            self.migrate(m.service, m.from, m.to, Why::Ms);
        }
        let s = self
            .services
            .get_mut(service)
            .expect("checked by the caller");
        s.clients.push(d.client);
        s.admitted_at = now;
        Ok(d.client)
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

/// A service spec as an Agent86 launch: the name and bitrate travel in the environment so
/// that a new Control can rebuild the spec from a report ([`spec_of`]).
pub fn launch_of(spec: &ServiceSpec) -> LaunchSpec {
    let mut env = spec.env.clone();
    env.push((ENV_SERVICE.into(), spec.name.clone()));
    if let Some(b) = spec.per_client_bps {
        env.push((ENV_PER_CLIENT_BPS.into(), b.to_string()));
    }
    if let Some(d) = spec.duration_ms {
        env.push((ENV_DURATION_MS.into(), d.to_string()));
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
            .filter(|(k, _)| k != ENV_SERVICE && k != ENV_PER_CLIENT_BPS && k != ENV_DURATION_MS)
            .cloned()
            .collect(),
        per_client_bps: get(ENV_PER_CLIENT_BPS).and_then(|v| v.parse().ok()),
        duration_ms: get(ENV_DURATION_MS).and_then(|v| v.parse().ok()),
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
