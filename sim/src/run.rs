//! Running a scenario: each [`Op`] applied, virtual time advanced by `Wait` and `Settle`,
//! the invariants checked as it goes; a failure carries the seed, the operations done, the
//! end of the event log and the command that replays it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use smart_proto::api::Request;

use crate::invariants;
use crate::op::{Op, Who};
use crate::world::{Setup, Sim, Stats};

/// What a run checks besides the default invariants.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Check [`invariants::durable_registry`] at every settle.
    pub durable_registry: bool,
    /// The command that replays this run, printed with a failure.
    pub replay: String,
}

/// A run that kept every invariant.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Virtual time simulated.
    pub simulated: Duration,
    /// Counts.
    pub stats: Stats,
    /// How many times each invariant was checked.
    pub checks: BTreeMap<&'static str, u64>,
    /// Services the operator was told are admitted.
    pub acknowledged: usize,
    /// Operator requests sent.
    pub requests: usize,
}

/// A violated invariant.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The cluster.
    pub setup: Setup,
    /// The scenario.
    pub ops: Vec<Op>,
    /// How many ops had started when it failed (the last one is where).
    pub done: usize,
    /// What was violated.
    pub violation: String,
    /// The end of the event log.
    pub log: Vec<String>,
    /// The state of each node at the failure.
    pub nodes: String,
    /// The command that replays it.
    pub replay: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "INVARIANT VIOLATED (seed {}, {} nodes, {:?} mode): {}",
            self.seed, self.setup.nodes, self.setup.mode, self.violation
        )?;
        writeln!(f, "operations (>> marks the one running):")?;
        for (i, op) in self.ops.iter().enumerate() {
            let mark = if i + 1 == self.done { ">>" } else { "  " };
            writeln!(f, "{mark} {i:>3}. {op}")?;
        }
        writeln!(f, "nodes at the failure:\n{}", self.nodes)?;
        writeln!(f, "last events:")?;
        for l in &self.log {
            writeln!(f, "  {l}")?;
        }
        write!(f, "replay: {}", self.replay)
    }
}

/// Runs `ops` on a fresh cluster.
pub fn run(setup: Setup, seed: u64, ops: &[Op], opts: &Options) -> Result<Outcome, Box<Failure>> {
    let mut sim = Sim::new(setup.clone(), seed);
    for (k, op) in ops.iter().enumerate() {
        sim.note(format!("op {k}: {op}"));
        sim.apply(op, opts);
        if let Some(violation) = sim.failure.clone() {
            return Err(Box::new(Failure {
                seed,
                setup,
                ops: ops.to_vec(),
                done: k + 1,
                violation,
                log: sim.log.iter().cloned().collect(),
                nodes: sim.describe(),
                replay: opts.replay.clone(),
            }));
        }
    }
    Ok(Outcome {
        simulated: sim.now,
        stats: sim.stats.clone(),
        checks: std::mem::take(&mut sim.history.checks),
        acknowledged: sim.history.acked.len(),
        requests: sim.history.requests.len(),
    })
}

impl Sim {
    /// The node `who` names now, if any.
    fn who(&self, who: &Who) -> Option<usize> {
        match who {
            Who::N(i) => (*i < self.nodes.len()).then_some(*i),
            Who::Control => {
                let acting = (0..self.nodes.len())
                    .filter_map(|i| Some((self.proc(i)?.control.as_ref()?.acting?, i)))
                    .max()
                    .map(|(_, i)| i);
                acting.or_else(|| {
                    (0..self.nodes.len())
                        .filter_map(|i| {
                            let m = &self.proc(i)?.membership;
                            m.is_control().then(|| (m.highest_epoch(), i))
                        })
                        .max()
                        .map(|(_, i)| i)
                })
            }
            Who::Host(s) => {
                let control = self.who(&Who::Control);
                let hosts: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| {
                        self.proc(*i).is_some_and(|p| {
                            p.runtime.values().any(|r| &r.service == s && !r.stopping)
                        })
                    })
                    .collect();
                hosts
                    .iter()
                    .copied()
                    .find(|i| Some(*i) != control)
                    .or(hosts.first().copied())
            }
        }
    }

    fn apply(&mut self, op: &Op, opts: &Options) {
        match op {
            Op::Start(i) => {
                if *i < self.nodes.len() {
                    self.start_node(*i)
                }
            }
            Op::StartAll => {
                for i in 0..self.nodes.len() {
                    self.start_node(i);
                }
            }
            Op::Kill(w) => match self.who(w) {
                Some(i) => self.kill(i),
                None => self.note(format!("no {w} to kill")),
            },
            Op::Term(w) => match self.who(w) {
                Some(i) => {
                    self.leave(i);
                    // A Raft leader's member stays up for its successor's vote.
                    let now = self.now;
                    if let Some(raft) = self.raft.as_mut() {
                        raft.terminate(i, now);
                    }
                    self.kill(i);
                }
                None => self.note(format!("no {w} to stop")),
            },
            Op::Restart(w) => match self.who(w) {
                Some(i) => {
                    self.kill(i);
                    self.start_node(i);
                }
                None => self.note(format!("no {w} to restart")),
            },
            Op::Pause(w, d) => match self.who(w) {
                Some(i) if self.nodes[i].proc.is_some() => {
                    let until = self.now + *d;
                    let p = &mut self.nodes[i].paused_until;
                    *p = Some(p.map_or(until, |t| t.max(until)));
                    self.note(format!("n{i} paused until {:.3}s", until.as_secs_f64()));
                }
                _ => self.note(format!("no {w} to pause")),
            },
            Op::Partition(sides) => self.net.partition(sides),
            Op::Isolate(w) => match self.who(w) {
                Some(i) => {
                    self.net.partition(&[vec![i]]);
                    self.note(format!("n{i} isolated"));
                }
                None => self.note(format!("no {w} to isolate")),
            },
            Op::Cut(a, b) => {
                if *a < self.nodes.len() && *b < self.nodes.len() {
                    self.net.cut(*a, *b)
                }
            }
            Op::Heal => self.net.heal(),
            Op::Loss(p) => self.net.set_loss(*p),
            Op::Admit { service, clients } => {
                self.client_send(Request::AdmitService(crate::shell::spec(service)), *clients)
            }
            Op::Wait(d) => {
                let until = self.now + *d;
                self.run_until(until);
            }
            Op::Settle => self.settle(opts),
            Op::StopAll => {
                for i in 0..self.nodes.len() {
                    self.kill(i);
                    if let Some(raft) = self.raft.as_mut() {
                        raft.kill(i);
                    }
                }
            }
        }
    }

    fn kill(&mut self, i: usize) {
        self.kill_node(i);
        if self.nodes.iter().all(|n| n.proc.is_none()) {
            self.history.era += 1;
            self.note(format!("no node runs: era {} begins", self.history.era));
        }
    }

    fn settle(&mut self, opts: &Options) {
        self.net.heal();
        self.net.set_loss(0);
        let resume = self
            .nodes
            .iter()
            .filter_map(|n| n.paused_until)
            .max()
            .unwrap_or(self.now)
            .max(self.now);
        self.run_until(resume + invariants::settled::QUIET);
        if self.failure.is_some() {
            return;
        }
        invariants::settled::requests_answered(self);
        invariants::settled::control_acts(self);
        invariants::settled::one_instance_per_service(self);
        if opts.durable_registry {
            invariants::durable_registry::acknowledged_kept(self);
        }
    }

    /// One line per node: process, pause, membership, Control, instances.
    pub(crate) fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let line = match &n.proc {
                None => format!("dead (disk epoch {})", n.disk_highest),
                Some(p) => {
                    let control = p.control.as_ref().map(|c| {
                        let st = c.engine.status();
                        format!(
                            "actor {} epoch {} rebuilt {} acting {} services {:?}",
                            c.cid,
                            st.epoch,
                            st.rebuilt,
                            st.acting,
                            st.services.keys().collect::<Vec<_>>()
                        )
                    });
                    format!(
                        "{}incarnation {} disk epoch {} {:?} sees {:?}; slot {:?}; control {:?}; \
                         instances {:?}",
                        if self.paused(i) { "PAUSED " } else { "" },
                        p.boot,
                        n.disk_highest,
                        p.membership.election_state(),
                        p.membership.control().map(|c| (c.node_id.0, c.epoch)),
                        p.slot,
                        control,
                        p.runtime
                            .iter()
                            .map(|(k, r)| format!(
                                "{k}{}",
                                if r.stopping {
                                    " (stopping)"
                                } else if r.running {
                                    ""
                                } else {
                                    " (starting)"
                                }
                            ))
                            .collect::<Vec<_>>()
                    )
                }
            };
            s += &format!("  n{i}: {line}\n");
        }
        s
    }
}
