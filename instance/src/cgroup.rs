//! Linux control groups: detection (v2 or v1), one group per instance, limits, statistics,
//! and clean-up of groups left behind by a crashed agent.
//!
//! Detection happens at run time from `/proc/self/mountinfo`: cgroup v2 is used when a
//! `cgroup2` mount lists both `cpu` and `memory` in its `cgroup.controllers`; otherwise the v1
//! hierarchies that carry `cpu`, `cpuacct` and `memory` are used (separately mounted or
//! co-mounted, both work). Instance groups live at `<base>/<prefix>/<instance>` where the
//! prefix is configurable (e.g. `smart/node-7`) and the base is either the controller's
//! mount point or, by default on v1, the agent's own group in that hierarchy: an agent
//! started inside a container or a systemd slice then keeps its instances inside it
//! (this matters on machines where the agent itself runs under a memory limit). v2 nests at
//! the mount root by default, because v2 forbids enabling controllers for children of a
//! group that holds processes (the agent).
//!
//! # Layout
//! - [`CgroupConfig`], [`Placement`]: where groups go.
//! - [`Cgroups`]: the detected hierarchy with the prefix applied; creates [`Group`]s and
//!   removes stale ones ([`Cgroups::cleanup_stale`]).
//! - [`Group`]: one instance's directories; limits, membership, kill, stats, removal.
//! - [`parse_mountinfo`], [`parse_self_cgroup`], [`parse_memory_stat`]: pure parsers.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why cgroups cannot be used, or an operation on them failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable hierarchy (not Linux, not mounted, controllers missing, no permission).
    #[error("cgroups not usable: {0}")]
    NotAvailable(String),
    /// A cgroup file operation failed.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        /// What was attempted (`mkdir`, `write`, `rmdir`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Processes would not leave a group that had to be removed.
    #[error("cgroup {path} still has processes after kill")]
    Busy {
        /// The group directory.
        path: PathBuf,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where instance groups are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// v1: under the agent's own group; v2: under the mount root.
    #[default]
    Auto,
    /// Under the agent's own group in each hierarchy.
    NestUnderOwn,
    /// Under the root of each hierarchy (the mount point).
    MountRoot,
}

/// Configuration of the cgroup driver.
#[derive(Debug, Clone)]
pub struct CgroupConfig {
    /// Relative path under which instance groups live, e.g. `smart/node-1`. Everything below
    /// it belongs to this agent: stale groups found there at start-up are removed.
    pub prefix: PathBuf,
    /// Where the prefix is rooted.
    pub placement: Placement,
    /// CPU weight (v1 shares units) of the whole prefix subtree against the rest of the
    /// node, applied to every directory of the prefix. `None` leaves the kernel default
    /// (1024: the subtree then counts as one ordinary task group).
    pub prefix_cpu_shares: Option<u64>,
    /// `/proc/self/mountinfo` (injectable for tests).
    pub mountinfo: PathBuf,
    /// `/proc/self/cgroup` (injectable for tests).
    pub self_cgroup: PathBuf,
}

impl CgroupConfig {
    /// Default files, with the given prefix.
    pub fn new(prefix: impl Into<PathBuf>) -> Self {
        Self {
            prefix: prefix.into(),
            placement: Placement::Auto,
            prefix_cpu_shares: None,
            mountinfo: "/proc/self/mountinfo".into(),
            self_cgroup: "/proc/self/cgroup".into(),
        }
    }
}

/// One cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The path inside the hierarchy that is mounted there (`/` normally).
    pub root: String,
    /// True for `cgroup2`.
    pub v2: bool,
    /// v1 controllers of this hierarchy (from the super options); empty for v2.
    pub controllers: Vec<String>,
}

/// Parse the cgroup mounts of `/proc/self/mountinfo`; other lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let fstype = r[0];
        let v2 = match fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if v2 {
            Vec::new()
        } else {
            r[2].split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro") && !o.contains('=') && !o.starts_with("noprefix")
                })
                .map(str::to_string)
                .collect()
        };
        out.push(CgroupMount {
            mount_point: PathBuf::from(l[4]),
            root: l[3].to_string(),
            v2,
            controllers,
        });
    }
    out
}

/// Parse `/proc/self/cgroup` into (controller -> path); the v2 entry is under key `""`.
pub fn parse_self_cgroup(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if ctrls.is_empty() {
            out.insert(String::new(), path.to_string());
        } else {
            for c in ctrls.split(',') {
                out.insert(c.to_string(), path.to_string());
            }
        }
    }
    out
}

/// The detected hierarchy, with the configured prefix already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Unified hierarchy: one directory per group.
    V2 {
        /// Mount point (controllers are enabled from here down).
        mount: PathBuf,
        /// `<base>/<prefix>`.
        prefix_dir: PathBuf,
    },
    /// Legacy hierarchies: one directory per controller per group.
    V1 {
        /// `<cpu base>/<prefix>` (quota and shares).
        cpu: PathBuf,
        /// `<cpuacct base>/<prefix>` (usage); may equal `cpu` when co-mounted.
        cpuacct: PathBuf,
        /// `<memory base>/<prefix>`.
        memory: PathBuf,
    },
}

/// Join a cgroup path from `/proc/self/cgroup` onto a mount, honouring the mount's root.
fn own_dir(m: &CgroupMount, own: Option<&String>) -> PathBuf {
    let own = own.map(String::as_str).unwrap_or("/");
    let rel = own.strip_prefix(m.root.as_str()).unwrap_or(own);
    m.mount_point.join(rel.trim_start_matches('/'))
}

/// Decide which hierarchy to use from parsed mount and own-group data.
/// `v2_controllers` reads `cgroup.controllers` of a v2 mount (injected for tests).
pub fn choose_hierarchy(
    mounts: &[CgroupMount],
    own: &HashMap<String, String>,
    placement: Placement,
    prefix: &Path,
    v2_controllers: impl Fn(&Path) -> Option<String>,
) -> Result<Hierarchy, CgroupError> {
    for m in mounts.iter().filter(|m| m.v2) {
        let Some(ctrls) = v2_controllers(&m.mount_point) else {
            continue;
        };
        let have: Vec<&str> = ctrls.split_ascii_whitespace().collect();
        if have.contains(&"cpu") && have.contains(&"memory") {
            let base = match placement {
                Placement::NestUnderOwn => own_dir(m, own.get("")),
                Placement::Auto | Placement::MountRoot => m.mount_point.clone(),
            };
            return Ok(Hierarchy::V2 {
                mount: m.mount_point.clone(),
                prefix_dir: base.join(prefix),
            });
        }
    }
    let find = |ctrl: &str| {
        mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == ctrl))
    };
    let (Some(cpu), Some(acct), Some(mem)) = (find("cpu"), find("cpuacct"), find("memory")) else {
        return Err(CgroupError::NotAvailable(
            "neither cgroup v2 with cpu+memory nor v1 cpu, cpuacct and memory are mounted".into(),
        ));
    };
    let base = |m: &CgroupMount, ctrl: &str| match placement {
        Placement::Auto | Placement::NestUnderOwn => own_dir(m, own.get(ctrl)),
        Placement::MountRoot => m.mount_point.clone(),
    };
    Ok(Hierarchy::V1 {
        cpu: base(cpu, "cpu").join(prefix),
        cpuacct: base(acct, "cpuacct").join(prefix),
        memory: base(mem, "memory").join(prefix),
    })
}

/// Resource limits applied to a group.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CgroupLimits {
    /// CPU quota in cores (e.g. 0.5 = half of one core per period).
    pub cpu_cores: Option<f64>,
    /// Relative CPU weight in v1 `cpu.shares` units (1024 = default); mapped to v2 weight.
    pub cpu_shares: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
}

/// CFS period used for quotas (100 ms, the kernel default).
const CFS_PERIOD_US: u64 = 100_000;

/// Map v1 shares (2..=262144) to v2 weight (1..=10000) linearly, as container runtimes do.
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9_999) / 262_142
}

/// The usable hierarchy for this agent.
#[derive(Debug, Clone)]
pub struct Cgroups {
    hierarchy: Hierarchy,
    /// Number of path components of the configured prefix (for [`Cgroups::remove_prefix`]).
    prefix_depth: usize,
}

/// Resource statistics of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_ns: u64,
    /// Resident memory (anonymous + mapped file pages), bytes.
    pub rss_bytes: u64,
    /// Working set (usage minus inactive file cache, as container tools report), bytes.
    pub working_set_bytes: u64,
}

/// Values of interest from a `memory.stat` file (v1 `total_*` or v2 names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStat {
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub anon: u64,
    /// Mapped file pages (v1 `total_mapped_file`, v2 `file_mapped`).
    pub mapped_file: u64,
    /// Inactive file cache (v1 `total_inactive_file`, v2 `inactive_file`).
    pub inactive_file: u64,
}

/// Parse `memory.stat` of either version.
pub fn parse_memory_stat(text: &str) -> MemoryStat {
    let mut s = MemoryStat::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        match k {
            "total_rss" | "anon" => s.anon = v,
            "total_mapped_file" | "file_mapped" => s.mapped_file = v,
            "total_inactive_file" | "inactive_file" => s.inactive_file = v,
            _ => {}
        }
    }
    s
}

impl Cgroups {
    /// Detect the hierarchy on this machine and check that we may create groups in it.
    pub fn detect(cfg: &CgroupConfig) -> Result<Self, CgroupError> {
        let mountinfo = fs::read_to_string(&cfg.mountinfo)
            .map_err(|e| CgroupError::NotAvailable(format!("{}: {e}", cfg.mountinfo.display())))?;
        let own = fs::read_to_string(&cfg.self_cgroup).unwrap_or_default();
        let hierarchy = choose_hierarchy(
            &parse_mountinfo(&mountinfo),
            &parse_self_cgroup(&own),
            cfg.placement,
            &cfg.prefix,
            |mp| fs::read_to_string(mp.join("cgroup.controllers")).ok(),
        )?;
        let me = Self {
            hierarchy,
            prefix_depth: cfg.prefix.components().count(),
        };
        me.ensure_prefix().map_err(|e| match e {
            CgroupError::NotAvailable(_) => e,
            e => CgroupError::NotAvailable(format!("cannot create the group prefix: {e}")),
        })?;
        if let Some(shares) = cfg.prefix_cpu_shares {
            me.set_prefix_shares(shares, me.prefix_depth).map_err(|e| {
                CgroupError::NotAvailable(format!("cannot set the CPU weight: {e}"))
            })?;
        }
        Ok(me)
    }

    /// Set the CPU weight of the prefix directory and of its `depth - 1` parents.
    fn set_prefix_shares(&self, shares: u64, depth: usize) -> Result<(), CgroupError> {
        let (dir, file, value) = match &self.hierarchy {
            Hierarchy::V1 { cpu, .. } => (cpu, "cpu.shares", shares.clamp(2, 262_144)),
            Hierarchy::V2 { prefix_dir, .. } => {
                (prefix_dir, "cpu.weight", shares_to_weight(shares))
            }
        };
        let mut d = dir.as_path();
        for _ in 0..depth.max(1) {
            let p = d.join(file);
            fs::write(&p, value.to_string()).map_err(io_err("write", &p))?;
            match d.parent() {
                Some(up) => d = up,
                None => break,
            }
        }
        Ok(())
    }

    /// Use an explicitly given hierarchy (tests, or an operator override).
    pub fn with_hierarchy(hierarchy: Hierarchy) -> Self {
        Self {
            hierarchy,
            prefix_depth: 1,
        }
    }

    /// The hierarchy in use.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// 1 or 2.
    pub fn version(&self) -> u8 {
        match self.hierarchy {
            Hierarchy::V1 { .. } => 1,
            Hierarchy::V2 { .. } => 2,
        }
    }

    fn prefix_dirs(&self) -> Vec<PathBuf> {
        match &self.hierarchy {
            Hierarchy::V2 { prefix_dir, .. } => vec![prefix_dir.clone()],
            Hierarchy::V1 {
                cpu,
                cpuacct,
                memory,
            } => {
                let mut v = vec![cpu.clone(), cpuacct.clone(), memory.clone()];
                v.dedup();
                v
            }
        }
    }

    fn ensure_prefix(&self) -> Result<(), CgroupError> {
        for d in self.prefix_dirs() {
            fs::create_dir_all(&d).map_err(io_err("mkdir", &d))?;
        }
        if let Hierarchy::V2 { mount, prefix_dir } = &self.hierarchy {
            // Enable cpu and memory for children on every level from the mount down to the
            // prefix; each write may fail on a level that already has them or holds
            // processes, which the later mkdir+limit writes will then report precisely.
            let mut dir = mount.clone();
            let rel = prefix_dir.strip_prefix(mount).unwrap_or(Path::new(""));
            let mut levels = vec![dir.clone()];
            for c in rel.components() {
                dir.push(c);
                levels.push(dir.clone());
            }
            for l in levels {
                let _ = fs::write(l.join("cgroup.subtree_control"), "+cpu +memory");
            }
            // Writes fail, for instance, on a level that holds processes (a container's
            // namespace root): then children get no cpu/memory files and every limit write
            // would fail later. Refuse now, with the reason.
            let enabled =
                fs::read_to_string(prefix_dir.join("cgroup.subtree_control")).unwrap_or_default();
            let have: Vec<&str> = enabled.split_ascii_whitespace().collect();
            if !(have.contains(&"cpu") && have.contains(&"memory")) {
                return Err(CgroupError::NotAvailable(format!(
                    "cpu and memory controllers cannot be enabled under {} (an ancestor \
                     holds processes or does not delegate them)",
                    prefix_dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Create (or reuse) the group of instance `name` and apply `limits`.
    pub fn create(&self, name: &str, limits: &CgroupLimits) -> Result<Group, CgroupError> {
        let group = self.group(name);
        for d in group.dirs() {
            fs::create_dir_all(d).map_err(io_err("mkdir", d))?;
        }
        group.apply_limits(limits)?;
        Ok(group)
    }

    /// The group of instance `name` (not created).
    pub fn group(&self, name: &str) -> Group {
        match &self.hierarchy {
            Hierarchy::V2 { prefix_dir, .. } => Group {
                v2: true,
                cpu: prefix_dir.join(name),
                cpuacct: prefix_dir.join(name),
                memory: prefix_dir.join(name),
            },
            Hierarchy::V1 {
                cpu,
                cpuacct,
                memory,
            } => Group {
                v2: false,
                cpu: cpu.join(name),
                cpuacct: cpuacct.join(name),
                memory: memory.join(name),
            },
        }
    }

    /// Remove the (empty) prefix directories, e.g. on a clean shutdown, and those of its
    /// parents (inside the prefix) that are left empty. Fails with an I/O error while
    /// instance groups still exist below the prefix.
    pub fn remove_prefix(&self) -> Result<(), CgroupError> {
        for d in self.prefix_dirs() {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("rmdir", &d)(e)),
            }
            // Parents may be shared with other agents' prefixes: best effort only.
            let mut p = d.as_path();
            for _ in 1..self.prefix_depth {
                match p.parent() {
                    Some(up) if fs::remove_dir(up).is_ok() => p = up,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// Names of the groups that exist under the prefix (in any controller).
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for d in self.prefix_dirs() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false)
                    && let Some(n) = e.file_name().to_str()
                    && !names.iter().any(|x| x == n)
                {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        names
    }

    /// Remove every group under the prefix: kill their processes and delete the
    /// directories. Called when the agent starts, before it starts anything, so that groups
    /// and processes of a previous agent that crashed do not linger. Returns the names
    /// removed.
    pub fn cleanup_stale(&self) -> Result<Vec<String>, CgroupError> {
        let names = self.list();
        for n in &names {
            tracing::warn!(group = %n, "removing stale instance cgroup left by a previous agent");
            self.group(n).destroy(Duration::from_secs(2))?;
        }
        Ok(names)
    }
}

/// The directories of one instance's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    v2: bool,
    cpu: PathBuf,
    cpuacct: PathBuf,
    memory: PathBuf,
}

impl Group {
    /// The distinct directories of this group (one on v2, up to three on v1).
    pub fn dirs(&self) -> Vec<&PathBuf> {
        let mut v = vec![&self.cpu, &self.cpuacct, &self.memory];
        v.dedup();
        v
    }

    /// True on cgroup v2.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// `cgroup.procs` files a new process must be written into (one per directory).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn write(&self, dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
        let p = dir.join(file);
        fs::write(&p, value).map_err(io_err("write", &p))
    }

    /// Apply CPU quota, weight and memory limit; unset values reset to "no limit".
    pub fn apply_limits(&self, l: &CgroupLimits) -> Result<(), CgroupError> {
        let quota = l
            .cpu_cores
            .filter(|c| c.is_finite() && *c > 0.0)
            .map(|c| ((c * CFS_PERIOD_US as f64).round() as u64).max(1_000));
        if self.v2 {
            let max = match quota {
                Some(q) => format!("{q} {CFS_PERIOD_US}"),
                None => format!("max {CFS_PERIOD_US}"),
            };
            self.write(&self.cpu, "cpu.max", &max)?;
            let w = shares_to_weight(l.cpu_shares.unwrap_or(1024));
            self.write(&self.cpu, "cpu.weight", &w.to_string())?;
            let mem = l
                .memory_bytes
                .map_or_else(|| "max".to_string(), |b| b.to_string());
            self.write(&self.memory, "memory.max", &mem)?;
        } else {
            self.write(&self.cpu, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
            let q = quota.map_or_else(|| "-1".to_string(), |q| q.to_string());
            self.write(&self.cpu, "cpu.cfs_quota_us", &q)?;
            let s = l.cpu_shares.unwrap_or(1024).clamp(2, 262_144);
            self.write(&self.cpu, "cpu.shares", &s.to_string())?;
            let mem = l
                .memory_bytes
                .map_or_else(|| "-1".to_string(), |b| b.to_string());
            self.write(&self.memory, "memory.limit_in_bytes", &mem)?;
        }
        Ok(())
    }

    /// Process ids in the group (union over directories).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for f in self.procs_files() {
            if let Ok(t) = fs::read_to_string(&f) {
                pids.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Send `signal` to every process in the group.
    pub fn signal_all(&self, signal: i32) {
        for pid in self.pids() {
            // SAFETY: kill has no memory preconditions; a vanished pid gives ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Kill everything in the group, wait (bounded) until it is empty, and remove the
    /// directories (children first, in case the instance made sub-groups).
    pub fn destroy(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.signal_all(libc::SIGKILL);
            if self.pids().is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Busy {
                    path: self.cpu.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for d in self.dirs() {
            remove_tree(d)?;
        }
        Ok(())
    }

    /// Read CPU and memory statistics, using `buf` as scratch space.
    pub fn stats(&self, buf: &mut String) -> Option<GroupStats> {
        use crate::procfs::read_into;
        let (cpu_ns, usage) = if self.v2 {
            read_into(&self.cpu.join("cpu.stat"), buf).ok()?;
            let usec: u64 = buf
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())?;
            read_into(&self.memory.join("memory.current"), buf).ok()?;
            (usec * 1000, buf.trim().parse::<u64>().ok()?)
        } else {
            read_into(&self.cpuacct.join("cpuacct.usage"), buf).ok()?;
            let ns: u64 = buf.trim().parse().ok()?;
            read_into(&self.memory.join("memory.usage_in_bytes"), buf).ok()?;
            (ns, buf.trim().parse::<u64>().ok()?)
        };
        read_into(&self.memory.join("memory.stat"), buf).ok()?;
        let ms = parse_memory_stat(buf);
        Some(GroupStats {
            cpu_ns,
            rss_bytes: ms.anon + ms.mapped_file,
            working_set_bytes: usage.saturating_sub(ms.inactive_file),
        })
    }

    /// How many times the kernel's OOM killer fired in this group (0 when unknown).
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(self.memory.join(file))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    // The kernel may still be tearing down the last task; retry briefly on EBUSY.
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if tries < 50 && e.raw_os_error() == Some(libc::EBUSY) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(io_err("rmdir", dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO_V1: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd";

    const SELF_V1: &str = "9:name=systemd:/\n4:memory:/jobs/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn mountinfo_parses_v1_and_v2() {
        let m = parse_mountinfo(MOUNTINFO_V1);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].controllers, vec!["cpu"]);
        assert!(m[3].v2);
        assert_eq!(m[4].controllers, Vec::<String>::new());
    }

    #[test]
    fn v1_chosen_when_unified_lacks_controllers_and_nests_under_own() {
        let h = choose_hierarchy(
            &parse_mountinfo(MOUNTINFO_V1),
            &parse_self_cgroup(SELF_V1),
            Placement::Auto,
            Path::new("smart/n1"),
            |_| Some("hugetlb\n".into()),
        )
        .unwrap();
        assert_eq!(
            h,
            Hierarchy::V1 {
                cpu: "/sys/fs/cgroup/cpu/smart/n1".into(),
                cpuacct: "/sys/fs/cgroup/cpuacct/smart/n1".into(),
                memory: "/sys/fs/cgroup/memory/jobs/abc/smart/n1".into(),
            }
        );
    }

    #[test]
    fn v2_chosen_when_controllers_present() {
        let h = choose_hierarchy(
            &parse_mountinfo(MOUNTINFO_V1),
            &parse_self_cgroup(SELF_V1),
            Placement::Auto,
            Path::new("smart/n1"),
            |_| Some("cpuset cpu io memory pids\n".into()),
        )
        .unwrap();
        assert_eq!(
            h,
            Hierarchy::V2 {
                mount: "/sys/fs/cgroup/unified".into(),
                prefix_dir: "/sys/fs/cgroup/unified/smart/n1".into(),
            }
        );
    }

    #[test]
    fn nothing_usable_is_a_clear_error() {
        let err = choose_hierarchy(
            &parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw"),
            &HashMap::new(),
            Placement::Auto,
            Path::new("smart"),
            |_| None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not usable"), "{err}");
    }

    #[test]
    fn memory_stat_both_versions() {
        let v1 = "cache 5\nrss 1\ntotal_rss 100\ntotal_mapped_file 20\ntotal_inactive_file 7\n";
        assert_eq!(
            parse_memory_stat(v1),
            MemoryStat {
                anon: 100,
                mapped_file: 20,
                inactive_file: 7
            }
        );
        let v2 = "anon 50\nfile 9\nfile_mapped 3\ninactive_file 4\nbogus\n";
        assert_eq!(
            parse_memory_stat(v2),
            MemoryStat {
                anon: 50,
                mapped_file: 3,
                inactive_file: 4
            }
        );
    }

    #[test]
    fn weight_mapping_bounds() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }
}
