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
//! 6. [`Mode::Majority`]: a Control acts only while it holds unexpired lease grants from a
//!    majority of the configured members ([`LeaseGranter`], [`LeaseHolder`]).
//!
//! A Control whose process could not run for longer than the failure detector's dead time
//! (SIGSTOP, a stalled VM) steps down on its own ([`Election::paused`]): the others may have
//! declared it dead and elected another Control meanwhile, and rule 3 alone would make the
//! returning zombie, being older, win against the new one.
//!
//! ## Layout
//! - [`Mode`], [`ElectionConfig`]: configuration.
//! - [`Election`], [`ElectionState`], [`Candidate`], [`Action`], [`StepDownReason`].
//! - [`Fence`], [`Stale`]: epoch fencing for command execution.
//! - [`LeaseGranter`], [`LeaseHolder`]: majority-mode leases.

use std::collections::{BTreeMap, BTreeSet};
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
    /// A Control acts only while a majority of `members` (configured node ids, itself
    /// included) grant it a lease.
    Majority {
        /// All configured members.
        members: BTreeSet<NodeId>,
    },
}

impl Mode {
    /// Grants needed to act, or `None` in available mode.
    pub fn quorum(&self) -> Option<usize> {
        match self {
            Mode::Available => None,
            Mode::Majority { members } => Some(members.len() / 2 + 1),
        }
    }
}

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
    /// Majority mode: length of a lease grant (default 500 ms).
    pub lease: Duration,
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
            lease: Duration::from_millis(500),
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
        }
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

    /// Time passed: claims when the backoff ends.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let ElectionState::Waiting { deadline } = self.state
            && now >= deadline
        {
            // Only a hostile insider or a corrupt disk can push epochs that far: refuse,
            // never wrap.
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
    /// will.
    pub fn take_over(&mut self, now: Instant) -> bool {
        let may = matches!(
            self.state,
            ElectionState::Follower | ElectionState::Waiting { .. }
        ) && self.cfg.eligible
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
    /// comes (the successor died too), we claim as after a crash of the Control.
    pub fn defer_to_successor<R: Rng + ?Sized>(
        &mut self,
        hold: Duration,
        now: Instant,
        rng: &mut R,
    ) {
        if matches!(
            self.state,
            ElectionState::Follower | ElectionState::Waiting { .. }
        ) && self.cfg.eligible
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

/// Majority mode, granter side: a node grants its lease to at most one Control at a time. A
/// grant to `X` until `T` forbids granting to anyone else before `T`; renewing the grant to
/// the same node is always allowed.
#[derive(Debug, Clone)]
pub struct LeaseGranter {
    lease: Duration,
    grant: Option<(NodeId, Instant)>,
    /// A freshly started node may have granted a lease in its previous life: it grants
    /// nothing for one lease length.
    not_before: Option<Instant>,
}

impl LeaseGranter {
    /// A granter with lease length `lease`.
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            grant: None,
            not_before: None,
        }
    }

    /// Starts the no-grant period after boot (idempotent).
    pub fn start(&mut self, now: Instant) {
        if self.not_before.is_none() {
            self.not_before = Some(now + self.lease);
        }
    }

    /// Tries to grant (or renew) a lease to `to` at `now`; returns the lease length if
    /// granted. The grant is recorded until `now + lease`.
    pub fn grant(&mut self, to: NodeId, now: Instant) -> Option<Duration> {
        if self.not_before.is_some_and(|nb| now < nb) {
            return None;
        }
        if let Some((holder, until)) = self.grant
            && holder != to
            && now < until
        {
            return None;
        }
        self.grant = Some((to, now + self.lease));
        Some(self.lease)
    }

    /// The current (possibly expired) grant.
    pub fn current(&self) -> Option<(NodeId, Instant)> {
        self.grant
    }
}

/// Majority mode, Control side: lease expiries per granter, counted against the quorum.
#[derive(Debug, Clone, Default)]
pub struct LeaseHolder {
    expiry: BTreeMap<NodeId, Instant>,
}

impl LeaseHolder {
    /// An empty holder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a grant from `granter` valid until `until` (keeps the later one).
    pub fn record(&mut self, granter: NodeId, until: Instant) {
        let e = self.expiry.entry(granter).or_insert(until);
        *e = (*e).max(until);
    }

    /// Number of `members` whose grant is valid at `now`.
    pub fn valid(&self, members: &BTreeSet<NodeId>, now: Instant) -> usize {
        self.expiry
            .iter()
            .filter(|(n, until)| members.contains(n) && now < **until)
            .count()
    }

    /// The instant from which fewer than `quorum` of `members` hold a grant valid at `now`
    /// (`None` when fewer hold one already): the `quorum`-th latest expiry.
    pub fn quorum_until(
        &self,
        members: &BTreeSet<NodeId>,
        quorum: usize,
        now: Instant,
    ) -> Option<Instant> {
        let mut valid: Vec<Instant> = self
            .expiry
            .iter()
            .filter(|(n, until)| members.contains(n) && now < **until)
            .map(|(_, until)| *until)
            .collect();
        valid.sort_unstable_by(|a, b| b.cmp(a));
        valid.get(quorum.checked_sub(1)?).copied()
    }

    /// Forgets all grants (on stepping down).
    pub fn clear(&mut self) {
        self.expiry.clear();
    }

    /// The earliest instant at which the count may drop (for scheduling).
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.expiry.values().copied().filter(|u| *u > now).min()
    }
}

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

    #[test]
    fn granter_grants_one_control_at_a_time() {
        let t0 = Instant::now();
        let mut g = LeaseGranter::new(ms(500));
        g.start(t0);
        assert_eq!(g.grant(NodeId(1), t0 + ms(100)), None, "boot quiet period");
        assert_eq!(g.grant(NodeId(1), t0 + ms(500)), Some(ms(500)));
        assert_eq!(g.grant(NodeId(1), t0 + ms(600)), Some(ms(500)), "renewal");
        assert_eq!(g.grant(NodeId(2), t0 + ms(700)), None);
        assert_eq!(g.grant(NodeId(2), t0 + ms(1099)), None);
        assert_eq!(g.grant(NodeId(2), t0 + ms(1100)), Some(ms(500)));
        assert_eq!(g.grant(NodeId(1), t0 + ms(1200)), None);
    }

    #[test]
    fn holder_counts_valid_grants_of_members() {
        let t0 = Instant::now();
        let members: BTreeSet<_> = [1, 2, 3].map(NodeId).into();
        let mut h = LeaseHolder::new();
        h.record(NodeId(1), t0 + ms(500));
        h.record(NodeId(2), t0 + ms(300));
        h.record(NodeId(9), t0 + ms(900));
        assert_eq!(h.valid(&members, t0), 2);
        assert_eq!(h.valid(&members, t0 + ms(300)), 1);
        h.record(NodeId(2), t0 + ms(200));
        assert_eq!(h.valid(&members, t0 + ms(250)), 2, "keeps the later expiry");
        assert_eq!(h.next_expiry(t0), Some(t0 + ms(300)));
        // Two of three valid until the second-latest expiry among members (n9 is none).
        assert_eq!(h.quorum_until(&members, 2, t0), Some(t0 + ms(300)));
        assert_eq!(h.quorum_until(&members, 1, t0), Some(t0 + ms(500)));
        assert_eq!(h.quorum_until(&members, 2, t0 + ms(300)), None);
        assert_eq!(h.quorum_until(&members, 3, t0), None);
        h.clear();
        assert_eq!(h.valid(&members, t0), 0);
        assert_eq!(
            Mode::Majority { members }.quorum(),
            Some(2),
            "majority of 3"
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
