//! Control engine tests on the exact outputs it emits (openraft style): each test drives the
//! engine with inputs and a hand-made clock and asserts the commands, answers and events.

use std::collections::BTreeMap;

use smart_proto::agent::{
    AgentError, AgentEvent, InstanceState, NodeUsage, SourceExport, UsageReading,
};

use super::*;

const EPOCH: Epoch = 5;
const T: Duration = Duration::from_secs(2);

fn addr(n: u64) -> SocketAddr {
    format!("127.0.0.{n}:7000").parse().unwrap()
}

fn agent(n: u64) -> AgentAddr {
    AgentAddr {
        node: NodeId(n),
        addr: addr(n),
    }
}

fn mb(x: f64) -> u64 {
    (x * 1e6) as u64
}

/// An agent report of an empty node with `mem` bytes of memory.
fn empty_report(n: u64, mem: u64) -> AgentReport {
    AgentReport {
        node: NodeId(n),
        highest_epoch: EPOCH,
        usage: Some(NodeUsage {
            cpus: 4,
            cpu_busy_cores: 0.1,
            mem_total_bytes: mem,
            mem_available_bytes: mem,
            nic_capacity_bps: 1_000_000_000,
            net_bps: 0.0,
        }),
        ..Default::default()
    }
}

/// The class profile of the tests' distributors: synthetic (thesis Tables 5.2/5.3's
/// shape), measured with a 400 kbit/s, 10-minute video.
pub(crate) fn profile() -> smart_proto::profile::ServiceProfile {
    use smart_admission::synthetic::{Gen, VideoSpec, distributor};
    let mut p = distributor(
        &VideoSpec {
            bitrate_bps: 400e3,
            duration_s: 600.0,
            cache_fraction: 0.2,
        },
        &Gen {
            len: 64,
            seed: 7,
            shared: None,
        },
    );
    p.video = Some(smart_proto::profile::VideoRef {
        bitrate_bps: 400_000,
        duration_ms: 600_000,
        window_fraction: 0.2,
    });
    p
}

/// The tests' settings: the profile above as the default, no idle stops and no copy holds
/// (their own tests turn them on).
pub(crate) fn settings() -> AdmissionSettings {
    AdmissionSettings {
        default_profile: Some(profile()),
        idle_stop_after: None,
        copy_rate_bps: None,
        ..AdmissionSettings::default()
    }
}

fn tuning() -> ControlTuning {
    ControlTuning {
        release_grace: Duration::from_secs(10),
        request_timeout: T,
        admission: settings(),
        ..ControlTuning::default()
    }
}

/// What `s` reserves with `clients` clients: the default profile scaled to its video.
fn reservation(s: &ServiceSpec, clients: usize) -> Reservation {
    let p = smart_admission::scale::for_video(&profile(), s.per_client_bps.unwrap(), s.duration_ms);
    smart_admission::scale::reservation_of(&p, clients, settings().reserve_quantile)
}

/// `s`'s launch with the limits of its reservation at `clients` clients (documented
/// headroom: CPU × 2, at least 0.1 core; memory × 1.5 + 32 MiB).
fn launch(s: &ServiceSpec, clients: usize) -> LaunchSpec {
    let r = reservation(s, clients);
    LaunchSpec {
        cpu_cores: Some((r.cpu_cores * 2.0).max(0.1)),
        memory_bytes: Some((r.mem_bytes as f64 * 1.5) as u64 + (32 << 20)),
        ..launch_of(s)
    }
}

fn spec(name: &str, bps: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        class: "distributor".into(),
        command: vec!["d".into(), "{listen}".into()],
        env: vec![],
        per_client_bps: Some(bps),
        duration_ms: None,
    }
}

/// An instance as an agent reports it once started.
fn instance(service: &ServiceSpec, generation: u64, n: u64, api: bool) -> InstanceReport {
    InstanceReport {
        instance: instance_name(&service.name, generation),
        launch: launch_of(service),
        state: InstanceState::Running,
        reservation: match service.per_client_bps {
            Some(_) => reservation(service, 0),
            None => Reservation::default(),
        },
        endpoint: Some(format!("http://127.0.0.{n}:90{generation:02}/")),
        control_socket: format!("/n{n}/{}.sock", instance_name(&service.name, generation)),
        checkpoint_export: Some(format!("10.0.0.{n}:7400")),
        speaks_api: api,
        usage: None,
        restarts: 0,
        anomalous: vec![],
        limits_enforced: true,
    }
}

fn with_clients(mut i: InstanceReport, clients: u32) -> InstanceReport {
    i.usage = Some(UsageReading {
        instance: i.instance.clone(),
        clients: Some(clients),
        speaks_api: i.speaks_api,
        ..Default::default()
    });
    i
}

fn placement(service: &str, n: u64, generation: u64) -> Placement {
    Placement {
        service: service.into(),
        node: NodeId(n),
        endpoint: format!("http://127.0.0.{n}:90{generation:02}/"),
        client: None,
    }
}

fn with_client(p: Placement, client: u64) -> Placement {
    Placement {
        client: Some(client),
        ..p
    }
}

/// A test harness: the engine, its clock, and the agents' reports.
struct H {
    e: ControlEngine,
    now: Instant,
    reports: BTreeMap<u64, AgentReport>,
}

impl H {
    /// A rebuilt, acting engine over nodes with these memory sizes (node ids from 1), whose
    /// agents reported `reports` (empty nodes when not given).
    fn new(mems: &[u64], reports: Vec<AgentReport>) -> (H, Vec<Output>) {
        Self::with(tuning(), mems, &[], reports)
    }

    /// [`H::new`] with these settings, and nodes `(id, cpus)` of other than 4 CPUs.
    fn with(
        tuning: ControlTuning,
        mems: &[u64],
        cpus: &[(u64, u32)],
        reports: Vec<AgentReport>,
    ) -> (H, Vec<Output>) {
        let agents: Vec<AgentAddr> = (1..=mems.len() as u64).map(agent).collect();
        let mut e =
            ControlEngine::new(NodeId(1), EPOCH, tuning, Replica::default(), &agents).unwrap();
        let now = Instant::now();
        assert_eq!(
            e.handle(Input::Start, now),
            vec![Output::Round {
                agents: agents.clone(),
                epoch: EPOCH,
                timeout: T,
            }]
        );
        let mut by_node: BTreeMap<u64, AgentReport> = mems
            .iter()
            .enumerate()
            .map(|(i, m)| (i as u64 + 1, empty_report(i as u64 + 1, *m)))
            .collect();
        for (n, c) in cpus {
            if let Some(u) = by_node.get_mut(n).and_then(|r| r.usage.as_mut()) {
                u.cpus = *c;
            }
        }
        for r in reports {
            let mem = by_node[&r.node.0].usage;
            by_node.insert(r.node.0, AgentReport { usage: mem, ..r });
        }
        let results = agents
            .iter()
            .map(|a| {
                (
                    *a,
                    Ok(AgentReply::Report(Box::new(by_node[&a.node.0].clone()))),
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
        e.handle(
            Input::SetActing {
                epoch: EPOCH,
                acting: true,
            },
            now,
        );
        (
            H {
                e,
                now,
                reports: by_node,
            },
            out,
        )
    }

    fn at(&mut self, d: Duration) {
        self.now += d;
    }

    fn api(&mut self, id: ApiId, req: Request) -> Vec<Output> {
        self.e.handle(Input::Api { id, req }, self.now)
    }

    fn reply(&mut self, req: ReqId, result: Result<AgentReply, PeerError>) -> Vec<Output> {
        self.e.handle(Input::Reply { req, result }, self.now)
    }

    fn ok(&mut self, req: ReqId, i: InstanceReport) -> Vec<Output> {
        self.reply(req, Ok(AgentReply::Instance(Box::new(i))))
    }

    fn done(&mut self, req: ReqId) -> Vec<Output> {
        self.reply(req, Ok(AgentReply::Done))
    }

    fn fail(&mut self, req: ReqId, why: &str) -> Vec<Output> {
        self.reply(
            req,
            Ok(AgentReply::Failed(AgentError::Failed(why.to_string()))),
        )
    }

    fn timeout(&mut self, req: ReqId, n: u64) -> Vec<Output> {
        self.reply(req, Err(PeerError::Timeout(addr(n))))
    }

    fn live(&mut self, nodes: &[u64]) -> Vec<Output> {
        self.e.handle(
            Input::Agents(nodes.iter().map(|n| agent(*n)).collect()),
            self.now,
        )
    }

    /// A refresh round in which node `n`'s agent lists `instances`.
    fn round(&mut self, n: u64, instances: Vec<InstanceReport>) -> Vec<Output> {
        let mut r = self.reports[&n].clone();
        r.instances = instances;
        self.reports.insert(n, r.clone());
        let started = self.now;
        self.e.handle(
            Input::Reports {
                started,
                results: vec![(agent(n), Ok(AgentReply::Report(Box::new(r))))],
            },
            self.now,
        )
    }

    /// Admits `spec`'s service and starts it: returns the start's request id and node.
    fn admit(&mut self, id: ApiId, s: &ServiceSpec) -> (ReqId, u64) {
        let out = self.api(id, Request::AdmitService(s.clone()));
        let [Output::Command { req, to, cmd, .. }] = out.as_slice() else {
            panic!("expected one start, got {out:?}")
        };
        assert!(matches!(cmd, AgentCommand::Start { .. }), "{cmd:?}");
        (*req, to.node.0)
    }

    /// Admits and starts `spec`'s service, placed wherever admission says.
    fn running(&mut self, id: ApiId, s: &ServiceSpec, api: bool) -> u64 {
        let (req, n) = self.admit(id, s);
        self.ok(req, instance(s, 1, n, api));
        n
    }
}

fn start_cmd(req: ReqId, n: u64, s: &ServiceSpec, generation: u64, clients: usize) -> Output {
    Output::Command {
        req,
        to: agent(n),
        epoch: EPOCH,
        cmd: AgentCommand::Start {
            instance: instance_name(&s.name, generation),
            launch: launch(s, clients),
            reservation: reservation(s, clients),
        },
        timeout: T * 5,
    }
}

fn stop_cmd(req: ReqId, n: u64, instance: &str) -> Output {
    Output::Command {
        req,
        to: agent(n),
        epoch: EPOCH,
        cmd: AgentCommand::Stop {
            instance: instance.into(),
        },
        timeout: T * 5,
    }
}

fn migrate_in(req: ReqId, from: u64, to: u64, s: &ServiceSpec, generation: u64) -> Output {
    Output::Command {
        req,
        to: agent(to),
        epoch: EPOCH,
        cmd: AgentCommand::MigrateIn {
            instance: instance_name(&s.name, generation),
            launch: launch(s, 0),
            reservation: reservation(s, 0),
            source: NodeId(from),
            source_control: format!("/n{from}/{}.sock", instance_name(&s.name, generation - 1)),
            // The target pulls from the source agent's export when it is on another host.
            source_export: Some(Box::new(SourceExport {
                addr: format!("10.0.0.{from}:7400"),
                instance: instance_name(&s.name, generation - 1),
            })),
            reserved_as: None,
            copy_rate_bps: None,
        },
        timeout: T * 30,
    }
}

fn migrate_out(req: ReqId, from: u64, to: u64, s: &ServiceSpec, old: u64, new: u64) -> Output {
    Output::Command {
        req,
        to: agent(from),
        epoch: EPOCH,
        cmd: AgentCommand::MigrateOut {
            instance: instance_name(&s.name, old),
            target: NodeId(to),
            target_url: format!("http://127.0.0.{to}:90{new:02}/"),
        },
        timeout: T * 10,
    }
}

fn migrated(service: &str, from: u64, to: u64, reason: &str) -> Output {
    Output::Publish(Event::Migrated {
        service: service.into(),
        from: NodeId(from),
        to: NodeId(to),
        reason: reason.into(),
    })
}

const GB: u64 = 8 << 30;

// -------------------------------------------------------------------------------------
// Rebuild
// -------------------------------------------------------------------------------------

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
    assert_eq!(
        out,
        vec![
            stop_cmd(1, 2, "video-a.2"),
            Output::Rebuilt {
                epoch: EPOCH,
                agents: 2
            }
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
    // a generation above any the old Control used.
    assert_eq!(
        out,
        vec![
            start_cmd(1, 1, &a, 1001, 2),
            Output::Rebuilt {
                epoch: EPOCH,
                agents: 2
            }
        ]
    );
    assert_eq!(e.status().drained, vec![NodeId(2)]);
}

// -------------------------------------------------------------------------------------
// Admission, the Smart-GloVE client rule, releases
// -------------------------------------------------------------------------------------

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
                spec: None
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
                spec: Some(a)
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
fn a_service_that_cannot_start_is_lost_and_its_waiters_are_told() {
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
    let out = h.fail(req, "no such program");
    let lost = |id| Output::Reply {
        id,
        resp: Response::Error(ApiError::Internal {
            reason: "could not start video-a: no such program".into(),
        }),
    };
    assert_eq!(
        out,
        vec![
            lost(1),
            lost(2),
            Output::Publish(Event::Lost {
                service: "video-a".into(),
                reason: "no such program".into()
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

// -------------------------------------------------------------------------------------
// Node failures, lost instances, strays
// -------------------------------------------------------------------------------------

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
    // An older generation still running (a partition's leftover) is stopped.
    h.at(Duration::from_secs(1));
    assert_eq!(
        h.round(1, vec![instance(&a, 1, 1, true), instance(&a, 2, 1, true)]),
        vec![stop_cmd(3, 1, "video-a.1")]
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

// -------------------------------------------------------------------------------------
// Drains and the migration state machine, step by step
// -------------------------------------------------------------------------------------

/// Two nodes, `video-a` running on n1 (the bigger); returns the harness.
fn one_on_n1(api: bool) -> (H, ServiceSpec) {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB, GB / 2], vec![]);
    assert_eq!(h.running(1, &a, api), 1);
    (h, a)
}

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
    // The timed-out restore finished after all: generation 2 is older than the service's
    // 3, so the next refresh stops it.
    h.at(Duration::from_secs(1));
    assert_eq!(
        h.round(2, vec![instance(&a, 2, 2, true), instance(&a, 3, 2, true)]),
        vec![stop_cmd(5, 2, "video-a.2")]
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
fn the_target_failing_to_start_keeps_the_service_on_a_source_still_in_placement() {
    // No control API: a start on the target, which fails; an anomaly move keeps the source
    // in placement, so the service stays where it was.
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB], vec![]);
    h.running(1, &a, false);
    let sid = h.e.services["video-a"].sid;
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

// -------------------------------------------------------------------------------------
// The QoS loop: profiles, reservations, anomalies, health, idle stops, copy holds
// -------------------------------------------------------------------------------------

/// A class measured at a steady `cpu` cores, `net` bits/s and `mem` bytes.
fn flat(class: &str, cpu: f64, net: f64, mem: u64) -> smart_proto::profile::ServiceProfile {
    use smart_proto::profile::{PROFILE_FORMAT_VERSION, Series, ServiceProfile};
    ServiceProfile {
        version: PROFILE_FORMAT_VERSION,
        service: class.into(),
        interval_ms: 1000,
        base: Series {
            cpu_cores: vec![cpu; 32],
            net_bps: vec![net; 32],
            mem_bytes: vec![mem; 32],
        },
        per_client: None,
        working_set_bytes: mem,
        video: None,
    }
}

fn service(name: &str, class: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        class: class.into(),
        command: vec!["t".into(), "{listen}".into()],
        env: vec![],
        per_client_bps: None,
        duration_ms: None,
    }
}

fn put(h: &mut H, id: ApiId, class: &str, p: smart_proto::profile::ServiceProfile) -> Vec<Output> {
    h.api(
        id,
        Request::PutProfile {
            class: class.into(),
            profile: Box::new(p),
        },
    )
}

/// A refresh in which `n` lists `i` with this usage.
fn using(mut i: InstanceReport, cpu: f64, clients: u32) -> InstanceReport {
    i.usage = Some(UsageReading {
        instance: i.instance.clone(),
        cpu_cores: cpu,
        net_bps: Some(0.0),
        mem_bytes: 1_000_000,
        clients: Some(clients),
        speaks_api: i.speaks_api,
    });
    i
}

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

impl Output {
    fn reply(self) -> Response {
        match self {
            Output::Reply { resp, .. } => resp,
            other => panic!("not a reply: {other:?}"),
        }
    }
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
