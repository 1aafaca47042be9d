//! Admission through the message API: services, the Smart-GloVE client rule, migrate the
//! smallest, and releases of viewers who left.

use crate::engine::*;

use super::support::*;

// Admission, the Smart-GloVE client rule, releases

#[test]
fn a_first_viewer_admits_the_service_and_the_client_in_one_request() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB, 2 * GB], vec![]);
    // Worst-fit: the node with most free memory.
    assert_eq!(
        h.api(
            1,
            Request::AdmitClient {
                service: "video-a".into(),
                spec: Some(a.clone()),
                key: None,
            }
        ),
        vec![start_cmd(1, 2, &a, 1, 0)]
    );
    // Answered once the instance runs, after the event.
    let p = placement("video-a", 2, 1);
    assert_eq!(
        h.ok(1, instance(&a, 1, 2, true)),
        vec![
            Output::Publish(Event::Admitted(p.clone())),
            Output::Reply {
                id: 1,
                resp: Response::Placed(with_client(p.clone(), 1))
            },
        ]
    );
    // A second viewer joins the same distributor at once (no new origin stream), with an
    // id of its own.
    assert_eq!(
        h.api(
            2,
            Request::AdmitClient {
                service: "video-a".into(),
                spec: Some(a.clone()),
                key: None,
            }
        ),
        vec![Output::Reply {
            id: 2,
            resp: Response::Placed(with_client(p, 2))
        }]
    );
    assert_eq!(h.e.status().services["video-a"].2, 2);
    // Releasing names the client; a second release of it finds nothing.
    assert_eq!(
        h.api(
            5,
            Request::ReleaseClient {
                service: "video-a".into(),
                client: Some(1)
            }
        ),
        vec![Output::Reply {
            id: 5,
            resp: Response::Ok
        }]
    );
    assert!(matches!(
        h.api(
            6,
            Request::ReleaseClient {
                service: "video-a".into(),
                client: Some(1)
            }
        )
        .as_slice(),
        [Output::Reply {
            resp: Response::Error(ApiError::NotFound { .. }),
            ..
        }]
    ));
    assert_eq!(h.e.status().services["video-a"].2, 1);
    // Without a spec, an unknown service is an explained error; a spec for another name is
    // refused.
    assert_eq!(
        h.api(
            3,
            Request::AdmitClient {
                service: "nope".into(),
                spec: None,
                key: None
            }
        ),
        vec![Output::Reply {
            id: 3,
            resp: Response::Error(ApiError::NotFound {
                what: "service nope".into()
            })
        }]
    );
    assert!(matches!(
        h.api(
            4,
            Request::AdmitClient {
                service: "other".into(),
                spec: Some(a),
                key: None
            }
        )
        .as_slice(),
        [Output::Reply {
            resp: Response::Error(ApiError::BadRequest { .. }),
            ..
        }]
    ));
}

#[test]
fn a_new_service_that_can_start_nowhere_is_refused_not_lost_and_its_waiters_are_told() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB], vec![]);
    let (req, _) = h.admit(1, &a);
    assert_eq!(
        h.api(
            2,
            Request::Locate {
                service: "video-a".into()
            }
        ),
        vec![],
        "waits for the start"
    );
    // The only node failed to start it: there is no other to retry on. It never ran, so
    // nothing is lost (no `Lost` event, which the lost-services counter counts).
    let out = h.fail(req, "no such program");
    let why = "no such program; no other node can take it \
               (no node fits the load, even after trying to migrate smaller services)";
    let refused = |id| Output::Reply {
        id,
        resp: Response::Error(ApiError::Internal {
            reason: format!("could not start video-a: {why}"),
        }),
    };
    assert_eq!(
        out,
        vec![
            refused(1),
            refused(2),
            Output::Publish(Event::Notice {
                service: "video-a".into(),
                node: NodeId(1),
                reason: format!("not started: {why}")
            })
        ]
    );
    assert_eq!(h.e.status().engine_clients, 0);
    assert!(h.e.status().services.is_empty());
}

#[test]
fn migrate_the_smallest_moves_a_small_service_to_make_room() {
    // n1 holds a small (S) and a large (L1) distributor; L2 fits nowhere, but fits on n1
    // once S moves to n2, where S (and only S) fits.
    let s = spec("small", 200_000);
    let l1 = spec("large-1", 400_000);
    let l2 = spec("large-2", 400_000);
    let (ws_s, ws_l) = (reservation(&s, 0).mem_bytes, reservation(&l1, 0).mem_bytes);
    let (mut h, _) = H::new(&[ws_s + 2 * ws_l - mb(1.0), ws_s + mb(0.1)], vec![]);
    assert_eq!(h.running(1, &s, true), 1);
    assert_eq!(h.running(2, &l1, true), 1);
    let out = h.api(3, Request::AdmitService(l2.clone()));
    assert_eq!(
        out,
        vec![migrate_in(3, 1, 2, &s, 2), start_cmd(4, 1, &l2, 1, 0)]
    );
    // The move runs live: restore on n2, hand-over from n1.
    assert_eq!(
        h.ok(3, instance(&s, 2, 2, true)),
        vec![migrate_out(5, 1, 2, &s, 1, 2)]
    );
    assert_eq!(h.done(5), vec![migrated("small", 1, 2, "ms")]);
    let p = placement("large-2", 1, 1);
    assert_eq!(
        h.ok(4, instance(&l2, 1, 1, true)),
        vec![
            Output::Publish(Event::Admitted(p.clone())),
            Output::Reply {
                id: 3,
                resp: Response::Placed(p)
            }
        ]
    );
    // Now nothing fits anywhere: refused, and nothing changes.
    let out = h.api(4, Request::AdmitService(spec("large-3", 400_000)));
    assert!(
        matches!(
            out.as_slice(),
            [Output::Reply {
                id: 4,
                resp: Response::Error(ApiError::Rejected { .. })
            }]
        ),
        "{out:?}"
    );
    assert_eq!(h.e.status().services.len(), 3);
}

#[test]
fn viewers_who_left_are_released_after_two_low_refreshes_outside_the_grace_period() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB], vec![]);
    h.running(1, &a, true);
    for id in 2..5 {
        h.api(
            id,
            Request::AdmitClient {
                service: "video-a".into(),
                spec: None,
                key: None,
            },
        );
    }
    // The agent already has the reservation of 3 clients (no `Update` due).
    let inst = |n| {
        let mut i = with_clients(instance(&a, 1, 1, true), n);
        i.reservation = reservation(&a, 3);
        vec![i]
    };
    // Within the grace period: nothing.
    assert_eq!(h.round(1, inst(1)), vec![]);
    assert_eq!(h.round(1, inst(1)), vec![]);
    h.at(Duration::from_secs(11));
    // One low refresh is not enough; a full one resets the count.
    assert_eq!(h.round(1, inst(1)), vec![]);
    assert_eq!(h.round(1, inst(3)), vec![]);
    assert_eq!(h.round(1, inst(1)), vec![]);
    assert_eq!(
        h.round(1, inst(1)),
        vec![
            Output::Publish(Event::Notice {
                service: "video-a".into(),
                node: NodeId(1),
                reason: "released 2 client(s): its instance reports 1 connected, 3 were admitted"
                    .into()
            }),
            // ... and its reservation shrinks to one client's.
            Output::Command {
                req: 2,
                to: agent(1),
                epoch: EPOCH,
                cmd: AgentCommand::Update {
                    instance: "video-a.1".into(),
                    reservation: reservation(&a, 1),
                    cpu_cores: launch(&a, 1).cpu_cores,
                    memory_bytes: launch(&a, 1).memory_bytes,
                },
                timeout: T * 5,
            }
        ]
    );
    assert_eq!(h.e.status().engine_clients, 1);
}

// Idempotent admissions: a repeated key admits once.

fn keyed(service: &str, spec: Option<ServiceSpec>, key: u64) -> Request {
    Request::AdmitClient {
        service: service.into(),
        spec,
        key: Some(key),
    }
}

#[test]
fn a_first_viewer_retried_while_its_service_starts_is_admitted_once() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB, 2 * GB], vec![]);
    // The first try starts the service and waits for it.
    assert_eq!(
        h.api(1, keyed("video-a", Some(a.clone()), 77)),
        vec![start_cmd(1, 2, &a, 1, 0)]
    );
    // Its retry (the front-end's, the forwarder's after a timeout) starts nothing, admits
    // nothing, and waits for the same instance.
    assert_eq!(h.api(2, keyed("video-a", Some(a.clone()), 77)), vec![]);
    assert_eq!(h.e.status().services["video-a"].2, 1);
    // Both are answered with the same client once it runs.
    let p = placement("video-a", 2, 1);
    assert_eq!(
        h.ok(1, instance(&a, 1, 2, true)),
        vec![
            Output::Publish(Event::Admitted(p.clone())),
            Output::Reply {
                id: 1,
                resp: Response::Placed(with_client(p.clone(), 1))
            },
            Output::Reply {
                id: 2,
                resp: Response::Placed(with_client(p.clone(), 1))
            },
        ]
    );
    // A third repeat after it runs: the same answer at once, still one client.
    assert_eq!(
        h.api(3, keyed("video-a", Some(a.clone()), 77)),
        vec![Output::Reply {
            id: 3,
            resp: Response::Placed(with_client(p.clone(), 1))
        }]
    );
    assert_eq!(h.e.status().services["video-a"].2, 1);
    // Another key is another viewer.
    assert_eq!(
        h.api(4, keyed("video-a", None, 78)),
        vec![Output::Reply {
            id: 4,
            resp: Response::Placed(with_client(p, 2))
        }]
    );
    assert_eq!(h.e.status().services["video-a"].2, 2);
}

#[test]
fn a_key_expires_with_its_client() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB, 2 * GB], vec![]);
    h.api(1, keyed("video-a", Some(a.clone()), 5));
    h.ok(1, instance(&a, 1, 2, true));
    let p = placement("video-a", 2, 1);
    assert_eq!(
        h.api(
            2,
            Request::ReleaseClient {
                service: "video-a".into(),
                client: Some(1)
            }
        ),
        vec![Output::Reply {
            id: 2,
            resp: Response::Ok
        }]
    );
    assert_eq!(h.e.status().services["video-a"].2, 0);
    // The key went with its client: the same key now admits a new client.
    assert_eq!(
        h.api(3, keyed("video-a", None, 5)),
        vec![Output::Reply {
            id: 3,
            resp: Response::Placed(with_client(p, 2))
        }]
    );
    assert_eq!(h.e.status().services["video-a"].2, 1);
}

#[test]
fn a_refused_keyed_admission_leaves_no_key_behind() {
    let a = spec("video-a", 400_000);
    // No agent node: admission refuses.
    let (mut h, _) = H::new(&[], vec![]);
    let first = h.api(1, keyed("video-a", Some(a.clone()), 9));
    assert!(
        matches!(
            first.as_slice(),
            [Output::Reply {
                id: 1,
                resp: Response::Error(ApiError::Rejected { .. })
            }]
        ),
        "{first:?}"
    );
    // The repeat is decided afresh (and refused again), not answered from a key.
    let again = h.api(2, keyed("video-a", Some(a), 9));
    assert!(
        matches!(
            again.as_slice(),
            [Output::Reply {
                id: 2,
                resp: Response::Error(ApiError::Rejected { .. })
            }]
        ),
        "{again:?}"
    );
    assert!(!h.e.status().services.contains_key("video-a"));
}
