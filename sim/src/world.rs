//! The simulated cluster: nodes (what survives a kill, the running process and its actors'
//! state), the event queue on virtual time, node clocks, requests between nodes, and the
//! main loop that pops events and hands each to the shell it belongs to.
//!
//! Every event that belongs to a node carries the process (`boot`) or the Control actor
//! (`cid`) it was meant for: an event outliving its process or actor is dropped, as a dead
//! process's timers and sockets are. An event for a paused node waits until it resumes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smart_agent86::engine::Agent86Engine;
use smart_control::peer::PeerError;
use smart_control::{ControlEngine, ControlTuning};
use smart_membership::engine::NodeEngine;
use smart_membership::view::{AgentAddr, ClusterView};
use smart_proto::agent::AgentReply;
use smart_proto::api::{ApiError, Request, Response};
use smart_proto::node::{NodeRequest, NodeResponse, Replica};
use smart_proto::pair::{MemberKeys, public_key};
use smart_proto::{ClusterKey, Epoch, NodeId};

use crate::history::History;
use crate::net::Network;
use crate::raft::{Lead, RaftModel};
use smart_proto::desired::{DesiredCmd, DesiredState, Leadership};

/// Election mode of the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Available mode: any node with the Control role may be elected.
    Available,
    /// Majority mode: the Control is the desired-state log's Raft leader (modelled,
    /// [`crate::raft`]) and acts only while a quorum acknowledged it.
    Majority,
}

/// The cluster's fixed parameters.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Number of nodes (each an agent and eligible Control).
    pub nodes: usize,
    /// Election mode.
    pub mode: Mode,
}

/// What the supervisor of a node is told (`NodeMsg` of the real node).
#[derive(Debug, Clone)]
pub(crate) enum SupMsg {
    StartControl { epoch: Epoch, acting: bool },
    ControlEpoch { epoch: Epoch },
    ControlActing { epoch: Epoch, acting: bool },
    StopControl,
}

/// What the membership actor is told besides ticks and datagrams (`MembershipMsg`).
#[derive(Debug, Clone)]
pub(crate) enum MemMsg {
    RebuildDone(Epoch),
    ControlStale(Epoch),
}

/// The Control actor's mailbox (`ControlMsg`).
#[derive(Debug, Clone)]
pub(crate) enum CtlMsg {
    Tick,
    Input(smart_control::Input),
    Api {
        fwd: u64,
        attempt: u64,
        req: Request,
    },
    SetEpoch(Epoch),
    ActingChanged,
}

/// What the simulated instance runtime finishes later.
#[derive(Debug, Clone)]
pub(crate) enum RtEv {
    /// Started (and restored, for a migration target) or failed.
    Ready { instance: String },
    /// Stopped after its grace period.
    Stopped { instance: String },
    /// Its clients were handed over.
    HandedOff { instance: String },
    /// Stopped after a hand-over.
    Gone { instance: String },
}

#[derive(Debug)]
pub(crate) enum Ev {
    MTick {
        n: usize,
        boot: u64,
    },
    ATick {
        n: usize,
        boot: u64,
    },
    CTick {
        n: usize,
        cid: u64,
    },
    Datagram {
        to: usize,
        bytes: Vec<u8>,
    },
    Arrive {
        rpc: u64,
        to: usize,
        from: usize,
        req: NodeRequest,
    },
    Answer {
        rpc: u64,
        result: Result<NodeResponse, PeerError>,
    },
    RpcTimeout {
        rpc: u64,
    },
    AgentBudget {
        n: usize,
        boot: u64,
        areq: u64,
    },
    Sup {
        n: usize,
        boot: u64,
        msg: SupMsg,
    },
    Mem {
        n: usize,
        boot: u64,
        msg: MemMsg,
    },
    Ctl {
        n: usize,
        cid: u64,
        msg: CtlMsg,
    },
    Runtime {
        n: usize,
        boot: u64,
        ev: RtEv,
    },
    FwdWake {
        fwd: u64,
        attempt: u64,
    },
    CallTimeout {
        fwd: u64,
        attempt: u64,
    },
    /// Majority mode: the Raft model's step.
    Raft,
}

pub(crate) struct Queued {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// An instance process of the simulated runtime.
#[derive(Debug, Clone)]
pub(crate) struct RtProc {
    /// The service it serves (from its launch's identity).
    pub(crate) service: String,
    /// Accepting viewers (started, not stopping).
    pub(crate) running: bool,
    /// Being stopped.
    pub(crate) stopping: bool,
    /// Started in restore mode (a migration target).
    pub(crate) restore: bool,
}

/// An agent command being executed: who waits for the answer.
#[derive(Debug)]
pub(crate) struct AgentWait {
    pub(crate) rpc: u64,
    pub(crate) from: usize,
    pub(crate) instance: Option<String>,
}

/// The supervisor's record of this node's Control term (`ControlSlot`).
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) epoch: Epoch,
    pub(crate) acting: bool,
    pub(crate) actor: Option<u64>,
}

/// One report round of the Control: the answers so far.
pub(crate) struct RoundAcc {
    pub(crate) started: std::time::Instant,
    pub(crate) results: Vec<(AgentAddr, Option<Result<AgentReply, PeerError>>)>,
    pub(crate) left: usize,
    /// The rebuild round `post_start` waits for.
    pub(crate) post_start: bool,
}

/// The Control actor.
pub(crate) struct ControlActor {
    pub(crate) cid: u64,
    pub(crate) engine: ControlEngine,
    /// `post_start` finished: the mailbox is served.
    pub(crate) started: bool,
    pub(crate) mailbox: VecDeque<CtlMsg>,
    /// What `post_start` still has to execute after its round.
    pub(crate) post_rest: Vec<smart_control::Output>,
    /// The agents the view watcher last passed on.
    pub(crate) last_agents: Vec<AgentAddr>,
    pub(crate) next_api: u64,
    /// API calls waiting for the engine's answer: id → (forwarder, attempt).
    pub(crate) calls: HashMap<u64, (u64, u64)>,
    pub(crate) rounds: HashMap<u64, RoundAcc>,
    /// The epoch it acts at, when its engine is rebuilt and acting (kept by
    /// `invariants::acting::record` after every step).
    pub(crate) acting: Option<Epoch>,
    /// The version of the desired-state log it was last told of (`post_start` reads it).
    pub(crate) desired_seen: u64,
    /// Admissions written to the desired-state log before the engine decided, by API id: a
    /// refusal removes the service again.
    pub(crate) written_admits: HashMap<u64, String>,
}

/// A running `smart node` process.
pub(crate) struct Proc {
    pub(crate) boot: u64,
    pub(crate) membership: NodeEngine<ChaCha8Rng>,
    pub(crate) view: ClusterView,
    /// What membership publishes after every input: whether, and until when, the Control
    /// may act (the Control's acting source).
    pub(crate) acting: smart_membership::view::ActingLease,
    pub(crate) agent: Agent86Engine,
    pub(crate) agent_waits: HashMap<u64, AgentWait>,
    pub(crate) next_areq: u64,
    /// Commands fed to the agent engine and not yet executed or refused, in arrival order,
    /// with the durable epoch they wait for: the shell's mirror of the engine's queue.
    pub(crate) queued: VecDeque<(u64, Epoch)>,
    pub(crate) persisted: Epoch,
    pub(crate) runtime: BTreeMap<String, RtProc>,
    pub(crate) replica: Replica,
    pub(crate) slot: Option<Slot>,
    pub(crate) control: Option<ControlActor>,
}

/// A node: what survives its process, and the process.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    /// Its clock domain: an offset and a rate.
    pub(crate) offset: Duration,
    pub(crate) rate: f64,
    /// Persisted: the highest epoch seen.
    pub(crate) disk_highest: Epoch,
    /// Persisted: the incarnation of the last boot.
    pub(crate) incarnation: u64,
    pub(crate) proc: Option<Proc>,
    /// SIGSTOPped until then.
    pub(crate) paused_until: Option<Duration>,
}

/// What a request between nodes is for, on the caller's side.
#[derive(Debug, Clone)]
pub(crate) enum RpcKind {
    Round { cid: u64, round: u64, idx: usize },
    Command { cid: u64, req: u64 },
    Replicate,
    Forward { fwd: u64, attempt: u64 },
}

#[derive(Debug)]
pub(crate) struct Rpc {
    pub(crate) caller: usize,
    pub(crate) boot: u64,
    pub(crate) to: usize,
    pub(crate) kind: RpcKind,
    /// An agent command (`agent_call`): the request and when its caller's timeout ends,
    /// to ask again when the agent's node has not heard of this Control yet.
    pub(crate) retry: Option<(NodeRequest, Duration)>,
}

/// Where a forwarded API request's answer goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// An operator's request (index in `History::requests`).
    Client(usize),
    /// An `ApiWithin` from another node.
    Rpc { rpc: u64 },
}

/// A request on its way to the Control (`Forwarder::forward_by`).
#[derive(Debug)]
pub(crate) struct Fwd {
    pub(crate) node: usize,
    pub(crate) boot: u64,
    pub(crate) req: Request,
    pub(crate) deadline: Duration,
    pub(crate) last: Option<ApiError>,
    pub(crate) origin: Origin,
    pub(crate) attempt: u64,
}

/// Counts for the figures.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Events handled.
    pub events: u64,
    /// Datagrams delivered.
    pub datagrams: u64,
    /// Requests between nodes sent.
    pub rpcs: u64,
    /// Agent commands executed.
    pub executed: u64,
    /// Invariant checks run.
    pub checks: u64,
}

/// The simulator. See the crate docs.
pub struct Sim {
    pub(crate) setup: Setup,
    pub(crate) seed: u64,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) key: ClusterKey,
    /// Each node's pair keys with the others (index = node index): every datagram carries
    /// and is checked for its sender's pair tags as on real nodes.
    pub(crate) member_keys: Vec<MemberKeys>,
    base: std::time::Instant,
    pub(crate) now: Duration,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) net: Network,
    pub(crate) rpcs: HashMap<u64, Rpc>,
    next_rpc: u64,
    pub(crate) fwds: HashMap<u64, Fwd>,
    pub(crate) next_fwd: u64,
    pub(crate) next_cid: u64,
    pub(crate) tuning: ControlTuning,
    pub(crate) history: History,
    pub(crate) log: VecDeque<String>,
    pub(crate) stats: Stats,
    /// The first invariant violated, if any.
    pub(crate) failure: Option<String>,
    /// Majority mode: the desired-state log's Raft leadership, and what each node's
    /// membership was last told of it.
    pub(crate) raft: Option<RaftModel>,
    pub(crate) raft_told: Vec<Option<Lead>>,
    /// The desired-state log's committed state (durable once committed: it survives every
    /// kill and whole-cluster stop), and how many writes changed it.
    pub(crate) desired: DesiredState,
    pub(crate) desired_version: u64,
}

/// The pair keys of `n` nodes (ids 1..=n, a node key per id).
fn member_keys(n: usize) -> Vec<MemberKeys> {
    let secret = |i: usize| [i as u8 + 1; 32];
    let publics: Vec<(NodeId, [u8; 32])> = (0..n)
        .map(|i| (NodeId(i as u64 + 1), public_key(&secret(i))))
        .collect();
    (0..n)
        .map(|i| MemberKeys::derive(NodeId(i as u64 + 1), &secret(i), publics.clone()))
        .collect()
}

/// How often a Control refreshes (the supervisor's `refresh`).
pub(crate) const REFRESH: Duration = Duration::from_secs(1);
/// Membership's tick.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// Agent86's sampling interval.
pub(crate) const SAMPLE: Duration = Duration::from_secs(1);
/// How often the Raft model steps (majority mode).
const RAFT_STEP: Duration = Duration::from_millis(5);
/// How many log lines a failure shows.
const LOG_LINES: usize = 200;

impl Sim {
    /// A cluster of stopped nodes; `Op::StartAll` starts them.
    pub fn new(setup: Setup, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let nodes = (0..setup.nodes)
            .map(|i| Node {
                id: NodeId(i as u64 + 1),
                addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 7000)),
                // Clock domains up to ~3 years apart, rates off by up to ±1 %.
                offset: Duration::from_secs(rng.random_range(0..100_000_000)),
                rate: 1.0 + rng.random_range(-0.01..0.01),
                disk_highest: 0,
                incarnation: 0,
                proc: None,
                paused_until: None,
            })
            .collect();
        let member_keys = member_keys(setup.nodes);
        Sim {
            member_keys,
            net: Network::new(setup.nodes),
            setup,
            seed,
            rng,
            key: ClusterKey::from_bytes(b"simulated-cluster-key-0123456789")
                .expect("a 32-byte key"),
            base: std::time::Instant::now(),
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            rpcs: HashMap::new(),
            next_rpc: 1,
            fwds: HashMap::new(),
            next_fwd: 1,
            next_cid: 1,
            tuning: crate::shell::tuning(),
            history: History::default(),
            log: VecDeque::new(),
            stats: Stats::default(),
            failure: None,
            raft: None,
            raft_told: Vec::new(),
            desired: DesiredState::default(),
            desired_version: 0,
        }
        .with_raft()
    }

    /// Majority mode: the Raft model and its periodic step.
    fn with_raft(mut self) -> Self {
        if self.setup.mode == Mode::Majority {
            self.raft = Some(RaftModel::new(self.nodes.len()));
            self.raft_told = vec![None; self.nodes.len()];
            self.push(RAFT_STEP, Ev::Raft);
        }
        self
    }

    /// Whether node `n` reaches, both ways, a majority of the nodes running (itself
    /// included): its writes commit, and its replica of the log is current.
    pub(crate) fn reaches_majority(&self, n: usize) -> bool {
        let (reachable, needed) = self.reach(n);
        reachable >= needed
    }

    /// The running nodes `n` reaches both ways (itself included), and a majority of all.
    fn reach(&self, n: usize) -> (usize, usize) {
        let reachable = (0..self.nodes.len())
            .filter(|j| self.running(*j) && self.net.reachable(n, *j) && self.net.reachable(*j, n))
            .count();
        (reachable, self.nodes.len() / 2 + 1)
    }

    /// A desired-state write from node `n`: committed (and applied) when `n` reaches, both
    /// ways, a majority of the nodes, itself included, running (the log's voters are every
    /// node); else refused with the reason the store gives.
    pub(crate) fn write_desired(&mut self, n: usize, cmd: &DesiredCmd) -> Result<(), String> {
        let (reachable, needed) = self.reach(n);
        if reachable < needed {
            return Err(format!(
                "no majority of control nodes reachable ({reachable} reachable, {needed} needed)"
            ));
        }
        if self.desired.apply(cmd) == smart_proto::desired::ApplyResult::Applied {
            self.desired_version += 1;
        }
        self.note(format!(
            "n{n} wrote {} to the desired-state log",
            cmd.summary()
        ));
        Ok(())
    }

    /// Node `i`'s clock at virtual time `at`.
    pub(crate) fn clock_at(&self, i: usize, at: Duration) -> std::time::Instant {
        let n = &self.nodes[i];
        self.base + n.offset + at.mul_f64(n.rate)
    }

    /// One step of the Raft model; what changed for a node goes to its membership.
    fn on_raft(&mut self) {
        self.push(RAFT_STEP, Ev::Raft);
        let Some(mut raft) = self.raft.take() else {
            return;
        };
        let now = self.now;
        let paused: Vec<bool> = (0..self.nodes.len()).map(|i| self.paused(i)).collect();
        let net = self.net.clone();
        raft.step(
            now,
            |i| !paused[i],
            |a, b| net.reachable(a, b),
            &mut self.rng,
        );
        let leads: Vec<Lead> = (0..self.nodes.len()).map(|i| raft.lead(i)).collect();
        self.raft = Some(raft);
        for (i, lead) in leads.into_iter().enumerate() {
            if self.proc(i).is_none() || paused[i] || self.raft_told[i] == Some(lead) {
                continue;
            }
            self.raft_told[i] = Some(lead);
            let leadership = Leadership {
                leader: lead.leader,
                lease_until: lead
                    .lease_until
                    .map(|u| tokio::time::Instant::from_std(self.clock_at(i, u))),
            };
            self.feed_membership(i, smart_membership::engine::Input::Leadership(leadership));
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// The counts so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Node `i`'s monotonic clock now (std flavour, for the Control and Agent86 engines).
    pub(crate) fn clock(&self, i: usize) -> std::time::Instant {
        let n = &self.nodes[i];
        self.base + n.offset + self.now.mul_f64(n.rate)
    }

    /// Node `i`'s monotonic clock now (tokio flavour, for the membership engine).
    pub(crate) fn tclock(&self, i: usize) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.clock(i))
    }

    /// How long `d` measured by node `i`'s clock lasts in virtual time (its timers run at
    /// its clock's rate).
    pub(crate) fn timer(&self, i: usize, d: Duration) -> Duration {
        d.div_f64(self.nodes[i].rate)
    }

    pub(crate) fn push(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: self.now + after,
            seq: self.seq,
            ev,
        }));
    }

    /// A line for the failure log.
    pub(crate) fn note(&mut self, s: impl Into<String>) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        let s = s.into();
        self.log
            .push_back(format!("[{:>8.3}s] {s}", self.now.as_secs_f64()));
    }

    /// Records the first violated invariant.
    pub(crate) fn fail(&mut self, what: impl Into<String>) {
        if self.failure.is_none() {
            let what = what.into();
            self.note(format!("VIOLATION: {what}"));
            self.failure = Some(what);
        }
    }

    /// The node's process, if it runs.
    pub(crate) fn proc(&self, i: usize) -> Option<&Proc> {
        self.nodes[i].proc.as_ref()
    }

    pub(crate) fn proc_mut(&mut self, i: usize) -> Option<&mut Proc> {
        self.nodes[i].proc.as_mut()
    }

    /// Whether the node's process runs and is not paused.
    pub(crate) fn running(&self, i: usize) -> bool {
        self.nodes[i].proc.is_some() && !self.paused(i)
    }

    pub(crate) fn paused(&self, i: usize) -> bool {
        self.nodes[i].paused_until.is_some_and(|t| t > self.now)
    }

    /// The boot of node `i`'s process, if it runs.
    pub(crate) fn boot(&self, i: usize) -> Option<u64> {
        self.proc(i).map(|p| p.boot)
    }

    /// The node index of a node id.
    pub(crate) fn ix(&self, id: NodeId) -> Option<usize> {
        let i = usize::try_from(id.0).ok()?.checked_sub(1)?;
        (i < self.nodes.len()).then_some(i)
    }

    /// Sends a request from `from` to `to`; its answer (or its timeout) comes back as
    /// `kind` says. Nothing crosses a cut link: the caller times out.
    pub(crate) fn rpc(
        &mut self,
        from: usize,
        to: usize,
        req: NodeRequest,
        timeout: Duration,
        kind: RpcKind,
    ) {
        let until = self.now + self.timer(from, timeout);
        self.rpc_until(from, to, req, until, kind, Duration::ZERO);
    }

    /// [`Sim::rpc`] sent `after` from now, whose caller gives up at sim time `until`.
    fn rpc_until(
        &mut self,
        from: usize,
        to: usize,
        req: NodeRequest,
        until: Duration,
        kind: RpcKind,
        after: Duration,
    ) {
        let Some(boot) = self.boot(from) else {
            return;
        };
        let rpc = self.next_rpc;
        self.next_rpc += 1;
        self.stats.rpcs += 1;
        let retry = match (&kind, &req) {
            (RpcKind::Round { .. } | RpcKind::Command { .. }, NodeRequest::Agent { .. }) => {
                Some((req.clone(), until))
            }
            _ => None,
        };
        self.rpcs.insert(
            rpc,
            Rpc {
                caller: from,
                boot,
                to,
                kind,
                retry,
            },
        );
        self.push(until.saturating_sub(self.now), Ev::RpcTimeout { rpc });
        if self.net.reachable(from, to) {
            let d = self.net.segment(&mut self.rng);
            self.push(after + d, Ev::Arrive { rpc, to, from, req });
        }
    }

    /// Answers request `rpc` from node `at` to node `to` (dropped on a cut link: the
    /// caller times out).
    pub(crate) fn respond(
        &mut self,
        at: usize,
        to: usize,
        rpc: u64,
        result: Result<NodeResponse, PeerError>,
    ) {
        if self.net.reachable(at, to) {
            let d = self.net.segment(&mut self.rng);
            self.push(d, Ev::Answer { rpc, result });
        }
    }

    /// The node an event is for (it waits while that node is paused).
    fn owner(&self, ev: &Ev) -> Option<usize> {
        match ev {
            Ev::MTick { n, .. }
            | Ev::ATick { n, .. }
            | Ev::CTick { n, .. }
            | Ev::AgentBudget { n, .. }
            | Ev::Sup { n, .. }
            | Ev::Mem { n, .. }
            | Ev::Ctl { n, .. }
            | Ev::Runtime { n, .. } => Some(*n),
            Ev::Datagram { to, .. } | Ev::Arrive { to, .. } => Some(*to),
            Ev::Answer { rpc, .. } | Ev::RpcTimeout { rpc } => self.rpcs.get(rpc).map(|r| r.caller),
            Ev::FwdWake { fwd, .. } | Ev::CallTimeout { fwd, .. } => {
                self.fwds.get(fwd).map(|f| f.node)
            }
            Ev::Raft => None,
        }
    }

    /// Handles the next event; false when there is none.
    pub(crate) fn step(&mut self) -> bool {
        let Some(Reverse(q)) = self.queue.pop() else {
            return false;
        };
        self.now = q.at;
        if let Some(n) = self.owner(&q.ev)
            && let Some(until) = self.nodes[n].paused_until
        {
            if until > self.now {
                // SIGSTOPped: the event waits (socket buffers, timers) until it resumes.
                self.seq += 1;
                self.queue.push(Reverse(Queued {
                    at: until,
                    seq: self.seq,
                    ev: q.ev,
                }));
                return true;
            }
            self.nodes[n].paused_until = None;
        }
        self.stats.events += 1;
        match q.ev {
            Ev::MTick { n, boot } => self.on_mtick(n, boot),
            Ev::ATick { n, boot } => self.on_atick(n, boot),
            Ev::CTick { n, cid } => self.on_ctick(n, cid),
            Ev::Datagram { to, bytes } => self.on_datagram(to, &bytes),
            Ev::Arrive { rpc, to, from, req } => self.on_arrive(rpc, to, from, req),
            Ev::Answer { rpc, result } => self.on_answer(rpc, result),
            Ev::RpcTimeout { rpc } => {
                if let Some(r) = self.rpcs.get(&rpc) {
                    let addr = self.nodes[r.to].addr;
                    self.on_answer(rpc, Err(PeerError::Timeout(addr)));
                }
            }
            Ev::AgentBudget { n, boot, areq } => self.on_agent_budget(n, boot, areq),
            Ev::Sup { n, boot, msg } => {
                if self.boot(n) == Some(boot) {
                    self.on_sup(n, msg);
                }
            }
            Ev::Mem { n, boot, msg } => {
                if self.boot(n) == Some(boot) {
                    self.on_mem(n, msg);
                }
            }
            Ev::Ctl { n, cid, msg } => self.on_ctl(n, cid, msg),
            Ev::Runtime { n, boot, ev } => {
                if self.boot(n) == Some(boot) {
                    self.on_runtime(n, ev);
                }
            }
            Ev::FwdWake { fwd, attempt } => self.on_fwd_wake(fwd, attempt),
            Ev::CallTimeout { fwd, attempt } => self.on_call_timeout(fwd, attempt),
            Ev::Raft => self.on_raft(),
        }
        crate::invariants::after_event(self);
        true
    }

    /// An answer (or timeout) of request `rpc` reaches its caller.
    fn on_answer(&mut self, rpc: u64, result: Result<NodeResponse, PeerError>) {
        let Some(r) = self.rpcs.remove(&rpc) else {
            return;
        };
        if self.boot(r.caller) != Some(r.boot) {
            return;
        }
        // `agent_call`: a node that has not heard of this Control yet is asked again.
        if let (Err(PeerError::Unavailable { what, .. }), Some((req, until))) = (&result, &r.retry)
            && what == smart_proto::error::VIEW_BEHIND
        {
            let again = self.timer(r.caller, smart_control::VIEW_BEHIND_RETRY);
            if self.now + again < *until {
                let (req, until) = (req.clone(), *until);
                self.rpc_until(r.caller, r.to, req, until, r.kind, again);
                return;
            }
        }
        match r.kind {
            RpcKind::Round { cid, round, idx } => {
                self.on_round_answer(r.caller, cid, round, idx, agent_result(result))
            }
            RpcKind::Command { cid, req } => {
                let result = agent_result(result);
                self.tell_control(
                    r.caller,
                    cid,
                    CtlMsg::Input(smart_control::Input::Reply { req, result }),
                );
            }
            RpcKind::Replicate => {}
            RpcKind::Forward { fwd, attempt } => self.on_forward_answer(fwd, attempt, result),
        }
    }

    /// Runs until virtual time `until` (or a violation).
    pub(crate) fn run_until(&mut self, until: Duration) {
        while self.failure.is_none() && self.queue.peek().is_some_and(|Reverse(q)| q.at <= until) {
            self.step();
        }
        if self.now < until {
            self.now = until;
        }
    }

    /// Starts node `i`'s process if it is not running: a new incarnation, the persisted
    /// highest epoch, nothing else.
    pub(crate) fn start_node(&mut self, i: usize) {
        if self.nodes[i].proc.is_some() {
            return;
        }
        self.nodes[i].incarnation += 1;
        self.nodes[i].paused_until = None;
        let proc = crate::shell::new_proc(self, i);
        let boot = proc.boot;
        self.nodes[i].proc = Some(proc);
        if let Some(raft) = self.raft.as_mut() {
            raft.start(i, self.now, &mut self.rng);
            self.raft_told[i] = None;
        }
        self.note(format!(
            "n{i} started (incarnation {}, highest epoch {})",
            self.nodes[i].incarnation, self.nodes[i].disk_highest
        ));
        let phase = Duration::from_micros(self.rng.random_range(0..10_000));
        self.push(phase, Ev::MTick { n: i, boot });
        // Agent86 samples at once, then every interval.
        self.push(Duration::ZERO, Ev::ATick { n: i, boot });
    }

    /// Kills node `i`'s process: its actors, instances, timers and requests in flight are
    /// gone; its disk stays.
    pub(crate) fn kill_node(&mut self, i: usize) {
        let Some(p) = self.nodes[i].proc.take() else {
            return;
        };
        self.nodes[i].paused_until = None;
        if let Some(raft) = self.raft.as_mut()
            && !raft.lingering(i)
        {
            raft.kill(i);
        }
        let instances: Vec<String> = p.runtime.keys().cloned().collect();
        self.note(format!(
            "n{i} killed (its instances {instances:?} die with it)"
        ));
        // Requests being forwarded by this node: an operator's connection breaks (an answer
        // of sorts); a forward for another node dies with the process (that node times out).
        let gone: Vec<u64> = self
            .fwds
            .iter()
            .filter(|(_, f)| f.node == i)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(f) = self.fwds.remove(&k)
                && let Origin::Client(c) = f.origin
            {
                self.client_answer(c, None);
            }
        }
    }
}

/// A request's outcome as the Control's `agent_call` returns it.
pub(crate) fn agent_result(r: Result<NodeResponse, PeerError>) -> Result<AgentReply, PeerError> {
    match r {
        Ok(NodeResponse::Agent(a)) => Ok(a),
        Ok(other) => Err(PeerError::Failed {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            reason: format!("unexpected answer {other:?}"),
        }),
        Err(e) => Err(e),
    }
}

/// A response the Forwarder retries.
pub(crate) fn retryable(resp: &Response) -> Option<ApiError> {
    match resp {
        Response::Error(e) if e.is_retryable() => Some(e.clone()),
        _ => None,
    }
}
