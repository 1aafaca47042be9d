//! Prints the heartbeat datagram size and the CPU one node spends on the membership protocol
//! at 10 and 100 simulated members: its own ticks and heartbeats (engine + encode + sign)
//! plus, for every peer heartbeat, decode + verify + engine handling.
//!
//! ```text
//! cargo run --release -p smart-supervision --example heartbeat_cost [-- SECONDS]
//! ```
//!
//! The peers' datagrams are prepared beforehand (their encoding is their own cost); one
//! simulated second is 100 Ticks (the shell's 10 ms timer) and 10 heartbeats from each peer.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::time::{Duration, Instant as WallInstant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use smart_membership::engine::{EngineConfig, Input, NodeEngine, Output};
use smart_proto::heartbeat::{self, ControlAssert, ControlView, Heartbeat, LoadSummary, Message};
use smart_proto::{ClusterKey, NodeId, Role};
use tokio::time::Instant;

fn peer_heartbeat(from: u64, seq: u64, control: bool) -> Message {
    Message::Heartbeat(Heartbeat {
        from: NodeId(from),
        incarnation: 3,
        seq,
        tcp_addr: format!("10.0.{}.{}:7101", from / 250, from % 250 + 1)
            .parse()
            .unwrap(),
        roles: vec![Role::Agent, Role::Control],
        highest_epoch: 12,
        control: Some(ControlView {
            node_id: NodeId(2),
            established_epoch: 10,
            epoch: 12,
        }),
        as_control: control.then_some(ControlAssert {
            established_epoch: 10,
            epoch: 12,
        }),
        load: LoadSummary {
            cpu_milli: 2350,
            mem_used_mib: 6144,
            net_kbps: 180_000,
            instances: 7,
        },
    })
}

fn run(members: u64, seconds: u64, key: &ClusterKey) -> (Duration, u64, u64) {
    let mut cfg = EngineConfig::new(
        NodeId(1),
        1,
        "10.0.0.1:7101".parse().unwrap(),
        vec![Role::Agent, Role::Control],
    );
    // Measures steady state: every peer is already verified.
    cfg.incarnation_proof = false;
    let mut engine = NodeEngine::new(cfg, 12, ChaCha8Rng::seed_from_u64(1));
    let t0 = Instant::now();
    // Datagrams of every peer, 10 per simulated second, prepared outside the timing.
    let mut inbound: Vec<Vec<Vec<u8>>> = Vec::new();
    for tick in 0..seconds * 100 {
        let mut batch = Vec::new();
        if tick % 10 == 0 {
            for p in 2..=members {
                let seq = tick / 10 + 1;
                batch.push(heartbeat::encode(&peer_heartbeat(p, seq, p == 2), key));
            }
        }
        inbound.push(batch);
    }
    let mut sent_bytes = 0u64;
    let mut handled = 0u64;
    let start = WallInstant::now();
    for (tick, batch) in inbound.iter().enumerate() {
        let now = t0 + Duration::from_millis(tick as u64 * 10);
        for o in engine.handle(Input::Tick, now) {
            if let Output::Send { msg, .. } = o {
                sent_bytes += heartbeat::encode(&msg, key).len() as u64;
            }
        }
        for d in batch {
            let msg = heartbeat::decode(d, key).expect("valid datagram");
            std::hint::black_box(engine.handle(Input::Received(msg), now));
            handled += 1;
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(engine.members().len() as u64, members - 1);
    (elapsed, handled, sent_bytes)
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let key = ClusterKey::from_bytes(b"benchmark-cluster-key-0123456789").unwrap();
    let follower = heartbeat::encode(&peer_heartbeat(3, 1000, false), &key);
    let control = heartbeat::encode(&peer_heartbeat(2, 1000, true), &key);
    println!(
        "heartbeat datagram size: follower {} B, Control (asserting) {} B (limit {} B)",
        follower.len(),
        control.len(),
        heartbeat::MAX_DATAGRAM
    );

    // Per-operation costs.
    let n = 200_000u32;
    let msg = peer_heartbeat(3, 1000, false);
    let s = WallInstant::now();
    for _ in 0..n {
        std::hint::black_box(heartbeat::encode(std::hint::black_box(&msg), &key));
    }
    let enc = s.elapsed() / n;
    let s = WallInstant::now();
    for _ in 0..n {
        std::hint::black_box(heartbeat::decode(std::hint::black_box(&follower), &key).unwrap());
    }
    let dec = s.elapsed() / n;
    println!(
        "encode+sign: {:.2} µs, decode+verify: {:.2} µs",
        enc.as_secs_f64() * 1e6,
        dec.as_secs_f64() * 1e6
    );

    for members in [10u64, 100] {
        let (elapsed, handled, sent) = run(members, seconds, &key);
        let per_sec = elapsed / seconds as u32;
        println!(
            "{members:>3} members: {:.1} µs CPU per node per second ({:.3} % of one core); \
             {} datagrams in/s, {} B/s out, {:.2} µs per inbound datagram (decode+verify+engine)",
            per_sec.as_secs_f64() * 1e6,
            per_sec.as_secs_f64() * 100.0,
            handled / seconds,
            sent / seconds,
            elapsed.as_secs_f64() * 1e6 / handled as f64,
        );
    }
}
