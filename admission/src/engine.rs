//! The admission and placement engine that the Control actor drives (thesis §4.1.2, §5.6,
//! docs/DESIGN.md §3–§4): pure state and step calls, no I/O, no clock, no randomness.
//!
//! Each call is one decision: [`Engine::admit_service`], [`Engine::admit_client`],
//! [`Engine::release_client`], [`Engine::release_service`], [`Engine::add_node`],
//! [`Engine::remove_node`] / [`Engine::node_failed`] (which hand back the services to
//! re-admit with [`Engine::readmit`]). A decision returns what the Control must execute: the
//! node to start the service on and the migrations to perform first, in order.
//!
//! An admission runs, in order:
//! 1. the cluster test of eq. 4.1 (`P(ΣU < Σ VR·capacity) ≥ C` for CPU and network) as a
//!    fast reject;
//! 2. a search of the [`PlacementIndex`] by the configured [`Policy`], testing each candidate
//!    node with its own `VR` and `C` and never overbooking memory;
//! 3. when no node fits, Migrate the Smallest: on the nodes with the most free memory, find
//!    the service with the smallest working set whose departure makes room, and place it
//!    elsewhere (recursively, up to `ms_depth` migrations in a chain and `ms_max_tests` node
//!    tests per decision). If that fails, the newcomer is rejected and nothing has changed.
//!
//! Clients follow the Smart-GloVE rule: a client joins its video's distributor; if that node
//! lacks room for one more client, MS moves another distributor off it.
//!
//! A service's usage is its profile's base series plus one per-client increment per client.
//! Base series are summed time-aligned (the thesis's method); each client's increment is
//! shifted by a phase derived from its id, because viewers start at different times and their
//! bursts do not line up ([`EngineConfig::align_clients`] turns this off).
//!
//! ## Layout
//! - ids ([`NodeId`], [`ServiceId`], [`ClientId`], [`ProfileId`]), [`NodeSpec`],
//!   [`EngineConfig`];
//! - results: [`Decision`], [`ClientDecision`], [`Migration`], [`Evicted`], [`Rejection`],
//!   [`EngineError`];
//! - [`Engine`]: this file has its state, profiles and node changes; `admit` the admission
//!   path (eq. 4.1, placement search, MS, re-admission, adoption, the client rule); `queries`
//!   releases, queries and [`Engine::verify`] (recomputes every aggregate from scratch and
//!   compares); `tests` its unit tests.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::estimator::{Estimator, Resource};
use crate::profile::ServiceProfile;
use crate::tree::{Leaf, Need, PlacementIndex, Policy};

pub use smart_proto::NodeId;

/// A running service (a video distributor in Smart-GloVE), assigned by the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceId(pub u64);

/// A client of a service, assigned by the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientId(pub u64);

/// A registered profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProfileId(pub u32);

/// A node's capacity and admission parameters (nodes may differ).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Memory in bytes.
    pub mem_bytes: u64,
    /// CPU in cores.
    pub cpu_cores: f64,
    /// Network in bits per second.
    pub net_bps: f64,
    /// Reference value: the fraction of capacity that admitted load may reach (0, 1].
    pub vr: f64,
    /// Confidence: the probability with which the load must stay below `vr` (0, 1).
    pub conf: f64,
}

impl NodeSpec {
    /// A node with the thesis's defaults `VR = 0.9`, `C = 0.95`.
    pub fn new(mem_bytes: u64, cpu_cores: f64, net_bps: f64) -> Self {
        NodeSpec {
            mem_bytes,
            cpu_cores,
            net_bps,
            vr: 0.9,
            conf: 0.95,
        }
    }

    fn validate(&self) -> Result<(), EngineError> {
        let ok = self.cpu_cores.is_finite()
            && self.cpu_cores >= 0.0
            && self.net_bps.is_finite()
            && self.net_bps >= 0.0
            && self.vr > 0.0
            && self.vr <= 1.0
            && self.conf > 0.0
            && self.conf < 1.0;
        if ok {
            Ok(())
        } else {
            Err(EngineError::BadSpec(format!(
                "node spec needs finite capacities ≥ 0, 0 < vr ≤ 1 and 0 < conf < 1, got {self:?}"
            )))
        }
    }

    /// `VR × capacity` in the estimator's integer units.
    fn limits(&self) -> [f64; 2] {
        [
            self.vr * self.cpu_cores / Resource::Cpu.unit(),
            self.vr * self.net_bps / Resource::Net.unit(),
        ]
    }
}

/// Engine-wide settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Intervals per profile series on the engine's grid; profiles are wrapped or evenly
    /// subsampled to this length.
    pub grid: usize,
    /// Placement policy.
    pub policy: Policy,
    /// Confidence `C` of the cluster test (eq. 4.1).
    pub cluster_conf: f64,
    /// Longest chain of migrations one decision may cause (0 disables MS).
    pub ms_depth: u32,
    /// Nodes tried per MS level (most free memory first).
    pub ms_candidates: usize,
    /// Budget of node tests (searches and eviction checks) one MS decision may spend, so a
    /// full cluster rejects quickly.
    pub ms_max_tests: usize,
    /// Sum per-client increments without a phase shift (assume viewers burst together).
    pub align_clients: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            grid: 256,
            policy: Policy::WorstFit,
            cluster_conf: 0.95,
            ms_depth: 2,
            ms_candidates: 4,
            ms_max_tests: 48,
            align_clients: false,
        }
    }
}

/// One migration the Control must execute: move `service` from `from` to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// Service to move.
    pub service: ServiceId,
    /// Where it runs now.
    pub from: NodeId,
    /// Where it must run.
    pub to: NodeId,
}

/// An admitted service: run it on `node` after executing `migrations` in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The new (or re-admitted) service.
    pub service: ServiceId,
    /// Its node.
    pub node: NodeId,
    /// Its initial clients.
    pub clients: Vec<ClientId>,
    /// Migrations that made room, to execute first, in order.
    pub migrations: Vec<Migration>,
}

/// An admitted client: it joins `service` on `node` after `migrations`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDecision {
    /// The new client.
    pub client: ClientId,
    /// The service it joins.
    pub service: ServiceId,
    /// The service's node.
    pub node: NodeId,
    /// Migrations of other services that made room, to execute first, in order.
    pub migrations: Vec<Migration>,
}

/// A service taken off a removed or failed node, with what is needed to re-admit it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evicted {
    /// The service (keeps its id when re-admitted).
    pub service: ServiceId,
    /// Its profile.
    pub profile: ProfileId,
    /// Its clients (keep their ids).
    pub clients: Vec<ClientId>,
}

/// Why an admission was refused. The engine's state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The profile id was never registered.
    #[error("unknown profile {0:?}")]
    UnknownProfile(ProfileId),
    /// The service does not exist (client admission).
    #[error("unknown service {0:?}")]
    UnknownService(ServiceId),
    /// A re-admitted service or client id is already in use.
    #[error("service or client id already in use: {0:?}")]
    DuplicateId(ServiceId),
    /// There is no live node.
    #[error("no live node")]
    NoNodes,
    /// The cluster test (eq. 4.1) failed for this resource.
    #[error("cluster {0:?} capacity exceeded at the configured confidence (eq. 4.1)")]
    ClusterCapacity(Resource),
    /// No node fits, and Migrate the Smallest could not make room.
    #[error("no node fits the load, even after trying to migrate smaller services")]
    NoFit,
}

/// Misuse of the engine (unknown ids, bad specs or profiles).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// `add_node` with a key already present.
    #[error("node {0:?} already exists")]
    DuplicateNode(NodeId),
    /// Unknown node key.
    #[error("unknown node {0:?}")]
    UnknownNode(NodeId),
    /// Unknown service id.
    #[error("unknown service {0:?}")]
    UnknownService(ServiceId),
    /// Unknown client id.
    #[error("unknown client {0:?}")]
    UnknownClient(ClientId),
    /// Invalid node spec or configuration.
    #[error("bad specification: {0}")]
    BadSpec(String),
    /// A profile that cannot be used.
    #[error("bad profile {name:?}: {why}")]
    BadProfile {
        /// The profile's service name.
        name: String,
        /// What is wrong.
        why: String,
    },
}

/// What the engine reports of one node.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its key.
    pub key: NodeId,
    /// Its spec.
    pub spec: NodeSpec,
    /// Reserved memory in bytes.
    pub used_mem: u64,
    /// Estimated CPU (cores) and network (bit/s) levels at the node's confidence.
    pub level: [f64; 2],
    /// Number of services.
    pub services: usize,
}

struct Compiled<E: Estimator> {
    ws: u64,
    client_mem: u64,
    base: [E::Item; 2],
    client: Option<[E::Item; 2]>,
    lb_base: [f64; 2],
    lb_client: [f64; 2],
}

struct Node<E: Estimator> {
    key: NodeId,
    spec: NodeSpec,
    alive: bool,
    limit: [f64; 2],
    used_mem: u64,
    agg: [E::Agg; 2],
    services: Vec<ServiceId>,
}

struct Service<E: Estimator> {
    profile: ProfileId,
    slot: usize,
    clients: Vec<ClientId>,
    /// The service's own aggregate (base plus clients), kept once it has
    /// [`CACHE_MIN_CLIENTS`] clients, so that moving or testing a distributor with many
    /// clients costs one merge, not one add per client. Small services are rebuilt on demand
    /// instead, which keeps memory at a million services modest.
    agg: Option<[E::Agg; 2]>,
}

/// Clients from which a service keeps its own aggregate.
const CACHE_MIN_CLIENTS: usize = 8;

/// The usage of a service (or of one client), summed into one aggregate per resource.
struct Load<E: Estimator> {
    mem: u64,
    lb: [f64; 2],
    agg: [E::Agg; 2],
}

impl<E: Estimator> Load<E> {
    fn need(&self) -> Need {
        Need {
            mem: self.mem,
            lb: self.lb,
        }
    }
}

/// Mixes a client id into a phase, so clients' increments are spread over the grid.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The admission and placement engine, generic over the estimator.
pub struct Engine<E: Estimator> {
    est: E,
    cfg: EngineConfig,
    profiles: Vec<Compiled<E>>,
    nodes: Vec<Node<E>>,
    free_slots: Vec<usize>,
    by_key: HashMap<NodeId, usize>,
    services: HashMap<ServiceId, Service<E>>,
    clients: HashMap<ClientId, ServiceId>,
    cluster: [E::Agg; 2],
    cluster_limit: [f64; 2],
    /// Set by node changes; the limit is summed again (O(n)) before the next admission.
    cluster_limit_stale: bool,
    index: PlacementIndex,
    scratch: Vec<u64>,
    next_service: u64,
    next_client: u64,
    ms_tests_left: usize,
}

/// Full test of one node for `add`, optionally after removing `remove` from it.
fn node_fits<E: Estimator>(
    est: &E,
    node: &Node<E>,
    add: &Load<E>,
    remove: Option<&Load<E>>,
    scratch: &mut Vec<u64>,
) -> bool {
    if !node.alive {
        return false;
    }
    let freed = remove.map_or(0, |l| l.mem);
    let free = node
        .spec
        .mem_bytes
        .saturating_sub(node.used_mem)
        .saturating_add(freed);
    if free < add.mem {
        return false;
    }
    for r in 0..2 {
        let lvl = match remove {
            None => est.level_merged(&node.agg[r], &add.agg[r], node.spec.conf, scratch),
            Some(rm) => {
                let mut a = node.agg[r].clone();
                est.merge(&mut a, &rm.agg[r], true);
                est.level_merged(&a, &add.agg[r], node.spec.conf, scratch)
            }
        };
        if lvl >= node.limit[r] {
            return false;
        }
    }
    true
}

impl<E: Estimator> Engine<E> {
    /// A new engine with no nodes and no profiles.
    pub fn new(est: E, cfg: EngineConfig) -> Result<Self, EngineError> {
        if cfg.grid == 0 || !(cfg.cluster_conf > 0.0 && cfg.cluster_conf < 1.0) {
            return Err(EngineError::BadSpec(format!(
                "engine config needs grid > 0 and 0 < cluster_conf < 1, got {cfg:?}"
            )));
        }
        let cluster = [
            est.empty(Resource::Cpu, cfg.grid),
            est.empty(Resource::Net, cfg.grid),
        ];
        Ok(Engine {
            est,
            cfg,
            profiles: Vec::new(),
            nodes: Vec::new(),
            free_slots: Vec::new(),
            by_key: HashMap::new(),
            services: HashMap::new(),
            clients: HashMap::new(),
            cluster,
            cluster_limit: [0.0; 2],
            cluster_limit_stale: false,
            index: PlacementIndex::new(),
            scratch: Vec::new(),
            next_service: 1,
            next_client: 1,
            ms_tests_left: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The estimator's name.
    pub fn estimator_name(&self) -> &'static str {
        self.est.name()
    }

    // -----------------------------------------------------------------------------------
    // Profiles
    // -----------------------------------------------------------------------------------

    /// Registers a profile (resampled to the engine's grid) and returns its id.
    pub fn register_profile(&mut self, p: &ServiceProfile) -> Result<ProfileId, EngineError> {
        let bad = |why: &str| EngineError::BadProfile {
            name: p.service.clone(),
            why: why.to_string(),
        };
        let grid = self.cfg.grid;
        let series = |s: &crate::profile::Series, what: &str| {
            let n = s.len();
            if n == 0 {
                return Err(bad(&format!("{what} series has no complete interval")));
            }
            let finite = s.cpu_cores[..n]
                .iter()
                .chain(&s.net_bps[..n])
                .all(|v| v.is_finite() && *v >= 0.0);
            if !finite {
                return Err(bad(&format!(
                    "{what} series has negative or non-finite samples"
                )));
            }
            let mk = |r: Resource, v: &[f64]| -> std::sync::Arc<[u64]> {
                (0..grid)
                    .map(|t| {
                        // Shorter series repeat; longer ones are evenly subsampled.
                        let i = if n >= grid { t * n / grid } else { t % n };
                        r.to_units(v[i])
                    })
                    .collect()
            };
            Ok((
                mk(Resource::Cpu, &s.cpu_cores[..n]),
                mk(Resource::Net, &s.net_bps[..n]),
                s.mem_bytes[..n].iter().copied().max().unwrap_or(0),
            ))
        };
        let (bc, bn, _) = series(&p.base, "base")?;
        let base = [
            self.est.item(Resource::Cpu, &bc),
            self.est.item(Resource::Net, &bn),
        ];
        let (client, client_mem) = match &p.per_client {
            Some(pc) => {
                let (cc, cn, cm) = series(pc, "per-client")?;
                (
                    Some([
                        self.est.item(Resource::Cpu, &cc),
                        self.est.item(Resource::Net, &cn),
                    ]),
                    cm,
                )
            }
            None => (None, 0),
        };
        let lb = |items: &[E::Item; 2]| {
            [
                self.est.lower_bound(&items[0]),
                self.est.lower_bound(&items[1]),
            ]
        };
        let compiled = Compiled {
            ws: p.working_set_bytes,
            client_mem,
            lb_base: lb(&base),
            lb_client: client.as_ref().map_or([0.0; 2], lb),
            base,
            client,
        };
        let id = ProfileId(self.profiles.len() as u32);
        self.profiles.push(compiled);
        Ok(id)
    }

    fn client_phase(&self, c: ClientId) -> usize {
        if self.cfg.align_clients {
            0
        } else {
            (splitmix(c.0) % self.cfg.grid as u64) as usize
        }
    }

    fn load_of(&self, profile: ProfileId, base: bool, clients: &[ClientId]) -> Load<E> {
        let p = &self.profiles[profile.0 as usize];
        let grid = self.cfg.grid;
        let mut load = Load {
            mem: 0,
            lb: [0.0; 2],
            agg: [
                self.est.empty(Resource::Cpu, grid),
                self.est.empty(Resource::Net, grid),
            ],
        };
        if base {
            load.mem += p.ws;
            for r in 0..2 {
                self.est.add(&mut load.agg[r], &p.base[r], 0);
            }
        }
        // Saturating: a hostile profile's memory can only make the load fit nowhere.
        load.mem = load
            .mem
            .saturating_add(p.client_mem.saturating_mul(clients.len() as u64));
        if let Some(items) = &p.client {
            for &c in clients {
                let ph = self.client_phase(c);
                for (r, item) in items.iter().enumerate() {
                    self.est.add(&mut load.agg[r], item, ph);
                }
            }
        }
        load.lb = self.lower_bounds(profile, base, clients.len());
        load
    }

    /// Lower bounds recomputed from the profile (never accumulated, so they cannot drift).
    fn lower_bounds(&self, profile: ProfileId, base: bool, clients: usize) -> [f64; 2] {
        let p = &self.profiles[profile.0 as usize];
        let mut lb = [0.0; 2];
        for (r, l) in lb.iter_mut().enumerate() {
            if base {
                *l += p.lb_base[r];
            }
            if p.client.is_some() {
                *l += p.lb_client[r] * clients as f64;
            }
        }
        lb
    }

    fn service_load(&self, sid: ServiceId) -> Load<E> {
        let s = &self.services[&sid];
        let p = &self.profiles[s.profile.0 as usize];
        match &s.agg {
            Some(agg) => Load {
                mem: p
                    .ws
                    .saturating_add(p.client_mem.saturating_mul(s.clients.len() as u64)),
                lb: self.lower_bounds(s.profile, true, s.clients.len()),
                agg: agg.clone(),
            },
            None => self.load_of(s.profile, true, &s.clients),
        }
    }

    // -----------------------------------------------------------------------------------
    // Nodes
    // -----------------------------------------------------------------------------------

    /// Adds a node. It takes new services at once; nothing is moved onto it.
    pub fn add_node(&mut self, key: NodeId, spec: NodeSpec) -> Result<(), EngineError> {
        spec.validate()?;
        if self.by_key.contains_key(&key) {
            return Err(EngineError::DuplicateNode(key));
        }
        let node = Node {
            key,
            spec,
            alive: true,
            limit: spec.limits(),
            used_mem: 0,
            agg: [
                self.est.empty(Resource::Cpu, self.cfg.grid),
                self.est.empty(Resource::Net, self.cfg.grid),
            ],
            services: Vec::new(),
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.nodes[s] = node;
                s
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.by_key.insert(key, slot);
        self.refresh(slot);
        self.cluster_limit_stale = true;
        tracing::debug!(node = key.0, slot, "node added");
        Ok(())
    }

    /// Removes a node (planned). Its services leave the engine and are returned so the
    /// caller can re-admit them with [`readmit`](Self::readmit).
    pub fn remove_node(&mut self, key: NodeId) -> Result<Vec<Evicted>, EngineError> {
        let slot = *self.by_key.get(&key).ok_or(EngineError::UnknownNode(key))?;
        let sids = std::mem::take(&mut self.nodes[slot].services);
        let mut out = Vec::with_capacity(sids.len());
        for sid in sids {
            let load = self.service_load(sid);
            self.apply_cluster(&load, true);
            let s = self
                .services
                .remove(&sid)
                .expect("node lists only known services");
            for c in &s.clients {
                self.clients.remove(c);
            }
            out.push(Evicted {
                service: sid,
                profile: s.profile,
                clients: s.clients,
            });
        }
        let node = &mut self.nodes[slot];
        node.alive = false;
        node.used_mem = 0;
        node.agg = [
            self.est.empty(Resource::Cpu, self.cfg.grid),
            self.est.empty(Resource::Net, self.cfg.grid),
        ];
        self.index.set(slot, Leaf::DEAD);
        self.by_key.remove(&key);
        self.free_slots.push(slot);
        self.cluster_limit_stale = true;
        tracing::debug!(node = key.0, evicted = out.len(), "node removed");
        Ok(out)
    }

    /// A node died: same as [`remove_node`](Self::remove_node); its services must be
    /// re-admitted elsewhere.
    pub fn node_failed(&mut self, key: NodeId) -> Result<Vec<Evicted>, EngineError> {
        tracing::warn!(node = key.0, "node failed, evicting its services");
        self.remove_node(key)
    }

    fn recompute_cluster_limit(&mut self) {
        let mut l = [0.0; 2];
        for n in self.nodes.iter().filter(|n| n.alive) {
            l[0] += n.limit[0];
            l[1] += n.limit[1];
        }
        self.cluster_limit = l;
    }

    fn refresh(&mut self, slot: usize) {
        let n = &self.nodes[slot];
        let mut head = [0.0; 2];
        for (r, h) in head.iter_mut().enumerate() {
            *h = n.limit[r] - self.est.level(&n.agg[r], n.spec.conf, &mut self.scratch);
        }
        let leaf = Leaf {
            alive: n.alive,
            free_mem: n.spec.mem_bytes.saturating_sub(n.used_mem),
            head,
        };
        self.index.set(slot, leaf);
    }

    fn apply(&mut self, slot: usize, load: &Load<E>, sub: bool) {
        let node = &mut self.nodes[slot];
        for r in 0..2 {
            self.est.merge(&mut node.agg[r], &load.agg[r], sub);
        }
        node.used_mem = if sub {
            node.used_mem - load.mem
        } else {
            node.used_mem + load.mem
        };
        self.refresh(slot);
    }

    fn apply_cluster(&mut self, load: &Load<E>, sub: bool) {
        for r in 0..2 {
            self.est.merge(&mut self.cluster[r], &load.agg[r], sub);
        }
    }

    fn place(&mut self, slot: usize, sid: ServiceId, load: &Load<E>) {
        self.apply(slot, load, false);
        self.nodes[slot].services.push(sid);
        if let Some(s) = self.services.get_mut(&sid) {
            s.slot = slot;
        }
    }

    fn unplace(&mut self, slot: usize, sid: ServiceId, load: &Load<E>) {
        self.apply(slot, load, true);
        let list = &mut self.nodes[slot].services;
        if let Some(i) = list.iter().position(|s| *s == sid) {
            list.swap_remove(i);
        }
    }
}

mod admit;
mod queries;
#[cfg(test)]
mod tests;
