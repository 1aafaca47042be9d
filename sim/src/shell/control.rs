//! The Control actor's shell, as `actors/control/src/lib.rs`:
//! - `pre_start`: the engine made at the slot's epoch with this node's registry copy and the
//!   view's agents, told it may act at once when the slot already acts;
//! - `post_start`: `Start`, its report round run to completion (each request bounded by
//!   the request timeout), the `Reports` fed, the rest executed; then a `Tick` every
//!   refresh and the agents watcher; messages that came meanwhile wait in the mailbox;
//! - before every step of the engine, what membership published last (its acting source:
//!   whether, and until when, it may act) is fed as `SetActing`; `ActingChanged` only
//!   reads it;
//! - every command and round in a task of its own whose answer comes back as an input;
//! - `Stale` ends the actor (`Deposed`): the supervisor keeps the slot without an actor and
//!   restarts nothing; membership is told (`ControlStale`).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use smart_control::peer::PeerError;
use smart_control::{ControlEngine, Input, Output};
use smart_proto::agent::{AgentCommand, AgentReply};
use smart_proto::api::{ApiError, Event, Request, Response};
use smart_proto::desired::DesiredCmd;
use smart_proto::node::NodeRequest;

use crate::world::{ControlActor, CtlMsg, Ev, MemMsg, REFRESH, RoundAcc, RpcKind, Sim};

impl Sim {
    /// `spawn_control`: a new actor for the slot.
    pub(crate) fn spawn_control(&mut self, n: usize) {
        let id = self.nodes[n].id;
        let tuning = self.tuning.clone();
        let now = self.clock(n);
        let Some(p) = self.proc_mut(n) else { return };
        let Some(slot) = p.slot.clone() else { return };
        // `pre_start`: the registry copy and the desired-state log.
        let restored = smart_control::desired::restore_from(p.replica.clone(), &self.desired);
        let Some(p) = self.proc_mut(n) else { return };
        let mut engine = match ControlEngine::new(id, slot.epoch, tuning, restored, &p.view.agents)
        {
            Ok(e) => e,
            Err(e) => {
                let msg = format!("n{n}: the control engine cannot be made: {e}");
                self.fail(msg);
                return;
            }
        };
        if slot.acting {
            engine.handle(
                Input::SetActing {
                    epoch: slot.epoch,
                    acting: p.acting.epoch == Some(slot.epoch),
                    until: p.acting.until,
                },
                now,
            );
        }
        let cid = self.next_cid;
        self.next_cid += 1;
        let desired_seen = self.desired_version;
        let Some(p) = self.proc_mut(n) else { return };
        // What post_start's rebuild knows (`known`), the agents watcher's starting point.
        let known = p.view.agents.clone();
        p.control = Some(ControlActor {
            cid,
            engine,
            started: false,
            mailbox: VecDeque::new(),
            post_rest: Vec::new(),
            last_agents: known,
            next_api: 1,
            calls: HashMap::new(),
            rounds: HashMap::new(),
            acting: None,
            written_admits: HashMap::new(),
            desired_seen,
        });
        if let Some(s) = p.slot.as_mut() {
            s.actor = Some(cid);
        }
        self.note(format!(
            "n{n} control actor {cid} spawned at epoch {} (acting {})",
            slot.epoch, slot.acting
        ));
        // post_start: the rebuild round; the rest waits for its answers.
        let out = self.control_handle(n, Input::Start);
        let mut rest = Vec::new();
        for o in out {
            match o {
                Output::Round {
                    agents,
                    epoch,
                    timeout,
                } => self.start_round(n, cid, agents, epoch, timeout, true),
                other => rest.push(other),
            }
        }
        if let Some(c) = self.actor_mut(n, cid) {
            c.post_rest = rest;
        }
    }

    fn actor_mut(&mut self, n: usize, cid: u64) -> Option<&mut ControlActor> {
        self.proc_mut(n)?.control.as_mut().filter(|c| c.cid == cid)
    }

    /// The actor is gone (stopped, deposed, its node killed): API calls it held see the
    /// call fail, and their forwarders retry.
    pub(crate) fn drop_control_actor(&mut self, n: usize) {
        let Some(p) = self.proc_mut(n) else { return };
        let Some(c) = p.control.take() else { return };
        if let Some(s) = p.slot.as_mut()
            && s.actor == Some(c.cid)
        {
            s.actor = None;
        }
        for (_, (fwd, attempt)) in c.calls {
            self.forward_retry(fwd, attempt, ApiError::NoControl);
        }
        for msg in c.mailbox {
            if let CtlMsg::Api { fwd, attempt, .. } = msg {
                self.forward_retry(fwd, attempt, ApiError::NoControl);
            }
        }
    }

    /// Sends the actor a message (through its mailbox).
    pub(crate) fn tell_control(&mut self, n: usize, cid: u64, msg: CtlMsg) {
        self.push(Duration::ZERO, Ev::Ctl { n, cid, msg });
    }

    pub(crate) fn on_ctick(&mut self, n: usize, cid: u64) {
        if self.actor_mut(n, cid).is_none() {
            return;
        }
        self.push(self.timer(n, REFRESH), Ev::CTick { n, cid });
        // The log's subscription: a node that reaches a majority has applied what was
        // committed, and its Control hears of each change (modelled once per refresh).
        let version = self.desired_version;
        if self.reaches_majority(n)
            && let Some(c) = self.actor_mut(n, cid)
            && c.started
            && c.desired_seen < version
        {
            c.desired_seen = version;
            let specs = self.desired.services.values().cloned().collect();
            self.on_ctl(n, cid, CtlMsg::Input(Input::Desired(specs)));
        }
        self.on_ctl(n, cid, CtlMsg::Tick);
    }

    pub(crate) fn on_ctl(&mut self, n: usize, cid: u64, msg: CtlMsg) {
        let Some(c) = self.actor_mut(n, cid) else {
            if let CtlMsg::Api { fwd, attempt, .. } = msg {
                self.forward_retry(fwd, attempt, ApiError::NoControl);
            }
            return;
        };
        if !c.started {
            c.mailbox.push_back(msg);
            return;
        }
        let input = match msg {
            CtlMsg::Tick => Input::Tick,
            CtlMsg::Input(i) => i,
            CtlMsg::Api { fwd, attempt, req } => {
                // A change of the desired state is written first (`ControlMsg::Api`, then
                // `Committed`): refused when it cannot commit, the engine deciding after.
                let status = c.engine.status();
                let epoch = c.engine.epoch();
                let may_act = self
                    .proc(n)
                    .is_some_and(|p| p.acting.valid(epoch, self.clock(n)));
                let mut admit = None;
                if let Some(cmd) = smart_control::desired::desired_change(&req)
                    && smart_control::desired::worth_writing(&status, may_act, &req)
                {
                    if let Err(reason) = self.write_desired(n, &cmd) {
                        self.forward_answer(
                            fwd,
                            attempt,
                            Response::Error(ApiError::NotCommitted { reason }),
                        );
                        return;
                    }
                    if let Request::AdmitService(spec) = &req {
                        admit = Some(spec.name.clone());
                    }
                }
                let Some(c) = self.actor_mut(n, cid) else {
                    return;
                };
                let id = c.next_api;
                c.next_api += 1;
                c.calls.insert(id, (fwd, attempt));
                if let Some(name) = admit {
                    c.written_admits.insert(id, name);
                }
                Input::Api { id, req }
            }
            CtlMsg::SetEpoch(e) => Input::SetEpoch(e),
            CtlMsg::ActingChanged => {
                // `ActingChanged`: only the acting source is read.
                let out = self.sync_acting(n);
                self.execute_control(n, cid, out);
                return;
            }
        };
        let out = self.control_handle(n, input);
        self.execute_control(n, cid, out);
    }

    /// One step of the engine (`Control::step`: told first what the acting source says
    /// now, and again after a re-assertion), and the per-epoch acting record it may change.
    fn control_handle(&mut self, n: usize, input: Input) -> Vec<Output> {
        let now = self.clock(n);
        let mut out = self.sync_acting(n);
        let Some(c) = self.proc_mut(n).and_then(|p| p.control.as_mut()) else {
            return Vec::new();
        };
        let epoch = c.engine.epoch();
        out.extend(c.engine.handle(input, now));
        let reasserted = c.engine.epoch() != epoch;
        crate::invariants::acting::record(self, n);
        if reasserted {
            out.extend(self.sync_acting(n));
        }
        out
    }

    /// `Control::sync_acting`: the engine told whether it may act at its epoch, and until
    /// when, from what membership published last.
    fn sync_acting(&mut self, n: usize) -> Vec<Output> {
        let now = self.clock(n);
        let Some(p) = self.proc_mut(n) else {
            return Vec::new();
        };
        let lease = p.acting;
        let Some(c) = p.control.as_mut() else {
            return Vec::new();
        };
        let epoch = c.engine.epoch();
        let out = c.engine.handle(
            Input::SetActing {
                epoch,
                acting: lease.epoch == Some(epoch),
                until: lease.until,
            },
            now,
        );
        crate::invariants::acting::record(self, n);
        out
    }

    /// `Control::execute`; a deposition ends the actor.
    fn execute_control(&mut self, n: usize, cid: u64, out: Vec<Output>) {
        let decided = out.iter().find_map(|o| match o {
            Output::Command { cmd, .. } => Some(format!("agent command {cmd:?}")),
            Output::Replicate { .. } => Some("registry copy".to_string()),
            Output::Reply {
                resp: smart_proto::api::Response::Placed(p),
                ..
            } => Some(format!("placed {}", p.service)),
            _ => None,
        });
        if let Some(what) = decided {
            crate::invariants::acting::decision(self, n, &what);
        }
        let mut deposed = false;
        let boot = self.boot(n).unwrap_or_default();
        for o in out {
            match o {
                Output::Round {
                    agents,
                    epoch,
                    timeout,
                } => self.start_round(n, cid, agents, epoch, timeout, false),
                Output::Command {
                    req,
                    to,
                    epoch,
                    cmd,
                    timeout,
                } => match self.ix(to.node) {
                    Some(j) => self.rpc(
                        n,
                        j,
                        NodeRequest::Agent { epoch, cmd },
                        timeout,
                        RpcKind::Command { cid, req },
                    ),
                    None => self.tell_control(
                        n,
                        cid,
                        CtlMsg::Input(Input::Reply {
                            req,
                            result: Err(PeerError::Unreachable {
                                addr: to.addr,
                                reason: "no such node".into(),
                            }),
                        }),
                    ),
                },
                Output::Reply { id, resp } => {
                    let written = self
                        .actor_mut(n, cid)
                        .and_then(|c| c.written_admits.remove(&id));
                    if let Some(name) = written
                        && matches!(resp, Response::Error(_))
                    {
                        // Refused after its write: the log must not keep it.
                        let _ = self.write_desired(n, &DesiredCmd::RemoveService { name });
                    }
                    let call = self.actor_mut(n, cid).and_then(|c| c.calls.remove(&id));
                    if let Some((fwd, attempt)) = call {
                        self.forward_answer(fwd, attempt, resp);
                    }
                }
                Output::Publish(ev) => self.on_publish(n, ev),
                Output::Replicate { to, replica } => {
                    for a in to {
                        if let Some(j) = self.ix(a.node) {
                            self.rpc(
                                n,
                                j,
                                NodeRequest::Replica(replica.clone()),
                                self.tuning.request_timeout,
                                RpcKind::Replicate,
                            );
                        }
                    }
                }
                Output::Rebuilt { epoch, agents } => {
                    self.note(format!(
                        "n{n} control rebuilt at epoch {epoch} from {agents} agent(s)"
                    ));
                    self.push(
                        Duration::ZERO,
                        Ev::Mem {
                            n,
                            boot,
                            msg: MemMsg::RebuildDone(epoch),
                        },
                    );
                }
                Output::Stale { epoch, highest } => {
                    self.note(format!(
                        "n{n} control deposed: epoch {epoch} refused, highest {highest}"
                    ));
                    self.push(
                        Duration::ZERO,
                        Ev::Mem {
                            n,
                            boot,
                            msg: MemMsg::ControlStale(highest),
                        },
                    );
                    deposed = true;
                }
            }
        }
        if deposed {
            // ActorFailed(Deposed): not a failure; the slot stays without an actor.
            self.drop_control_actor(n);
        }
    }

    fn on_publish(&mut self, n: usize, ev: Event) {
        if let Event::Lost { service, reason } = &ev {
            self.note(format!("n{n} control declares {service} lost: {reason}"));
            crate::invariants::lost::on_lost(self, n, service, reason);
        }
    }

    fn start_round(
        &mut self,
        n: usize,
        cid: u64,
        agents: Vec<smart_membership::view::AgentAddr>,
        epoch: smart_proto::Epoch,
        timeout: Duration,
        post_start: bool,
    ) {
        let started = self.clock(n);
        let round = self.next_cid;
        self.next_cid += 1;
        let Some(c) = self.actor_mut(n, cid) else {
            return;
        };
        c.rounds.insert(
            round,
            RoundAcc {
                started,
                results: agents.iter().map(|a| (*a, None)).collect(),
                left: agents.len(),
                post_start,
            },
        );
        if agents.is_empty() {
            self.finish_round(n, cid, round);
            return;
        }
        for (idx, a) in agents.iter().enumerate() {
            match self.ix(a.node) {
                Some(j) => self.rpc(
                    n,
                    j,
                    NodeRequest::Agent {
                        epoch,
                        cmd: AgentCommand::Report,
                    },
                    timeout,
                    RpcKind::Round { cid, round, idx },
                ),
                None => self.on_round_answer(
                    n,
                    cid,
                    round,
                    idx,
                    Err(PeerError::Unreachable {
                        addr: a.addr,
                        reason: "no such node".into(),
                    }),
                ),
            }
        }
    }

    pub(crate) fn on_round_answer(
        &mut self,
        n: usize,
        cid: u64,
        round: u64,
        idx: usize,
        result: Result<AgentReply, PeerError>,
    ) {
        let Some(c) = self.actor_mut(n, cid) else {
            return;
        };
        let Some(acc) = c.rounds.get_mut(&round) else {
            return;
        };
        if let Some(slot) = acc.results.get_mut(idx)
            && slot.1.is_none()
        {
            slot.1 = Some(result);
            acc.left -= 1;
        }
        if acc.left == 0 {
            self.finish_round(n, cid, round);
        }
    }

    fn finish_round(&mut self, n: usize, cid: u64, round: u64) {
        let Some(c) = self.actor_mut(n, cid) else {
            return;
        };
        let Some(acc) = c.rounds.remove(&round) else {
            return;
        };
        let results = acc
            .results
            .into_iter()
            .filter_map(|(a, r)| Some((a, r?)))
            .collect();
        let input = Input::Reports {
            started: acc.started,
            results,
        };
        if !acc.post_start {
            // The round's task sends the answers to the mailbox.
            self.tell_control(n, cid, CtlMsg::Input(input));
            return;
        }
        // post_start: Reports inline, then the rest of Start's outputs and these.
        let out = self.control_handle(n, input);
        let mut rest = self
            .actor_mut(n, cid)
            .map(|c| std::mem::take(&mut c.post_rest))
            .unwrap_or_default();
        rest.extend(out);
        self.execute_control(n, cid, rest);
        let agents = self
            .proc(n)
            .map(|p| p.view.agents.clone())
            .unwrap_or_default();
        let Some(c) = self.actor_mut(n, cid) else {
            // Deposed during its rebuild.
            return;
        };
        c.started = true;
        // The agents watcher starts from the agents the rebuild knew: a change while it ran
        // is sent at once.
        let changed = c.last_agents != agents;
        c.last_agents = agents.clone();
        let mailbox = std::mem::take(&mut c.mailbox);
        if changed {
            self.tell_control(n, cid, CtlMsg::Input(Input::Agents(agents)));
        }
        self.push(self.timer(n, REFRESH), Ev::CTick { n, cid });
        for msg in mailbox {
            self.on_ctl(n, cid, msg);
        }
    }
}
