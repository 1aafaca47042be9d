//! Sampling cost benchmark: CPU time the sampler spends per tick with N instances, printed
//! as a share of one core at a 1 s interval (goal: <= 1 % with 100 instances).
//!
//! ```text
//! cargo run --release -p smart-instance --example sampling_cost -- \
//!     [--instances 100] [--ticks 20] [--driver process|cgroup|both] [--control]
//! ```
//! `--control` makes every instance answer the workload control API (this binary
//! re-executed as a tiny `usage` server), so each tick also does one socket round trip per
//! instance; without it, instances are `sleep` and the first API try per instance fails fast
//! (no socket) and then backs off.
//!
//! Ticks run back to back (the cost of a tick does not depend on the interval), measured
//! with the thread's CPU clock.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use smart_instance::cgroup::CgroupConfig;
use smart_instance::runtime::{
    CONTROL_SOCKET_ENV, CgroupDriver, InstanceRuntime, InstanceSpec, ProcessDriver,
};
use smart_instance::sample::{NetSource, Sampler, SamplerConfig};

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn serve() {
    let path = std::env::var(CONTROL_SOCKET_ENV).expect("socket env");
    let l = UnixListener::bind(&path).expect("bind");
    let mut n = 0u64;
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            n += 1000;
            let reply = format!(
                "{{\"bytes_sent\":{n},\"bytes_received\":{n},\"clients\":1,\"cache_bytes\":0}}\n"
            );
            if r.get_mut().write_all(reply.as_bytes()).is_err() {
                break;
            }
            line.clear();
        }
    }
}

fn run(rt: &mut dyn InstanceRuntime, label: &str, n: usize, ticks: usize, control: bool) {
    let exe = std::env::current_exe().expect("exe");
    for i in 0..n {
        let command = if control {
            vec![exe.to_string_lossy().into_owned(), "--serve".into()]
        } else {
            vec!["sleep".into(), "1000".into()]
        };
        rt.start(&InstanceSpec {
            name: format!("bench-{i}"),
            command,
            ..Default::default()
        })
        .expect("start instance");
    }
    let probes = rt.probes();
    if control {
        let t = Instant::now();
        while !probes.iter().all(|p| p.control_socket.exists())
            && t.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut s = Sampler::new(SamplerConfig::default());
    let mut pollers = smart_instance::usage::UsagePollers::new(Duration::from_millis(100));
    // Warm-up tick: first rates, first control API connections.
    s.sample(
        &probes,
        &pollers.poll_blocking(&probes, Instant::now()),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let (c0, w0) = (thread_cpu(), Instant::now());
    let mut last = None;
    for _ in 0..ticks {
        last = Some(s.sample(
            &probes,
            &pollers.poll_blocking(&probes, Instant::now()),
            Instant::now(),
        ));
    }
    let cpu = (thread_cpu() - c0) / ticks as u32;
    let wall = w0.elapsed() / ticks as u32;
    let last = last.expect("at least one tick");
    let api = last
        .instances
        .iter()
        .filter(|i| i.net_source == NetSource::ControlApi)
        .count();
    println!(
        "{label:<12} instances={n:<4} ticks={ticks:<3} cpu/tick={:>8.3} ms  wall/tick={:>8.3} ms  \
         => {:.3} % of one core at 1 s interval  (answering control API: {api})",
        cpu.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 100.0,
    );
    for p in probes {
        let _ = rt.stop(&p.name, Duration::from_millis(100));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        serve();
        return;
    }
    let get = |k: &str, d: &str| -> String {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| d.to_string())
    };
    let n: usize = get("--instances", "100").parse().expect("--instances N");
    let ticks: usize = get("--ticks", "20").parse().expect("--ticks N");
    let driver = get("--driver", "both");
    let control = args.iter().any(|a| a == "--control");
    let dir = tempfile::tempdir().expect("tempdir");
    if driver == "process" || driver == "both" {
        let mut rt = ProcessDriver::new(dir.path()).expect("process driver");
        run(&mut rt, "process", n, ticks, control);
    }
    if driver == "cgroup" || driver == "both" {
        let prefix = format!("smart-bench-{}", std::process::id());
        match CgroupDriver::new(&CgroupConfig::new(&prefix), dir.path()) {
            Ok((mut rt, _)) => {
                let label = format!("{:?}", rt.kind());
                run(&mut rt, &label, n, ticks, control);
                let cg = rt.cgroups().clone();
                drop(rt);
                let _ = cg.remove_prefix();
            }
            Err(e) => println!("cgroup driver skipped: {e}"),
        }
    }
}
