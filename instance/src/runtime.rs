//! The instance runtime: start, stop (graceful then forced), wait and status of service
//! instances, behind one trait with two drivers.
//!
//! - [`ProcessDriver`] runs each instance as a child in its own session and process group. It works on
//!   any Unix; it cannot cap CPU, and caps memory only loosely (`RLIMIT_DATA`: heap and
//!   private mappings), so the sampler's flag is the real memory guard there.
//! - [`CgroupDriver`] additionally puts the child in a cgroup (v2 or v1, detected at run
//!   time, see [`crate::cgroup`]) *before it execs*, so every cycle and byte it ever uses is
//!   accounted and limited: CPU quota and shares/weight, memory limit (the kernel OOM-kills
//!   inside the group; the node survives). Groups left by a crashed agent are removed when
//!   the driver is created.
//!
//! Every instance gets `SMART_CONTROL_SOCKET=<path>` in its environment: the Unix socket on
//! which it may serve the workload control API ([`crate::usage`]).
//!
//! The trait is synchronous: `status` never blocks, `wait` and `stop` block at most for the
//! time given. An async shell calls them from `spawn_blocking`.
//!
//! # Layout
//! - [`InstanceSpec`], [`Limits`], [`Output`]: what to start.
//! - [`InstanceStatus`], [`ExitInfo`]: what became of it.
//! - [`InstanceRuntime`]: the trait; [`Probe`]: what the sampler needs to measure one.
//! - [`ProcessDriver`], [`CgroupDriver`], [`auto_runtime`].

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::{CgroupConfig, CgroupError, CgroupLimits, Cgroups, Group};

/// Environment variable that carries the workload control socket path.
pub const CONTROL_SOCKET_ENV: &str = "SMART_CONTROL_SOCKET";

/// Resource limits of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    /// CPU cap in cores (cgroup driver only).
    pub cpu_cores: Option<f64>,
    /// CPU weight in v1 shares units (1024 = default; cgroup driver only).
    pub cpu_shares: Option<u64>,
    /// Memory cap in bytes.
    pub memory_bytes: Option<u64>,
}

/// Where an instance's stdout/stderr go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Output {
    /// Discarded.
    #[default]
    Null,
    /// Shared with the agent.
    Inherit,
    /// Appended to a file.
    File(PathBuf),
}

/// What to start.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceSpec {
    /// Unique on this node; also the cgroup directory name, so only `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Limits.
    pub limits: Limits,
    /// Scheduling niceness (-20..=19; negative needs root). The profiler uses it to give
    /// the service its best-effort CPU on a node that is not otherwise idle.
    pub nice: Option<i32>,
    /// Control socket path; default `<socket_dir>/<name>.sock`.
    pub control_socket: Option<PathBuf>,
    /// Standard output.
    pub stdout: Output,
    /// Standard error.
    pub stderr: Output,
}

pub use smart_proto::agent::ExitInfo;

/// Current state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    /// Its main process is alive.
    Running {
        /// Main process id (also the process group id).
        pid: u32,
    },
    /// Its main process ended.
    Exited(ExitInfo),
}

/// What the sampler needs to measure one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Instance name.
    pub name: String,
    /// Main process id, equal to its process group id.
    pub pgid: i32,
    /// Its cgroup, with the cgroup driver.
    pub group: Option<Group>,
    /// The control socket it was given.
    pub control_socket: PathBuf,
}

/// Which driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// Process groups only.
    Process,
    /// Process groups in cgroups v1.
    CgroupV1,
    /// Process groups in cgroups v2.
    CgroupV2,
}

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Bad spec.
    #[error("invalid instance spec: {0}")]
    InvalidSpec(String),
    /// An instance of that name already exists.
    #[error("instance {0} already exists")]
    Exists(String),
    /// No instance of that name.
    #[error("no instance named {0}")]
    Unknown(String),
    /// The driver cannot honour a requested limit.
    #[error("the {driver:?} driver cannot enforce {what}")]
    Unsupported {
        /// Driver.
        driver: DriverKind,
        /// The limit.
        what: &'static str,
    },
    /// Spawning failed.
    #[error("cannot start {name}: {source}")]
    Spawn {
        /// Instance.
        name: String,
        /// Cause.
        source: io::Error,
    },
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// The runtime seen by Agent86 and Agent99.
pub trait InstanceRuntime: Send {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;
    /// Start an instance.
    fn start(&mut self, spec: &InstanceSpec) -> Result<Probe, RuntimeError>;
    /// Non-blocking status.
    fn status(&mut self, name: &str) -> Result<InstanceStatus, RuntimeError>;
    /// Block until the instance's main process exits or `timeout` passes; returns the
    /// status at that point.
    fn wait(&mut self, name: &str, timeout: Duration) -> Result<InstanceStatus, RuntimeError>;
    /// SIGTERM to the whole instance, then SIGKILL after `grace`; reaps it, removes its
    /// group and socket, and forgets it. Also the way to clean up an instance that exited.
    fn stop(&mut self, name: &str, grace: Duration) -> Result<ExitInfo, RuntimeError>;
    /// Probes of all known instances (running or exited but not yet stopped).
    fn probes(&self) -> Vec<Probe>;
    /// New limits for a running instance (its reservation changed). The process driver
    /// enforces none and says so.
    fn set_limits(&mut self, name: &str, limits: &Limits) -> Result<(), RuntimeError>;
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn stdio(o: &Output) -> io::Result<Stdio> {
    Ok(match o {
        Output::Null => Stdio::null(),
        Output::Inherit => Stdio::inherit(),
        Output::File(p) => Stdio::from(File::options().create(true).append(true).open(p)?),
    })
}

struct Entry {
    child: Child,
    probe: Probe,
    exit: Option<ExitInfo>,
}

/// Shared implementation of both drivers.
struct Core {
    kind: DriverKind,
    cgroups: Option<Cgroups>,
    socket_dir: PathBuf,
    table: HashMap<String, Entry>,
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

impl Core {
    fn set_limits(&mut self, name: &str, l: &Limits) -> Result<(), RuntimeError> {
        let e = self
            .table
            .get(name)
            .ok_or_else(|| RuntimeError::InvalidSpec(format!("no instance {name:?}")))?;
        let Some(group) = &e.probe.group else {
            return Err(RuntimeError::Unsupported {
                driver: self.kind,
                what: "limits (use the cgroup driver)",
            });
        };
        group
            .apply_limits(&CgroupLimits {
                cpu_cores: l.cpu_cores,
                cpu_shares: l.cpu_shares,
                memory_bytes: l.memory_bytes,
            })
            .map_err(RuntimeError::from)
    }

    fn start(&mut self, spec: &InstanceSpec) -> Result<Probe, RuntimeError> {
        if !valid_name(&spec.name) {
            return Err(RuntimeError::InvalidSpec(format!(
                "name {:?} must be 1-128 of [A-Za-z0-9_.-]",
                spec.name
            )));
        }
        if spec.command.is_empty() {
            return Err(RuntimeError::InvalidSpec("empty command".into()));
        }
        if self.table.contains_key(&spec.name) {
            return Err(RuntimeError::Exists(spec.name.clone()));
        }
        let l = spec.limits;
        if self.cgroups.is_none() && (l.cpu_cores.is_some() || l.cpu_shares.is_some()) {
            return Err(RuntimeError::Unsupported {
                driver: self.kind,
                what: "CPU limits (use the cgroup driver)",
            });
        }
        let socket = spec
            .control_socket
            .clone()
            .unwrap_or_else(|| self.socket_dir.join(format!("{}.sock", spec.name)));
        let _ = std::fs::remove_file(&socket);
        // Everything that can fail without side effects comes before the group exists.
        let io_err = |source| RuntimeError::Spawn {
            name: spec.name.clone(),
            source,
        };
        let stdout = stdio(&spec.stdout).map_err(io_err)?;
        let stderr = stdio(&spec.stderr).map_err(io_err)?;

        let group = match &self.cgroups {
            Some(cg) => Some(cg.create(
                &spec.name,
                &CgroupLimits {
                    cpu_cores: l.cpu_cores,
                    cpu_shares: l.cpu_shares,
                    memory_bytes: l.memory_bytes,
                },
            )?),
            None => None,
        };
        // Open the cgroup.procs files here (close-on-exec) so the child only has to write
        // "0" into them between fork and exec: it then runs its first instruction inside
        // the group.
        let procs: Vec<File> = match &group {
            Some(g) => match g
                .procs_files()
                .iter()
                .map(|p| File::options().write(true).open(p))
                .collect::<io::Result<_>>()
            {
                Ok(v) => v,
                Err(e) => {
                    let _ = g.destroy(Duration::from_secs(1));
                    return Err(io_err(e));
                }
            },
            None => Vec::new(),
        };
        let fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let rlimit_data = if group.is_none() {
            l.memory_bytes
        } else {
            None
        };

        let nice = spec.nice;
        // The autogroup nice line ("-10\n"), formatted before fork.
        let autogroup_nice: Option<Vec<u8>> = nice.map(|n| format!("{n}\n").into_bytes());
        let mut cmd = Command::new(&spec.command[0]);
        cmd.args(&spec.command[1..])
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env(CONTROL_SOCKET_ENV, &socket)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(d) = &spec.cwd {
            cmd.current_dir(d);
        }
        // SAFETY: the closure only calls async-signal-safe functions (setsid, open, write,
        // close, setpriority, setrlimit) on values prepared before fork, and allocates
        // nothing.
        unsafe {
            cmd.pre_exec(move || {
                // Own session, hence own process group (pgid = pid) and, on kernels with
                // autogroup scheduling, own autogroup: signals to the group reach exactly
                // the instance, and its CPU share does not depend on the agent's session.
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                for &fd in &fds {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(n) = nice {
                    if libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // With autogroup scheduling, niceness only ranks tasks inside their
                    // autogroup; the autogroup's own nice ranks it against other sessions.
                    // Best effort: the file is absent without autogroup support.
                    if let Some(line) = &autogroup_nice {
                        let fd = libc::open(
                            c"/proc/self/autogroup".as_ptr(),
                            libc::O_WRONLY | libc::O_CLOEXEC,
                        );
                        if fd >= 0 {
                            libc::write(fd, line.as_ptr().cast(), line.len());
                            libc::close(fd);
                        }
                    }
                }
                if let Some(b) = rlimit_data {
                    let r = libc::rlimit {
                        rlim_cur: b as libc::rlim_t,
                        rlim_max: b as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_DATA, &r) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                if let Some(g) = &group {
                    let _ = g.destroy(Duration::from_secs(1));
                }
                return Err(io_err(e));
            }
        };
        drop(procs);
        let probe = Probe {
            name: spec.name.clone(),
            pgid: child.id() as i32,
            group,
            control_socket: socket,
        };
        tracing::info!(instance = %spec.name, pid = child.id(), driver = ?self.kind, "instance started");
        self.table.insert(
            spec.name.clone(),
            Entry {
                child,
                probe: probe.clone(),
                exit: None,
            },
        );
        Ok(probe)
    }

    fn entry(&mut self, name: &str) -> Result<&mut Entry, RuntimeError> {
        self.table
            .get_mut(name)
            .ok_or_else(|| RuntimeError::Unknown(name.to_string()))
    }

    fn poll(e: &mut Entry) -> InstanceStatus {
        if let Some(x) = e.exit {
            return InstanceStatus::Exited(x);
        }
        match e.child.try_wait() {
            Ok(Some(st)) => {
                let oom = e.probe.group.as_ref().is_some_and(|g| g.oom_kills() > 0);
                let x = ExitInfo {
                    code: st.code(),
                    signal: st.signal(),
                    oom_killed: oom,
                };
                e.exit = Some(x);
                InstanceStatus::Exited(x)
            }
            Ok(None) => InstanceStatus::Running { pid: e.child.id() },
            Err(err) => {
                // Only possible if someone else reaped it; report it as gone.
                tracing::warn!(instance = %e.probe.name, error = %err, "cannot wait for instance");
                let x = ExitInfo::default();
                e.exit = Some(x);
                InstanceStatus::Exited(x)
            }
        }
    }

    fn status(&mut self, name: &str) -> Result<InstanceStatus, RuntimeError> {
        Ok(Self::poll(self.entry(name)?))
    }

    fn wait(&mut self, name: &str, timeout: Duration) -> Result<InstanceStatus, RuntimeError> {
        let deadline = Instant::now() + timeout;
        let e = self.entry(name)?;
        loop {
            let s = Self::poll(e);
            if matches!(s, InstanceStatus::Exited(_)) || Instant::now() >= deadline {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn everything_gone(e: &mut Entry) -> bool {
        matches!(Self::poll(e), InstanceStatus::Exited(_))
            && !group_alive(e.probe.pgid)
            && e.probe.group.as_ref().is_none_or(|g| g.pids().is_empty())
    }

    fn signal(e: &Entry, sig: i32) {
        // SAFETY: plain kill(2) on the instance's process group.
        unsafe { libc::kill(-e.probe.pgid, sig) };
        if let Some(g) = &e.probe.group {
            g.signal_all(sig);
        }
    }

    fn stop(&mut self, name: &str, grace: Duration) -> Result<ExitInfo, RuntimeError> {
        let e = self.entry(name)?;
        if !Self::everything_gone(e) {
            Self::signal(e, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while !Self::everything_gone(e) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !Self::everything_gone(e) {
                tracing::warn!(instance = %name, "instance ignored SIGTERM, killing it");
                let hard = Instant::now() + Duration::from_secs(2);
                while !Self::everything_gone(e) && Instant::now() < hard {
                    Self::signal(e, libc::SIGKILL);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let exit = match Self::poll(e) {
            InstanceStatus::Exited(x) => x,
            InstanceStatus::Running { .. } => ExitInfo::default(),
        };
        let e = self.table.remove(name).expect("entry present");
        if let Some(g) = &e.probe.group {
            g.destroy(Duration::from_secs(2))?;
        }
        let _ = std::fs::remove_file(&e.probe.control_socket);
        tracing::info!(instance = %name, ?exit, "instance stopped");
        Ok(exit)
    }

    fn probes(&self) -> Vec<Probe> {
        let mut v: Vec<Probe> = self.table.values().map(|e| e.probe.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn stop_all(&mut self) {
        let names: Vec<String> = self.table.keys().cloned().collect();
        for n in names {
            let _ = self.stop(&n, Duration::from_millis(200));
        }
    }
}

macro_rules! delegate_runtime {
    ($t:ty) => {
        impl InstanceRuntime for $t {
            fn kind(&self) -> DriverKind {
                self.0.kind
            }
            fn start(&mut self, spec: &InstanceSpec) -> Result<Probe, RuntimeError> {
                self.0.start(spec)
            }
            fn status(&mut self, name: &str) -> Result<InstanceStatus, RuntimeError> {
                self.0.status(name)
            }
            fn wait(
                &mut self,
                name: &str,
                timeout: Duration,
            ) -> Result<InstanceStatus, RuntimeError> {
                self.0.wait(name, timeout)
            }
            fn stop(&mut self, name: &str, grace: Duration) -> Result<ExitInfo, RuntimeError> {
                self.0.stop(name, grace)
            }
            fn probes(&self) -> Vec<Probe> {
                self.0.probes()
            }
            fn set_limits(&mut self, name: &str, limits: &Limits) -> Result<(), RuntimeError> {
                self.0.set_limits(name, limits)
            }
        }
        impl Drop for $t {
            /// Instances do not outlive the runtime that started them (a crash of the whole
            /// agent is handled by the stale-group clean-up instead).
            fn drop(&mut self) {
                self.0.stop_all();
            }
        }
    };
}

/// Instances as plain process groups.
pub struct ProcessDriver(Core);

impl ProcessDriver {
    /// A driver whose default control sockets go in `socket_dir` (created if missing).
    pub fn new(socket_dir: impl Into<PathBuf>) -> io::Result<Self> {
        let socket_dir = socket_dir.into();
        std::fs::create_dir_all(&socket_dir)?;
        Ok(Self(Core {
            kind: DriverKind::Process,
            cgroups: None,
            socket_dir,
            table: HashMap::new(),
        }))
    }
}

/// Instances as process groups inside cgroups.
pub struct CgroupDriver(Core);

impl CgroupDriver {
    /// Detect cgroups, remove stale groups under the prefix (returned), and make a driver.
    pub fn new(
        cfg: &CgroupConfig,
        socket_dir: impl Into<PathBuf>,
    ) -> Result<(Self, Vec<String>), RuntimeError> {
        let cg = Cgroups::detect(cfg)?;
        let stale = cg.cleanup_stale()?;
        let socket_dir = socket_dir.into();
        std::fs::create_dir_all(&socket_dir).map_err(|source| RuntimeError::Spawn {
            name: socket_dir.display().to_string(),
            source,
        })?;
        let kind = if cg.version() == 2 {
            DriverKind::CgroupV2
        } else {
            DriverKind::CgroupV1
        };
        Ok((
            Self(Core {
                kind,
                cgroups: Some(cg),
                socket_dir,
                table: HashMap::new(),
            }),
            stale,
        ))
    }

    /// The cgroups in use.
    pub fn cgroups(&self) -> &Cgroups {
        self.0.cgroups.as_ref().expect("cgroup driver has cgroups")
    }
}

delegate_runtime!(ProcessDriver);
delegate_runtime!(CgroupDriver);

/// The cgroup driver when this machine allows it, else the process driver (the reason is
/// logged and returned).
pub fn auto_runtime(
    cfg: &CgroupConfig,
    socket_dir: &Path,
) -> io::Result<(Box<dyn InstanceRuntime>, Option<String>)> {
    match CgroupDriver::new(cfg, socket_dir) {
        Ok((d, _stale)) => Ok((Box::new(d), None)),
        Err(e) => {
            let why = e.to_string();
            tracing::info!(reason = %why, "cgroups unavailable, using the process driver");
            Ok((Box::new(ProcessDriver::new(socket_dir)?), Some(why)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str) -> InstanceSpec {
        InstanceSpec {
            name: name.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("vod-1.a_b"));
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut rt = ProcessDriver::new(dir.path()).unwrap();
        assert!(matches!(
            rt.start(&sh("../x", "true")),
            Err(RuntimeError::InvalidSpec(_))
        ));
    }

    #[test]
    fn process_driver_sets_env_and_reports_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut rt = ProcessDriver::new(dir.path()).unwrap();
        let out = dir.path().join("env.txt");
        let script = format!("echo \"$SMART_CONTROL_SOCKET\" > {}; exit 3", out.display());
        rt.start(&sh("envtest", &script)).unwrap();
        let st = rt.wait("envtest", Duration::from_secs(5)).unwrap();
        assert_eq!(
            st,
            InstanceStatus::Exited(ExitInfo {
                code: Some(3),
                signal: None,
                oom_killed: false
            })
        );
        let got = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            got.trim(),
            dir.path().join("envtest.sock").to_str().unwrap()
        );
        rt.stop("envtest", Duration::from_millis(100)).unwrap();
        assert!(rt.probes().is_empty());
    }

    #[test]
    fn stop_escalates_to_sigkill_and_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut rt = ProcessDriver::new(dir.path()).unwrap();
        // The shell ignores TERM and leaves a grandchild in its group.
        let p = rt
            .start(&sh(
                "stubborn",
                "trap '' TERM; sleep 30 & while :; do sleep 1; done",
            ))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        let exit = rt.stop("stubborn", Duration::from_millis(300)).unwrap();
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(!group_alive(p.pgid), "no process of the group survives");
    }

    #[test]
    fn process_driver_refuses_cpu_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut rt = ProcessDriver::new(dir.path()).unwrap();
        let mut s = sh("x", "true");
        s.limits.cpu_cores = Some(0.5);
        assert!(matches!(
            rt.start(&s),
            Err(RuntimeError::Unsupported { .. })
        ));
    }
}
