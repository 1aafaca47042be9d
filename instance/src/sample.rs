//! Per-interval measurement of instances and of the node (docs/DESIGN.md §1: Agent86 samples every
//! interval, 1 s by default).
//!
//! Sources, per instance:
//! - **CPU** (cores used over the interval): the group's `cpuacct.usage` (v1) or
//!   `cpu.stat usage_usec` (v2) with the cgroup driver; otherwise the sum of
//!   `utime+stime+cutime+cstime` over the members of the instance's process group, from one
//!   pass over `/proc/*/stat` shared by all instances of the tick. A member that leaves the
//!   process group (`setsid`) escapes the process driver's accounting; it cannot escape a
//!   cgroup.
//! - **Memory**: resident (anon + mapped file) and working set (usage minus inactive file
//!   cache) from the group's memory statistics; with the process driver both are the summed
//!   RSS of the group (the page cache it causes is not attributable).
//! - **Network**: from the workload control API (`usage`: cumulative bytes sent/received,
//!   asked by the caller with [`crate::usage::UsagePollers`] and passed in) when the
//!   instance answers it. Otherwise, if the instance lives in its own network
//!   namespace, from `/proc/<pid>/net/dev` of that namespace (non-loopback interfaces).
//!   `/proc/<pid>/net/dev` shows the interfaces of the process's namespace, not its own
//!   traffic, so for an instance in the agent's namespace there is no per-instance OS
//!   figure and the sample says [`NetSource::None`].
//!
//! Node: CPUs online and busy cores (`/proc/stat`), memory total/available
//! (`/proc/meminfo`), traffic of the configured interfaces (`/proc/net/dev`) and the
//! configured NIC bandwidth as network capacity.
//!
//! The sampler is a plain struct fed with [`Probe`]s and an injected `now`; rates are
//! computed from the previous call, so the first sample of an instance has no CPU or
//! network rate.
//!
//! # Layout
//! - [`SamplerConfig`], [`Sampler`]: the state kept between ticks.
//! - [`InstanceSample`], [`NodeSample`], [`NetSource`]: what one tick yields.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procfs::{self, GroupTotals};
use crate::runtime::Probe;
use crate::usage::Usage;

/// Where an instance's network figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetSource {
    /// The workload control API.
    ControlApi,
    /// Its own network namespace's interface counters.
    Netns,
    /// Not measurable this tick.
    None,
}

/// One instance over one interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceSample {
    /// Instance name.
    pub name: String,
    /// Cores used over the interval; `None` on the first sample.
    pub cpu_cores: Option<f64>,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Working set, bytes.
    pub working_set_bytes: u64,
    /// Network throughput (sent + received) over the interval, bits/s.
    pub net_bps: Option<f64>,
    /// Bytes sent over the interval.
    pub net_sent_bytes: Option<u64>,
    /// Bytes received over the interval.
    pub net_received_bytes: Option<u64>,
    /// Source of the network figures.
    pub net_source: NetSource,
    /// Clients served (control API only).
    pub clients: Option<u32>,
    /// The instance answered the control API this tick.
    pub speaks_api: bool,
    /// Cache size (control API only).
    pub cache_bytes: Option<u64>,
    /// False when nothing could be read (the instance is gone).
    pub alive: bool,
}

/// The node and its instances at one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSample {
    /// CPUs online (CPU capacity, cores).
    pub cpus: u32,
    /// Cores busy on the whole node over the interval; `None` on the first tick.
    pub cpu_busy_cores: Option<f64>,
    /// Memory capacity, bytes.
    pub mem_total_bytes: u64,
    /// Memory available, bytes.
    pub mem_available_bytes: u64,
    /// Configured NIC bandwidth (network capacity), bits/s.
    pub nic_capacity_bps: u64,
    /// Traffic of the configured interfaces over the interval, bits/s (rx + tx).
    pub net_bps: Option<f64>,
    /// Per-instance samples, in probe order.
    pub instances: Vec<InstanceSample>,
}

/// Sampler settings.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Configured NIC bandwidth in bits/s (node network capacity).
    pub nic_capacity_bps: u64,
    /// Interfaces counted in the node's traffic; empty = every interface except `lo`.
    pub node_ifaces: Vec<String>,
    /// `/proc` (injectable).
    pub proc_root: PathBuf,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            nic_capacity_bps: 1_000_000_000,
            node_ifaces: Vec::new(),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

#[derive(Debug, Default)]
struct Prev {
    at: Option<Instant>,
    cpu_ns: Option<u64>,
    net: Option<(u64, u64)>,
    netns: Option<bool>,
}

/// Keeps what is needed between ticks.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    prev: HashMap<String, Prev>,
    node_prev: Option<(Instant, u64, u64, Option<u64>)>,
    ticks_per_sec: u64,
    own_netns: Option<PathBuf>,
    buf: String,
}

fn sum_ifaces(text: &str, only: &[String]) -> u64 {
    procfs::parse_net_dev(text)
        .into_iter()
        .filter(|i| {
            if only.is_empty() {
                i.name != "lo"
            } else {
                only.contains(&i.name)
            }
        })
        .fold(0u64, |a, i| {
            a.saturating_add(i.rx_bytes).saturating_add(i.tx_bytes)
        })
}

fn rate(d: f64, dt: Duration) -> f64 {
    if dt.is_zero() {
        0.0
    } else {
        d / dt.as_secs_f64()
    }
}

impl Sampler {
    /// A sampler with no history.
    pub fn new(cfg: SamplerConfig) -> Self {
        let own_netns = std::fs::read_link(cfg.proc_root.join("self/ns/net")).ok();
        Self {
            cfg,
            prev: HashMap::new(),
            node_prev: None,
            ticks_per_sec: procfs::clock_ticks_per_sec(),
            own_netns,
            buf: String::with_capacity(4096),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Measure the node and every probed instance, with the `usage` answers of the
    /// instances that speak the control API (by instance name). History of instances not in
    /// `probes` is dropped.
    pub fn sample(
        &mut self,
        probes: &[Probe],
        usage: &HashMap<String, Usage>,
        now: Instant,
    ) -> NodeSample {
        let live: HashSet<&str> = probes.iter().map(|p| p.name.as_str()).collect();
        self.prev.retain(|k, _| live.contains(k.as_str()));

        // One /proc pass for all process-driver instances.
        let pgids: HashSet<i32> = probes
            .iter()
            .filter(|p| p.group.is_none())
            .map(|p| p.pgid)
            .collect();
        let groups = procfs::scan_process_groups(&self.cfg.proc_root, &pgids);

        let instances = probes
            .iter()
            .map(|p| {
                let u = usage.get(&p.name).cloned();
                self.sample_instance(p, groups.get(&p.pgid).copied(), u, now)
            })
            .collect();
        let mut node = self.sample_node(now);
        node.instances = instances;
        node
    }

    fn sample_instance(
        &mut self,
        p: &Probe,
        g: Option<GroupTotals>,
        usage: Option<Usage>,
        now: Instant,
    ) -> InstanceSample {
        let (cpu_ns, rss, ws, alive) = match &p.group {
            Some(group) => match group.stats(&mut self.buf) {
                Some(s) => (Some(s.cpu_ns), s.rss_bytes, s.working_set_bytes, true),
                None => (None, 0, 0, false),
            },
            None => match g {
                Some(t) => (
                    Some(t.cpu_ticks.saturating_mul(1_000_000_000) / self.ticks_per_sec),
                    t.rss_bytes,
                    t.rss_bytes,
                    true,
                ),
                None => (None, 0, 0, false),
            },
        };

        let usage = if alive { usage } else { None };
        let usage_given = usage.is_some();

        let prev = self.prev.entry(p.name.clone()).or_default();
        let dt = prev.at.map(|t| now.saturating_duration_since(t));
        let cpu_cores = match (prev.cpu_ns, cpu_ns, dt) {
            // A counter that went backwards (members exited unreaped) reads as idle.
            (Some(a), Some(b), Some(dt)) if !dt.is_zero() => {
                Some(b.saturating_sub(a) as f64 / 1e9 / dt.as_secs_f64())
            }
            _ => None,
        };

        // Network: control API first, then a private network namespace.
        let (mut source, mut counters, mut clients, mut cache) =
            (NetSource::None, None, None, None);
        if let Some(u) = usage {
            source = NetSource::ControlApi;
            counters = Some((u.bytes_sent, u.bytes_received));
            clients = Some(u.clients);
            cache = Some(u.cache_bytes);
        } else if alive {
            let proc_root = &self.cfg.proc_root;
            let own = &self.own_netns;
            let in_own_ns = *prev.netns.get_or_insert_with(|| {
                let theirs = std::fs::read_link(proc_root.join(format!("{}/ns/net", p.pgid))).ok();
                theirs.is_none() || theirs == *own
            });
            if !in_own_ns
                && procfs::read_into(
                    &proc_root.join(format!("{}/net/dev", p.pgid)),
                    &mut self.buf,
                )
                .is_ok()
            {
                source = NetSource::Netns;
                let all: Vec<_> = procfs::parse_net_dev(&self.buf)
                    .into_iter()
                    .filter(|i| i.name != "lo")
                    .collect();
                counters = Some((
                    all.iter().fold(0u64, |a, i| a.saturating_add(i.tx_bytes)),
                    all.iter().fold(0u64, |a, i| a.saturating_add(i.rx_bytes)),
                ));
            }
        }
        let deltas = match (prev.net, counters, dt) {
            (Some((s0, r0)), Some((s1, r1)), Some(_)) if s1 >= s0 && r1 >= r0 => {
                Some((s1 - s0, r1 - r0))
            }
            _ => None,
        };
        // Counters come from the instance itself: no arithmetic on them may overflow.
        let net_bps = deltas
            .zip(dt)
            .map(|((s, r), dt)| rate((s as f64 + r as f64) * 8.0, dt));

        prev.at = Some(now);
        prev.cpu_ns = cpu_ns;
        prev.net = counters;
        InstanceSample {
            name: p.name.clone(),
            cpu_cores,
            rss_bytes: rss,
            working_set_bytes: ws,
            net_bps,
            net_sent_bytes: deltas.map(|d| d.0),
            net_received_bytes: deltas.map(|d| d.1),
            net_source: if net_bps.is_some() {
                source
            } else {
                NetSource::None
            },
            clients,
            cache_bytes: cache,
            speaks_api: usage_given,
            alive,
        }
    }

    fn sample_node(&mut self, now: Instant) -> NodeSample {
        let root = self.cfg.proc_root.clone();
        let mem = procfs::read_into(&root.join("meminfo"), &mut self.buf)
            .ok()
            .and_then(|()| procfs::parse_meminfo(&self.buf))
            .unwrap_or_default();
        let jiffies = procfs::read_into(&root.join("stat"), &mut self.buf)
            .ok()
            .and_then(|()| procfs::parse_proc_stat_cpu(&self.buf));
        let net = procfs::read_into(&root.join("net/dev"), &mut self.buf)
            .ok()
            .map(|()| sum_ifaces(&self.buf, &self.cfg.node_ifaces));
        let cpus = procfs::online_cpus();
        let (mut busy_cores, mut net_bps) = (None, None);
        if let (Some((t0, b0, tot0, n0)), Some((b1, tot1))) = (self.node_prev, jiffies) {
            let dtot = tot1.saturating_sub(tot0);
            if dtot > 0 {
                busy_cores = Some(b1.saturating_sub(b0) as f64 / dtot as f64 * cpus as f64);
            }
            if let (Some(n0), Some(n1)) = (n0, net) {
                net_bps = Some(rate(
                    n1.saturating_sub(n0) as f64 * 8.0,
                    now.saturating_duration_since(t0),
                ));
            }
        }
        if let Some((b, t)) = jiffies {
            self.node_prev = Some((now, b, t, net));
        }
        NodeSample {
            cpus,
            cpu_busy_cores: busy_cores,
            mem_total_bytes: mem.total,
            mem_available_bytes: mem.available,
            nic_capacity_bps: self.cfg.nic_capacity_bps,
            net_bps,
            instances: Vec::new(),
        }
    }
}
