//! The Agent86 engine driven by a minimal synchronous shell over the real process runtime
//! and sampler: a reference for the actor shell, and an end-to-end check that a crashed
//! instance is restarted per policy and reported, and that a stale Control is fenced.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::path::Path;
use std::time::{Duration, Instant};

use smart_agent86::engine::{
    Agent86Config, Agent86Engine, AgentCommand, AgentEvent, Command, ControlCommand, Event,
    LaunchSpec, NodeId, Refusal, Reservation, limits_of, usage_event,
};
use smart_instance::runtime::{InstanceRuntime, InstanceSpec, InstanceStatus, ProcessDriver};
use smart_instance::sample::{Sampler, SamplerConfig};

/// Runs engine commands against the runtime; collects what would go to the Control.
struct Shell {
    engine: Agent86Engine,
    rt: ProcessDriver,
    epoch_file: std::path::PathBuf,
    to_control: Vec<Command>,
}

impl Shell {
    fn feed(&mut self, ev: Event) {
        let mut pending = vec![ev];
        while let Some(ev) = pending.pop() {
            for c in self.engine.handle(ev, Instant::now()) {
                match c {
                    Command::PersistEpoch(e) => {
                        std::fs::write(&self.epoch_file, e.to_string()).unwrap();
                        pending.push(Event::EpochPersisted(e));
                    }
                    Command::Start {
                        instance, launch, ..
                    } => {
                        let spec = InstanceSpec {
                            name: instance.clone(),
                            command: launch.command.clone(),
                            env: launch.env.clone(),
                            limits: limits_of(&launch),
                            ..Default::default()
                        };
                        // A restart reuses the name: forget the dead one first.
                        let _ = self.rt.stop(&instance, Duration::from_millis(100));
                        pending.push(match self.rt.start(&spec) {
                            Ok(_) => Event::Started { instance },
                            Err(e) => Event::StartFailed {
                                instance,
                                error: e.to_string(),
                            },
                        });
                    }
                    Command::Stop { instance, grace } => {
                        let exit = self.rt.stop(&instance, grace).unwrap();
                        pending.push(Event::Exited { instance, exit });
                    }
                    other => self.to_control.push(other),
                }
            }
        }
    }

    /// One agent tick: report exits the runtime noticed (without forgetting the instance,
    /// so its restart can reuse the name).
    fn tick(&mut self) {
        for p in self.rt.probes() {
            if let Ok(InstanceStatus::Exited(exit)) = self.rt.status(&p.name)
                && self.engine.instance_names().contains(&p.name)
            {
                let _ = self.rt.stop(&p.name, Duration::from_millis(100));
                self.feed(Event::Exited {
                    instance: p.name,
                    exit,
                });
            }
        }
    }
}

fn control(epoch: u64, req: u64, op: AgentCommand) -> Event {
    Event::Control(Box::new(ControlCommand {
        from: NodeId(1),
        epoch,
        req,
        op,
    }))
}

fn shell(dir: &Path) -> Shell {
    let mut cfg = Agent86Config::new(NodeId(7));
    cfg.restart.max_restarts = 1;
    Shell {
        engine: Agent86Engine::new(cfg, 0),
        rt: ProcessDriver::new(dir).unwrap(),
        epoch_file: dir.join("epoch"),
        to_control: Vec::new(),
    }
}

#[test]
fn crashed_instance_is_restarted_once_then_given_up_and_stale_control_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let mut sh = shell(dir.path());
    sh.feed(control(
        3,
        1,
        AgentCommand::Start {
            instance: "svc".into(),
            launch: LaunchSpec {
                service: "sleeper".into(),
                command: vec!["sleep".into(), "30".into()],
                ..Default::default()
            },
            reservation: Reservation {
                cpu_cores: 0.1,
                net_bps: 0.0,
                mem_bytes: 1 << 20,
            },
        },
    ));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("epoch")).unwrap(),
        "3"
    );
    assert_eq!(
        sh.to_control,
        vec![Command::Reply {
            to: NodeId(1),
            req: 1,
            epoch: 3,
            result: Ok(())
        }]
    );
    sh.to_control.clear();

    // The sampler sees it; its ticks feed the engine.
    let mut sampler = Sampler::new(SamplerConfig::default());
    let mut pollers = smart_instance::usage::UsagePollers::new(Duration::from_millis(100));
    sampler.sample(
        &sh.rt.probes(),
        &pollers.poll_blocking(&sh.rt.probes(), Instant::now()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let tick = sampler.sample(
        &sh.rt.probes(),
        &pollers.poll_blocking(&sh.rt.probes(), Instant::now()),
        Instant::now(),
    );
    sh.feed(usage_event(&tick));
    assert!(sh.to_control.is_empty(), "{:?}", sh.to_control);

    // Crash it (SIGKILL from outside): restarted once, reported.
    let kill = |sh: &Shell| {
        let pid = sh.rt.probes()[0].pgid;
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(100));
    };
    let pid0 = sh.rt.probes()[0].pgid;
    kill(&sh);
    sh.tick();
    let [
        Command::Notify(AgentEvent::InstanceRestarted {
            attempt: 1, exit, ..
        }),
    ] = sh.to_control.as_slice()
    else {
        panic!("{:?}", sh.to_control)
    };
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    let pid1 = sh.rt.probes()[0].pgid;
    assert_ne!(pid0, pid1, "a new process runs");
    assert!(matches!(
        sh.rt.status("svc"),
        Ok(InstanceStatus::Running { .. })
    ));
    sh.to_control.clear();

    // A second crash inside the window exceeds the policy: given up, not restarted.
    kill(&sh);
    sh.tick();
    assert!(
        matches!(
            sh.to_control.as_slice(),
            [Command::Notify(AgentEvent::InstanceFailed {
                restarts: 1,
                ..
            })]
        ),
        "{:?}",
        sh.to_control
    );
    assert!(sh.rt.probes().is_empty() && sh.engine.instance_names().is_empty());
    sh.to_control.clear();

    // A Control of an older epoch is refused.
    sh.feed(control(2, 9, AgentCommand::Report));
    assert_eq!(
        sh.to_control,
        vec![Command::Reply {
            to: NodeId(1),
            req: 9,
            epoch: 2,
            result: Err(Refusal::StaleEpoch { got: 2, highest: 3 })
        }]
    );
}
