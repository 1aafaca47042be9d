//! Failures: dead nodes, lost and crashed instances, nodes dying in the middle of a move,
//! and a deposed Control.

use smart_proto::agent::AgentEvent;

use crate::engine::*;

use super::support::*;

// Node failures, lost instances, strays

#[test]
fn a_dead_nodes_services_are_restarted_elsewhere_with_their_clients() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    h.api(
        2,
        Request::AdmitClient {
            service: "video-a".into(),
            spec: None,
            key: None,
        },
    );
    assert_eq!(h.live(&[2]), vec![start_cmd(2, 2, &a, 2, 1)]);
    // Viewers asking meanwhile wait for the new instance, never the dead endpoint.
    assert_eq!(
        h.api(
            3,
            Request::Locate {
                service: "video-a".into()
            }
        ),
        vec![]
    );
    let p = placement("video-a", 2, 2);
    assert_eq!(
        h.ok(2, instance(&a, 2, 2, true)),
        vec![
            migrated("video-a", 1, 2, "node-failure"),
            Output::Reply {
                id: 3,
                resp: Response::Placed(p)
            }
        ]
    );
    assert_eq!(
        h.e.status().services["video-a"].2,
        1,
        "its client came along"
    );
}

#[test]
fn an_instance_missing_from_its_nodes_report_is_restarted_and_strays_are_stopped() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB], vec![]);
    h.running(1, &a, true);
    h.at(Duration::from_secs(1));
    // The agent restarted and lost it: re-admitted (here on the same, only node).
    assert_eq!(h.round(1, vec![]), vec![start_cmd(2, 1, &a, 2, 0)]);
    h.ok(2, instance(&a, 2, 1, true));
    // An older generation still running (a partition's leftover) is stopped: no viewers
    // on either, so the newest stays.
    h.at(Duration::from_secs(1));
    assert_eq!(
        h.round(1, vec![instance(&a, 1, 1, true), instance(&a, 2, 1, true)]),
        vec![
            stop_cmd(3, 1, "video-a.1"),
            kept_notice(
                "video-a",
                1,
                "duplicates: kept video-a.2 (0 viewer(s)), stopping video-a.1 on n1"
            )
        ]
    );
}

#[test]
fn a_crash_past_the_restart_policy_readmits_the_service() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB, GB], vec![]);
    let n = h.running(1, &a, true);
    let mut r = h.reports[&n].clone();
    r.instances = vec![];
    r.notices = vec![(
        1,
        AgentEvent::InstanceFailed {
            instance: "video-a.1".into(),
            restarts: 3,
            exit: Default::default(),
        },
    )];
    let out = h.e.handle(
        Input::Reports {
            started: h.now,
            results: vec![(agent(n), Ok(AgentReply::Report(Box::new(r))))],
        },
        h.now,
    );
    let [
        Output::Command {
            cmd: AgentCommand::Start { instance, .. },
            ..
        },
    ] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    assert_eq!(instance, "video-a.2");
}

#[test]
fn the_target_dying_during_the_restore_rolls_the_move_back() {
    // An anomaly move (the source stays in placement), whose target dies mid-restore: n1
    // has one CPU, so the instance's observed 1.5 cores fit only elsewhere.
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::with(tuning(), &[2 * GB, GB, GB / 2], &[(1, 1)], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    let mut r = h.reports[&1].clone();
    r.instances = vec![instance(&a, 1, 1, true)];
    r.notices = vec![(
        1,
        AgentEvent::Anomaly {
            instance: "video-a.1".into(),
            resource: smart_proto::agent::Resource::Cpu,
            observed: 1.5,
            reserved: 0.05,
        },
    )];
    h.at(Duration::from_secs(1));
    let out = h.e.handle(
        Input::Reports {
            started: h.now,
            results: vec![(agent(1), Ok(AgentReply::Report(Box::new(r))))],
        },
        h.now,
    );
    let [
        Output::Command {
            req,
            to,
            cmd: AgentCommand::MigrateIn { .. },
            ..
        },
    ] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    let (req, target) = (*req, to.node.0);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != target).collect();
    assert_eq!(
        h.live(&others),
        vec![Output::Publish(Event::Notice {
            service: "video-a".into(),
            node: NodeId(1),
            reason: format!("move to n{target} failed (n{target} died); kept on n1"),
        })]
    );
    assert_eq!(
        h.e.status().services["video-a"],
        (NodeId(1), "video-a.1".into(), 0)
    );
    // The dead target's late answer changes nothing.
    assert_eq!(h.ok(req, instance(&a, 2, target, true)), vec![]);
}

#[test]
fn the_source_dying_during_the_restore_turns_the_move_into_a_fresh_start() {
    let (mut h, a) = one_on_n1(true);
    h.api(9, Request::Drain { node: NodeId(1) });
    // n1 dies while n2 restores from it.
    assert_eq!(h.live(&[2, 3]), vec![start_cmd(3, 2, &a, 3, 0)]);
    assert_eq!(
        h.ok(3, instance(&a, 3, 2, true)),
        vec![migrated(
            "video-a",
            1,
            2,
            "drain (restarted: the source died during the move)"
        )]
    );
    assert_eq!(h.e.status().services["video-a"].0, NodeId(2));
}

#[test]
fn a_deposed_control_stops_at_the_first_refusal_and_does_nothing_more() {
    let (mut h, a) = one_on_n1(true);
    h.api(9, Request::Drain { node: NodeId(1) });
    assert_eq!(
        h.reply(
            2,
            Ok(AgentReply::Refused {
                epoch: EPOCH,
                highest: EPOCH + 1
            })
        ),
        vec![Output::Stale {
            epoch: EPOCH,
            highest: EPOCH + 1
        }]
    );
    // Nothing it hears later makes it act: no command, no event; requests are refused as
    // retryable so a front-end waits for the new Control.
    assert_eq!(h.ok(2, instance(&a, 2, 2, true)), vec![]);
    assert_eq!(h.live(&[2]), vec![]);
    assert_eq!(h.e.handle(Input::Tick, h.now), vec![]);
    assert_eq!(
        h.api(10, Request::Services),
        vec![Output::Reply {
            id: 10,
            resp: Response::Error(ApiError::NoControl)
        }]
    );
}
