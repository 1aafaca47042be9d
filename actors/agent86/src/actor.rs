//! The Agent86 actor: the node agent (thesis §4, docs/DESIGN.md §1), a thin shell around the
//! pure [`Agent86Engine`] of [`crate::engine`].
//!
//! The engine decides (fencing, restarts, anomalies, health, reports) and keeps everything
//! a report lists; it consumes the Control's [`AgentCommand`] as it came off the wire. This
//! shell executes the engine's [`Command`]s against an [`InstanceRuntime`] (process groups
//! by default, cgroups when the node asks), persists epochs through the node's
//! [`EpochStore`], samples the instances every interval, and speaks the workload control
//! API (`smart_proto::workload`) for migrations. What it picks itself (an instance's
//! `{listen}` address and control socket) it tells the engine ([`Event::Launched`]); the
//! `{listen}` port stays bound by the agent until the instance accepts on it (`crate::port`),
//! so no other process can take it in between.
//!
//! **Fencing** stays at execution (docs/DESIGN.md §2.4): every command passes through the
//! engine, which refuses an epoch below the highest seen when the command *executes*;
//! before each command the shell tells the engine the node's durable highest epoch, so an
//! epoch raised elsewhere (membership hearing a newer Control) fences older Controls at
//! once. A command at a new, higher epoch is executed only after the store made that epoch
//! durable; a store that cannot is [`Fatal`].
//!
//! **Survives its own restarts.** The engine, the runtime and the sampler live in an
//! [`AgentCore`] created once per node and handed to every incarnation of the actor, so a
//! panicking Agent86 that the supervisor restarts still knows (and still owns) the instances
//! it started. Instance process-group ids are written to `<dir>/<name>.pid`; a new core kills
//! the groups a previous *process* left behind (its Control has re-admitted them elsewhere).
//!
//! **Migration**: the target agent starts the instance empty and asks it to `restore` from
//! the source's control socket while the source keeps serving (pre-copy); then the source
//! agent asks its instance to `handoff` its clients to the target's endpoint and stops it.
//! An instance without the API fails `MigrateOut`, and the Control restarts it elsewhere.
//!
//! Blocking runtime calls (stop with its grace period, sampling) run on `spawn_blocking`;
//! their results come back as [`Agent86Msg::Engine`] messages, so the mailbox never waits on
//! a process.
//!
//! ## Layout
//! - [`Agent86Settings`], [`AgentCore`]: configuration and the state shared across restarts.
//! - [`Agent86`], [`Agent86Msg`], [`Agent86State`]: the actor.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::{
    Agent86Config, Agent86Engine, Command, ControlCommand, Event, RestoreFrom, RestorePath,
    SourceExport, limits_of, read_health, usage_event,
};
use crate::port::PortHold;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smart_instance::pull;
use smart_instance::runtime::{
    DriverKind, InstanceRuntime, InstanceSpec, InstanceStatus, Limits, Output, ProcessDriver,
};
use smart_instance::sample::{Sampler, SamplerConfig};
use smart_instance::usage::UsagePollers;
use smart_proto::agent::{AgentCommand, AgentReply, AgentReport, LaunchSpec};
use smart_proto::pull::PullKey;
use smart_proto::workload::WorkloadClient;
use smart_proto::{Epoch, NodeId};
use tracing::Instrument;
use tracing::{info, info_span, warn};

use smart_membership::epoch::{EpochStore, Fatal, PersistError};

/// Which instance runtime a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeKind {
    /// Process groups (works anywhere).
    #[default]
    Process,
    /// cgroups (v2 or v1) when this machine allows it, else process groups.
    Cgroup,
}

/// Agent86's configuration.
#[derive(Debug, Clone)]
pub struct Agent86Settings {
    /// Where control sockets, pid files and instance logs go.
    pub dir: PathBuf,
    /// The address clients reach this node at (for `{listen}`).
    pub host: IpAddr,
    /// NIC bandwidth offered to services, bits/s.
    pub nic_bps: u64,
    /// Sampling interval.
    pub interval: Duration,
    /// Grace period of a stop before SIGKILL.
    pub stop_grace: Duration,
    /// Runtime driver.
    pub runtime: RuntimeKind,
    /// How long a start waits for the instance to accept connections on its `{listen}`
    /// address; past it the instance counts as started anyway (a workload that never
    /// listens is judged by its exit, like any other).
    pub ready_timeout: Duration,
    /// Health checks run every interval.
    pub health: HealthSettings,
    /// The key checkpoint pulls are authenticated with (derived from the cluster key);
    /// without it the agent neither exports nor pulls.
    pub pull_key: Option<PullKey>,
    /// Port of the checkpoint export on `host` (0: any); `None`: no export.
    pub checkpoint_port: Option<u16>,
    /// The commands instances may run.
    pub commands: crate::engine::CommandPolicy,
}

/// The node's health checks (`[health]`): memory pressure, thermal zones (thresholds in the
/// engine's defaults) and an operator's command, with hysteresis.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Run the checks at all.
    pub enabled: bool,
    /// A command whose exit code judges the node (0: healthy), run every interval with a
    /// timeout of one interval.
    pub command: Option<Vec<String>>,
    /// Failing readings in a row before the node reports a check unhealthy.
    pub fail_after: u32,
    /// Passing readings in a row before it reports the check healthy again.
    pub recover_after: u32,
    /// Where `/proc` and `/sys` are (tests point these at fixtures).
    pub proc_root: PathBuf,
    /// See `proc_root`.
    pub sys_root: PathBuf,
}

impl HealthSettings {
    /// The checks `[health]` describes, on the real `/proc` and `/sys`.
    pub fn from_config(cfg: &smart_config::HealthConfig) -> Self {
        Self {
            enabled: cfg.enabled,
            command: (!cfg.command.is_empty()).then(|| cfg.command.clone()),
            fail_after: cfg.fail_after,
            recover_after: cfg.recover_after,
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
        }
    }
}

impl Default for HealthSettings {
    /// The documented `[health]` defaults (one set of numbers: `smart_config`'s).
    fn default() -> Self {
        Self::from_config(&smart_config::HealthConfig::default())
    }
}

impl Agent86Settings {
    /// Defaults for a node whose files go in `dir`.
    pub fn new(dir: impl Into<PathBuf>, host: IpAddr) -> Self {
        Self {
            dir: dir.into(),
            host,
            nic_bps: 1_000_000_000,
            interval: Duration::from_secs(1),
            stop_grace: Duration::from_secs(1),
            runtime: RuntimeKind::Process,
            ready_timeout: Duration::from_secs(5),
            health: HealthSettings::default(),
            pull_key: None,
            checkpoint_port: None,
            commands: crate::engine::CommandPolicy::any(),
        }
    }
}

/// Timeout of one `usage` query of the sampler.
const USAGE_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a `restore` (a whole cache copied) or a `handoff` may take.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine, the runtime and the sampler: created once per node, shared by every
/// incarnation of the actor.
pub struct AgentCore {
    settings: Agent86Settings,
    engine: Mutex<Agent86Engine>,
    runtime: Arc<Mutex<Box<dyn InstanceRuntime>>>,
    sampler: Arc<Mutex<Sampler>>,
    pollers: Arc<tokio::sync::Mutex<UsagePollers>>,
    next_req: std::sync::atomic::AtomicU64,
    /// The checkpoint export's socket, bound at creation (its address is in the engine's
    /// reports from the start) and served from the first actor incarnation on.
    export: Mutex<Option<std::net::TcpListener>>,
    export_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentCore {
    /// Makes the runtime (killing instances a previous process of this node left behind) and
    /// an engine that has durably seen `persisted_epoch`.
    pub fn new(
        node: NodeId,
        settings: Agent86Settings,
        persisted_epoch: Epoch,
    ) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&settings.dir)?;
        kill_orphans(&settings.dir);
        let runtime: Box<dyn InstanceRuntime> = match settings.runtime {
            RuntimeKind::Process => Box::new(ProcessDriver::new(&settings.dir)?),
            RuntimeKind::Cgroup => {
                let cfg =
                    smart_instance::cgroup::CgroupConfig::new(cgroup_prefix(node, &settings.dir));
                let (rt, fallback) = smart_instance::runtime::auto_runtime(&cfg, &settings.dir)?;
                if let Some(why) = fallback {
                    warn!(%node, reason = %why,
                        "cgroups unavailable: instances run as process groups, limits are not enforced");
                }
                rt
            }
        };
        let enforces = runtime.kind() != DriverKind::Process;
        let export = match (&settings.pull_key, settings.checkpoint_port) {
            (Some(_), Some(port)) => {
                let l = std::net::TcpListener::bind((settings.host, port))?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            _ => None,
        };
        let mut cfg = Agent86Config::new(node);
        cfg.checkpoint_export = export
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string());
        if let Some(a) = &cfg.checkpoint_export {
            info!(%node, export = %a, "checkpoint export listening");
        }
        cfg.stop_grace = settings.stop_grace;
        cfg.enforces_limits = enforces;
        cfg.commands = settings.commands.clone();
        cfg.health.fail_after = settings.health.fail_after;
        cfg.health.recover_after = settings.health.recover_after;
        let sampler = Sampler::new(SamplerConfig {
            nic_capacity_bps: settings.nic_bps,
            ..SamplerConfig::default()
        });
        Ok(Arc::new(Self {
            engine: Mutex::new(Agent86Engine::new(cfg, persisted_epoch)),
            runtime: Arc::new(Mutex::new(runtime)),
            sampler: Arc::new(Mutex::new(sampler)),
            pollers: Arc::new(tokio::sync::Mutex::new(UsagePollers::new(USAGE_TIMEOUT))),
            next_req: std::sync::atomic::AtomicU64::new(1),
            export: Mutex::new(export),
            export_task: Mutex::new(None),
            settings,
        }))
    }

    /// Serves the checkpoint export, once per core (later calls do nothing). Needs a Tokio
    /// runtime.
    fn serve_export(&self) {
        let Some(l) = lock(&self.export).take() else {
            return;
        };
        let Some(key) = self.settings.pull_key.clone() else {
            return;
        };
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                let dir = self.settings.dir.clone();
                *lock(&self.export_task) = Some(tokio::spawn(pull::serve_exports(l, key, dir)));
            }
            Err(e) => warn!(error = %e, "checkpoint export unavailable"),
        }
    }

    /// The agent's state report (no fencing: local status).
    pub fn report(&self) -> AgentReport {
        lock(&self.engine).report()
    }

    /// Stops every instance (node shutdown).
    pub fn stop_all(&self) {
        if let Some(t) = lock(&self.export_task).take() {
            t.abort();
        }
        let mut rt = lock(&self.runtime);
        for p in rt.probes() {
            let _ = rt.stop(&p.name, Duration::from_millis(500));
            let _ = std::fs::remove_file(pid_file(&self.settings.dir, &p.name));
        }
    }
}

fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pid"))
}

/// Kills the process groups recorded by a previous process of this node.
/// The cgroup prefix of node `node` whose instances live in `dir`: the node id and a digest
/// of the directory. Everything under the prefix is this agent's (stale groups there are
/// removed at start), so two nodes on one host (two clusters, or tests side by side) must
/// never share one, while a restart of the same node must find its own again.
fn cgroup_prefix(node: NodeId, dir: &Path) -> String {
    // FNV-1a: stable across builds and releases (unlike `DefaultHasher`).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("smart-n{}-{:08x}", node.0, h as u32)
}

fn kill_orphans(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("pid") {
            continue;
        }
        if let Some(pgid) = std::fs::read_to_string(&p)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|g| *g > 1)
        {
            // SAFETY: plain kill(2) on a process group we started in an earlier life.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            warn!(pgid, file = %p.display(), "killed an instance left by a previous agent");
        }
        let _ = std::fs::remove_file(&p);
    }
}

/// Agent86's messages.
#[derive(Debug)]
pub enum Agent86Msg {
    /// A command from a Control, with the Control's epoch.
    Command {
        /// The Control (the connection's authenticated node).
        from: NodeId,
        /// Its epoch.
        epoch: Epoch,
        /// What to do.
        cmd: AgentCommand,
        /// The answer.
        reply: RpcReplyPort<AgentReply>,
    },
    /// The agent's state, without fencing (local status).
    Report(RpcReplyPort<AgentReport>),
    /// Sampling tick.
    Tick,
    /// The outcome of runtime or control-API work, for the engine.
    Engine(Event),
}

/// Agent86's fixed configuration.
pub struct Agent86 {
    /// This node.
    pub node: NodeId,
    /// The node's persisted highest epoch.
    pub epochs: Arc<dyn EpochStore>,
    /// Engine, runtime and sampler (shared across restarts of the actor).
    pub core: Arc<AgentCore>,
    /// Fault injection for the supervision tests: panic while handling the first `n`
    /// messages over all incarnations of the actor (`None` in production).
    pub panic_on_message: Option<Arc<std::sync::atomic::AtomicU32>>,
}

/// Who waits for a command's answer.
#[derive(Debug)]
struct Pending {
    instance: Option<String>,
    reply: RpcReplyPort<AgentReply>,
}

/// Agent86's mutable state: the callers waiting for answers.
#[derive(Debug, Default)]
pub struct Agent86State {
    pending: HashMap<u64, Pending>,
}

impl Agent86 {
    /// Feeds one event and executes what the engine says, until nothing is left.
    fn feed(
        &self,
        myself: &ActorRef<Agent86Msg>,
        st: &mut Agent86State,
        ev: Event,
    ) -> Result<(), ActorProcessingErr> {
        let mut queue = VecDeque::from([ev]);
        while let Some(ev) = queue.pop_front() {
            let cmds = lock(&self.core.engine).handle(ev, Instant::now());
            for c in cmds {
                self.exec(myself, st, c, &mut queue)?;
            }
        }
        Ok(())
    }

    fn exec(
        &self,
        myself: &ActorRef<Agent86Msg>,
        st: &mut Agent86State,
        c: Command,
        queue: &mut VecDeque<Event>,
    ) -> Result<(), ActorProcessingErr> {
        match c {
            Command::PersistEpoch(e) => {
                // Durable before acting: a node that cannot persist must stop (escalates);
                // one that cannot for now refuses what waits for the epoch.
                match self.epochs.raise(e) {
                    Ok(()) => {
                        info!(node = %self.node, epoch = e, "agent raised its epoch");
                        queue.push_back(Event::EpochPersisted(e));
                    }
                    Err(err @ PersistError::Retryable { .. }) => {
                        warn!(node = %self.node, epoch = e, error = %err, "epoch not durable; refusing the commands that wait for it");
                        queue.push_back(Event::PersistFailed(e));
                    }
                    Err(err @ PersistError::Fatal { .. }) => return Err(Fatal::from(err).into()),
                }
            }
            Command::Start {
                instance,
                launch,
                listen,
                restore_from,
            } => queue.extend(self.start(myself, &instance, &launch, listen, restore_from)),
            Command::Stop { instance, grace } => {
                let rt = self.core.runtime.clone();
                let dir = self.core.settings.dir.clone();
                let me = myself.clone();
                tokio::task::spawn_blocking(move || {
                    let exit = lock(&rt).stop(&instance, grace).unwrap_or_default();
                    let _ = std::fs::remove_file(pid_file(&dir, &instance));
                    let _ = me.send_message(Agent86Msg::Engine(Event::Exited { instance, exit }));
                });
            }
            Command::MigrateOut {
                instance,
                target_url,
                ..
            } => {
                let socket = self.socket_of(&instance);
                let me = myself.clone();
                let rt = self.core.runtime.clone();
                let dir = self.core.settings.dir.clone();
                let grace = self.core.settings.stop_grace;
                tokio::spawn(async move {
                    let handoff = async {
                        WorkloadClient::connect(&socket, HANDOFF_TIMEOUT)
                            .await?
                            .handoff(&target_url)
                            .await
                    };
                    match handoff.await {
                        Ok(_) => {
                            let _ = me.send_message(Agent86Msg::Engine(Event::MigratedOut {
                                instance: instance.clone(),
                            }));
                            // Clients are on the new instance: this one can go, gracefully
                            // (it still answers stragglers with redirects meanwhile).
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            let _ = tokio::task::spawn_blocking(move || {
                                let _ = lock(&rt).stop(&instance, grace);
                                let _ = std::fs::remove_file(pid_file(&dir, &instance));
                            })
                            .await;
                        }
                        Err(error) => {
                            let _ = me.send_message(Agent86Msg::Engine(Event::MigrationFailed {
                                instance,
                                error: format!("workload control API: {error}"),
                            }));
                        }
                    }
                });
            }
            Command::Reply { req, result, .. } => {
                let Some(p) = st.pending.remove(&req) else {
                    return Ok(());
                };
                let resp = match result {
                    Ok(()) => match p
                        .instance
                        .as_deref()
                        .and_then(|i| lock(&self.core.engine).instance_report(i))
                    {
                        Some(info) => AgentReply::Instance(Box::new(info)),
                        None => AgentReply::Done,
                    },
                    Err(refusal) => {
                        if let crate::engine::Refusal::StaleEpoch { got, highest } = &refusal {
                            warn!(node = %self.node, epoch = got, highest, "refused command from a stale control");
                        }
                        refusal.into_reply()
                    }
                };
                let _ = p.reply.send(resp);
            }
            Command::Report { req, report, .. } => {
                if let Some(p) = st.pending.remove(&req) {
                    let _ = p.reply.send(AgentReply::Report(Box::new(report)));
                }
            }
            Command::SetLimits { instance, limits } => {
                let rt = self.core.runtime.clone();
                let node = self.node;
                tokio::task::spawn_blocking(move || {
                    match lock(&rt).set_limits(&instance, &limits) {
                        Ok(()) => info!(%node, %instance, cpu = ?limits.cpu_cores,
                            mem = ?limits.memory_bytes, "instance limits changed"),
                        Err(e) => warn!(%node, %instance, error = %e, "cannot change limits"),
                    }
                });
            }
            Command::Notify(ev) => info!(node = %self.node, event = ?ev, "agent event"),
        }
        Ok(())
    }

    fn socket_of(&self, instance: &str) -> PathBuf {
        self.core.settings.dir.join(format!("{instance}.sock"))
    }

    /// Starts a process; returns the events for the engine now (`Started` comes later,
    /// once the instance is ready: restored, and accepting on its `{listen}` address).
    fn start(
        &self,
        myself: &ActorRef<Agent86Msg>,
        instance: &str,
        launch: &LaunchSpec,
        listen: Option<SocketAddr>,
        restore_from: Option<RestoreFrom>,
    ) -> Vec<Event> {
        // The port stays bound by the agent until the instance accepts on it (`port`).
        let hold = match listen {
            // A restart keeps its address: held again, unless something listens there now
            // (then the instance fails to bind, and that failure is what gets reported).
            Some(prev) => PortHold::at(prev).ok(),
            None if launch.command.iter().any(|a| a.contains("{listen}")) => {
                match PortHold::any(self.core.settings.host) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        return vec![Event::StartFailed {
                            instance: instance.into(),
                            error: format!("no port for {{listen}}: {e}"),
                        }];
                    }
                }
            }
            None => None,
        };
        let listen = listen.or(hold.as_ref().map(PortHold::addr));
        let socket = self.socket_of(instance);
        let launched = Event::Launched {
            instance: instance.into(),
            listen,
            control_socket: socket.display().to_string(),
        };
        let listen_s = listen.map(|l| l.to_string()).unwrap_or_default();
        let log = self.core.settings.dir.join(format!("{instance}.log"));
        let spec = InstanceSpec {
            name: instance.to_string(),
            command: launch
                .command
                .iter()
                .map(|a| a.replace("{listen}", &listen_s))
                .collect(),
            env: launch.env.clone(),
            // The process driver refuses limits it cannot enforce; the report says that
            // they are not (`limits_enforced`).
            limits: if lock(&self.core.engine).enforces_limits() {
                limits_of(launch)
            } else {
                Limits::default()
            },
            control_socket: Some(socket.clone()),
            stdout: Output::File(log.clone()),
            stderr: Output::File(log),
            ..Default::default()
        };
        let started = {
            let mut rt = lock(&self.core.runtime);
            // A restart after a crash reuses the name: forget the dead one first.
            if matches!(rt.status(instance), Ok(InstanceStatus::Exited(_))) {
                let _ = rt.stop(instance, Duration::from_millis(100));
            }
            rt.start(&spec)
        };
        let probe = match started {
            Ok(p) => p,
            Err(e) => {
                return vec![
                    launched,
                    Event::StartFailed {
                        instance: instance.into(),
                        error: e.to_string(),
                    },
                ];
            }
        };
        let _ = std::fs::write(
            pid_file(&self.core.settings.dir, instance),
            probe.pgid.to_string(),
        );
        info!(node = %self.node, %instance, listen = %listen_s, "instance started");
        if restore_from.is_none() && listen.is_none() {
            return vec![
                launched,
                Event::Started {
                    instance: instance.into(),
                },
            ];
        }
        let me = myself.clone();
        let name = instance.to_string();
        let ready = self.core.settings.ready_timeout;
        let (dir, key, node) = (
            self.core.settings.dir.clone(),
            self.core.settings.pull_key.clone(),
            self.node,
        );
        tokio::spawn(async move {
            let mut r = Ok(());
            if let Some(from) = restore_from {
                r = match from.path {
                    RestorePath::Socket(source) => restore(&socket, &source, from.rate_bps).await,
                    RestorePath::Pull(export) => {
                        pull_restore(&dir, &name, &socket, export, key, from.rate_bps)
                            .instrument(info_span!("pull", %node, instance = %name))
                            .await
                    }
                };
            }
            if r.is_ok()
                && let Some(addr) = listen
                && let Err(e) = wait_listening(addr, ready).await
            {
                warn!(instance = %name, error = %e, "instance not accepting yet");
            }
            // Accepting on it (or given up on): the instance holds the port itself now.
            drop(hold);
            let speaks = is_socket(&socket);
            let _ = me.send_message(Agent86Msg::Engine(Event::SpeaksApi {
                instance: name.clone(),
                yes: speaks,
            }));
            let ev = match r {
                Ok(()) => Event::Started { instance: name },
                Err(error) => Event::StartFailed {
                    instance: name,
                    error,
                },
            };
            let _ = me.send_message(Agent86Msg::Engine(ev));
        });
        vec![launched]
    }

    /// One sampling tick: exits the runtime noticed, then usage (off the mailbox: the
    /// control API is asked asynchronously, the rest on a blocking thread).
    fn tick(
        &self,
        myself: &ActorRef<Agent86Msg>,
        st: &mut Agent86State,
    ) -> Result<(), ActorProcessingErr> {
        let known = lock(&self.core.engine).instance_names();
        let exited: Vec<(String, smart_instance::runtime::ExitInfo)> = {
            let mut rt = lock(&self.core.runtime);
            rt.probes()
                .into_iter()
                .filter(|p| known.contains(&p.name))
                .filter_map(|p| match rt.status(&p.name) {
                    Ok(InstanceStatus::Exited(e)) => Some((p.name, e)),
                    _ => None,
                })
                .collect()
        };
        for (instance, exit) in exited {
            warn!(node = %self.node, %instance, ?exit, "instance exited");
            self.feed(myself, st, Event::Exited { instance, exit })?;
        }
        let health = &self.core.settings.health;
        if health.enabled {
            let (h, me, every) = (health.clone(), myself.clone(), self.core.settings.interval);
            tokio::task::spawn_blocking(move || {
                let mut reading = read_health(&h.proc_root, &h.sys_root);
                reading.command = h.command.as_ref().map(|c| health_command(c, every));
                let _ = me.send_message(Agent86Msg::Engine(Event::Health(reading)));
            });
        }
        let (rt, sampler, pollers) = (
            self.core.runtime.clone(),
            self.core.sampler.clone(),
            self.core.pollers.clone(),
        );
        let me = myself.clone();
        tokio::spawn(async move {
            // A tick still sampling when the next one comes is skipped, not queued.
            let Ok(mut pollers) = pollers.try_lock() else {
                return;
            };
            let probes = lock(&rt).probes();
            let usage = pollers.poll(&probes, Instant::now()).await;
            drop(pollers);
            let _ = tokio::task::spawn_blocking(move || {
                let s = lock(&sampler).sample(&probes, &usage, Instant::now());
                let _ = me.send_message(Agent86Msg::Engine(usage_event(&s)));
            })
            .await;
        });
        Ok(())
    }
}

/// Runs the operator's health command with a timeout: `(exit code 0, first output line)`.
fn health_command(argv: &[String], timeout: Duration) -> (bool, String) {
    let Some((prog, args)) = argv.split_first() else {
        return (false, "empty health command".into());
    };
    let child = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot run {prog}: {e}")),
    };
    let deadline = Instant::now() + timeout.max(Duration::from_millis(200));
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    use std::io::Read;
                    let _ = o.by_ref().take(4096).read_to_string(&mut out);
                }
                let line = out.lines().next().unwrap_or("").trim().to_string();
                let detail = if line.is_empty() {
                    status.to_string()
                } else {
                    line
                };
                return (status.success(), detail);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return (false, format!("{prog} timed out"));
            }
            Err(e) => return (false, format!("{prog}: {e}")),
        }
    }
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// Waits for the new instance's control socket, then asks it to restore from `source`.
async fn restore(socket: &Path, source: &str, rate_bps: Option<u64>) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("restore: {} never listened", socket.display()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    WorkloadClient::connect(socket, RESTORE_TIMEOUT)
        .await
        .map_err(|e| format!("restore: {e}"))?
        .restore(source, rate_bps)
        .await
        .map(|_| ())
        .map_err(|e| format!("restore: {e}"))
}

/// Cross-host restore: pulls the source's checkpoint from its agent's export and relays it
/// to the new instance through `<dir>/<instance>.pull.sock`, which the instance is told to
/// `restore` from. The relay's error, when there is one, is the cause reported.
async fn pull_restore(
    dir: &Path,
    instance: &str,
    socket: &Path,
    export: SourceExport,
    key: Option<PullKey>,
    rate_bps: Option<u64>,
) -> Result<(), String> {
    let Some(key) = key else {
        return Err("restore: this agent has no key to pull checkpoints with".into());
    };
    let relay_path = dir.join(format!("{instance}.pull.sock"));
    let _ = std::fs::remove_file(&relay_path);
    let listener = tokio::net::UnixListener::bind(&relay_path)
        .map_err(|e| format!("restore: relay socket {}: {e}", relay_path.display()))?;
    let t = Instant::now();
    let relay = tokio::spawn(pull::relay(
        listener,
        export.addr.clone(),
        export.instance.clone(),
        key,
        rate_bps,
        Duration::from_secs(15),
        RESTORE_TIMEOUT,
    ));
    let restored = restore(socket, &relay_path.to_string_lossy(), rate_bps).await;
    let relayed = match tokio::time::timeout(Duration::from_secs(5), relay).await {
        Ok(Ok(r)) => r.map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(format!("relay task: {e}")),
        Err(_) => Err("relay did not finish".into()),
    };
    let _ = std::fs::remove_file(&relay_path);
    match (restored, relayed) {
        (Ok(()), Ok(r)) => {
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            info!(source = %export.addr, from = %export.instance, bytes = r.bytes, ms, "restored over the network");
            Ok(())
        }
        (_, Err(e)) => Err(format!("restore: pull from {}: {e}", export.addr)),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// Waits until something accepts TCP connections at `addr`.
async fn wait_listening(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("instance never listened on {addr}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Actor for Agent86 {
    type Msg = Agent86Msg;
    type State = Agent86State;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        // A first sample at once (the node's load for its first heartbeats), then every
        // interval.
        myself.send_message(Agent86Msg::Tick)?;
        self.core.serve_export();
        myself.send_interval(self.core.settings.interval, || Agent86Msg::Tick);
        Ok(Agent86State::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _span = info_span!("agent86", node = %self.node).entered();
        if let Some(left) = &self.panic_on_message {
            let before = left
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .unwrap_or(0);
            if before > 0 {
                panic!("agent86: injected fault (SMART_FAULT)");
            }
        }
        match msg {
            Agent86Msg::Command {
                from,
                epoch,
                cmd,
                reply,
            } => {
                // An epoch raised elsewhere on this node (membership) fences at once.
                self.feed(&myself, st, Event::EpochObserved(self.epochs.highest()))?;
                let req = self
                    .core
                    .next_req
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                st.pending.insert(
                    req,
                    Pending {
                        instance: cmd.instance().map(str::to_string),
                        reply,
                    },
                );
                self.feed(
                    &myself,
                    st,
                    Event::Control(Box::new(ControlCommand {
                        from,
                        epoch,
                        req,
                        op: cmd,
                    })),
                )?;
            }
            Agent86Msg::Report(reply) => {
                let _ = reply.send(self.core.report());
            }
            Agent86Msg::Tick => self.tick(&myself, st)?,
            Agent86Msg::Engine(ev) => self.feed(&myself, st, ev)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
