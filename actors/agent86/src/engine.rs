//! The Agent86 engine: the node agent's decisions as a pure step function (docs/DESIGN.md §1, §2.4;
//! thesis §4.1.1). No actors, sockets or clocks here: a shell feeds [`Event`]s with the
//! current time into [`Agent86Engine::handle`] and executes the [`Command`]s it returns
//! (runtime calls, epoch persistence, messages to the Control).
//!
//! **Fencing.** Every Control command carries the Control's epoch. The engine keeps the
//! highest epoch it has seen (from commands or, via [`Event::EpochObserved`], from
//! heartbeats) and the highest the shell has made durable. A command with an epoch below
//! the highest seen is refused. A command with a new, higher epoch first makes the engine
//! emit [`Command::PersistEpoch`] and waits in a queue; it is executed when
//! [`Event::EpochPersisted`] confirms durability, and it is checked against the highest
//! epoch seen *at that moment*: if a newer Control showed up meanwhile, the queued command
//! is refused although it was valid when it arrived. This is "checked when it executes, not
//! only when it receives".
//!
//! **Rebuild.** [`AgentCommand::Report`] answers with an [`AgentReport`] (instances,
//! reservations, last usage) from which a new Control rebuilds its soft state.
//!
//! **Anomalies.** An instance whose CPU, network or memory stays more than
//! `over_ratio` (10 %) above its reservation for `persist_intervals` consecutive samples is
//! reported once ([`AgentEvent::Anomaly`]) and again when it has been back under for as
//! long ([`AgentEvent::AnomalyCleared`]).
//!
//! **Health.** Configurable thresholds on memory availability, memory pressure (PSI) and
//! thermal zones; each check reports its transitions ([`AgentEvent::NodeHealth`]).
//!
//! **Restarts.** An instance that exits without being asked to is restarted while it has
//! crashed fewer than `max_restarts` times within `window`; each restart and the final
//! give-up are reported.
//!
//! # Layout
//! - Types: [`Reservation`], [`LaunchSpec`], [`AgentCommand`], [`ControlCommand`], [`Event`],
//!   [`Command`], [`Refusal`], [`AgentEvent`], [`AgentReport`], [`UsageReading`],
//!   [`HealthReading`].
//! - Configuration: [`Agent86Config`], [`AnomalyConfig`], [`RestartPolicy`],
//!   [`HealthConfig`].
//! - [`Agent86Engine`]: the state and the step function.
//! - [`read_health`]: the impure reader of health inputs (`/proc`, `/sys/class/thermal`).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use smart_instance::runtime::Limits;

pub use smart_proto::agent::{
    AgentCommand, AgentError, AgentEvent, AgentReply, AgentReport, ExitInfo, InstanceReport,
    InstanceState, LaunchSpec, NodeUsage, Reservation, Resource, SourceExport, UsageReading,
};
use smart_proto::fence::Fence;
pub use smart_proto::{Epoch, NodeId};

/// The runtime limits of a launch.
pub fn limits_of(launch: &LaunchSpec) -> Limits {
    Limits {
        cpu_cores: launch.cpu_cores,
        cpu_shares: None,
        memory_bytes: launch.memory_bytes,
    }
}

/// A Control command as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlCommand {
    /// Sending Control's node.
    pub from: NodeId,
    /// Sending Control's epoch.
    pub epoch: Epoch,
    /// Request id, echoed in the reply.
    pub req: u64,
    /// The operation, as it came off the wire.
    pub op: AgentCommand,
}

/// Inputs of the health checks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HealthReading {
    /// `MemTotal`.
    pub mem_total_bytes: u64,
    /// `MemAvailable`.
    pub mem_available_bytes: u64,
    /// `/proc/pressure/memory` `some avg10` (percent), when the kernel has PSI.
    pub mem_pressure_some_avg10: Option<f64>,
    /// Thermal zones `(type, degrees Celsius)`.
    pub thermal: Vec<(String, f64)>,
    /// The configured health command's verdict (`true`: exit code 0) and its output's first
    /// line, when one is configured.
    #[serde(default)]
    pub command: Option<(bool, String)>,
}

/// Inputs of the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A command from a Control.
    /// (Boxed: a command is much larger than the other events.)
    Control(Box<ControlCommand>),
    /// An epoch seen elsewhere (heartbeat, claim).
    EpochObserved(Epoch),
    /// The shell made this epoch durable.
    EpochPersisted(Epoch),
    /// The shell could not make this epoch durable for a transient cause (out of
    /// descriptors, disk full): the commands waiting for it are refused (the Control retries)
    /// and the next epoch seen asks for the write again.
    PersistFailed(Epoch),
    /// The shell launched the instance's process: where it listens and its control
    /// socket, recorded for reports and for restarts on the same address.
    Launched {
        /// Instance.
        instance: String,
        /// Its `{listen}` address, when its command has one.
        listen: Option<SocketAddr>,
        /// Its workload control socket.
        control_socket: String,
    },
    /// Whether the instance answers the workload control API (checked by the shell when it
    /// became ready; later usage readings refresh it).
    SpeaksApi {
        /// Instance.
        instance: String,
        /// It answers.
        yes: bool,
    },
    /// The runtime started an instance.
    Started {
        /// Instance.
        instance: String,
    },
    /// The runtime could not start it.
    StartFailed {
        /// Instance.
        instance: String,
        /// Cause.
        error: String,
    },
    /// Its main process ended.
    Exited {
        /// Instance.
        instance: String,
        /// How.
        exit: ExitInfo,
    },
    /// A hand-over finished; the instance no longer runs here.
    MigratedOut {
        /// Instance.
        instance: String,
    },
    /// A hand-over failed; the instance keeps running here.
    MigrationFailed {
        /// Instance.
        instance: String,
        /// Cause.
        error: String,
    },
    /// One sampling tick.
    Usage {
        /// Node totals.
        node: NodeUsage,
        /// Per instance.
        instances: Vec<UsageReading>,
    },
    /// Health check inputs.
    Health(HealthReading),
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The command's epoch is below the highest seen here.
    StaleEpoch {
        /// Epoch of the command.
        got: Epoch,
        /// Highest epoch seen.
        highest: Epoch,
    },
    /// No such instance here.
    UnknownInstance,
    /// Already running here.
    AlreadyExists,
    /// Busy with another operation.
    Busy,
    /// The runtime failed.
    Failed(String),
}

impl Refusal {
    /// The wire answer for this refusal.
    pub fn into_reply(self) -> AgentReply {
        match self {
            Refusal::StaleEpoch { got, highest } => AgentReply::Refused {
                epoch: got,
                highest,
            },
            Refusal::UnknownInstance => AgentReply::Failed(AgentError::UnknownInstance),
            Refusal::AlreadyExists => AgentReply::Failed(AgentError::AlreadyExists),
            Refusal::Busy => AgentReply::Failed(AgentError::Busy),
            Refusal::Failed(e) => AgentReply::Failed(AgentError::Failed(e)),
        }
    }
}

/// Where a migrating instance restores its state from.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreFrom {
    /// The path the copy takes.
    pub path: RestorePath,
    /// Cap on the copy's rate, bits/s.
    pub rate_bps: Option<u64>,
}

/// The path of a restore's copy.
#[derive(Debug, Clone, PartialEq)]
pub enum RestorePath {
    /// Same host: the new instance reads the source's control socket itself.
    Socket(String),
    /// Another host: the shell pulls from the source agent's export over TCP and relays.
    Pull(SourceExport),
}

/// The IP of an `ip:port` address, if it is one.
fn ip_of(addr: &str) -> Option<std::net::IpAddr> {
    addr.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// Both exports are on one IP: one host.
fn same_host(mine: Option<&str>, theirs: &str) -> bool {
    mine.and_then(ip_of)
        .is_some_and(|ip| Some(ip) == ip_of(theirs))
}

/// Chooses the copy's path: the source's control socket when the source is this node or
/// shares this node's data-plane address (one host: the socket is reachable and faster), or
/// when the source agent exports nothing (it predates exports; on another host this fails
/// and the Control restarts the service instead, saying so); otherwise a pull.
pub fn restore_path(
    me: NodeId,
    my_export: Option<&str>,
    source: NodeId,
    control: String,
    export: Option<Box<SourceExport>>,
) -> RestorePath {
    match export {
        Some(e) if source != me && !same_host(my_export, &e.addr) => RestorePath::Pull(*e),
        _ => RestorePath::Socket(control),
    }
}

/// Outputs of the engine, executed by the shell in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Make `highest_epoch_seen` durable, then feed [`Event::EpochPersisted`].
    PersistEpoch(Epoch),
    /// Start an instance (restore mode when `restore_from` is set).
    Start {
        /// Instance.
        instance: String,
        /// How.
        launch: LaunchSpec,
        /// The address it had before (a restart after a crash keeps its endpoint); `None`
        /// lets the shell pick one.
        listen: Option<SocketAddr>,
        /// The migration source to restore from.
        restore_from: Option<RestoreFrom>,
    },
    /// Apply new limits to a running instance (its reservation changed).
    SetLimits {
        /// Instance.
        instance: String,
        /// The limits.
        limits: Limits,
    },
    /// Stop an instance: SIGTERM, then SIGKILL after `grace`.
    Stop {
        /// Instance.
        instance: String,
        /// Grace period.
        grace: Duration,
    },
    /// Hand the instance's clients over to `target_url` through its control API.
    MigrateOut {
        /// Instance.
        instance: String,
        /// Target node.
        target: NodeId,
        /// The new instance's endpoint.
        target_url: String,
    },
    /// Answer a Control command.
    Reply {
        /// Control node.
        to: NodeId,
        /// Request id.
        req: u64,
        /// Epoch of the request.
        epoch: Epoch,
        /// Outcome.
        result: Result<(), Refusal>,
    },
    /// Send the state report.
    Report {
        /// Control node.
        to: NodeId,
        /// Request id.
        req: u64,
        /// The report.
        report: AgentReport,
    },
    /// Tell the current Control.
    Notify(AgentEvent),
}

/// Anomaly detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyConfig {
    /// Tolerated excess over the reservation (0.10 = 10 %).
    pub over_ratio: f64,
    /// Consecutive samples over (or back under) before reporting.
    pub persist_intervals: u32,
}

/// Crash restart policy: at most `max_restarts` within `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// Restarts allowed within the window.
    pub max_restarts: u32,
    /// Window.
    pub window: Duration,
    /// Restart also after a clean exit (code 0).
    pub restart_on_success: bool,
}

/// Health check thresholds; `None` disables a check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Unhealthy below this fraction of memory available.
    pub min_mem_available_ratio: Option<f64>,
    /// Unhealthy above this PSI `some avg10` (percent).
    pub max_mem_pressure: Option<f64>,
    /// Unhealthy above this temperature in any zone (°C).
    pub max_temperature_c: Option<f64>,
    /// Consecutive failing readings before a check is reported unhealthy (hysteresis: one
    /// bad reading is not a sick node).
    pub fail_after: u32,
    /// Consecutive passing readings before a failed check is reported healthy again.
    pub recover_after: u32,
}

/// Engine configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent86Config {
    /// This node.
    pub node: NodeId,
    /// Grace period for stops.
    pub stop_grace: Duration,
    /// Anomaly detection.
    pub anomaly: AnomalyConfig,
    /// Crash restarts.
    pub restart: RestartPolicy,
    /// Health checks.
    pub health: HealthConfig,
    /// The runtime enforces CPU and memory limits (the cgroup driver).
    pub enforces_limits: bool,
    /// This node's checkpoint export (`ip:port` on its data-plane address), listed in its
    /// instances' reports so that targets on other hosts can pull from it.
    pub checkpoint_export: Option<String>,
    /// The commands instances may run (the node's `[agent] allowed_commands`).
    pub commands: CommandPolicy,
}

impl Agent86Config {
    /// Defaults: 10 % over for 5 intervals; 3 restarts per 60 s; memory < 5 % available,
    /// PSI > 20 %, or > 85 °C is unhealthy.
    pub fn new(node: NodeId) -> Self {
        Self {
            node,
            stop_grace: Duration::from_secs(5),
            anomaly: AnomalyConfig {
                over_ratio: 0.10,
                persist_intervals: 5,
            },
            restart: RestartPolicy {
                max_restarts: 3,
                window: Duration::from_secs(60),
                restart_on_success: false,
            },
            health: HealthConfig {
                min_mem_available_ratio: Some(0.05),
                max_mem_pressure: Some(20.0),
                max_temperature_c: Some(85.0),
                fail_after: 1,
                recover_after: 1,
            },
            enforces_limits: false,
            checkpoint_export: None,
            commands: CommandPolicy::any(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Streak {
    over: u32,
    under: u32,
    flagged: bool,
    sum: f64,
}

#[derive(Debug, Clone)]
struct Instance {
    launch: LaunchSpec,
    reservation: Reservation,
    state: InstanceState,
    /// Who waits for the outcome of the current operation.
    waiting: Option<(NodeId, u64, Epoch)>,
    /// Migration source of an instance started in restore mode.
    restore_from: Option<(NodeId, RestoreFrom)>,
    /// Where it listens (set by the shell at launch).
    listen: Option<SocketAddr>,
    control_socket: String,
    speaks_api: bool,
    crashes: VecDeque<Instant>,
    usage: Option<UsageReading>,
    streaks: BTreeMap<Resource, Streak>,
}

/// The Agent86 state machine.
#[derive(Debug)]
pub struct Agent86Engine {
    cfg: Agent86Config,
    /// The highest epoch seen (from commands or heartbeats): what commands are fenced by.
    fence: Fence,
    persisted: Epoch,
    persist_requested: Epoch,
    queue: VecDeque<ControlCommand>,
    instances: BTreeMap<String, Instance>,
    node_usage: Option<NodeUsage>,
    /// Per check: reported healthy, the readings in a row that disagree, the last detail.
    health: BTreeMap<String, (bool, u32, String)>,
    /// Executed commands, oldest first: `(epoch, control)`.
    recent: VecDeque<(Epoch, NodeId)>,
    refused_stale: u64,
    /// Numbered events for the Control, and the last number given.
    notices: VecDeque<(u64, AgentEvent)>,
    notice_seq: u64,
}

/// How many executed commands a report lists.
const RECENT: usize = 32;
/// How many notices a report carries.
const NOTICES: usize = 64;

impl Agent86Engine {
    /// An engine that has durably seen `persisted_epoch` (read by the shell at boot).
    pub fn new(cfg: Agent86Config, persisted_epoch: Epoch) -> Self {
        Self {
            cfg,
            fence: Fence::new(persisted_epoch),
            persisted: persisted_epoch,
            persist_requested: persisted_epoch,
            queue: VecDeque::new(),
            instances: BTreeMap::new(),
            node_usage: None,
            health: BTreeMap::new(),
            recent: VecDeque::new(),
            refused_stale: 0,
            notices: VecDeque::new(),
            notice_seq: 0,
        }
    }

    /// Highest epoch seen.
    pub fn highest_epoch(&self) -> Epoch {
        self.fence.highest
    }

    /// Whether the runtime enforces instances' limits.
    pub fn enforces_limits(&self) -> bool {
        self.cfg.enforces_limits
    }

    /// Names of the instances this agent manages.
    pub fn instance_names(&self) -> Vec<String> {
        self.instances.keys().cloned().collect()
    }

    /// The step function.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        self.step(event, now, &mut out);
        self.record(&out);
        out
    }

    /// Keeps what reports list about the commands just emitted: executed commands (for the
    /// epoch-monotonicity check from outside), stale refusals, and notices.
    fn record(&mut self, out: &[Command]) {
        for c in out {
            match c {
                Command::Reply {
                    to,
                    epoch,
                    result: Ok(()),
                    ..
                } => self.push_recent(*epoch, *to),
                Command::Reply {
                    result: Err(Refusal::StaleEpoch { .. }),
                    ..
                } => self.refused_stale += 1,
                Command::Notify(ev) => {
                    self.notice_seq += 1;
                    if self.notices.len() == NOTICES {
                        self.notices.pop_front();
                    }
                    self.notices.push_back((self.notice_seq, ev.clone()));
                }
                _ => {}
            }
        }
    }

    fn push_recent(&mut self, epoch: Epoch, from: NodeId) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((epoch, from));
    }

    fn step(&mut self, event: Event, now: Instant, out: &mut Vec<Command>) {
        match event {
            Event::Control(c) => self.on_control(*c, out),
            Event::EpochObserved(e) => self.observe_epoch(e, out),
            Event::EpochPersisted(e) => {
                self.persisted = self.persisted.max(e);
                self.drain_queue(out);
            }
            Event::PersistFailed(e) => {
                self.persist_requested = self.persisted;
                let (waiting, keep): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.queue)
                    .into_iter()
                    .partition(|c| c.epoch > self.persisted && c.epoch <= e);
                self.queue = keep;
                for c in waiting {
                    out.push(Command::Reply {
                        to: c.from,
                        req: c.req,
                        epoch: c.epoch,
                        result: Err(Refusal::Failed(format!(
                            "epoch {e} is not durable on this node yet; retry"
                        ))),
                    });
                }
            }
            Event::Launched {
                instance,
                listen,
                control_socket,
            } => {
                if let Some(i) = self.instances.get_mut(&instance) {
                    i.listen = listen;
                    i.control_socket = control_socket;
                }
            }
            Event::SpeaksApi { instance, yes } => {
                if let Some(i) = self.instances.get_mut(&instance) {
                    i.speaks_api = yes;
                }
            }
            Event::Started { instance } => self.on_started(&instance, out),
            Event::StartFailed { instance, error } => self.on_start_failed(&instance, error, out),
            Event::Exited { instance, exit } => self.on_exited(&instance, exit, now, out),
            Event::MigratedOut { instance } => {
                if let Some(i) = self.instances.remove(&instance) {
                    reply(out, i.waiting, Ok(()));
                }
            }
            Event::MigrationFailed { instance, error } => {
                if let Some(i) = self.instances.get_mut(&instance)
                    && i.state == InstanceState::MigratingOut
                {
                    i.state = InstanceState::Running;
                    let w = i.waiting.take();
                    reply(out, w, Err(Refusal::Failed(error)));
                }
            }
            Event::Usage { node, instances } => {
                self.node_usage = Some(node);
                for r in instances {
                    self.on_usage(r, out);
                }
            }
            Event::Health(h) => self.on_health(&h, out),
        }
    }

    fn observe_epoch(&mut self, e: Epoch, out: &mut Vec<Command>) {
        self.fence.observe(e);
        if self.fence.highest > self.persist_requested {
            self.persist_requested = self.fence.highest;
            out.push(Command::PersistEpoch(self.fence.highest));
        }
    }

    fn on_control(&mut self, c: ControlCommand, out: &mut Vec<Command>) {
        if let Err(stale) = self.fence.check(c.epoch) {
            out.push(refused(&c, stale.highest));
            return;
        }
        self.observe_epoch(c.epoch, out);
        self.queue.push_back(c);
        self.drain_queue(out);
    }

    /// Execute queued commands whose epoch is durable, in arrival order, fencing each
    /// against the highest epoch seen now.
    fn drain_queue(&mut self, out: &mut Vec<Command>) {
        while let Some(c) = self.queue.front() {
            if c.epoch > self.persisted {
                break;
            }
            let c = self.queue.pop_front().expect("front exists");
            if let Err(stale) = self.fence.check(c.epoch) {
                tracing::info!(
                    epoch = c.epoch,
                    highest = stale.highest,
                    "refusing command fenced by a newer control"
                );
                out.push(refused(&c, stale.highest));
                continue;
            }
            self.execute(c, out);
        }
    }

    fn execute(&mut self, c: ControlCommand, out: &mut Vec<Command>) {
        let waiter = Some((c.from, c.req, c.epoch));
        match c.op {
            AgentCommand::Start {
                instance,
                launch,
                reservation,
            } => self.start(instance, launch, reservation, None, waiter, out),
            AgentCommand::MigrateIn {
                instance,
                launch,
                reservation,
                source,
                source_control,
                source_export,
                copy_rate_bps,
            } => {
                let path = restore_path(
                    self.cfg.node,
                    self.cfg.checkpoint_export.as_deref(),
                    source,
                    source_control,
                    source_export,
                );
                self.start(
                    instance,
                    launch,
                    reservation,
                    Some((
                        source,
                        RestoreFrom {
                            path,
                            rate_bps: copy_rate_bps,
                        },
                    )),
                    waiter,
                    out,
                )
            }
            AgentCommand::Stop { instance } => match self.instances.get_mut(&instance) {
                None => reply(out, waiter, Err(Refusal::UnknownInstance)),
                Some(i) if i.state == InstanceState::Stopping => {
                    reply(out, waiter, Err(Refusal::Busy))
                }
                Some(i) => {
                    if let Some(prev) = i.waiting.take() {
                        reply(out, Some(prev), Err(Refusal::Failed("stopped".into())));
                    }
                    i.state = InstanceState::Stopping;
                    i.waiting = waiter;
                    out.push(Command::Stop {
                        instance,
                        grace: self.cfg.stop_grace,
                    });
                }
            },
            AgentCommand::MigrateOut {
                instance,
                target,
                target_url,
            } => match self.instances.get_mut(&instance) {
                None => reply(out, waiter, Err(Refusal::UnknownInstance)),
                Some(i) if i.state != InstanceState::Running => {
                    reply(out, waiter, Err(Refusal::Busy))
                }
                Some(i) => {
                    i.state = InstanceState::MigratingOut;
                    i.waiting = waiter;
                    out.push(Command::MigrateOut {
                        instance,
                        target,
                        target_url,
                    });
                }
            },
            AgentCommand::Update {
                instance,
                reservation,
                cpu_cores,
                memory_bytes,
            } => match self.instances.get_mut(&instance) {
                None => reply(out, waiter, Err(Refusal::UnknownInstance)),
                Some(i) => {
                    i.reservation = reservation;
                    let changed =
                        i.launch.cpu_cores != cpu_cores || i.launch.memory_bytes != memory_bytes;
                    i.launch.cpu_cores = cpu_cores;
                    i.launch.memory_bytes = memory_bytes;
                    if changed && i.state != InstanceState::Stopping {
                        out.push(Command::SetLimits {
                            instance: instance.clone(),
                            limits: limits_of(&i.launch),
                        });
                    }
                    reply(out, waiter, Ok(()));
                }
            },
            AgentCommand::Report => {
                self.push_recent(c.epoch, c.from);
                out.push(Command::Report {
                    to: c.from,
                    req: c.req,
                    report: self.report(),
                })
            }
        }
    }

    fn start(
        &mut self,
        instance: String,
        launch: LaunchSpec,
        reservation: Reservation,
        restore_from: Option<(NodeId, RestoreFrom)>,
        waiter: Option<(NodeId, u64, Epoch)>,
        out: &mut Vec<Command>,
    ) {
        if self.instances.contains_key(&instance) {
            reply(out, waiter, Err(Refusal::AlreadyExists));
            return;
        }
        if let Err(e) = self.cfg.commands.check(&launch.command, &launch.env) {
            tracing::warn!(node = %self.cfg.node, %instance, error = %e, "refused to start an instance");
            reply(out, waiter, Err(Refusal::Failed(e.to_string())));
            return;
        }
        out.push(Command::Start {
            instance: instance.clone(),
            launch: launch.clone(),
            listen: None,
            restore_from: restore_from.as_ref().map(|(_, r)| r.clone()),
        });
        self.instances.insert(
            instance,
            Instance {
                launch,
                reservation,
                state: InstanceState::Starting,
                waiting: waiter,
                restore_from,
                listen: None,
                control_socket: String::new(),
                speaks_api: false,
                crashes: VecDeque::new(),
                usage: None,
                streaks: BTreeMap::new(),
            },
        );
    }

    fn on_started(&mut self, name: &str, out: &mut Vec<Command>) {
        if let Some(i) = self.instances.get_mut(name)
            && i.state == InstanceState::Starting
        {
            i.state = InstanceState::Running;
            let w = i.waiting.take();
            reply(out, w, Ok(()));
        }
    }

    fn on_start_failed(&mut self, name: &str, error: String, out: &mut Vec<Command>) {
        if let Some(i) = self.instances.remove(name) {
            if i.waiting.is_some() {
                reply(out, i.waiting, Err(Refusal::Failed(error)));
            } else {
                // A restart that could not even start: give up.
                out.push(Command::Notify(AgentEvent::InstanceFailed {
                    instance: name.to_string(),
                    restarts: i.crashes.len() as u32,
                    exit: ExitInfo::default(),
                }));
            }
        }
    }

    fn on_exited(&mut self, name: &str, exit: ExitInfo, now: Instant, out: &mut Vec<Command>) {
        let Some(i) = self.instances.get_mut(name) else {
            return;
        };
        match i.state {
            InstanceState::Stopping => {
                let i = self.instances.remove(name).expect("present");
                reply(out, i.waiting, Ok(()));
                return;
            }
            InstanceState::MigratingOut if exit.success() => {
                let i = self.instances.remove(name).expect("present");
                reply(out, i.waiting, Ok(()));
                return;
            }
            InstanceState::MigratingOut | InstanceState::Starting | InstanceState::Running => {}
        }
        let w = i.waiting.take();
        reply(
            out,
            w,
            Err(Refusal::Failed(format!("instance exited: {exit:?}"))),
        );
        if exit.success() && !self.cfg.restart.restart_on_success {
            self.instances.remove(name);
            out.push(Command::Notify(AgentEvent::InstanceFinished {
                instance: name.to_string(),
            }));
            return;
        }
        let window = self.cfg.restart.window;
        while i
            .crashes
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            i.crashes.pop_front();
        }
        if (i.crashes.len() as u32) < self.cfg.restart.max_restarts {
            i.crashes.push_back(now);
            i.state = InstanceState::Starting;
            i.streaks.clear();
            i.usage = None;
            out.push(Command::Start {
                instance: name.to_string(),
                launch: i.launch.clone(),
                listen: i.listen,
                restore_from: None,
            });
            out.push(Command::Notify(AgentEvent::InstanceRestarted {
                instance: name.to_string(),
                attempt: i.crashes.len() as u32,
                exit,
            }));
        } else {
            let restarts = i.crashes.len() as u32;
            self.instances.remove(name);
            out.push(Command::Notify(AgentEvent::InstanceFailed {
                instance: name.to_string(),
                restarts,
                exit,
            }));
        }
    }

    fn on_usage(&mut self, r: UsageReading, out: &mut Vec<Command>) {
        let a = self.cfg.anomaly;
        let Some(i) = self.instances.get_mut(&r.instance) else {
            return;
        };
        if i.state != InstanceState::Running {
            return;
        }
        let checks = [
            (Resource::Cpu, Some(r.cpu_cores), i.reservation.cpu_cores),
            (Resource::Net, r.net_bps, i.reservation.net_bps),
            (
                Resource::Memory,
                Some(r.mem_bytes as f64),
                i.reservation.mem_bytes as f64,
            ),
        ];
        for (res, observed, reserved) in checks {
            let Some(observed) = observed else { continue };
            if reserved <= 0.0 {
                continue;
            }
            let s = i.streaks.entry(res).or_default();
            if observed > reserved * (1.0 + a.over_ratio) {
                s.over += 1;
                s.sum += observed;
                s.under = 0;
                if !s.flagged && s.over >= a.persist_intervals {
                    s.flagged = true;
                    out.push(Command::Notify(AgentEvent::Anomaly {
                        instance: r.instance.clone(),
                        resource: res,
                        observed: s.sum / s.over as f64,
                        reserved,
                    }));
                }
            } else {
                s.over = 0;
                s.sum = 0.0;
                s.under += 1;
                if s.flagged && s.under >= a.persist_intervals {
                    s.flagged = false;
                    out.push(Command::Notify(AgentEvent::AnomalyCleared {
                        instance: r.instance.clone(),
                        resource: res,
                    }));
                }
            }
        }
        i.speaks_api = r.speaks_api;
        i.usage = Some(r);
    }

    fn on_health(&mut self, h: &HealthReading, out: &mut Vec<Command>) {
        let c = self.cfg.health;
        let mut verdicts: Vec<(String, bool, String)> = Vec::new();
        if let Some(min) = c.min_mem_available_ratio
            && h.mem_total_bytes > 0
        {
            let ratio = h.mem_available_bytes as f64 / h.mem_total_bytes as f64;
            verdicts.push((
                "memory_available".into(),
                ratio >= min,
                format!("{:.1} % available", ratio * 100.0),
            ));
        }
        if let (Some(max), Some(p)) = (c.max_mem_pressure, h.mem_pressure_some_avg10) {
            verdicts.push((
                "memory_pressure".into(),
                p <= max,
                format!("some avg10 {p:.1} %"),
            ));
        }
        if let Some(max) = c.max_temperature_c {
            for (zone, t) in &h.thermal {
                verdicts.push((format!("thermal:{zone}"), *t <= max, format!("{t:.1} °C")));
            }
        }
        if let Some((ok, line)) = &h.command {
            verdicts.push(("command".into(), *ok, line.clone()));
        }
        for (check, healthy, detail) in verdicts {
            // Unknown checks start healthy: only a problem (or recovery) is news, and only
            // once it has lasted `fail_after` (or `recover_after`) readings.
            let st = self
                .health
                .entry(check.clone())
                .or_insert((true, 0, String::new()));
            st.2 = detail.clone();
            if healthy == st.0 {
                st.1 = 0;
                continue;
            }
            st.1 += 1;
            let needed = if st.0 { c.fail_after } else { c.recover_after };
            if st.1 >= needed.max(1) {
                st.0 = healthy;
                st.1 = 0;
                out.push(Command::Notify(AgentEvent::NodeHealth {
                    check,
                    healthy,
                    detail,
                }));
            }
        }
    }

    /// The current state report.
    pub fn report(&self) -> AgentReport {
        let mut total = Reservation::default();
        let instances = self
            .instances
            .keys()
            .filter_map(|name| {
                let r = self.instance_report(name)?;
                total.add(&r.reservation);
                Some(r)
            })
            .collect();
        AgentReport {
            node: self.cfg.node,
            highest_epoch: self.fence.highest,
            instances,
            reserved_total: total,
            usage: self.node_usage,
            recent_commands: self.recent.iter().copied().collect(),
            refused_stale: self.refused_stale,
            notices: self.notices.iter().cloned().collect(),
            failing_checks: self
                .health
                .iter()
                .filter(|(_, (healthy, _, _))| !healthy)
                .map(|(check, (_, _, detail))| (check.clone(), detail.clone()))
                .collect(),
        }
    }

    /// One instance as a report lists it.
    pub fn instance_report(&self, name: &str) -> Option<InstanceReport> {
        let i = self.instances.get(name)?;
        Some(InstanceReport {
            instance: name.to_string(),
            launch: i.launch.clone(),
            state: i.state,
            reservation: i.reservation,
            endpoint: i.listen.map(|l| format!("http://{l}/")),
            control_socket: i.control_socket.clone(),
            checkpoint_export: self.cfg.checkpoint_export.clone(),
            speaks_api: i.speaks_api,
            usage: i.usage.clone(),
            restarts: i.crashes.len() as u32,
            limits_enforced: self.cfg.enforces_limits
                && (i.launch.cpu_cores.is_some() || i.launch.memory_bytes.is_some()),
            anomalous: i
                .streaks
                .iter()
                .filter(|(_, s)| s.flagged)
                .map(|(r, _)| *r)
                .collect(),
        })
    }

    /// Source node of an instance started in restore mode.
    pub fn restore_source(&self, instance: &str) -> Option<NodeId> {
        self.instances
            .get(instance)
            .and_then(|i| i.restore_from.as_ref().map(|(n, _)| *n))
    }
}

fn refused(c: &ControlCommand, highest: Epoch) -> Command {
    Command::Reply {
        to: c.from,
        req: c.req,
        epoch: c.epoch,
        result: Err(Refusal::StaleEpoch {
            got: c.epoch,
            highest,
        }),
    }
}

fn reply(
    out: &mut Vec<Command>,
    waiter: Option<(NodeId, u64, Epoch)>,
    result: Result<(), Refusal>,
) {
    if let Some((to, req, epoch)) = waiter {
        out.push(Command::Reply {
            to,
            req,
            epoch,
            result,
        });
    }
}

/// Turn one sampler tick into the engine's [`Event::Usage`]. Instances without a CPU rate
/// yet (their first tick) or that could not be read are left out.
pub fn usage_event(s: &smart_instance::sample::NodeSample) -> Event {
    Event::Usage {
        node: NodeUsage {
            cpus: s.cpus,
            cpu_busy_cores: s.cpu_busy_cores.unwrap_or(0.0),
            mem_total_bytes: s.mem_total_bytes,
            mem_available_bytes: s.mem_available_bytes,
            nic_capacity_bps: s.nic_capacity_bps,
            net_bps: s.net_bps.unwrap_or(0.0),
        },
        instances: s
            .instances
            .iter()
            .filter(|i| i.alive)
            .filter_map(|i| {
                Some(UsageReading {
                    instance: i.name.clone(),
                    cpu_cores: i.cpu_cores?,
                    net_bps: i.net_bps,
                    mem_bytes: i.working_set_bytes,
                    clients: i.clients,
                    speaks_api: i.speaks_api,
                })
            })
            .collect(),
    }
}

/// Read the health inputs: `<proc>/meminfo`, `<proc>/pressure/memory` (PSI, when present)
/// and `<sys>/class/thermal/thermal_zone*/{type,temp}` (when present).
pub fn read_health(proc_root: &Path, sys_root: &Path) -> HealthReading {
    let mem = std::fs::read_to_string(proc_root.join("meminfo"))
        .ok()
        .and_then(|t| smart_instance::procfs::parse_meminfo(&t))
        .unwrap_or_default();
    let psi = std::fs::read_to_string(proc_root.join("pressure/memory"))
        .ok()
        .and_then(|t| parse_psi_some_avg10(&t));
    let mut thermal = Vec::new();
    if let Ok(rd) = std::fs::read_dir(sys_root.join("class/thermal")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("thermal_zone") {
                continue;
            }
            let temp = std::fs::read_to_string(e.path().join("temp"))
                .ok()
                .and_then(|t| t.trim().parse::<f64>().ok());
            let kind = std::fs::read_to_string(e.path().join("type"))
                .map(|t| t.trim().to_string())
                .unwrap_or(name);
            if let Some(milli) = temp {
                thermal.push((kind, milli / 1000.0));
            }
        }
    }
    thermal.sort_by(|a, b| a.0.cmp(&b.0));
    HealthReading {
        mem_total_bytes: mem.total,
        mem_available_bytes: mem.available,
        mem_pressure_some_avg10: psi,
        thermal,
        command: None,
    }
}

pub use smart_instance::procfs::parse_psi_some_avg10;

mod commands;
pub use commands::{CommandPolicy, CommandRefused};

#[cfg(test)]
mod tests;
