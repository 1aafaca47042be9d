//! The QoS loop of a refresh: reservations that follow the clients, anomalies, health
//! checks and idle stops.

use smart_proto::agent::AgentEvent;

use crate::engine::*;

use super::support::*;

#[test]
fn reservations_follow_the_clients_to_the_agent() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB], vec![]);
    h.running(1, &a, true);
    // The agent holds the 0-client reservation: nothing to send.
    assert_eq!(
        h.round(1, vec![with_clients(instance(&a, 1, 1, true), 0)]),
        vec![]
    );
    h.api(
        2,
        Request::AdmitClient {
            service: "video-a".into(),
            spec: None,
            key: None,
        },
    );
    assert_eq!(
        h.round(1, vec![with_clients(instance(&a, 1, 1, true), 1)]),
        vec![Output::Command {
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
        }]
    );
}

#[test]
fn an_anomaly_grows_the_reservation_in_place_when_the_node_has_room() {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[GB], vec![]);
    h.running(1, &a, true);
    let mut r = h.reports[&1].clone();
    r.instances = vec![instance(&a, 1, 1, true)];
    r.notices = vec![(
        1,
        AgentEvent::Anomaly {
            instance: "video-a.1".into(),
            resource: smart_proto::agent::Resource::Cpu,
            observed: 0.8,
            reserved: 0.05,
        },
    )];
    h.reports.insert(1, r);
    let out = h.round(1, vec![instance(&a, 1, 1, true)]);
    assert_eq!(
        out[0],
        Output::Publish(Event::Notice {
            service: "video-a".into(),
            node: NodeId(1),
            reason: "anomaly (Cpu at 0.800, reserved 0.050): reservation grown in place on n1"
                .into(),
        })
    );
    let [
        Output::Command {
            cmd:
                AgentCommand::Update {
                    reservation,
                    cpu_cores,
                    ..
                },
            ..
        },
    ] = &out[1..]
    else {
        panic!("{out:?}")
    };
    assert!(reservation.cpu_cores > 0.8 - 1e-9, "{reservation:?}");
    assert!(cpu_cores.unwrap() > 1.6 - 1e-9, "{cpu_cores:?}");
    assert_eq!(h.e.status().services["video-a"].0, NodeId(1));
}

#[test]
fn an_anomaly_moves_the_service_once_at_its_observed_size_and_never_back() {
    // n1 has one CPU: 1.5 observed cores fit only on n2.
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::with(tuning(), &[2 * GB, GB], &[(1, 1)], vec![]);
    assert_eq!(h.running(1, &a, true), 1);
    let anomaly = |g: u64, seq: u64| {
        (
            seq,
            AgentEvent::Anomaly {
                instance: instance_name("video-a", g),
                resource: smart_proto::agent::Resource::Cpu,
                observed: 1.5,
                reserved: 0.05,
            },
        )
    };
    h.reports.get_mut(&1).unwrap().notices = vec![anomaly(1, 1)];
    let out = h.round(1, vec![instance(&a, 1, 1, true)]);
    let [
        Output::Command {
            req,
            to,
            cmd: AgentCommand::MigrateIn { reservation, .. },
            ..
        },
    ] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    assert_eq!(to.node, NodeId(2));
    assert!(
        reservation.cpu_cores > 1.5 - 1e-9,
        "moved at its observed size: {reservation:?}"
    );
    let req = *req;
    let mut new = instance(&a, 2, 2, true);
    new.reservation = *reservation;
    assert_eq!(h.ok(req, new.clone()), vec![migrate_out(3, 1, 2, &a, 1, 2)]);
    assert_eq!(h.done(3), vec![migrated("video-a", 1, 2, "anomaly")]);
    // The source stopped its instance.
    h.reports.get_mut(&1).unwrap().notices.clear();
    assert_eq!(h.round(1, vec![]), vec![]);
    // On n2 it still runs at 1.5 cores, over what its old profile said: the same cause
    // does not move it again (no back and forth).
    h.reports.get_mut(&2).unwrap().notices = vec![anomaly(2, 1)];
    let out = h.round(2, vec![new]);
    assert_eq!(
        out,
        vec![Output::Publish(Event::Notice {
            service: "video-a".into(),
            node: NodeId(2),
            reason: "anomaly (Cpu at 1.500, reserved 0.050): kept on n2: already grown or moved once for its Cpu: acting again would be thrash".into(),
        })]
    );
    assert_eq!(h.e.status().services["video-a"].0, NodeId(2));
}

#[test]
fn a_failing_health_check_drains_its_node_and_recovery_undrains_it() {
    let (mut h, a) = one_on_n1(true);
    h.reports.get_mut(&1).unwrap().failing_checks = vec![("command".into(), "disk full".into())];
    let out = h.round(1, vec![instance(&a, 1, 1, true)]);
    assert_eq!(out[0], migrate_in(2, 1, 2, &a, 2));
    assert_eq!(
        out[1],
        Output::Publish(Event::NodeHealth {
            node: NodeId(1),
            healthy: false,
            detail: "command: disk full: drained".into(),
        })
    );
    assert!(matches!(&out[2], Output::Replicate { replica, .. }
        if replica.drained == vec![NodeId(1)] && replica.health_drained == vec![NodeId(1)]));
    assert_eq!(out.len(), 3);
    // Still failing: nothing more.
    assert_eq!(h.round(1, vec![instance(&a, 1, 1, true)]), vec![]);
    // Recovered: back in placement, and said so.
    h.reports.get_mut(&1).unwrap().failing_checks.clear();
    let out = h.round(1, vec![instance(&a, 1, 1, true)]);
    assert_eq!(
        out[1],
        Output::Publish(Event::NodeHealth {
            node: NodeId(1),
            healthy: true,
            detail: "all checks pass again: back in placement".into(),
        })
    );
    assert!(h.e.status().drained.is_empty());
    // An operator's drain is not undone by a healthy report.
    h.api(20, Request::Drain { node: NodeId(3) });
    h.round(3, vec![]);
    assert_eq!(h.e.status().drained, vec![NodeId(3)]);
}

#[test]
fn a_service_without_clients_for_idle_stop_after_is_stopped_and_freed() {
    let t = ControlTuning {
        admission: AdmissionSettings {
            idle_stop_after: Some(Duration::from_secs(60)),
            ..settings()
        },
        ..tuning()
    };
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::with(t, &[GB], &[], vec![]);
    h.running(1, &a, true);
    let idle = || vec![with_clients(instance(&a, 1, 1, true), 0)];
    assert_eq!(h.round(1, idle()), vec![]);
    h.at(Duration::from_secs(59));
    assert_eq!(h.round(1, idle()), vec![]);
    h.at(Duration::from_secs(1));
    let out = h.round(1, idle());
    assert_eq!(out[0], stop_cmd(2, 1, "video-a.1"));
    assert_eq!(
        out[1],
        Output::Publish(Event::Stopped {
            service: "video-a".into(),
            node: NodeId(1),
            reason: "no clients for 60 s".into(),
        })
    );
    assert!(matches!(&out[2], Output::Replicate { replica, .. } if replica.services.is_empty()));
    assert!(h.e.status().services.is_empty());
    assert_eq!(h.e.admission.service_count(), 0);
}

#[test]
fn a_viewer_resets_the_idle_clock() {
    let t = ControlTuning {
        admission: AdmissionSettings {
            idle_stop_after: Some(Duration::from_secs(60)),
            ..settings()
        },
        ..tuning()
    };
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::with(t, &[GB], &[], vec![]);
    h.running(1, &a, true);
    h.round(1, vec![with_clients(instance(&a, 1, 1, true), 0)]);
    h.at(Duration::from_secs(50));
    h.round(1, vec![with_clients(instance(&a, 1, 1, true), 1)]);
    h.at(Duration::from_secs(20));
    assert_eq!(
        h.round(1, vec![with_clients(instance(&a, 1, 1, true), 0)]),
        vec![]
    );
    assert_eq!(h.e.status().services.len(), 1);
}
