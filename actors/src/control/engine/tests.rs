//! Control engine tests on the exact outputs it emits (openraft style): each test drives the
//! engine with inputs and a hand-made clock and asserts the commands, answers and events.

use std::collections::BTreeMap;

use smart_proto::agent::{AgentError, AgentEvent, InstanceState, NodeUsage, UsageReading};

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

fn tuning() -> ControlTuning {
    ControlTuning {
        release_grace: Duration::from_secs(10),
        request_timeout: T,
        ..ControlTuning::default()
    }
}

fn spec(name: &str, bps: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        class: "distributor".into(),
        command: vec!["d".into(), "{listen}".into()],
        env: vec![],
        per_client_bps: Some(bps),
    }
}

/// An instance as an agent reports it once started.
fn instance(service: &ServiceSpec, generation: u64, n: u64, api: bool) -> InstanceReport {
    InstanceReport {
        instance: instance_name(&service.name, generation),
        launch: launch_of(service),
        state: InstanceState::Running,
        reservation: ControlEngine::reservation(service, 0),
        endpoint: Some(format!("http://127.0.0.{n}:90{generation:02}/")),
        control_socket: format!("/n{n}/{}.sock", instance_name(&service.name, generation)),
        speaks_api: api,
        usage: None,
        restarts: 0,
        anomalous: vec![],
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
        let agents: Vec<AgentAddr> = (1..=mems.len() as u64).map(agent).collect();
        let mut e =
            ControlEngine::new(NodeId(1), EPOCH, tuning(), Replica::default(), &agents).unwrap();
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
            launch: launch_of(s),
            reservation: ControlEngine::reservation(s, clients),
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
            launch: launch_of(s),
            reservation: ControlEngine::reservation(s, 0),
            source: NodeId(from),
            source_control: format!("/n{from}/{}.sock", instance_name(&s.name, generation - 1)),
            reserved_as: None,
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
    let (ws_s, ws_l) = (
        ControlEngine::reservation(&s, 0).mem_bytes,
        ControlEngine::reservation(&l1, 0).mem_bytes,
    );
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
    let inst = |n| vec![with_clients(instance(&a, 1, 1, true), n)];
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
        vec![Output::Publish(Event::Notice {
            service: "video-a".into(),
            node: NodeId(1),
            reason: "released 2 client(s): its instance reports 1 connected, 3 were admitted"
                .into()
        })]
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
            "drain (restarted: restore failed; restarted on the target)"
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
    // An anomaly move (the source stays in placement), whose target dies mid-restore.
    let (mut h, a) = one_on_n1(true);
    let mut r = h.reports[&1].clone();
    r.instances = vec![instance(&a, 1, 1, true)];
    r.notices = vec![(
        1,
        AgentEvent::Anomaly {
            instance: "video-a.1".into(),
            resource: smart_proto::agent::Resource::Cpu,
            observed: 0.5,
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
