//! # smart-testkit
//!
//! Support shared by SMART's test suites (never linked into the `smart` binary): what more
//! than one suite needs, written once.
//!
//! ## Layout
//! - [`cpu_lock`]: serialises CPU measurements across test processes.
//! - [`require`]: the one rule for a test whose tool or kernel feature is missing: skip
//!   visibly, or fail under `SMART_REQUIRE_TOOLS=1` (CI).
//! - [`p50`], [`p99`]: the figures the suites print, from [`smart_proto::stats`].
//! - `cluster` (feature `cluster`): real `smart node` processes: the cluster spec, status
//!   counters and polling, the HTTP API with a token, the CLI.

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

#[cfg(feature = "cluster")]
pub mod cluster;
pub mod require;

use std::fs::File;
use std::os::fd::AsRawFd;

/// Hold this while measuring CPU: tests that expect a busy loop to get its core must not
/// compete with each other (test binaries and nextest processes run in parallel on a
/// machine that may have only two cores). A file lock works across processes.
pub fn cpu_lock() -> File {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("smart-cpu-tests.lock"))
        .expect("lock file");
    // SAFETY: flock on a file descriptor we own; blocks until the lock is ours.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock: {}", std::io::Error::last_os_error());
    f
}

/// The median of `v` (nearest rank); 0 when empty.
pub fn p50(mut v: Vec<f64>) -> f64 {
    smart_proto::stats::percentile(&mut v, 0.5).unwrap_or(0.0)
}

/// How far a player's media time fell behind wall time, at worst, from its first sample
/// that played: `samples` are (wall s, media s) in order; infinite when none played.
pub fn worst_lag(samples: impl IntoIterator<Item = (f64, f64)>) -> f64 {
    let mut first = None;
    let mut worst: f64 = 0.0;
    for (wall, media) in samples {
        if first.is_none() && media > 0.0 {
            first = Some((wall, media));
        }
        if let Some((w0, m0)) = first {
            worst = worst.max((wall - w0) - (media - m0));
        }
    }
    if first.is_some() {
        worst
    } else {
        f64::INFINITY
    }
}

/// The 99th percentile of `v` (nearest rank); 0 when empty.
pub fn p99(mut v: Vec<f64>) -> f64 {
    smart_proto::stats::percentile(&mut v, 0.99).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn worst_lag_counts_from_the_first_sample_that_played() {
        // Starts at wall 2 s; by wall 5 s media is 1.5 s in: 1.5 s behind; then catches up.
        let s = [(0.0, 0.0), (2.0, 0.1), (3.0, 1.1), (5.0, 1.6), (6.0, 3.1)];
        assert!((super::worst_lag(s) - 1.5).abs() < 1e-9);
        assert!(super::worst_lag([(0.0, 0.0), (1.0, 0.0)]).is_infinite());
    }
}
