//! Prints the heartbeat datagram size and the CPU one node spends on the membership protocol
//! at 10 and 100 simulated members: its own ticks and heartbeats (engine + encode + a pair
//! tag per member + the cluster tag) plus, for every peer heartbeat, decode + the cluster
//! tag + its own pair tag + engine handling.
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
use smart_proto::pair::{MemberKeys, public_key};
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

/// Node `id`'s key.
fn secret(id: u64) -> [u8; 32] {
    let mut s = [3u8; 32];
    s[..8].copy_from_slice(&id.to_le_bytes());
    s
}

/// The pair keys of every member of a cluster of `members` (ids 1..=members).
fn cluster_keys(members: u64) -> Vec<MemberKeys> {
    let publics: Vec<(NodeId, [u8; 32])> = (1..=members)
        .map(|i| (NodeId(i), public_key(&secret(i))))
        .collect();
    (1..=members)
        .map(|i| MemberKeys::derive(NodeId(i), &secret(i), publics.clone()))
        .collect()
}

/// The datagram of `msg` that carries node 1's tag.
fn for_node_1(datagrams: Vec<Vec<u8>>, key: &ClusterKey, me: &MemberKeys) -> Vec<u8> {
    datagrams
        .into_iter()
        .find(|d| heartbeat::decode(d, key, me).is_ok())
        .expect("a datagram for node 1")
}

fn run(members: u64, seconds: u64, key: &ClusterKey) -> (Duration, u64, u64) {
    let keys = cluster_keys(members);
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
                let msg = peer_heartbeat(p, seq, p == 2);
                let all = heartbeat::encode(&msg, key, &keys[p as usize - 1]);
                batch.push(for_node_1(all, key, &keys[0]));
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
                for d in heartbeat::encode(&msg, key, &keys[0]) {
                    sent_bytes += d.len() as u64;
                }
            }
        }
        for d in batch {
            let msg = heartbeat::decode(d, key, &keys[0]).expect("valid datagram");
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
    for members in [3u64, 10, 100] {
        let keys = cluster_keys(members);
        let follower = heartbeat::encode(&peer_heartbeat(3, 1000, false), &key, &keys[2]);
        let control = heartbeat::encode(&peer_heartbeat(2, 1000, true), &key, &keys[1]);
        println!(
            "heartbeat datagrams, {members} members: follower {} × {} B, Control (asserting) {} × {} B (limit {} B)",
            follower.len(),
            follower[0].len(),
            control.len(),
            control[0].len(),
            heartbeat::MAX_DATAGRAM
        );
    }
    let keys = cluster_keys(10);
    let follower = for_node_1(
        heartbeat::encode(&peer_heartbeat(3, 1000, false), &key, &keys[2]),
        &key,
        &keys[0],
    );

    // Per-operation costs.
    let n = 200_000u32;
    let msg = peer_heartbeat(3, 1000, false);
    let s = WallInstant::now();
    for _ in 0..n {
        std::hint::black_box(heartbeat::encode(
            std::hint::black_box(&msg),
            &key,
            &keys[2],
        ));
    }
    let enc = s.elapsed() / n;
    let s = WallInstant::now();
    for _ in 0..n {
        std::hint::black_box(
            heartbeat::decode(std::hint::black_box(&follower), &key, &keys[0]).unwrap(),
        );
    }
    let dec = s.elapsed() / n;
    println!(
        "10 members: encode + 9 pair tags + HMAC: {:.2} µs, decode + HMAC + pair tag: {:.2} µs",
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
