//! Hosts as Linux network namespaces on one bridge, for `smart demo --netns`: each host has
//! its own address (`10.77.0.<i>`), multicast crosses the bridge, and a host is cut off by
//! taking its bridge port down.
//!
//! One "switch" namespace holds the bridge, so nothing is created in the root namespace and
//! two runs never see each other. Names are `<base><pid>` plus `sw`, `h<i>` or a client's
//! name; leftovers of a run whose process is gone are removed first, and dropping
//! [`Hosts`] kills every process in its namespaces and removes them (also after a panic
//! or Ctrl-C, which the demo turns into an early return).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::ClusterError;

/// The hosts' subnet, `/24`.
pub const SUBNET: [u8; 3] = [10, 77, 0];

/// Runs a command and returns its stdout, or why it failed.
pub fn sh(args: &[&str]) -> Result<String, ClusterError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| ClusterError::Io {
            what: args.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Err(ClusterError::Io {
            what: args.join(" "),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why namespaces cannot be made here (not root, no `ip`), or `None`.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("network namespaces need root".into());
    }
    if sh(&["ip", "-V"]).is_err() {
        return Some("iproute2 (`ip`) is not installed (scripts/setup.sh)".into());
    }
    None
}

/// Namespaces on a bridge: hosts `1..=count` and named extra hosts (a client, an origin).
#[derive(Debug)]
pub struct Hosts {
    prefix: String,
    count: usize,
    extras: Vec<(String, Ipv4Addr)>,
}

impl Hosts {
    /// Creates `count` hosts (`10.77.0.1` ...) and the `extras` (name, last octet), every
    /// one with `lo` up and `eth0` on the bridge.
    pub fn create(base: &str, count: usize, extras: &[(&str, u8)]) -> Result<Hosts, ClusterError> {
        if let Some(why) = unavailable() {
            return Err(ClusterError::Io {
                what: "making network namespaces".into(),
                source: std::io::Error::other(why),
            });
        }
        sweep(base);
        let hosts = Hosts {
            prefix: format!("{base}{}", std::process::id()),
            count,
            extras: extras
                .iter()
                .map(|(n, o)| (n.to_string(), ip(*o)))
                .collect(),
        };
        // From here on, a failure drops `hosts`, which removes what was made.
        let sw = hosts.switch();
        sh(&["ip", "netns", "add", &sw])?;
        let in_sw = |cmd: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &sw];
            v.extend_from_slice(cmd);
            sh(&v)
        };
        in_sw(&["ip", "link", "add", "br0", "type", "bridge"])?;
        // No IGMP querier on this bridge: flood multicast instead of snooping.
        in_sw(&[
            "ip",
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        in_sw(&["ip", "link", "set", "br0", "up"])?;
        let all: Vec<(String, Ipv4Addr, String)> = (1..=count)
            .map(|i| (hosts.ns(i), ip(i as u8), format!("p{i}")))
            .chain(
                hosts
                    .extras
                    .iter()
                    .map(|(n, a)| (hosts.named(n), *a, format!("p{n}"))),
            )
            .collect();
        for (ns, addr, port) in &all {
            sh(&["ip", "netns", "add", ns])?;
            sh(&[
                "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
                "netns", &sw,
            ])?;
            in_sw(&["ip", "link", "set", port, "master", "br0"])?;
            in_sw(&["ip", "link", "set", port, "up"])?;
            let cidr = format!("{addr}/24");
            sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    /// Host `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    /// An extra host's namespace.
    pub fn named(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Host `i`'s address.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        ip(i as u8)
    }

    /// The prefix every name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn switch(&self) -> String {
        format!("{}sw", self.prefix)
    }

    /// Cuts host `i` off the bridge (`false`) or plugs it back (`true`).
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), ClusterError> {
        let port = format!("p{i}");
        let state = if up { "up" } else { "down" };
        sh(&["ip", "-n", &self.switch(), "link", "set", &port, state]).map(|_| ())
    }

    /// Whether host `i`'s `eth0` holds `addr` (a shared address keepalived moves).
    pub fn holds(&self, i: usize, addr: Ipv4Addr) -> bool {
        sh(&["ip", "-n", &self.ns(i), "-4", "addr", "show", "dev", "eth0"])
            .is_ok_and(|a| a.contains(&format!("{addr}/")))
    }

    /// Moves the calling thread into `ns`: the sockets it makes from now on, and the
    /// threads it starts, belong there.
    pub fn enter(ns: &str) -> Result<(), ClusterError> {
        let path = format!("/var/run/netns/{ns}");
        let f = std::fs::File::open(&path).map_err(|source| ClusterError::Io {
            what: format!("opening {path}"),
            source,
        })?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| ClusterError::Io {
            what: format!("entering {ns}"),
            source: std::io::Error::from_raw_os_error(e as i32),
        })
    }

    fn spaces(&self) -> Vec<String> {
        (1..=self.count)
            .map(|i| self.ns(i))
            .chain(self.extras.iter().map(|(n, _)| self.named(n)))
            .collect()
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], last)
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let spaces = self.spaces();
        for ns in &spaces {
            kill_namespace(ns);
        }
        for ns in spaces.iter().chain([&self.switch()]) {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// Removes namespaces named `<base><pid>...` whose process no longer exists.
fn sweep(base: &str) {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(base) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let alive = digits
            .parse::<u32>()
            .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !digits.is_empty() && !alive {
            kill_namespace(name);
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}

/// Kills every process in namespace `ns` but this one, and waits (5 s at most) until none
/// is left: a killed node's instances outlive it, and deleting a namespace's name does not
/// end what runs in it.
pub fn kill_namespace(ns: &str) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<i32> = sh(&["ip", "netns", "pids", ns])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p > 1 && p != me)
            .collect();
        if pids.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("netns {ns}: processes {pids:?} survived SIGKILL for 5 s");
            return;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
