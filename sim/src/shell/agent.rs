//! The node's TCP port (`supervision/src/server.rs`), Agent86's shell
//! (`actors/agent86/src/actor.rs`) and the simulated instance runtime.
//!
//! The port: an agent command or a registry copy is served only when the view says its
//! sender is the Control (a sender above the view's epoch is told `Unavailable`
//! ([`smart_proto::error::VIEW_BEHIND`]) at once and asks again; a deposed sender is told
//! `Refused` as the agent would); an `ApiWithin` starts a forwarder here with the sender's
//! deadline capped by this node's budget.
//!
//! Agent86: before each command the engine sees the node's durable highest epoch; the
//! engine's commands are executed in order, an epoch raise durable at once; an answer goes
//! back to the waiting request (within the command's budget, else `TimedOut`). The
//! runtime: a started instance becomes ready after a short while (restored from its
//! source when that source still runs it and is reachable), runs until stopped, handed
//! over, or its node dies; every sampling interval it reports its viewers.

use std::time::Duration;

use rand::Rng;
use smart_agent86::engine::{Command, ControlCommand, Event, Refusal};
use smart_control::peer::PeerError;
use smart_membership::view::FromControl;
use smart_proto::agent::{AgentReply, ExitInfo, NodeUsage, UsageReading};
use smart_proto::error::RemoteError;
use smart_proto::node::{NodeRequest, NodeResponse};

use crate::world::{AgentWait, Ev, Origin, RtEv, RtProc, SAMPLE, Sim};

impl Sim {
    /// A request reaches node `to`.
    pub(crate) fn on_arrive(&mut self, rpc: u64, to: usize, from: usize, req: NodeRequest) {
        if self.proc(to).is_none() {
            // The process is gone, the host answers: connection refused.
            let addr = self.nodes[to].addr;
            self.respond(
                to,
                from,
                rpc,
                Err(PeerError::Unreachable {
                    addr,
                    reason: "connection refused".into(),
                }),
            );
            return;
        }
        match req {
            NodeRequest::Agent { .. } | NodeRequest::Replica(_) => {
                self.judge_sender(rpc, to, from, req)
            }
            NodeRequest::ApiWithin { req, within_ms } => {
                let within = Duration::from_millis(within_ms).min(super::BUDGET);
                self.forward(to, req, within, Origin::Rpc { rpc });
            }
            NodeRequest::Api(req) => self.forward(to, req, super::BUDGET, Origin::Rpc { rpc }),
            NodeRequest::Event(_) => self.respond(to, from, rpc, Ok(NodeResponse::Done)),
            // The desired-state Raft group is not modelled here (see the crate docs).
            NodeRequest::Raft(_) => self.respond(
                to,
                from,
                rpc,
                Ok(NodeResponse::Raft(
                    smart_proto::desired::RaftRpcAnswer::Malformed("not simulated".into()),
                )),
            ),
        }
    }

    /// `judge_sender`: serve, refuse, or tell a sender above the view to ask again.
    fn judge_sender(&mut self, rpc: u64, to: usize, from: usize, req: NodeRequest) {
        let from_id = self.nodes[from].id;
        let epoch = match &req {
            NodeRequest::Agent { epoch, .. } => *epoch,
            NodeRequest::Replica(r) => r.epoch,
            _ => return,
        };
        let Some(p) = self.proc_mut(to) else { return };
        match p.view.sender_is_control(from_id, epoch) {
            FromControl::Yes => self.serve_from_control(rpc, to, from, req),
            FromControl::NotYet => {
                let addr = self.nodes[to].addr;
                self.respond(
                    to,
                    from,
                    rpc,
                    Err(PeerError::Unavailable {
                        addr,
                        what: smart_proto::error::VIEW_BEHIND.into(),
                    }),
                );
            }
            FromControl::No { epoch: highest, .. } => {
                let answer = match req {
                    NodeRequest::Agent { epoch, .. } if epoch < highest => {
                        Ok(NodeResponse::Agent(AgentReply::Refused { epoch, highest }))
                    }
                    _ => Err(refused(self.nodes[to].addr)),
                };
                self.respond(to, from, rpc, answer);
            }
        }
    }

    fn serve_from_control(&mut self, rpc: u64, to: usize, from: usize, req: NodeRequest) {
        match req {
            NodeRequest::Replica(r) => {
                if let Some(p) = self.proc_mut(to)
                    && r.newer_than(&p.replica)
                {
                    p.replica = r;
                }
                self.respond(to, from, rpc, Ok(NodeResponse::Done));
            }
            NodeRequest::Agent { epoch, cmd } => {
                // An epoch raised elsewhere on this node fences at once.
                let highest = self.nodes[to].disk_highest;
                self.feed_agent(to, Event::EpochObserved(highest));
                let budget = super::REQUEST_TIMEOUT * cmd.timeout_multiple();
                let from_id = self.nodes[from].id;
                let Some(p) = self.proc_mut(to) else { return };
                let areq = p.next_areq;
                p.next_areq += 1;
                let boot = p.boot;
                p.agent_waits.insert(
                    areq,
                    AgentWait {
                        rpc,
                        from,
                        instance: cmd.instance().map(str::to_string),
                    },
                );
                p.queued.push_back((areq, epoch));
                self.push(
                    self.timer(to, budget),
                    Ev::AgentBudget { n: to, boot, areq },
                );
                self.feed_agent(
                    to,
                    Event::Control(Box::new(ControlCommand {
                        from: from_id,
                        epoch,
                        req: areq,
                        op: cmd,
                    })),
                );
            }
            _ => {}
        }
    }

    pub(crate) fn on_agent_budget(&mut self, n: usize, boot: u64, areq: u64) {
        if self.boot(n) != Some(boot) {
            return;
        }
        let Some(w) = self.proc_mut(n).and_then(|p| p.agent_waits.remove(&areq)) else {
            return;
        };
        self.respond(
            n,
            w.from,
            w.rpc,
            Err(PeerError::remote(self.nodes[n].addr, RemoteError::TimedOut)),
        );
    }

    /// `Agent86::feed`: the engine's commands executed in order; what they cause is fed
    /// back before anything else.
    pub(crate) fn feed_agent(&mut self, n: usize, ev: Event) {
        let mut queue = std::collections::VecDeque::from([ev]);
        while let Some(ev) = queue.pop_front() {
            let now = self.clock(n);
            let Some(p) = self.proc_mut(n) else { return };
            if let Event::EpochPersisted(e) = &ev {
                p.persisted = p.persisted.max(*e);
            }
            let cmds = p.agent.handle(ev, now);
            crate::invariants::fencing::after_agent_step(self, n, &cmds);
            for c in cmds {
                self.exec_agent(n, c, &mut queue);
            }
        }
    }

    fn exec_agent(&mut self, n: usize, c: Command, queue: &mut std::collections::VecDeque<Event>) {
        match c {
            Command::PersistEpoch(e) => {
                self.raise_disk(n, e);
                queue.push_back(Event::EpochPersisted(e));
            }
            Command::Start {
                instance,
                launch,
                listen,
                restore_from,
            } => {
                let service = launch
                    .identity
                    .as_ref()
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| launch.service.clone());
                let addr = self.nodes[n].addr;
                let boot = self.boot(n).unwrap_or_default();
                let Some(p) = self.proc_mut(n) else { return };
                p.runtime.insert(
                    instance.clone(),
                    RtProc {
                        service,
                        running: false,
                        stopping: false,
                        restore: restore_from.is_some(),
                    },
                );
                let listen = listen.or(Some(std::net::SocketAddr::new(addr.ip(), 9000)));
                queue.push_back(Event::Launched {
                    instance: instance.clone(),
                    listen,
                    control_socket: format!("/sim/n{n}/{instance}.sock"),
                });
                let d = Duration::from_millis(self.rng.random_range(20..300));
                self.push(
                    d,
                    Ev::Runtime {
                        n,
                        boot,
                        ev: RtEv::Ready { instance },
                    },
                );
            }
            Command::Stop { instance, .. } => {
                let boot = self.boot(n).unwrap_or_default();
                if let Some(r) = self.proc_mut(n).and_then(|p| p.runtime.get_mut(&instance)) {
                    r.stopping = true;
                    r.running = false;
                }
                let d = Duration::from_millis(self.rng.random_range(10..300));
                self.push(
                    d,
                    Ev::Runtime {
                        n,
                        boot,
                        ev: RtEv::Stopped { instance },
                    },
                );
            }
            Command::MigrateOut { instance, .. } => {
                let boot = self.boot(n).unwrap_or_default();
                let d = Duration::from_millis(self.rng.random_range(50..300));
                self.push(
                    d,
                    Ev::Runtime {
                        n,
                        boot,
                        ev: RtEv::HandedOff { instance },
                    },
                );
            }
            Command::Reply { req, result, .. } => {
                let Some(p) = self.proc_mut(n) else { return };
                let Some(w) = p.agent_waits.remove(&req) else {
                    return;
                };
                let resp = match result {
                    Ok(()) => match w
                        .instance
                        .as_deref()
                        .and_then(|i| p.agent.instance_report(i))
                    {
                        Some(info) => AgentReply::Instance(Box::new(info)),
                        None => AgentReply::Done,
                    },
                    Err(r) => Refusal::into_reply(r),
                };
                self.respond(n, w.from, w.rpc, Ok(NodeResponse::Agent(resp)));
            }
            Command::Report { req, report, .. } => {
                let Some(p) = self.proc_mut(n) else { return };
                if let Some(w) = p.agent_waits.remove(&req) {
                    self.respond(
                        n,
                        w.from,
                        w.rpc,
                        Ok(NodeResponse::Agent(AgentReply::Report(Box::new(report)))),
                    );
                }
            }
            Command::SetLimits { .. } => {}
            Command::Notify(ev) => self.note(format!("n{n} agent event {ev:?}")),
        }
    }

    pub(crate) fn on_runtime(&mut self, n: usize, ev: RtEv) {
        match ev {
            RtEv::Ready { instance } => {
                let Some(r) = self.proc(n).and_then(|p| p.runtime.get(&instance)) else {
                    return;
                };
                if r.stopping {
                    return;
                }
                let outcome = if r.restore {
                    self.restore_outcome(n, &instance)
                } else {
                    Ok(())
                };
                match outcome {
                    Ok(()) => {
                        if let Some(r) = self.proc_mut(n).and_then(|p| p.runtime.get_mut(&instance))
                        {
                            r.running = true;
                        }
                        self.feed_agent(
                            n,
                            Event::SpeaksApi {
                                instance: instance.clone(),
                                yes: true,
                            },
                        );
                        self.feed_agent(n, Event::Started { instance });
                    }
                    Err(error) => {
                        if let Some(p) = self.proc_mut(n) {
                            p.runtime.remove(&instance);
                        }
                        self.feed_agent(n, Event::StartFailed { instance, error });
                    }
                }
            }
            RtEv::Stopped { instance } => {
                let Some(p) = self.proc_mut(n) else { return };
                if p.runtime.remove(&instance).is_some() {
                    let exit = ExitInfo {
                        code: None,
                        signal: Some(15),
                        oom_killed: false,
                    };
                    self.feed_agent(n, Event::Exited { instance, exit });
                }
            }
            RtEv::HandedOff { instance } => {
                let boot = self.boot(n).unwrap_or_default();
                let Some(p) = self.proc_mut(n) else { return };
                let Some(r) = p.runtime.get_mut(&instance) else {
                    return;
                };
                // Its viewers are on the target now; it goes 500 ms later.
                r.running = false;
                self.feed_agent(
                    n,
                    Event::MigratedOut {
                        instance: instance.clone(),
                    },
                );
                self.push(
                    Duration::from_millis(500),
                    Ev::Runtime {
                        n,
                        boot,
                        ev: RtEv::Gone { instance },
                    },
                );
            }
            RtEv::Gone { instance } => {
                if let Some(p) = self.proc_mut(n) {
                    p.runtime.remove(&instance);
                }
            }
        }
    }

    /// A restore copies the source's state: the source must still run an instance of the
    /// service and be reachable.
    fn restore_outcome(&self, n: usize, instance: &str) -> Result<(), String> {
        let p = self.proc(n).ok_or("gone")?;
        let service = &p.runtime.get(instance).ok_or("gone")?.service;
        let source = p
            .agent
            .restore_source(instance)
            .and_then(|s| self.ix(s))
            .ok_or_else(|| "restore: no source".to_string())?;
        let ok = self.running(source)
            && self.net.reachable(n, source)
            && self.net.reachable(source, n)
            && self.proc(source).is_some_and(|sp| {
                sp.runtime
                    .values()
                    .any(|r| &r.service == service && r.running)
            });
        if ok {
            Ok(())
        } else {
            Err(format!("restore: source n{source} unreachable or gone"))
        }
    }

    /// Agent86's sampling tick: node totals and, per instance, its viewers.
    pub(crate) fn on_atick(&mut self, n: usize, boot: u64) {
        if self.boot(n) != Some(boot) {
            return;
        }
        self.push(self.timer(n, SAMPLE), Ev::ATick { n, boot });
        let Some(p) = self.proc(n) else { return };
        let instances = p
            .runtime
            .iter()
            .map(|(name, r)| UsageReading {
                instance: name.clone(),
                cpu_cores: 0.01,
                net_bps: None,
                mem_bytes: 1 << 20,
                clients: Some(self.history.acked.get(&r.service).map_or(0, |a| a.clients)),
                speaks_api: true,
            })
            .collect();
        let node = NodeUsage {
            cpus: 8,
            cpu_busy_cores: 0.2,
            mem_total_bytes: 16 << 30,
            mem_available_bytes: 15 << 30,
            nic_capacity_bps: 10_000_000_000,
            net_bps: 0.0,
        };
        self.feed_agent(n, Event::Usage { node, instances });
    }
}

fn refused(addr: std::net::SocketAddr) -> PeerError {
    PeerError::remote(
        addr,
        RemoteError::Refused {
            reason: "agent commands are accepted from the Control only".into(),
        },
    )
}
