//! The QoS actions of a refresh (thesis §4.1.1, §4.1.3, §4.2.2; docs/DESIGN.md §3): what
//! the Control does with what the agents measured, after the round's reconcile.
//!
//! - **Reservations follow the clients.** A running instance's reservation (and the limits
//!   Agent86 enforces) is what its profile implies at its current clients; when the agent's
//!   copy differs, an `Update` goes out. Level-triggered: a new Control converges the same.
//!   A memory limit is never set below what the instance uses now (that is a kill, not a
//!   guard).
//! - **Anomalies** (an instance persistently > 10 % over its reservation, as Agent86 judges
//!   it): the service's profile is grown to the observed size; admission keeps it where it
//!   is if its node still fits it (grown in place), else moves it to a node where it fits at
//!   that size, else it stays and a `Notice` says why. Once per resource: the same cause
//!   never acts twice, so there is no back and forth.
//! - **Refinement**: each running instance's sample enters its class's window; a refined
//!   class re-checks its services (resized in place, moved, or reported).
//! - **Health**: a node whose agent reports a failing check (past the agent's hysteresis)
//!   is drained; when all its checks pass again it is undrained. Operators' drains are
//!   never undone here.
//! - **Idle stop**: a service whose instance reports 0 clients, with none admitted, for
//!   `idle_stop_after` is stopped and its reservation released.
//! - **Migration copy**: a live move holds `copy_rate_bps` of network (and a little CPU) on
//!   both nodes until it ends.
//!
//! The clocks and counters these actions judge by are in the [`QosBook`](super::qos::QosBook);
//! the profiles in [`Profiles`](super::profiles::Profiles).

use std::collections::BTreeSet;
use std::time::Instant;

use smart_admission::scale;
use smart_proto::NodeId;
use smart_proto::agent::{AgentCommand, Resource};
use smart_proto::api::{ApiError, Event, Response};
use tracing::{debug, info, warn};

use super::moves::{Op, Why};
use super::qos::differs;
use super::{ControlEngine, Pending, instance_name};

impl ControlEngine {
    /// The QoS actions after a refresh's reconcile.
    pub(crate) fn qos_round(&mut self, answered: &BTreeSet<NodeId>, now: Instant) {
        self.health_round();
        self.refine_from_reports(answered);
        self.sync_reservations(answered);
        self.stop_idle(answered, now);
    }

    /// Drains nodes with failing checks, undrains those that recovered.
    fn health_round(&mut self) {
        let mut sick = Vec::new();
        let mut well = Vec::new();
        for (node, rep) in &self.registry {
            if !rep.failing_checks.is_empty() {
                if !self.health_drained.contains(node) && !self.drained.contains(node) {
                    let detail = rep
                        .failing_checks
                        .iter()
                        .map(|(c, d)| format!("{c}: {d}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    sick.push((*node, detail));
                }
            } else if self.health_drained.contains(node) {
                well.push(*node);
            }
        }
        for (node, detail) in sick {
            warn!(%node, %detail, "node fails a health check: draining it");
            self.health_drained.insert(node);
            let detail = match self.drain_node(node, Why::Health) {
                Ok(()) => format!("{detail}: drained"),
                Err(e) => format!("{detail}: drain incomplete ({e})"),
            };
            self.publish(Event::NodeHealth {
                node,
                healthy: false,
                detail,
            });
            self.replicate();
        }
        for node in well {
            self.health_drained.remove(&node);
            let detail = match self.undrain(node) {
                Ok(()) => "all checks pass again: back in placement".to_string(),
                Err(e) => format!("all checks pass again ({e})"),
            };
            info!(%node, %detail, "node recovered");
            self.publish(Event::NodeHealth {
                node,
                healthy: true,
                detail,
            });
            self.replicate();
        }
    }

    /// The number of clients `name`'s instance reported in this round: only for a service
    /// with nothing in flight whose node answered.
    pub(crate) fn reported_clients(&self, name: &str, answered: &BTreeSet<NodeId>) -> Option<u32> {
        let s = self.table.get(name)?;
        if self.moves.busy(name) || !answered.contains(&s.node()) {
            return None;
        }
        self.registry
            .get(&s.node())?
            .instance(s.instance()?)?
            .usage
            .as_ref()?
            .clients
    }

    /// Running instances' samples into their classes' windows; refined classes re-check
    /// their services.
    fn refine_from_reports(&mut self, answered: &BTreeSet<NodeId>) {
        let samples: Vec<_> = self
            .table
            .iter()
            .filter(|(n, s)| !self.moves.busy(n) && answered.contains(&s.node()))
            .filter_map(|(_, s)| {
                let usage = self
                    .registry
                    .get(&s.node())?
                    .instance(s.instance()?)?
                    .usage
                    .clone()?;
                let spec = s.spec();
                Some((
                    spec.class.clone(),
                    spec.per_client_bps,
                    spec.duration_ms,
                    usage,
                ))
            })
            .collect();
        // Every refinement is announced before any service is re-checked against it.
        let refined = self.profiles.refine_round(samples);
        for stored in &refined {
            self.profile_stored(stored);
        }
        for stored in refined {
            self.recheck_class(&stored.class);
        }
    }

    /// A class's profile changed: its services get the new admission profile where they
    /// are, elsewhere, or keep the old one (and the operator hears why).
    fn recheck_class(&mut self, class: &str) {
        let names: Vec<String> = self
            .table
            .iter()
            // Services grown for an anomaly keep what they were measured to need.
            .filter(|(n, s)| s.spec().class == class && !self.moves.busy(n) && !self.qos.grown(n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let s = &self.table[&name];
            let (spec, sid, node, old) = (s.spec().clone(), s.sid(), s.node(), s.profile());
            let Ok((profile, source)) = self.profiles.profile_of(&mut self.admission, &spec) else {
                continue;
            };
            if profile == old {
                continue;
            }
            match self.admission.resize(sid, profile) {
                Ok(placed) => {
                    let s = self.table.get_mut(&name).expect("listed");
                    s.set_profile(profile, source);
                    if let Some(to) = placed {
                        info!(service = %name, %node, %to, "refined profile does not fit its node: moving it");
                        self.migrate(sid, node, to, Why::Ms);
                    }
                }
                Err(r) => self.publish(Event::Notice {
                    service: name,
                    node,
                    reason: format!(
                        "refined profile of class {class} fits no node ({r}): kept at its old reservation"
                    ),
                }),
            }
        }
    }

    /// Sends `Update` where an agent's copy of a reservation is not what the profile
    /// implies at the service's current clients.
    fn sync_reservations(&mut self, answered: &BTreeSet<NodeId>) {
        let mut updates = Vec::new();
        for (name, s) in self.table.iter() {
            if self.moves.busy(name) || !answered.contains(&s.node()) {
                continue;
            }
            let Some(instance) = s.instance() else {
                continue;
            };
            let Some(cur) = self
                .registry
                .get(&s.node())
                .and_then(|r| r.instance(instance))
            else {
                continue;
            };
            let want = self.profiles.reservation_of(s.profile(), s.client_count());
            if !differs(&cur.reservation, &want) {
                continue;
            }
            let (cpu, mut mem) = self.tuning.admission.limits_of(&want);
            if let (Some(m), Some(u)) = (mem, cur.usage.as_ref()) {
                mem = Some(m.max(u.mem_bytes.saturating_add(u.mem_bytes / 4)));
            }
            updates.push((
                s.node(),
                AgentCommand::Update {
                    instance: instance.to_string(),
                    reservation: want,
                    cpu_cores: cpu,
                    memory_bytes: mem,
                },
            ));
        }
        for (node, cmd) in updates {
            debug!(%node, ?cmd, "reservation update");
            self.command(node, cmd, self.tuning.request_timeout * 5, Pending::Forget);
        }
    }

    /// Stops services idle for `idle_stop_after`.
    fn stop_idle(&mut self, answered: &BTreeSet<NodeId>, now: Instant) {
        let Some(after) = self.qos.idle_stop_after() else {
            return;
        };
        let names: Vec<String> = self.table.iter().map(|(n, _)| n.clone()).collect();
        let mut idle = Vec::new();
        for name in names {
            let Some(reported) = self.reported_clients(&name, answered) else {
                continue;
            };
            let s = &self.table[&name];
            let unused = (s.client_count() == 0) && !s.has_waiters();
            if self.qos.idle(&name, reported, unused, s.placed_at(), now) {
                idle.push(name);
            }
        }
        for name in idle {
            info!(service = %name, after_s = after.as_secs_f64(), "no clients: stopping the service");
            self.stop_service(
                &name,
                format!("no clients for {:.0} s", after.as_secs_f64()),
            );
        }
    }

    /// Stops a service: its instance, its admission, its waiters; says so.
    pub(crate) fn stop_service(&mut self, name: &str, reason: String) -> bool {
        self.stopped.insert(name.to_string());
        self.awaiting.retain(|e| e.spec.name != name);
        // Every instance it has: the current one where it runs (the source, during a
        // move) and the one a start or move in flight is making on its node; none may be
        // left running unaccounted (a later report would show it as a service to adopt).
        let mut instances = Vec::new();
        if let Some(s) = self.table.get(name) {
            let newest = instance_name(name, s.generation());
            match self.moves.op(name) {
                Op::Idle => {}
                Op::Starting { .. } => instances.push((s.node(), newest)),
                Op::Restoring { mv, .. }
                | Op::Restarting { mv, .. }
                | Op::HandingOff { mv, .. }
                | Op::StoppingSource { mv, .. } => instances.push((mv.to, newest)),
            }
            let current = match self.moves.op(name) {
                Op::Idle | Op::Starting { .. } => s.node(),
                Op::Restoring { mv, .. }
                | Op::Restarting { mv, .. }
                | Op::HandingOff { mv, .. }
                | Op::StoppingSource { mv, .. } => mv.from,
            };
            if let Some(i) = s.instance() {
                instances.push((current, i.to_string()));
            }
        }
        let Some(s) = self.remove_service(name) else {
            return false;
        };
        for (w, _) in s.waiting {
            self.reply(
                w,
                Response::Error(ApiError::NotFound {
                    what: format!("service {name} (stopped)"),
                }),
            );
        }
        for (node, instance) in instances {
            self.stop_instance(node, instance);
        }
        self.publish(Event::Stopped {
            service: name.to_string(),
            node: s.node,
            reason,
        });
        self.replicate();
        true
    }

    /// An instance runs persistently over its reservation of `resource`.
    pub(crate) fn on_anomaly(
        &mut self,
        node: NodeId,
        instance: &str,
        resource: Resource,
        observed: f64,
        reserved: f64,
        now: Instant,
    ) {
        let Some(name) = self.table.running(node, instance).cloned() else {
            return;
        };
        let s = &self.table[&name];
        let what = format!("{resource:?} at {observed:.3}, reserved {reserved:.3}");
        let (sid, profile, clients) = (s.sid(), s.profile(), s.client_count());
        let kept = if self.moves.busy(&name) {
            Some("a start or move is already in progress".to_string())
        } else if self.qos.acted_on(&name, resource) {
            Some(format!(
                "already grown or moved once for its {resource:?}: acting again would be thrash"
            ))
        } else {
            let q = self.tuning.admission.reserve_quantile;
            let mut seen = self.profiles.reservation_of(profile, clients);
            match resource {
                Resource::Cpu => seen.cpu_cores = observed,
                Resource::Net => seen.net_bps = observed,
                Resource::Memory => seen.mem_bytes = observed as u64,
            }
            let base = self.profiles.admission_profile(profile).cloned();
            let grown = base.map(|p| scale::grown(&p, clients, q, &seen));
            match grown.map(|g| self.profiles.register(&mut self.admission, g)) {
                None | Some(Err(_)) => Some("its profile could not be grown".to_string()),
                Some(Ok(bigger)) => {
                    self.qos.grow_for(&name, resource);
                    match self.admission.resize(sid, bigger) {
                        Ok(None) => {
                            self.table.get_mut(&name).expect("found").grow(bigger);
                            warn!(service = %name, %node, %instance, %what, "anomaly: reservation grown in place");
                            self.publish(Event::Notice {
                                service: name.clone(),
                                node,
                                reason: format!(
                                    "anomaly ({what}): reservation grown in place on {node}"
                                ),
                            });
                            None
                        }
                        Ok(Some(to)) => {
                            self.table.get_mut(&name).expect("found").grow(bigger);
                            self.qos.moved_for_anomaly(&name, now);
                            warn!(service = %name, %node, %instance, %what, %to, "anomaly: moving the service at its observed size");
                            self.migrate(sid, node, to, Why::Anomaly);
                            None
                        }
                        Err(r) => Some(format!("it fits on no node at its observed size ({r})")),
                    }
                }
            }
        };
        if let Some(why) = kept {
            warn!(service = %name, %node, %instance, %what, %why, "anomaly: service kept where it is");
            self.publish(Event::Notice {
                service: name,
                node,
                reason: format!("anomaly ({what}): kept on {node}: {why}"),
            });
        }
    }

    /// A live move starts: hold the copy's network on both nodes.
    pub(crate) fn hold_copy(&mut self, name: &str, from: NodeId, to: NodeId) {
        let Some(rate) = self.tuning.admission.copy_rate_bps else {
            return;
        };
        let Some(profile) = self.profiles.copy_hold(&mut self.admission, rate) else {
            return;
        };
        let mut holds = Vec::new();
        for n in [from, to] {
            match self.admission.hold(profile, n) {
                Ok(h) => holds.push(h),
                Err(e) => debug!(service = %name, node = %n, error = %e, "no copy hold"),
            }
        }
        if self.table.contains(name) {
            self.moves.hold(name, holds);
        }
    }

    /// A move ended (or failed): its copy holds are released.
    pub(crate) fn release_copy(&mut self, name: &str) {
        for h in self.moves.take_holds(name) {
            let _ = self.admission.release_service(h);
        }
    }
}
