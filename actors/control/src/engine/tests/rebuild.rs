//! Rebuild after an election and the refresh rounds that follow it: adoption, duplicates,
//! the registry copy, and what is refused before the engine may act.

use smart_proto::agent::InstanceState;

use crate::engine::*;

use super::support::*;

// Rebuild

#[test]
fn rebuild_adopts_running_instances_and_answers_only_after() {
    let a = spec("video-a", 400_000);
    let mut r1 = empty_report(1, GB);
    r1.instances = vec![with_clients(instance(&a, 3, 1, true), 2)];
    let (mut h, out) = H::new(&[GB, GB], vec![r1]);
    assert_eq!(
        out,
        vec![Output::Rebuilt {
            epoch: EPOCH,
            agents: 2
        }]
    );
    // The adopted service keeps its instance and its two clients.
    assert_eq!(
        h.api(
            1,
            Request::Locate {
                service: "video-a".into()
            }
        ),
        vec![Output::Reply {
            id: 1,
            resp: Response::Placed(placement("video-a", 1, 3))
        }]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(1), "video-a.3".into(), 2)
    );
    assert_eq!(h.e.status().engine_clients, 2);
}

#[test]
fn before_the_rebuild_and_without_a_lease_requests_are_refused_as_retryable() {
    let agents = vec![agent(1)];
    let mut e =
        ControlEngine::new(NodeId(1), EPOCH, tuning(), Replica::default(), &agents).unwrap();
    let now = Instant::now();
    e.handle(Input::Start, now);
    assert_eq!(
        e.handle(
            Input::Api {
                id: 7,
                req: Request::Services
            },
            now
        ),
        vec![Output::Reply {
            id: 7,
            resp: Response::Error(ApiError::Rebuilding)
        }]
    );
    e.handle(
        Input::Reports {
            started: now,
            results: vec![(
                agent(1),
                Ok(AgentReply::Report(Box::new(empty_report(1, GB)))),
            )],
        },
        now,
    );
    assert_eq!(
        e.handle(
            Input::Api {
                id: 8,
                req: Request::Services
            },
            now
        ),
        vec![Output::Reply {
            id: 8,
            resp: Response::Error(ApiError::NoMajority)
        }]
    );
    // No refresh rounds either until the election engine lets it act.
    assert_eq!(e.handle(Input::Tick, now), vec![]);
}

#[test]
fn rebuild_keeps_the_copy_with_most_clients_and_stops_the_duplicate() {
    // A migration cut short by the death of the old Control, before the hand-over: the
    // source still has the viewers; the half-restored target is stopped (roll back).
    let a = spec("video-a", 400_000);
    let mut r1 = empty_report(1, GB);
    r1.instances = vec![with_clients(instance(&a, 1, 1, true), 5)];
    let mut r2 = empty_report(2, GB);
    r2.instances = vec![with_clients(instance(&a, 2, 2, true), 0)];
    let (mut h, out) = H::new(&[GB, GB], vec![r1, r2]);
    // The duplicate's stop leaves once the engine may act.
    assert_eq!(
        out,
        vec![
            Output::Rebuilt {
                epoch: EPOCH,
                agents: 2
            },
            stop_cmd(1, 2, "video-a.2"),
        ]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(1), "video-a.1".into(), 5)
    );
    assert_eq!(h.done(1), vec![]);
}

#[test]
fn rebuild_after_a_hand_over_keeps_the_target_never_the_instance_handing_over() {
    // The old Control died after the hand-over began: the source is `MigratingOut` (its
    // agent stops it when the hand-over ends) and is never adopted, even with clients.
    let a = spec("video-a", 400_000);
    let mut r1 = empty_report(1, GB);
    let mut old = with_clients(instance(&a, 1, 1, true), 4);
    old.state = InstanceState::MigratingOut;
    r1.instances = vec![old];
    let mut r2 = empty_report(2, GB);
    r2.instances = vec![with_clients(instance(&a, 2, 2, true), 1)];
    let (h, out) = H::new(&[GB, GB], vec![r1, r2]);
    assert_eq!(
        out,
        vec![Output::Rebuilt {
            epoch: EPOCH,
            agents: 2
        }]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(2), "video-a.2".into(), 1)
    );
}

#[test]
fn rebuild_restarts_services_only_the_registry_copy_knows_and_keeps_drains() {
    let a = spec("video-a", 400_000);
    let agents = vec![agent(1), agent(2)];
    let replica = Replica {
        epoch: 4,
        version: 9,
        services: vec![ReplicaEntry {
            spec: a.clone(),
            node: NodeId(3),
            clients: 2,
        }],
        drained: vec![NodeId(2)],
        ..Default::default()
    };
    let mut e = ControlEngine::new(NodeId(1), EPOCH, tuning(), replica, &agents).unwrap();
    let now = Instant::now();
    e.handle(Input::Start, now);
    let results = agents
        .iter()
        .map(|a| {
            (
                *a,
                Ok(AgentReply::Report(Box::new(empty_report(a.node.0, GB)))),
            )
        })
        .collect();
    let out = e.handle(
        Input::Reports {
            started: now,
            results,
        },
        now,
    );
    // Node 3 died with the old Control; node 2 is drained: the service goes to node 1, with
    // a generation above any the old Control used, once the engine may act.
    assert_eq!(
        out,
        vec![Output::Rebuilt {
            epoch: EPOCH,
            agents: 2
        }]
    );
    let acting = Input::SetActing {
        epoch: EPOCH,
        acting: true,
        until: None,
    };
    assert_eq!(e.handle(acting, now), vec![start_cmd(1, 1, &a, 1001, 2)]);
    assert_eq!(e.status().drained, vec![NodeId(2)]);
}

#[test]
fn refresh_rounds_replicate_a_versioned_registry_copy() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB], vec![]);
    h.running(1, &a, true);
    let out = h.e.handle(Input::Tick, h.now);
    assert_eq!(
        out,
        vec![
            Output::Replicate {
                to: vec![agent(1)],
                replica: Replica {
                    epoch: EPOCH,
                    version: 1,
                    services: vec![ReplicaEntry {
                        spec: a,
                        node: NodeId(1),
                        clients: 0
                    }],
                    drained: vec![],
                    profiles: vec![],
                    health_drained: vec![],
                },
            },
            Output::Round {
                agents: vec![agent(1)],
                epoch: EPOCH,
                timeout: T
            }
        ]
    );
    // One round at a time.
    assert_eq!(h.e.handle(Input::Tick, h.now), vec![]);
}

// What a Control that may not act decides: nothing (the "may act" gate)

fn acting_until(h: &mut H, until: Option<Instant>) -> Vec<Output> {
    h.e.handle(
        Input::SetActing {
            epoch: EPOCH,
            acting: true,
            until,
        },
        h.now,
    )
}

#[test]
fn paused_past_its_lease_a_control_decides_nothing_on_what_queued() {
    // Seeds 1 and 12 (majority): the refresh tick and an admission that queued while the
    // node was stopped are handled after its lease ran out, before membership's step-down
    // reaches the actor. Acting is valid until an instant, not until the next message.
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB], vec![]);
    let until = h.now + Duration::from_secs(1);
    acting_until(&mut h, Some(until));
    h.at(Duration::from_secs(5));
    assert_eq!(h.e.handle(Input::Tick, h.now), vec![]);
    assert_eq!(
        h.api(1, Request::AdmitService(a.clone())),
        vec![Output::Reply {
            id: 1,
            resp: Response::Error(ApiError::NoMajority)
        }]
    );
    assert!(!h.e.may_act(h.now));
    // Leases renewed: it acts again.
    let until = h.now + Duration::from_secs(1);
    acting_until(&mut h, Some(until));
    let (req, n) = h.admit(2, &a);
    assert_eq!((req, n), (1, 1));
}

#[test]
fn a_round_begun_while_acting_is_abandoned_when_acting_is_lost() {
    // Scenario isolate_control_majority: the Control's lease ran out while its refresh
    // round was out; the answers show its service gone, which an acting Control would
    // restart. It restarts nothing, and the next round (acting again) does.
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB], vec![]);
    h.running(1, &a, true);
    h.at(Duration::from_secs(1));
    let started = h.now;
    assert!(matches!(
        h.e.handle(Input::Tick, h.now).as_slice(),
        [Output::Replicate { .. }, Output::Round { .. }]
    ));
    h.e.handle(
        Input::SetActing {
            epoch: EPOCH,
            acting: false,
            until: None,
        },
        h.now,
    );
    h.at(Duration::from_millis(100));
    assert_eq!(h.round_at(started, vec![(1, vec![])]), vec![]);
    // Another round, acting again: the instance is missing, it is restarted.
    acting_until(&mut h, None);
    h.at(Duration::from_millis(100));
    assert!(matches!(
        h.e.handle(Input::Tick, h.now).as_slice(),
        [Output::Replicate { .. }, Output::Round { .. }]
    ));
    assert_eq!(h.rounds(vec![(1, vec![])]), vec![start_cmd(2, 1, &a, 2, 0)]);
}

#[test]
fn the_rebuild_holds_its_restarts_until_the_control_may_act() {
    // Seed 20 (majority): a Control elected in a minority rebuilt and restarted what only
    // its registry copy knew, though it never had a majority behind it.
    let a = spec("video-a", 400_000);
    let agents = vec![agent(1)];
    let replica = Replica {
        epoch: 4,
        version: 9,
        services: vec![ReplicaEntry {
            spec: a.clone(),
            node: NodeId(3),
            clients: 2,
        }],
        ..Default::default()
    };
    let mut e = ControlEngine::new(NodeId(1), EPOCH, tuning(), replica, &agents).unwrap();
    let now = Instant::now();
    e.handle(Input::Start, now);
    let out = e.handle(
        Input::Reports {
            started: now,
            results: vec![(
                agent(1),
                Ok(AgentReply::Report(Box::new(empty_report(1, GB)))),
            )],
        },
        now,
    );
    assert_eq!(
        out,
        vec![Output::Rebuilt {
            epoch: EPOCH,
            agents: 1
        }]
    );
    // Told it may act at another epoch, or until an instant already past: still held.
    let past = Some(now);
    for (epoch, until) in [(EPOCH + 1, None), (EPOCH, past)] {
        let set = Input::SetActing {
            epoch,
            acting: true,
            until,
        };
        assert_eq!(e.handle(set, now), vec![]);
    }
    let set = Input::SetActing {
        epoch: EPOCH,
        acting: true,
        until: Some(now + Duration::from_secs(1)),
    };
    assert_eq!(e.handle(set, now), vec![start_cmd(1, 1, &a, 1001, 2)]);
}
