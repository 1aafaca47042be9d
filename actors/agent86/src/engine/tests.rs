//! Agent86 engine tests: each asserts the exact commands emitted.

use super::*;

const CONTROL: NodeId = NodeId(1);
const NEWER_CONTROL: NodeId = NodeId(2);

fn engine(persisted: Epoch) -> Agent86Engine {
    let mut cfg = Agent86Config::new(NodeId(7));
    cfg.anomaly.persist_intervals = 3;
    cfg.restart.max_restarts = 2;
    cfg.restart.window = Duration::from_secs(60);
    Agent86Engine::new(cfg, persisted)
}

fn launch() -> LaunchSpec {
    LaunchSpec {
        service: "vod".into(),
        command: vec!["distributor".into()],
        ..Default::default()
    }
}

fn resv() -> Reservation {
    Reservation {
        cpu_cores: 1.0,
        net_bps: 4.0e6,
        mem_bytes: 100 << 20,
    }
}

fn cmd(from: NodeId, epoch: Epoch, req: u64, op: AgentCommand) -> Event {
    Event::Control(Box::new(ControlCommand {
        from,
        epoch,
        req,
        op,
    }))
}

fn start_op(name: &str) -> AgentCommand {
    AgentCommand::Start {
        instance: name.into(),
        launch: launch(),
        reservation: resv(),
    }
}

fn ok(to: NodeId, req: u64, epoch: Epoch) -> Command {
    Command::Reply {
        to,
        req,
        epoch,
        result: Ok(()),
    }
}

fn stale(to: NodeId, req: u64, got: Epoch, highest: Epoch) -> Command {
    Command::Reply {
        to,
        req,
        epoch: got,
        result: Err(Refusal::StaleEpoch { got, highest }),
    }
}

fn start_cmd(name: &str) -> Command {
    Command::Start {
        instance: name.into(),
        launch: launch(),
        listen: None,
        restore_from: None,
    }
}

/// An engine at epoch 5 (durable) with instance `a` running.
fn running(t: Instant) -> Agent86Engine {
    let mut e = engine(5);
    assert_eq!(
        e.handle(cmd(CONTROL, 5, 1, start_op("a")), t),
        vec![start_cmd("a")]
    );
    assert_eq!(
        e.handle(
            Event::Started {
                instance: "a".into()
            },
            t
        ),
        vec![ok(CONTROL, 1, 5)]
    );
    e
}

#[test]
fn stale_epoch_is_refused_on_arrival() {
    let t = Instant::now();
    let mut e = engine(5);
    assert_eq!(
        e.handle(cmd(CONTROL, 4, 9, start_op("a")), t),
        vec![stale(CONTROL, 9, 4, 5)]
    );
    assert!(e.instance_names().is_empty());
}

#[test]
fn new_epoch_is_persisted_before_the_command_runs() {
    let t = Instant::now();
    let mut e = engine(5);
    assert_eq!(
        e.handle(cmd(NEWER_CONTROL, 6, 1, start_op("a")), t),
        vec![Command::PersistEpoch(6)]
    );
    // A second command of the same epoch waits behind it, without a second persist.
    assert_eq!(
        e.handle(
            cmd(
                NEWER_CONTROL,
                6,
                2,
                AgentCommand::Stop {
                    instance: "r".into()
                }
            ),
            t
        ),
        vec![]
    );
    assert_eq!(
        e.handle(Event::EpochPersisted(6), t),
        vec![
            start_cmd("a"),
            Command::Reply {
                to: NEWER_CONTROL,
                req: 2,
                epoch: 6,
                result: Err(Refusal::UnknownInstance)
            }
        ]
    );
    assert_eq!(e.highest_epoch(), 6);
}

#[test]
fn queued_command_is_fenced_at_execution_by_a_newer_epoch() {
    let t = Instant::now();
    let mut e = engine(5);
    assert_eq!(
        e.handle(cmd(CONTROL, 6, 1, start_op("a")), t),
        vec![Command::PersistEpoch(6)]
    );
    // Before epoch 6 is durable, a newer Control's epoch is heard in a heartbeat.
    assert_eq!(
        e.handle(Event::EpochObserved(7), t),
        vec![Command::PersistEpoch(7)]
    );
    // The epoch-6 command was valid on arrival but is stale when it would execute.
    assert_eq!(
        e.handle(Event::EpochPersisted(6), t),
        vec![stale(CONTROL, 1, 6, 7)]
    );
    assert_eq!(e.handle(Event::EpochPersisted(7), t), vec![]);
    assert!(e.instance_names().is_empty());
    // And the old Control stays fenced afterwards.
    assert_eq!(
        e.handle(
            cmd(
                CONTROL,
                6,
                2,
                AgentCommand::Stop {
                    instance: "a".into()
                }
            ),
            t
        ),
        vec![stale(CONTROL, 2, 6, 7)]
    );
}

#[test]
fn start_then_stop_replies_after_the_runtime_confirms() {
    let t = Instant::now();
    let mut e = running(t);
    assert_eq!(
        e.handle(cmd(CONTROL, 5, 2, start_op("a")), t),
        vec![Command::Reply {
            to: CONTROL,
            req: 2,
            epoch: 5,
            result: Err(Refusal::AlreadyExists)
        }]
    );
    assert_eq!(
        e.handle(
            cmd(
                CONTROL,
                5,
                3,
                AgentCommand::Stop {
                    instance: "a".into()
                }
            ),
            t
        ),
        vec![Command::Stop {
            instance: "a".into(),
            grace: Duration::from_secs(5)
        }]
    );
    let killed = ExitInfo {
        signal: Some(15),
        ..Default::default()
    };
    assert_eq!(
        e.handle(
            Event::Exited {
                instance: "a".into(),
                exit: killed
            },
            t
        ),
        vec![ok(CONTROL, 3, 5)]
    );
    assert!(e.instance_names().is_empty());
    assert_eq!(
        e.handle(
            cmd(
                CONTROL,
                5,
                4,
                AgentCommand::Stop {
                    instance: "a".into()
                }
            ),
            t
        ),
        vec![Command::Reply {
            to: CONTROL,
            req: 4,
            epoch: 5,
            result: Err(Refusal::UnknownInstance)
        }]
    );
}

#[test]
fn start_failure_is_replied_and_forgotten() {
    let t = Instant::now();
    let mut e = engine(5);
    e.handle(cmd(CONTROL, 5, 1, start_op("a")), t);
    assert_eq!(
        e.handle(
            Event::StartFailed {
                instance: "a".into(),
                error: "no such file".into()
            },
            t
        ),
        vec![Command::Reply {
            to: CONTROL,
            req: 1,
            epoch: 5,
            result: Err(Refusal::Failed("no such file".into()))
        }]
    );
    assert!(e.instance_names().is_empty());
}

#[test]
fn crashes_restart_within_policy_then_give_up() {
    let t0 = Instant::now();
    let mut e = running(t0);
    let crash = ExitInfo {
        signal: Some(11),
        ..Default::default()
    };
    let exited = || Event::Exited {
        instance: "a".into(),
        exit: crash,
    };
    for attempt in 1..=2 {
        let t = t0 + Duration::from_secs(attempt);
        assert_eq!(
            e.handle(exited(), t),
            vec![
                start_cmd("a"),
                Command::Notify(AgentEvent::InstanceRestarted {
                    instance: "a".into(),
                    attempt: attempt as u32,
                    exit: crash
                })
            ]
        );
        assert_eq!(
            e.handle(
                Event::Started {
                    instance: "a".into()
                },
                t
            ),
            vec![]
        );
    }
    assert_eq!(
        e.handle(exited(), t0 + Duration::from_secs(3)),
        vec![Command::Notify(AgentEvent::InstanceFailed {
            instance: "a".into(),
            restarts: 2,
            exit: crash
        })]
    );
    assert!(e.instance_names().is_empty());
}

#[test]
fn crashes_older_than_the_window_do_not_count() {
    let t0 = Instant::now();
    let mut e = running(t0);
    let crash = ExitInfo {
        code: Some(1),
        ..Default::default()
    };
    for k in 0..4u64 {
        // One crash every 40 s: never more than two within any 60 s window.
        let t = t0 + Duration::from_secs(40 * k);
        let out = e.handle(
            Event::Exited {
                instance: "a".into(),
                exit: crash,
            },
            t,
        );
        assert_eq!(out[0], start_cmd("a"), "crash {k} restarted: {out:?}");
        e.handle(
            Event::Started {
                instance: "a".into(),
            },
            t,
        );
    }
}

#[test]
fn clean_exit_is_reported_not_restarted() {
    let t = Instant::now();
    let mut e = running(t);
    assert_eq!(
        e.handle(
            Event::Exited {
                instance: "a".into(),
                exit: ExitInfo {
                    code: Some(0),
                    ..Default::default()
                }
            },
            t
        ),
        vec![Command::Notify(AgentEvent::InstanceFinished {
            instance: "a".into()
        })]
    );
}

fn usage(cpu: f64) -> Event {
    Event::Usage {
        node: NodeUsage::default(),
        instances: vec![UsageReading {
            instance: "a".into(),
            cpu_cores: cpu,
            net_bps: Some(1.0e6),
            mem_bytes: 50 << 20,
            clients: None,
            speaks_api: false,
        }],
    }
}

#[test]
fn persistent_overuse_is_flagged_once_and_cleared() {
    let t = Instant::now();
    let mut e = running(t);
    // 1.05 is within the 10 % tolerance of a 1.0-core reservation.
    for _ in 0..5 {
        assert_eq!(e.handle(usage(1.05), t), vec![]);
    }
    // Two intervals over, one under: not persistent.
    assert_eq!(e.handle(usage(1.3), t), vec![]);
    assert_eq!(e.handle(usage(1.3), t), vec![]);
    assert_eq!(e.handle(usage(0.9), t), vec![]);
    assert_eq!(e.handle(usage(1.2), t), vec![]);
    assert_eq!(e.handle(usage(1.2), t), vec![]);
    assert_eq!(
        e.handle(usage(1.5), t),
        vec![Command::Notify(AgentEvent::Anomaly {
            instance: "a".into(),
            resource: Resource::Cpu,
            observed: (1.2 + 1.2 + 1.5) / 3.0,
            reserved: 1.0
        })]
    );
    assert_eq!(e.handle(usage(1.5), t), vec![], "reported once");
    assert_eq!(e.report().instances[0].anomalous, vec![Resource::Cpu]);
    assert_eq!(e.handle(usage(0.5), t), vec![]);
    assert_eq!(e.handle(usage(0.5), t), vec![]);
    assert_eq!(
        e.handle(usage(0.5), t),
        vec![Command::Notify(AgentEvent::AnomalyCleared {
            instance: "a".into(),
            resource: Resource::Cpu
        })]
    );
}

#[test]
fn health_transitions_are_reported() {
    let t = Instant::now();
    let mut e = engine(0);
    let reading = |avail: u64, temp: f64| {
        Event::Health(HealthReading {
            mem_total_bytes: 1000,
            mem_available_bytes: avail,
            mem_pressure_some_avg10: Some(0.0),
            thermal: vec![("cpu".into(), temp)],
            command: None,
        })
    };
    assert_eq!(e.handle(reading(500, 50.0), t), vec![]);
    assert_eq!(
        e.handle(reading(20, 90.0), t),
        vec![
            Command::Notify(AgentEvent::NodeHealth {
                check: "memory_available".into(),
                healthy: false,
                detail: "2.0 % available".into()
            }),
            Command::Notify(AgentEvent::NodeHealth {
                check: "thermal:cpu".into(),
                healthy: false,
                detail: "90.0 °C".into()
            }),
        ]
    );
    assert_eq!(e.handle(reading(20, 90.0), t), vec![], "no repeat");
    assert_eq!(
        e.handle(reading(600, 90.0), t),
        vec![Command::Notify(AgentEvent::NodeHealth {
            check: "memory_available".into(),
            healthy: true,
            detail: "60.0 % available".into()
        })]
    );
}

#[test]
fn report_lets_a_new_control_rebuild() {
    let t = Instant::now();
    let mut e = running(t);
    e.handle(usage(0.7), t);
    let out = e.handle(cmd(NEWER_CONTROL, 8, 3, AgentCommand::Report), t);
    assert_eq!(out[0], Command::PersistEpoch(8));
    assert_eq!(out.len(), 1, "report waits for the epoch to be durable");
    let out = e.handle(Event::EpochPersisted(8), t);
    let [Command::Report { to, req, report }] = out.as_slice() else {
        panic!("expected one report, got {out:?}")
    };
    assert_eq!((*to, *req), (NEWER_CONTROL, 3));
    assert_eq!(report.node, NodeId(7));
    assert_eq!(report.highest_epoch, 8);
    assert_eq!(report.instances.len(), 1);
    assert_eq!(report.instances[0].instance, "a");
    assert_eq!(report.instances[0].state, InstanceState::Running);
    assert_eq!(report.instances[0].usage.as_ref().unwrap().cpu_cores, 0.7);
    assert_eq!(report.reserved_total.cpu_cores, 1.0);
    assert_eq!(report.reserved_total.mem_bytes, 100 << 20);
}

#[test]
fn migration_out_and_in() {
    let t = Instant::now();
    let mut src = running(t);
    assert_eq!(
        src.handle(
            cmd(
                CONTROL,
                5,
                2,
                AgentCommand::MigrateOut {
                    instance: "a".into(),
                    target: NodeId(9),
                    target_url: "http://t/".into(),
                }
            ),
            t
        ),
        vec![Command::MigrateOut {
            instance: "a".into(),
            target: NodeId(9),
            target_url: "http://t/".into(),
        }]
    );
    assert_eq!(
        src.handle(
            cmd(
                CONTROL,
                5,
                3,
                AgentCommand::MigrateOut {
                    instance: "a".into(),
                    target: NodeId(9),
                    target_url: "http://t/".into(),
                }
            ),
            t
        ),
        vec![Command::Reply {
            to: CONTROL,
            req: 3,
            epoch: 5,
            result: Err(Refusal::Busy)
        }]
    );
    assert_eq!(
        src.handle(
            Event::MigratedOut {
                instance: "a".into()
            },
            t
        ),
        vec![ok(CONTROL, 2, 5)]
    );
    assert!(src.instance_names().is_empty());

    let mut dst = engine(5);
    assert_eq!(
        dst.handle(
            cmd(
                CONTROL,
                5,
                2,
                AgentCommand::MigrateIn {
                    instance: "a".into(),
                    launch: launch(),
                    reservation: resv(),
                    source: NodeId(7),
                    source_control: "/src.sock".into(),
                    source_export: None,
                    copy_rate_bps: None,
                }
            ),
            t
        ),
        vec![Command::Start {
            instance: "a".into(),
            launch: launch(),
            listen: None,
            restore_from: Some(RestoreFrom {
                path: RestorePath::Socket("/src.sock".into()),
                rate_bps: None
            })
        }]
    );
    assert_eq!(dst.restore_source("a"), Some(NodeId(7)));
    assert_eq!(
        dst.handle(
            Event::Started {
                instance: "a".into()
            },
            t
        ),
        vec![ok(CONTROL, 2, 5)]
    );
}

#[test]
fn a_restore_pulls_over_tcp_only_from_another_host() {
    let export = |addr: &str| SourceExport {
        addr: addr.into(),
        instance: "vod-1.3".into(),
    };
    let (me, other) = (NodeId(1), NodeId(2));
    let path = |mine: Option<&str>, source, theirs: Option<&str>| {
        restore_path(
            me,
            mine,
            source,
            "/n2/vod-1.3.sock".into(),
            theirs.map(|a| Box::new(export(a))),
        )
    };
    let socket = RestorePath::Socket("/n2/vod-1.3.sock".into());
    // Another host: pull.
    assert_eq!(
        path(Some("10.0.0.1:7400"), other, Some("10.0.0.2:7400")),
        RestorePath::Pull(export("10.0.0.2:7400"))
    );
    // An agent that exports nothing itself still pulls from one that does.
    assert_eq!(
        path(None, other, Some("10.0.0.2:7400")),
        RestorePath::Pull(export("10.0.0.2:7400"))
    );
    // One host (same data-plane IP, other port), this node, or no export: the socket.
    assert_eq!(
        path(Some("127.0.0.1:7401"), other, Some("127.0.0.1:7402")),
        socket
    );
    assert_eq!(
        path(Some("10.0.0.1:7400"), me, Some("10.0.0.2:7400")),
        socket
    );
    assert_eq!(path(Some("10.0.0.1:7400"), other, None), socket);
}

#[test]
fn migrate_in_carries_the_pull_path_to_the_shell() {
    let t = Instant::now();
    let mut cfg = Agent86Config::new(NodeId(1));
    cfg.checkpoint_export = Some("10.0.0.1:7400".into());
    let mut dst = Agent86Engine::new(cfg, 5);
    let out = dst.handle(
        cmd(
            CONTROL,
            5,
            2,
            AgentCommand::MigrateIn {
                instance: "a".into(),
                launch: launch(),
                reservation: resv(),
                source: NodeId(7),
                source_control: "/src.sock".into(),
                source_export: Some(Box::new(SourceExport {
                    addr: "10.0.0.7:7400".into(),
                    instance: "a0".into(),
                })),
                copy_rate_bps: Some(8_000_000),
            },
        ),
        t,
    );
    assert_eq!(
        out,
        vec![Command::Start {
            instance: "a".into(),
            launch: launch(),
            listen: None,
            restore_from: Some(RestoreFrom {
                path: RestorePath::Pull(SourceExport {
                    addr: "10.0.0.7:7400".into(),
                    instance: "a0".into(),
                }),
                rate_bps: Some(8_000_000),
            })
        }]
    );
    // Its instances' reports say where to pull them from.
    dst.handle(
        Event::Started {
            instance: "a".into(),
        },
        t,
    );
    assert_eq!(
        dst.instance_report("a")
            .unwrap()
            .checkpoint_export
            .as_deref(),
        Some("10.0.0.1:7400")
    );
}

#[test]
fn failed_migration_keeps_the_instance_running() {
    let t = Instant::now();
    let mut e = running(t);
    e.handle(
        cmd(
            CONTROL,
            5,
            2,
            AgentCommand::MigrateOut {
                instance: "a".into(),
                target: NodeId(9),
                target_url: "http://t/".into(),
            },
        ),
        t,
    );
    assert_eq!(
        e.handle(
            Event::MigrationFailed {
                instance: "a".into(),
                error: "target unreachable".into()
            },
            t
        ),
        vec![Command::Reply {
            to: CONTROL,
            req: 2,
            epoch: 5,
            result: Err(Refusal::Failed("target unreachable".into()))
        }]
    );
    assert_eq!(e.report().instances[0].state, InstanceState::Running);
}

#[test]
fn psi_and_health_reader() {
    assert_eq!(
        parse_psi_some_avg10("some avg10=1.50 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00\n"),
        Some(1.5)
    );
    assert_eq!(parse_psi_some_avg10("garbage"), None);
    let h = read_health(Path::new("/proc"), Path::new("/sys"));
    assert!(h.mem_total_bytes > 0 && h.mem_available_bytes <= h.mem_total_bytes);
}

#[test]
fn sampler_ticks_become_usage_events() {
    use smart_instance::sample::{InstanceSample, NetSource, NodeSample};
    let inst = |name: &str, cpu: Option<f64>, alive: bool| InstanceSample {
        name: name.into(),
        cpu_cores: cpu,
        rss_bytes: 5,
        working_set_bytes: 7,
        net_bps: Some(8.0),
        net_sent_bytes: Some(1),
        net_received_bytes: Some(0),
        net_source: NetSource::ControlApi,
        clients: Some(2),
        cache_bytes: Some(0),
        speaks_api: true,
        alive,
    };
    let s = NodeSample {
        cpus: 2,
        cpu_busy_cores: Some(0.5),
        mem_total_bytes: 100,
        mem_available_bytes: 60,
        nic_capacity_bps: 1000,
        net_bps: None,
        instances: vec![
            inst("a", Some(0.25), true),
            inst("first-tick", None, true),
            inst("gone", Some(0.0), false),
        ],
    };
    assert_eq!(
        usage_event(&s),
        Event::Usage {
            node: NodeUsage {
                cpus: 2,
                cpu_busy_cores: 0.5,
                mem_total_bytes: 100,
                mem_available_bytes: 60,
                nic_capacity_bps: 1000,
                net_bps: 0.0,
            },
            instances: vec![UsageReading {
                instance: "a".into(),
                cpu_cores: 0.25,
                net_bps: Some(8.0),
                mem_bytes: 7,
                clients: Some(2),
                speaks_api: true,
            }],
        }
    );
}

#[test]
fn health_checks_wait_for_their_hysteresis_and_a_command_check_counts() {
    let t = Instant::now();
    let mut cfg = Agent86Config::new(NodeId(7));
    cfg.health.fail_after = 3;
    cfg.health.recover_after = 2;
    let mut e = Agent86Engine::new(cfg, 0);
    let reading = |ok: bool| {
        Event::Health(HealthReading {
            mem_total_bytes: 1000,
            mem_available_bytes: 500,
            mem_pressure_some_avg10: None,
            thermal: vec![],
            command: Some((ok, if ok { "ok" } else { "disk full" }.into())),
        })
    };
    let sick = vec![Command::Notify(AgentEvent::NodeHealth {
        check: "command".into(),
        healthy: false,
        detail: "disk full".into(),
    })];
    // One bad reading, then a good one: nothing (a blip is not a sick node).
    assert_eq!(e.handle(reading(false), t), vec![]);
    assert_eq!(e.handle(reading(true), t), vec![]);
    assert_eq!(e.handle(reading(false), t), vec![]);
    assert_eq!(e.handle(reading(false), t), vec![]);
    assert_eq!(e.handle(reading(false), t), sick);
    assert_eq!(e.handle(reading(false), t), vec![]);
    // Recovery needs two good readings in a row.
    assert_eq!(e.handle(reading(true), t), vec![]);
    assert_eq!(
        e.handle(reading(true), t),
        vec![Command::Notify(AgentEvent::NodeHealth {
            check: "command".into(),
            healthy: true,
            detail: "ok".into(),
        })]
    );
}

#[test]
fn an_update_changes_the_reservation_and_applies_new_limits() {
    let t = Instant::now();
    let mut e = running(t);
    let r = Reservation {
        cpu_cores: 0.5,
        net_bps: 2e6,
        mem_bytes: 50 << 20,
    };
    let update = |cpu: Option<f64>| {
        cmd(
            CONTROL,
            5,
            7,
            AgentCommand::Update {
                instance: "a".into(),
                reservation: r,
                cpu_cores: cpu,
                memory_bytes: Some(64 << 20),
            },
        )
    };
    assert_eq!(
        e.handle(update(Some(0.75)), t),
        vec![
            Command::SetLimits {
                instance: "a".into(),
                limits: smart_instance::runtime::Limits {
                    cpu_cores: Some(0.75),
                    cpu_shares: None,
                    memory_bytes: Some(64 << 20),
                },
            },
            ok(CONTROL, 7, 5)
        ]
    );
    assert_eq!(e.report().instances[0].reservation, r);
    // The same limits again: no runtime call.
    assert_eq!(e.handle(update(Some(0.75)), t), vec![ok(CONTROL, 7, 5)]);
    assert_eq!(
        e.handle(
            cmd(
                CONTROL,
                5,
                8,
                AgentCommand::Update {
                    instance: "nope".into(),
                    reservation: r,
                    cpu_cores: None,
                    memory_bytes: None,
                }
            ),
            t
        ),
        vec![Command::Reply {
            to: CONTROL,
            req: 8,
            epoch: 5,
            result: Err(Refusal::UnknownInstance)
        }]
    );
}

#[test]
fn a_new_control_or_epoch_stops_nothing_on_its_own() {
    // A node back from a partition sees a newer epoch (heartbeats) and is asked for its
    // report by the Control that keeps office: its instances keep running until that
    // Control says otherwise; only the deposed Control's commands are refused.
    let t = Instant::now();
    let mut e = running(t);
    assert_eq!(
        e.handle(Event::EpochObserved(9), t),
        vec![Command::PersistEpoch(9)]
    );
    assert_eq!(e.handle(Event::EpochPersisted(9), t), vec![]);
    let out = e.handle(cmd(NEWER_CONTROL, 9, 2, AgentCommand::Report), t);
    let [Command::Report { report, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(
        report
            .instances
            .iter()
            .map(|i| (i.instance.as_str(), i.state))
            .collect::<Vec<_>>(),
        vec![("a", InstanceState::Running)]
    );
    assert_eq!(
        e.handle(
            cmd(
                CONTROL,
                5,
                3,
                AgentCommand::Stop {
                    instance: "a".into()
                }
            ),
            t
        ),
        vec![stale(CONTROL, 3, 5, 9)]
    );
    assert_eq!(e.instance_names(), vec!["a".to_string()]);
}
