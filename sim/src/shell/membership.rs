//! The Membership actor's shell and the node supervisor's part in the Control's life.
//!
//! As `membership/src/actor.rs`: a tick every 10 ms, every datagram that decodes with the
//! cluster key and its sender's pair tag, the outputs executed in order (an epoch raise is durable at once; Control
//! changes go to the supervisor; the view is published on Control and member changes).
//! Messages between actors travel as events at the same instant (mailboxes), never as
//! nested calls. The acting lease (`NodeEngine::acting_lease`) is published after every
//! input, for the Control to read before each step. As `supervisor.rs`: `StartControl`
//! replaces the Control, `ControlEpoch` re-asserts it, `ControlActing` wakes the actor
//! (`ActingChanged`) when it is about the slot's epoch, `StopControl` stops it; a deposed
//! Control leaves its slot without an actor.

use smart_membership::engine::{Input, Output};
use smart_membership::view::ClusterView;
use smart_proto::{Epoch, heartbeat};

use crate::world::{CtlMsg, Ev, MemMsg, Sim, Slot, SupMsg, TICK};

impl Sim {
    pub(crate) fn on_mtick(&mut self, n: usize, boot: u64) {
        if self.boot(n) != Some(boot) {
            return;
        }
        self.push(self.timer(n, TICK), Ev::MTick { n, boot });
        self.feed_membership(n, Input::Tick);
    }

    pub(crate) fn on_datagram(&mut self, to: usize, bytes: &[u8]) {
        if self.proc(to).is_none() {
            return;
        }
        self.stats.datagrams += 1;
        if let Ok(msg) = heartbeat::decode(bytes, &self.key, &self.member_keys[to]) {
            self.feed_membership(to, Input::Received(msg));
            // As the real actor: a datagram may complete the view (a member's address).
            self.publish_view(to);
        }
    }

    pub(crate) fn on_mem(&mut self, n: usize, msg: MemMsg) {
        match msg {
            MemMsg::RebuildDone(epoch) => self.feed_membership(n, Input::RebuildDone { epoch }),
            // As the real actor: the engine decides (restart at the current epoch with the
            // election's acting state, or observe the higher epoch).
            MemMsg::ControlStale(highest) => {
                self.feed_membership(n, Input::ControlFenced { highest })
            }
        }
    }

    /// Makes `epoch` durable on node `n` (the shared `DurableState`: membership and Agent86
    /// raise the same file).
    pub(crate) fn raise_disk(&mut self, n: usize, epoch: Epoch) {
        let d = &mut self.nodes[n].disk_highest;
        *d = (*d).max(epoch);
    }

    pub(crate) fn feed_membership(&mut self, n: usize, input: Input) {
        let now = self.tclock(n);
        let Some(p) = self.proc_mut(n) else { return };
        let out = p.membership.handle(input, now);
        let boot = p.boot;
        let mut publish = false;
        for o in out {
            match o {
                Output::Send { msg, .. } => {
                    // One datagram for the simulator's few nodes (pair tags fit).
                    for bytes in heartbeat::encode(&msg, &self.key, &self.member_keys[n]) {
                        for j in 0..self.nodes.len() {
                            if j == n || !self.net.reachable(n, j) {
                                continue;
                            }
                            if let Some(d) = self.net.datagram(&mut self.rng) {
                                self.push(
                                    d,
                                    Ev::Datagram {
                                        to: j,
                                        bytes: bytes.clone(),
                                    },
                                );
                            }
                        }
                    }
                }
                Output::PersistEpoch(e) => self.raise_disk(n, e),
                Output::BecomeControl { epoch } => {
                    self.note(format!("n{n} became control at epoch {epoch}"));
                    self.sup(
                        n,
                        boot,
                        SupMsg::StartControl {
                            epoch,
                            acting: false,
                        },
                    );
                }
                Output::RestartControl { epoch, acting } => {
                    self.note(format!(
                        "n{n} control fenced by its own re-assertion: restarting it at {epoch} (acting={acting})"
                    ));
                    self.sup(n, boot, SupMsg::StartControl { epoch, acting });
                }
                Output::Reasserted { epoch } => {
                    self.note(format!("n{n} re-asserted at epoch {epoch}"));
                    self.sup(n, boot, SupMsg::ControlEpoch { epoch });
                }
                Output::ControlActing { epoch, acting } => {
                    self.note(format!("n{n} control acting={acting} at epoch {epoch}"));
                    self.sup(n, boot, SupMsg::ControlActing { epoch, acting });
                }
                Output::StepDown { epoch, reason } => {
                    self.note(format!("n{n} stepped down at epoch {epoch}: {reason:?}"));
                    self.sup(n, boot, SupMsg::StopControl);
                }
                Output::ControlChanged(v) => {
                    self.note(format!(
                        "n{n} sees control {:?}",
                        v.map(|c| (c.node_id.0, c.epoch))
                    ));
                    publish = true;
                }
                Output::MemberUp(_) | Output::MemberDown(_) | Output::MemberRestarted { .. } => {
                    publish = true
                }
                Output::ElectNow => {
                    self.note(format!("n{n} named successor: asks raft for an election"));
                    if let Some(raft) = self.raft.as_mut() {
                        raft.elect_now(n);
                    }
                }
                Output::Dropped { .. } => {}
            }
        }
        if publish {
            self.publish_view(n);
        }
        // The acting lease, after the outputs (as the real actor, after every input).
        if let Some(p) = self.proc_mut(n) {
            p.acting = p.membership.acting_lease(now);
        }
    }

    fn sup(&mut self, n: usize, boot: u64, msg: SupMsg) {
        self.push(std::time::Duration::ZERO, Ev::Sup { n, boot, msg });
    }

    /// `Membership::publish`: the view the other actors read; then what watches it (the
    /// Control's agent watcher, requests waiting for the view to decide on their sender).
    fn publish_view(&mut self, n: usize) {
        let Some(p) = self.proc(n) else { return };
        let me = &self.nodes[n];
        // Every simulated node runs an agent.
        let view = ClusterView::derive(
            (me.id, me.addr, true),
            p.membership.control(),
            &p.membership.members(),
        );
        let Some(p) = self.proc_mut(n) else { return };
        if p.view == view {
            return;
        }
        p.view = view;
        // The Control's watcher (spawned at the end of its post_start).
        if let Some(c) = p.control.as_mut()
            && c.started
            && c.last_agents != p.view.agents
        {
            c.last_agents = p.view.agents.clone();
            let (cid, agents) = (c.cid, c.last_agents.clone());
            self.push(
                std::time::Duration::ZERO,
                Ev::Ctl {
                    n,
                    cid,
                    msg: CtlMsg::Input(smart_control::Input::Agents(agents)),
                },
            );
        }
    }

    /// The supervisor's `on_msg` for the Control's messages.
    pub(crate) fn on_sup(&mut self, n: usize, msg: SupMsg) {
        match msg {
            SupMsg::StartControl { epoch, acting } => {
                self.stop_control(n);
                if let Some(p) = self.proc_mut(n) {
                    p.slot = Some(Slot {
                        epoch,
                        acting,
                        actor: None,
                    });
                }
                self.spawn_control(n);
            }
            SupMsg::ControlEpoch { epoch } => {
                let Some(p) = self.proc_mut(n) else { return };
                let Some(slot) = p.slot.as_mut() else { return };
                slot.epoch = epoch;
                match slot.actor {
                    Some(cid) => self.tell_control(n, cid, CtlMsg::SetEpoch(epoch)),
                    None => self.spawn_control(n),
                }
            }
            SupMsg::ControlActing { epoch, acting } => {
                let Some(p) = self.proc_mut(n) else { return };
                if let Some(slot) = p.slot.as_mut()
                    && slot.epoch == epoch
                {
                    slot.acting = acting;
                    if let Some(cid) = slot.actor {
                        self.tell_control(n, cid, CtlMsg::ActingChanged);
                    }
                }
            }
            SupMsg::StopControl => self.stop_control(n),
        }
    }

    /// `stop_control`: the slot is emptied and the actor stopped (its tasks with it).
    /// The supervisor's `Shutdown`: the Control actor stops first, then membership leaves
    /// (naming a successor if it was Control); the process exits after.
    pub(crate) fn leave(&mut self, n: usize) {
        if self.proc(n).is_none() {
            return;
        }
        self.stop_control(n);
        self.note(format!("n{n} leaves (SIGTERM)"));
        self.feed_membership(n, Input::Leave);
    }

    fn stop_control(&mut self, n: usize) {
        let Some(p) = self.proc_mut(n) else { return };
        if let Some(slot) = p.slot.take() {
            let epoch = slot.epoch;
            self.note(format!("n{n} stops its control (epoch {epoch})"));
            self.drop_control_actor(n);
        }
    }
}
