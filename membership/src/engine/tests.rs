//! Engine tests on the exact outputs emitted: one engine fed crafted messages, and a small
//! direct-delivery net of engines for multi-node scenarios (the serialising cluster
//! simulation lives in `tests/cluster_sim.rs`).

use std::collections::BTreeSet;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::election::Fence;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(n: u64) -> SocketAddr {
    format!("127.0.0.{n}:7000").parse().unwrap()
}

fn cfg(n: u64) -> EngineConfig {
    let mut c = EngineConfig::new(NodeId(n), 1, addr(n), vec![Role::Agent, Role::Control]);
    // Most tests feed datagrams straight in; the proof exchange has tests of its own.
    c.incarnation_proof = false;
    c
}

fn engine(n: u64, seed: u64) -> NodeEngine<ChaCha8Rng> {
    NodeEngine::new(cfg(n), 0, ChaCha8Rng::seed_from_u64(seed))
}

fn heartbeat(from: u64, seq: u64, as_control: Option<(Epoch, Epoch)>) -> Message {
    Message::Heartbeat(Heartbeat {
        from: NodeId(from),
        incarnation: 1,
        seq,
        tcp_addr: addr(from),
        roles: vec![Role::Agent, Role::Control],
        highest_epoch: as_control.map_or(0, |(_, e)| e),
        control: as_control.map(|(est, e)| ControlView {
            node_id: NodeId(from),
            established_epoch: est,
            epoch: e,
        }),
        as_control: as_control.map(|(established_epoch, epoch)| ControlAssert {
            established_epoch,
            epoch,
        }),
        load: LoadSummary::default(),
    })
}

/// Drives one engine with Ticks every 10 ms from `from` (exclusive) to `to` (inclusive),
/// returning all outputs.
fn tick_until<R: Rng>(e: &mut NodeEngine<R>, from: Instant, to: Instant) -> Vec<Output> {
    let mut out = vec![];
    let mut t = from;
    while t < to {
        t = (t + ms(10)).min(to);
        out.extend(e.handle(Input::Tick, t));
    }
    out
}

fn non_sends(out: &[Output]) -> Vec<Output> {
    out.iter()
        .filter(|o| !matches!(o, Output::Send { .. }))
        .cloned()
        .collect()
}

#[test]
fn first_tick_sends_a_heartbeat_to_multicast_and_seeds() {
    let t0 = Instant::now();
    let mut c = cfg(4);
    c.use_seeds = true;
    c.roles = vec![Role::Control, Role::Agent, Role::Control];
    let mut e = NodeEngine::new(c, 3, ChaCha8Rng::seed_from_u64(0));
    let hb = Message::Heartbeat(Heartbeat {
        from: NodeId(4),
        incarnation: 1,
        seq: 1,
        tcp_addr: addr(4),
        roles: vec![Role::Agent, Role::Control],
        highest_epoch: 3,
        control: None,
        as_control: None,
        load: LoadSummary::default(),
    });
    assert_eq!(
        e.handle(Input::Tick, t0),
        vec![
            Output::Send {
                dest: Dest::Multicast,
                msg: hb.clone()
            },
            Output::Send {
                dest: Dest::Seeds,
                msg: hb
            },
        ]
    );
    // Nothing until the interval has passed.
    assert_eq!(e.handle(Input::Tick, t0 + ms(99)), vec![]);
    let out = e.handle(Input::Tick, t0 + ms(100));
    assert!(matches!(&out[0], Output::Send { msg: Message::Heartbeat(h), .. } if h.seq == 2));
}

#[test]
fn lone_node_claims_after_listening_and_acts_after_rebuild() {
    let t0 = Instant::now();
    let mut e = engine(1, 7);
    e.handle(Input::Tick, t0);
    // Listening (400 ms) plus backoff (at most 300 ms): claimed by 710 ms, not before 400.
    let out = tick_until(&mut e, t0, t0 + ms(390));
    assert!(non_sends(&out).is_empty(), "{out:?}");
    let out = tick_until(&mut e, t0 + ms(390), t0 + ms(720));
    let claim = Message::Claim(Claim {
        from: NodeId(1),
        incarnation: 1,
        seq: out
            .iter()
            .find_map(|o| match o {
                Output::Send {
                    msg: Message::Claim(c),
                    ..
                } => Some(c.seq),
                _ => None,
            })
            .expect("a claim was sent"),
        epoch: 1,
    });
    let i = out
        .iter()
        .position(|o| *o == Output::PersistEpoch(1))
        .unwrap();
    assert_eq!(
        out[i..i + 4],
        [
            Output::PersistEpoch(1),
            Output::Send {
                dest: Dest::Multicast,
                msg: claim
            },
            Output::BecomeControl { epoch: 1 },
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(1),
                epoch: 1
            })),
        ]
    );
    assert!(e.is_control());
    assert!(!e.may_act(t0 + ms(720)), "rebuilding");
    assert_eq!(e.acting_lease(t0 + ms(720)), ActingLease::default());
    assert_eq!(
        e.handle(Input::RebuildDone { epoch: 1 }, t0 + ms(725)),
        vec![Output::ControlActing {
            epoch: 1,
            acting: true
        }]
    );
    // Available mode: acting has no limit in time.
    assert_eq!(
        e.acting_lease(t0 + ms(725)),
        ActingLease {
            epoch: Some(1),
            until: None
        }
    );
    // Its heartbeats now assert Control.
    let out = tick_until(&mut e, t0 + ms(725), t0 + ms(900));
    assert!(out.iter().any(|o| matches!(o,
        Output::Send { msg: Message::Heartbeat(h), .. }
            if h.as_control == Some(ControlAssert { established_epoch: 1, epoch: 1 }))));
}

#[test]
fn follower_adopts_a_claim_and_stops_waiting() {
    let t0 = Instant::now();
    let mut e = engine(2, 1);
    e.handle(Input::Tick, t0);
    assert_eq!(
        e.handle(Input::Received(heartbeat(1, 1, None)), t0 + ms(5)),
        vec![Output::MemberUp(NodeId(1))]
    );
    let claim = Message::Claim(Claim {
        from: NodeId(1),
        incarnation: 1,
        seq: 2,
        epoch: 5,
    });
    assert_eq!(
        e.handle(Input::Received(claim.clone()), t0 + ms(10)),
        vec![
            Output::PersistEpoch(5),
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(1),
                epoch: 5
            })),
        ]
    );
    // The same claim again is a duplicate (or a replay of a recent one): dropped.
    assert_eq!(
        e.handle(Input::Received(claim), t0 + ms(11)),
        vec![Output::Dropped {
            from: NodeId(1),
            reason: DropReason::Duplicate
        }]
    );
    assert_eq!(e.counters().duplicates, 1);
    assert_eq!(e.highest_epoch(), 5);
    // Keeps following while node 1's heartbeats assert Control: never claims.
    let mut out = vec![];
    for i in 1..30u64 {
        let t = t0 + ms(10 + i * 100);
        out.extend(e.handle(Input::Received(heartbeat(1, 2 + i, Some((5, 5)))), t));
        out.extend(tick_until(&mut e, t, t + ms(100)));
    }
    assert!(non_sends(&out).is_empty(), "{:?}", non_sends(&out));
}

#[test]
fn control_loss_is_detected_then_a_new_epoch_is_claimed() {
    let t0 = Instant::now();
    let mut e = engine(2, 3);
    e.handle(Input::Tick, t0);
    e.handle(Input::Received(heartbeat(1, 1, Some((4, 4)))), t0);
    let last = t0 + ms(100);
    e.handle(Input::Received(heartbeat(1, 2, Some((4, 4)))), last);
    assert_eq!(
        e.control(),
        Some(ControlInfo {
            node_id: NodeId(1),
            epoch: 4
        })
    );
    // Silence: Down just after 400 ms.
    let out = tick_until(&mut e, last, last + ms(400));
    assert!(non_sends(&out).is_empty());
    let out = tick_until(&mut e, last + ms(400), last + ms(410));
    assert_eq!(
        non_sends(&out),
        vec![Output::MemberDown(NodeId(1)), Output::ControlChanged(None)]
    );
    // Backoff at most 300 ms, then claim epoch 5.
    let out = tick_until(&mut e, last + ms(410), last + ms(720));
    assert_eq!(
        non_sends(&out),
        vec![
            Output::PersistEpoch(5),
            Output::BecomeControl { epoch: 5 },
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(2),
                epoch: 5
            })),
        ]
    );
    let members = e.members();
    assert_eq!(members.len(), 1);
    assert!(!members[0].alive);
    assert_eq!(members[0].last_heard, last);
}

#[test]
fn own_and_stale_incarnation_datagrams_are_dropped() {
    let t0 = Instant::now();
    let mut e = engine(1, 0);
    assert_eq!(
        e.handle(Input::Received(heartbeat(1, 1, None)), t0),
        vec![Output::Dropped {
            from: NodeId(1),
            reason: DropReason::Own
        }]
    );
    let mut newer = heartbeat(2, 1, None);
    if let Message::Heartbeat(h) = &mut newer {
        h.incarnation = 2;
    }
    assert_eq!(
        e.handle(Input::Received(newer), t0),
        vec![Output::MemberUp(NodeId(2))]
    );
    assert_eq!(
        e.handle(Input::Received(heartbeat(2, 99, None)), t0),
        vec![Output::Dropped {
            from: NodeId(2),
            reason: DropReason::StaleIncarnation
        }]
    );
    let c = e.counters();
    assert_eq!((c.own, c.stale_incarnation, c.accepted), (1, 1, 1));
}

#[test]
fn younger_control_steps_down_when_it_hears_the_older_one() {
    let t0 = Instant::now();
    // n2 became Control at epoch 6 (alone); then it hears n1, Control since 5, now at 7.
    let mut e = NodeEngine::new(cfg(2), 5, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    tick_until(&mut e, t0, t0 + ms(800));
    assert!(e.is_control());
    assert_eq!(e.highest_epoch(), 6);
    e.handle(Input::RebuildDone { epoch: 6 }, t0 + ms(800));
    let out = e.handle(Input::Received(heartbeat(1, 1, Some((5, 7)))), t0 + ms(805));
    assert_eq!(
        out,
        vec![
            Output::MemberUp(NodeId(1)),
            Output::PersistEpoch(7),
            Output::StepDown {
                epoch: 6,
                reason: StepDownReason::YoungerThan {
                    other: NodeId(1),
                    established_epoch: 5
                }
            },
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(1),
                epoch: 7
            })),
            Output::ControlActing {
                epoch: 6,
                acting: false
            },
        ]
    );
    // Its next heartbeat (sent at once) no longer asserts Control.
    let out = e.handle(Input::Tick, t0 + ms(810));
    assert!(
        matches!(&out[..], [Output::Send { msg: Message::Heartbeat(h), .. }]
        if h.as_control.is_none() && h.control == Some(ControlView { node_id: NodeId(1), established_epoch: 5, epoch: 7 }))
    );
}

#[test]
fn older_control_reasserts_above_the_younger() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(cfg(1), 4, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    tick_until(&mut e, t0, t0 + ms(800));
    assert_eq!(e.control().map(|c| c.epoch), Some(5));
    e.handle(Input::RebuildDone { epoch: 5 }, t0 + ms(800));
    let out = e.handle(Input::Received(heartbeat(2, 1, Some((6, 6)))), t0 + ms(805));
    assert_eq!(
        out,
        vec![
            Output::MemberUp(NodeId(2)),
            Output::PersistEpoch(6),
            Output::PersistEpoch(7),
            Output::Reasserted { epoch: 7 },
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(1),
                epoch: 7
            })),
            Output::ControlActing {
                epoch: 7,
                acting: true
            },
        ]
    );
    // Still established at 5 in its heartbeats.
    let out = e.handle(Input::Tick, t0 + ms(806));
    assert!(
        matches!(&out[..], [Output::Send { msg: Message::Heartbeat(h), .. }]
        if h.as_control == Some(ControlAssert { established_epoch: 5, epoch: 7 }))
    );
}

#[test]
fn paused_zombie_control_steps_down_and_its_epoch_is_fenced() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(cfg(1), 4, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    tick_until(&mut e, t0, t0 + ms(800));
    e.handle(Input::RebuildDone { epoch: 5 }, t0 + ms(800));
    assert!(e.may_act(t0 + ms(800)));
    // SIGSTOP for 2 s: no input at all. Meanwhile the others elected n2 at epoch 6; an
    // agent's fence saw it.
    // Before the engine is fed again, the Control actor asking may_act gets false.
    assert!(!e.may_act(t0 + ms(2800)));
    let mut agent_fence = Fence::new(5);
    assert_eq!(agent_fence.admit(6), Ok(true));
    let resume = t0 + ms(2800);
    let out = e.handle(Input::Tick, resume);
    assert_eq!(
        non_sends(&out),
        vec![
            Output::StepDown {
                epoch: 5,
                reason: StepDownReason::Paused { gap: ms(2000) }
            },
            Output::ControlChanged(None),
            Output::ControlActing {
                epoch: 5,
                acting: false
            },
        ]
    );
    assert!(
        matches!(out.last(), Some(Output::Send { msg: Message::Heartbeat(h), .. })
        if h.as_control.is_none())
    );
    assert_eq!(e.counters().pauses, 1);
    // A command the zombie issued at epoch 5 is refused where it would execute.
    assert!(agent_fence.check(5).is_err());
    // It now follows the new Control.
    let out = e.handle(
        Input::Received(heartbeat(2, 1, Some((6, 6)))),
        resume + ms(50),
    );
    assert_eq!(
        out,
        vec![
            Output::MemberUp(NodeId(2)),
            Output::PersistEpoch(6),
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(2),
                epoch: 6
            })),
        ]
    );
}

#[test]
fn paused_follower_does_not_declare_everyone_dead() {
    let t0 = Instant::now();
    let mut e = engine(3, 0);
    e.handle(Input::Tick, t0);
    e.handle(Input::Received(heartbeat(1, 1, Some((1, 1)))), t0);
    e.handle(Input::Received(heartbeat(2, 1, None)), t0);
    // Paused 3 s, then the buffered heartbeats of the others arrive right after resuming.
    let out = e.handle(Input::Tick, t0 + ms(3000));
    assert!(non_sends(&out).is_empty(), "{out:?}");
    let out = e.handle(
        Input::Received(heartbeat(1, 2, Some((1, 1)))),
        t0 + ms(3001),
    );
    assert!(out.is_empty(), "{out:?}");
    assert!(e.members().iter().all(|m| m.alive));
}

// ---------- a small direct-delivery net of engines ----------

struct Net {
    nodes: Vec<NodeEngine<ChaCha8Rng>>,
    /// Per-node clock offset: each node lives in its own monotonic clock domain.
    offsets: Vec<Duration>,
    base: Instant,
    now: Duration,
    /// `side[i]`: partition side of node i; messages cross only within a side.
    side: Vec<u8>,
    outputs: Vec<Vec<Output>>,
    /// Majority mode: a model of the desired-state log's Raft leadership (see `raft_step`).
    raft: Option<RaftModel>,
}

/// Raft leadership as the engine sees it, modelled: a leader keeps its quorum lease while
/// its side holds a majority (renewed every tick, 100 ms long); without a leader in the
/// majority side for 500 ms (openraft's leader lease plus an election timeout) the lowest
/// node of that side leads. A cut-off leader is told it no longer leads only once it is
/// back with the majority (as openraft learns of a higher term).
struct RaftModel {
    leader: Option<usize>,
    leaderless: Duration,
    /// Nodes told they lead that have not been told otherwise.
    believing: BTreeSet<usize>,
}

impl Net {
    fn new(n: u64, seed: u64, offsets: Vec<Duration>, mode: Mode) -> Self {
        let nodes = (1..=n)
            .map(|i| {
                let mut c = cfg(i);
                c.election.mode = mode.clone();
                NodeEngine::new(c, 0, ChaCha8Rng::seed_from_u64(seed * 1000 + i))
            })
            .collect();
        Net {
            nodes,
            offsets,
            base: Instant::now(),
            now: Duration::ZERO,
            side: vec![0; n as usize],
            outputs: vec![vec![]; n as usize],
            raft: mode.is_majority().then_some(RaftModel {
                leader: None,
                leaderless: Duration::ZERO,
                believing: BTreeSet::new(),
            }),
        }
    }

    /// One tick of the Raft model: the leadership inputs it delivers.
    fn raft_step(&mut self) -> Vec<(usize, Input)> {
        let n = self.nodes.len();
        let majority = (0..=u8::MAX).find(|s| self.side.iter().filter(|x| *x == s).count() > n / 2);
        let Some(raft) = self.raft.as_mut() else {
            return vec![];
        };
        let mut inputs = vec![];
        let in_majority = |i: usize| Some(self.side[i]) == majority;
        if raft.leader.is_some_and(|l| !in_majority(l)) || raft.leader.is_none() {
            raft.leaderless += ms(10);
            if raft.leaderless >= ms(500)
                && let Some(l) = (0..n).find(|i| in_majority(*i))
            {
                raft.leader = Some(l);
                raft.leaderless = Duration::ZERO;
            }
        }
        for i in raft.believing.clone() {
            if Some(i) != raft.leader && in_majority(i) {
                raft.believing.remove(&i);
                inputs.push((i, Input::Leadership(Leadership::default())));
            }
        }
        if let Some(l) = raft.leader.filter(|l| in_majority(*l)) {
            raft.believing.insert(l);
            let lease_until = Some(self.base + self.offsets[l] + self.now + ms(100));
            inputs.push((
                l,
                Input::Leadership(Leadership {
                    leader: true,
                    lease_until,
                }),
            ));
        }
        inputs
    }

    fn at(&self, i: usize) -> Instant {
        self.base + self.offsets[i] + self.now
    }

    /// Runs `d` of time in 10 ms ticks, delivering every send at once within a side, and
    /// completing rebuilds at once.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += ms(10);
            let mut queue: Vec<(usize, Input)> =
                (0..self.nodes.len()).map(|i| (i, Input::Tick)).collect();
            queue.extend(self.raft_step());
            while let Some((i, input)) = queue.pop() {
                let now = self.at(i);
                let out = self.nodes[i].handle(input, now);
                for o in &out {
                    match o {
                        Output::Send { msg, .. } => {
                            for j in 0..self.nodes.len() {
                                if j != i && self.side[j] == self.side[i] {
                                    queue.push((j, Input::Received(msg.clone())));
                                }
                            }
                        }
                        Output::BecomeControl { epoch } => {
                            queue.push((i, Input::RebuildDone { epoch: *epoch }))
                        }
                        _ => {}
                    }
                }
                self.outputs[i].extend(out);
            }
        }
    }

    fn controls(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_control())
            .collect()
    }

    fn views(&self) -> Vec<Option<ControlInfo>> {
        self.nodes.iter().map(|n| n.control()).collect()
    }
}

#[test]
fn three_nodes_elect_one_control_that_everyone_sees() {
    let mut net = Net::new(3, 1, vec![Duration::ZERO; 3], Mode::Available);
    net.run(ms(1500));
    let c = net.controls();
    assert_eq!(c.len(), 1, "{:?}", net.views());
    let view = net.nodes[c[0]].control();
    assert!(net.views().iter().all(|v| *v == view));
    assert_eq!(view.unwrap().epoch, 1);
}

#[test]
fn partition_then_heal_leaves_the_older_control_at_a_higher_epoch() {
    let mut net = Net::new(4, 2, vec![Duration::ZERO; 4], Mode::Available);
    net.run(ms(1500));
    let first = net.controls()[0];
    let e1 = net.nodes[first].control().unwrap().epoch;
    // Cut the Control and one other node away from the rest.
    let other = (first + 1) % 4;
    net.side = vec![1; 4];
    net.side[first] = 0;
    net.side[other] = 0;
    net.run(ms(1500));
    let controls = net.controls();
    assert_eq!(controls.len(), 2, "one Control per side: {:?}", net.views());
    let second = *controls.iter().find(|c| **c != first).unwrap();
    let e2 = net.nodes[second].control().unwrap().epoch;
    assert!(e2 > e1);
    net.side = vec![0; 4];
    net.run(ms(500));
    assert_eq!(net.controls(), vec![first], "the older Control survives");
    let final_epoch = net.nodes[first].control().unwrap().epoch;
    assert!(final_epoch > e2, "re-asserted above the younger's epoch");
    assert!(
        net.views()
            .iter()
            .all(|v| v.map(|c| c.node_id) == Some(NodeId(first as u64 + 1))
                && v.unwrap().epoch == final_epoch)
    );
    assert!(net.outputs[second].iter().any(|o| matches!(o,
        Output::StepDown { reason: StepDownReason::YoungerThan { .. }, epoch } if *epoch == e2)));
}

/// Wall-clock jumps cannot matter: the engine takes no wall-clock time at all, only the
/// monotonic instants passed in, and no absolute time crosses the wire. Run the same
/// scenario with every node in a different clock domain (offsets up to ten years) and check
/// that every node emits exactly the same outputs.
#[test]
fn clock_domains_of_nodes_do_not_change_any_output() {
    let year = Duration::from_secs(365 * 24 * 3600);
    let run = |offsets: Vec<Duration>| {
        let mut net = Net::new(3, 9, offsets, Mode::Available);
        net.run(ms(1200));
        let c = net.controls()[0];
        net.side = vec![1; 3];
        net.side[c] = 0;
        net.run(ms(1200));
        net.side = vec![0; 3];
        net.run(ms(600));
        net.outputs
    };
    let same = run(vec![Duration::ZERO; 3]);
    let skewed = run(vec![Duration::ZERO, 10 * year, year / 3]);
    assert_eq!(same, skewed);
    assert!(
        same.iter()
            .flatten()
            .any(|o| matches!(o, Output::StepDown { .. }))
    );
}

#[test]
fn majority_mode_minority_control_never_acts() {
    let members: BTreeSet<NodeId> = (1..=3).map(NodeId).collect();
    let mode = Mode::Majority { members };
    let mut net = Net::new(3, 4, vec![Duration::ZERO; 3], mode);
    net.run(ms(2000));
    let c = net.controls();
    assert_eq!(c.len(), 1);
    let first = c[0];
    let t = net.at(first);
    assert!(net.nodes[first].may_act(t), "leads with a quorum");
    // Isolate the Control: its quorum lease lapses and it stops acting, then steps down;
    // the majority side elects a new leader, which claims and acts. Never two acting.
    net.side = vec![1; 3];
    net.side[first] = 0;
    for _ in 0..200 {
        net.run(ms(10));
        let acting = (0..3).filter(|i| net.nodes[*i].may_act(net.at(*i))).count();
        assert!(acting <= 1, "two acting Controls");
    }
    assert!(
        net.outputs[first]
            .iter()
            .any(|o| matches!(o, Output::ControlActing { acting: false, .. }))
    );
    assert!(net.outputs[first].iter().any(|o| matches!(
        o,
        Output::StepDown {
            reason: StepDownReason::NotLeading,
            ..
        }
    )));
    assert!(!net.nodes[first].may_act(net.at(first)));
    let acting: Vec<usize> = (0..3)
        .filter(|i| net.nodes[*i].may_act(net.at(*i)))
        .collect();
    assert_eq!(acting.len(), 1);
    assert_ne!(acting[0], first);
    // Heal: the old Control stays a follower, one Control for everyone.
    net.side = vec![0; 3];
    for _ in 0..100 {
        net.run(ms(10));
        let acting = (0..3).filter(|i| net.nodes[*i].may_act(net.at(*i))).count();
        assert!(acting <= 1, "two acting Controls");
    }
    assert_eq!(net.controls(), acting);
    assert!(
        net.views()
            .iter()
            .all(|v| v.map(|v| v.node_id) == Some(NodeId(acting[0] as u64 + 1)))
    );
}

#[test]
fn leaving_control_hands_over_without_waiting_for_the_detector() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(cfg(1), 4, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    tick_until(&mut e, t0, t0 + ms(800));
    e.handle(Input::RebuildDone { epoch: 5 }, t0 + ms(800));
    // Three live members that may be Control; two of them say they hear it: it names the
    // lower id of those (n4, which just started and has not heard it yet, would not
    // believe the handover).
    let following = |n: u64| {
        let mut m = heartbeat(n, 1, None);
        if let Message::Heartbeat(h) = &mut m {
            h.control = Some(ControlView {
                node_id: NodeId(1),
                established_epoch: 5,
                epoch: 5,
            });
        }
        m
    };
    e.handle(Input::Received(following(3)), t0 + ms(800));
    e.handle(Input::Received(heartbeat(4, 1, None)), t0 + ms(800));
    e.handle(Input::Received(following(2)), t0 + ms(800));
    let out = e.handle(Input::Leave, t0 + ms(801));
    assert_eq!(
        non_sends(&out),
        vec![
            Output::StepDown {
                epoch: 5,
                reason: StepDownReason::Leaving
            },
            Output::ControlChanged(None),
            Output::ControlActing {
                epoch: 5,
                acting: false
            },
        ]
    );
    let sent: Vec<Message> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                dest: Dest::Multicast,
                msg,
            } => Some(msg.clone()),
            _ => None,
        })
        .collect();
    let [handover, last] = &sent[..] else {
        panic!("a handover and one last heartbeat: {sent:?}")
    };
    assert!(
        matches!(handover, Message::Handover(h) if h.epoch == 5 && h.successor == Some(NodeId(2))),
        "{handover:?}"
    );
    assert!(matches!(last, Message::Heartbeat(h) if h.as_control.is_none()));
    // Silent afterwards (no sends), and never claims again.
    let after = tick_until(&mut e, t0 + ms(801), t0 + ms(3000));
    assert!(
        after.iter().all(|o| matches!(o, Output::MemberDown(_))),
        "{after:?}"
    );

    let follower = |n: u64| {
        let mut f = engine(n, 5);
        f.handle(Input::Tick, t0);
        for i in 0..8u64 {
            let t = t0 + ms(i * 100);
            f.handle(Input::Received(heartbeat(1, i + 1, Some((5, 5)))), t);
            tick_until(&mut f, t, t + ms(100));
        }
        assert_eq!(f.control().map(|c| c.node_id), Some(NodeId(1)));
        f
    };
    // The successor claims on receipt: no detection, no backoff.
    let mut s = follower(2);
    let out = s.handle(Input::Received(handover.clone()), t0 + ms(802));
    assert!(out.contains(&Output::BecomeControl { epoch: 6 }), "{out:?}");
    assert_eq!(s.counters().took_over, 1);
    // Another member holds its own claim for the dead time, so the successor's
    // wins; it follows the successor's claim when it arrives.
    let mut o = follower(3);
    o.handle(Input::Received(handover.clone()), t0 + ms(802));
    o.handle(Input::Received(last.clone()), t0 + ms(802));
    let out = tick_until(&mut o, t0 + ms(802), t0 + ms(1100));
    assert!(
        !out.iter()
            .any(|x| matches!(x, Output::BecomeControl { .. })),
        "{out:?}"
    );
    let claim = Message::Claim(Claim {
        from: NodeId(2),
        incarnation: 1,
        seq: 100,
        epoch: 6,
    });
    o.handle(Input::Received(claim), t0 + ms(1100));
    assert_eq!(o.control().map(|c| c.node_id), Some(NodeId(2)));
    // Without the handover (an older peer), the last heartbeat alone still starts an
    // election after the backoff only.
    let mut f = follower(3);
    assert_eq!(
        f.handle(Input::Received(last.clone()), t0 + ms(802)),
        vec![Output::ControlChanged(None)]
    );
    let out = tick_until(&mut f, t0 + ms(802), t0 + ms(1110));
    assert!(out.contains(&Output::BecomeControl { epoch: 6 }), "{out:?}");
}

/// A Control that handed over is down at once; its trailing heartbeat of the same life is
/// dropped, and its next life is a member again.
#[test]
fn a_departed_control_stays_down_until_its_next_life() {
    let t0 = Instant::now();
    let mut f = engine(2, 5);
    f.handle(Input::Tick, t0);
    f.handle(Input::Received(heartbeat(1, 1, Some((5, 5)))), t0);
    let handover = Message::Handover(Handover {
        from: NodeId(1),
        incarnation: 1,
        seq: 2,
        epoch: 5,
        successor: Some(NodeId(3)),
    });
    let out = f.handle(Input::Received(handover), t0 + ms(1));
    assert!(out.contains(&Output::MemberDown(NodeId(1))), "{out:?}");
    assert_eq!(
        f.handle(Input::Received(heartbeat(1, 3, None)), t0 + ms(2)),
        vec![Output::Dropped {
            from: NodeId(1),
            reason: DropReason::Left
        }]
    );
    let mut reborn = heartbeat(1, 1, None);
    if let Message::Heartbeat(h) = &mut reborn {
        h.incarnation = 2;
    }
    let out = f.handle(Input::Received(reborn), t0 + ms(3));
    assert!(out.contains(&Output::MemberUp(NodeId(1))), "{out:?}");
}

/// A handover is believed only from the node asserting Control: a follower's (or a
/// forged one in a follower's name) changes nothing.
#[test]
fn a_handover_from_a_follower_is_ignored() {
    let t0 = Instant::now();
    let mut f = engine(2, 5);
    f.handle(Input::Tick, t0);
    f.handle(Input::Received(heartbeat(1, 1, Some((5, 5)))), t0);
    f.handle(Input::Received(heartbeat(3, 1, None)), t0);
    let forged = Message::Handover(Handover {
        from: NodeId(3),
        incarnation: 1,
        seq: 2,
        epoch: 5,
        successor: Some(NodeId(2)),
    });
    assert_eq!(f.handle(Input::Received(forged), t0 + ms(1)), vec![]);
    assert_eq!(f.control().map(|c| c.node_id), Some(NodeId(1)));
    assert_eq!(f.counters().took_over, 0);
}

#[test]
fn a_fast_restart_is_reported_even_without_a_down() {
    let t0 = Instant::now();
    let mut e = engine(2, 0);
    e.handle(Input::Tick, t0);
    e.handle(Input::Received(heartbeat(1, 50, Some((3, 3)))), t0);
    let mut reborn = heartbeat(1, 1, None);
    if let Message::Heartbeat(h) = &mut reborn {
        h.incarnation = 2;
    }
    assert_eq!(
        e.handle(Input::Received(reborn), t0 + ms(150)),
        vec![
            Output::MemberRestarted {
                node: NodeId(1),
                incarnation: 2
            },
            Output::ControlChanged(None),
        ]
    );
    assert_eq!(e.members()[0].incarnation, 2);
}

#[test]
fn heartbeat_cadence_follows_the_schedule_not_the_tick_granularity() {
    let t0 = Instant::now();
    let mut e = engine(1, 0);
    let mut sent_at = vec![];
    // Ticks every 30 ms: heartbeats still average one per 100 ms.
    for i in 0..100u64 {
        let t = t0 + ms(i * 30);
        for o in e.handle(Input::Tick, t) {
            if matches!(
                o,
                Output::Send {
                    msg: Message::Heartbeat(_),
                    ..
                }
            ) {
                sent_at.push(i * 30);
            }
        }
    }
    // 3 s of ticks → 30 heartbeats (0, 100, ..., 2900 rounded up to the next tick).
    assert_eq!(sent_at.len(), 30, "{sent_at:?}");
    assert!(sent_at.windows(2).all(|w| w[1] - w[0] <= 120));
}

/// The shell runs under tokio; in its tests time is paused and advanced by hand. The engine
/// works the same with `tokio::time::Instant::now()` of a paused runtime.
#[tokio::test(start_paused = true)]
async fn works_under_paused_tokio_time() {
    let start = Instant::now();
    let mut e = engine(1, 11);
    let mut became = None;
    for _ in 0..100 {
        for o in e.handle(Input::Tick, Instant::now()) {
            if let Output::BecomeControl { epoch } = o {
                became = Some((epoch, Instant::now() - start));
            }
        }
        tokio::time::advance(ms(10)).await;
    }
    let (epoch, after) = became.expect("claimed");
    assert_eq!(epoch, 1);
    assert!(after >= ms(400) && after <= ms(710), "{after:?}");
}

#[test]
fn simultaneous_claims_resolve_to_the_lower_node_id_at_a_higher_epoch() {
    let t0 = Instant::now();
    let mk = |n| {
        let mut c = cfg(n);
        c.election.backoff = Duration::ZERO;
        NodeEngine::new(c, 2, ChaCha8Rng::seed_from_u64(n))
    };
    let (mut a, mut b) = (mk(1), mk(2));
    // Both start together, hear nothing, and claim epoch 3 in the same tick.
    let claims: Vec<Vec<Message>> = [&mut a, &mut b]
        .into_iter()
        .map(|e| {
            e.handle(Input::Tick, t0);
            tick_until(e, t0, t0 + ms(410))
                .into_iter()
                .filter_map(|o| match o {
                    Output::Send { msg, .. } => Some(msg),
                    _ => None,
                })
                .collect()
        })
        .collect();
    assert!(a.is_control() && b.is_control());
    let now = t0 + ms(411);
    let mut out_b = vec![];
    for m in &claims[0] {
        out_b.extend(b.handle(Input::Received(m.clone()), now));
    }
    assert_eq!(
        non_sends(&out_b),
        vec![
            Output::MemberUp(NodeId(1)),
            Output::StepDown {
                epoch: 3,
                reason: StepDownReason::YoungerThan {
                    other: NodeId(1),
                    established_epoch: 3
                }
            },
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(1),
                epoch: 3
            })),
        ]
    );
    let mut out_a = vec![];
    for m in &claims[1] {
        out_a.extend(a.handle(Input::Received(m.clone()), now));
    }
    assert_eq!(
        non_sends(&out_a),
        vec![
            Output::MemberUp(NodeId(2)),
            Output::PersistEpoch(4),
            Output::Reasserted { epoch: 4 },
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(1),
                epoch: 4
            })),
        ]
    );
}

#[test]
fn majority_control_claims_acts_and_stops_by_raft_leadership() {
    let t0 = Instant::now();
    let mut c = cfg(1);
    c.election.mode = Mode::Majority {
        members: (1..=3).map(NodeId).collect(),
    };
    let mut e = NodeEngine::new(c, 0, ChaCha8Rng::seed_from_u64(2));
    e.handle(Input::Tick, t0);
    let out = tick_until(&mut e, t0, t0 + ms(1000));
    assert!(
        non_sends(&out).is_empty(),
        "no backoff claim in majority mode"
    );
    let lead = |until: Instant| {
        Input::Leadership(Leadership {
            leader: true,
            lease_until: Some(until),
        })
    };
    let at = t0 + ms(1000);
    let out = e.handle(lead(at + ms(100)), at);
    assert_eq!(
        non_sends(&out),
        vec![
            Output::PersistEpoch(1),
            Output::BecomeControl { epoch: 1 },
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(1),
                epoch: 1
            })),
        ]
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Send { msg: Message::Claim(c), .. } if c.epoch == 1))
    );
    assert_eq!(
        e.handle(Input::RebuildDone { epoch: 1 }, at),
        vec![Output::ControlActing {
            epoch: 1,
            acting: true
        }]
    );
    // What the Control reads before each decision: valid exactly until Raft's quorum lease
    // ends, whether or not the engine is fed meanwhile (a pause).
    let lease = e.acting_lease(at);
    assert_eq!(lease.epoch, Some(1));
    let until = lease.until.expect("majority mode has a limit");
    assert_eq!(Instant::from_std(until), at + ms(100));
    assert!(lease.valid(1, until - ms(1)));
    assert!(!lease.valid(1, until), "not at the instant it lapses");
    assert!(!lease.valid(2, at.into_std()), "another epoch");
    // Renewed by the next acknowledgement; lapses when none comes.
    e.handle(lead(at + ms(150)), at + ms(50));
    assert!(e.may_act(at + ms(149)));
    let out = tick_until(&mut e, at + ms(50), at + ms(160));
    assert_eq!(
        non_sends(&out),
        vec![Output::ControlActing {
            epoch: 1,
            acting: false
        }]
    );
    assert!(e.is_control(), "still Control, only not acting");
    // Raft says another node leads: step down at once.
    let out = e.handle(Input::Leadership(Leadership::default()), at + ms(170));
    assert_eq!(
        non_sends(&out),
        vec![
            Output::StepDown {
                epoch: 1,
                reason: StepDownReason::NotLeading
            },
            Output::ControlChanged(None),
        ]
    );
}

/// In majority mode the named successor asks Raft for an election instead of claiming.
#[test]
fn majority_successor_asks_raft_for_an_election() {
    let t0 = Instant::now();
    let mut c = cfg(2);
    c.election.mode = Mode::Majority {
        members: (1..=3).map(NodeId).collect(),
    };
    let mut e = NodeEngine::new(c, 4, ChaCha8Rng::seed_from_u64(2));
    e.handle(Input::Tick, t0);
    let mut hb = heartbeat(1, 1, None);
    if let Message::Heartbeat(h) = &mut hb {
        h.as_control = Some(ControlAssert {
            established_epoch: 4,
            epoch: 4,
        });
    }
    e.handle(Input::Received(hb), t0 + ms(10));
    let out = e.handle(
        Input::Received(Message::Handover(Handover {
            from: NodeId(1),
            incarnation: 1,
            seq: 2,
            epoch: 4,
            successor: Some(NodeId(2)),
        })),
        t0 + ms(20),
    );
    assert!(out.contains(&Output::ElectNow), "{out:?}");
    assert!(!e.is_control(), "claims only once it leads");
}

fn reporting(from: u64, seq: u64, sees: Option<(u64, Epoch, Epoch)>) -> Message {
    let mut m = heartbeat(from, seq, None);
    if let Message::Heartbeat(h) = &mut m {
        h.control = sees.map(|(n, est, e)| ControlView {
            node_id: NodeId(n),
            established_epoch: est,
            epoch: e,
        });
        h.highest_epoch = sees.map_or(0, |(_, _, e)| e);
    }
    m
}

#[test]
fn a_control_reported_by_live_members_is_followed_even_if_we_cannot_hear_it() {
    let t0 = Instant::now();
    let mut e = engine(3, 0);
    e.handle(Input::Tick, t0);
    let mut out = vec![];
    // n1 (Control, epoch 2) and n2 heard for a while.
    for i in 0..5u64 {
        let t = t0 + ms(i * 100);
        out.extend(e.handle(Input::Received(heartbeat(1, i + 1, Some((2, 2)))), t));
        out.extend(e.handle(Input::Received(reporting(2, i + 1, Some((1, 2, 2)))), t));
        out.extend(tick_until(&mut e, t, t + ms(100)));
    }
    // The n1-n3 link breaks; n2 still hears n1 and says so.
    let mut after = vec![];
    for i in 5..30u64 {
        let t = t0 + ms(i * 100);
        after.extend(e.handle(Input::Received(reporting(2, i + 1, Some((1, 2, 2)))), t));
        after.extend(tick_until(&mut e, t, t + ms(100)));
    }
    assert_eq!(non_sends(&after), vec![Output::MemberDown(NodeId(1))]);
    assert_eq!(
        e.control(),
        Some(ControlInfo {
            node_id: NodeId(1),
            epoch: 2
        })
    );
    // Once n1 is Down for us, our heartbeats never pass the second-hand knowledge on.
    let down = after
        .iter()
        .position(|o| *o == Output::MemberDown(NodeId(1)))
        .unwrap();
    let later: Vec<&Heartbeat> = after[down..]
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                msg: Message::Heartbeat(h),
                ..
            } => Some(h),
            _ => None,
        })
        .collect();
    assert!(later.len() > 10);
    assert!(later.iter().all(|h| h.control.is_none()));
    // When n2 stops hearing n1 too, we elect.
    let t = t0 + ms(3000);
    assert_eq!(
        e.handle(Input::Received(reporting(2, 40, None)), t),
        vec![Output::ControlChanged(None)]
    );
    let out = tick_until(&mut e, t, t + ms(310));
    assert!(out.contains(&Output::BecomeControl { epoch: 3 }), "{out:?}");
}

#[test]
fn a_younger_control_yields_to_a_reported_older_one_only_once_it_moved_above() {
    let t0 = Instant::now();
    // n2 is Control at epoch 6 (claimed alone).
    let mut e = NodeEngine::new(cfg(2), 5, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    tick_until(&mut e, t0, t0 + ms(800));
    assert_eq!(e.control().map(|c| c.epoch), Some(6));
    // n3 reports hearing n1, older (established 4) but at epoch 5: maybe a Control that
    // just died and n3 has not timed out yet. No step-down for that.
    let out = e.handle(
        Input::Received(reporting(3, 1, Some((1, 4, 5)))),
        t0 + ms(801),
    );
    assert_eq!(out, vec![Output::MemberUp(NodeId(3))]);
    assert!(e.is_control());
    // n1 re-asserted above us (so it is alive): step down and follow it.
    let out = e.handle(
        Input::Received(reporting(3, 2, Some((1, 4, 7)))),
        t0 + ms(802),
    );
    assert_eq!(
        non_sends(&out),
        vec![
            Output::PersistEpoch(7),
            Output::StepDown {
                epoch: 6,
                reason: StepDownReason::YoungerThan {
                    other: NodeId(1),
                    established_epoch: 4
                }
            },
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(1),
                epoch: 7
            })),
        ]
    );
}

#[test]
fn a_restarted_control_actor_is_reasserted_at_a_new_epoch() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(cfg(1), 4, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    tick_until(&mut e, t0, t0 + ms(800));
    e.handle(Input::RebuildDone { epoch: 5 }, t0 + ms(800));
    // The shell restarted its Control actor: a new, persisted epoch, and the Control acts
    // at it (the old incarnation's epoch 5 is fenced by every agent that hears of 6).
    let out = e.handle(Input::Reassert, t0 + ms(801));
    assert_eq!(
        non_sends(&out),
        vec![
            Output::PersistEpoch(6),
            Output::Reasserted { epoch: 6 },
            Output::ControlChanged(Some(ControlInfo {
                node_id: NodeId(1),
                epoch: 6
            })),
            Output::ControlActing {
                epoch: 6,
                acting: true
            },
        ]
    );
    // A follower has nothing to re-assert.
    let mut f = engine(2, 0);
    assert_eq!(f.handle(Input::Reassert, t0), vec![]);
}

/// Regression: "a restarted Control actor never acts again". A rival's claim the Control
/// never heard made it re-assert (6 → 7, acting announced at 7); an agent that heard the
/// heartbeat at 7 before the actor got the new epoch refused the actor's command, and the
/// actor was restarted at 7 with `acting: false`, waiting forever for an announcement that
/// had already been made. The restart now carries the acting state the election has.
#[test]
fn control_fenced_by_its_own_reassertion_restarts_acting() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(cfg(1), 4, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    tick_until(&mut e, t0, t0 + ms(800));
    e.handle(Input::RebuildDone { epoch: 5 }, t0 + ms(800));
    let out = e.handle(Input::Received(heartbeat(2, 1, Some((6, 6)))), t0 + ms(805));
    assert!(out.contains(&Output::Reasserted { epoch: 7 }), "{out:?}");
    // The agent's refusal names 7, our own epoch: restart, acting.
    assert_eq!(
        e.handle(Input::ControlFenced { highest: 7 }, t0 + ms(806)),
        vec![Output::RestartControl {
            epoch: 7,
            acting: true
        }]
    );
    // Same before the rebuild of a fresh claim: restarted, not acting yet.
    let mut f = NodeEngine::new(cfg(1), 4, ChaCha8Rng::seed_from_u64(0));
    f.handle(Input::Tick, t0);
    tick_until(&mut f, t0, t0 + ms(800));
    assert_eq!(
        f.handle(Input::ControlFenced { highest: 5 }, t0 + ms(801)),
        vec![Output::RestartControl {
            epoch: 5,
            acting: false
        }]
    );
}

#[test]
fn control_fenced_by_a_newer_epoch_observes_it_within_the_step() {
    let t0 = Instant::now();
    let mut e = engine(2, 0);
    e.handle(Input::Tick, t0);
    // Not Control: the agent's epoch is persisted, so this node never acts below it.
    assert_eq!(
        non_sends(&e.handle(Input::ControlFenced { highest: 9 }, t0 + ms(1))),
        vec![Output::PersistEpoch(9)]
    );
    assert_eq!(e.highest_epoch(), 9);
    // Beyond the step: an agent's answer must not fence us forever.
    let far = 9 + DEFAULT_MAX_EPOCH_STEP + 1;
    assert_eq!(
        e.handle(Input::ControlFenced { highest: far }, t0 + ms(2)),
        vec![]
    );
    assert_eq!(e.highest_epoch(), 9);
    assert_eq!(e.counters().epoch_jump, 1);
}

// ---- hostile peers (docs/security.md) ----

fn member_cfg(n: u64) -> EngineConfig {
    let mut c = EngineConfig::new(NodeId(n), 1, addr(n), vec![Role::Agent, Role::Control]);
    c.members = [1, 2, 3].map(NodeId).into();
    c
}

fn hb_inc(from: u64, incarnation: Incarnation, seq: u64, ctl: Option<(Epoch, Epoch)>) -> Message {
    let mut m = heartbeat(from, seq, ctl);
    if let Message::Heartbeat(h) = &mut m {
        h.incarnation = incarnation;
    }
    m
}

/// The challenge in `out`, if any.
fn challenge_in(out: &[Output]) -> Option<Challenge> {
    out.iter().find_map(|o| match o {
        Output::Send {
            msg: Message::Challenge(c),
            ..
        } => Some(*c),
        _ => None,
    })
}

/// Verifies `from` at `incarnation` on `e` through the challenge/proof exchange.
fn verify(
    e: &mut NodeEngine<ChaCha8Rng>,
    from: u64,
    incarnation: Incarnation,
    seq: u64,
    now: Instant,
) {
    let out = e.handle(Input::Received(hb_inc(from, incarnation, seq, None)), now);
    // A challenge still fresh is not repeated: answer the one in flight.
    let c = challenge_in(&out)
        .or(e.challenge.map(|(nonce, _, _)| Challenge {
            from: e.cfg.node_id,
            incarnation: 1,
            seq: 0,
            nonce,
        }))
        .expect("a challenge");
    let proof = Message::Proof(Proof {
        from: NodeId(from),
        incarnation,
        seq,
        to: c.from,
        nonce: c.nonce,
    });
    e.handle(Input::Received(proof), now);
}

#[test]
fn a_forged_max_claim_from_a_non_member_is_ignored_and_nothing_is_persisted() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(member_cfg(2), 3, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    let forged = Message::Claim(Claim {
        from: NodeId(99),
        incarnation: 1,
        seq: 1,
        epoch: u64::MAX,
    });
    assert_eq!(
        e.handle(Input::Received(forged), t0),
        vec![Output::Dropped {
            from: NodeId(99),
            reason: DropReason::NotMember
        }]
    );
    assert_eq!(e.counters().not_member, 1);
    assert_eq!(e.highest_epoch(), 3);
}

#[test]
fn a_claim_beyond_the_step_is_dropped_even_from_a_verified_member() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(member_cfg(2), 3, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    verify(&mut e, 1, 7, 10, t0);
    let far = Message::Claim(Claim {
        from: NodeId(1),
        incarnation: 7,
        seq: 11,
        epoch: 3 + DEFAULT_MAX_EPOCH_STEP + 1,
    });
    let out = e.handle(Input::Received(far), t0 + ms(1));
    assert!(
        out.contains(&Output::Dropped {
            from: NodeId(1),
            reason: DropReason::EpochJump
        }),
        "{out:?}"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::PersistEpoch(_))));
    assert_eq!(e.counters().epoch_jump, 1);
    // Within the step it is believed.
    let near = Message::Claim(Claim {
        from: NodeId(1),
        incarnation: 7,
        seq: 12,
        epoch: 3 + DEFAULT_MAX_EPOCH_STEP,
    });
    let out = e.handle(Input::Received(near), t0 + ms(2));
    assert!(
        out.contains(&Output::PersistEpoch(3 + DEFAULT_MAX_EPOCH_STEP)),
        "{out:?}"
    );
}

#[test]
fn a_far_epoch_is_believed_once_a_majority_of_the_others_reports_it_and_blocks_claims_before() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(member_cfg(3), 3, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    verify(&mut e, 1, 7, 10, t0);
    verify(&mut e, 2, 7, 10, t0);
    let far = 5_000;
    let out = e.handle(
        Input::Received(hb_inc(1, 7, 11, Some((far, far)))),
        t0 + ms(1),
    );
    assert!(out.contains(&Output::Dropped {
        from: NodeId(1),
        reason: DropReason::EpochJump
    }));
    // While a member reports an epoch we cannot believe, no claim.
    let out = tick_until(&mut e, t0 + ms(1), t0 + ms(300));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::BecomeControl { .. }))
    );
    let out = e.handle(
        Input::Received(hb_inc(2, 7, 11, Some((far, far)))),
        t0 + ms(301),
    );
    assert!(out.contains(&Output::PersistEpoch(far)), "{out:?}");
}

#[test]
fn a_forged_max_incarnation_evicts_no_one_and_the_members_proof_exposes_it() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(member_cfg(2), 3, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    verify(&mut e, 1, 7, 10, t0);
    e.handle(Input::Received(hb_inc(1, 7, 11, Some((4, 4)))), t0 + ms(1));
    assert_eq!(e.control().map(|c| c.node_id), Some(NodeId(1)));
    let forged = Message::Claim(Claim {
        from: NodeId(1),
        incarnation: u64::MAX,
        seq: 1,
        epoch: 5,
    });
    let out = e.handle(Input::Received(forged), t0 + ms(300));
    assert!(out.contains(&Output::Dropped {
        from: NodeId(1),
        reason: DropReason::Unverified
    }));
    let c = challenge_in(&out).expect("challenged");
    // n1 answers the challenge with its real incarnation: the forgery is counted.
    let proof = Message::Proof(Proof {
        from: NodeId(1),
        incarnation: 7,
        seq: 12,
        to: NodeId(2),
        nonce: c.nonce,
    });
    e.handle(Input::Received(proof), t0 + ms(301));
    assert_eq!(e.counters().forged_incarnation, 1);
    // n1's real heartbeats keep flowing: no eviction, same Control.
    let mut all = vec![];
    for i in 0..10u64 {
        let t = t0 + ms(300 + i * 100);
        all.extend(e.handle(Input::Received(hb_inc(1, 7, 13 + i, Some((4, 4)))), t));
        all.extend(tick_until(&mut e, t, t + ms(100)));
    }
    assert!(
        !all.iter()
            .any(|o| matches!(o, Output::MemberDown(_) | Output::MemberRestarted { .. })),
        "{all:?}"
    );
    assert_eq!(e.control().map(|c| c.node_id), Some(NodeId(1)));
    assert_eq!(e.members()[0].incarnation, 7);
}

#[test]
fn recorded_heartbeats_replayed_to_a_restarted_node_are_refused() {
    let t0 = Instant::now();
    // n2 just restarted: it knows nobody. A recorded heartbeat of n1 claiming Control
    // arrives: dropped, and n2 challenges.
    let mut e = NodeEngine::new(member_cfg(2), 3, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    let recorded = hb_inc(1, 5, 40, Some((3, 3)));
    let out = e.handle(Input::Received(recorded.clone()), t0 + ms(1));
    assert!(out.contains(&Output::Dropped {
        from: NodeId(1),
        reason: DropReason::Unverified
    }));
    let c = challenge_in(&out).expect("challenged");
    // A wrong nonce (an attacker guessing) proves nothing.
    let bad = Message::Proof(Proof {
        from: NodeId(1),
        incarnation: 5,
        seq: 41,
        to: NodeId(2),
        nonce: [0; 16],
    });
    e.handle(Input::Received(bad), t0 + ms(2));
    assert_eq!(e.counters().proofs_accepted, 0);
    // n1 (alive, incarnation 6 now) answers.
    let proof = Message::Proof(Proof {
        from: NodeId(1),
        incarnation: 6,
        seq: 3,
        to: NodeId(2),
        nonce: c.nonce,
    });
    e.handle(Input::Received(proof.clone()), t0 + ms(3));
    assert_eq!(e.counters().proofs_accepted, 1);
    // The recorded one is from an older incarnation now; the proof cannot be replayed.
    let out = e.handle(Input::Received(recorded), t0 + ms(4));
    assert!(out.contains(&Output::Dropped {
        from: NodeId(1),
        reason: DropReason::StaleIncarnation
    }));
    let out = e.handle(Input::Received(proof), t0 + ms(5));
    assert!(
        out.contains(&Output::Dropped {
            from: NodeId(1),
            reason: DropReason::Duplicate
        }),
        "{out:?}"
    );
    // Its next live heartbeat is accepted.
    let out = e.handle(Input::Received(hb_inc(1, 6, 4, None)), t0 + ms(6));
    assert!(out.contains(&Output::MemberUp(NodeId(1))), "{out:?}");
}

#[test]
fn a_challenge_is_answered_at_most_once_per_interval() {
    let t0 = Instant::now();
    let mut e = NodeEngine::new(member_cfg(1), 0, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    let ch = |seq| {
        Message::Challenge(Challenge {
            from: NodeId(2),
            incarnation: 1,
            seq,
            nonce: [seq as u8; 16],
        })
    };
    let proofs = |out: &[Output]| {
        out.iter()
            .filter(|o| {
                matches!(
                    o,
                    Output::Send {
                        msg: Message::Proof(_),
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(proofs(&e.handle(Input::Received(ch(1)), t0)), 1);
    assert_eq!(proofs(&e.handle(Input::Received(ch(2)), t0 + ms(10))), 0);
    assert_eq!(proofs(&e.handle(Input::Received(ch(3)), t0 + ms(150))), 1);
}

#[test]
fn members_dead_for_long_are_forgotten() {
    let t0 = Instant::now();
    let mut c = cfg(2);
    c.forget_after = Duration::from_secs(5);
    let mut e = NodeEngine::new(c, 0, ChaCha8Rng::seed_from_u64(0));
    e.handle(Input::Tick, t0);
    e.handle(Input::Received(heartbeat(1, 1, None)), t0);
    tick_until(&mut e, t0, t0 + ms(2000));
    assert_eq!(e.members().len(), 1);
    assert!(!e.members()[0].alive);
    tick_until(&mut e, t0 + ms(2000), t0 + ms(7000));
    assert!(e.members().is_empty());
    assert_eq!(e.counters().forgotten, 1);
}

#[test]
fn a_failed_epoch_write_steps_down_holds_the_election_and_retries() {
    let t0 = Instant::now();
    let mut e = engine(1, 0);
    let out = tick_until(&mut e, t0, t0 + ms(1000));
    assert!(out.contains(&Output::BecomeControl { epoch: 1 }), "{out:?}");
    let out = e.handle(Input::PersistFailed { epoch: 1 }, t0 + ms(1001));
    assert!(out.contains(&Output::StepDown {
        epoch: 1,
        reason: StepDownReason::NotDurable
    }));
    assert!(!e.is_control());
    // Retries the write; while it keeps failing (reported at once, as the shell does), no
    // claim.
    let mut retries = 0;
    let mut t = t0 + ms(1001);
    for _ in 0..90 {
        t += ms(10);
        let out = e.handle(Input::Tick, t);
        assert!(
            !out.iter()
                .any(|o| matches!(o, Output::BecomeControl { .. }))
        );
        if out.contains(&Output::PersistEpoch(1)) {
            retries += 1;
            e.handle(Input::PersistFailed { epoch: 1 }, t);
        }
    }
    assert!(retries >= 2, "{retries}");
    // The next retry succeeds (no failure reported): the node claims again.
    let out = tick_until(&mut e, t, t + ms(1500));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::BecomeControl { .. })),
        "{out:?}"
    );
    assert_eq!(e.counters().persist_failures, retries + 1);
}
