//! Readers for the Linux `/proc` files the sampler and the health checks use.
//!
//! Parsing is split from reading: every `parse_*` function takes the file's text and returns
//! `None` (or skips a line) on anything malformed, so a process that exits mid-read or a
//! kernel with a different format gives a missing sample, never a panic.
//!
//! # Layout
//! - [`parse_stat`]: one line of `/proc/<pid>/stat` (CPU ticks, process group, resident pages).
//! - [`scan_process_groups`]: one pass over `/proc/*/stat` summing CPU and RSS per process
//!   group; the process driver's per-instance accounting.
//! - [`parse_meminfo`], [`parse_net_dev`], [`parse_proc_stat_cpu`]: node totals.
//! - [`clock_ticks_per_sec`], [`page_size`], [`online_cpus`]: constants of the machine.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The fields of `/proc/<pid>/stat` that SMART uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: i32,
    /// Process group id (field 5).
    pub pgrp: i32,
    /// User time in clock ticks (field 14).
    pub utime: u64,
    /// System time in clock ticks (field 15).
    pub stime: u64,
    /// User time of reaped children in clock ticks (field 16).
    pub cutime: u64,
    /// System time of reaped children in clock ticks (field 17).
    pub cstime: u64,
    /// Resident set size in pages (field 24).
    pub rss_pages: u64,
}

impl ProcStat {
    /// CPU ticks of the process and of the children it has reaped. Summing this over the
    /// members of a group counts an exited member once: in its reaping parent's `c*time`.
    pub fn total_ticks(&self) -> u64 {
        self.utime
            .saturating_add(self.stime)
            .saturating_add(self.cutime)
            .saturating_add(self.cstime)
    }
}

/// Parse one `/proc/<pid>/stat` line. The command name (field 2) may contain spaces and
/// parentheses, so the fixed fields are read after the LAST `)`.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    if close < open {
        return None;
    }
    let pid: i32 = line[..open].trim().parse().ok()?;
    // Fields from 3 (state) on; index 0 here is field 3.
    let rest: Vec<&str> = line[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Option<&str> { rest.get(n - 3).copied() };
    Some(ProcStat {
        pid,
        pgrp: field(5)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        cutime: field(16)?.parse::<i64>().ok()?.max(0) as u64,
        cstime: field(17)?.parse::<i64>().ok()?.max(0) as u64,
        rss_pages: field(24)?.parse::<i64>().ok()?.max(0) as u64,
    })
}

/// What one pass over `/proc` found for one process group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupTotals {
    /// Sum of [`ProcStat::total_ticks`] over the members.
    pub cpu_ticks: u64,
    /// Sum of resident pages over the members, in bytes.
    pub rss_bytes: u64,
    /// Number of live members.
    pub processes: u32,
}

/// Read a small file into `buf` (cleared first). Reusing one buffer keeps the sampler free
/// of per-file allocations.
pub fn read_into(path: &Path, buf: &mut String) -> std::io::Result<()> {
    buf.clear();
    File::open(path)?.read_to_string(buf)?;
    Ok(())
}

/// One pass over `/proc/*/stat`, summing CPU and RSS for every process whose group is in
/// `pgids`. Processes that vanish between listing and reading are skipped. Cost: one small
/// read per process on the machine, shared by all instances of a sampling tick.
pub fn scan_process_groups(proc_root: &Path, pgids: &HashSet<i32>) -> HashMap<i32, GroupTotals> {
    let mut out: HashMap<i32, GroupTotals> = HashMap::with_capacity(pgids.len());
    if pgids.is_empty() {
        return out;
    }
    let page = page_size();
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return out;
    };
    let mut buf = String::with_capacity(512);
    let mut path = proc_root.to_path_buf();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        path.push(name);
        path.push("stat");
        let ok = read_into(&path, &mut buf).is_ok();
        path.pop();
        path.pop();
        if !ok {
            continue;
        }
        if let Some(st) = parse_stat(&buf)
            && pgids.contains(&st.pgrp)
        {
            let t = out.entry(st.pgrp).or_default();
            t.cpu_ticks = t.cpu_ticks.saturating_add(st.total_ticks());
            t.rss_bytes = t
                .rss_bytes
                .saturating_add(st.rss_pages.saturating_mul(page));
            t.processes += 1;
        }
    }
    out
}

/// Node memory from `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable` (the kernel's estimate of memory usable without swapping).
    pub available: u64,
}

/// Parse `/proc/meminfo` (values are in kB).
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let key = it.next();
        let val = it.next().and_then(|v| v.parse::<u64>().ok());
        match (key, val) {
            (Some("MemTotal:"), Some(v)) => total = Some(v.saturating_mul(1024)),
            (Some("MemAvailable:"), Some(v)) => available = Some(v.saturating_mul(1024)),
            _ => {}
        }
    }
    Some(MemInfo {
        total: total?,
        available: available?,
    })
}

/// Byte counters of one network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Parse `/proc/net/dev` (or `/proc/<pid>/net/dev`, which shows the interfaces of that
/// process's network namespace, not per-process traffic).
pub fn parse_net_dev(text: &str) -> Vec<IfaceCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<u64> = rest
                .split_ascii_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            if f.len() < 16 {
                return None;
            }
            Some(IfaceCounters {
                name: name.trim().to_string(),
                rx_bytes: f[0],
                tx_bytes: f[8],
            })
        })
        .collect()
}

/// Busy and total jiffies of the whole node from the first line of `/proc/stat`.
pub fn parse_proc_stat_cpu(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().next()?;
    let mut it = line.split_ascii_whitespace();
    if it.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = it.map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already inside user/nice, so the total is the first eight fields.
    let total = v.iter().take(8).fold(0u64, |a, b| a.saturating_add(*b));
    let idle = v[3].saturating_add(v.get(4).copied().unwrap_or(0));
    Some((total - idle.min(total), total))
}

/// Clock ticks per second (`_SC_CLK_TCK`), the unit of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

/// Page size in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
}

/// Online CPUs of the node (its CPU capacity in cores).
pub fn online_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if v > 0 { v as u32 } else { 1 }
}

/// `some avg10=` of a PSI file.
pub fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_ascii_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_name() {
        let line = "4242 (my (odd) name) S 1 4240 4240 0 -1 4194560 100 0 0 0 \
                    250 50 7 3 20 0 1 0 12345 1000000 300 18446744073709551615";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.pid, 4242);
        assert_eq!(st.pgrp, 4240);
        assert_eq!((st.utime, st.stime, st.cutime, st.cstime), (250, 50, 7, 3));
        assert_eq!(st.total_ticks(), 310);
        assert_eq!(st.rss_pages, 300);
    }

    #[test]
    fn stat_malformed_is_none() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x) S 1"), None);
        assert_eq!(parse_stat(") 12 (x"), None);
        assert_eq!(parse_stat("abc (x) S 1 2 3"), None);
    }

    #[test]
    fn own_process_is_found_in_its_group() {
        let me = parse_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        let got = scan_process_groups(Path::new("/proc"), &HashSet::from([me.pgrp]));
        let t = got.get(&me.pgrp).expect("own group present");
        assert!(t.processes >= 1);
        assert!(t.rss_bytes > 0);
    }

    #[test]
    fn meminfo_and_net_dev() {
        let m =
            parse_meminfo("MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:   600 kB\n").unwrap();
        assert_eq!(
            m,
            MemInfo {
                total: 1_024_000,
                available: 614_400
            }
        );
        assert_eq!(parse_meminfo("MemTotal: x kB\n"), None);
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets\n\
                   lo: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n\
                   eth0: bad\n";
        let v = parse_net_dev(dev);
        assert_eq!(
            v,
            vec![IfaceCounters {
                name: "lo".into(),
                rx_bytes: 100,
                tx_bytes: 300
            }]
        );
    }

    #[test]
    fn huge_numbers_saturate() {
        let m = u64::MAX;
        let line = format!("cpu {m} {m} {m} {m} {m} {m} {m} {m}");
        assert_eq!(parse_proc_stat_cpu(&line), Some((0, m)));
        let mi = parse_meminfo(&format!("MemTotal: {m} kB\nMemAvailable: 1 kB\n")).unwrap();
        assert_eq!(mi.total, m);
    }

    proptest::proptest! {
        /// Whatever the kernel (or a hostile file) gives, parsing never panics.
        #[test]
        fn parsers_never_panic(text in "\\PC{0,300}", noisy in "[0-9 ()a-z:\n-]{0,300}") {
            for t in [&text, &noisy] {
                let _ = parse_stat(t);
                let _ = parse_meminfo(t);
                let _ = parse_net_dev(t);
                let _ = parse_proc_stat_cpu(t);
                let _ = crate::cgroup::parse_mountinfo(t);
                let _ = crate::cgroup::parse_self_cgroup(t);
                let _ = crate::cgroup::parse_memory_stat(t);
                let _ = parse_psi_some_avg10(t);
            }
        }
    }

    #[test]
    fn proc_stat_cpu_busy_and_total() {
        let (busy, total) = parse_proc_stat_cpu("cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 1\n").unwrap();
        assert_eq!((busy, total), (15, 100));
        assert_eq!(parse_proc_stat_cpu("intr 1 2"), None);
    }
}
