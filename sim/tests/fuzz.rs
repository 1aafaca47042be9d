//! Random scenarios from seeds, in both election modes, every invariant checked after every
//! event: `cargo test -p smart-sim --release --test fuzz -- --nocapture`. `SIM_SEEDS=<n>`
//! sets how many seeds per mode (default 400 in release, about half a minute per mode on a
//! 2-core machine; 16 in a debug build, which runs about thirty times slower),
//! `SIM_FIRST_SEED=<s>` where they start.
//! A failing seed is replayed alone with
//! `SIM_SEED=<seed> SIM_MODE=<available|majority> cargo test -p smart-sim --release --test fuzz replay -- --nocapture`.
//! The figures (seeds per minute, invariants checked) are printed at the end.

// A test target links every dependency of its package; the lint is meant for the library.
#![allow(unused_crate_dependencies)]

use std::collections::BTreeMap;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smart_sim::{Failure, Mode, Op, Options, Outcome, Setup, generate, run};

/// Seeds per mode when `SIM_SEEDS` is not set (a debug build runs about thirty times slower).
const DEFAULT_SEEDS: u64 = if cfg!(debug_assertions) { 16 } else { 400 };
/// Operations per random scenario (plus the start and the final settle).
const LEN: usize = 24;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Available => "available",
        Mode::Majority => "majority",
    }
}

/// The cluster and scenario of `seed`: 3 to 5 nodes, `LEN` random operations.
fn scenario(seed: u64, mode: Mode) -> (Setup, Vec<Op>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nodes = rng.random_range(3..=5);
    let ops = generate(&mut rng, nodes, LEN);
    (Setup { nodes, mode }, ops)
}

fn one(seed: u64, mode: Mode) -> Result<Outcome, Box<Failure>> {
    let (setup, ops) = scenario(seed, mode);
    let opts = Options {
        durable_registry: true,
        replay: format!(
            "SIM_SEED={seed} SIM_MODE={} cargo test -p smart-sim --release --test fuzz replay -- --nocapture",
            mode_name(mode)
        ),
    };
    run(setup, seed, &ops, &opts)
}

fn fuzz(mode: Mode) {
    let n = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("SIM_FIRST_SEED").unwrap_or(1);
    let t0 = Instant::now();
    let mut checks: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut events, mut simulated) = (0u64, 0f64);
    let mut failures = Vec::new();
    for seed in first..first + n {
        match one(seed, mode) {
            Ok(o) => {
                for (k, v) in o.checks {
                    *checks.entry(k).or_default() += v;
                }
                events += o.stats.events;
                simulated += o.simulated.as_secs_f64();
            }
            Err(f) => {
                println!(
                    "seed {seed} FAILED: {}\n  replay: {}",
                    f.violation, f.replay
                );
                failures.push(f);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "fuzz {}: {n} seeds in {secs:.1} s = {:.0} seeds/minute; {events} events, {simulated:.0} s simulated ({:.0}x real time)",
        mode_name(mode),
        n as f64 * 60.0 / secs,
        simulated / secs
    );
    println!("invariants checked (passing seeds):");
    for (k, v) in &checks {
        println!("  {k}: {v}");
    }
    if let Some(f) = failures.first() {
        panic!(
            "{} of {n} seeds violated an invariant; the first:\n{f}",
            failures.len()
        );
    }
}

#[test]
fn fuzz_available() {
    fuzz(Mode::Available);
}

#[test]
fn fuzz_majority() {
    fuzz(Mode::Majority);
}

/// Replays one seed (`SIM_SEED`, `SIM_MODE`) and prints its whole scenario and outcome.
/// Without `SIM_SEED`: the simulator is deterministic — a few seeds of each mode, each run
/// twice, end the same way (same failure and log, or same counts).
#[test]
fn replay() {
    let Some(seed) = env_u64("SIM_SEED") else {
        for mode in [Mode::Available, Mode::Majority] {
            for seed in 1..=4 {
                let fingerprint = |r: Result<Outcome, Box<Failure>>| match r {
                    Ok(o) => format!("{:?} {:?} {:?}", o.simulated, o.stats, o.checks),
                    Err(f) => format!("{} {:?}", f.violation, f.log),
                };
                assert_eq!(
                    fingerprint(one(seed, mode)),
                    fingerprint(one(seed, mode)),
                    "seed {seed} in {mode:?} mode is not deterministic"
                );
            }
        }
        return;
    };
    let mode = match std::env::var("SIM_MODE").as_deref() {
        Ok("majority") => Mode::Majority,
        _ => Mode::Available,
    };
    let (setup, ops) = scenario(seed, mode);
    println!("seed {seed}, {setup:?}:");
    for (i, op) in ops.iter().enumerate() {
        println!("  {i:>3}. {op}");
    }
    match one(seed, mode) {
        Ok(o) => println!("passed: {:?} simulated, {:?}", o.simulated, o.checks),
        Err(f) => panic!("{f}"),
    }
}
