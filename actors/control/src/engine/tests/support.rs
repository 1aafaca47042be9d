//! Fixtures shared by the engine's tests: a harness driving [`ControlEngine`] with a
//! hand-made clock and the agents' reports, and builders of the exact outputs the tests
//! expect (commands at the documented timeouts, events).

use std::collections::BTreeMap;

use smart_proto::agent::{
    AgentError, InstanceReport, InstanceState, NodeUsage, SourceExport, UsageReading,
};

use crate::engine::*;

pub(super) const EPOCH: Epoch = 5;

pub(super) const T: Duration = Duration::from_secs(2);

pub(super) fn addr(n: u64) -> SocketAddr {
    format!("127.0.0.{n}:7000").parse().unwrap()
}

pub(super) fn agent(n: u64) -> AgentAddr {
    AgentAddr {
        node: NodeId(n),
        addr: addr(n),
    }
}

pub(super) fn mb(x: f64) -> u64 {
    (x * 1e6) as u64
}

/// An agent report of an empty node with `mem` bytes of memory.
pub(super) fn empty_report(n: u64, mem: u64) -> AgentReport {
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

pub(super) fn tuning() -> ControlTuning {
    ControlTuning {
        release_grace: Duration::from_secs(10),
        request_timeout: T,
        admission: settings(),
        ..ControlTuning::default()
    }
}

/// What `s` reserves with `clients` clients: the default profile scaled to its video.
pub(super) fn reservation(s: &ServiceSpec, clients: usize) -> Reservation {
    let p = smart_admission::scale::for_video(&profile(), s.per_client_bps.unwrap(), s.duration_ms);
    smart_admission::scale::reservation_of(&p, clients, settings().reserve_quantile)
}

/// `s`'s launch with the limits of its reservation at `clients` clients (documented
/// headroom: CPU × 2, at least 0.1 core; memory × 1.5 + 32 MiB).
pub(super) fn launch(s: &ServiceSpec, clients: usize) -> LaunchSpec {
    let r = reservation(s, clients);
    LaunchSpec {
        cpu_cores: Some((r.cpu_cores * 2.0).max(0.1)),
        memory_bytes: Some((r.mem_bytes as f64 * 1.5) as u64 + (32 << 20)),
        ..launch_of(s)
    }
}

pub(super) fn spec(name: &str, bps: u64) -> ServiceSpec {
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
pub(super) fn instance(
    service: &ServiceSpec,
    generation: u64,
    n: u64,
    api: bool,
) -> InstanceReport {
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

pub(super) fn with_clients(mut i: InstanceReport, clients: u32) -> InstanceReport {
    i.usage = Some(UsageReading {
        instance: i.instance.clone(),
        clients: Some(clients),
        speaks_api: i.speaks_api,
        ..Default::default()
    });
    i
}

pub(super) fn placement(service: &str, n: u64, generation: u64) -> Placement {
    Placement {
        service: service.into(),
        node: NodeId(n),
        endpoint: format!("http://127.0.0.{n}:90{generation:02}/"),
        client: None,
    }
}

pub(super) fn with_client(p: Placement, client: u64) -> Placement {
    Placement {
        client: Some(client),
        ..p
    }
}

/// A test harness: the engine, its clock, and the agents' reports.
pub(super) struct H {
    pub(super) e: ControlEngine,
    pub(super) now: Instant,
    pub(super) reports: BTreeMap<u64, AgentReport>,
}

impl H {
    /// A rebuilt, acting engine over nodes with these memory sizes (node ids from 1), whose
    /// agents reported `reports` (empty nodes when not given), and the outputs of the
    /// rebuild then of being let act.
    pub(super) fn new(mems: &[u64], reports: Vec<AgentReport>) -> (H, Vec<Output>) {
        Self::with(tuning(), mems, &[], reports)
    }

    /// [`H::new`] with these settings, and nodes `(id, cpus)` of other than 4 CPUs.
    pub(super) fn with(
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
        let mut out = e.handle(
            Input::Reports {
                started: now,
                results,
            },
            now,
        );
        // The rebuild's decisions leave once the engine may act.
        out.extend(e.handle(
            Input::SetActing {
                epoch: EPOCH,
                acting: true,
                until: None,
            },
            now,
        ));
        (
            H {
                e,
                now,
                reports: by_node,
            },
            out,
        )
    }

    pub(super) fn at(&mut self, d: Duration) {
        self.now += d;
    }

    pub(super) fn api(&mut self, id: ApiId, req: Request) -> Vec<Output> {
        self.e.handle(Input::Api { id, req }, self.now)
    }

    pub(super) fn reply(
        &mut self,
        req: ReqId,
        result: Result<AgentReply, PeerError>,
    ) -> Vec<Output> {
        self.e.handle(Input::Reply { req, result }, self.now)
    }

    pub(super) fn ok(&mut self, req: ReqId, i: InstanceReport) -> Vec<Output> {
        self.reply(req, Ok(AgentReply::Instance(Box::new(i))))
    }

    pub(super) fn done(&mut self, req: ReqId) -> Vec<Output> {
        self.reply(req, Ok(AgentReply::Done))
    }

    pub(super) fn fail(&mut self, req: ReqId, why: &str) -> Vec<Output> {
        self.reply(
            req,
            Ok(AgentReply::Failed(AgentError::Failed(why.to_string()))),
        )
    }

    pub(super) fn timeout(&mut self, req: ReqId, n: u64) -> Vec<Output> {
        self.reply(req, Err(PeerError::Timeout(addr(n))))
    }

    pub(super) fn live(&mut self, nodes: &[u64]) -> Vec<Output> {
        self.e.handle(
            Input::Agents(nodes.iter().map(|n| agent(*n)).collect()),
            self.now,
        )
    }

    /// A refresh round in which node `n`'s agent lists `instances`.
    pub(super) fn round(&mut self, n: u64, instances: Vec<InstanceReport>) -> Vec<Output> {
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

    /// A refresh round begun at `started` in which each node `n` lists its instances.
    pub(super) fn round_at(
        &mut self,
        started: Instant,
        lists: Vec<(u64, Vec<InstanceReport>)>,
    ) -> Vec<Output> {
        let mut results = Vec::new();
        for (n, instances) in lists {
            let mut r = self.reports[&n].clone();
            r.instances = instances;
            self.reports.insert(n, r.clone());
            results.push((agent(n), Ok(AgentReply::Report(Box::new(r)))));
        }
        self.e.handle(Input::Reports { started, results }, self.now)
    }

    /// [`H::round_at`] begun now.
    pub(super) fn rounds(&mut self, lists: Vec<(u64, Vec<InstanceReport>)>) -> Vec<Output> {
        self.round_at(self.now, lists)
    }

    /// Admits `spec`'s service and starts it: returns the start's request id and node.
    pub(super) fn admit(&mut self, id: ApiId, s: &ServiceSpec) -> (ReqId, u64) {
        let out = self.api(id, Request::AdmitService(s.clone()));
        let [Output::Command { req, to, cmd, .. }] = out.as_slice() else {
            panic!("expected one start, got {out:?}")
        };
        assert!(matches!(cmd, AgentCommand::Start { .. }), "{cmd:?}");
        (*req, to.node.0)
    }

    /// Admits and starts `spec`'s service, placed wherever admission says.
    pub(super) fn running(&mut self, id: ApiId, s: &ServiceSpec, api: bool) -> u64 {
        let (req, n) = self.admit(id, s);
        self.ok(req, instance(s, 1, n, api));
        n
    }
}

/// The instances `out` starts, in order.
pub(super) fn started_instances(out: &[Output]) -> Vec<&str> {
    out.iter()
        .filter_map(|o| match o {
            Output::Command {
                cmd: AgentCommand::Start { instance, .. },
                ..
            } => Some(instance.as_str()),
            _ => None,
        })
        .collect()
}

pub(super) fn start_cmd(
    req: ReqId,
    n: u64,
    s: &ServiceSpec,
    generation: u64,
    clients: usize,
) -> Output {
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

pub(super) fn stop_cmd(req: ReqId, n: u64, instance: &str) -> Output {
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

/// The reservation update of `instance` on `n` to `s`'s reservation at `clients` clients.
pub(super) fn update_cmd(
    req: ReqId,
    n: u64,
    s: &ServiceSpec,
    instance: &str,
    clients: usize,
) -> Output {
    let l = launch(s, clients);
    Output::Command {
        req,
        to: agent(n),
        epoch: EPOCH,
        cmd: AgentCommand::Update {
            instance: instance.into(),
            reservation: reservation(s, clients),
            cpu_cores: l.cpu_cores,
            memory_bytes: l.memory_bytes,
        },
        timeout: T * 5,
    }
}

pub(super) fn migrate_in(
    req: ReqId,
    from: u64,
    to: u64,
    s: &ServiceSpec,
    generation: u64,
) -> Output {
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
            copy_rate_bps: None,
        },
        timeout: T * 30,
    }
}

pub(super) fn migrate_out(
    req: ReqId,
    from: u64,
    to: u64,
    s: &ServiceSpec,
    old: u64,
    new: u64,
) -> Output {
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

pub(super) fn migrated(service: &str, from: u64, to: u64, reason: &str) -> Output {
    Output::Publish(Event::Migrated {
        service: service.into(),
        from: NodeId(from),
        to: NodeId(to),
        reason: reason.into(),
    })
}

/// The notice of a reconciliation: the copy kept on `node`, and what is stopped.
pub(super) fn kept_notice(service: &str, node: u64, reason: &str) -> Output {
    Output::Publish(Event::Notice {
        service: service.into(),
        node: NodeId(node),
        reason: reason.into(),
    })
}

pub(super) const GB: u64 = 8 << 30;

// Drains and the migration state machine, step by step

/// Two nodes, `video-a` running on n1 (the bigger); returns the harness.
pub(super) fn one_on_n1(api: bool) -> (H, ServiceSpec) {
    let a = spec("video-a", 400_000);
    let (mut h, _) = H::new(&[2 * GB, GB, GB / 2], vec![]);
    assert_eq!(h.running(1, &a, api), 1);
    (h, a)
}

// The QoS loop: profiles, reservations, anomalies, health, idle stops, copy holds

/// A class measured at a steady `cpu` cores, `net` bits/s and `mem` bytes.
pub(super) fn flat(
    class: &str,
    cpu: f64,
    net: f64,
    mem: u64,
) -> smart_proto::profile::ServiceProfile {
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

pub(super) fn service(name: &str, class: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        class: class.into(),
        command: vec!["t".into(), "{listen}".into()],
        env: vec![],
        per_client_bps: None,
        duration_ms: None,
    }
}

pub(super) fn put(
    h: &mut H,
    id: ApiId,
    class: &str,
    p: smart_proto::profile::ServiceProfile,
) -> Vec<Output> {
    h.api(
        id,
        Request::PutProfile {
            class: class.into(),
            profile: Box::new(p),
        },
    )
}

/// A refresh in which `n` lists `i` with this usage.
pub(super) fn using(mut i: InstanceReport, cpu: f64, clients: u32) -> InstanceReport {
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

impl Output {
    pub(super) fn reply(self) -> Response {
        match self {
            Output::Reply { resp, .. } => resp,
            other => panic!("not a reply: {other:?}"),
        }
    }
}
