//! Report rounds: the rebuild after an election (thesis §4.2) and every refresh after it
//! (node failures, lost instances, duplicates (see `reconcile`), agent notices: crashes
//! past the restart policy, failed health checks, anomalies, and viewers who left), plus
//! drains.

use std::collections::BTreeSet;
use std::time::Instant;

use smart_admission::Evicted;
use smart_proto::NodeId;
use smart_proto::agent::{AgentEvent, AgentReply};
use smart_proto::api::Event;
use tracing::{debug, info, warn};

use super::moves::Why;
use super::reconcile::rank;
use super::{AgentAddr, ControlEngine, Output, gen_of, node_spec, spec_of};
use crate::peer::PeerError;

impl ControlEngine {
    pub(crate) fn on_reports(
        &mut self,
        started: Instant,
        results: Vec<(AgentAddr, Result<AgentReply, PeerError>)>,
        now: Instant,
    ) {
        let first = !self.rebuilt;
        let mut answered = BTreeSet::new();
        for (agent, _) in &results {
            self.asked.insert(agent.node);
        }
        for (agent, r) in results {
            match r {
                Ok(AgentReply::Report(rep)) => {
                    if !self.nodes.contains_key(&agent.node)
                        && !self.drained.contains(&agent.node)
                        && self
                            .admission
                            .add_node(agent.node, node_spec(&rep, &self.tuning.admission))
                            .is_ok()
                    {
                        info!(node = %self.node, agent = %agent.node, "agent joins placement");
                    }
                    self.nodes.insert(agent.node, agent.addr);
                    self.registry.insert(agent.node, *rep);
                    answered.insert(agent.node);
                }
                Ok(AgentReply::Refused { highest, .. }) => return self.go_stale(highest),
                Ok(other) => {
                    warn!(node = %self.node, agent = %agent.node, ?other, "unexpected agent answer")
                }
                // Its node answered (refused us, or Agent86 is restarting): alive, just no
                // report this round; the next round asks again.
                Err(e) if e.peer_answered() => {
                    info!(node = %self.node, agent = %agent.node, error = %e, "agent node alive, no report")
                }
                // Dead or partitioned agents are the failure detector's business.
                Err(e) => {
                    debug!(node = %self.node, agent = %agent.node, error = %e, "agent did not answer")
                }
            }
        }
        if first {
            // The rebuild must have asked every live agent: the view may have grown since
            // the round began. Those not asked are asked now (a few times at most, in case
            // membership keeps changing); those that did not answer stay unknown, not
            // empty (see `restore_replica`).
            let missing: Vec<AgentAddr> = self
                .live_agents()
                .into_iter()
                .filter(|a| !self.asked.contains(&a.node))
                .collect();
            self.rebuild_rounds += 1;
            if !missing.is_empty() && self.rebuild_rounds < 3 {
                info!(node = %self.node, missing = missing.len(), "rebuild: asking the agents the first round did not");
                self.round_in_flight = true;
                self.out.push(Output::Round {
                    agents: missing,
                    epoch: self.epoch,
                    timeout: self.tuning.request_timeout,
                });
                return;
            }
            self.adopt_all(now);
            self.rebuilt = true;
            for (n, rep) in &self.registry {
                let max = rep.notices.iter().map(|(s, _)| *s).max().unwrap_or(0);
                self.notices_seen.insert(*n, max);
            }
            self.restore_replica(now);
            info!(node = %self.node, epoch = self.epoch, agents = self.registry.len(),
                services = self.table.len(), "control rebuilt its state");
            self.out.push(Output::Rebuilt {
                epoch: self.epoch,
                agents: self.registry.len(),
            });
        } else {
            self.reconcile(started, &answered, now);
        }
    }

    /// Rebuild: every instance in the reports joins admission where it runs; duplicates (a
    /// partition, a migration cut short by the death of the Control, or a start a dead
    /// Control never confirmed) are stopped: the copy with most clients stays, then the
    /// newest generation, then the lowest node id, and it is admitted with the viewers of
    /// every copy (those of the others reconnect to it). An instance handing its clients
    /// over (`MigratingOut`) is never kept: its successor is.
    fn adopt_all(&mut self, now: Instant) {
        let heard: BTreeSet<NodeId> = self.registry.keys().copied().collect();
        for (name, mut copies) in self.copies(&heard, None) {
            rank(&mut copies, |n| {
                self.nodes.contains_key(&n) && !self.drained.contains(&n)
            });
            let kept = copies.remove(0);
            let n: u64 = kept.clients + copies.iter().map(|c| c.clients).sum::<u64>();
            for dup in copies {
                warn!(service = %name, node = %dup.node, instance = %dup.info.instance, "stopping a duplicate instance");
                self.stop_instance(dup.node, dup.info.instance);
            }
            let Some(spec) = spec_of(&kept.info.launch) else {
                continue;
            };
            let (profile, source) = match self.profiles.profile_of(&mut self.admission, &spec) {
                Ok(p) => p,
                Err(reason) => {
                    warn!(service = %name, %reason, "cannot adopt a running service without a profile");
                    continue;
                }
            };
            let ev = match self.admission.adopt_new(profile, kept.node, n) {
                Ok(ev) => ev,
                Err(e) => {
                    warn!(service = %name, error = %e, "cannot adopt a running service");
                    continue;
                }
            };
            info!(service = %name, node = %kept.node, instance = %kept.info.instance, clients = n, "adopted a running service");
            let generation = gen_of(&kept.info.instance);
            let name = self.insert_service(spec, ev, source, kept.node, generation, now);
            self.table
                .get_mut(&name)
                .expect("inserted")
                .adopt(kept.info);
        }
    }

    /// After a rebuild: services in the replicated registry that no live agent runs are
    /// admitted again and started, when their node died together with the old Control or
    /// answered without them. Those of a live node that did not answer wait for it (it
    /// may run them: a Control that rebuilt from partial reports must not restart, nor
    /// declare lost, what it did not hear about).
    fn restore_replica(&mut self, now: Instant) {
        let entries = std::mem::take(&mut self.replica.services);
        for e in entries {
            if self.table.contains(&e.spec.name) {
                continue;
            }
            if self.live.contains_key(&e.node) && !self.registry.contains_key(&e.node) {
                info!(service = %e.spec.name, node = %e.node, "its node has not answered: waiting for it");
                self.awaiting.push(e);
                continue;
            }
            self.restore_entry(e, now);
        }
    }

    /// Nodes in placement that left the live set.
    pub(crate) fn remove_dead(&mut self, now: Instant) {
        let dead: Vec<NodeId> = self
            .nodes
            .keys()
            .filter(|n| !self.live.contains_key(n))
            .copied()
            .collect();
        for n in dead {
            self.node_down(n, now);
        }
    }

    /// Refresh: nodes gone from the live set, instances lost, notices, strays.
    fn reconcile(&mut self, started: Instant, answered: &BTreeSet<NodeId>, now: Instant) {
        self.remove_dead(now);
        let mut crashed = Vec::new();
        let mut anomalies = Vec::new();
        for (node, rep) in &self.registry {
            let mut seen = self.notices_seen.get(node).copied().unwrap_or(0);
            let max = rep.notices.iter().map(|(s, _)| *s).max().unwrap_or(0);
            if max < seen {
                // A restarted agent numbers from 1 again.
                seen = 0;
            }
            for (seq, ev) in &rep.notices {
                if *seq <= seen {
                    continue;
                }
                match ev {
                    AgentEvent::InstanceFailed { instance, .. } => {
                        crashed.push((*node, instance.clone()))
                    }
                    AgentEvent::Anomaly {
                        instance,
                        resource,
                        observed,
                        reserved,
                    } => anomalies.push((*node, instance.clone(), *resource, *observed, *reserved)),
                    _ => {}
                }
            }
            self.notices_seen.insert(*node, max);
        }
        for (node, instance, resource, observed, reserved) in anomalies {
            self.on_anomaly(node, &instance, resource, observed, reserved, now);
        }
        self.release_departed(answered, now);
        for (node, instance) in crashed {
            let name = self.table.running(node, &instance).cloned();
            if let Some(name) = name {
                warn!(service = %name, %node, %instance, "instance failed past its restart policy: re-admitting");
                self.readmit(&name, Why::Crashed);
            }
        }
        // One instance per service, whatever the generations say (see `reconcile`): before
        // the lost instances, so that a service whose instance vanished but that runs
        // elsewhere is taken over there rather than started again.
        self.converge(started, answered, now);
        // Lost instances: the node answered a round that began after the instance was
        // confirmed (or its start went unanswered), and does not list it (the agent
        // restarted, or gave up on it).
        let lost: Vec<String> = self
            .table
            .iter()
            .filter(|(n, s)| {
                !self.moves.busy(n) && s.placed_at() < started && answered.contains(&s.node())
            })
            .filter(|(_, s)| {
                // No instance and nothing in flight: a start whose outcome was unknown, and
                // no copy of it reported (`converge` took one if there was).
                let Some(instance) = s.instance() else {
                    return true;
                };
                self.registry
                    .get(&s.node())
                    .is_none_or(|r| r.instance(instance).is_none())
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in lost {
            warn!(service = %name, "instance missing from its node's report: re-admitting");
            self.readmit(&name, Why::Crashed);
        }
        self.restore_awaiting(now);
        self.qos_round(answered, now);
    }

    /// Viewers leave without telling the front-end (it answered a redirect), and a
    /// redirect may never be followed: when an instance reports fewer connected clients
    /// than were admitted for its service and settled (admitted at least
    /// `tuning.arrival_window` ago), for `tuning.release_after` consecutive refreshes and
    /// outside the grace period after its start or migration, the settled surplus is
    /// released in the admission engine. Tentative clients are never released this way
    /// (their viewers may be on their way), and an admission does not delay the release of
    /// others: a flood of `/watch` requests that never connect holds each reservation only
    /// about an arrival window.
    fn release_departed(&mut self, answered: &BTreeSet<NodeId>, now: Instant) {
        let window = self.tuning.arrival_window;
        let names: Vec<String> = self.table.iter().map(|(n, _)| n.clone()).collect();
        let mut released = Vec::new();
        for name in names {
            let Some(reported) = self.reported_clients(&name, answered) else {
                continue;
            };
            let reported = reported as usize;
            let s = &self.table[&name];
            let admitted = s.client_count();
            let settled = s.settled_clients(now, window);
            if !self
                .qos
                .fewer_clients(&name, reported, settled, s.placed_at(), now)
            {
                continue;
            }
            let s = self.table.get_mut(&name).expect("listed");
            let gone = s.release_settled_beyond(reported, now, window);
            released.push((name, s.node(), gone, reported, admitted));
        }
        for (name, node, gone, reported, admitted) in released {
            for c in &gone {
                let _ = self.admission.release_client(*c);
            }
            info!(service = %name, %node, released = gone.len(), reported, admitted,
                "viewers left: released their admissions");
            self.publish(Event::Notice {
                service: name,
                node,
                reason: format!(
                    "released {} client(s): its instance reports {reported} connected, {admitted} were admitted",
                    gone.len()
                ),
            });
        }
    }

    /// A node left the live set: its services are re-admitted elsewhere; moves towards it
    /// are rolled back to their source.
    pub(crate) fn node_down(&mut self, node: NodeId, now: Instant) {
        self.nodes.remove(&node);
        self.registry.remove(&node);
        self.notices_seen.remove(&node);
        self.moves_around_dead(node, now);
        let evicted = self.admission.node_failed(node).unwrap_or_default();
        warn!(node = %self.node, dead = %node, services = evicted.len(), "node down: re-admitting its services");
        for ev in evicted {
            let Some(name) = self.table.name_of(ev.service).cloned() else {
                continue;
            };
            match self.admission.readmit(&ev) {
                Ok(d) => {
                    for m in &d.migrations {
                        self.migrate(m.service, m.from, m.to, Why::Ms);
                    }
                    let Some(s) = self.table.get_mut(&name) else {
                        continue;
                    };
                    s.place_on(d.node);
                    self.start(&name, Some(node), Why::NodeFailure);
                }
                Err(r) => {
                    warn!(service = %name, reason = %r, "no node can take the service");
                    self.lose_unless_reported(&name, r.to_string());
                }
            }
        }
    }

    /// Re-admits a service whose instance is gone from its node.
    pub(crate) fn readmit(&mut self, name: &str, why: Why) {
        let Some(s) = self.table.get(name) else {
            return;
        };
        let (sid, profile, from) = (s.sid(), s.profile(), s.node());
        let clients = self.admission.release_service(sid).unwrap_or_default();
        let ev = Evicted {
            service: sid,
            profile,
            clients,
        };
        match self.admission.readmit(&ev) {
            Ok(d) => {
                if let Some(s) = self.table.get_mut(name) {
                    s.place_on(d.node);
                }
                self.start(name, Some(from), why);
            }
            Err(r) => self.lose_unless_reported(name, r.to_string()),
        }
    }

    /// Moves every service off `node` (live migration where possible) and keeps the node
    /// out of placement. What cannot move stays, and the node stays in service; the error
    /// names those services.
    pub(crate) fn drain_node(&mut self, node: NodeId, why: Why) -> Result<(), String> {
        self.drained.insert(node);
        let evicted = self.admission.remove_node(node).unwrap_or_default();
        let mut failed = Vec::new();
        let mut stay = Vec::new();
        for ev in evicted {
            let Some(name) = self.table.name_of(ev.service).cloned() else {
                continue;
            };
            match self.admission.readmit(&ev) {
                Ok(d) => {
                    for m in &d.migrations {
                        self.migrate(m.service, m.from, m.to, Why::Ms);
                    }
                    self.migrate(ev.service, node, d.node, why);
                }
                Err(r) => {
                    failed.push(format!("{name}: {r}"));
                    stay.push(ev);
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        // The node stays in service with what could not move.
        self.drained.remove(&node);
        let spec = self
            .registry
            .get(&node)
            .map(|r| node_spec(r, &self.tuning.admission));
        if let Some(spec) = spec
            && self.admission.add_node(node, spec).is_ok()
        {
            for ev in &stay {
                let _ = self.admission.adopt(ev, node);
            }
        }
        warn!(%node, services = ?failed, "drain incomplete: no room elsewhere");
        Err(format!("no room elsewhere for {}", failed.join(", ")))
    }
}
