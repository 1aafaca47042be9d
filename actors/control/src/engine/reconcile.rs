//! Converging to exactly one instance per service (docs/DESIGN.md §2.5): after every change
//! of Control and every heal, the reports may show a service running more than once (a
//! partition whose minority side elected its own Control and restarted what it could not
//! see, a paused Control, a migration cut short), or running where this Control never
//! admitted it. On the rebuild and on every refresh round the acting Control looks at every
//! copy the reachable agents report and keeps one, *whatever the generations say*: the one
//! with the most connected viewers, then the newest generation, then the lowest node id.
//! The viewers of the others are admitted to the kept one (they reconnect to it through the
//! front-end) and the others are stopped, with the normal stop command fenced by epoch.
//!
//! Every stop this Control sends is remembered until a report shows it took effect
//! ([`StopBook`]): an instance being stopped is not a copy (so a second round never stops
//! it twice, and a service stopped on purpose is never adopted again from a report that
//! predates the stop), and a stop that got no answer is sent again while the instance is
//! still reported.
//!
//! The same rule decides what is **lost**: a service is lost only when no reachable agent
//! reports it and no node can run it. A service whose instance is gone is taken over by a
//! copy another agent reports before anything is restarted, and registry entries of nodes
//! that did not answer the rebuild wait for them ([`ControlEngine::restore_awaiting`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use smart_proto::agent::{AgentCommand, InstanceReport, InstanceState};
use smart_proto::api::Event;
use smart_proto::node::ReplicaEntry;
use smart_proto::{NodeId, ServiceName};
use tracing::{info, warn};

use super::{ControlEngine, Pending, gen_of, spec_of};

/// Refresh rounds that registry entries of a live node that has not answered yet wait for
/// it before they are restarted elsewhere (the node may be slow after a heal, or its agent
/// restarting; a copy found later is reconciled like any duplicate).
pub(crate) const AWAIT_ROUNDS: u32 = 3;

/// A running (or starting) instance of a service, as an agent's report shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Copy {
    pub(crate) node: NodeId,
    pub(crate) info: InstanceReport,
    /// Its connected viewers (the report's count; for the Control's own instance without a
    /// count, its admitted clients).
    pub(crate) clients: u64,
}

impl Copy {
    fn new(node: NodeId, info: InstanceReport) -> Self {
        let clients = reported(&info).unwrap_or(0);
        Copy {
            node,
            info,
            clients,
        }
    }

    fn generation(&self) -> u64 {
        gen_of(&self.info.instance)
    }

    fn is(&self, node: NodeId, instance: &str) -> bool {
        self.node == node && self.info.instance == instance
    }
}

fn reported(i: &InstanceReport) -> Option<u64> {
    i.usage.as_ref().and_then(|u| u.clients).map(u64::from)
}

/// Orders copies best first: copies on nodes in placement before the others (a drained
/// node's copy is kept only when there is no other), then most viewers, newest generation
/// and lowest node id (so every Control decides the same).
pub(crate) fn rank(copies: &mut [Copy], placed: impl Fn(NodeId) -> bool) {
    copies.sort_by_key(|c| {
        (
            !placed(c.node),
            Reverse(c.clients),
            Reverse(c.generation()),
            c.node,
        )
    });
}

/// What became of a stop this Control sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StopState {
    /// Sent, not answered yet.
    InFlight,
    /// The agent answered at this time: reports of rounds begun before may still list the
    /// instance.
    Done(Instant),
    /// No answer (timeout, connection): sent again while the instance is reported.
    Failed,
}

/// The stops this Control sent, by node and instance, until a report shows them done.
#[derive(Debug, Default)]
pub(crate) struct StopBook {
    stops: BTreeMap<(NodeId, String), StopState>,
}

impl StopBook {
    /// Whether a stop of `instance` on `node` must be sent (none is in flight).
    fn begin(&mut self, node: NodeId, instance: &str) -> bool {
        let key = (node, instance.to_string());
        if self.stops.get(&key) == Some(&StopState::InFlight) {
            return false;
        }
        self.stops.insert(key, StopState::InFlight);
        true
    }

    /// The agent's answer: `done` when it stopped the instance (or never had it).
    pub(crate) fn answered(&mut self, node: NodeId, instance: String, done: bool, now: Instant) {
        if let Some(s) = self.stops.get_mut(&(node, instance)) {
            *s = if done {
                StopState::Done(now)
            } else {
                StopState::Failed
            };
        }
    }

    fn forget(&mut self, node: NodeId, instance: &str) {
        self.stops.remove(&(node, instance.to_string()));
    }

    /// Whether a report of a round begun at `started` (`None`: the rebuild) that lists
    /// `instance` on `node` shows a copy (not one this Control is stopping).
    fn hides(&self, node: NodeId, instance: &str, started: Option<Instant>) -> bool {
        match self.stops.get(&(node, instance.to_string())) {
            None => false,
            Some(StopState::InFlight | StopState::Failed) => true,
            Some(StopState::Done(at)) => started.is_none_or(|s| s < *at),
        }
    }

    /// In flight or failed stops, for the tests.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.stops
            .values()
            .filter(|s| !matches!(s, StopState::Done(_)))
            .count()
    }
}

impl ControlEngine {
    /// Stops `instance` on `node` (a duplicate, or a stopped service's), unless a stop of it
    /// is in flight already.
    pub(crate) fn stop_instance(&mut self, node: NodeId, instance: String) {
        if !self.stops.begin(node, &instance) {
            return;
        }
        let pending = Pending::Stop {
            node,
            instance: instance.clone(),
        };
        let cmd = AgentCommand::Stop {
            instance: instance.clone(),
        };
        if self
            .command(node, cmd, self.tuning.request_timeout * 5, pending)
            .is_none()
        {
            self.stops.forget(node, &instance);
        }
    }

    /// The running copies in the reports of `heard` nodes, by service, from a round begun
    /// at `started` (`None`: the rebuild). An instance handing its clients over
    /// (`MigratingOut`) or stopping is not a copy, nor one this Control is stopping.
    pub(crate) fn copies(
        &self,
        heard: &BTreeSet<NodeId>,
        started: Option<Instant>,
    ) -> BTreeMap<ServiceName, Vec<Copy>> {
        let mut found: BTreeMap<ServiceName, Vec<Copy>> = BTreeMap::new();
        for node in heard {
            let Some(rep) = self.registry.get(node) else {
                continue;
            };
            for i in &rep.instances {
                if !matches!(i.state, InstanceState::Running | InstanceState::Starting)
                    || self.stops.hides(*node, &i.instance, started)
                {
                    continue;
                }
                if let Some(spec) = spec_of(&i.launch) {
                    found
                        .entry(spec.name)
                        .or_default()
                        .push(Copy::new(*node, i.clone()));
                }
            }
        }
        found
    }

    /// Whether admission places services on `node`.
    fn in_placement(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node) && !self.drained.contains(&node)
    }

    /// The refresh's reconciliation: stops sent again or forgotten, then every service seen
    /// more than once (or seen elsewhere than where the table has it, or not in the table
    /// at all) converges to one copy.
    pub(crate) fn converge(&mut self, started: Instant, answered: &BTreeSet<NodeId>, now: Instant) {
        self.settle_stops(started, answered);
        let copies = self.copies(answered, Some(started));
        for (name, mut list) in copies {
            let Some(s) = self.table.get(&name) else {
                self.adopt_copies(&name, list, now);
                continue;
            };
            // A start or move in flight settles itself (its source and target are not
            // duplicates); a report that may predate the instance's placement, or a node
            // that did not answer, does not show where the service stands.
            if self.moves.busy(&name) || s.placed_at() >= started || !answered.contains(&s.node()) {
                continue;
            }
            let Some(own) = s.instance().map(str::to_string) else {
                // A start whose outcome was unknown: a copy reported since is its instance.
                self.keep_one(&name, list, now);
                continue;
            };
            let node = s.node();
            let admitted = s.client_count() as u64;
            if let Some(c) = list.iter_mut().find(|c| c.is(node, &own)) {
                if reported(&c.info).is_none() {
                    c.clients = admitted;
                }
                if list.len() == 1 {
                    continue;
                }
            }
            self.keep_one(&name, list, now);
        }
    }

    /// Keeps the best of `list` (copies of a service in the table), moves the others'
    /// viewers to it and stops the others.
    fn keep_one(&mut self, name: &str, mut list: Vec<Copy>, now: Instant) {
        rank(&mut list, |n| self.in_placement(n));
        let s = &self.table[name];
        let (own_node, own) = (s.node(), s.instance().map(str::to_string));
        let is_own = |c: &Copy| own.as_deref().is_some_and(|o| c.is(own_node, o));
        // The table's own clients stay admitted (they follow the service); the viewers of
        // every other copy are admitted now: they are watching, and reconnect to the kept
        // one through the front-end without asking for admission again.
        let extra: u64 = list.iter().filter(|c| !is_own(c)).map(|c| c.clients).sum();
        let kept = list.remove(0);
        if !self.take_copy(name, &kept, extra, now) {
            return;
        }
        let stopped: Vec<String> = list
            .iter()
            .map(|c| format!("{} on {}", c.info.instance, c.node))
            .collect();
        for c in list {
            warn!(service = %name, node = %c.node, instance = %c.info.instance,
                kept = %kept.info.instance, "stopping a duplicate instance");
            self.stop_instance(c.node, c.info.instance);
        }
        let reason = if stopped.is_empty() {
            format!(
                "its instance was gone; took over {} ({} viewer(s))",
                kept.info.instance, kept.clients
            )
        } else {
            format!(
                "duplicates: kept {} ({} viewer(s)), stopping {}",
                kept.info.instance,
                kept.clients,
                stopped.join(", ")
            )
        };
        self.publish(Event::Notice {
            service: name.to_string(),
            node: kept.node,
            reason,
        });
    }

    /// The service `name` (in the table) runs `kept`: admission places it (with its
    /// clients and `extra` more) on `kept`'s node, and the table follows. False (and
    /// nothing changed) when `kept`'s node cannot take it.
    fn take_copy(&mut self, name: &str, kept: &Copy, extra: u64, now: Instant) -> bool {
        let s = &self.table[name];
        let (sid, profile, clients) = (s.sid(), s.profile(), s.client_id_list());
        let placed_on = self.admission.node_of(sid);
        if placed_on != Some(kept.node) {
            // Released where it was (if anywhere), adopted where it runs.
            let _ = self.admission.release_service(sid);
            let ev = smart_admission::Evicted {
                service: sid,
                profile,
                clients: clients.clone(),
            };
            if let Err(e) = self.admission.adopt(&ev, kept.node) {
                warn!(service = %name, node = %kept.node, error = %e, "cannot take over a running copy");
                if let Some(back) = placed_on {
                    let _ = self.admission.adopt(&ev, back);
                }
                return false;
            }
        }
        let fresh = self.admission.adopt_clients(sid, extra).unwrap_or_default();
        let s = self.table.get_mut(name).expect("checked");
        for c in fresh {
            s.add_client(c, now);
        }
        s.at_least(kept.generation());
        let waiting = s.placed(kept.node, kept.info.clone(), now);
        info!(service = %name, node = %kept.node, instance = %kept.info.instance,
            clients = s.client_count(), "service kept on a running copy");
        if let Some(p) = self.placement(name) {
            self.answer_waiting(waiting, &p);
        }
        true
    }

    /// A service no Control admitted here (started by another Control, on the other side
    /// of a partition): the best copy is adopted with every copy's viewers, the others
    /// stopped.
    fn adopt_copies(&mut self, name: &str, mut list: Vec<Copy>, now: Instant) {
        rank(&mut list, |n| self.in_placement(n));
        let kept = list.remove(0);
        let Some(spec) = spec_of(&kept.info.launch) else {
            return;
        };
        let (profile, source) = match self.profiles.profile_of(&mut self.admission, &spec) {
            Ok(p) => p,
            Err(reason) => {
                warn!(service = %name, %reason, "cannot adopt a running service without a profile");
                return;
            }
        };
        let clients = kept.clients + list.iter().map(|c| c.clients).sum::<u64>();
        let ev = match self.admission.adopt_new(profile, kept.node, clients) {
            Ok(ev) => ev,
            Err(e) => {
                warn!(service = %name, node = %kept.node, error = %e, "cannot adopt a running service");
                return;
            }
        };
        info!(service = %name, node = %kept.node, instance = %kept.info.instance, clients,
            "adopted a running service");
        let generation = kept.generation();
        let name = self.insert_service(spec, ev, source, kept.node, generation, now);
        self.table
            .get_mut(&name)
            .expect("inserted")
            .adopt(kept.info.clone());
        self.awaiting.retain(|e| e.spec.name != name);
        for c in list {
            warn!(service = %name, node = %c.node, instance = %c.info.instance, "stopping a duplicate instance");
            self.stop_instance(c.node, c.info.instance);
        }
    }

    /// Stops that got no answer are sent again while their instance is reported; stops
    /// that a report begun after them confirms (or whose node is gone) are forgotten.
    fn settle_stops(&mut self, started: Instant, answered: &BTreeSet<NodeId>) {
        let mut again = Vec::new();
        let mut settled = Vec::new();
        for ((node, instance), state) in &self.stops.stops {
            if !self.live.contains_key(node) {
                settled.push((*node, instance.clone()));
                continue;
            }
            if !answered.contains(node) {
                continue;
            }
            let listed = self
                .registry
                .get(node)
                .and_then(|r| r.instance(instance))
                .is_some_and(|i| i.state != InstanceState::Stopping);
            match state {
                StopState::Failed if listed => again.push((*node, instance.clone())),
                StopState::Failed => settled.push((*node, instance.clone())),
                StopState::Done(at) if *at <= started => settled.push((*node, instance.clone())),
                _ => {}
            }
        }
        for (node, instance) in settled {
            self.stops.forget(node, &instance);
        }
        for (node, instance) in again {
            warn!(%node, %instance, "stop got no answer and the instance still runs: stopping it again");
            self.stop_instance(node, instance);
        }
    }

    /// The best running copy of `name` a reachable agent reported last, if any.
    fn reported_copy(&self, name: &str) -> Option<Copy> {
        let heard: BTreeSet<NodeId> = self
            .registry
            .keys()
            .filter(|n| self.live.contains_key(n))
            .copied()
            .collect();
        let mut list = self.copies(&heard, None).remove(name)?;
        rank(&mut list, |n| self.in_placement(n));
        list.into_iter().next()
    }

    /// The service cannot be placed anywhere: it is lost unless a reachable agent reports
    /// a copy of it, which is then kept.
    pub(crate) fn lose_unless_reported(&mut self, name: &str, reason: String) {
        if let (Some(copy), Some(now)) = (self.reported_copy(name), self.clock)
            && self.take_copy(name, &copy, copy.clients, now)
        {
            self.moves.forget(name);
            self.publish(Event::Notice {
                service: name.to_string(),
                node: copy.node,
                reason: format!(
                    "{reason}; took over {} ({} viewer(s)) reported running",
                    copy.info.instance, copy.clients
                ),
            });
            return;
        }
        self.lose(name, reason);
    }

    /// Whether every live agent has answered at least once since this Control started.
    fn heard_all(&self) -> bool {
        self.live.keys().all(|n| self.registry.contains_key(n))
    }

    /// Registry entries waiting for their node: dropped when the service turns up (in the
    /// table, adopted from a report), restarted elsewhere when their node answered without
    /// it, died, or did not answer for [`AWAIT_ROUNDS`] rounds.
    pub(crate) fn restore_awaiting(&mut self, now: Instant) {
        self.rounds_since_rebuild = self.rounds_since_rebuild.saturating_add(1);
        let entries = std::mem::take(&mut self.awaiting);
        for e in entries {
            if self.table.contains(&e.spec.name) {
                continue;
            }
            let unheard = self.live.contains_key(&e.node) && !self.registry.contains_key(&e.node);
            if unheard && self.rounds_since_rebuild < AWAIT_ROUNDS {
                self.awaiting.push(e);
                continue;
            }
            self.restore_entry(e, now);
        }
    }

    /// Admits and starts a service only the registry copy knows. When admission fails it is
    /// lost only if every live agent has been heard (or it waited long enough): an agent
    /// not heard yet may run it, or have room for it.
    pub(crate) fn restore_entry(&mut self, e: ReplicaEntry, now: Instant) {
        let waited = self.rounds_since_rebuild >= AWAIT_ROUNDS;
        let failed = match self.profiles.profile_of(&mut self.admission, &e.spec) {
            Err(reason) => reason,
            Ok((profile, source)) => match self
                .admission
                .admit_service(profile, e.clients.min(u32::MAX as u64) as u32)
            {
                Ok(d) => {
                    warn!(service = %e.spec.name, was_on = %e.node, node = %d.node,
                        "service known only from the registry copy: restarting it");
                    for m in &d.migrations {
                        self.migrate(m.service, m.from, m.to, super::moves::Why::Ms);
                    }
                    let admitted = smart_admission::Evicted {
                        service: d.service,
                        profile,
                        clients: d.clients,
                    };
                    // Generations above any the old Control started make distinct instance
                    // names; which copy stays after a heal is decided by viewers, not by
                    // generation.
                    let name = self.insert_service(e.spec, admitted, source, d.node, 1000, now);
                    self.start(&name, Some(e.node), super::moves::Why::NodeFailure);
                    return;
                }
                Err(r) => r.to_string(),
            },
        };
        if self.heard_all() || waited {
            self.publish(Event::Lost {
                service: e.spec.name,
                reason: failed,
            });
        } else {
            info!(service = %e.spec.name, reason = %failed,
                "cannot restore a service yet: some live agents have not answered");
            self.awaiting.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use smart_proto::agent::{LaunchSpec, Reservation, UsageReading};

    use super::*;

    fn copy(node: u64, generation: u64, clients: Option<u32>) -> Copy {
        let info = InstanceReport {
            instance: format!("v.{generation}"),
            launch: LaunchSpec::default(),
            state: InstanceState::Running,
            reservation: Reservation::default(),
            endpoint: None,
            control_socket: String::new(),
            checkpoint_export: None,
            speaks_api: true,
            usage: clients.map(|c| UsageReading {
                clients: Some(c),
                ..Default::default()
            }),
            restarts: 0,
            anomalous: vec![],
            limits_enforced: true,
        };
        Copy::new(NodeId(node), info)
    }

    fn order(mut list: Vec<Copy>, drained: &[u64]) -> Vec<(u64, u64)> {
        rank(&mut list, |n| !drained.contains(&n.0));
        list.iter().map(|c| (c.node.0, c.generation())).collect()
    }

    #[test]
    fn the_copy_with_most_viewers_ranks_first_whatever_its_generation() {
        assert_eq!(
            order(vec![copy(1, 1001, Some(2)), copy(2, 3, Some(4))], &[]),
            vec![(2, 3), (1, 1001)]
        );
        // Ties: the newest generation, then the lowest node; no count is no viewer.
        assert_eq!(
            order(
                vec![copy(3, 2, Some(1)), copy(2, 5, None), copy(1, 2, Some(1))],
                &[]
            ),
            vec![(1, 2), (3, 2), (2, 5)]
        );
        // A drained node's copy only when there is no other.
        assert_eq!(
            order(vec![copy(1, 1, Some(9)), copy(2, 1, Some(0))], &[1]),
            vec![(2, 1), (1, 1)]
        );
    }

    #[test]
    fn a_stop_hides_its_instance_until_a_later_report_and_is_sent_once_at_a_time() {
        let t0 = Instant::now();
        let later = t0 + std::time::Duration::from_secs(1);
        let mut b = StopBook::default();
        assert!(b.begin(NodeId(1), "v.1"));
        assert!(!b.begin(NodeId(1), "v.1"), "one in flight at a time");
        assert!(b.hides(NodeId(1), "v.1", Some(t0)));
        assert!(!b.hides(NodeId(2), "v.1", Some(t0)));
        b.answered(NodeId(1), "v.1".into(), true, later);
        // A round begun before the answer may still list it; one begun after does not
        // hide it (it would be running again).
        assert!(b.hides(NodeId(1), "v.1", Some(t0)));
        assert!(!b.hides(NodeId(1), "v.1", Some(later)));
        assert_eq!(b.pending(), 0);
        // No answer: hidden, and may be sent again.
        b.answered(NodeId(1), "v.1".into(), false, later);
        assert!(b.hides(NodeId(1), "v.1", Some(later)));
        assert_eq!(b.pending(), 1);
        assert!(b.begin(NodeId(1), "v.1"));
    }
}
