//! The node engine: heartbeats, replay guard, failure detector, member table and Control
//! election composed into one pure state machine that the runtime shell drives.
//!
//! The shell owns the sockets, the clock and the disk. It calls
//! [`NodeEngine::handle`] with an [`Input`] and the current monotonic time — a `Tick` every
//! 10-20 ms, every datagram that [`smart_proto::heartbeat::decode`] accepted, `RebuildDone` when the new
//! Control has rebuilt its state — and executes the returned [`Output`]s **in order**: in
//! particular a [`Output::PersistEpoch`] must be durable before any later output of the same
//! batch is executed (docs/DESIGN.md §2 rule 1). The engine never reads a clock, never sleeps and
//! never does I/O; randomness (the election backoff) comes from the injected `R: Rng`.
//!
//! Only the monotonic [`tokio::time::Instant`] is used and no absolute time crosses the wire,
//! so wall-clock jumps and clock offsets between nodes have
//! no effect. A jump of the *monotonic* clock between two inputs longer than the dead time
//! means this process did not run (SIGSTOP, stalled VM): the engine then steps down if it was
//! Control and gives every peer a fresh grace period instead of declaring them all dead.
//!
//! Majority mode: the Control is the leader of the desired-state log's Raft group. The shell
//! reports Raft's word on this node ([`Input::Leadership`]: leader or not, and until when
//! a quorum's latest acknowledgement lets it act); the election claims and steps down by it
//! (see [`crate::election`], rule 6). The shell publishes [`NodeEngine::acting_lease`] after
//! every input (the instant until which the Control may act) for the Control to check right
//! before every decision: a quorum acknowledgement that ran out during a pause is never acted
//! on, whichever of the Control and membership runs first after it. A Control that hands over
//! names its successor, which asks Raft for an election at once ([`Output::ElectNow`]).

//! Asymmetric cuts: a heartbeat also says which Control its sender hears *directly*. A node
//! that cannot hear the Control itself but hears live members that do keeps following it
//! instead of electing a rival (otherwise a single broken link makes two Controls leapfrog
//! each other's epochs for as long as it lasts). Second-hand knowledge is never repeated, so
//! a dead Control cannot be kept alive by nodes quoting each other.
//!
//! ## Driving it (what the shell does)
//! ```text
//! let mut engine = NodeEngine::new(config, disk.highest_epoch, ChaCha8Rng::from_os_rng());
//! loop {
//!     let (input, now) = select! {
//!         every 10-20 ms            => (Input::Tick, Instant::now()),
//!         datagram from a socket    => match wire::decode(&buf, &key) {
//!                                        Ok(msg) => (Input::Received(msg), Instant::now()),
//!                                        Err(e)  => { count(e); continue }   // never fed
//!                                      },
//!         control actor rebuilt     => (Input::RebuildDone { epoch }, Instant::now()),
//!         shutdown                  => (Input::Leave, Instant::now()),
//!     };
//!     for output in engine.handle(input, now) {            // strictly in order
//!         match output {
//!             Output::PersistEpoch(e) => disk.store_highest_epoch(e)?,   // fsync before going on
//!             Output::Send { dest, msg } => send(dest, wire::encode(&msg, &key)),
//!             Output::BecomeControl { epoch } => start Control actor (rebuilding),
//!             Output::Reasserted { epoch } => Control uses the new epoch from now on,
//!             Output::ControlActing { epoch, acting } => let Control admit/command or not,
//!             Output::StepDown { .. } => stop the Control actor,
//!             other => update status / tell the actors,
//!         }
//!     }
//! }
//! ```
//! Agent86 keeps an [`crate::election::Fence`]: raise it with every `PersistEpoch` and every
//! command epoch, and check it again right before executing a command.
//!
//! ## Layout
//! - [`EngineConfig`] — identity, timings, election mode.
//! - [`Input`], [`Output`], [`Dest`], [`DropReason`], [`ControlInfo`]: the step interface.
//! - [`NodeEngine`] — `handle` and the queries ([`MemberView`], [`Counters`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::detector::{Detector, DetectorConfig, DetectorEvent};
use crate::election::{
    Action, Candidate, Election, ElectionConfig, ElectionState, Mode, StepDownReason,
};
use crate::view::ActingLease;
use smart_proto::heartbeat::{
    CHALLENGE_NONCE_LEN, Challenge, Claim, ControlAssert, ControlView, Handover, Heartbeat,
    LoadSummary, Message, Proof, ReplayError, ReplayGuard,
};
use smart_proto::{Epoch, Incarnation, NodeId, Role};

pub use crate::election::{EPOCH_CEILING, Leadership};
pub use smart_proto::heartbeat::DEFAULT_MAX_EPOCH_STEP;

/// How often a failed epoch write is retried.
pub const PERSIST_RETRY: Duration = Duration::from_millis(250);

/// How long to wait for proofs before challenging again.
const CHALLENGE_RETRY: Duration = Duration::from_millis(200);

/// A node answers at most one challenge per challenger in this time (a replayed or
/// forged challenge flood costs one small datagram per challenger and interval).
const PROOF_EVERY: Duration = Duration::from_millis(100);

/// Everything the engine needs to know about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// This node.
    pub node_id: NodeId,
    /// This boot's incarnation (persisted, incremented at every start).
    pub incarnation: Incarnation,
    /// Where this node's TCP transport listens (announced in heartbeats).
    pub tcp_addr: SocketAddr,
    /// This node's roles (deduplicated when sent).
    pub roles: Vec<Role>,
    /// How often to send a heartbeat (default 100 ms).
    pub heartbeat_interval: Duration,
    /// Failure detector timings.
    pub detector: DetectorConfig,
    /// Election timings and mode.
    pub election: ElectionConfig,
    /// Whether static seeds are configured: heartbeats and claims then also go to
    /// [`Dest::Seeds`].
    pub use_seeds: bool,
    /// The configured members (node ids, this node included). Datagrams from any other id
    /// are dropped and counted ([`DropReason::NotMember`]): a key holder cannot enter the
    /// election, nor report a Control, under an id of its own. Empty accepts any id (unit
    /// tests and simulations only; `smart node` requires the list).
    pub members: BTreeSet<NodeId>,
    /// A message whose epochs exceed the highest epoch seen by more than this is dropped
    /// ([`DropReason::EpochJump`]) unless a majority of the other members report such an
    /// epoch too (a node that was away while the cluster moved on). Default 1000.
    pub max_epoch_step: Epoch,
    /// Adopt a member's incarnation only after it answered a fresh [`Challenge`] (default
    /// true). Off, the first datagram of any incarnation is believed (unit tests only).
    pub incarnation_proof: bool,
    /// A member dead for this long is forgotten: member table, replay guard, detector
    /// (default 10 min). It is challenged again if it comes back.
    pub forget_after: Duration,
}

impl EngineConfig {
    /// LAN defaults (100 ms heartbeats, Down after 400 ms of silence, backoff 300 ms /
    /// 100 ms for profilers, available mode). A node may be elected iff it has
    /// [`Role::Control`]; [`Role::Profiler`] gives the shorter backoff.
    pub fn new(
        node_id: NodeId,
        incarnation: Incarnation,
        tcp_addr: SocketAddr,
        roles: Vec<Role>,
    ) -> Self {
        let mut election = ElectionConfig::new(node_id);
        election.eligible = roles.contains(&Role::Control);
        election.is_profiler = roles.contains(&Role::Profiler);
        let detector = DetectorConfig::default();
        election.listen = detector.dead_after;
        Self {
            node_id,
            incarnation,
            tcp_addr,
            roles,
            heartbeat_interval: detector.interval,
            detector,
            election,
            use_seeds: false,
            members: BTreeSet::new(),
            max_epoch_step: DEFAULT_MAX_EPOCH_STEP,
            incarnation_proof: true,
            forget_after: Duration::from_secs(600),
        }
    }
}

/// What the shell feeds the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed (call every 10-20 ms).
    Tick,
    /// A datagram that passed [`smart_proto::heartbeat::decode`].
    Received(Message),
    /// This node, Control since `epoch`, finished rebuilding its state.
    RebuildDone {
        /// The epoch announced in [`Output::BecomeControl`].
        epoch: Epoch,
    },
    /// This node's load, for the next heartbeats.
    SetLoad(LoadSummary),
    /// The local Control actor failed and is being restarted: move it to a new epoch
    /// (persisted, then [`Output::Reasserted`]), so that agents fence whatever the failed
    /// incarnation still had in flight. Ignored when this node is not Control.
    Reassert,
    /// The shell could not make [`Output::PersistEpoch`] durable for a transient cause
    /// (out of descriptors, disk full): it executed none of the outputs after it. The
    /// engine steps down if Control, claims nothing, and asks for the write again every
    /// [`PERSIST_RETRY`] until one succeeds (no failure reported before the next tick).
    PersistFailed {
        /// The epoch that could not be written.
        epoch: Epoch,
    },
    /// An agent refused a command of the local Control actor because it has seen epoch
    /// `highest`. When this node is still Control at `highest` or above, the refusal came
    /// from our own re-assertion racing the actor (the agent heard the heartbeat at the new
    /// epoch before the actor got it): [`Output::RestartControl`] at the current epoch,
    /// with the acting state as it is now (the new actor is never left waiting for a change
    /// that already happened). Otherwise the epoch is observed (persisted, within the step:
    /// an agent's answer must not fence us forever) and the engine steps down when it hears
    /// the newer Control.
    ControlFenced {
        /// The highest epoch the refusing agent has seen.
        highest: Epoch,
    },
    /// Majority mode: the desired-state log's Raft changed its word on this node (leader
    /// or not, the quorum lease). Ignored in available mode.
    Leadership(Leadership),
    /// Graceful shutdown: step down if Control, announce it at once (one last heartbeat that
    /// no longer asserts Control, so a successor is elected without waiting for the failure
    /// detector), then stay silent. The shell exits after executing the outputs.
    Leave,
}

/// Where to send a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dest {
    /// The multicast group.
    Multicast,
    /// Every configured seed (unicast fallback).
    Seeds,
    /// One address. Not emitted by the engine today; kept for shells that answer unicast.
    Addr(SocketAddr),
}

/// The Control as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ControlInfo {
    /// The Control's node id.
    pub node_id: NodeId,
    /// Its current epoch.
    pub epoch: Epoch,
}

/// Why a received message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Our own datagram (multicast loopback).
    Own,
    /// Replayed or too old sequence number.
    Replayed,
    /// From an older incarnation of the sender.
    StaleIncarnation,
    /// A second copy of a datagram just accepted (multicast and a seed both delivered it).
    Duplicate,
    /// From a node id that is not a configured member.
    NotMember,
    /// Carries an epoch beyond the highest seen plus the configured step.
    EpochJump,
    /// From a sender (or a new incarnation of it) not yet verified by a fresh proof.
    Unverified,
    /// From a member that handed over and left (this incarnation).
    Left,
}

/// What the engine asks the shell to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Encode, sign and send `msg` to `dest`.
    Send {
        /// Where.
        dest: Dest,
        /// What.
        msg: Message,
    },
    /// Persist `highest_epoch_seen`; must be durable before the next outputs run.
    PersistEpoch(Epoch),
    /// This node became Control at `epoch`: start rebuilding from Agent86 reports, then
    /// send [`Input::RebuildDone`]. Do not act before [`Output::ControlActing`].
    BecomeControl {
        /// The new epoch.
        epoch: Epoch,
    },
    /// This node is still Control but at a higher `epoch`: use it for every later command.
    Reasserted {
        /// The new epoch.
        epoch: Epoch,
    },
    /// Whether the local Control may act (admit, place, command agents) at `epoch`. Emitted
    /// on every change: true once rebuilt (and, in majority mode, while Raft's quorum lease
    /// holds), false when that stops.
    ControlActing {
        /// The epoch.
        epoch: Epoch,
        /// May act.
        acting: bool,
    },
    /// Start the local Control actor again at `epoch`, still Control: `acting` is whether
    /// it may act at once (after its own rebuild), derived from the election's state.
    RestartControl {
        /// The current epoch.
        epoch: Epoch,
        /// May act at `epoch`.
        acting: bool,
    },
    /// This node stopped being Control.
    StepDown {
        /// The epoch it held.
        epoch: Epoch,
        /// Why.
        reason: StepDownReason,
    },
    /// Majority mode: the Control handed over to this node; ask Raft for an election now
    /// (the claim follows once this node leads).
    ElectNow,
    /// The Control this node sees changed (node or epoch), or there is none.
    ControlChanged(Option<ControlInfo>),
    /// A member is alive (first heard, or back).
    MemberUp(NodeId),
    /// A member restarted (its incarnation grew without it being declared dead first):
    /// whatever it ran before is gone.
    MemberRestarted {
        /// The member.
        node: NodeId,
        /// Its new incarnation.
        incarnation: Incarnation,
    },
    /// A member was declared dead.
    MemberDown(NodeId),
    /// A received message was dropped.
    Dropped {
        /// Claimed sender.
        from: NodeId,
        /// Why.
        reason: DropReason,
    },
}

/// A member as shown by `smart status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its node id.
    pub node_id: NodeId,
    /// Its TCP address.
    pub tcp_addr: SocketAddr,
    /// Alive according to the failure detector.
    pub alive: bool,
    /// Its roles.
    pub roles: Vec<Role>,
    /// When its last valid datagram arrived.
    pub last_heard: Instant,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// Its load summary.
    pub load: LoadSummary,
    /// Highest epoch it reported.
    pub highest_epoch: Epoch,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages accepted.
    pub accepted: u64,
    /// Own datagrams dropped.
    pub own: u64,
    /// Replays dropped.
    pub replayed: u64,
    /// Older-incarnation datagrams dropped.
    pub stale_incarnation: u64,
    /// Accepted messages asserting a Control epoch below our highest.
    pub stale_epoch: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Claims sent.
    pub claims_sent: u64,
    /// Times this process found it had not run for longer than the dead time.
    pub pauses: u64,
    /// Second copies of datagrams (multicast plus seed) dropped.
    pub duplicates: u64,
    /// Datagrams from node ids that are not configured members.
    pub not_member: u64,
    /// Messages refused for an epoch beyond the highest seen plus the step.
    pub epoch_jump: u64,
    /// Datagrams dropped while their sender's incarnation was not verified.
    pub unverified: u64,
    /// Challenges sent.
    pub challenges_sent: u64,
    /// Proofs sent.
    pub proofs_sent: u64,
    /// Proofs that verified a member's incarnation.
    pub proofs_accepted: u64,
    /// Times this node claimed at once because the Control handed over to it.
    pub took_over: u64,
    /// Incarnations announced in datagrams that the member's own proof contradicted.
    pub forged_incarnation: u64,
    /// Members forgotten after being dead for `forget_after`.
    pub forgotten: u64,
    /// Epoch writes reported failed by the shell (transient causes).
    pub persist_failures: u64,
}

#[derive(Debug, Clone)]
struct Member {
    incarnation: Incarnation,
    /// Filled by its first heartbeat (a claim alone does not carry it).
    info: Option<HbInfo>,
    /// Set while it asserts being Control.
    asserts: Option<ControlAssert>,
    /// The last epoch it asserted Control at in this incarnation, kept after it stops:
    /// its handover may arrive after its last heartbeat (datagrams reorder).
    asserted: Option<Epoch>,
}

#[derive(Debug, Clone)]
struct HbInfo {
    tcp_addr: SocketAddr,
    roles: Vec<Role>,
    load: LoadSummary,
    highest_epoch: Epoch,
}

/// The engine of one node. See the module docs.
#[derive(Debug)]
pub struct NodeEngine<R> {
    cfg: EngineConfig,
    rng: R,
    guard: ReplayGuard,
    detector: Detector,
    election: Election,
    members: BTreeMap<NodeId, Member>,
    /// Members whose `asserts` is set: an index so that each message costs O(controls),
    /// not O(members).
    asserting: BTreeSet<NodeId>,
    /// The Control each member reports hearing directly ([`Heartbeat::control`]).
    reports: BTreeMap<NodeId, ControlView>,
    /// Live Controls other than us, direct and reported; recomputed when `dirty`.
    cands: Vec<Candidate>,
    dirty: bool,
    seq: u64,
    next_heartbeat: Option<Instant>,
    last_input: Option<Instant>,
    load: LoadSummary,
    /// Last emitted view of the Control.
    view: Option<ControlInfo>,
    /// Last emitted acting state: `Some(epoch)` while acting.
    acting: Option<Epoch>,
    counters: Counters,
    /// After [`Input::Leave`]: no more heartbeats.
    left: bool,
    /// Set by a received [`Handover`] from the Control: whether it named us.
    handover: Option<bool>,
    /// Members that handed over and left, with the incarnation that left.
    departed: BTreeMap<NodeId, Incarnation>,
    /// Members heard but not verified yet: the highest incarnation they announced and
    /// when it was last heard.
    unverified: BTreeMap<NodeId, (Incarnation, Instant)>,
    /// The nonces of our last two challenges (a proof may answer the previous one) and
    /// when the last one was sent.
    challenge: Option<(
        [u8; CHALLENGE_NONCE_LEN],
        [u8; CHALLENGE_NONCE_LEN],
        Instant,
    )>,
    /// When we last answered each challenger.
    answered: BTreeMap<NodeId, Instant>,
    /// Epochs beyond the step that members reported, waiting for corroboration.
    far: BTreeMap<NodeId, (Epoch, Instant)>,
    /// When members were last pruned.
    last_prune: Option<Instant>,
    /// A transient epoch-write failure: when to ask for the write again, and whether the
    /// retry was emitted (no failure reported since means it succeeded).
    persist_retry: Option<(Instant, bool)>,
}

impl<R: Rng> NodeEngine<R> {
    /// A fresh engine for a node that has persisted `highest_epoch_seen = persisted_highest`.
    pub fn new(cfg: EngineConfig, persisted_highest: Epoch, rng: R) -> Self {
        let mut roles = cfg.roles.clone();
        roles.sort();
        roles.dedup();
        let cfg = EngineConfig { roles, ..cfg };
        let mut election = Election::new(cfg.election.clone(), persisted_highest);
        if let Some(index) = cfg.members.iter().position(|m| *m == cfg.node_id) {
            election.set_epoch_class(cfg.members.len() as u64, index as u64);
        }
        Self {
            guard: ReplayGuard::new(),
            detector: Detector::new(cfg.detector),
            election,
            members: BTreeMap::new(),
            asserting: BTreeSet::new(),
            reports: BTreeMap::new(),
            cands: Vec::new(),
            dirty: true,
            seq: 0,
            next_heartbeat: None,
            last_input: None,
            load: LoadSummary::default(),
            view: None,
            acting: None,
            counters: Counters::default(),
            left: false,
            handover: None,
            departed: BTreeMap::new(),
            unverified: BTreeMap::new(),
            challenge: None,
            answered: BTreeMap::new(),
            far: BTreeMap::new(),
            last_prune: None,
            persist_retry: None,
            rng,
            cfg,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// One step: feed `input` at `now`, get the outputs to execute in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.check_pause(now, &mut out);
        match input {
            Input::Tick => {
                for ev in self.detector.tick(now) {
                    if let DetectorEvent::Down(n) = ev {
                        if let Some(m) = self.members.get_mut(&n) {
                            m.asserts = None;
                            m.asserted = None;
                        }
                        self.asserting.remove(&n);
                        self.reports.remove(&n);
                        self.dirty = true;
                        out.push(Output::MemberDown(n));
                    }
                }
                self.housekeeping(now, &mut out);
                self.settle(now, &mut out);
                let mut actions = Vec::new();
                self.election.tick(now, &mut actions);
                self.apply(actions, now, &mut out);
                self.settle(now, &mut out);
                if !self.left && self.next_heartbeat.is_none_or(|t| now >= t) {
                    self.send_heartbeat(now, &mut out);
                }
            }
            Input::Received(msg) => {
                self.receive(msg, now, &mut out);
                match self.handover.take() {
                    Some(true) if self.cfg.election.mode.is_majority() => {
                        out.push(Output::ElectNow);
                        self.counters.took_over += 1;
                    }
                    Some(true) if self.election.take_over(now) => {
                        self.settle(now, &mut out);
                        let mut actions = Vec::new();
                        self.election.tick(now, &mut actions);
                        self.apply(actions, now, &mut out);
                        self.counters.took_over += 1;
                    }
                    Some(_) => self.election.defer_to_successor(
                        self.cfg.detector.dead_after,
                        now,
                        &mut self.rng,
                    ),
                    None => {}
                }
                self.settle(now, &mut out);
            }
            Input::RebuildDone { epoch } => {
                self.election.rebuild_done(epoch);
                self.settle(now, &mut out);
            }
            Input::SetLoad(load) => self.load = load,
            Input::Leadership(lead) => {
                if self.cfg.election.mode.is_majority() {
                    // The live Controls did not change: no need to recompute them.
                    self.election.set_leadership(lead);
                    self.settle(now, &mut out);
                }
            }
            Input::Reassert => {
                let mut actions = Vec::new();
                self.election.reassert_now(&mut actions);
                self.apply(actions, now, &mut out);
                self.settle(now, &mut out);
            }
            Input::ControlFenced { highest } => match self.election.my_control() {
                Some((_, epoch)) if epoch >= highest => out.push(Output::RestartControl {
                    epoch,
                    acting: self.acting == Some(epoch),
                }),
                _ if highest
                    > self
                        .election
                        .highest()
                        .saturating_add(self.cfg.max_epoch_step) =>
                {
                    self.counters.epoch_jump += 1;
                }
                _ => {
                    let mut actions = Vec::new();
                    self.election.observe_epoch(highest, &mut actions);
                    self.apply(actions, now, &mut out);
                    self.settle(now, &mut out);
                }
            },
            Input::PersistFailed { epoch } => {
                tracing::warn!(node = %self.cfg.node_id, epoch, "epoch not durable: refusing to act until it is");
                self.counters.persist_failures += 1;
                self.persist_retry = Some((now + PERSIST_RETRY, false));
                let mut actions = Vec::new();
                self.election.persist_failed(&mut actions);
                self.apply(actions, now, &mut out);
                self.election.hold(true);
                self.settle(now, &mut out);
            }
            Input::Leave => {
                if let Some((_, epoch)) = self.election.my_control()
                    && !self.left
                {
                    let successor = self.successor();
                    let seq = self.next_seq();
                    self.push_send(
                        Message::Handover(Handover {
                            from: self.cfg.node_id,
                            incarnation: self.cfg.incarnation,
                            seq,
                            epoch,
                            successor,
                        }),
                        &mut out,
                    );
                }
                let mut actions = Vec::new();
                self.election.leave(&mut actions);
                self.apply(actions, now, &mut out);
                self.settle(now, &mut out);
                if !self.left {
                    self.send_heartbeat(now, &mut out);
                    self.left = true;
                }
            }
        }
        out
    }

    /// Detects that this process did not run for longer than the dead time.
    fn check_pause(&mut self, now: Instant, out: &mut Vec<Output>) {
        let dead_after = self.cfg.detector.dead_after;
        match self.last_input {
            None => {
                self.election.start(now);
            }
            Some(last) => {
                let gap = now.saturating_duration_since(last);
                if gap > dead_after {
                    tracing::warn!(
                        gap_ms = gap.as_millis() as u64,
                        "node did not run for longer than the dead time"
                    );
                    self.counters.pauses += 1;
                    self.detector.grace_all(now);
                    let mut actions = Vec::new();
                    self.election.paused(gap, now, &mut actions);
                    self.apply(actions, now, out);
                    // Tell the others at once that we are no longer Control.
                    self.next_heartbeat = Some(now);
                }
            }
        }
        self.last_input = Some(self.last_input.map_or(now, |l| l.max(now)));
    }

    fn receive(&mut self, msg: Message, now: Instant, out: &mut Vec<Output>) {
        let from = msg.from();
        if from == self.cfg.node_id {
            self.counters.own += 1;
            out.push(Output::Dropped {
                from,
                reason: DropReason::Own,
            });
            return;
        }
        if !self.cfg.members.is_empty() && !self.cfg.members.contains(&from) {
            self.counters.not_member += 1;
            tracing::debug!(%from, "dropped datagram from a node id that is not a member");
            out.push(Output::Dropped {
                from,
                reason: DropReason::NotMember,
            });
            return;
        }
        let control_plane = matches!(msg, Message::Challenge(_) | Message::Proof(_));
        // Challenges and proofs must pass before their sender is verified (that is what
        // they are for); from a verified incarnation they go through the replay guard.
        if !control_plane
            && self.cfg.incarnation_proof
            && self
                .guard
                .incarnation(from)
                .is_none_or(|cur| msg.incarnation() > cur)
        {
            let known = self.guard.incarnation(from);
            if known.is_none_or(|cur| msg.incarnation() > cur) {
                // First contact, or a new incarnation: believe it only once the member
                // itself answers a fresh challenge (a recorded or forged datagram cannot).
                let e = self
                    .unverified
                    .entry(from)
                    .or_insert((msg.incarnation(), now));
                *e = (e.0.max(msg.incarnation()), now);
                self.counters.unverified += 1;
                self.maybe_challenge(now, out);
                out.push(Output::Dropped {
                    from,
                    reason: DropReason::Unverified,
                });
                return;
            }
        }
        let guarded = !control_plane || self.guard.incarnation(from) == Some(msg.incarnation());
        if guarded && let Err(e) = self.guard.check(from, msg.incarnation(), msg.seq()) {
            let reason = match e {
                ReplayError::Duplicate { .. } => {
                    self.counters.duplicates += 1;
                    DropReason::Duplicate
                }
                ReplayError::Replayed { .. } => {
                    self.counters.replayed += 1;
                    DropReason::Replayed
                }
                ReplayError::StaleIncarnation { .. } => {
                    self.counters.stale_incarnation += 1;
                    DropReason::StaleIncarnation
                }
            };
            tracing::trace!(%from, error = %e, "dropped datagram");
            out.push(Output::Dropped { from, reason });
            return;
        }
        let msg = match msg {
            Message::Challenge(c) => return self.answer_challenge(c, now, out),
            Message::Proof(p) => return self.proof_received(p, now, out),
            other => other,
        };
        if let Some(e) = max_epoch(&msg)
            && !self.epoch_acceptable(from, e, now)
        {
            self.counters.epoch_jump += 1;
            tracing::debug!(%from, epoch = e, highest = self.election.highest(), "dropped datagram with an epoch beyond the step");
            out.push(Output::Dropped {
                from,
                reason: DropReason::EpochJump,
            });
            return;
        }
        // It handed over and left: its trailing datagrams (the last heartbeat may arrive
        // after the handover) must not bring it back up. A new incarnation may.
        if self.departed.get(&from) == Some(&msg.incarnation()) {
            out.push(Output::Dropped {
                from,
                reason: DropReason::Left,
            });
            return;
        }
        self.counters.accepted += 1;
        let incarnation = msg.incarnation();
        if let Some(DetectorEvent::Up(n)) = self.detector.heard(from, now) {
            out.push(Output::MemberUp(n));
            self.dirty = true;
        }
        let member = self.members.entry(from).or_insert(Member {
            incarnation: msg.incarnation(),
            info: None,
            asserts: None,
            asserted: None,
        });
        if msg.incarnation() > member.incarnation {
            // A new life: whatever it asserted before is void (and it has not left).
            member.incarnation = msg.incarnation();
            member.asserts = None;
            member.asserted = None;
            self.departed.remove(&from);
            self.reports.remove(&from);
            self.dirty = true;
            out.push(Output::MemberRestarted {
                node: from,
                incarnation: msg.incarnation(),
            });
        }
        let asserted_before = member.asserts;
        let mut epochs = Vec::new();
        match msg {
            Message::Heartbeat(h) => {
                member.asserts = h.as_control;
                member.info = Some(HbInfo {
                    tcp_addr: h.tcp_addr,
                    roles: h.roles,
                    load: h.load,
                    highest_epoch: h.highest_epoch,
                });
                epochs.push(h.highest_epoch);
                if let Some(v) = h.control {
                    epochs.push(v.epoch);
                }
                let report = h.control.filter(|v| v.node_id != from);
                let changed = match report {
                    Some(v) => self.reports.insert(from, v) != Some(v),
                    None => self.reports.remove(&from).is_some(),
                };
                self.dirty |= changed;
            }
            Message::Claim(c) => {
                member.asserts = Some(ControlAssert {
                    established_epoch: c.epoch,
                    epoch: c.epoch,
                });
            }
            Message::Handover(h) => {
                // Only the node that asserts Control can hand it over; from anyone else it
                // says nothing.
                if member.asserted.is_some_and(|e| e <= h.epoch) {
                    member.asserts = None;
                    member.asserted = None;
                    self.departed.insert(from, h.incarnation);
                    // No successor named: an election as after any loss of the Control.
                    self.handover = h.successor.map(|s| s == self.cfg.node_id);
                }
            }
            Message::Challenge(_) | Message::Proof(_) => {}
        }
        if self.departed.get(&from) == Some(&incarnation)
            && let Some(DetectorEvent::Down(n)) = self.detector.mark_down(from)
        {
            // Down now rather than after the dead time: its agent is stopping, and a new
            // Control must not wait for its report.
            self.reports.remove(&n);
            self.dirty = true;
            out.push(Output::MemberDown(n));
        }
        let asserts = self.members[&from].asserts;
        if let (Some(a), Some(m)) = (asserts, self.members.get_mut(&from)) {
            m.asserted = Some(a.epoch);
        }
        self.dirty |= asserts != asserted_before;
        if asserts.is_some() {
            self.asserting.insert(from);
        } else {
            self.asserting.remove(&from);
        }
        if let Some(a) = asserts {
            if a.epoch < self.election.highest() {
                self.counters.stale_epoch += 1;
            }
            epochs.push(a.epoch);
        }
        let mut actions = Vec::new();
        for e in epochs {
            self.election.observe_epoch(e, &mut actions);
        }
        self.apply(actions, now, out);
    }

    /// Whether `epoch`, reported by `from`, may be believed: at most the step above the
    /// highest seen, or corroborated by a majority of the other members (a node that was
    /// away while the cluster moved on catches up; one forged sender cannot move it).
    fn epoch_acceptable(&mut self, from: NodeId, epoch: Epoch, now: Instant) -> bool {
        if epoch > EPOCH_CEILING {
            return false;
        }
        if epoch
            <= self
                .election
                .highest()
                .saturating_add(self.cfg.max_epoch_step)
        {
            return true;
        }
        self.far.insert(from, (epoch, now));
        let others = self
            .cfg
            .members
            .iter()
            .filter(|m| **m != self.cfg.node_id)
            .count();
        if others == 0 {
            return false;
        }
        let needed = others / 2 + 1;
        let dead_after = self.cfg.detector.dead_after;
        let mut reported: Vec<Epoch> = self
            .far
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= dead_after)
            .map(|(e, _)| *e)
            .collect();
        reported.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&corroborated) = reported.get(needed - 1) else {
            return false;
        };
        if epoch > corroborated {
            return false;
        }
        tracing::warn!(
            epoch,
            highest = self.election.highest(),
            reporters = needed,
            "a majority of the other members report an epoch beyond the step; catching up"
        );
        self.far.retain(|_, (e, _)| *e > corroborated);
        true
    }

    /// Sends a challenge (multicast and seeds) unless one is still fresh.
    fn maybe_challenge(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.left {
            return;
        }
        if let Some((_, _, at)) = self.challenge
            && now.saturating_duration_since(at) < CHALLENGE_RETRY
        {
            return;
        }
        let nonce: [u8; CHALLENGE_NONCE_LEN] = self.rng.random();
        let prev = self.challenge.map_or(nonce, |(n, _, _)| n);
        self.challenge = Some((nonce, prev, now));
        let seq = self.next_seq();
        self.counters.challenges_sent += 1;
        let msg = Message::Challenge(Challenge {
            from: self.cfg.node_id,
            incarnation: self.cfg.incarnation,
            seq,
            nonce,
        });
        self.push_send(msg, out);
    }

    fn answer_challenge(&mut self, c: Challenge, now: Instant, out: &mut Vec<Output>) {
        if self.left {
            return;
        }
        if let Some(at) = self.answered.get(&c.from)
            && now.saturating_duration_since(*at) < PROOF_EVERY
        {
            return;
        }
        self.answered.insert(c.from, now);
        let seq = self.next_seq();
        self.counters.proofs_sent += 1;
        let msg = Message::Proof(Proof {
            from: self.cfg.node_id,
            incarnation: self.cfg.incarnation,
            seq,
            to: c.from,
            nonce: c.nonce,
        });
        // Straight to the challenger when we know where it listens, else to everyone.
        match self.members.get(&c.from).and_then(|m| m.info.as_ref()) {
            Some(info) => out.push(Output::Send {
                dest: Dest::Addr(info.tcp_addr),
                msg,
            }),
            None => self.push_send(msg, out),
        }
    }

    fn proof_received(&mut self, p: Proof, now: Instant, out: &mut Vec<Output>) {
        if p.to != self.cfg.node_id {
            return;
        }
        let Some((nonce, prev, _)) = self.challenge else {
            return;
        };
        if p.nonce != nonce && p.nonce != prev {
            return;
        }
        let announced = self.unverified.remove(&p.from).map(|(inc, _)| inc);
        let current = self.guard.incarnation(p.from);
        if current == Some(p.incarnation) {
            // The member is alive in the incarnation we knew: whatever announced a newer
            // one was forged (or replayed from a future that never happened).
            if announced.is_some_and(|a| a > p.incarnation) {
                self.counters.forged_incarnation += 1;
                tracing::warn!(member = %p.from, incarnation = p.incarnation, announced = ?announced, "member's proof contradicts an announced incarnation: forged datagram ignored");
            }
            return;
        }
        if p.incarnation > EPOCH_CEILING && announced.is_none() {
            return;
        }
        self.counters.proofs_accepted += 1;
        self.guard.verified(p.from, p.incarnation, p.seq);
        if let Some(member) = self.members.get_mut(&p.from)
            && member.incarnation != p.incarnation
        {
            // A new life: whatever it asserted before is void (and it has not left).
            member.incarnation = p.incarnation;
            member.asserts = None;
            member.asserted = None;
            self.departed.remove(&p.from);
            self.asserting.remove(&p.from);
            self.reports.remove(&p.from);
            self.dirty = true;
            out.push(Output::MemberRestarted {
                node: p.from,
                incarnation: p.incarnation,
            });
        }
        let _ = now;
    }

    /// Periodic upkeep: challenges again for members still unverified, expires stale
    /// far-epoch reports, and forgets members dead for `forget_after`.
    fn housekeeping(&mut self, now: Instant, out: &mut Vec<Output>) {
        let dead_after = self.cfg.detector.dead_after;
        self.far
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= dead_after);
        match self.persist_retry {
            // The retry was executed and no failure came back: durable again.
            Some((_, true)) => {
                tracing::info!(node = %self.cfg.node_id, epoch = self.election.highest(), "epoch durable again");
                self.persist_retry = None;
            }
            Some((due, false)) if now >= due => {
                self.persist_retry = Some((due, true));
                out.push(Output::PersistEpoch(self.election.highest()));
            }
            _ => {}
        }
        // A member that keeps reporting an epoch we cannot believe may be a Control we
        // cannot follow yet: do not claim over it. Nor while our epoch is not durable.
        self.election
            .hold(!self.far.is_empty() || self.persist_retry.is_some());
        self.unverified
            .retain(|_, (_, at)| now.saturating_duration_since(*at) <= CHALLENGE_RETRY * 10);
        if !self.unverified.is_empty() {
            self.maybe_challenge(now, out);
        }
        if self
            .last_prune
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_prune = Some(now);
        let forget_after = self.cfg.forget_after;
        let gone: Vec<NodeId> = self
            .members
            .keys()
            .copied()
            .filter(|n| {
                !self.detector.is_alive(*n)
                    && self
                        .detector
                        .last_heard(*n)
                        .is_none_or(|t| now.saturating_duration_since(t) > forget_after)
            })
            .collect();
        for n in gone {
            self.members.remove(&n);
            self.guard.forget(n);
            self.detector.forget(n);
            self.reports.remove(&n);
            self.asserting.remove(&n);
            self.answered.remove(&n);
            self.far.remove(&n);
            self.departed.remove(&n);
            self.dirty = true;
            self.counters.forgotten += 1;
            tracing::info!(member = %n, "forgot a member dead for longer than forget_after");
        }
        self.answered
            .retain(|_, at| now.saturating_duration_since(*at) <= forget_after);
    }

    /// Runs the election over the current live Controls, then reports view/acting changes.
    fn settle(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.refresh_candidates();
        let mut actions = Vec::new();
        self.election
            .on_controls(&self.cands, now, &mut self.rng, &mut actions);
        self.apply(actions, now, out);

        let view = match self.election.my_control() {
            Some((_, epoch)) => Some(ControlInfo {
                node_id: self.cfg.node_id,
                epoch,
            }),
            None => best(self.cands.iter()).map(|c| ControlInfo {
                node_id: c.node_id,
                epoch: c.epoch,
            }),
        };
        if view != self.view {
            self.view = view;
            out.push(Output::ControlChanged(view));
        }

        let acting = self.compute_acting(now);
        if acting != self.acting {
            match (self.acting, acting) {
                (Some(old), None) => out.push(Output::ControlActing {
                    epoch: old,
                    acting: false,
                }),
                (_, Some(epoch)) => out.push(Output::ControlActing {
                    epoch,
                    acting: true,
                }),
                (None, None) => {}
            }
            self.acting = acting;
        }
    }

    fn compute_acting(&self, now: Instant) -> Option<Epoch> {
        let ElectionState::Control {
            epoch,
            rebuilding: false,
            ..
        } = self.election.state()
        else {
            return None;
        };
        match &self.cfg.election.mode {
            Mode::Available => Some(epoch),
            Mode::Majority { .. } => self.election.leadership().valid(now).then_some(epoch),
        }
    }

    /// Recomputes the live Controls other than us: those we hear asserting it (direct), and
    /// those that live members report hearing while we cannot hear them ourselves (an
    /// asymmetric cut). A node we hear directly is never taken from reports: what it tells us
    /// itself is fresher.
    /// Whom a leaving Control names: a live, verified member that may be Control and whose
    /// heartbeats say it hears us directly (a member that just started may not have heard
    /// us assert yet, and would not believe our handover), preferring a profiler node
    /// (thesis §4.2.1), then the lowest node id.
    fn successor(&self) -> Option<NodeId> {
        self.members
            .iter()
            .filter(|(id, m)| {
                **id != self.cfg.node_id
                    && self.detector.is_alive(**id)
                    && !self.unverified.contains_key(*id)
                    && self
                        .reports
                        .get(*id)
                        .is_some_and(|v| v.node_id == self.cfg.node_id)
                    && m.info
                        .as_ref()
                        .is_some_and(|i| i.roles.contains(&Role::Control))
            })
            .min_by_key(|(id, m)| {
                let profiler = m
                    .info
                    .as_ref()
                    .is_some_and(|i| i.roles.contains(&Role::Profiler));
                (!profiler, **id)
            })
            .map(|(id, _)| *id)
    }

    fn refresh_candidates(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let mut found: BTreeMap<NodeId, Candidate> = BTreeMap::new();
        for id in &self.asserting {
            if let Some(a) = self.members[id].asserts
                && self.detector.is_alive(*id)
            {
                found.insert(
                    *id,
                    Candidate {
                        node_id: *id,
                        established_epoch: a.established_epoch,
                        epoch: a.epoch,
                        direct: true,
                    },
                );
            }
        }
        for (reporter, v) in &self.reports {
            // A Control that handed over and left is not kept alive by reports that
            // predate its handover.
            if v.node_id == self.cfg.node_id
                || self.departed.contains_key(&v.node_id)
                || self.detector.is_alive(v.node_id)
                || !self.detector.is_alive(*reporter)
            {
                continue;
            }
            let c = found.entry(v.node_id).or_insert(Candidate {
                node_id: v.node_id,
                established_epoch: v.established_epoch,
                epoch: v.epoch,
                direct: false,
            });
            if v.epoch > c.epoch {
                c.epoch = v.epoch;
                c.established_epoch = v.established_epoch;
            }
        }
        self.cands = found.into_values().collect();
    }

    /// What our heartbeats report: ourselves when Control, else the best Control we hear
    /// directly (never a second-hand one).
    fn direct_view(&self) -> Option<ControlView> {
        if let Some((established_epoch, epoch)) = self.election.my_control() {
            return Some(ControlView {
                node_id: self.cfg.node_id,
                established_epoch,
                epoch,
            });
        }
        best(self.cands.iter().filter(|c| c.direct)).map(|c| ControlView {
            node_id: c.node_id,
            established_epoch: c.established_epoch,
            epoch: c.epoch,
        })
    }

    /// Translates election actions into outputs.
    fn apply(&mut self, actions: Vec<Action>, now: Instant, out: &mut Vec<Output>) {
        for a in actions {
            match a {
                Action::Persist(e) => out.push(Output::PersistEpoch(e)),
                Action::Claim { epoch } => {
                    let seq = self.next_seq();
                    let msg = Message::Claim(Claim {
                        from: self.cfg.node_id,
                        incarnation: self.cfg.incarnation,
                        seq,
                        epoch,
                    });
                    tracing::info!(node = %self.cfg.node_id, epoch, "claiming Control");
                    self.counters.claims_sent += 1;
                    self.push_send(msg, out);
                }
                Action::BecomeControl { epoch } => {
                    out.push(Output::BecomeControl { epoch });
                }
                Action::Reassert { epoch } => {
                    tracing::info!(node = %self.cfg.node_id, epoch, "re-asserting Control");
                    self.next_heartbeat = Some(now);
                    out.push(Output::Reasserted { epoch });
                }
                Action::StepDown { epoch, reason } => {
                    tracing::warn!(node = %self.cfg.node_id, epoch, ?reason, "stepping down");
                    self.next_heartbeat = Some(now);
                    out.push(Output::StepDown { epoch, reason });
                }
            }
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn push_send(&self, msg: Message, out: &mut Vec<Output>) {
        if self.cfg.use_seeds {
            out.push(Output::Send {
                dest: Dest::Multicast,
                msg: msg.clone(),
            });
            out.push(Output::Send {
                dest: Dest::Seeds,
                msg,
            });
        } else {
            out.push(Output::Send {
                dest: Dest::Multicast,
                msg,
            });
        }
    }

    fn send_heartbeat(&mut self, now: Instant, out: &mut Vec<Output>) {
        let seq = self.next_seq();
        let as_control = self
            .election
            .my_control()
            .map(|(established_epoch, epoch)| ControlAssert {
                established_epoch,
                epoch,
            });
        let hb = Heartbeat {
            from: self.cfg.node_id,
            incarnation: self.cfg.incarnation,
            seq,
            tcp_addr: self.cfg.tcp_addr,
            roles: self.cfg.roles.clone(),
            highest_epoch: self.election.highest(),
            control: self.direct_view(),
            as_control,
            load: self.load,
        };
        self.counters.heartbeats_sent += 1;
        // Keep the cadence of the schedule, not of the ticks: with 20 ms ticks, `now + interval`
        // would stretch 100 ms into up to 120 ms. After a long stall, restart from `now`.
        let interval = self.cfg.heartbeat_interval;
        self.next_heartbeat = Some(match self.next_heartbeat {
            Some(due) if now.saturating_duration_since(due) < interval => due + interval,
            _ => now + interval,
        });
        self.push_send(Message::Heartbeat(hb), out);
    }

    /// Members known from at least one heartbeat, by node id.
    pub fn members(&self) -> Vec<MemberView> {
        self.members
            .iter()
            .filter_map(|(id, m)| {
                let info = m.info.as_ref()?;
                Some(MemberView {
                    node_id: *id,
                    tcp_addr: info.tcp_addr,
                    alive: self.detector.is_alive(*id),
                    roles: info.roles.clone(),
                    last_heard: self.detector.last_heard(*id)?,
                    incarnation: m.incarnation,
                    load: info.load,
                    highest_epoch: info.highest_epoch,
                })
            })
            .collect()
    }

    /// The Control this node sees (itself when it is Control).
    pub fn control(&self) -> Option<ControlInfo> {
        self.view
    }

    /// Highest epoch seen.
    pub fn highest_epoch(&self) -> Epoch {
        self.election.highest()
    }

    /// Whether this node is Control (acting or not).
    pub fn is_control(&self) -> bool {
        self.election.my_control().is_some()
    }

    /// The election state.
    pub fn election_state(&self) -> ElectionState {
        self.election.state()
    }

    /// Whether the local Control may act at `now`: Control, rebuilt, and in majority mode
    /// Raft's quorum lease valid at `now` (checked against the clock, not the last tick).
    /// Also false when the engine has not been fed for longer than the dead time: right after
    /// a SIGCONT the Control actor may wake up before the engine notices the pause.
    pub fn may_act(&self, now: Instant) -> bool {
        let fresh = self
            .last_input
            .is_some_and(|l| now.saturating_duration_since(l) <= self.cfg.detector.dead_after);
        fresh && self.compute_acting(now).is_some()
    }

    /// Whether, and until when, the local Control may act, as of `now`: what the shell
    /// publishes for the Control to check right before each decision
    /// ([`crate::view::ActingLease`]). Majority mode: valid until Raft's quorum lease ends;
    /// available mode: no limit.
    pub fn acting_lease(&self, now: Instant) -> ActingLease {
        let Some(epoch) = self.compute_acting(now) else {
            return ActingLease::default();
        };
        let until = match &self.cfg.election.mode {
            Mode::Available => None,
            Mode::Majority { .. } => self
                .election
                .leadership()
                .lease_until
                .map(Instant::into_std),
        };
        ActingLease {
            epoch: Some(epoch),
            until,
        }
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }
}

/// The highest epoch a message asserts in any field.
fn max_epoch(msg: &Message) -> Option<Epoch> {
    match msg {
        Message::Heartbeat(h) => [
            Some(h.highest_epoch),
            h.control.map(|v| v.epoch.max(v.established_epoch)),
            h.as_control.map(|a| a.epoch.max(a.established_epoch)),
        ]
        .into_iter()
        .flatten()
        .max(),
        Message::Claim(c) => Some(c.epoch),
        Message::Handover(h) => Some(h.epoch),
        Message::Challenge(_) | Message::Proof(_) => None,
    }
}

/// The Control to follow among several: highest epoch; equal epochs, the older.
fn best<'a>(cands: impl Iterator<Item = &'a Candidate>) -> Option<&'a Candidate> {
    cands.max_by(|a, b| a.epoch.cmp(&b.epoch).then(b.age().cmp(&a.age())))
}

#[cfg(test)]
mod tests;
