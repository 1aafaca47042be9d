//! Class profiles: stored, refused, replicated across a failover, and refined online.

use crate::engine::*;

use super::support::*;

#[test]
fn a_class_without_a_profile_is_refused_with_an_error_naming_it() {
    let t = ControlTuning {
        admission: AdmissionSettings {
            default_profile: None,
            ..settings()
        },
        ..tuning()
    };
    let (mut h, _) = H::with(t, &[GB], &[], vec![]);
    assert_eq!(
        h.api(1, Request::AdmitService(service("t-1", "transcoder"))),
        vec![Output::Reply {
            id: 1,
            resp: Response::Error(ApiError::Rejected {
                reason: "no profile for service class `transcoder`: store one with `smart profiles put transcoder FILE` (or give the nodes an [admission] default_profile)".into()
            })
        }]
    );
}

#[test]
fn a_stored_profile_is_admitted_at_its_measured_size_and_other_classes_keep_theirs() {
    let (mut h, _) = H::new(&[GB], vec![]);
    let out = put(
        &mut h,
        1,
        "transcoder",
        flat("transcoder", 0.7, 2e6, 100_000_000),
    );
    assert_eq!(
        out[0],
        Output::Publish(Event::ProfileStored {
            class: "transcoder".into(),
            source: ProfileSource::Measured,
            version: 1
        })
    );
    assert!(matches!(&out[1], Output::Replicate { replica, .. } if replica.profiles.len() == 1));
    assert_eq!(
        out[2],
        Output::Reply {
            id: 1,
            resp: Response::Ok
        }
    );
    // Its services reserve what was measured; limits add the documented headroom.
    let t = service("t-1", "transcoder");
    let want = Reservation {
        cpu_cores: 0.7,
        net_bps: 2e6,
        mem_bytes: 100_000_000,
    };
    assert_eq!(
        h.api(2, Request::AdmitService(t.clone())),
        vec![Output::Command {
            req: 1,
            to: agent(1),
            epoch: EPOCH,
            cmd: AgentCommand::Start {
                instance: "t-1.1".into(),
                launch: LaunchSpec {
                    cpu_cores: Some(1.4),
                    memory_bytes: Some(150_000_000 + (32 << 20)),
                    ..launch_of(&t)
                },
                reservation: want,
            },
            timeout: T * 5,
        }]
    );
    // A distributor still gets the distributor's (default) profile, scaled to its video.
    let d = spec("video-a", 4_000_000);
    assert_eq!(
        h.api(3, Request::AdmitService(d.clone())),
        vec![start_cmd(2, 1, &d, 1, 0)]
    );
    let (big, small) = (reservation(&d, 0), reservation(&spec("v", 400_000), 0));
    assert!(big.mem_bytes > 5 * small.mem_bytes, "{big:?} vs {small:?}");
    assert!(big.net_bps > 5.0 * small.net_bps, "{big:?} vs {small:?}");
    let Response::Profiles(list) = &h.api(4, Request::Profiles)[0].clone().reply() else {
        panic!()
    };
    assert_eq!(
        list.iter()
            .map(|p| (p.class.as_str(), p.source, p.version))
            .collect::<Vec<_>>(),
        vec![("transcoder", ProfileSource::Measured, 1)]
    );
    // A broken profile is refused with the reason.
    let mut bad = flat("transcoder", 0.7, 2e6, 1);
    bad.base.cpu_cores[3] = f64::NAN;
    assert_eq!(
        put(&mut h, 5, "transcoder", bad),
        vec![Output::Reply {
            id: 5,
            resp: Response::Error(ApiError::BadRequest {
                reason: "profile for `transcoder`: the base series is empty or has negative or non-finite values".into()
            })
        }]
    );
}

#[test]
fn profiles_survive_a_failover_in_the_registry_copy() {
    let (mut h, _) = H::new(&[GB], vec![]);
    let out = put(
        &mut h,
        1,
        "transcoder",
        flat("transcoder", 0.7, 2e6, 100_000_000),
    );
    let Output::Replicate { replica, .. } = out[1].clone() else {
        panic!("{out:?}")
    };
    let mut e = ControlEngine::new(NodeId(2), EPOCH + 1, tuning(), replica, &[agent(1)]).unwrap();
    e.handle(Input::Start, h.now);
    e.handle(
        Input::Reports {
            started: h.now,
            results: vec![(
                agent(1),
                Ok(AgentReply::Report(Box::new(h.reports[&1].clone()))),
            )],
        },
        h.now,
    );
    e.handle(
        Input::SetActing {
            epoch: EPOCH + 1,
            acting: true,
            until: None,
        },
        h.now,
    );
    let out = e.handle(
        Input::Api {
            id: 7,
            req: Request::Profile {
                class: "transcoder".into(),
            },
        },
        h.now,
    );
    let [
        Output::Reply {
            resp: Response::Profile(c),
            ..
        },
    ] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    assert_eq!((c.version, c.source), (1, ProfileSource::Measured));
    assert_eq!(c.profile, flat("transcoder", 0.7, 2e6, 100_000_000));
}

#[test]
fn a_refined_profile_becomes_the_class_profile_and_running_services_follow_it() {
    let t = ControlTuning {
        admission: AdmissionSettings {
            refine: smart_admission::refine::RefineConfig {
                window: 10,
                min_samples: 5,
                change_ratio: 0.10,
            },
            ..settings()
        },
        ..tuning()
    };
    let (mut h, _) = H::with(t, &[GB], &[], vec![]);
    put(
        &mut h,
        1,
        "transcoder",
        flat("transcoder", 0.2, 1e6, 50_000_000),
    );
    let s = service("t-1", "transcoder");
    let (req, _) = h.admit(2, &s);
    let mut i = instance(&s, 1, 1, true);
    i.reservation = Reservation {
        cpu_cores: 0.2,
        net_bps: 1e6,
        mem_bytes: 50_000_000,
    };
    h.ok(req, i.clone());
    let mut refined = None;
    for _ in 0..5 {
        let out = h.round(1, vec![using(i.clone(), 0.4, 0)]);
        refined = refined.or(out
            .into_iter()
            .find(|o| matches!(o, Output::Publish(Event::ProfileStored { .. }))));
    }
    assert_eq!(
        refined,
        Some(Output::Publish(Event::ProfileStored {
            class: "transcoder".into(),
            source: ProfileSource::Refined,
            version: 2
        }))
    );
    let Response::Services(st) = h.api(3, Request::Services)[0].clone().reply() else {
        panic!()
    };
    assert_eq!(st[0].profile, ProfileSource::Refined);
    assert!(
        st[0].reservation.cpu_cores >= 0.4,
        "{:?}",
        st[0].reservation
    );
}
