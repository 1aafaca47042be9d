//! The admission and placement engine that the Control actor drives (thesis §4.1.2, §5.6,
//! DESIGN §3–§4): pure state and step calls, no I/O, no clock, no randomness.
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
//! - [`Engine`]: the calls above, queries, and [`Engine::verify`] (recomputes every aggregate
//!   from scratch and compares).

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

    // -----------------------------------------------------------------------------------
    // Admission
    // -----------------------------------------------------------------------------------

    fn cluster_fits(&mut self, load: &Load<E>) -> Result<(), Rejection> {
        if self.cluster_limit_stale {
            self.recompute_cluster_limit();
            self.cluster_limit_stale = false;
        }
        for r in Resource::ALL {
            let i = r.idx();
            let lvl = self.est.level_merged(
                &self.cluster[i],
                &load.agg[i],
                self.cfg.cluster_conf,
                &mut self.scratch,
            );
            if lvl >= self.cluster_limit[i] {
                return Err(Rejection::ClusterCapacity(r));
            }
        }
        Ok(())
    }

    /// Index search for `load` among live nodes not in `exclude`. Inside Migrate the
    /// Smallest (`limited`), every node test spends the decision's test budget, so that a
    /// full cluster rejects in bounded time.
    fn search(&mut self, load: &Load<E>, exclude: &[usize], limited: bool) -> Option<usize> {
        let Engine {
            index,
            nodes,
            est,
            scratch,
            cfg,
            ms_tests_left,
            ..
        } = self;
        let max = if limited { *ms_tests_left } else { usize::MAX };
        let (found, used) = index.search_bounded(cfg.policy, &load.need(), max, |slot| {
            !exclude.contains(&slot) && node_fits(est, &nodes[slot], load, None, scratch)
        });
        if limited {
            *ms_tests_left -= used;
        }
        found
    }

    /// Reference placement by linear scan (for tests and benchmarks of the index).
    pub fn linear_choice(&mut self, profile: ProfileId, clients: u32) -> Option<NodeId> {
        let ids: Vec<ClientId> = (0..clients as u64)
            .map(|i| ClientId(self.next_client + i))
            .collect();
        let load = self.load_of(profile, true, &ids);
        let Engine {
            index,
            nodes,
            est,
            scratch,
            cfg,
            ..
        } = self;
        index
            .linear(cfg.policy, &load.need(), |slot| {
                node_fits(est, &nodes[slot], &load, None, scratch)
            })
            .map(|s| nodes[s].key)
    }

    /// Index placement without MS and without changing anything (the counterpart of
    /// [`linear_choice`](Self::linear_choice)).
    pub fn index_choice(&mut self, profile: ProfileId, clients: u32) -> Option<NodeId> {
        let ids: Vec<ClientId> = (0..clients as u64)
            .map(|i| ClientId(self.next_client + i))
            .collect();
        let load = self.load_of(profile, true, &ids);
        self.search(&load, &[], false).map(|s| self.nodes[s].key)
    }

    /// Admits a new service of `profile` with `initial_clients` clients (a distributor
    /// started for its first viewer has 1).
    pub fn admit_service(
        &mut self,
        profile: ProfileId,
        initial_clients: u32,
    ) -> Result<Decision, Rejection> {
        if profile.0 as usize >= self.profiles.len() {
            return Err(Rejection::UnknownProfile(profile));
        }
        let sid = ServiceId(self.next_service);
        let clients: Vec<ClientId> = (0..initial_clients as u64)
            .map(|i| ClientId(self.next_client + i))
            .collect();
        let d = self.admit_load(profile, sid, clients)?;
        self.next_service += 1;
        self.next_client += initial_clients as u64;
        Ok(d)
    }

    /// Re-admits a service evicted from a removed or failed node, keeping its ids.
    pub fn readmit(&mut self, ev: &Evicted) -> Result<Decision, Rejection> {
        if ev.profile.0 as usize >= self.profiles.len() {
            return Err(Rejection::UnknownProfile(ev.profile));
        }
        if self.services.contains_key(&ev.service)
            || ev.clients.iter().any(|c| self.clients.contains_key(c))
        {
            return Err(Rejection::DuplicateId(ev.service));
        }
        let d = self.admit_load(ev.profile, ev.service, ev.clients.clone())?;
        self.next_service = self.next_service.max(ev.service.0 + 1);
        let maxc = ev.clients.iter().map(|c| c.0 + 1).max().unwrap_or(0);
        self.next_client = self.next_client.max(maxc);
        Ok(d)
    }

    /// Records a service that already runs on `node` (a new Control rebuilding its state
    /// from Agent86 reports, thesis §4.2): no admission test, because the service was
    /// admitted before; the node's and the cluster's aggregates include it from now on.
    /// Ids are kept, and later admissions get fresh ones.
    pub fn adopt(&mut self, ev: &Evicted, node: NodeId) -> Result<(), EngineError> {
        if ev.profile.0 as usize >= self.profiles.len() {
            return Err(EngineError::BadSpec(format!(
                "unknown profile {:?}",
                ev.profile
            )));
        }
        if self.services.contains_key(&ev.service) {
            return Err(EngineError::BadSpec(format!(
                "service {:?} already placed",
                ev.service
            )));
        }
        if let Some(c) = ev.clients.iter().find(|c| self.clients.contains_key(c)) {
            return Err(EngineError::BadSpec(format!("client {c:?} already placed")));
        }
        let slot = *self
            .by_key
            .get(&node)
            .ok_or(EngineError::UnknownNode(node))?;
        let load = self.load_of(ev.profile, true, &ev.clients);
        for &c in &ev.clients {
            self.clients.insert(c, ev.service);
        }
        self.services.insert(
            ev.service,
            Service {
                profile: ev.profile,
                slot,
                clients: ev.clients.clone(),
                agg: (ev.clients.len() >= CACHE_MIN_CLIENTS).then(|| load.agg.clone()),
            },
        );
        self.place(slot, ev.service, &load);
        self.apply_cluster(&load, false);
        self.next_service = self.next_service.max(ev.service.0 + 1);
        let maxc = ev.clients.iter().map(|c| c.0 + 1).max().unwrap_or(0);
        self.next_client = self.next_client.max(maxc);
        Ok(())
    }

    fn admit_load(
        &mut self,
        profile: ProfileId,
        sid: ServiceId,
        clients: Vec<ClientId>,
    ) -> Result<Decision, Rejection> {
        if self.by_key.is_empty() {
            return Err(Rejection::NoNodes);
        }
        let load = self.load_of(profile, true, &clients);
        self.cluster_fits(&load)?;
        let mut migrations = Vec::new();
        let slot = match self.search(&load, &[], false) {
            Some(s) => s,
            None => {
                self.ms_tests_left = self.cfg.ms_max_tests;
                let mut exclude = Vec::new();
                match self.relocate(&load, self.cfg.ms_depth, &mut exclude, &mut migrations) {
                    Some(s) => s,
                    None => {
                        tracing::debug!(profile = profile.0, "service rejected: no node fits");
                        return Err(Rejection::NoFit);
                    }
                }
            }
        };
        for &c in &clients {
            self.clients.insert(c, sid);
        }
        self.services.insert(
            sid,
            Service {
                profile,
                slot,
                clients: clients.clone(),
                agg: (clients.len() >= CACHE_MIN_CLIENTS).then(|| load.agg.clone()),
            },
        );
        self.place(slot, sid, &load);
        self.apply_cluster(&load, false);
        let node = self.nodes[slot].key;
        tracing::debug!(
            service = sid.0,
            node = node.0,
            migrations = migrations.len(),
            "service admitted"
        );
        Ok(Decision {
            service: sid,
            node,
            clients,
            migrations,
        })
    }

    /// Finds a node for `load` outside `exclude`, making room with MS within `budget`
    /// migrations. On `None` nothing has changed.
    fn relocate(
        &mut self,
        load: &Load<E>,
        budget: u32,
        exclude: &mut Vec<usize>,
        migs: &mut Vec<Migration>,
    ) -> Option<usize> {
        if self.ms_tests_left == 0 {
            return None;
        }
        if let Some(s) = self.search(load, exclude, true) {
            return Some(s);
        }
        if budget == 0 {
            return None;
        }
        let ex = exclude.clone();
        let cands = self
            .index
            .top_by_free_mem(self.cfg.ms_candidates, |s| !ex.contains(&s));
        cands
            .into_iter()
            .find(|&slot| self.evict_one(slot, load, budget, exclude, None, migs))
    }

    /// Makes room for `load` on `slot` by moving one service (smallest working set first,
    /// never `skip`) elsewhere within `budget` migrations. On `false` nothing has changed;
    /// on `true` the caller places `load` on `slot`.
    fn evict_one(
        &mut self,
        slot: usize,
        load: &Load<E>,
        budget: u32,
        exclude: &mut Vec<usize>,
        skip: Option<ServiceId>,
        migs: &mut Vec<Migration>,
    ) -> bool {
        if budget == 0 {
            return false;
        }
        let mut cands: Vec<(u64, ServiceId)> = self.nodes[slot]
            .services
            .iter()
            .filter(|s| Some(**s) != skip)
            .map(|s| {
                let sv = &self.services[s];
                let p = &self.profiles[sv.profile.0 as usize];
                (
                    p.ws.saturating_add(p.client_mem.saturating_mul(sv.clients.len() as u64)),
                    *s,
                )
            })
            .collect();
        cands.sort_unstable();
        exclude.push(slot);
        let mut done = false;
        for (_, v) in cands {
            if self.ms_tests_left == 0 {
                break;
            }
            self.ms_tests_left -= 1;
            let vload = self.service_load(v);
            if !node_fits(
                &self.est,
                &self.nodes[slot],
                load,
                Some(&vload),
                &mut self.scratch,
            ) {
                continue;
            }
            self.unplace(slot, v, &vload);
            if let Some(target) = self.relocate(&vload, budget - 1, exclude, migs) {
                self.place(target, v, &vload);
                migs.push(Migration {
                    service: v,
                    from: self.nodes[slot].key,
                    to: self.nodes[target].key,
                });
                done = true;
                break;
            }
            self.place(slot, v, &vload);
        }
        exclude.pop();
        done
    }

    /// Admits one more client to `service` (the Smart-GloVE rule: it joins the existing
    /// distributor; if its node is full, MS moves another distributor away).
    pub fn admit_client(&mut self, service: ServiceId) -> Result<ClientDecision, Rejection> {
        let (profile, slot) = match self.services.get(&service) {
            Some(s) => (s.profile, s.slot),
            None => return Err(Rejection::UnknownService(service)),
        };
        let cid = ClientId(self.next_client);
        let load = self.load_of(profile, false, &[cid]);
        self.cluster_fits(&load)?;
        let mut migrations = Vec::new();
        let fits = node_fits(&self.est, &self.nodes[slot], &load, None, &mut self.scratch);
        if !fits {
            self.ms_tests_left = self.cfg.ms_max_tests;
            let mut exclude = Vec::new();
            if !self.evict_one(
                slot,
                &load,
                self.cfg.ms_depth,
                &mut exclude,
                Some(service),
                &mut migrations,
            ) {
                tracing::debug!(
                    service = service.0,
                    "client rejected: distributor node full"
                );
                return Err(Rejection::NoFit);
            }
        }
        self.next_client += 1;
        self.apply(slot, &load, false);
        self.apply_cluster(&load, false);
        self.clients.insert(cid, service);
        let s = self.services.get_mut(&service).expect("checked above");
        s.clients.push(cid);
        match &mut s.agg {
            Some(agg) => {
                for (a, l) in agg.iter_mut().zip(&load.agg) {
                    self.est.merge(a, l, false);
                }
            }
            None if s.clients.len() >= CACHE_MIN_CLIENTS => {
                let clients = s.clients.clone();
                let full = self.load_of(profile, true, &clients);
                self.services.get_mut(&service).expect("checked above").agg = Some(full.agg);
            }
            None => {}
        }
        Ok(ClientDecision {
            client: cid,
            service,
            node: self.nodes[slot].key,
            migrations,
        })
    }

    // -----------------------------------------------------------------------------------
    // Release
    // -----------------------------------------------------------------------------------

    /// A client left; returns the service it was watching.
    pub fn release_client(&mut self, client: ClientId) -> Result<ServiceId, EngineError> {
        let sid = *self
            .clients
            .get(&client)
            .ok_or(EngineError::UnknownClient(client))?;
        let s = &self.services[&sid];
        let (profile, slot) = (s.profile, s.slot);
        let load = self.load_of(profile, false, &[client]);
        self.apply(slot, &load, true);
        self.apply_cluster(&load, true);
        self.clients.remove(&client);
        let s = self
            .services
            .get_mut(&sid)
            .expect("client maps to a service");
        if let Some(i) = s.clients.iter().position(|c| *c == client) {
            s.clients.swap_remove(i);
        }
        if let Some(agg) = &mut s.agg {
            for (a, l) in agg.iter_mut().zip(&load.agg) {
                self.est.merge(a, l, true);
            }
        }
        Ok(sid)
    }

    /// Moves a placed service, with its clients, to another node where it fits (no MS, and
    /// never back onto its current node): what the Control does with an instance that runs
    /// persistently over its profile (thesis §4.1.1). The cluster aggregate is unchanged.
    /// Returns the new node; on `NoFit` nothing changes.
    pub fn move_elsewhere(&mut self, service: ServiceId) -> Result<NodeId, Rejection> {
        let Some(s) = self.services.get(&service) else {
            return Err(Rejection::UnknownService(service));
        };
        let from = s.slot;
        let load = self.service_load(service);
        let Some(to) = self.search(&load, &[from], false) else {
            return Err(Rejection::NoFit);
        };
        self.unplace(from, service, &load);
        self.place(to, service, &load);
        Ok(self.nodes[to].key)
    }

    /// A service ended; its remaining clients are released with it and returned.
    pub fn release_service(&mut self, service: ServiceId) -> Result<Vec<ClientId>, EngineError> {
        if !self.services.contains_key(&service) {
            return Err(EngineError::UnknownService(service));
        }
        let load = self.service_load(service);
        let slot = self.services[&service].slot;
        self.unplace(slot, service, &load);
        self.apply_cluster(&load, true);
        let s = self.services.remove(&service).expect("checked above");
        for c in &s.clients {
            self.clients.remove(c);
        }
        Ok(s.clients)
    }

    // -----------------------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------------------

    /// The node running a service.
    pub fn node_of(&self, service: ServiceId) -> Option<NodeId> {
        self.services.get(&service).map(|s| self.nodes[s.slot].key)
    }

    /// The service a client watches.
    pub fn service_of(&self, client: ClientId) -> Option<ServiceId> {
        self.clients.get(&client).copied()
    }

    /// A service's clients.
    pub fn clients_of(&self, service: ServiceId) -> Option<&[ClientId]> {
        self.services.get(&service).map(|s| s.clients.as_slice())
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Number of clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Keys of the live nodes.
    pub fn node_keys(&self) -> Vec<NodeId> {
        let mut k: Vec<NodeId> = self.by_key.keys().copied().collect();
        k.sort();
        k
    }

    /// Status of a node.
    pub fn node_status(&mut self, key: NodeId) -> Option<NodeStatus> {
        let slot = *self.by_key.get(&key)?;
        let n = &self.nodes[slot];
        let mut level = [0.0; 2];
        for r in Resource::ALL {
            let u = self
                .est
                .level(&n.agg[r.idx()], n.spec.conf, &mut self.scratch);
            level[r.idx()] = r.from_units(u);
        }
        Some(NodeStatus {
            key,
            spec: n.spec,
            used_mem: n.used_mem,
            level,
            services: n.services.len(),
        })
    }

    /// Every service with its node and clients (sorted): the registry the Control replicates.
    pub fn placements(&self) -> BTreeMap<ServiceId, (NodeId, Vec<ClientId>)> {
        self.services
            .iter()
            .map(|(sid, s)| {
                let mut c = s.clients.clone();
                c.sort();
                (*sid, (self.nodes[s.slot].key, c))
            })
            .collect()
    }

    /// Recomputes every aggregate, memory sum and index leaf from scratch and compares them
    /// with the incremental state; also checks that no node's memory is overbooked.
    pub fn verify(&mut self) -> Result<(), String> {
        let grid = self.cfg.grid;
        let mut cluster = [
            self.est.empty(Resource::Cpu, grid),
            self.est.empty(Resource::Net, grid),
        ];
        for slot in 0..self.nodes.len() {
            let n = &self.nodes[slot];
            if !n.alive {
                if self.index.leaf(slot).alive {
                    return Err(format!("dead slot {slot} is alive in the index"));
                }
                continue;
            }
            let mut agg = [
                self.est.empty(Resource::Cpu, grid),
                self.est.empty(Resource::Net, grid),
            ];
            let mut mem = 0u64;
            for sid in &n.services {
                let s = self
                    .services
                    .get(sid)
                    .ok_or(format!("node lists unknown {sid:?}"))?;
                if s.slot != slot {
                    return Err(format!(
                        "{sid:?} listed on slot {slot} but placed on {}",
                        s.slot
                    ));
                }
                // Rebuild the service from its profile and clients, not from its cache.
                let load = self.load_of(s.profile, true, &s.clients);
                if s.agg.as_ref().is_some_and(|a| *a != load.agg) {
                    return Err(format!("{sid:?} aggregate drifted"));
                }
                mem += load.mem;
                for r in 0..2 {
                    self.est.merge(&mut agg[r], &load.agg[r], false);
                    self.est.merge(&mut cluster[r], &load.agg[r], false);
                }
            }
            if agg != n.agg {
                return Err(format!("node {:?} aggregate drifted", n.key));
            }
            if mem != n.used_mem {
                return Err(format!(
                    "node {:?} memory {} != recomputed {mem}",
                    n.key, n.used_mem
                ));
            }
            if mem > n.spec.mem_bytes {
                return Err(format!(
                    "node {:?} memory overbooked: {mem} > {}",
                    n.key, n.spec.mem_bytes
                ));
            }
            let leaf = self.index.leaf(slot);
            let mut head = [0.0; 2];
            for (r, h) in head.iter_mut().enumerate() {
                *h = n.limit[r] - self.est.level(&n.agg[r], n.spec.conf, &mut self.scratch);
            }
            if !leaf.alive || leaf.free_mem != n.spec.mem_bytes - mem || leaf.head != head {
                return Err(format!("index leaf of {:?} is stale", n.key));
            }
        }
        if cluster != self.cluster {
            return Err("cluster aggregate drifted".into());
        }
        let listed: usize = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.services.len())
            .sum();
        if listed != self.services.len() {
            return Err(format!(
                "{listed} services on nodes, {} known",
                self.services.len()
            ));
        }
        let nclients: usize = self.services.values().map(|s| s.clients.len()).sum();
        if nclients != self.clients.len() {
            return Err(format!(
                "{nclients} clients on services, {} known",
                self.clients.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimator::{Empirical, Peak};
    use crate::profile::{PROFILE_FORMAT_VERSION, Series};

    const MB: u64 = 1 << 20;

    fn series(cpu: f64, net: f64) -> Series {
        Series {
            cpu_cores: vec![cpu; 4],
            net_bps: vec![net; 4],
            mem_bytes: vec![0; 4],
        }
    }

    fn profile(ws_mb: u64, cpu: f64, net: f64, client_net: Option<f64>) -> ServiceProfile {
        ServiceProfile {
            version: PROFILE_FORMAT_VERSION,
            service: "t".into(),
            interval_ms: 1000,
            base: series(cpu, net),
            per_client: client_net.map(|n| series(0.0, n)),
            working_set_bytes: ws_mb * MB,
        }
    }

    fn engine(nodes: &[(u64, f64, f64)]) -> Engine<Peak> {
        let cfg = EngineConfig {
            grid: 4,
            ..EngineConfig::default()
        };
        let mut e = Engine::new(Peak, cfg).unwrap();
        for (i, (mem, cpu, net)) in nodes.iter().enumerate() {
            let mut spec = NodeSpec::new(mem * MB, *cpu, *net);
            spec.vr = 1.0;
            e.add_node(NodeId(i as u64), spec).unwrap();
        }
        e
    }

    #[test]
    fn move_elsewhere_picks_another_node_or_changes_nothing() {
        let mut e = engine(&[(100, 4.0, 1e9), (300, 4.0, 1e9)]);
        let p = e
            .register_profile(&profile(80, 0.1, 1e6, Some(1e5)))
            .unwrap();
        let d = e.admit_service(p, 2).unwrap();
        assert_eq!(d.node, NodeId(1));
        assert_eq!(e.move_elsewhere(d.service), Ok(NodeId(0)));
        assert_eq!(e.node_of(d.service), Some(NodeId(0)));
        assert_eq!(e.clients_of(d.service).unwrap().len(), 2);
        e.verify().unwrap();
        // Node 1 filled up to 20 MB free: the service cannot go back there.
        let big = e.register_profile(&profile(280, 0.1, 1e6, None)).unwrap();
        assert_eq!(e.admit_service(big, 0).unwrap().node, NodeId(1));
        assert_eq!(e.move_elsewhere(d.service), Err(Rejection::NoFit));
        assert_eq!(e.node_of(d.service), Some(NodeId(0)));
        e.verify().unwrap();
        assert_eq!(
            e.move_elsewhere(ServiceId(99)),
            Err(Rejection::UnknownService(ServiceId(99)))
        );
    }

    #[test]
    fn worst_fit_spreads_and_memory_is_never_overbooked() {
        let mut e = engine(&[(100, 4.0, 1e9), (300, 4.0, 1e9)]);
        let p = e.register_profile(&profile(120, 0.1, 1e6, None)).unwrap();
        let d1 = e.admit_service(p, 0).unwrap();
        assert_eq!((d1.node, d1.migrations.len()), (NodeId(1), 0));
        let d2 = e.admit_service(p, 0).unwrap();
        assert_eq!(d2.node, NodeId(1));
        // 60 MB left on node 1, 100 MB on node 0: 120 MB fits nowhere, and MS cannot help
        // because moving a 120 MB service frees room only where nothing else fits.
        assert_eq!(e.admit_service(p, 0), Err(Rejection::NoFit));
        e.verify().unwrap();
    }

    #[test]
    fn adopt_rebuilds_the_same_state_as_the_admissions() {
        let mut a = engine(&[(300, 4.0, 1e9), (300, 4.0, 1e9)]);
        let p = a
            .register_profile(&profile(50, 0.1, 1e6, Some(4e5)))
            .unwrap();
        let d1 = a.admit_service(p, 2).unwrap();
        let d2 = a.admit_service(p, 1).unwrap();
        // A new Control learns the same placements from reports.
        let mut b = engine(&[(300, 4.0, 1e9), (300, 4.0, 1e9)]);
        let pb = b
            .register_profile(&profile(50, 0.1, 1e6, Some(4e5)))
            .unwrap();
        for d in [&d1, &d2] {
            let ev = Evicted {
                service: d.service,
                profile: pb,
                clients: d.clients.clone(),
            };
            b.adopt(&ev, d.node).unwrap();
        }
        assert_eq!(a.placements(), b.placements());
        assert_eq!(
            a.node_status(d1.node).unwrap().used_mem,
            b.node_status(d1.node).unwrap().used_mem
        );
        b.verify().unwrap();
        // Twice is refused; new ids do not collide with adopted ones.
        let again = Evicted {
            service: d1.service,
            profile: pb,
            clients: vec![],
        };
        assert!(b.adopt(&again, d1.node).is_err());
        let d3 = b.admit_service(pb, 1).unwrap();
        assert!(d3.service.0 > d2.service.0);
        assert!(d3.clients[0].0 > d2.clients[0].0);
    }

    #[test]
    fn migrate_the_smallest_moves_one_service_and_reports_it() {
        // Node 0: 100 MB; node 1: 60 MB. Put a 50 MB service on node 0 (worst-fit), then a
        // 60 MB one fills node 1. An 80 MB newcomer fits nowhere, until the 50 MB service
        // leaves node 0 ... but node 1 is full, so it needs a third node.
        let mut e = engine(&[(100, 4.0, 1e9), (60, 4.0, 1e9), (55, 4.0, 1e9)]);
        let small = e.register_profile(&profile(50, 0.1, 1e6, None)).unwrap();
        let big = e.register_profile(&profile(80, 0.1, 1e6, None)).unwrap();
        let s = e.admit_service(small, 0).unwrap();
        assert_eq!(s.node, NodeId(0));
        let d = e.admit_service(big, 0).unwrap();
        assert_eq!(d.node, NodeId(0));
        assert_eq!(
            d.migrations,
            vec![Migration {
                service: s.service,
                from: NodeId(0),
                to: NodeId(1),
            }]
        );
        assert_eq!(e.node_of(s.service), Some(NodeId(1)));
        e.verify().unwrap();
    }

    #[test]
    fn migrate_the_smallest_chains_up_to_its_depth() {
        let setup = |depth: u32| {
            let mut e = engine(&[(100, 4.0, 1e9), (60, 4.0, 1e9), (40, 4.0, 1e9)]);
            e.cfg.ms_depth = depth;
            let v = e.register_profile(&profile(50, 0.1, 1e6, None)).unwrap();
            let w = e.register_profile(&profile(30, 0.1, 1e6, None)).unwrap();
            let x = e.register_profile(&profile(80, 0.1, 1e6, None)).unwrap();
            let dv = e.admit_service(v, 0).unwrap();
            let dw = e.admit_service(w, 0).unwrap();
            assert_eq!((dv.node, dw.node), (NodeId(0), NodeId(1)));
            (e, x, dv.service, dw.service)
        };
        // 80 MB fits nowhere; v (50 MB) must leave node 0 for node 1, which needs w (30 MB)
        // to leave for node 2 first: a chain of two.
        let (mut e, x, v, w) = setup(2);
        let d = e.admit_service(x, 0).unwrap();
        assert_eq!(d.node, NodeId(0));
        assert_eq!(
            d.migrations,
            vec![
                Migration {
                    service: w,
                    from: NodeId(1),
                    to: NodeId(2),
                },
                Migration {
                    service: v,
                    from: NodeId(0),
                    to: NodeId(1),
                },
            ]
        );
        e.verify().unwrap();
        // With depth 1 the same request is refused and nothing moves.
        let (mut e, x, _, _) = setup(1);
        let before = e.placements();
        assert_eq!(e.admit_service(x, 0), Err(Rejection::NoFit));
        assert_eq!(e.placements(), before);
        e.verify().unwrap();
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        let mut e = engine(&[(1000, 4.0, 1e9)]);
        let mut nan = profile(10, 0.1, 1e6, None);
        nan.base.cpu_cores[1] = f64::NAN;
        assert!(matches!(
            e.register_profile(&nan),
            Err(EngineError::BadProfile { .. })
        ));
        let mut empty = profile(10, 0.1, 1e6, None);
        empty.base.mem_bytes.clear();
        assert!(matches!(
            e.register_profile(&empty),
            Err(EngineError::BadProfile { .. })
        ));
        let mut spec = NodeSpec::new(MB, 1.0, 1e6);
        spec.conf = 1.0;
        assert!(matches!(
            e.add_node(NodeId(9), spec),
            Err(EngineError::BadSpec(_))
        ));
        assert!(matches!(
            e.add_node(NodeId(0), NodeSpec::new(MB, 1.0, 1e6)),
            Err(EngineError::DuplicateNode(NodeId(0)))
        ));
        // A hostile per-client memory cannot overflow: the load simply fits nowhere.
        let mut huge = profile(10, 0.1, 1e6, Some(1e3));
        huge.per_client.as_mut().unwrap().mem_bytes = vec![u64::MAX; 4];
        let p = e.register_profile(&huge).unwrap();
        assert_eq!(e.admit_service(p, 3), Err(Rejection::NoFit));
        assert_eq!(
            e.admit_service(ProfileId(99), 0),
            Err(Rejection::UnknownProfile(ProfileId(99)))
        );
        assert_eq!(
            e.release_client(ClientId(5)),
            Err(EngineError::UnknownClient(ClientId(5)))
        );
        e.verify().unwrap();
    }

    #[test]
    fn failed_migration_changes_nothing() {
        let mut e = engine(&[(100, 4.0, 1e9), (40, 4.0, 1e9)]);
        let small = e.register_profile(&profile(50, 0.1, 1e6, None)).unwrap();
        let big = e.register_profile(&profile(80, 0.1, 1e6, None)).unwrap();
        e.admit_service(small, 0).unwrap();
        let before = e.placements();
        assert_eq!(e.admit_service(big, 0), Err(Rejection::NoFit));
        assert_eq!(e.placements(), before);
        e.verify().unwrap();
    }

    #[test]
    fn client_joins_its_distributor_and_ms_moves_another_away() {
        // Node 0 (worst-fit first) has 10 Mbit/s; each distributor base uses 2 Mbit/s, each
        // client 1 Mbit/s.
        let mut e = engine(&[(1000, 4.0, 10e6), (500, 4.0, 10e6)]);
        let video = e
            .register_profile(&profile(100, 0.1, 2e6, Some(1e6)))
            .unwrap();
        let other = e
            .register_profile(&profile(50, 0.1, 2e6, Some(1e6)))
            .unwrap();
        let a = e.admit_service(video, 1).unwrap();
        assert_eq!(a.node, NodeId(0));
        let b = e.admit_service(other, 1).unwrap();
        assert_eq!(b.node, NodeId(0), "still the most free memory");
        // Node 0 uses 2+1+2+1 = 6 Mbit/s. Three more clients of `video` fill it to 9.
        for _ in 0..3 {
            let c = e.admit_client(a.service).unwrap();
            assert!(c.migrations.is_empty());
        }
        // The next one needs the other distributor (3 Mbit/s) to move to node 1.
        let c = e.admit_client(a.service).unwrap();
        assert_eq!(c.node, NodeId(0));
        assert_eq!(
            c.migrations,
            vec![Migration {
                service: b.service,
                from: NodeId(0),
                to: NodeId(1),
            }]
        );
        assert_eq!(e.clients_of(a.service).unwrap().len(), 5);
        e.verify().unwrap();
        // Releasing returns everything.
        e.release_client(c.client).unwrap();
        let gone = e.release_service(a.service).unwrap();
        assert_eq!(gone.len(), 4);
        e.release_service(b.service).unwrap();
        assert_eq!((e.service_count(), e.client_count()), (0, 0));
        e.verify().unwrap();
    }

    #[test]
    fn cluster_test_rejects_fast() {
        let mut e = engine(&[(1000, 1.0, 1e9), (1000, 1.0, 1e9)]);
        let p = e.register_profile(&profile(10, 0.6, 1e6, None)).unwrap();
        let q = e.register_profile(&profile(10, 0.9, 1e6, None)).unwrap();
        e.admit_service(p, 0).unwrap();
        e.admit_service(p, 0).unwrap();
        // 1.2 + 0.9 cores exceed the cluster's 2.0 before any node is tried.
        assert_eq!(
            e.admit_service(q, 0),
            Err(Rejection::ClusterCapacity(Resource::Cpu))
        );
    }

    #[test]
    fn failed_node_services_are_readmitted_with_their_ids() {
        let mut e = engine(&[(1000, 4.0, 1e9), (1000, 4.0, 1e9)]);
        let p = e
            .register_profile(&profile(100, 0.1, 1e6, Some(1e5)))
            .unwrap();
        let d = e.admit_service(p, 2).unwrap();
        let ev = e.node_failed(d.node).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].clients, d.clients);
        assert_eq!(e.service_count(), 0);
        let again = e.readmit(&ev[0]).unwrap();
        assert_eq!(again.service, d.service);
        assert_ne!(again.node, d.node);
        assert_eq!(e.service_of(d.clients[0]), Some(d.service));
        assert_eq!(e.readmit(&ev[0]), Err(Rejection::DuplicateId(d.service)));
        e.verify().unwrap();
    }

    #[test]
    fn empirical_overbooks_where_peak_cannot() {
        // Bursts in 1 of 4 intervals at different phases: peaks sum to 4 cores, but at
        // C = 0.75 the aligned sums never exceed 2.
        let mk = |k: usize| {
            let mut cpu = vec![0.5; 4];
            cpu[k] = 1.0;
            ServiceProfile {
                version: PROFILE_FORMAT_VERSION,
                service: "b".into(),
                interval_ms: 1000,
                base: Series {
                    cpu_cores: cpu,
                    net_bps: vec![0.0; 4],
                    mem_bytes: vec![0; 4],
                },
                per_client: None,
                working_set_bytes: MB,
            }
        };
        let cfg = EngineConfig {
            grid: 4,
            cluster_conf: 0.5,
            ..EngineConfig::default()
        };
        let mut spec = NodeSpec::new(1000 * MB, 2.6, 1e9);
        spec.vr = 1.0;
        spec.conf = 0.75;
        let mut emp = Engine::new(Empirical, cfg).unwrap();
        let mut peak = Engine::new(Peak, cfg).unwrap();
        emp.add_node(NodeId(0), spec).unwrap();
        peak.add_node(NodeId(0), spec).unwrap();
        let (mut ne, mut np) = (0, 0);
        for k in 0..4 {
            let pe = emp.register_profile(&mk(k)).unwrap();
            let pp = peak.register_profile(&mk(k)).unwrap();
            ne += emp.admit_service(pe, 0).is_ok() as u32;
            np += peak.admit_service(pp, 0).is_ok() as u32;
        }
        // Empirical: 4 services give sums 2.5 everywhere (< 2.6). Peak: 1.0 each → 2 fit.
        assert_eq!((ne, np), (4, 2));
    }
}
