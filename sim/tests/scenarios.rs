//! Hand-written scenarios as data, each run in both election modes: services admitted on a
//! quiet cluster; the Control's node killed, isolated longer than the dead time, paused; a
//! service's node dying; a whole-cluster restart. Each is deterministic (a fixed seed); a
//! failure prints its operations, the event log and the command that replays it.
//!
//! A scenario that fails on a real engine bug stays, ignored with what fails and why.

// A test target links every dependency of its package; the lint is meant for the library.
#![allow(unused_crate_dependencies)]

use std::time::Duration;

use smart_sim::{Mode, Op, Options, Setup, Who, run};

const SEED: u64 = 7;

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn admit(service: &str, clients: u32) -> Op {
    Op::Admit {
        service: service.into(),
        clients,
    }
}

/// Three services with viewers on a running cluster, settled.
fn admitted() -> Vec<Op> {
    vec![
        Op::StartAll,
        Op::Wait(s(3)),
        admit("a", 2),
        admit("b", 1),
        admit("c", 0),
        Op::Wait(s(5)),
        Op::Settle,
    ]
}

fn check(
    name: &str,
    mode: Mode,
    nodes: usize,
    ops: Vec<Op>,
    durable_registry: bool,
) -> smart_sim::Outcome {
    let opts = Options {
        durable_registry,
        replay: format!(
            "cargo test -p smart-sim --release --test scenarios {name} -- --include-ignored --nocapture"
        ),
    };
    match run(Setup { nodes, mode }, SEED, &ops, &opts) {
        Ok(o) => {
            println!(
                "{name}: {:?} simulated, {} events, checks {:?}",
                o.simulated, o.stats.events, o.checks
            );
            o
        }
        Err(f) => panic!("{f}"),
    }
}

fn quiet() -> Vec<Op> {
    admitted()
}

fn kill_control() -> Vec<Op> {
    let mut ops = admitted();
    ops.extend([Op::Kill(Who::Control), Op::Wait(s(3)), Op::Settle]);
    // It comes back and must not disturb anything.
    ops.extend([Op::StartAll, Op::Settle]);
    ops
}

fn stop_control() -> Vec<Op> {
    let mut ops = admitted();
    ops.extend([
        Op::Term(Who::Control),
        Op::Wait(s(1)),
        admit("d", 1),
        Op::Settle,
    ]);
    ops.extend([Op::StartAll, Op::Settle]);
    ops
}

fn isolate_control() -> Vec<Op> {
    let mut ops = admitted();
    ops.extend([
        Op::Isolate(Who::Control),
        Op::Wait(s(3)),
        admit("d", 1),
        Op::Wait(s(3)),
        Op::Heal,
        Op::Settle,
    ]);
    ops
}

fn pause_control() -> Vec<Op> {
    let mut ops = admitted();
    ops.extend([
        Op::Pause(Who::Control, s(3)),
        Op::Wait(ms(500)),
        admit("d", 1),
        Op::Wait(s(4)),
        Op::Settle,
    ]);
    ops
}

fn service_node_dies() -> Vec<Op> {
    let mut ops = admitted();
    ops.extend([Op::Kill(Who::Host("a".into())), Op::Wait(s(2)), Op::Settle]);
    ops
}

fn whole_cluster_restart() -> Vec<Op> {
    let mut ops = admitted();
    ops.extend([
        Op::StopAll,
        Op::Wait(s(2)),
        Op::StartAll,
        Op::Settle,
        admit("d", 1),
        Op::Settle,
    ]);
    ops
}

#[test]
fn quiet_available() {
    check("quiet_available", Mode::Available, 3, quiet(), false);
}

#[test]
fn quiet_majority() {
    check("quiet_majority", Mode::Majority, 3, quiet(), false);
}

#[test]
fn kill_control_available() {
    check(
        "kill_control_available",
        Mode::Available,
        5,
        kill_control(),
        false,
    );
}

/// A planned stop of the Control's node hands over: a successor acts, services whose node
/// stopped are restarted once, and the old node's return changes nothing.
#[test]
fn stop_control_available() {
    check(
        "stop_control_available",
        Mode::Available,
        4,
        stop_control(),
        false,
    );
}

#[test]
fn stop_control_majority() {
    check(
        "stop_control_majority",
        Mode::Majority,
        5,
        stop_control(),
        false,
    );
}

#[test]
fn kill_control_majority() {
    check(
        "kill_control_majority",
        Mode::Majority,
        5,
        kill_control(),
        false,
    );
}

#[test]
fn isolate_control_available() {
    check(
        "isolate_control_available",
        Mode::Available,
        5,
        isolate_control(),
        false,
    );
}

#[test]
fn isolate_control_majority() {
    check(
        "isolate_control_majority",
        Mode::Majority,
        5,
        isolate_control(),
        false,
    );
}

#[test]
fn pause_control_available() {
    check(
        "pause_control_available",
        Mode::Available,
        5,
        pause_control(),
        false,
    );
}

#[test]
fn pause_control_majority() {
    check(
        "pause_control_majority",
        Mode::Majority,
        5,
        pause_control(),
        false,
    );
}

#[test]
fn service_node_dies_available() {
    check(
        "service_node_dies_available",
        Mode::Available,
        3,
        service_node_dies(),
        false,
    );
}

#[test]
fn service_node_dies_majority() {
    check(
        "service_node_dies_majority",
        Mode::Majority,
        3,
        service_node_dies(),
        false,
    );
}

#[test]
fn whole_cluster_restart_available() {
    check(
        "whole_cluster_restart_available",
        Mode::Available,
        3,
        whole_cluster_restart(),
        false,
    );
}

#[test]
fn whole_cluster_restart_majority() {
    check(
        "whole_cluster_restart_majority",
        Mode::Majority,
        3,
        whole_cluster_restart(),
        false,
    );
}

/// No acknowledged desired-state write lost: the services acknowledged before a
/// whole-cluster restart are kept after it (restored from the desired-state log).
#[test]
fn whole_cluster_restart_keeps_acknowledged_services() {
    for mode in [Mode::Available, Mode::Majority] {
        let _ = check(
            "whole_cluster_restart_keeps_acknowledged_services",
            mode,
            3,
            whole_cluster_restart(),
            true,
        );
    }
}

/// What the `lost` invariant relies on: one node alone admits every service a random
/// scenario can (at most `LEN` of them, each with up to 3 viewers).
#[test]
fn single_node_takes_every_service() {
    let mut ops = vec![Op::StartAll, Op::Wait(s(2))];
    for k in 0..24 {
        ops.push(admit(&format!("s{k}"), 3));
        ops.push(Op::Wait(ms(300)));
    }
    ops.push(Op::Settle);
    let o = check(
        "single_node_takes_every_service",
        Mode::Available,
        1,
        ops,
        false,
    );
    assert_eq!(o.acknowledged, 24, "every service admitted on one node");
    assert_eq!(
        o.requests,
        24 + 24 * 3,
        "every service and viewer asked for"
    );
}
