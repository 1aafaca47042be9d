//! One instance per service after every change of Control and every heal, whatever the
//! generations say (the copy with most viewers stays, its viewers joined by the others'),
//! and "lost" only when no reachable agent reports a service and no node can run it.

use smart_proto::agent::{InstanceReport, InstanceState};

use crate::engine::*;

use super::support::*;

/// `s`'s instance `generation` on node `n` with `viewers` connected, as its agent reports
/// it after the Control reserved for `reserved` clients.
fn copy(s: &ServiceSpec, generation: u64, n: u64, viewers: u32, reserved: usize) -> InstanceReport {
    let mut i = with_clients(instance(s, generation, n, true), viewers);
    i.reservation = reservation(s, reserved);
    i
}

/// A rebuilt Control over nodes of these sizes, `s` adopted from `generation` on node 1
/// with `viewers` viewers.
fn adopted_on_n1(mems: &[u64], s: &ServiceSpec, generation: u64, viewers: u32) -> H {
    let mut r1 = empty_report(1, GB);
    r1.instances = vec![copy(s, generation, 1, viewers, viewers as usize)];
    let (mut h, out) = H::new(mems, vec![r1]);
    assert_eq!(
        out,
        vec![Output::Rebuilt {
            epoch: EPOCH,
            agents: mems.len()
        }]
    );
    h.at(Duration::from_secs(1));
    h
}

fn sid(h: &H, name: &str) -> smart_admission::ServiceId {
    h.e.table[name].sid()
}

fn timed_out(n: u64) -> (AgentAddr, Result<AgentReply, PeerError>) {
    (agent(n), Err(PeerError::Timeout(addr(n))))
}

fn answered(r: AgentReport) -> (AgentAddr, Result<AgentReply, PeerError>) {
    (agent(r.node.0), Ok(AgentReply::Report(Box::new(r))))
}

// Duplicates

#[test]
fn two_agents_reporting_a_service_at_generations_1001_and_3_leave_the_one_with_more_viewers() {
    let a = spec("video-a", 400_000);
    let mut h = adopted_on_n1(&[GB, GB], &a, 3, 4);
    let out = h.rounds(vec![
        (1, vec![copy(&a, 3, 1, 4, 4)]),
        (2, vec![copy(&a, 1001, 2, 1, 1)]),
    ]);
    // One stop, to the copy with fewer viewers (the higher generation), and the kept one
    // reserves for its viewers and the one who reconnects to it.
    assert_eq!(
        out,
        vec![
            stop_cmd(1, 2, "video-a.1001"),
            kept_notice(
                "video-a",
                1,
                "duplicates: kept video-a.3 (4 viewer(s)), stopping video-a.1001 on n2"
            ),
            update_cmd(2, 1, &a, "video-a.3", 5),
        ]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(1), "video-a.3".into(), 5)
    );
    assert_eq!(h.e.status().engine_clients, 5);
    assert_eq!(
        h.e.admission.clients_of(sid(&h, "video-a")).map(<[_]>::len),
        Some(5)
    );
}

#[test]
fn the_rebuild_keeps_the_copy_with_more_viewers_even_of_a_lower_generation() {
    let a = spec("video-a", 400_000);
    let mut r1 = empty_report(1, GB);
    r1.instances = vec![copy(&a, 1001, 1, 1, 1)];
    let mut r2 = empty_report(2, GB);
    r2.instances = vec![copy(&a, 3, 2, 4, 4)];
    let (h, out) = H::new(&[GB, GB], vec![r1, r2]);
    assert_eq!(
        out,
        vec![
            Output::Rebuilt {
                epoch: EPOCH,
                agents: 2
            },
            stop_cmd(1, 1, "video-a.1001"),
        ]
    );
    // Admitted with the viewers of both copies.
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(2), "video-a.3".into(), 5)
    );
    assert_eq!(h.e.status().engine_clients, 5);
}

#[test]
fn after_a_heal_this_controls_own_copy_with_fewer_viewers_is_the_one_stopped() {
    let a = spec("video-a", 400_000);
    // This Control restarted the service (1002) while node 2 was cut off, still serving
    // the old copy's four viewers.
    let mut h = adopted_on_n1(&[GB, GB], &a, 1002, 1);
    let out = h.rounds(vec![
        (1, vec![copy(&a, 1002, 1, 1, 1)]),
        (2, vec![copy(&a, 5, 2, 4, 4)]),
    ]);
    assert_eq!(
        out,
        vec![
            stop_cmd(1, 1, "video-a.1002"),
            kept_notice(
                "video-a",
                2,
                "duplicates: kept video-a.5 (4 viewer(s)), stopping video-a.1002 on n1"
            ),
            update_cmd(2, 2, &a, "video-a.5", 5),
        ]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(2), "video-a.5".into(), 5)
    );
    // Admission follows: the service and its five clients are on node 2 now.
    let s = sid(&h, "video-a");
    assert_eq!(h.e.admission.node_of(s), Some(NodeId(2)));
    assert_eq!(h.e.admission.clients_of(s).map(<[_]>::len), Some(5));
    assert_eq!(
        h.api(
            1,
            Request::Locate {
                service: "video-a".into()
            }
        ),
        vec![Output::Reply {
            id: 1,
            resp: Response::Placed(placement("video-a", 2, 5))
        }]
    );
    // Its next instance is named above every generation seen.
    assert_eq!(h.e.table["video-a"].generation(), 1002);
}

#[test]
fn of_three_copies_the_one_with_most_viewers_then_the_newest_stays() {
    let a = spec("video-a", 400_000);
    let mut h = adopted_on_n1(&[GB, GB, GB], &a, 2, 1);
    let out = h.rounds(vec![
        (1, vec![copy(&a, 2, 1, 1, 1)]),
        (2, vec![copy(&a, 1001, 2, 3, 3)]),
        (3, vec![copy(&a, 1003, 3, 3, 3)]),
    ]);
    assert_eq!(
        out,
        vec![
            stop_cmd(1, 2, "video-a.1001"),
            stop_cmd(2, 1, "video-a.2"),
            kept_notice(
                "video-a",
                3,
                "duplicates: kept video-a.1003 (3 viewer(s)), stopping video-a.1001 on n2, video-a.2 on n1"
            ),
            update_cmd(3, 3, &a, "video-a.1003", 7),
        ]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(3), "video-a.1003".into(), 7)
    );
    assert_eq!(h.e.status().engine_clients, 7);
}

#[test]
fn a_source_handing_over_and_its_target_are_not_duplicates() {
    let (mut h, a) = one_on_n1(true);
    h.api(9, Request::Drain { node: NodeId(1) });
    // Restoring: the source serves, the target starts: both run, nothing is stopped.
    h.at(Duration::from_secs(1));
    let mut target = instance(&a, 2, 2, true);
    target.state = InstanceState::Starting;
    assert_eq!(
        h.rounds(vec![(1, vec![instance(&a, 1, 1, true)]), (2, vec![target]),]),
        vec![]
    );
    assert_eq!(
        h.ok(2, instance(&a, 2, 2, true)),
        vec![migrate_out(3, 1, 2, &a, 1, 2)]
    );
    // Handing over: the source is `MigratingOut`, with viewers still on it.
    h.at(Duration::from_secs(1));
    let mut source = with_clients(instance(&a, 1, 1, true), 3);
    source.state = InstanceState::MigratingOut;
    assert_eq!(
        h.rounds(vec![
            (1, vec![source.clone()]),
            (2, vec![instance(&a, 2, 2, true)]),
        ]),
        vec![]
    );
    assert_eq!(h.done(3), vec![migrated("video-a", 1, 2, "drain")]);
    // A report of a round begun before the move ended, still listing the source, does not
    // undo it; nor does a later one with the source on its way out.
    let before = h.now - Duration::from_millis(500);
    assert_eq!(
        h.round_at(
            before,
            vec![
                (1, vec![with_clients(instance(&a, 1, 1, true), 3)]),
                (2, vec![instance(&a, 2, 2, true)])
            ]
        ),
        vec![]
    );
    h.at(Duration::from_secs(1));
    assert_eq!(
        h.rounds(vec![(1, vec![source]), (2, vec![instance(&a, 2, 2, true)])]),
        vec![]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(2), "video-a.2".into(), 0)
    );
}

#[test]
fn repeated_rounds_send_no_second_stop_while_the_first_is_in_flight() {
    let a = spec("video-a", 400_000);
    let mut h = adopted_on_n1(&[GB, GB], &a, 3, 4);
    let both = |h: &mut H, started: Instant| {
        h.round_at(
            started,
            vec![
                (1, vec![copy(&a, 3, 1, 5, 5)]),
                (2, vec![copy(&a, 1001, 2, 1, 1)]),
            ],
        )
    };
    let t1 = h.now;
    let out = both(&mut h, t1);
    assert_eq!(out[0], stop_cmd(1, 2, "video-a.1001"));
    // (and the notice; the kept copy already reserves for five)
    assert_eq!(out.len(), 2, "{out:?}");
    // The stop is in flight: the next round stops nothing and admits no one again.
    h.at(Duration::from_secs(1));
    let t2 = h.now;
    assert_eq!(both(&mut h, t2), vec![]);
    assert_eq!(h.e.status().engine_clients, 5);
    // Done; a report of a round begun before the answer may still list it: nothing.
    h.at(Duration::from_secs(1));
    assert_eq!(h.done(1), vec![]);
    assert_eq!(both(&mut h, t2), vec![]);
    assert_eq!(h.e.stops.pending(), 0);
    h.at(Duration::from_secs(1));
    assert_eq!(
        h.rounds(vec![(1, vec![copy(&a, 3, 1, 5, 5)]), (2, vec![])]),
        vec![]
    );
    assert_eq!(h.e.status().engine_clients, 5);
}

#[test]
fn a_stop_that_got_no_answer_is_sent_again_while_the_copy_still_runs() {
    let a = spec("video-a", 400_000);
    let mut h = adopted_on_n1(&[GB, GB], &a, 3, 4);
    let lists = || {
        vec![
            (1, vec![copy(&a, 3, 1, 5, 5)]),
            (2, vec![copy(&a, 1001, 2, 1, 1)]),
        ]
    };
    assert_eq!(h.rounds(lists())[0], stop_cmd(1, 2, "video-a.1001"));
    assert_eq!(h.timeout(1, 2), vec![]);
    assert_eq!(h.e.stops.pending(), 1);
    h.at(Duration::from_secs(1));
    // Sent again, once; its viewer was admitted the first time and is not again.
    assert_eq!(h.rounds(lists()), vec![stop_cmd(2, 2, "video-a.1001")]);
    assert_eq!(h.e.status().engine_clients, 5);
}

#[test]
fn a_service_stopped_on_purpose_is_not_adopted_again_from_a_report_begun_before() {
    let a = spec("video-a", 400_000);
    let mut h = adopted_on_n1(&[GB], &a, 3, 0);
    let before = h.now;
    h.at(Duration::from_secs(1));
    let out = h.api(
        1,
        Request::StopService {
            service: "video-a".into(),
        },
    );
    assert_eq!(out[0], stop_cmd(1, 1, "video-a.3"));
    assert_eq!(
        h.round_at(before, vec![(1, vec![copy(&a, 3, 1, 0, 0)])]),
        vec![]
    );
    assert_eq!(h.done(1), vec![]);
    assert_eq!(
        h.round_at(before, vec![(1, vec![copy(&a, 3, 1, 0, 0)])]),
        vec![]
    );
    assert!(h.e.status().services.is_empty());
}

#[test]
fn a_copy_no_control_admitted_here_is_adopted_with_its_viewers() {
    // Started by the Control of the other side of a partition: after the heal it is this
    // Control's, with its viewers admitted.
    let b = spec("video-b", 400_000);
    let (mut h, _) = H::new(&[GB, GB], vec![]);
    h.at(Duration::from_secs(1));
    assert_eq!(h.rounds(vec![(2, vec![copy(&b, 1001, 2, 2, 2)])]), vec![]);
    assert_eq!(
        h.e.status().services["video-b"],
        (NodeId(2), "video-b.1001".into(), 2)
    );
    assert_eq!(h.e.status().engine_clients, 2);
}

// Failed starts and lost services

#[test]
fn a_new_service_whose_start_fails_is_retried_on_another_node_and_not_lost() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB, 2 * GB], vec![]);
    assert_eq!(
        h.api(1, Request::AdmitService(a.clone())),
        vec![start_cmd(1, 2, &a, 1, 0)]
    );
    assert_eq!(
        h.fail(1, "exec failed"),
        vec![
            Output::Publish(Event::Notice {
                service: "video-a".into(),
                node: NodeId(2),
                reason: "start failed on n2 (exec failed); retrying on n1".into()
            }),
            start_cmd(2, 1, &a, 2, 0)
        ]
    );
    let p = placement("video-a", 1, 2);
    assert_eq!(
        h.ok(2, instance(&a, 2, 1, true)),
        vec![
            Output::Publish(Event::Admitted(p.clone())),
            Output::Reply {
                id: 1,
                resp: Response::Placed(p)
            }
        ]
    );
    assert_eq!(h.e.admission.node_of(sid(&h, "video-a")), Some(NodeId(1)));
}

#[test]
fn a_restart_that_fails_is_retried_elsewhere_never_where_it_failed_and_not_lost() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB, GB], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    // Node 1 dies: restarted on node 2, where it fails; then on node 3.
    let out = h.live(&[2, 3]);
    let [Output::Command { req, to, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    let (req, first) = (*req, to.node.0);
    let other = 5 - first;
    assert_eq!(
        h.timeout(req, first),
        vec![
            Output::Publish(Event::Notice {
                service: "video-a".into(),
                node: NodeId(first),
                reason: format!(
                    "start failed on n{first} (request to {} timed out); retrying on n{other}",
                    addr(first)
                )
            }),
            start_cmd(req + 1, other, &a, 3, 0)
        ]
    );
    // It fails there too: no node is left that it did not fail on (node 1 is dead) and
    // no agent reports a copy: now it is lost.
    let out = h.fail(req + 1, "exec failed");
    assert_eq!(
        out,
        vec![Output::Publish(Event::Lost {
            service: "video-a".into(),
            reason: "exec failed; no other node can take it \
                     (no node fits the load, even after trying to migrate smaller services)"
                .into()
        })]
    );
}

#[test]
fn a_service_is_lost_only_when_nothing_reports_it_and_no_node_can_run_it() {
    let a = spec("video-a", 400_000);
    // Node 2 is too small for the service.
    let (mut h, _) = H::new(&[GB, mb(1.0)], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    h.at(Duration::from_secs(1));
    // Its node does not answer one round: nothing happens.
    let started = h.now;
    assert_eq!(
        h.e.handle(
            Input::Reports {
                started,
                results: vec![timed_out(1), answered(h.reports[&2].clone())]
            },
            h.now
        ),
        vec![]
    );
    assert_eq!(h.e.status().services["video-a"].0, NodeId(1));
    // It dies: no node can take it, and no agent reports it: lost.
    assert_eq!(
        h.live(&[2]),
        vec![Output::Publish(Event::Lost {
            service: "video-a".into(),
            reason: "no node fits the load, even after trying to migrate smaller services".into()
        })]
    );
}

#[test]
fn a_service_no_node_can_take_is_not_lost_while_an_agent_reports_a_copy() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB, mb(1.0)], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    h.at(Duration::from_secs(1));
    // Node 1 is silent this round; node 2 runs a copy (another Control's) with 2 viewers.
    let mut r2 = h.reports[&2].clone();
    r2.instances = vec![copy(&a, 1001, 2, 2, 2)];
    let started = h.now;
    assert_eq!(
        h.e.handle(
            Input::Reports {
                started,
                results: vec![timed_out(1), answered(r2)]
            },
            h.now
        ),
        vec![]
    );
    // Node 1 dies: nothing can be placed, but the copy runs: it is kept.
    assert_eq!(
        h.live(&[2]),
        vec![Output::Publish(Event::Notice {
            service: "video-a".into(),
            node: NodeId(2),
            reason: "no node fits the load, even after trying to migrate smaller services; \
                     took over video-a.1001 (2 viewer(s)) reported running"
                .into()
        })]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(2), "video-a.1001".into(), 2)
    );
}

// A rebuild from partial reports

/// A Control on node 1 with this registry copy, the live agents `live`, after its
/// rebuild round answered `results`.
fn rebuilt_from(
    replica: Replica,
    live: &[u64],
    results: Vec<(AgentAddr, Result<AgentReply, PeerError>)>,
) -> (H, Vec<Output>) {
    let agents: Vec<AgentAddr> = live.iter().map(|n| agent(*n)).collect();
    let mut e = ControlEngine::new(NodeId(1), EPOCH, tuning(), replica, &agents).unwrap();
    let now = Instant::now();
    e.handle(Input::Start, now);
    let out = e.handle(
        Input::Reports {
            started: now,
            results,
        },
        now,
    );
    e.handle(
        Input::SetActing {
            epoch: EPOCH,
            acting: true,
            until: None,
        },
        now,
    );
    let reports = live.iter().map(|n| (*n, empty_report(*n, GB))).collect();
    (H { e, now, reports }, out)
}

fn entry(s: &ServiceSpec, node: u64, clients: u64) -> ReplicaEntry {
    ReplicaEntry {
        spec: s.clone(),
        node: NodeId(node),
        clients,
    }
}

#[test]
fn a_control_that_rebuilt_while_an_agent_did_not_answer_does_not_declare_its_services_lost() {
    let a = spec("video-a", 400_000);
    let replica = Replica {
        epoch: 4,
        version: 3,
        services: vec![entry(&a, 2, 3)],
        ..Default::default()
    };
    let (mut h, out) = rebuilt_from(
        replica,
        &[1, 2],
        vec![answered(empty_report(1, GB)), timed_out(2)],
    );
    // Node 2 may run it: neither restarted nor lost.
    assert_eq!(
        out,
        vec![Output::Rebuilt {
            epoch: EPOCH,
            agents: 1
        }]
    );
    // It is still in the registry copy this Control replicates.
    h.at(Duration::from_secs(1));
    let out = h.e.handle(Input::Tick, h.now);
    let Some(Output::Replicate { replica, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(replica.services, vec![entry(&a, 2, 3)]);
    // Node 2 answers: it ran all along, with its viewers.
    assert_eq!(
        h.rounds(vec![(1, vec![]), (2, vec![copy(&a, 4, 2, 3, 3)])]),
        vec![]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(2), "video-a.4".into(), 3)
    );
}

#[test]
fn a_registry_entry_is_restarted_when_its_node_answers_without_it_or_stays_silent() {
    let a = spec("video-a", 400_000);
    let b = spec("video-b", 400_000);
    let replica = Replica {
        epoch: 4,
        version: 3,
        services: vec![entry(&a, 2, 0), entry(&b, 3, 0)],
        ..Default::default()
    };
    let (mut h, out) = rebuilt_from(
        replica,
        &[1, 2, 3],
        vec![answered(empty_report(1, GB)), timed_out(2), timed_out(3)],
    );
    assert_eq!(out.len(), 1, "{out:?}");
    // Node 2 answers without video-a: restarted. Node 3 stays silent.
    h.at(Duration::from_secs(1));
    let started = h.now;
    let out = h.e.handle(
        Input::Reports {
            started,
            results: vec![
                answered(empty_report(1, GB)),
                answered(empty_report(2, GB)),
                timed_out(3),
            ],
        },
        h.now,
    );
    let [Output::Command { cmd, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(
        matches!(cmd, AgentCommand::Start { instance, .. } if instance == "video-a.1001"),
        "{cmd:?}"
    );
    // Node 3 silent for `AWAIT_ROUNDS` rounds in all: video-b is restarted elsewhere.
    for round in 2..=3 {
        h.at(Duration::from_secs(1));
        let started = h.now;
        let out = h.e.handle(
            Input::Reports {
                started,
                results: vec![answered(empty_report(1, GB)), timed_out(3)],
            },
            h.now,
        );
        if round < 3 {
            assert_eq!(out, vec![]);
        } else {
            let [Output::Command { cmd, .. }] = out.as_slice() else {
                panic!("{out:?}")
            };
            assert!(
                matches!(cmd, AgentCommand::Start { instance, .. } if instance == "video-b.1001"),
                "{cmd:?}"
            );
        }
    }
}

#[test]
fn the_rebuild_asks_the_live_agents_its_first_round_did_not() {
    let mut e =
        ControlEngine::new(NodeId(1), EPOCH, tuning(), Replica::default(), &[agent(1)]).unwrap();
    let now = Instant::now();
    e.handle(Input::Start, now);
    // Node 2 joined the view while the round ran.
    e.handle(Input::Agents(vec![agent(1), agent(2)]), now);
    assert_eq!(
        e.handle(
            Input::Reports {
                started: now,
                results: vec![answered(empty_report(1, GB))]
            },
            now
        ),
        vec![Output::Round {
            agents: vec![agent(2)],
            epoch: EPOCH,
            timeout: T
        }]
    );
    assert!(!e.status().rebuilt);
    assert_eq!(
        e.handle(
            Input::Reports {
                started: now,
                results: vec![answered(empty_report(2, GB))]
            },
            now
        ),
        vec![Output::Rebuilt {
            epoch: EPOCH,
            agents: 2
        }]
    );
}

// The observed faults

#[test]
fn fault_duplicate_copies_survived_a_partition_heal() {
    // Both sides restarted video-v1 from the registry copy as generation 1001 (this
    // Control on node 1, the cut-off node 3's own Control there). The old rule stopped
    // only lower generations than the Control's own, so both kept running.
    let v1 = spec("video-v1", 400_000);
    let mut h = adopted_on_n1(&[GB, GB, GB], &v1, 1001, 3);
    assert_eq!(h.live(&[1, 2]), vec![]);
    // Node 3 is back: its report is asked for at once, not at the next refresh.
    let out = h.live(&[1, 2, 3]);
    assert!(
        matches!(out.last(), Some(Output::Round { agents, .. }) if agents.len() == 3),
        "{out:?}"
    );
    let out = h.rounds(vec![
        (1, vec![copy(&v1, 1001, 1, 3, 3)]),
        (2, vec![]),
        (3, vec![copy(&v1, 1001, 3, 1, 1)]),
    ]);
    assert_eq!(
        out,
        vec![
            stop_cmd(1, 3, "video-v1.1001"),
            kept_notice(
                "video-v1",
                1,
                "duplicates: kept video-v1.1001 (3 viewer(s)), stopping video-v1.1001 on n3"
            ),
            update_cmd(2, 1, &v1, "video-v1.1001", 4),
        ]
    );
}

#[test]
fn fault_duplicate_copies_survived_a_paused_control() {
    // The Control's host was stopped (SIGSTOP) long enough for another Control to start
    // video-v2.1003; after SIGCONT this Control keeps office with its own 1001, which
    // has no viewers left. The old rule stopped neither (1003 is not below 1001).
    let v2 = spec("video-v2", 400_000);
    let mut h = adopted_on_n1(&[GB, GB], &v2, 1001, 0);
    let out = h.rounds(vec![
        (1, vec![copy(&v2, 1001, 1, 0, 0)]),
        (2, vec![copy(&v2, 1003, 2, 2, 2)]),
    ]);
    assert_eq!(
        out,
        vec![
            stop_cmd(1, 1, "video-v2.1001"),
            kept_notice(
                "video-v2",
                2,
                "duplicates: kept video-v2.1003 (2 viewer(s)), stopping video-v2.1001 on n1"
            ),
        ]
    );
    assert_eq!(
        h.e.status().services["video-v2"],
        (NodeId(2), "video-v2.1003".into(), 2)
    );
}

#[test]
fn fault_a_short_lived_control_declared_services_lost_that_were_still_playing() {
    // It rebuilt hearing from no agent at all (its admission had no node): every service
    // of the registry copy was declared lost ("no live node"), one of them still playing
    // to four viewers on node 2.
    let a = spec("video-a", 400_000);
    let b = spec("video-b", 400_000);
    let c = spec("video-c", 400_000);
    let replica = Replica {
        epoch: 4,
        version: 7,
        // Node 4 is not live: its service must be restarted, and cannot be yet.
        services: vec![entry(&a, 2, 4), entry(&b, 3, 0), entry(&c, 4, 1)],
        ..Default::default()
    };
    let (mut h, out) = rebuilt_from(
        replica,
        &[1, 2, 3],
        vec![timed_out(1), timed_out(2), timed_out(3)],
    );
    assert_eq!(
        out,
        vec![Output::Rebuilt {
            epoch: EPOCH,
            agents: 0
        }]
    );
    // The agents answer: video-a plays on node 2 and is adopted with its viewers; the
    // others are restarted.
    h.at(Duration::from_secs(1));
    let out = h.rounds(vec![
        (1, vec![]),
        (2, vec![copy(&a, 6, 2, 4, 4)]),
        (3, vec![]),
    ]);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Publish(Event::Lost { .. }))),
        "{out:?}"
    );
    let started = started_instances(&out);
    assert_eq!(started, vec!["video-b.1001", "video-c.1001"]);
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(2), "video-a.6".into(), 4)
    );
}

#[test]
fn fault_a_failed_start_counted_as_a_lost_service() {
    // The lost-services counter counts `Lost` events: a start that failed on one node
    // published one although another node could run the service.
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    assert_eq!(h.live(&[2]), vec![start_cmd(2, 2, &a, 2, 0)]);
    // The restart on node 2 fails; node 1 is back in the view (asked for its report at
    // once) and reports nothing.
    let out = h.live(&[1, 2]);
    assert!(
        matches!(out.last(), Some(Output::Round { agents, .. }) if agents.len() == 2),
        "{out:?}"
    );
    h.at(Duration::from_secs(1));
    assert_eq!(h.rounds(vec![(1, vec![]), (2, vec![])]), vec![]);
    let out = h.fail(2, "exec failed");
    assert_eq!(
        out,
        vec![
            Output::Publish(Event::Notice {
                service: "video-a".into(),
                node: NodeId(2),
                reason: "start failed on n2 (exec failed); retrying on n1".into()
            }),
            start_cmd(3, 1, &a, 3, 0)
        ]
    );
    assert_eq!(
        h.ok(3, instance(&a, 3, 1, true)),
        vec![migrated("video-a", 1, 1, "node-failure")]
    );
}

/// What a timed-out start of `video-a` on n2, with no other node for it, publishes: not
/// `Lost`.
fn unconfirmed_a() -> Output {
    kept_notice(
        "video-a",
        2,
        "start on n2 unconfirmed (request to 127.0.0.2:7000 timed out) and no other node can \
         take it (no node fits the load, even after trying to migrate smaller services): its \
         next report decides",
    )
}

#[test]
fn fault_a_start_that_timed_out_declares_nothing_lost() {
    // Seed 202 (majority): the restart of a dead node's service timed out on the only node
    // left; the agent may have started it, yet the service was declared lost. Its node's
    // next report decides: it runs there (kept), or a round begun after shows it does not
    // (started again).
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    assert_eq!(h.live(&[2]), vec![start_cmd(2, 2, &a, 2, 0)]);
    assert_eq!(h.timeout(2, 2), vec![unconfirmed_a()]);
    h.at(Duration::from_secs(1));
    let out = h.rounds(vec![(2, vec![instance(&a, 2, 2, true)])]);
    assert_eq!(
        out,
        vec![kept_notice(
            "video-a",
            2,
            "its instance was gone; took over video-a.2 (0 viewer(s))"
        )]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(2), "video-a.2".into(), 0)
    );
}

#[test]
fn fault_a_start_that_timed_out_and_never_ran_is_started_again() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    assert_eq!(h.live(&[2]), vec![start_cmd(2, 2, &a, 2, 0)]);
    assert_eq!(h.timeout(2, 2), vec![unconfirmed_a()]);
    h.at(Duration::from_secs(1));
    assert_eq!(h.rounds(vec![(2, vec![])]), vec![start_cmd(3, 2, &a, 3, 0)]);
}

#[test]
fn fault_a_start_refused_already_exists_declares_nothing_lost() {
    // Seed 43 (majority): a start refused because the agent already has that instance (it
    // runs) was taken for a failure and the service declared lost.
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    assert_eq!(h.live(&[2]), vec![start_cmd(2, 2, &a, 2, 0)]);
    let exists = smart_proto::agent::AgentError::AlreadyExists;
    assert_eq!(
        h.reply(2, Ok(AgentReply::Failed(exists.clone()))),
        vec![kept_notice(
            "video-a",
            2,
            &format!(
                "start on n2 unconfirmed ({exists}) and no other node can take it (no node \
                 fits the load, even after trying to migrate smaller services): its next \
                 report decides"
            ),
        )]
    );
    h.at(Duration::from_secs(1));
    assert_eq!(
        h.rounds(vec![(2, vec![instance(&a, 2, 2, true)])]),
        vec![kept_notice(
            "video-a",
            2,
            "its instance was gone; took over video-a.2 (0 viewer(s))"
        )]
    );
}

/// A service another Control wrote to the desired-state log (on a side of a partition this
/// one was not on) is restored at the next refresh round; one this Control stopped on
/// purpose is not, while the log still lists it.
#[test]
fn a_service_only_the_desired_log_holds_is_restored_at_the_next_round() {
    let a = spec("video-a", 400_000);
    let b = spec("video-b", 400_000);
    let (mut h, _) = H::new(&[GB, GB], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    h.api(
        2,
        Request::StopService {
            service: "video-a".into(),
        },
    );
    assert_eq!(
        h.e.handle(Input::Desired(vec![a.clone(), b.clone()]), h.now),
        vec![]
    );
    h.at(Duration::from_secs(1));
    let out = h.rounds(vec![(1, vec![]), (2, vec![])]);
    let started = started_instances(&out);
    assert_eq!(started, vec!["video-b.1001"], "{out:?}");
}

/// The log's word on an admission arrives before the engine decides (the write comes
/// first): once the service is admitted, and then stopped before the next round, nothing
/// restores it.
#[test]
fn the_logs_word_ahead_of_an_admission_restores_nothing_once_it_is_stopped() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB, GB], vec![]);
    assert_eq!(h.e.handle(Input::Desired(vec![a.clone()]), h.now), vec![]);
    let n = h.running(1, &a, true);
    h.api(
        2,
        Request::StopService {
            service: "video-a".into(),
        },
    );
    h.at(Duration::from_secs(1));
    let out = h.rounds(vec![(1, vec![]), (2, vec![])]);
    assert!(
        started_instances(&out).is_empty(),
        "restarted on n{n}'s stop: {out:?}"
    );
}
