//! Majority mode: a model of the desired-state log's Raft leadership, the rules of openraft
//! 0.9 as `smart-desired` configures it (docs/DESIGN.md, "Majority mode").
//!
//! The log's contents are not modelled, only who leads and when a quorum acknowledged it,
//! which is all the election reads ([`smart_proto::desired::Leadership`]):
//! - a leader sends a heartbeat round every [`HEARTBEAT`]; the voters it reaches both ways
//!   (and that run) follow its term and restart their timers; when they and the leader make
//!   a quorum, the round's send time is its latest quorum acknowledgement, and its quorum
//!   lease lasts [`QUORUM_LEASE`] from it;
//! - a leader that reaches a voter of a higher term steps down to it;
//! - a voter that has not heard a leader for openraft's leader lease
//!   ([`LEADER_LEASE`] = the maximum election timeout) plus a random election timeout
//!   stands for a new term; a reachable running voter grants its vote when its term is
//!   lower and it has not heard a leader (or become one) within the leader lease; a
//!   majority of votes makes it leader at once;
//! - a successor named by a hand-over stands at once ([`RaftModel::elect_now`]); a leader
//!   stopped by SIGTERM keeps its member up for the successor's vote until leadership moved
//!   or [`HANDOVER_VOTE_WAIT`] passed, as the node's supervisor does;
//! - a killed node loses everything but its term; a restarted one grants no vote for a
//!   leader lease (it may have acknowledged a leader whose quorum lease still runs); a
//!   paused one does nothing until resumed.
//!
//! Not modelled: log completeness in votes (every voter's log is current), message delays
//! (a round or a vote takes no time), loss (TCP retransmits within the timers).

use std::time::Duration;

use rand::Rng;

/// Heartbeat interval (`DesiredConfig::heartbeat`).
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(50);
/// Election timeout range (`DesiredConfig::election_timeout_min..max`).
const ELECTION_MIN: Duration = Duration::from_millis(150);
const ELECTION_MAX: Duration = Duration::from_millis(300);
/// openraft's leader lease: the maximum election timeout.
const LEADER_LEASE: Duration = ELECTION_MAX;
/// How long a quorum acknowledgement lets the leader act (`DesiredConfig::quorum_lease`).
pub(crate) const QUORUM_LEASE: Duration = Duration::from_millis(100);
/// The supervisor's wait for a successor's vote (`HANDOVER_VOTE_WAIT`).
const HANDOVER_VOTE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default)]
struct Voter {
    /// Its member runs.
    up: bool,
    term: u64,
    leader: bool,
    /// When it last heard a leader, granted a vote or became leader (openraft's
    /// `vote_last_modified`).
    vote_touched: Option<Duration>,
    /// Its vote names a known leader (openraft's committed vote): only then does the leader
    /// lease make it refuse votes.
    committed: bool,
    /// When it stands for a new term.
    deadline: Duration,
    /// Leader: when its next heartbeat round goes.
    next_round: Duration,
    /// Leader: the send time of its latest round a quorum acknowledged.
    acked: Option<Duration>,
    /// Stopped by SIGTERM while leader: stops when leadership moved or at this instant.
    stop_at: Option<Duration>,
    /// Asked to stand at once (`trigger().elect()`), whatever its timer says.
    stand: bool,
    /// A member that just started grants no vote before this instant (`DesiredStore`
    /// refuses votes for a leader lease after it opens).
    no_vote_before: Duration,
}

/// The group of `n` voters (every node of the simulated cluster).
#[derive(Debug, Clone)]
pub(crate) struct RaftModel {
    voters: Vec<Voter>,
}

/// What the model says of one voter (global virtual time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lead {
    pub(crate) leader: bool,
    /// The end of the quorum lease, when leader and acknowledged.
    pub(crate) lease_until: Option<Duration>,
}

impl RaftModel {
    pub(crate) fn new(n: usize) -> Self {
        RaftModel {
            voters: vec![Voter::default(); n],
        }
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Node `i`'s member starts (its persisted term kept).
    pub(crate) fn start<R: Rng>(&mut self, i: usize, now: Duration, rng: &mut R) {
        let v = &mut self.voters[i];
        *v = Voter {
            up: true,
            term: v.term,
            deadline: now + LEADER_LEASE + timeout(rng),
            no_vote_before: now + LEADER_LEASE,
            ..Voter::default()
        };
    }

    /// Node `i` was killed.
    pub(crate) fn kill(&mut self, i: usize) {
        let v = &mut self.voters[i];
        *v = Voter {
            term: v.term,
            ..Voter::default()
        };
    }

    /// Node `i` is stopped by SIGTERM: a leader stays up for its successor's vote.
    pub(crate) fn terminate(&mut self, i: usize, now: Duration) {
        if self.voters[i].up && self.voters[i].leader {
            self.voters[i].stop_at = Some(now + HANDOVER_VOTE_WAIT);
        } else {
            self.kill(i);
        }
    }

    /// Whether node `i`'s member still runs after its process stopped (a leaving leader).
    pub(crate) fn lingering(&self, i: usize) -> bool {
        self.voters[i].stop_at.is_some()
    }

    /// A hand-over named node `i`: it stands at once.
    pub(crate) fn elect_now(&mut self, i: usize) {
        if self.voters[i].up && !self.voters[i].leader {
            self.voters[i].stand = true;
        }
    }

    /// Advances to `now`: heartbeat rounds, step-downs, elections. `runs(i)`: node i's
    /// member can act now (up and not paused); `reach(i, j)`: a message from i reaches j.
    pub(crate) fn step<R: Rng>(
        &mut self,
        now: Duration,
        runs: impl Fn(usize) -> bool,
        reach: impl Fn(usize, usize) -> bool,
        rng: &mut R,
    ) {
        let n = self.voters.len();
        let alive: Vec<bool> = (0..n).map(|i| self.voters[i].up && runs(i)).collect();
        let both = |i: usize, j: usize| reach(i, j) && reach(j, i);
        // The voters each one reaches both ways, running.
        let peers: Vec<Vec<usize>> = (0..n)
            .map(|i| {
                (0..n)
                    .filter(|j| *j != i && alive[*j] && both(i, *j))
                    .collect()
            })
            .collect();
        // Leaders' heartbeat rounds.
        for l in 0..n {
            if alive[l] && self.voters[l].leader && now >= self.voters[l].next_round {
                self.round(l, now, &peers[l], rng);
            }
        }
        // Elections.
        for c in 0..n {
            let v = &self.voters[c];
            if !alive[c] || v.leader || (now < v.deadline && !v.stand) {
                continue;
            }
            // A leaving member does not stand.
            if self.voters[c].stop_at.is_some() {
                continue;
            }
            let term = self.voters[c].term + 1;
            self.voters[c].term = term;
            self.voters[c].stand = false;
            self.voters[c].vote_touched = Some(now);
            self.voters[c].committed = false;
            let mut votes = 1;
            // A refusal with a higher term makes the candidate adopt it.
            let mut seen = term;
            for &j in &peers[c] {
                let v = &mut self.voters[j];
                let leased = v.committed && v.vote_touched.is_some_and(|t| now <= t + LEADER_LEASE);
                if v.term < term && !leased && now >= v.no_vote_before {
                    v.term = term;
                    v.leader = false;
                    v.committed = false;
                    v.acked = None;
                    v.vote_touched = Some(now);
                    v.deadline = now + timeout(rng);
                    votes += 1;
                } else {
                    seen = seen.max(v.term);
                }
            }
            let quorum = self.quorum();
            let v = &mut self.voters[c];
            if votes >= quorum {
                v.leader = true;
                v.committed = true;
                // Its first round (the blank entry) goes at once.
                v.next_round = now;
                v.acked = None;
            } else {
                v.term = seen;
                v.deadline = now + timeout(rng);
            }
        }
        // A leader elected above sends its first round now (the blank entry).
        for l in 0..n {
            if alive[l] && self.voters[l].leader && self.voters[l].next_round == now {
                self.round(l, now, &peers[l], rng);
            }
        }
        // Leaving leaders stop once leadership moved, or at the end of their wait.
        for i in 0..n {
            if let Some(at) = self.voters[i].stop_at
                && (!self.voters[i].leader || now >= at)
            {
                self.kill(i);
            }
        }
    }

    /// One heartbeat round of leader `l`: the voters it reaches follow its term, or it
    /// steps down to a higher one; a quorum of acknowledgements dates its lease.
    fn round<R: Rng>(&mut self, l: usize, now: Duration, peers: &[usize], rng: &mut R) {
        let term = self.voters[l].term;
        let mut acks = 1;
        let mut higher: Option<u64> = None;
        for &j in peers {
            let v = &mut self.voters[j];
            if v.term > term {
                higher = Some(higher.map_or(v.term, |h| h.max(v.term)));
                continue;
            }
            v.term = term;
            v.leader = false;
            v.committed = true;
            v.vote_touched = Some(now);
            v.deadline = now + LEADER_LEASE + timeout(rng);
            acks += 1;
        }
        let quorum = self.quorum();
        let v = &mut self.voters[l];
        v.next_round = now + HEARTBEAT;
        if let Some(h) = higher {
            v.leader = false;
            v.committed = false;
            v.term = h;
            v.acked = None;
            v.vote_touched = Some(now);
            v.deadline = now + LEADER_LEASE + timeout(rng);
        } else if acks >= quorum {
            v.acked = Some(now);
        }
    }

    /// What node `i`'s member says of itself.
    pub(crate) fn lead(&self, i: usize) -> Lead {
        let v = &self.voters[i];
        let leader = v.up && v.leader;
        Lead {
            leader,
            lease_until: v.acked.filter(|_| leader).map(|a| a + QUORUM_LEASE),
        }
    }

    /// The voters that lead with a valid quorum lease at `now`.
    pub(crate) fn leading(&self, now: Duration) -> Vec<usize> {
        (0..self.voters.len())
            .filter(|i| self.lead(*i).lease_until.is_some_and(|u| now < u))
            .collect()
    }
}

fn timeout<R: Rng>(rng: &mut R) -> Duration {
    Duration::from_micros(
        rng.random_range(ELECTION_MIN.as_micros() as u64..=ELECTION_MAX.as_micros() as u64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn run(
        m: &mut RaftModel,
        from: Duration,
        to: Duration,
        reach: impl Fn(usize, usize) -> bool + Copy,
        rng: &mut ChaCha8Rng,
    ) -> Duration {
        let mut t = from;
        while t < to {
            t += Duration::from_millis(10);
            m.step(t, |_| true, reach, rng);
            assert!(m.leading(t).len() <= 1, "two leaders with a quorum lease");
        }
        t
    }

    #[test]
    fn one_leader_a_minority_leader_loses_its_lease_and_a_handover_is_fast() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut m = RaftModel::new(3);
        for i in 0..3 {
            m.start(i, Duration::ZERO, &mut rng);
        }
        let all = |_: usize, _: usize| true;
        let t = run(
            &mut m,
            Duration::ZERO,
            Duration::from_secs(2),
            all,
            &mut rng,
        );
        let leaders = m.leading(t);
        assert_eq!(leaders.len(), 1);
        let l = leaders[0];
        // Cut the leader off: its lease lapses, the other two elect one of them.
        let cut = move |i: usize, j: usize| i == j || (i != l && j != l);
        let t = run(&mut m, t, t + Duration::from_secs(2), cut, &mut rng);
        let now = m.leading(t);
        assert_eq!(now.len(), 1);
        assert_ne!(now[0], l);
        assert!(m.lead(l).leader, "the cut-off leader does not know yet");
        // Heal: the old leader learns the higher term.
        let t = run(&mut m, t, t + Duration::from_millis(200), all, &mut rng);
        assert!(!m.lead(l).leader);
        // Hand-over: the leader leaves, the successor stands at once and wins with its vote.
        let old = now[0];
        let succ = (0..3).find(|i| *i != old).unwrap();
        m.terminate(old, t);
        m.elect_now(succ);
        let t2 = run(&mut m, t, t + Duration::from_millis(20), all, &mut rng);
        assert_eq!(m.leading(t2), vec![succ]);
        assert!(
            !m.lingering(old),
            "the leaver stopped once leadership moved"
        );
    }
}
