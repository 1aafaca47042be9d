//! Control election with persisted epochs and fencing (docs/DESIGN.md §2, thesis §4.2.1 made safe
//! under partitions and clock skew). A pure state machine: the [`crate::engine`] feeds it what
//! the member table knows and the time, and executes the [`Action`]s it returns, in order.
//!
//! The rules:
//! 1. `highest_epoch_seen` only grows and is persisted before it is acted on: every raise is
//!    an [`Action::Persist`] emitted *before* the action that relies on it.
//! 2. When no live node asserts Control, an eligible node waits a random time in `[0, B]`
//!    (`B_profiler`, shorter, on profiler nodes: the thesis prefers the Agent99 node for a
//!    restarted Control), then claims `highest + 1`. Hearing any live Control (a claim or a
//!    Control heartbeat) ends the wait. After start-up and after a local pause a node first
//!    listens for [`ElectionConfig::listen`] so it does not claim over a Control it has not
//!    heard yet.
//! 3. Two Controls that hear each other: the younger by `(established_epoch, node_id)` steps
//!    down; the survivor re-asserts at a new epoch above both. A Control only *reported*
//!    by live members (an asymmetric cut: they hear it, we do not) also stops a node from
//!    claiming, and makes a younger Control step down once its epoch is above the younger's.
//!    A Control also re-asserts whenever it sees any epoch above its own (a claim it never
//!    heard raised the agents' fences: without a higher epoch its commands would be refused).
//! 4. Fencing: [`Fence`] is what Agent86 uses to refuse commands of a stale epoch, checked
//!    when it executes them.
//! 5. A new Control starts *rebuilding*; it may act only after the shell reports the rebuild
//!    from Agent86 reports done ([`Election::rebuild_done`]).
//! 6. [`Mode::Majority`]: the Control is the leader of the desired-state log's Raft group
//!    ([`Leadership`], fed by the shell). No backoff: Raft's randomized election timeout is
//!    the random wait. A node claims once it leads with a quorum's recent acknowledgement,
//!    acts only while that acknowledgement is fresh, and steps down when it stops leading or
//!    stays without one for the listen time; a Control without one steps down before any
//!    other Control it hears. A node that cannot reach a majority never leads, so it never
//!    claims nor acts.
//!
//! A Control whose process could not run for longer than the failure detector's dead time
//! (SIGSTOP, a stalled VM) steps down on its own ([`Election::paused`]): the others may have
//! declared it dead and elected another Control meanwhile, and rule 3 alone would make the
//! returning zombie, being older, win against the new one.
//!
//! ## Layout
//! - [`Mode`], [`ElectionConfig`]: configuration.
//! - [`Election`], [`ElectionState`], [`Candidate`], [`Action`], [`StepDownReason`].
//! - [`Leadership`]: majority mode's input from Raft.
//! - [`Fence`], [`Stale`]: epoch fencing for command execution.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use smart_proto::{Epoch, NodeId};

/// No epoch above this is ever accepted, persisted or claimed: a cluster that elects a
/// Control every millisecond needs 290 million years to get there, so only a hostile or
/// corrupt value can, and refusing it keeps `highest + 1` from ever overflowing.
pub const EPOCH_CEILING: Epoch = u64::MAX >> 1;

/// Whether a Control may act alone or needs a majority.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Thesis default: any live node can become Control and act, even in a minority
    /// partition ("while one component lives it can regenerate all the others").
    #[default]
    Available,
    /// The Control is the Raft leader of the desired-state log, whose voters are `members`
    /// (configured node ids, itself included), and acts only while a majority of them
    /// acknowledged it recently ([`Leadership`]).
    Majority {
        /// All configured members.
        members: BTreeSet<NodeId>,
    },
}

impl Mode {
    /// Whether this is majority mode.
    pub fn is_majority(&self) -> bool {
        matches!(self, Mode::Majority { .. })
    }
}

pub use smart_proto::desired::Leadership;

/// Election timings and switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// This node.
    pub node_id: NodeId,
    /// Whether this node may become Control (it has the Control role).
    pub eligible: bool,
    /// Whether this node has the profiler role (shorter backoff).
    pub is_profiler: bool,
    /// Backoff window `B` (default 300 ms).
    pub backoff: Duration,
    /// Backoff window `B_profiler` for profiler nodes (default 100 ms).
    pub profiler_backoff: Duration,
    /// Quiet time after start-up or a local pause before waiting/claiming (default 400 ms,
    /// the detector's dead time: long enough to hear an existing Control).
    pub listen: Duration,
    /// Available or majority.
    pub mode: Mode,
}

impl ElectionConfig {
    /// Defaults for a LAN.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            eligible: true,
            is_profiler: false,
            backoff: Duration::from_millis(300),
            profiler_backoff: Duration::from_millis(100),
            listen: Duration::from_millis(400),
            mode: Mode::Available,
        }
    }

    fn window(&self) -> Duration {
        if self.is_profiler {
            self.profiler_backoff
        } else {
            self.backoff
        }
    }
}

/// Another live node that asserts it is the Control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Its node id.
    pub node_id: NodeId,
    /// The epoch at which it became Control.
    pub established_epoch: Epoch,
    /// Its current epoch.
    pub epoch: Epoch,
    /// Heard directly (its own claim or heartbeat), or only reported by a live member that
    /// hears it (an asymmetric cut between it and us).
    pub direct: bool,
}

impl Candidate {
    /// The age order of docs/DESIGN.md §2: lower is older and survives.
    pub fn age(&self) -> (Epoch, NodeId) {
        (self.established_epoch, self.node_id)
    }
}

/// Where this node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionState {
    /// Some live node is Control, or none and this node is not (yet) waiting.
    Follower,
    /// No live Control: waiting for the backoff deadline.
    Waiting {
        /// When to claim.
        deadline: Instant,
    },
    /// This node is the Control.
    Control {
        /// Epoch at which it became Control (its age).
        established: Epoch,
        /// Current epoch (grows with re-assertions).
        epoch: Epoch,
        /// Still rebuilding its state from Agent86 reports: must not act.
        rebuilding: bool,
    },
}

/// Why a Control stepped down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepDownReason {
    /// Another Control is older by `(established_epoch, node_id)`.
    YoungerThan {
        /// The older Control.
        other: NodeId,
        /// Its established epoch.
        established_epoch: Epoch,
    },
    /// This process could not run for `gap` (longer than the dead time): the others may have
    /// replaced it.
    Paused {
        /// How long it was silent.
        gap: Duration,
    },
    /// The node is shutting down ([`Election::leave`]).
    Leaving,
    /// Majority mode: this node no longer leads the Raft group, or no quorum acknowledged
    /// it for the listen time, or another Control is heard while it cannot act.
    NotLeading,
    /// The highest epoch could not be made durable: acting on it could let a restarted
    /// node reuse it ([`Election::persist_failed`]).
    NotDurable,
}

/// What the election asks the engine to do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Persist `highest_epoch_seen = epoch` before executing any later action.
    Persist(Epoch),
    /// Announce a claim of `epoch` (multicast and seeds).
    Claim {
        /// The claimed epoch.
        epoch: Epoch,
    },
    /// This node became Control at `epoch` and starts rebuilding.
    BecomeControl {
        /// Its epoch.
        epoch: Epoch,
    },
    /// This node, still Control, moved to a higher `epoch`.
    Reassert {
        /// The new epoch.
        epoch: Epoch,
    },
    /// This node stopped being Control.
    StepDown {
        /// The epoch it held.
        epoch: Epoch,
        /// Why.
        reason: StepDownReason,
    },
}

/// The election state machine of one node.
#[derive(Debug, Clone)]
pub struct Election {
    cfg: ElectionConfig,
    highest: Epoch,
    state: ElectionState,
    /// No waiting/claiming before this instant (start-up and after a pause).
    quiet_until: Option<Instant>,
    /// Set by the engine while members report epochs it cannot believe yet: some Control
    /// may be alive out there, so do not claim.
    hold: bool,
    /// The epoch space is used up (a corrupt or hostile stored value): said once.
    exhausted: bool,
    /// `(members, our index)`: the epochs this node may claim (see
    /// [`Election::set_epoch_class`]).
    class: Option<(u64, u64)>,
    /// Majority mode: the latest [`Leadership`] report.
    lead: Leadership,
}

impl Election {
    /// A follower that has persisted `highest_epoch_seen = persisted_highest`.
    pub fn new(cfg: ElectionConfig, persisted_highest: Epoch) -> Self {
        Self {
            cfg,
            highest: persisted_highest,
            state: ElectionState::Follower,
            quiet_until: None,
            hold: false,
            exhausted: false,
            class: None,
            lead: Leadership::default(),
        }
    }

    /// Majority mode: the Raft group's latest word on this node (the engine then runs
    /// [`Election::on_controls`], which claims or steps down accordingly).
    pub fn set_leadership(&mut self, lead: Leadership) {
        self.lead = lead;
    }

    /// Majority mode: the latest [`Leadership`] report.
    pub fn leadership(&self) -> Leadership {
        self.lead
    }

    /// Holds (or releases) the election: while held, a follower does not wait nor claim.
    pub fn hold(&mut self, hold: bool) {
        self.hold = hold;
    }

    /// Gives this node its own residue class of epochs: with `count` configured members and
    /// this node at `index` among them (in id order), it claims and re-asserts only epochs
    /// `e` with `e % count == index`. Two sides of a partition, each claiming above the same
    /// highest epoch, then never claim the same one: an epoch names one Control, so an
    /// agent's fence orders any two of them. Without configured members: any epoch.
    pub fn set_epoch_class(&mut self, count: u64, index: u64) {
        self.class = (count > 1 && index < count).then_some((count, index));
    }

    /// The next epoch above `highest` in this node's class, or `None` (said once) when the
    /// space is used up.
    fn next_epoch(&mut self) -> Option<Epoch> {
        let next = self
            .highest
            .checked_add(1)
            .and_then(|base| match self.class {
                Some((count, index)) => base.checked_add((index + count - base % count) % count),
                None => Some(base),
            });
        match next.filter(|e| *e <= EPOCH_CEILING) {
            Some(e) => Some(e),
            None => {
                if !self.exhausted {
                    self.exhausted = true;
                    tracing::error!(
                        epoch = self.highest,
                        "epoch space exhausted: this node will not claim nor re-assert; repair the data dir (smart repair)"
                    );
                }
                None
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ElectionConfig {
        &self.cfg
    }

    /// Highest epoch seen (and persisted, once the engine executed the actions).
    pub fn highest(&self) -> Epoch {
        self.highest
    }

    /// Current state.
    pub fn state(&self) -> ElectionState {
        self.state
    }

    /// `(established, epoch)` when this node is Control.
    pub fn my_control(&self) -> Option<(Epoch, Epoch)> {
        match self.state {
            ElectionState::Control {
                established, epoch, ..
            } => Some((established, epoch)),
            _ => None,
        }
    }

    /// Whether this node is Control and still rebuilding.
    pub fn rebuilding(&self) -> bool {
        matches!(
            self.state,
            ElectionState::Control {
                rebuilding: true,
                ..
            }
        )
    }

    /// Starts the quiet listening period (start-up) if not started yet.
    pub fn start(&mut self, now: Instant) {
        if self.quiet_until.is_none() {
            self.quiet_until = Some(now + self.cfg.listen);
        }
    }

    /// An epoch was seen in a valid message: raise (and persist) `highest`. A Control left
    /// below it re-asserts in the next [`Election::on_controls`], after the two-Controls rule
    /// had its say (a younger Control must step down, not re-assert, when it hears the
    /// older one's higher epoch).
    pub fn observe_epoch(&mut self, epoch: Epoch, out: &mut Vec<Action>) {
        if epoch > self.highest {
            self.highest = epoch;
            out.push(Action::Persist(epoch));
        }
    }

    /// Re-asserts at once when Control (the shell restarted its Control actor): the new
    /// epoch fences commands of the failed incarnation.
    pub fn reassert_now(&mut self, out: &mut Vec<Action>) {
        self.reassert(out);
    }

    fn reassert(&mut self, out: &mut Vec<Action>) {
        if !matches!(self.state, ElectionState::Control { .. }) {
            return;
        }
        let Some(next) = self.next_epoch() else {
            return;
        };
        if let ElectionState::Control { epoch, .. } = &mut self.state {
            self.highest = next;
            *epoch = next;
            out.push(Action::Persist(next));
            out.push(Action::Reassert { epoch: next });
        }
    }

    /// The set of *other* live nodes asserting Control changed (or may have: calling it again
    /// with the same set is harmless). Resolves two Controls, ends or starts the wait.
    pub fn on_controls<R: Rng + ?Sized>(
        &mut self,
        others: &[Candidate],
        now: Instant,
        rng: &mut R,
        out: &mut Vec<Action>,
    ) {
        if self.cfg.mode.is_majority() {
            self.on_controls_majority(others, now, out);
            return;
        }
        if let ElectionState::Control {
            established, epoch, ..
        } = self.state
        {
            let me = (established, self.cfg.node_id);
            // An older Control heard directly wins (docs/DESIGN.md §2 rule 3). One only reported by
            // others wins once its epoch is above ours: it has re-asserted after our claim, so
            // it is alive, not a just-crashed Control that its observers have not timed out
            // yet (stepping down for that one would only delay the failover).
            if let Some(older) = others
                .iter()
                .filter(|c| c.age() < me && (c.direct || c.epoch > epoch))
                .min_by_key(|c| c.age())
            {
                self.state = ElectionState::Follower;
                out.push(Action::StepDown {
                    epoch,
                    reason: StepDownReason::YoungerThan {
                        other: older.node_id,
                        established_epoch: older.established_epoch,
                    },
                });
                for c in others {
                    self.observe_epoch(c.epoch, out);
                }
                return;
            }
            for c in others {
                self.observe_epoch(c.epoch, out);
            }
            // We survive (or are alone): move above every epoch seen, in particular above a
            // younger Control's, so that its commands are fenced.
            if self.highest > epoch || others.iter().any(|c| c.epoch >= epoch) {
                self.reassert(out);
            }
            return;
        }
        for c in others {
            self.observe_epoch(c.epoch, out);
        }
        if !others.is_empty() || self.hold {
            self.state = ElectionState::Follower;
            return;
        }
        if self.state == ElectionState::Follower
            && self.cfg.eligible
            && !self.exhausted
            && self.quiet_until.is_some_and(|q| now >= q)
        {
            let window = self.cfg.window();
            let wait = rng.random_range(0..=window.as_micros() as u64);
            self.state = ElectionState::Waiting {
                deadline: now + Duration::from_micros(wait),
            };
        }
    }

    /// Majority mode's rule 6: the Raft leader with a fresh quorum acknowledgement keeps
    /// (or takes) office whatever other Control it hears, and moves above their epochs; a
    /// Control without one steps down when it no longer leads, when it has had none for
    /// the listen time, or when it hears another Control; a follower never waits.
    fn on_controls_majority(&mut self, others: &[Candidate], now: Instant, out: &mut Vec<Action>) {
        for c in others {
            self.observe_epoch(c.epoch, out);
        }
        let valid = self.lead.valid(now);
        if let ElectionState::Control { epoch, .. } = self.state {
            if valid {
                if self.highest > epoch || others.iter().any(|c| c.epoch >= epoch) {
                    self.reassert(out);
                }
                return;
            }
            let lapsed = self
                .lead
                .lease_until
                .is_none_or(|u| now.saturating_duration_since(u) >= self.cfg.listen);
            if !self.lead.leader || lapsed || others.iter().any(|c| c.direct) {
                self.state = ElectionState::Follower;
                out.push(Action::StepDown {
                    epoch,
                    reason: StepDownReason::NotLeading,
                });
            }
            return;
        }
        self.state = ElectionState::Follower;
        if valid
            && self.cfg.eligible
            && !self.hold
            && !self.exhausted
            && self.quiet_until.is_some_and(|q| now >= q)
        {
            self.claim(out);
        }
    }

    /// Time passed: claims when the backoff ends.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let ElectionState::Waiting { deadline } = self.state
            && now >= deadline
        {
            self.claim(out);
        }
    }

    /// Claims the next epoch of this node's class and becomes a rebuilding Control.
    fn claim(&mut self, out: &mut Vec<Action>) {
        // Only a hostile insider or a corrupt disk can push epochs that far: refuse, never
        // wrap.
        let Some(epoch) = self.next_epoch() else {
            self.state = ElectionState::Follower;
            return;
        };
        self.highest = epoch;
        self.state = ElectionState::Control {
            established: epoch,
            epoch,
            rebuilding: true,
        };
        out.push(Action::Persist(epoch));
        out.push(Action::Claim { epoch });
        out.push(Action::BecomeControl { epoch });
    }

    /// An epoch write failed: step down if Control and drop any wait. The engine holds
    /// the election until the write succeeds.
    pub fn persist_failed(&mut self, out: &mut Vec<Action>) {
        if let ElectionState::Control { epoch, .. } = self.state {
            out.push(Action::StepDown {
                epoch,
                reason: StepDownReason::NotDurable,
            });
        }
        self.state = ElectionState::Follower;
    }

    /// The Control handed over to this node ([`smart_proto::heartbeat::Handover`]): claim at
    /// the next tick, without a backoff, when this node may claim at all. Returns whether it
    /// will. Never in majority mode: there the successor asks Raft for an election and claims
    /// once it leads.
    pub fn take_over(&mut self, now: Instant) -> bool {
        let may = !self.cfg.mode.is_majority()
            && matches!(
                self.state,
                ElectionState::Follower | ElectionState::Waiting { .. }
            )
            && self.cfg.eligible
            && !self.hold
            && !self.exhausted;
        if may {
            self.state = ElectionState::Waiting { deadline: now };
        }
        may
    }

    /// The Control handed over to another node: hold our own claim for `hold` (the
    /// failure detector's dead time: the successor persists its epoch before it claims, and
    /// a slow disk must not make us race it) plus a random backoff; if the claim never
    /// comes (the successor died too), we claim as after a crash of the Control. Nothing to
    /// hold in majority mode, where nobody claims without leading.
    pub fn defer_to_successor<R: Rng + ?Sized>(
        &mut self,
        hold: Duration,
        now: Instant,
        rng: &mut R,
    ) {
        if !self.cfg.mode.is_majority()
            && matches!(
                self.state,
                ElectionState::Follower | ElectionState::Waiting { .. }
            )
            && self.cfg.eligible
        {
            let backoff = rng.random_range(0..=self.cfg.window().as_micros() as u64);
            let until = now + hold + Duration::from_micros(backoff);
            self.state = ElectionState::Waiting {
                deadline: match self.state {
                    ElectionState::Waiting { deadline } => deadline.max(until),
                    _ => until,
                },
            };
        }
    }

    /// The shell finished rebuilding the Control state it started at `epoch`. Accepted when
    /// this node is Control and `established <= epoch <= current` (a re-assertion during the
    /// rebuild does not invalidate it); returns whether it was accepted.
    pub fn rebuild_done(&mut self, epoch: Epoch) -> bool {
        match &mut self.state {
            ElectionState::Control {
                established,
                epoch: current,
                rebuilding,
            } if *established <= epoch && epoch <= *current => {
                *rebuilding = false;
                true
            }
            _ => false,
        }
    }

    /// This process could not run for `gap` (longer than the dead time): step down if
    /// Control, drop any wait, and listen again before claiming.
    pub fn paused(&mut self, gap: Duration, now: Instant, out: &mut Vec<Action>) {
        if let ElectionState::Control { epoch, .. } = self.state {
            out.push(Action::StepDown {
                epoch,
                reason: StepDownReason::Paused { gap },
            });
        }
        self.state = ElectionState::Follower;
        self.quiet_until = Some(now + self.cfg.listen);
    }

    /// Graceful shutdown: step down if Control and never claim again, so that the others
    /// can elect a successor without waiting for the failure detector.
    pub fn leave(&mut self, out: &mut Vec<Action>) {
        if let ElectionState::Control { epoch, .. } = self.state {
            out.push(Action::StepDown {
                epoch,
                reason: StepDownReason::Leaving,
            });
        }
        self.state = ElectionState::Follower;
        self.cfg.eligible = false;
    }
}

pub use smart_proto::fence::{Fence, Stale};

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cand(n: u64, est: Epoch, epoch: Epoch) -> Candidate {
        Candidate {
            node_id: NodeId(n),
            established_epoch: est,
            epoch,
            direct: true,
        }
    }

    #[test]
    fn listens_then_waits_then_claims_with_persist_first() {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut e = Election::new(ElectionConfig::new(NodeId(1)), 4);
        e.start(t0);
        let mut out = vec![];
        e.on_controls(&[], t0 + ms(100), &mut rng, &mut out);
        assert_eq!(e.state(), ElectionState::Follower, "still listening");
        e.on_controls(&[], t0 + ms(400), &mut rng, &mut out);
        let ElectionState::Waiting { deadline } = e.state() else {
            panic!("expected waiting, got {:?}", e.state());
        };
        assert!(deadline >= t0 + ms(400) && deadline <= t0 + ms(700));
        e.tick(deadline - Duration::from_micros(1), &mut out);
        assert!(out.is_empty());
        e.tick(deadline, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Persist(5),
                Action::Claim { epoch: 5 },
                Action::BecomeControl { epoch: 5 }
            ]
        );
        assert!(e.rebuilding());
        assert!(!e.rebuild_done(4));
        assert!(e.rebuild_done(5));
        assert!(!e.rebuilding());
    }

    #[test]
    fn hearing_a_claim_stops_the_wait() {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut e = Election::new(ElectionConfig::new(NodeId(2)), 4);
        e.start(t0);
        let mut out = vec![];
        e.on_controls(&[], t0 + ms(400), &mut rng, &mut out);
        assert!(matches!(e.state(), ElectionState::Waiting { .. }));
        e.on_controls(&[cand(1, 5, 5)], t0 + ms(401), &mut rng, &mut out);
        assert_eq!(e.state(), ElectionState::Follower);
        assert_eq!(out, vec![Action::Persist(5)]);
        out.clear();
        e.tick(t0 + ms(2000), &mut out);
        assert!(out.is_empty(), "no claim after the wait was cancelled");
    }

    #[test]
    fn profiler_waits_in_the_shorter_window() {
        let t0 = Instant::now();
        let mut cfg = ElectionConfig::new(NodeId(9));
        cfg.is_profiler = true;
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut e = Election::new(cfg.clone(), 0);
            e.start(t0);
            e.on_controls(&[], t0 + ms(400), &mut rng, &mut vec![]);
            let ElectionState::Waiting { deadline } = e.state() else {
                panic!()
            };
            assert!(deadline <= t0 + ms(500));
        }
    }

    #[test]
    fn ineligible_node_never_claims() {
        let t0 = Instant::now();
        let mut cfg = ElectionConfig::new(NodeId(3));
        cfg.eligible = false;
        let mut e = Election::new(cfg, 0);
        e.start(t0);
        let mut out = vec![];
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        e.on_controls(&[], t0 + ms(1000), &mut rng, &mut out);
        e.tick(t0 + ms(5000), &mut out);
        assert_eq!(e.state(), ElectionState::Follower);
        assert!(out.is_empty());
    }

    fn control_at(node: u64, epoch: Epoch) -> Election {
        let t0 = Instant::now();
        let mut cfg = ElectionConfig::new(NodeId(node));
        cfg.backoff = Duration::ZERO;
        cfg.listen = Duration::ZERO;
        let mut e = Election::new(cfg, epoch - 1);
        e.start(t0);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        e.on_controls(&[], t0, &mut rng, &mut vec![]);
        e.tick(t0, &mut vec![]);
        assert_eq!(e.my_control(), Some((epoch, epoch)));
        e
    }

    #[test]
    fn two_controls_younger_steps_down_older_reasserts() {
        let now = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // Simultaneous claims of epoch 6 by n1 and n2: same age epoch, node id decides.
        let mut n1 = control_at(1, 6);
        let mut n2 = control_at(2, 6);
        let mut o2 = vec![];
        n2.on_controls(&[cand(1, 6, 6)], now, &mut rng, &mut o2);
        assert_eq!(
            o2,
            vec![Action::StepDown {
                epoch: 6,
                reason: StepDownReason::YoungerThan {
                    other: NodeId(1),
                    established_epoch: 6
                }
            }]
        );
        let mut o1 = vec![];
        n1.on_controls(&[cand(2, 6, 6)], now, &mut rng, &mut o1);
        assert_eq!(o1, vec![Action::Persist(7), Action::Reassert { epoch: 7 }]);
        assert_eq!(n1.my_control(), Some((6, 7)));
        // Hearing the younger again (still at 6) does not re-assert again.
        let mut o1 = vec![];
        n1.on_controls(&[cand(2, 6, 6)], now, &mut rng, &mut o1);
        assert!(o1.is_empty());
    }

    #[test]
    fn older_control_survives_a_younger_with_higher_epoch() {
        // Partition heal: n3 became Control at 5, n1 (other side) claimed 6.
        let now = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut n3 = control_at(3, 5);
        let mut out = vec![];
        n3.on_controls(&[cand(1, 6, 6)], now, &mut rng, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Persist(6),
                Action::Persist(7),
                Action::Reassert { epoch: 7 }
            ]
        );
        let mut n1 = control_at(1, 6);
        let mut out = vec![];
        n1.on_controls(&[cand(3, 5, 7)], now, &mut rng, &mut out);
        assert_eq!(
            out,
            vec![
                Action::StepDown {
                    epoch: 6,
                    reason: StepDownReason::YoungerThan {
                        other: NodeId(3),
                        established_epoch: 5
                    }
                },
                Action::Persist(7),
            ]
        );
    }

    #[test]
    fn control_reasserts_above_any_higher_epoch_seen() {
        let now = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut n1 = control_at(1, 3);
        let mut out = vec![];
        n1.observe_epoch(3, &mut out);
        n1.on_controls(&[], now, &mut rng, &mut out);
        assert!(out.is_empty());
        n1.observe_epoch(8, &mut out);
        n1.on_controls(&[], now, &mut rng, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Persist(8),
                Action::Persist(9),
                Action::Reassert { epoch: 9 }
            ]
        );
        assert_eq!(n1.highest(), 9);
        // The rebuild of the same reign (established 3) still counts after re-assertion.
        assert!(n1.rebuild_done(3));
    }

    #[test]
    fn epoch_space_exhaustion_never_wraps() {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut n1 = control_at(1, 3);
        let mut out = vec![];
        n1.on_controls(&[cand(2, u64::MAX, u64::MAX)], t0, &mut rng, &mut out);
        assert_eq!(
            out,
            vec![Action::Persist(u64::MAX)],
            "no re-assertion past u64::MAX"
        );
        let mut cfg = ElectionConfig::new(NodeId(4));
        cfg.listen = Duration::ZERO;
        let mut e = Election::new(cfg, u64::MAX);
        e.start(t0);
        e.on_controls(&[], t0, &mut rng, &mut vec![]);
        let mut out = vec![];
        e.tick(t0 + ms(1000), &mut out);
        assert!(out.is_empty());
        assert_eq!(e.state(), ElectionState::Follower);
    }

    #[test]
    fn paused_control_steps_down_and_listens_again() {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut n1 = control_at(1, 4);
        let mut out = vec![];
        n1.paused(ms(2000), t0, &mut out);
        assert_eq!(
            out,
            vec![Action::StepDown {
                epoch: 4,
                reason: StepDownReason::Paused { gap: ms(2000) }
            }]
        );
        assert_eq!(n1.state(), ElectionState::Follower);
        // Listening again (listen is zero in this config, so it may wait right away).
        n1.on_controls(&[cand(2, 5, 5)], t0, &mut rng, &mut vec![]);
        assert_eq!(n1.state(), ElectionState::Follower);
        assert_eq!(n1.highest(), 5);
    }

    fn majority(node: u64) -> Election {
        let mut cfg = ElectionConfig::new(NodeId(node));
        cfg.mode = Mode::Majority {
            members: [1, 2, 3].map(NodeId).into(),
        };
        Election::new(cfg, 4)
    }

    /// A majority-mode Control on `node`, claimed at t0 + 400 ms (epoch 5) while leading
    /// with a quorum acknowledgement valid until t0 + 500 ms.
    fn majority_control(node: u64, t0: Instant, rng: &mut ChaCha8Rng) -> Election {
        let mut e = majority(node);
        e.start(t0);
        e.set_leadership(leading(t0 + ms(500)));
        e.on_controls(&[], t0 + ms(400), rng, &mut vec![]);
        assert_eq!(e.my_control(), Some((5, 5)));
        e
    }

    fn leading(until: Instant) -> Leadership {
        Leadership {
            leader: true,
            lease_until: Some(until),
        }
    }

    /// Majority mode: no backoff, no claim without Raft's leadership and a fresh quorum
    /// acknowledgement; the claim comes as soon as both hold (after the listen time).
    #[test]
    fn majority_claims_only_while_leading_with_a_quorum() {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut e = majority(1);
        e.start(t0);
        let mut out = vec![];
        e.on_controls(&[], t0 + ms(500), &mut rng, &mut out);
        e.tick(t0 + ms(5000), &mut out);
        assert_eq!(e.state(), ElectionState::Follower, "no backoff wait");
        assert!(out.is_empty());
        e.set_leadership(Leadership {
            leader: true,
            lease_until: None,
        });
        e.on_controls(&[], t0 + ms(500), &mut rng, &mut out);
        assert!(out.is_empty(), "leader without a quorum's acknowledgement");
        e.set_leadership(leading(t0 + ms(100)));
        e.on_controls(&[], t0 + ms(50), &mut rng, &mut out);
        assert!(out.is_empty(), "still listening");
        e.set_leadership(leading(t0 + ms(600)));
        e.on_controls(&[], t0 + ms(500), &mut rng, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Persist(5),
                Action::Claim { epoch: 5 },
                Action::BecomeControl { epoch: 5 }
            ]
        );
    }

    /// The leader keeps office over an older Control and moves above it; that Control,
    /// no longer leading, steps down as soon as it is told, and a Control whose quorum
    /// acknowledgement lapsed steps down after the listen time or when it hears another.
    #[test]
    fn majority_leader_wins_and_a_control_without_quorum_steps_down() {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut e = majority_control(2, t0, &mut rng);
        let mut out = vec![];
        // An older Control (established 3) heard directly, at epoch 7: we re-assert above.
        e.on_controls(&[cand(1, 3, 7)], t0 + ms(450), &mut rng, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Persist(7),
                Action::Persist(8),
                Action::Reassert { epoch: 8 }
            ]
        );
        // The quorum acknowledgement lapses: no step-down before the listen time ...
        out.clear();
        e.on_controls(&[], t0 + ms(600), &mut rng, &mut out);
        assert!(out.is_empty());
        // ... but at once when another Control is heard.
        e.on_controls(&[cand(3, 9, 9)], t0 + ms(650), &mut rng, &mut out);
        assert_eq!(
            out,
            vec![
                Action::Persist(9),
                Action::StepDown {
                    epoch: 8,
                    reason: StepDownReason::NotLeading
                }
            ]
        );
        // Leading again, then told it is not: steps down.
        let mut e = majority_control(2, t0, &mut rng);
        out.clear();
        e.set_leadership(Leadership::default());
        e.on_controls(&[], t0 + ms(410), &mut rng, &mut out);
        assert_eq!(
            out,
            vec![Action::StepDown {
                epoch: 5,
                reason: StepDownReason::NotLeading
            }]
        );
        // Lapsed for the listen time (400 ms) with nobody else heard: steps down too.
        let mut e = majority_control(2, t0, &mut rng);
        out.clear();
        e.on_controls(&[], t0 + ms(899), &mut rng, &mut out);
        assert!(out.is_empty());
        e.on_controls(&[], t0 + ms(900), &mut rng, &mut out);
        assert_eq!(
            out,
            vec![Action::StepDown {
                epoch: 5,
                reason: StepDownReason::NotLeading
            }]
        );
        assert!(
            !e.take_over(t0 + ms(900)),
            "no hand-over claim in majority mode"
        );
    }

    /// Two sides of a partition claim above the same highest epoch: with epoch classes
    /// they never claim the same one.
    #[test]
    fn members_claim_distinct_epochs_above_the_same_highest() {
        let t0 = Instant::now();
        let mut rng = rand::rng();
        let mut claimed = Vec::new();
        for (index, id) in [(0, 1), (1, 2), (2, 3)] {
            let mut cfg = ElectionConfig::new(NodeId(id));
            cfg.listen = Duration::ZERO;
            cfg.backoff = Duration::ZERO;
            let mut e = Election::new(cfg, 7);
            e.set_epoch_class(3, index);
            e.start(t0);
            let mut out = Vec::new();
            e.on_controls(&[], t0, &mut rng, &mut out);
            e.tick(t0, &mut out);
            let epoch = e.my_control().map(|(_, epoch)| epoch).expect("claimed");
            assert_eq!(epoch % 3, index);
            assert!(epoch > 7 && epoch <= 10, "{epoch}");
            // A re-assertion stays in the class too.
            e.reassert_now(&mut out);
            let again = e.my_control().map(|(_, epoch)| epoch).unwrap();
            assert_eq!((again % 3, again - epoch), (index, 3));
            claimed.push(epoch);
        }
        assert_eq!(claimed, vec![9, 10, 8]);
    }
}
