//! Agent86: the node agent (thesis §4, DESIGN §1), a thin actor shell around the pure
//! [`Agent86Engine`] of `smart-instance`.
//!
//! The engine decides (fencing, restarts, anomalies, health, reports); this shell executes its
//! [`Command`]s against an [`InstanceRuntime`] (process groups by default, cgroups when the
//! node asks), persists epochs through the node's [`EpochStore`], samples the instances every
//! interval with the [`Sampler`], and speaks the workload control API for migrations.
//!
//! **Fencing** stays at execution (DESIGN §2.4): every command passes through the engine,
//! which refuses an epoch below the highest seen when the command *executes*; before each
//! command the shell tells the engine the node's durable highest epoch, so an epoch raised
//! elsewhere (membership hearing a newer Control) fences older Controls at once. A command at
//! a new, higher epoch is executed only after the store made that epoch durable.
//!
//! **Survives its own restarts.** The engine, the runtime and the instance metadata live in an
//! [`AgentCore`] created once per node and handed to every incarnation of the actor, so a
//! panicking Agent86 that the supervisor restarts still knows (and still owns) the instances
//! it started. Instance process-group ids are written to `<dir>/<name>.pid`; a new core kills
//! the groups a previous *process* left behind (its Control has re-admitted them elsewhere).
//!
//! **Migration** through the workload control API (`vod::control` documents it): the target
//! agent starts the instance empty and asks it to `restore` from the source's control socket
//! while the source keeps serving (pre-copy); then the source agent asks its instance to
//! `handoff` its clients to the target's endpoint and stops it. An instance without the API
//! fails `MigrateOut`, and the Control restarts it elsewhere instead.
//!
//! Blocking runtime calls (stop with its grace period) run on `spawn_blocking`; their results
//! come back as [`Agent86Msg::Engine`] messages, so the mailbox never waits on a process.
//!
//! ## Layout
//! - [`Agent86Settings`], [`AgentCore`]: configuration and the state shared across restarts.
//! - [`Agent86`], [`Agent86Msg`], [`Agent86State`]: the actor.
//! - [`control_call`]: one JSON request on a workload control socket.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use smart_instance::agent86::{
    Agent86Config, Agent86Engine, Command, ControlCommand, ControlOp, Event, Refusal, usage_event,
};
use smart_instance::runtime::{
    InstanceRuntime, InstanceSpec, InstanceStatus, Output, ProcessDriver,
};
use smart_instance::sample::{Sampler, SamplerConfig};
use smart_supervision::{Epoch, NodeId};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracing::{info, warn};

use crate::epoch::EpochStore;
use crate::proto::{AgentCommand, AgentEvent, AgentReport, InstanceInfo, LaunchSpec, PeerResponse};

/// How many executed commands a report lists.
const RECENT: usize = 32;
/// How many notices a report carries.
const NOTICES: usize = 64;

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
        }
    }
}

/// What the shell knows of an instance beyond the engine.
#[derive(Debug, Clone)]
struct Meta {
    /// The launch as given (before `{listen}` was replaced).
    template: LaunchSpec,
    listen: Option<SocketAddr>,
    socket: PathBuf,
    restore_from: Option<String>,
    handoff_to: Option<String>,
}

/// The engine, the runtime and the instance metadata: created once per node, shared by every
/// incarnation of the actor.
pub struct AgentCore {
    settings: Agent86Settings,
    engine: Mutex<Agent86Engine>,
    runtime: Arc<Mutex<Box<dyn InstanceRuntime>>>,
    sampler: Arc<Mutex<Sampler>>,
    meta: Mutex<BTreeMap<String, Meta>>,
    next_req: std::sync::atomic::AtomicU64,
    notices: Mutex<(u64, VecDeque<(u64, AgentEvent)>)>,
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
                let cfg = smart_instance::cgroup::CgroupConfig::new(format!("smart-n{}", node.0));
                smart_instance::runtime::auto_runtime(&cfg, &settings.dir)?.0
            }
        };
        let mut cfg = Agent86Config::new(node.0);
        cfg.stop_grace = settings.stop_grace;
        let sampler = Sampler::new(SamplerConfig {
            nic_capacity_bps: settings.nic_bps,
            ..SamplerConfig::default()
        });
        Ok(Arc::new(Self {
            engine: Mutex::new(Agent86Engine::new(cfg, persisted_epoch)),
            runtime: Arc::new(Mutex::new(runtime)),
            sampler: Arc::new(Mutex::new(sampler)),
            meta: Mutex::new(BTreeMap::new()),
            next_req: std::sync::atomic::AtomicU64::new(1),
            notices: Mutex::new((0, VecDeque::new())),
            settings,
        }))
    }

    /// Stops every instance (node shutdown).
    pub fn stop_all(&self) {
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

/// Sends one JSON request on a workload control socket and reads the one-line reply.
/// `{"ok":false,...}` replies are errors.
pub async fn control_call(
    socket: &Path,
    req: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let fut = async {
        let s = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        let (r, mut w) = s.into_split();
        let mut line = req.to_string();
        line.push('\n');
        w.write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(r);
        let mut ans = String::new();
        r.read_line(&mut ans).await.map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&ans).map_err(|e| format!("bad reply {ans:?}: {e}"))?;
        if v.get("ok") == Some(&serde_json::Value::Bool(false)) {
            return Err(v
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("refused")
                .to_string());
        }
        Ok(v)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("control API timed out after {timeout:?}"))?
}

/// Agent86's messages.
#[derive(Debug)]
pub enum Agent86Msg {
    /// A command from a Control, with the Control's epoch.
    Command {
        /// The Control.
        from: NodeId,
        /// Its epoch.
        epoch: Epoch,
        /// What to do.
        cmd: AgentCommand,
        /// The answer.
        reply: RpcReplyPort<PeerResponse>,
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
    /// Engine, runtime and instance metadata (shared across restarts of the actor).
    pub core: Arc<AgentCore>,
    /// Fault injection for the supervision tests: panic while handling the first `n`
    /// messages of each incarnation of the actor (`None` in production).
    pub panic_on_message: Option<Arc<std::sync::atomic::AtomicU32>>,
}

/// Who waits for a command's answer.
#[derive(Debug)]
struct Pending {
    from: NodeId,
    epoch: Epoch,
    instance: Option<String>,
    reply: RpcReplyPort<PeerResponse>,
}

/// Agent86's mutable state.
#[derive(Debug, Default)]
pub struct Agent86State {
    recent: VecDeque<(Epoch, u64)>,
    refused_stale: u64,
    pending: HashMap<u64, Pending>,
}

impl Agent86 {
    fn info(&self, name: &str) -> Option<InstanceInfo> {
        let report = lock(&self.core.engine).report();
        let meta = lock(&self.core.meta);
        let i = report.instances.into_iter().find(|i| i.instance == name)?;
        Some(self.info_of(i, meta.get(name)))
    }

    fn info_of(
        &self,
        i: smart_instance::agent86::InstanceReport,
        m: Option<&Meta>,
    ) -> InstanceInfo {
        InstanceInfo {
            launch: m.map(|m| m.template.clone()).unwrap_or(LaunchSpec {
                service: i.service.clone(),
                ..Default::default()
            }),
            endpoint: m.and_then(|m| m.listen).map(|l| format!("http://{l}/")),
            control_socket: m
                .map(|m| m.socket.display().to_string())
                .unwrap_or_default(),
            speaks_api: m.is_some_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                std::fs::metadata(&m.socket).is_ok_and(|md| md.file_type().is_socket())
            }),
            instance: i.instance,
            state: i.state,
            reservation: i.reservation,
            usage: i.usage,
            restarts: i.restarts,
        }
    }

    fn report(&self, st: &Agent86State) -> AgentReport {
        let r = lock(&self.core.engine).report();
        let meta = lock(&self.core.meta);
        AgentReport {
            node: self.node.0,
            instances: r
                .instances
                .into_iter()
                .map(|i| {
                    let m = meta.get(&i.instance);
                    self.info_of(i, m)
                })
                .collect(),
            reservations: r.reservations,
            usage: r.usage,
            recent_commands: st.recent.iter().copied().collect(),
            refused_stale: st.refused_stale,
            notices: lock(&self.core.notices).1.iter().cloned().collect(),
        }
    }

    /// Records what the shell needs for a start, picking a `{listen}` address.
    fn prepare(&self, instance: &str, launch: &LaunchSpec, restore_from: Option<String>) {
        let mut meta = lock(&self.core.meta);
        if meta.contains_key(instance) {
            return;
        }
        let listen = launch
            .command
            .iter()
            .any(|a| a.contains("{listen}"))
            .then(|| free_port(self.core.settings.host))
            .flatten();
        meta.insert(
            instance.to_string(),
            Meta {
                template: launch.clone(),
                listen,
                socket: self.core.settings.dir.join(format!("{instance}.sock")),
                restore_from,
                handoff_to: None,
            },
        );
    }

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
                // Durable before acting: a node that cannot persist must stop (escalates).
                self.epochs
                    .raise(e)
                    .map_err(|err| format!("cannot persist epoch {e}: {err}"))?;
                info!(node = %self.node, epoch = e, "agent raised its epoch");
                queue.push_back(Event::EpochPersisted(e));
            }
            Command::Start {
                instance,
                launch,
                restore_from,
            } => queue.extend(self.start(myself, &instance, &launch, restore_from.is_some())),
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
            Command::MigrateOut { instance, .. } => {
                let m = lock(&self.core.meta).get(&instance).cloned();
                let me = myself.clone();
                let rt = self.core.runtime.clone();
                let dir = self.core.settings.dir.clone();
                let grace = self.core.settings.stop_grace;
                tokio::spawn(async move {
                    let Some(m) = m else { return };
                    let to = m.handoff_to.clone().unwrap_or_default();
                    let req = serde_json::json!({"op": "handoff", "to": to});
                    match control_call(&m.socket, &req, Duration::from_secs(10)).await {
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
                    Ok(()) => {
                        if st.recent.len() == RECENT {
                            st.recent.pop_front();
                        }
                        st.recent.push_back((p.epoch, p.from.0));
                        match p.instance.as_deref().and_then(|i| self.info(i)) {
                            Some(info) => PeerResponse::Instance(info),
                            None => PeerResponse::Done,
                        }
                    }
                    Err(Refusal::StaleEpoch { got, highest }) => {
                        st.refused_stale += 1;
                        warn!(node = %self.node, from = %p.from, epoch = got, highest,
                            "refused command from a stale control");
                        self.forget_if_unknown(p.instance.as_deref());
                        PeerResponse::Refused {
                            epoch: got,
                            highest,
                        }
                    }
                    Err(other) => {
                        self.forget_if_unknown(p.instance.as_deref());
                        PeerResponse::Failed(format!("{other:?}"))
                    }
                };
                let _ = p.reply.send(resp);
            }
            Command::Report { req, .. } => {
                if let Some(p) = st.pending.remove(&req) {
                    if st.recent.len() == RECENT {
                        st.recent.pop_front();
                    }
                    st.recent.push_back((p.epoch, p.from.0));
                    let _ = p.reply.send(PeerResponse::Report(self.report(st)));
                }
            }
            Command::Notify(ev) => {
                info!(node = %self.node, event = ?ev, "agent event");
                let mut n = lock(&self.core.notices);
                n.0 += 1;
                let seq = n.0;
                if n.1.len() == NOTICES {
                    n.1.pop_front();
                }
                n.1.push_back((seq, ev));
            }
        }
        Ok(())
    }

    /// Metadata of an instance the engine does not know (a refused start) is dropped.
    fn forget_if_unknown(&self, instance: Option<&str>) {
        if let Some(i) = instance
            && !lock(&self.core.engine)
                .instance_names()
                .iter()
                .any(|n| n == i)
        {
            lock(&self.core.meta).remove(i);
        }
    }

    /// Starts a process; returns the event for the engine (`None` when `Started` comes
    /// later, after the restore of a migration).
    fn start(
        &self,
        myself: &ActorRef<Agent86Msg>,
        instance: &str,
        launch: &LaunchSpec,
        restore: bool,
    ) -> Option<Event> {
        let Some(m) = lock(&self.core.meta).get(instance).cloned() else {
            return Some(Event::StartFailed {
                instance: instance.into(),
                error: "no launch metadata".into(),
            });
        };
        let listen = m.listen.map(|l| l.to_string()).unwrap_or_default();
        let spec = InstanceSpec {
            name: instance.to_string(),
            command: launch
                .command
                .iter()
                .map(|a| a.replace("{listen}", &listen))
                .collect(),
            env: launch.env.clone(),
            limits: launch.limits(),
            control_socket: Some(m.socket.clone()),
            stdout: Output::File(self.core.settings.dir.join(format!("{instance}.log"))),
            stderr: Output::File(self.core.settings.dir.join(format!("{instance}.log"))),
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
        match started {
            Ok(probe) => {
                let _ = std::fs::write(
                    pid_file(&self.core.settings.dir, instance),
                    probe.pgid.to_string(),
                );
                info!(node = %self.node, %instance, %listen, "instance started");
                // Started means ready: restored (migration) and accepting clients on its
                // `{listen}` address, so the first viewer sent there is never refused.
                let restore_src = if restore {
                    m.restore_from.clone()
                } else {
                    None
                };
                if restore_src.is_none() && m.listen.is_none() {
                    return Some(Event::Started {
                        instance: instance.into(),
                    });
                }
                let me = myself.clone();
                let name = instance.to_string();
                let ready = self.core.settings.ready_timeout;
                tokio::spawn(async move {
                    let mut r = Ok(());
                    if let Some(from) = restore_src {
                        r = restore_from(&m.socket, &from)
                            .await
                            .map_err(|e| format!("restore: {e}"));
                    }
                    if r.is_ok()
                        && let Some(addr) = m.listen
                        && let Err(e) = wait_listening(addr, ready).await
                    {
                        warn!(instance = %name, error = %e, "instance not accepting yet");
                    }
                    let ev = match r {
                        Ok(()) => Event::Started { instance: name },
                        Err(error) => Event::StartFailed {
                            instance: name,
                            error,
                        },
                    };
                    let _ = me.send_message(Agent86Msg::Engine(ev));
                });
                None
            }
            Err(e) => Some(Event::StartFailed {
                instance: instance.into(),
                error: e.to_string(),
            }),
        }
    }

    /// One sampling tick: exits the runtime noticed, then usage (off the mailbox thread).
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
        let rt = self.core.runtime.clone();
        let sampler = self.core.sampler.clone();
        let me = myself.clone();
        tokio::task::spawn_blocking(move || {
            let probes = lock(&rt).probes();
            let s = lock(&sampler).sample(&probes, Instant::now());
            let _ = me.send_message(Agent86Msg::Engine(usage_event(&s)));
        });
        Ok(())
    }
}

/// Waits for the new instance's control socket, then asks it to restore from `source`.
async fn restore_from(socket: &Path, source: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{} never listened", socket.display()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let req = serde_json::json!({"op": "restore", "from": source});
    control_call(socket, &req, Duration::from_secs(60))
        .await
        .map(|_| ())
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

/// A free TCP port on `host` (bound and released: the instance binds it right after).
fn free_port(host: IpAddr) -> Option<SocketAddr> {
    std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .ok()
}

/// A launch and, for a migration, the source's control socket.
type Launch = (LaunchSpec, Option<String>);

/// The engine's operation, the instance it starts (if any) and its launch.
fn op_of(cmd: AgentCommand) -> (ControlOp, Option<String>, Option<Launch>) {
    match cmd {
        AgentCommand::Report => (ControlOp::ReportState, None, None),
        AgentCommand::Start {
            instance,
            launch,
            reservation,
        } => (
            ControlOp::Start {
                instance: instance.clone(),
                launch: launch.clone(),
                reservation,
            },
            Some(instance),
            Some((launch, None)),
        ),
        AgentCommand::Stop { instance } => (ControlOp::Stop { instance }, None, None),
        AgentCommand::Reserve { id, reservation } => {
            (ControlOp::Reserve { id, reservation }, None, None)
        }
        AgentCommand::Release { id } => (ControlOp::Release { id }, None, None),
        AgentCommand::MigrateOut {
            instance, target, ..
        } => (ControlOp::MigrateOut { instance, target }, None, None),
        AgentCommand::MigrateIn {
            instance,
            launch,
            reservation,
            source,
            source_control,
            reserved_as,
        } => (
            ControlOp::MigrateIn {
                instance: instance.clone(),
                launch: launch.clone(),
                reservation,
                source,
                reserved_as,
            },
            Some(instance),
            Some((launch, Some(source_control))),
        ),
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
        let interval = self.core.settings.interval;
        let me = myself.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                if me.send_message(Agent86Msg::Tick).is_err() {
                    return;
                }
            }
        });
        Ok(Agent86State::default())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
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
                let handoff = match &cmd {
                    AgentCommand::MigrateOut {
                        instance,
                        target_url,
                        ..
                    } => Some((instance.clone(), target_url.clone())),
                    _ => None,
                };
                let (op, instance, launch) = op_of(cmd);
                if epoch >= lock(&self.core.engine).highest_epoch() {
                    if let (Some(i), Some((l, from_sock))) = (&instance, &launch) {
                        self.prepare(i, l, from_sock.clone());
                    }
                    if let Some((i, url)) = handoff
                        && let Some(m) = lock(&self.core.meta).get_mut(&i)
                    {
                        m.handoff_to = Some(url);
                    }
                }
                let req = self
                    .core
                    .next_req
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                st.pending.insert(
                    req,
                    Pending {
                        from,
                        epoch,
                        instance,
                        reply,
                    },
                );
                self.feed(
                    &myself,
                    st,
                    Event::Control(ControlCommand {
                        from: from.0,
                        epoch,
                        req,
                        op,
                    }),
                )?;
            }
            Agent86Msg::Report(reply) => {
                let _ = reply.send(self.report(st));
            }
            Agent86Msg::Tick => self.tick(&myself, st)?,
            Agent86Msg::Engine(ev) => self.feed(&myself, st, ev)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::MemoryEpochStore;
    use ractor::call_t;

    async fn spawn(store: MemoryEpochStore, dir: &Path) -> ActorRef<Agent86Msg> {
        let core = AgentCore::new(
            NodeId(9),
            Agent86Settings {
                ready_timeout: Duration::from_millis(100),
                ..Agent86Settings::new(dir, "127.0.0.1".parse().unwrap())
            },
            store.highest(),
        )
        .unwrap();
        let (a, _) = Actor::spawn(
            None,
            Agent86 {
                node: NodeId(9),
                epochs: Arc::new(store),
                core,
                panic_on_message: None,
            },
            (),
        )
        .await
        .unwrap();
        a
    }

    async fn send(
        a: &ActorRef<Agent86Msg>,
        from: u64,
        epoch: Epoch,
        cmd: AgentCommand,
    ) -> PeerResponse {
        call_t!(
            a,
            |reply| Agent86Msg::Command {
                from: NodeId(from),
                epoch,
                cmd,
                reply
            },
            5000
        )
        .unwrap()
    }

    async fn cmd(a: &ActorRef<Agent86Msg>, from: u64, epoch: Epoch) -> PeerResponse {
        send(a, from, epoch, AgentCommand::Report).await
    }

    #[tokio::test]
    async fn stale_epochs_are_refused_and_new_ones_persisted_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryEpochStore::new(3);
        let a = spawn(store.clone(), dir.path()).await;
        assert!(matches!(cmd(&a, 1, 3).await, PeerResponse::Report(_)));
        assert_eq!(
            cmd(&a, 1, 2).await,
            PeerResponse::Refused {
                epoch: 2,
                highest: 3
            }
        );
        // A newer Control appears: the agent raises its epoch ...
        assert!(matches!(cmd(&a, 2, 5).await, PeerResponse::Report(_)));
        assert_eq!(store.highest(), 5);
        // ... and the old one is now fenced off.
        assert!(matches!(
            cmd(&a, 1, 3).await,
            PeerResponse::Refused { highest: 5, .. }
        ));
        let r = call_t!(a, Agent86Msg::Report, 1000).unwrap();
        assert_eq!(r.refused_stale, 2);
        assert_eq!(r.recent_commands, vec![(3, 1), (5, 2)]);
    }

    #[tokio::test]
    async fn epoch_raised_elsewhere_fences_the_agent() {
        // The node's membership saw a newer Control's heartbeat and raised the shared store:
        // the agent consults it when it executes, so an older Control is refused even though
        // the agent itself never received a command at the newer epoch.
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryEpochStore::new(1);
        let a = spawn(store.clone(), dir.path()).await;
        let (tx, rx) = ractor::concurrency::oneshot();
        store.raise(4).unwrap();
        a.send_message(Agent86Msg::Command {
            from: NodeId(1),
            epoch: 1,
            cmd: AgentCommand::Report,
            reply: tx.into(),
        })
        .unwrap();
        assert_eq!(
            rx.await.unwrap(),
            PeerResponse::Refused {
                epoch: 1,
                highest: 4
            }
        );
    }

    fn sleeper(args: &[&str]) -> LaunchSpec {
        LaunchSpec {
            service: "sleeper".into(),
            command: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn start_report_stop_and_a_stale_start_is_refused_without_running() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryEpochStore::new(2);
        let a = spawn(store.clone(), dir.path()).await;
        let marker = dir.path().join("listen.txt");
        let script = format!("echo {{listen}} > {}; exec sleep 30", marker.display());
        let start = |name: &str| AgentCommand::Start {
            instance: name.into(),
            launch: sleeper(&["sh", "-c", &script]),
            reservation: Default::default(),
        };
        let PeerResponse::Instance(info) = send(&a, 1, 2, start("svc")).await else {
            panic!("start failed")
        };
        let endpoint = info
            .endpoint
            .clone()
            .expect("a {listen} address was picked");
        assert!(endpoint.starts_with("http://127.0.0.1:"));
        // The process really runs, with the address substituted.
        for _ in 0..100 {
            if marker.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = std::fs::read_to_string(&marker).unwrap();
        assert_eq!(format!("http://{}/", got.trim()), endpoint);
        assert!(dir.path().join("svc.pid").exists());
        // Report lists it with its launch template (what a new Control needs).
        let PeerResponse::Report(r) = cmd(&a, 1, 2).await else {
            panic!()
        };
        assert_eq!(r.instances.len(), 1);
        assert_eq!(r.instances[0].launch.command[2], script);
        // A deposed Control cannot start anything.
        store.raise(3).unwrap();
        assert_eq!(
            send(&a, 1, 2, start("other")).await,
            PeerResponse::Refused {
                epoch: 2,
                highest: 3
            }
        );
        assert_eq!(
            send(
                &a,
                2,
                3,
                AgentCommand::Stop {
                    instance: "svc".into()
                }
            )
            .await,
            PeerResponse::Done
        );
        let PeerResponse::Report(r) = cmd(&a, 2, 3).await else {
            panic!()
        };
        assert!(r.instances.is_empty());
        assert!(!dir.path().join("svc.pid").exists());
    }

    #[tokio::test]
    async fn a_crashed_instance_is_restarted_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryEpochStore::new(1);
        let core = AgentCore::new(
            NodeId(9),
            Agent86Settings {
                interval: Duration::from_millis(50),
                ..Agent86Settings::new(dir.path(), "127.0.0.1".parse().unwrap())
            },
            1,
        )
        .unwrap();
        let (a, _) = Actor::spawn(
            None,
            Agent86 {
                node: NodeId(9),
                epochs: Arc::new(store),
                core,
                panic_on_message: None,
            },
            (),
        )
        .await
        .unwrap();
        let r = send(
            &a,
            1,
            1,
            AgentCommand::Start {
                instance: "c".into(),
                launch: sleeper(&["sleep", "30"]),
                reservation: Default::default(),
            },
        )
        .await;
        assert!(matches!(r, PeerResponse::Instance(_)), "{r:?}");
        let pgid: i32 = std::fs::read_to_string(dir.path().join("c.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let mut seen = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let r = call_t!(a, Agent86Msg::Report, 1000).unwrap();
            if let Some((_, ev)) = r.notices.first() {
                seen = Some((ev.clone(), r.instances.len()));
                break;
            }
        }
        let (ev, n) = seen.expect("a notice for the crash");
        assert!(
            matches!(ev, AgentEvent::InstanceRestarted { attempt: 1, .. }),
            "{ev:?}"
        );
        assert_eq!(n, 1, "still managed after its restart");
        let new: i32 = std::fs::read_to_string(dir.path().join("c.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_ne!(new, pgid);
        unsafe { libc::kill(-new, libc::SIGKILL) };
    }
}
