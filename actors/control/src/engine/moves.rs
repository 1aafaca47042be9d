//! Starts and the migration state machine (thesis §3.3, §5.4; docs/DESIGN.md §5).
//!
//! Every service has one [`Op`] in flight at most; each step waits for the answer to one
//! agent command (request id in the step) and every answer (or the shell's timeout, which
//! always comes) moves it on:
//!
//! ```text
//!            start ──ok──▶ Idle (Admitted / Migrated{node-failure, crashed})
//!              └─failed──▶ Lost
//!
//! live move: Restoring ──ok──▶ HandingOff ──ok──────────────▶ Idle (Migrated)
//!   (target    │                 └─failed──▶ StoppingSource ─▶ Idle (Migrated, note)
//!   restores   └─failed─▶ Restarting ──ok──▶ HandingOff
//!   from the               (fresh start      └─failed──▶ rolled back to the source
//!   source)                 on the target)               (Notice), or Lost
//! no control API:          Restarting ──ok──▶ StoppingSource ─▶ Idle (Migrated, note)
//! ```
//!
//! Step timeouts are multiples of the request timeout `t`: start and stop `5t`, restore
//! `30t` (it copies a whole cache), hand-over `10t`.
//!
//! Failures around a move: the **target dies** before the hand-over: the move is rolled
//! back (the source never stopped serving); after it, the service is re-admitted like any
//! service of a dead node. The **source dies** during the restore: a fresh start on the
//! target; during the hand-over: the move ends there (its viewers reconnect through the
//! front-end). The **Control dies or is deposed**: nothing of it survives (the shell aborts
//! its tasks; agents fence its epoch); the next Control rebuilds from the agents' reports,
//! keeps the copy with the most clients (the source before a hand-over, the target after
//! it; an instance handing over is never kept) and stops the other. So after it settles,
//! a service has exactly one live instance and is never lost.

use std::time::Instant;

use smart_admission::{Evicted, ServiceId};
use smart_proto::NodeId;
use smart_proto::agent::{AgentCommand, AgentReply, InstanceReport, SourceExport};
use smart_proto::api::{ApiError, Event, Placement, Response};
use tracing::{info, warn};

use super::{ControlEngine, Pending, ReqId, instance_name};
use crate::peer::PeerError;

/// Why a service moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Migrate the Smallest made room for another service or client.
    Ms,
    /// An operator drained its node.
    Drain,
    /// Its node died.
    NodeFailure,
    /// Its instance crashed past the agent's restart policy, or vanished.
    Crashed,
    /// Its node failed a health check.
    Health,
    /// It ran persistently over its reservation.
    Anomaly,
}

impl Why {
    /// The reason as events name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Ms => "ms",
            Why::Drain => "drain",
            Why::NodeFailure => "node-failure",
            Why::Crashed => "crashed",
            Why::Health => "health",
            Why::Anomaly => "anomaly",
        }
    }
}

/// A service on its way from one node to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// Source node.
    pub from: NodeId,
    /// Target node.
    pub to: NodeId,
    /// Why it moves.
    pub why: Why,
}

/// What is in flight on a service.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Nothing.
    Idle,
    /// Its newest instance is starting on its node (a first start, or a restart after its
    /// node died or its instance crashed: then `from` is where it ran).
    Starting {
        /// The Start command.
        req: ReqId,
        /// Where it ran before.
        from: Option<NodeId>,
        /// Why it is (re)started.
        why: Why,
    },
    /// Live move, step 1: the target restores the source's state while the source serves.
    Restoring {
        /// The MigrateIn command.
        req: ReqId,
        /// The move.
        mv: Move,
        /// The instance on the source.
        old: InstanceReport,
    },
    /// A fresh start on the target: the restore failed, or the workload has no control API.
    Restarting {
        /// The Start command.
        req: ReqId,
        /// The move.
        mv: Move,
        /// The instance on the source.
        old: InstanceReport,
        /// Why it restarts instead of moving live (for the event).
        note: String,
        /// No control API: the source is stopped after the start, with no hand-over.
        no_api: bool,
    },
    /// Step 2: the source hands its clients over to the new instance (then stops).
    HandingOff {
        /// The MigrateOut command.
        req: ReqId,
        /// The move.
        mv: Move,
        /// The new instance.
        new: InstanceReport,
        /// Said in the event.
        note: Option<String>,
    },
    /// Fallback: the source instance is stopped (its clients reconnect through the
    /// front-end).
    StoppingSource {
        /// The Stop command.
        req: ReqId,
        /// The move.
        mv: Move,
        /// The new instance.
        new: InstanceReport,
        /// Said in the event.
        note: Option<String>,
    },
}

impl Op {
    /// The command the current step waits for.
    pub fn req(&self) -> Option<ReqId> {
        match self {
            Op::Idle => None,
            Op::Starting { req, .. }
            | Op::Restoring { req, .. }
            | Op::Restarting { req, .. }
            | Op::HandingOff { req, .. }
            | Op::StoppingSource { req, .. } => Some(*req),
        }
    }
}

/// An agent's answer to a step: the instance it reports, if any, or why it failed.
fn outcome(result: Result<AgentReply, PeerError>) -> Result<Option<InstanceReport>, String> {
    match result {
        Ok(AgentReply::Instance(i)) => Ok(Some(*i)),
        Ok(AgentReply::Done) => Ok(None),
        Ok(AgentReply::Failed(e)) => Err(e.to_string()),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

impl ControlEngine {
    /// Starts the service's next instance on its (admission-chosen) node.
    pub(crate) fn start(&mut self, name: &str, from: Option<NodeId>, why: Why) {
        let t = self.tuning.request_timeout;
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        s.generation += 1;
        // The old instance is gone: clients wait for the new one (Locate and AdmitClient
        // queue until it runs) instead of being sent to a dead endpoint.
        s.info = None;
        let (generation, node) = (s.generation, s.node);
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
            Some(req) => {
                self.services.get_mut(name).expect("present").op = Op::Starting { req, from, why }
            }
            None => self.lose(name, format!("node {node} has no address")),
        }
    }

    /// Moves a service from `from` to `to` (admission already placed it at `to`): live
    /// migration through the workload control API, or a restart on the target when the
    /// instance cannot hand over.
    pub(crate) fn migrate(&mut self, sid: ServiceId, from: NodeId, to: NodeId, why: Why) {
        let Some(name) = self.by_sid.get(&sid).cloned() else {
            return;
        };
        let t = self.tuning.request_timeout;
        let Some(s) = self.services.get_mut(&name) else {
            return;
        };
        s.node = to;
        let (old, op) = (s.info.clone(), s.op.clone());
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
        s.generation += 1;
        let generation = s.generation;
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
                reserved_as: None,
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
            Some(op) => self.services.get_mut(&name).expect("present").op = op,
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
        let Pending::Step {
            service,
            generation,
        } = pending
        else {
            return;
        };
        let Some(s) = self.services.get(&service) else {
            return;
        };
        if s.generation != generation || s.op.req() != Some(req) {
            // Superseded (the service was restarted or moved again meanwhile).
            return;
        }
        let op = s.op.clone();
        self.step(&service, op, outcome(result), now);
    }

    fn step(
        &mut self,
        name: &str,
        op: Op,
        result: Result<Option<InstanceReport>, String>,
        now: Instant,
    ) {
        match (op, result) {
            (Op::Idle, _) => {}
            (Op::Starting { from, why, .. }, Ok(Some(info))) => {
                let node = self.services[name].node;
                let moved = from.map(|from| Move {
                    from,
                    to: node,
                    why,
                });
                self.placed(name, node, info, moved, None, now);
            }
            (Op::Starting { .. }, Ok(None)) => {
                self.lose(name, "the agent reported no instance".into())
            }
            (Op::Starting { .. }, Err(e)) => {
                warn!(service = %name, error = %e, "could not start the service's instance");
                self.lose(name, e)
            }
            (Op::Restoring { mv, .. }, Ok(Some(new))) => self.hand_off(name, mv, new, None, now),
            (Op::Restoring { mv, old, .. }, failed) => {
                // Restore failed: a fresh start on the target, in a new generation (a
                // restore that only timed out may still finish: that instance is a stray).
                // The cause goes into the `Migrated` event: an empty cache and new origin
                // streams must never happen silently.
                let cause = match failed {
                    Err(e) => e,
                    Ok(_) => "the agent reported no instance".into(),
                };
                warn!(service = %name, %cause, "live restore failed: starting afresh on the target");
                self.restart_on_target(
                    name,
                    mv,
                    old,
                    format!("restore failed ({cause}); restarted on the target"),
                )
            }
            (
                Op::Restarting {
                    mv, note, no_api, ..
                },
                Ok(Some(new)),
            ) => {
                if no_api {
                    self.stop_source(name, mv, new, Some(note), now)
                } else {
                    self.hand_off(name, mv, new, Some(note), now)
                }
            }
            (Op::Restarting { mv, .. }, Ok(None) | Err(_)) => {
                self.roll_back(name, mv, "the target could not start it".into())
            }
            (Op::HandingOff { mv, new, note, .. }, Ok(_)) => {
                self.placed(name, mv.to, new, Some(mv), note, now)
            }
            (Op::HandingOff { mv, new, .. }, Err(e)) => {
                let note = format!(
                    "no live hand-over ({e}); the old instance was stopped and its clients reconnect through the front-end"
                );
                self.stop_source(name, mv, new, Some(note), now)
            }
            (Op::StoppingSource { mv, new, note, .. }, _) => {
                self.placed(name, mv.to, new, Some(mv), note, now)
            }
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
        let s = &self.services[name];
        let Some(old) = s.info.clone() else { return };
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
            generation: s.generation,
        };
        match self.command(mv.from, cmd, t * 10, pending) {
            Some(req) => {
                self.services.get_mut(name).expect("present").op =
                    Op::HandingOff { req, mv, new, note }
            }
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
        let s = &self.services[name];
        let (old, generation) = (s.info.clone(), s.generation);
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
            Some(req) => {
                self.services.get_mut(name).expect("present").op =
                    Op::StoppingSource { req, mv, new, note }
            }
            None => self.placed(name, mv.to, new, Some(mv), note, now),
        }
    }

    fn restart_on_target(&mut self, name: &str, mv: Move, old: InstanceReport, note: String) {
        // A fresh start copies nothing.
        self.release_copy(name);
        let t = self.tuning.request_timeout;
        let s = self.services.get_mut(name).expect("present");
        s.generation += 1;
        let generation = s.generation;
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
            Some(req) => {
                self.services.get_mut(name).expect("present").op = Op::Restarting {
                    req,
                    mv,
                    old,
                    note,
                    no_api: false,
                }
            }
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
        let s = self.services.get_mut(name).expect("present");
        s.node = node;
        s.info = Some(info);
        s.placed_at = now;
        s.op = Op::Idle;
        let waiting = std::mem::take(&mut s.waiting);
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
        let s = &self.services[name];
        let (sid, profile, old) = (s.sid, s.profile, s.info.clone());
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
                let s = self.services.get_mut(name).expect("present");
                s.node = from;
                s.info = Some(old);
                s.op = Op::Idle;
                let waiting = std::mem::take(&mut s.waiting);
                let p = self.placement(name).expect("just set");
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
                return self.publish(Event::Notice {
                    service: name.to_string(),
                    node: from,
                    reason: format!("move to {to} failed ({why}); kept on {from}"),
                });
            }
        }
        if let Some(old) = self.services[name].info.clone() {
            // Nothing may keep running unaccounted.
            self.command(
                from,
                AgentCommand::Stop {
                    instance: old.instance,
                },
                self.tuning.request_timeout * 5,
                Pending::Forget,
            );
        }
        self.lose(name, format!("move to {to} failed: {why}"));
    }

    /// Moves towards `dead` that have not handed over yet go back to their source (which
    /// never stopped serving).
    pub(crate) fn abort_moves_to(&mut self, dead: NodeId) {
        let moving: Vec<(String, Move)> = self
            .services
            .iter()
            .filter_map(|(n, s)| match &s.op {
                Op::Restoring { mv, .. } | Op::Restarting { mv, .. } if mv.to == dead => {
                    Some((n.clone(), *mv))
                }
                _ => None,
            })
            .collect();
        for (name, mv) in moving {
            self.roll_back(&name, mv, format!("{dead} died"));
        }
    }

    /// Moves away from `dead`: a restore that cannot finish becomes a fresh start on the
    /// target; a hand-over or stop of the dead source ends the move (its viewers reconnect
    /// through the front-end).
    pub(crate) fn source_died(&mut self, dead: NodeId, now: Instant) {
        let moving: Vec<(String, Op)> = self
            .services
            .iter()
            .filter(|(_, s)| match &s.op {
                Op::Restoring { mv, .. }
                | Op::HandingOff { mv, .. }
                | Op::StoppingSource { mv, .. } => mv.from == dead,
                _ => false,
            })
            .map(|(n, s)| (n.clone(), s.op.clone()))
            .collect();
        for (name, op) in moving {
            match op {
                Op::Restoring { mv, old, .. } => self.restart_on_target(
                    &name,
                    mv,
                    old,
                    "the source died during the restore; restarted on the target".into(),
                ),
                Op::HandingOff { mv, new, .. } | Op::StoppingSource { mv, new, .. } => {
                    let note = Some("the source died during the move".to_string());
                    self.placed(&name, mv.to, new, Some(mv), note, now)
                }
                _ => {}
            }
        }
    }

    /// The service cannot be kept: forget it and say so.
    pub(crate) fn lose(&mut self, name: &str, reason: String) {
        self.release_copy(name);
        let Some(s) = self.services.remove(name) else {
            return;
        };
        self.by_sid.remove(&s.sid);
        let _ = self.admission.release_service(s.sid);
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
