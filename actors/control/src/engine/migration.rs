//! Driving starts and moves: the engine sends each step's command, records the step in
//! [`Moves`](super::moves::Moves), and carries out what [`Op::next`] makes of the answer
//! (admission, the service table, events, waiting requests). The state machine and the
//! failures around a move are described in [`moves`](super::moves).

use std::time::Instant;

use smart_admission::{ClientId, Evicted, ServiceId};
use smart_proto::NodeId;
use smart_proto::agent::{AgentCommand, AgentError, AgentReply, InstanceReport, SourceExport};
use smart_proto::api::{ApiError, Event, Placement, Response};
use tracing::{info, warn};

use super::moves::{Move, Next, Op, Why, outcome};
use super::{ApiId, ControlEngine, Pending, ReqId, instance_name};
use crate::peer::PeerError;

impl ControlEngine {
    /// Starts the service's next instance on its (admission-chosen) node.
    pub(crate) fn start(&mut self, name: &str, from: Option<NodeId>, why: Why) {
        self.start_on(name, from, why, Vec::new());
    }

    /// [`start`](Self::start), after failed starts on the nodes in `tried`.
    fn start_on(&mut self, name: &str, from: Option<NodeId>, why: Why, tried: Vec<NodeId>) {
        let t = self.tuning.request_timeout;
        let Some(s) = self.table.get_mut(name) else {
            return;
        };
        let generation = s.next_generation();
        // The old instance is gone: clients wait for the new one (Locate and AdmitClient
        // queue until it runs) instead of being sent to a dead endpoint.
        s.forget_instance();
        let node = s.node();
        let (launch, reservation) = self.launch_for(name);
        let cmd = AgentCommand::Start {
            instance: instance_name(name, generation),
            launch,
            reservation,
        };
        let pending = Pending::Step {
            service: name.to_string(),
            generation,
        };
        match self.command(node, cmd, t * 5, pending) {
            Some(req) => self.moves.set(
                name,
                Op::Starting {
                    req,
                    from,
                    why,
                    tried,
                },
            ),
            None => {
                let reason = format!("{node} has no address");
                self.start_failed(name, from, why, tried, reason, false)
            }
        }
    }

    /// A start failed on the service's node: it is retried on a node where it has not
    /// failed yet. With none left, a service that never ran is refused (its waiters are
    /// told; it was never running, so nothing is lost) and a running one is lost unless a
    /// reachable agent reports a copy of it — except when the start may have run
    /// (`maybe_running`: no answer in time, or the agent already has that instance): then
    /// the node's next report decides (see `reconcile`), as nothing is known to be gone.
    fn start_failed(
        &mut self,
        name: &str,
        from: Option<NodeId>,
        why: Why,
        mut tried: Vec<NodeId>,
        reason: String,
        maybe_running: bool,
    ) {
        let Some(s) = self.table.get(name) else {
            return;
        };
        let (sid, node) = (s.sid(), s.node());
        self.moves.set(name, Op::Idle);
        if !tried.contains(&node) {
            tried.push(node);
        }
        match self.admission.move_avoiding(sid, &tried) {
            Ok(next) => {
                warn!(service = %name, failed_on = %node, %next, %reason, "start failed: retrying on another node");
                self.table.get_mut(name).expect("present").place_on(next);
                self.publish(Event::Notice {
                    service: name.to_string(),
                    node,
                    reason: format!("start failed on {node} ({reason}); retrying on {next}"),
                });
                self.start_on(name, from, why, tried);
            }
            Err(r) if maybe_running => {
                warn!(service = %name, %node, %reason, "start may have run: its node's next report decides");
                if let Some(now) = self.clock {
                    self.table.get_mut(name).expect("present").unconfirmed(now);
                }
                self.publish(Event::Notice {
                    service: name.to_string(),
                    node,
                    reason: format!(
                        "start on {node} unconfirmed ({reason}) and no other node can take it ({r}): its next report decides"
                    ),
                });
            }
            Err(r) => {
                let reason = format!("{reason}; no other node can take it ({r})");
                match from {
                    None => self.refuse_start(name, node, reason),
                    Some(_) => self.lose_unless_reported(name, reason),
                }
            }
        }
    }

    /// A new service could be started nowhere: forget it, tell its waiters, say so.
    fn refuse_start(&mut self, name: &str, node: NodeId, reason: String) {
        let Some(s) = self.remove_service(name) else {
            return;
        };
        warn!(service = %name, %reason, "new service could not start anywhere");
        for (w, _) in s.waiting {
            self.reply(
                w,
                Response::Error(ApiError::Internal {
                    reason: format!("could not start {name}: {reason}"),
                }),
            );
        }
        self.publish(Event::Notice {
            service: name.to_string(),
            node,
            reason: format!("not started: {reason}"),
        });
    }

    /// Moves a service from `from` to `to` (admission already placed it at `to`): live
    /// migration through the workload control API, or a restart on the target when the
    /// instance cannot hand over.
    pub(crate) fn migrate(&mut self, sid: ServiceId, from: NodeId, to: NodeId, why: Why) {
        let Some(name) = self.table.name_of(sid).cloned() else {
            return;
        };
        let t = self.tuning.request_timeout;
        let Some(s) = self.table.get_mut(&name) else {
            return;
        };
        s.place_on(to);
        let (old, op) = (s.info().cloned(), self.moves.op(&name).clone());
        let Some(old) = old.filter(|_| op == Op::Idle) else {
            // Starting, or already moving: what is in flight was aimed at another node.
            // Start afresh on the new one; whatever the superseded step leaves behind is a
            // stray (older generation), stopped at a refresh.
            let from = match op {
                Op::Starting { from, .. } => from,
                _ => Some(from),
            };
            return self.start(&name, from, why);
        };
        let mv = Move { from, to, why };
        let generation = self
            .table
            .get_mut(&name)
            .expect("present")
            .next_generation();
        let instance = instance_name(&name, generation);
        let (launch, reservation) = self.launch_for(&name);
        let pending = Pending::Step {
            service: name.clone(),
            generation,
        };
        let step = if old.speaks_api {
            self.hold_copy(&name, from, to);
            let cmd = AgentCommand::MigrateIn {
                instance,
                launch,
                reservation,
                source: from,
                source_control: old.control_socket.clone(),
                source_export: old.checkpoint_export.clone().map(|addr| {
                    Box::new(SourceExport {
                        addr,
                        instance: old.instance.clone(),
                    })
                }),
                copy_rate_bps: self.tuning.admission.copy_rate_bps,
            };
            let budget = t * cmd.timeout_multiple();
            self.command(to, cmd, budget, pending)
                .map(|req| Op::Restoring { req, mv, old })
        } else {
            // No workload control API: restart on the target, then stop the old one; its
            // clients reconnect through the front-end. The operator is told.
            warn!(service = %name, instance = %old.instance,
                "no workload control API: restarting elsewhere instead of live migration");
            let cmd = AgentCommand::Start {
                instance,
                launch,
                reservation,
            };
            self.command(to, cmd, t * 5, pending)
                .map(|req| Op::Restarting {
                    req,
                    mv,
                    old,
                    note: "no workload control API".into(),
                    no_api: true,
                })
        };
        match step {
            Some(op) => self.moves.set(&name, op),
            None => self.roll_back(&name, mv, format!("node {to} has no address")),
        }
    }

    /// The answer to a command the engine is waiting for.
    pub(crate) fn on_reply(
        &mut self,
        req: ReqId,
        result: Result<AgentReply, PeerError>,
        now: Instant,
    ) {
        let Some(pending) = self.pending.remove(&req) else {
            return;
        };
        if let Ok(AgentReply::Refused { highest, .. }) = result {
            return self.go_stale(highest);
        }
        let (service, generation) = match pending {
            Pending::Step {
                service,
                generation,
            } => (service, generation),
            Pending::Stop { node, instance } => {
                // Stopped, or it was not (or no longer) there, or already stopping.
                let done = matches!(
                    result,
                    Ok(AgentReply::Done)
                        | Ok(AgentReply::Failed(
                            AgentError::UnknownInstance | AgentError::Busy
                        ))
                );
                self.stops.answered(node, instance, done, now);
                return;
            }
            Pending::Forget => return,
        };
        let Some(s) = self.table.get(&service) else {
            return;
        };
        if s.generation() != generation || !self.moves.awaits(&service, req) {
            // Superseded (the service was restarted or moved again meanwhile).
            return;
        }
        let node = s.node();
        // The start may have run: the agent got it and did not answer in time, or already
        // has that instance.
        let maybe_running = matches!(
            result,
            Err(PeerError::Timeout(_)) | Ok(AgentReply::Failed(AgentError::AlreadyExists))
        );
        let next = self
            .moves
            .op(&service)
            .clone()
            .next(&service, node, outcome(result));
        match next {
            Next::StartFailed(reason) if maybe_running => {
                if let Op::Starting {
                    from, why, tried, ..
                } = self.moves.op(&service).clone()
                {
                    self.start_failed(&service, from, why, tried, reason, true);
                }
            }
            next => self.carry_out(&service, next, now),
        }
    }

    /// Does what a step's answer (or a node's death) leads to.
    fn carry_out(&mut self, name: &str, next: Next, now: Instant) {
        match next {
            Next::Nothing => {}
            Next::Placed {
                node,
                info,
                moved,
                note,
            } => self.placed(name, node, info, moved, note, now),
            Next::StartFailed(reason) => {
                if let Op::Starting {
                    from, why, tried, ..
                } = self.moves.op(name).clone()
                {
                    self.start_failed(name, from, why, tried, reason, false);
                }
            }
            Next::HandOff { mv, new, note } => self.hand_off(name, mv, new, note, now),
            Next::StopSource { mv, new, note } => self.stop_source(name, mv, new, note, now),
            Next::RestartOnTarget { mv, old, note } => self.restart_on_target(name, mv, old, note),
            Next::RollBack { mv, why } => self.roll_back(name, mv, why),
        }
    }

    /// Step 2 of a live move: ask the source to hand its clients to `new`. A source that is
    /// not live any more has no clients to hand over: the move ends here.
    fn hand_off(
        &mut self,
        name: &str,
        mv: Move,
        new: InstanceReport,
        note: Option<String>,
        now: Instant,
    ) {
        let t = self.tuning.request_timeout;
        let s = &self.table[name];
        let Some(old) = s.info().cloned() else { return };
        if !self.live.contains_key(&mv.from) {
            let note = Some("the source died during the move".into());
            return self.placed(name, mv.to, new, Some(mv), note, now);
        }
        let cmd = AgentCommand::MigrateOut {
            instance: old.instance,
            target: mv.to,
            target_url: new.endpoint.clone().unwrap_or_default(),
        };
        let pending = Pending::Step {
            service: name.to_string(),
            generation: s.generation(),
        };
        match self.command(mv.from, cmd, t * 10, pending) {
            Some(req) => self.moves.set(name, Op::HandingOff { req, mv, new, note }),
            None => self.stop_source(name, mv, new, note, now),
        }
    }

    /// Fallback: stop the source instance; the move ends when the agent answers.
    fn stop_source(
        &mut self,
        name: &str,
        mv: Move,
        new: InstanceReport,
        note: Option<String>,
        now: Instant,
    ) {
        let t = self.tuning.request_timeout;
        let s = &self.table[name];
        let (old, generation) = (s.info().cloned(), s.generation());
        let req = match (old, self.live.contains_key(&mv.from)) {
            (Some(old), true) => self.command(
                mv.from,
                AgentCommand::Stop {
                    instance: old.instance,
                },
                t * 5,
                Pending::Step {
                    service: name.to_string(),
                    generation,
                },
            ),
            _ => None,
        };
        match req {
            Some(req) => self
                .moves
                .set(name, Op::StoppingSource { req, mv, new, note }),
            None => self.placed(name, mv.to, new, Some(mv), note, now),
        }
    }

    fn restart_on_target(&mut self, name: &str, mv: Move, old: InstanceReport, note: String) {
        // A fresh start copies nothing.
        self.release_copy(name);
        let t = self.tuning.request_timeout;
        let generation = self.table.get_mut(name).expect("present").next_generation();
        let (launch, reservation) = self.launch_for(name);
        let cmd = AgentCommand::Start {
            instance: instance_name(name, generation),
            launch,
            reservation,
        };
        let pending = Pending::Step {
            service: name.to_string(),
            generation,
        };
        match self.command(mv.to, cmd, t * 5, pending) {
            Some(req) => self.moves.set(
                name,
                Op::Restarting {
                    req,
                    mv,
                    old,
                    note,
                    no_api: false,
                },
            ),
            None => self.roll_back(name, mv, format!("node {} has no address", mv.to)),
        }
    }

    /// The service runs `info` on `node`: the operation is over. `moved` says where it came
    /// from and why (a `Migrated` event); otherwise it was admitted (`Admitted`).
    fn placed(
        &mut self,
        name: &str,
        node: NodeId,
        info: InstanceReport,
        moved: Option<Move>,
        note: Option<String>,
        now: Instant,
    ) {
        info!(service = %name, %node, instance = %info.instance, endpoint = ?info.endpoint, "service instance running");
        self.release_copy(name);
        if let Some(note) = &note {
            warn!(service = %name, %note, "service restarted instead of live-migrated");
        }
        let s = self.table.get_mut(name).expect("present");
        let waiting = s.placed(node, info, now);
        self.moves.set(name, Op::Idle);
        let p = self.placement(name).expect("just set");
        match moved {
            Some(mv) => self.publish(Event::Migrated {
                service: name.to_string(),
                from: mv.from,
                to: node,
                reason: match &note {
                    Some(n) => format!("{} (restarted: {n})", mv.why.as_str()),
                    None => mv.why.as_str().to_string(),
                },
            }),
            None => self.publish(Event::Admitted(p.clone())),
        }
        // Answered after the event, so a client that hears back sees it published.
        self.answer_waiting(waiting, &p);
    }

    /// Requests that waited for a service's instance get its placement (with the client
    /// each admitted).
    pub(crate) fn answer_waiting(
        &mut self,
        waiting: Vec<(ApiId, Option<ClientId>)>,
        p: &Placement,
    ) {
        for (w, client) in waiting {
            let client = client.map(|c| c.0);
            self.reply(
                w,
                Response::Placed(Placement {
                    client,
                    ..p.clone()
                }),
            );
        }
    }

    /// A move failed before its source stopped serving: the service stays on the source
    /// when the source can keep it; otherwise it is lost.
    fn roll_back(&mut self, name: &str, mv: Move, why: String) {
        self.release_copy(name);
        let (from, to) = (mv.from, mv.to);
        let s = &self.table[name];
        let (sid, profile, old) = (s.sid(), s.profile(), s.info().cloned());
        let source_ok = self.live.contains_key(&from)
            && self.nodes.contains_key(&from)
            && !self.drained.contains(&from);
        if let (Some(old), true) = (old, source_ok) {
            let clients = self.admission.release_service(sid).unwrap_or_default();
            let ev = Evicted {
                service: sid,
                profile,
                clients,
            };
            if self.admission.adopt(&ev, from).is_ok() {
                warn!(service = %name, %from, %to, %why, "move failed: kept on its source");
                let waiting = self.table.get_mut(name).expect("present").kept(from, old);
                self.moves.set(name, Op::Idle);
                let p = self.placement(name).expect("just set");
                self.answer_waiting(waiting, &p);
                return self.publish(Event::Notice {
                    service: name.to_string(),
                    node: from,
                    reason: format!("move to {to} failed ({why}); kept on {from}"),
                });
            }
        }
        if let Some(old) = self.table[name].instance().map(str::to_string) {
            // Nothing may keep running unaccounted.
            self.stop_instance(from, old);
        }
        self.lose(name, format!("move to {to} failed: {why}"));
    }

    /// A node died: moves towards it that have not handed over yet go back to their source
    /// (which never stopped serving); then moves away from it end or restart on their
    /// target.
    pub(crate) fn moves_around_dead(&mut self, dead: NodeId, now: Instant) {
        for (name, mv) in self.moves.towards(dead) {
            self.roll_back(&name, mv, format!("{dead} died"));
        }
        for (name, op) in self.moves.in_flight() {
            if let Some(next) = op.source_died(dead) {
                self.carry_out(&name, next, now);
            }
        }
    }

    /// The service cannot be kept: forget it and say so.
    pub(crate) fn lose(&mut self, name: &str, reason: String) {
        let Some(s) = self.remove_service(name) else {
            return;
        };
        for (w, _) in s.waiting {
            self.reply(
                w,
                Response::Error(ApiError::Internal {
                    reason: format!("could not start {name}: {reason}"),
                }),
            );
        }
        self.publish(Event::Lost {
            service: name.to_string(),
            reason,
        });
    }
}
