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

/// The 99th percentile of `v` (nearest rank); 0 when empty.
pub fn p99(mut v: Vec<f64>) -> f64 {
    smart_proto::stats::percentile(&mut v, 0.99).unwrap_or(0.0)
}
