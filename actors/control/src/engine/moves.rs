//! Starts and the migration state machine (thesis §3.3, §5.4; docs/DESIGN.md §5).
//!
//! Every service has one [`Op`] in flight at most; each step waits for the answer to one
//! agent command (request id in the step) and every answer (or the shell's timeout, which
//! always comes) moves it on:
//!
//! ```text
//!            start ──ok──▶ Idle (Admitted / Migrated{node-failure, crashed})
//!              └─failed──▶ start on another node (Notice), never one it failed on;
//!                          none left: a new service is refused (Notice), a running
//!                          one is Lost unless an agent reports a copy of it
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

//!
//! This module holds the state machine itself: [`Op`] and [`Op::next`], which says what an
//! answer leads to, and [`Moves`], the operation in flight on each service and the network
//! held for its copy. Sending the commands each step needs is the engine's
//! ([`super::migration`]).

use std::collections::{BTreeMap, HashMap};

use smart_admission::ServiceId;
use smart_proto::agent::{AgentReply, InstanceReport};
use smart_proto::{NodeId, ServiceName};
use tracing::warn;

use super::ReqId;
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
        /// Nodes where this start already failed (it is retried on another one).
        tried: Vec<NodeId>,
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
pub(crate) fn outcome(
    result: Result<AgentReply, PeerError>,
) -> Result<Option<InstanceReport>, String> {
    match result {
        Ok(AgentReply::Instance(i)) => Ok(Some(*i)),
        Ok(AgentReply::Done) => Ok(None),
        Ok(AgentReply::Failed(e)) => Err(e.to_string()),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// What the answer to a step leads to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    /// Nothing (no operation was in flight).
    Nothing,
    /// The operation is over: the service runs `info` on `node`. `moved` says where it came
    /// from and why; otherwise it was admitted.
    Placed {
        node: NodeId,
        info: InstanceReport,
        moved: Option<Move>,
        note: Option<String>,
    },
    /// The start failed (retried on another node if one can take it).
    StartFailed(String),
    /// Ask the source to hand its clients over to `new`.
    HandOff {
        mv: Move,
        new: InstanceReport,
        note: Option<String>,
    },
    /// Stop the source; its clients reconnect through the front-end.
    StopSource {
        mv: Move,
        new: InstanceReport,
        note: Option<String>,
    },
    /// A fresh start on the target instead of the restore.
    RestartOnTarget {
        mv: Move,
        old: InstanceReport,
        note: String,
    },
    /// The move failed before its source stopped serving.
    RollBack { mv: Move, why: String },
}

impl Op {
    /// What `result`, the answer to the current step, leads to, for a service placed on
    /// `node`.
    pub(crate) fn next(
        self,
        name: &str,
        node: NodeId,
        result: Result<Option<InstanceReport>, String>,
    ) -> Next {
        match (self, result) {
            (Op::Idle, _) => Next::Nothing,
            (Op::Starting { from, why, .. }, Ok(Some(info))) => Next::Placed {
                node,
                info,
                moved: from.map(|from| Move {
                    from,
                    to: node,
                    why,
                }),
                note: None,
            },
            (Op::Starting { .. }, Ok(None)) => {
                Next::StartFailed("the agent reported no instance".into())
            }
            (Op::Starting { .. }, Err(e)) => {
                warn!(service = %name, error = %e, "could not start the service's instance");
                Next::StartFailed(e)
            }
            (Op::Restoring { mv, .. }, Ok(Some(new))) => Next::HandOff {
                mv,
                new,
                note: None,
            },
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
                Next::RestartOnTarget {
                    mv,
                    old,
                    note: format!("restore failed ({cause}); restarted on the target"),
                }
            }
            (
                Op::Restarting {
                    mv, note, no_api, ..
                },
                Ok(Some(new)),
            ) => {
                if no_api {
                    Next::StopSource {
                        mv,
                        new,
                        note: Some(note),
                    }
                } else {
                    Next::HandOff {
                        mv,
                        new,
                        note: Some(note),
                    }
                }
            }
            (Op::Restarting { mv, .. }, Ok(None) | Err(_)) => Next::RollBack {
                mv,
                why: "the target could not start it".into(),
            },
            (Op::HandingOff { mv, new, note, .. }, Ok(_)) => Next::Placed {
                node: mv.to,
                info: new,
                moved: Some(mv),
                note,
            },
            (Op::HandingOff { mv, new, .. }, Err(e)) => Next::StopSource {
                mv,
                new,
                note: Some(format!(
                    "no live hand-over ({e}); the old instance was stopped and its clients reconnect through the front-end"
                )),
            },
            (Op::StoppingSource { mv, new, note, .. }, _) => Next::Placed {
                node: mv.to,
                info: new,
                moved: Some(mv),
                note,
            },
        }
    }

    /// What the death of node `dead` does to this operation: a restore from it cannot
    /// finish and becomes a fresh start on the target; a hand-over or stop of it ends the
    /// move (its viewers reconnect through the front-end). Moves *towards* `dead` are
    /// rolled back separately, before this ([`Moves::towards`]).
    pub(crate) fn source_died(self, dead: NodeId) -> Option<Next> {
        match self {
            Op::Restoring { mv, old, .. } if mv.from == dead => Some(Next::RestartOnTarget {
                mv,
                old,
                note: "the source died during the restore; restarted on the target".into(),
            }),
            Op::HandingOff { mv, new, .. } | Op::StoppingSource { mv, new, .. }
                if mv.from == dead =>
            {
                Some(Next::Placed {
                    node: mv.to,
                    info: new,
                    moved: Some(mv),
                    note: Some("the source died during the move".to_string()),
                })
            }
            _ => None,
        }
    }
}

/// The operation in flight on each service, and the network held for a live move's copy.
/// A service absent here is idle and holds nothing.
#[derive(Debug, Default)]
pub(crate) struct Moves {
    ops: BTreeMap<ServiceName, Op>,
    /// Network held on both nodes for a migration's copy (released when the move ends).
    copy_holds: HashMap<ServiceName, Vec<ServiceId>>,
}

impl Moves {
    /// What is in flight on `name`.
    pub(crate) fn op(&self, name: &str) -> &Op {
        self.ops.get(name).unwrap_or(&Op::Idle)
    }

    /// Whether a start or a move is in flight on `name`.
    pub(crate) fn busy(&self, name: &str) -> bool {
        self.ops.contains_key(name)
    }

    /// Whether `name`'s current step waits for command `req`.
    pub(crate) fn awaits(&self, name: &str, req: ReqId) -> bool {
        self.op(name).req() == Some(req)
    }

    /// `name`'s next step (or, with [`Op::Idle`], its end).
    pub(crate) fn set(&mut self, name: &str, op: Op) {
        match op {
            Op::Idle => self.ops.remove(name),
            op => self.ops.insert(name.to_string(), op),
        };
    }

    /// `name`'s live move holds `holds` for its copy.
    pub(crate) fn hold(&mut self, name: &str, holds: Vec<ServiceId>) {
        self.copy_holds
            .entry(name.to_string())
            .or_default()
            .extend(holds);
    }

    /// The copy holds of `name`'s move, for release (none afterwards).
    pub(crate) fn take_holds(&mut self, name: &str) -> Vec<ServiceId> {
        self.copy_holds.remove(name).unwrap_or_default()
    }

    /// `name` is gone: nothing is in flight on it any more.
    pub(crate) fn forget(&mut self, name: &str) {
        self.ops.remove(name);
        self.copy_holds.remove(name);
    }

    /// Moves towards `dead` that have not handed over yet (their source never stopped
    /// serving), by service name.
    pub(crate) fn towards(&self, dead: NodeId) -> Vec<(ServiceName, Move)> {
        self.ops
            .iter()
            .filter_map(|(n, op)| match op {
                Op::Restoring { mv, .. } | Op::Restarting { mv, .. } if mv.to == dead => {
                    Some((n.clone(), *mv))
                }
                _ => None,
            })
            .collect()
    }

    /// The operations in flight, by service name.
    pub(crate) fn in_flight(&self) -> Vec<(ServiceName, Op)> {
        self.ops
            .iter()
            .map(|(n, op)| (n.clone(), op.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use smart_proto::agent::{AgentError, InstanceState, LaunchSpec, Reservation};

    use super::*;

    fn inst(name: &str) -> InstanceReport {
        InstanceReport {
            instance: name.into(),
            launch: LaunchSpec::default(),
            state: InstanceState::Running,
            reservation: Reservation::default(),
            endpoint: None,
            control_socket: String::new(),
            checkpoint_export: None,
            speaks_api: true,
            usage: None,
            restarts: 0,
            anomalous: vec![],
            limits_enforced: true,
        }
    }

    const MV: Move = Move {
        from: NodeId(1),
        to: NodeId(2),
        why: Why::Drain,
    };

    fn restoring() -> Op {
        Op::Restoring {
            req: 3,
            mv: MV,
            old: inst("v.1"),
        }
    }

    fn handing_off() -> Op {
        Op::HandingOff {
            req: 4,
            mv: MV,
            new: inst("v.2"),
            note: None,
        }
    }

    #[test]
    fn a_live_move_restores_then_hands_over_then_is_placed_on_the_target() {
        assert_eq!(
            restoring().next("v", NodeId(2), Ok(Some(inst("v.2")))),
            Next::HandOff {
                mv: MV,
                new: inst("v.2"),
                note: None
            }
        );
        // The hand-over's answer carries no instance.
        assert_eq!(
            handing_off().next("v", NodeId(2), Ok(None)),
            Next::Placed {
                node: NodeId(2),
                info: inst("v.2"),
                moved: Some(MV),
                note: None
            }
        );
    }

    #[test]
    fn each_failed_step_has_its_fallback() {
        // Restore failed: a fresh start, the cause in the note.
        assert_eq!(
            restoring().next("v", NodeId(2), Err("gone".into())),
            Next::RestartOnTarget {
                mv: MV,
                old: inst("v.1"),
                note: "restore failed (gone); restarted on the target".into()
            }
        );
        // The fresh start failed: back to the source.
        let restarting = Op::Restarting {
            req: 5,
            mv: MV,
            old: inst("v.1"),
            note: "n".into(),
            no_api: false,
        };
        assert_eq!(
            restarting.next("v", NodeId(2), Err("exec".into())),
            Next::RollBack {
                mv: MV,
                why: "the target could not start it".into()
            }
        );
        // Hand-over failed: the source is stopped.
        assert!(matches!(
            handing_off().next("v", NodeId(2), Err("timeout".into())),
            Next::StopSource { note: Some(n), .. } if n.starts_with("no live hand-over (timeout)")
        ));
        // A start that fails is a failed start (retried elsewhere), not a lost service.
        let starting = Op::Starting {
            req: 1,
            from: None,
            why: Why::Ms,
            tried: vec![],
        };
        assert_eq!(
            starting.next("v", NodeId(1), Ok(None)),
            Next::StartFailed("the agent reported no instance".into())
        );
        assert_eq!(Op::Idle.next("v", NodeId(1), Ok(None)), Next::Nothing);
    }

    #[test]
    fn a_restart_after_a_node_failure_is_placed_as_a_move_from_the_dead_node() {
        let starting = Op::Starting {
            req: 1,
            from: Some(NodeId(3)),
            why: Why::NodeFailure,
            tried: vec![],
        };
        assert_eq!(
            starting.next("v", NodeId(2), Ok(Some(inst("v.2")))),
            Next::Placed {
                node: NodeId(2),
                info: inst("v.2"),
                moved: Some(Move {
                    from: NodeId(3),
                    to: NodeId(2),
                    why: Why::NodeFailure
                }),
                note: None
            }
        );
    }

    #[test]
    fn a_dying_source_ends_a_hand_over_and_turns_a_restore_into_a_fresh_start() {
        assert!(matches!(
            restoring().source_died(NodeId(1)),
            Some(Next::RestartOnTarget { .. })
        ));
        assert!(matches!(
            handing_off().source_died(NodeId(1)),
            Some(Next::Placed {
                node: NodeId(2),
                ..
            })
        ));
        // Another node's death, or the target's, is not the source's.
        assert_eq!(restoring().source_died(NodeId(2)), None);
        assert_eq!(Op::Idle.source_died(NodeId(1)), None);
    }

    #[test]
    fn the_book_knows_what_is_in_flight_and_what_it_holds() {
        let mut m = Moves::default();
        assert!(!m.busy("v") && *m.op("v") == Op::Idle);
        m.set("v", restoring());
        m.set("w", handing_off());
        assert!(m.busy("v") && m.awaits("v", 3) && !m.awaits("v", 4));
        assert_eq!(m.towards(NodeId(2)), vec![("v".to_string(), MV)]);
        assert_eq!(m.towards(NodeId(1)), vec![]);
        m.hold("v", vec![ServiceId(10), ServiceId(11)]);
        assert_eq!(m.take_holds("v"), vec![ServiceId(10), ServiceId(11)]);
        assert_eq!(m.take_holds("v"), vec![]);
        m.set("v", Op::Idle);
        assert!(!m.busy("v"));
        m.forget("w");
        assert_eq!(m.in_flight(), vec![]);
        // An agent's failure is a step's failure, with its reason.
        assert_eq!(
            outcome(Ok(AgentReply::Failed(AgentError::Failed("x".into())))),
            Err(AgentError::Failed("x".into()).to_string())
        );
    }
}
