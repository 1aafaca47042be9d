//! Drains and the migration state machine, step by step: live restore and hand-over, the
//! fallbacks when a step fails, and the copy holds of a live move.

use crate::engine::*;

use super::support::*;

#[test]
fn drain_migrates_live_restore_then_hand_over() {
    let (mut h, a) = one_on_n1(true);
    let out = h.api(9, Request::Drain { node: NodeId(1) });
    assert_eq!(
        out,
        vec![
            migrate_in(2, 1, 2, &a, 2),
            Output::Reply {
                id: 9,
                resp: Response::Ok
            }
        ]
    );
    // During the restore, viewers still go to the old instance (it keeps serving).
    assert_eq!(
        h.api(
            10,
            Request::Locate {
                service: "video-a".into()
            }
        ),
        vec![Output::Reply {
            id: 10,
            resp: Response::Placed(Placement {
                service: "video-a".into(),
                node: NodeId(2),
                endpoint: "http://127.0.0.1:9001/".into(),
                client: None,
            })
        }]
    );
    assert_eq!(
        h.ok(2, instance(&a, 2, 2, true)),
        vec![migrate_out(3, 1, 2, &a, 1, 2)]
    );
    assert_eq!(h.done(3), vec![migrated("video-a", 1, 2, "drain")]);
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(2), "video-a.2".into(), 0)
    );
    assert_eq!(h.e.status().drained, vec![NodeId(1)]);
}

#[test]
fn a_workload_without_the_control_api_is_restarted_on_the_target_then_stopped() {
    let (mut h, a) = one_on_n1(false);
    h.api(9, Request::Drain { node: NodeId(1) });
    // (the first output was the start on the target)
    assert_eq!(
        h.ok(2, instance(&a, 2, 2, false)),
        vec![stop_cmd(3, 1, "video-a.1")]
    );
    assert_eq!(
        h.done(3),
        vec![migrated(
            "video-a",
            1,
            2,
            "drain (restarted: no workload control API)"
        )]
    );
}

#[test]
fn a_failed_restore_falls_back_to_a_fresh_start_then_the_hand_over() {
    let (mut h, a) = one_on_n1(true);
    h.api(9, Request::Drain { node: NodeId(1) });
    assert_eq!(
        h.fail(2, "restore: source gone"),
        vec![start_cmd(3, 2, &a, 3, 0)]
    );
    assert_eq!(
        h.ok(3, instance(&a, 3, 2, true)),
        vec![migrate_out(4, 1, 2, &a, 1, 3)]
    );
    assert_eq!(
        h.done(4),
        vec![migrated(
            "video-a",
            1,
            2,
            "drain (restarted: restore failed (restore: source gone); restarted on the target)"
        )]
    );
}

#[test]
fn a_restore_that_times_out_is_superseded_and_its_late_instance_is_a_stray() {
    let (mut h, a) = one_on_n1(true);
    h.api(9, Request::Drain { node: NodeId(1) });
    assert_eq!(h.timeout(2, 2), vec![start_cmd(3, 2, &a, 3, 0)]);
    h.ok(3, instance(&a, 3, 2, true));
    h.done(4);
    // The timed-out restore finished after all: two copies, no viewers on either, so the
    // newest generation (the service's 3) stays and the next refresh stops the other.
    h.at(Duration::from_secs(1));
    assert_eq!(
        h.round(2, vec![instance(&a, 2, 2, true), instance(&a, 3, 2, true)]),
        vec![
            stop_cmd(5, 2, "video-a.2"),
            kept_notice(
                "video-a",
                2,
                "duplicates: kept video-a.3 (0 viewer(s)), stopping video-a.2 on n2"
            )
        ]
    );
}

#[test]
fn a_failed_hand_over_stops_the_source_and_viewers_reconnect_through_the_front_end() {
    let (mut h, a) = one_on_n1(true);
    h.api(9, Request::Drain { node: NodeId(1) });
    h.ok(2, instance(&a, 2, 2, true));
    assert_eq!(h.timeout(3, 1), vec![stop_cmd(4, 1, "video-a.1")]);
    assert_eq!(
        h.done(4),
        vec![migrated(
            "video-a",
            1,
            2,
            "drain (restarted: no live hand-over (request to 127.0.0.1:7000 timed out); the old instance was stopped and its clients reconnect through the front-end)"
        )]
    );
}

#[test]
fn the_target_failing_to_start_keeps_the_service_on_a_source_still_in_placement() {
    // No control API: a start on the target, which fails; an anomaly move keeps the source
    // in placement, so the service stays where it was.
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB], vec![]);
    h.running(1, &a, false);
    let sid = h.e.table["video-a"].sid();
    let to = h.e.admission.move_elsewhere(sid).unwrap();
    h.e.migrate(sid, NodeId(1), to, Why::Anomaly);
    let out = std::mem::take(&mut h.e.out);
    assert_eq!(out, vec![start_cmd(2, 2, &a, 2, 0)]);
    assert_eq!(
        h.fail(2, "exec failed"),
        vec![Output::Publish(Event::Notice {
            service: "video-a".into(),
            node: NodeId(1),
            reason: "move to n2 failed (the target could not start it); kept on n1".into()
        })]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(1), "video-a.1".into(), 0)
    );
    assert_eq!(h.e.admission.node_of(sid), Some(NodeId(1)));
}

#[test]
fn a_drain_with_nowhere_to_go_changes_nothing_and_says_what_cannot_move() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB], vec![]);
    h.running(1, &a, true);
    assert_eq!(
        h.api(2, Request::Drain { node: NodeId(1) }),
        vec![Output::Reply {
            id: 2,
            resp: Response::Error(ApiError::Rejected {
                reason: "no room elsewhere for video-a: no live node".into()
            })
        }]
    );
    assert!(h.e.status().drained.is_empty());
    assert_eq!(h.e.status().services["video-a"].0, NodeId(1));
}

#[test]
fn a_live_move_holds_the_copys_network_on_both_nodes_until_it_ends() {
    let t = ControlTuning {
        admission: AdmissionSettings {
            copy_rate_bps: Some(400_000_000),
            ..settings()
        },
        ..tuning()
    };
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::with(t, &[2 * GB, GB, GB / 2], &[], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    let out = h.api(9, Request::Drain { node: NodeId(1) });
    let Output::Command {
        cmd: AgentCommand::MigrateIn { copy_rate_bps, .. },
        ..
    } = &out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(*copy_rate_bps, Some(400_000_000));
    // The service and two holds (the drained source is out of placement: only the
    // target's hold is placed).
    assert_eq!(h.e.admission.service_count(), 2);
    h.ok(2, instance(&a, 2, 2, true));
    h.done(3);
    assert_eq!(
        h.e.admission.service_count(),
        1,
        "holds released when the move ends"
    );
}
