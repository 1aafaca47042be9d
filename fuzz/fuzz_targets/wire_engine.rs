//! Authenticated but hostile datagrams (an insider with the key, or a buggy peer): the fuzzer
//! writes kind byte + payload, we tag them with the cluster key and with the pair key of the
//! member the payload names (a member speaking as itself), so that `heartbeat::decode`
//! reaches the postcard decoder and the pair-tag check, and every message that decodes is
//! fed to a `NodeEngine` between ticks. Neither
//! the decoder nor the engine may panic, whatever the values (epochs at u64::MAX, huge
//! durations, claims from ourselves, ...).
//!
//! Input layout: repeated `[len: u8][delay_ms: u8][kind: u8][payload: len bytes]`; kind
//! 0xFE feeds Raft's word on leadership instead of a datagram.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use smart_membership::engine::{EngineConfig, Input, NodeEngine};
use smart_proto::{ClusterKey, NodeId, Role};
use smart_proto::heartbeat::{self, MAGIC, VERSION, WireError};
use smart_proto::pair::{public_key, MemberKeys};
use tokio::time::Instant;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_bytes(b"fuzz-cluster-key-0123456789").unwrap();
    let mut cfg = EngineConfig::new(
        NodeId(1),
        1,
        "127.0.0.1:7000".parse().unwrap(),
        vec![Role::Agent, Role::Control],
    );
    if data.first().is_some_and(|b| b & 1 == 1) {
        cfg.election.mode = smart_membership::election::Mode::Majority {
            members: [1, 2, 3].map(NodeId).into(),
        };
    }
    // Both with and without the incarnation proof and the member list, so that hostile
    // messages reach the election as well as the verification.
    if data.first().is_some_and(|b| b & 2 == 2) {
        cfg.incarnation_proof = false;
    } else {
        cfg.members = [1, 2, 3].map(NodeId).into();
    }
    let mut engine = NodeEngine::new(cfg, 0, ChaCha8Rng::seed_from_u64(0));
    let mut now = Instant::now();
    let mut rest = data;
    while let [len, delay, kind, tail @ ..] = rest {
        let len = (*len as usize).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(*delay));
        engine.handle(Input::Tick, now);
        // Kind 0xFE: Raft's word on this node instead of a datagram (majority mode's
        // claims and step-downs, with leases ending anywhere around now).
        if *kind == 0xFE {
            let lead = smart_membership::engine::Leadership {
                leader: *delay & 1 == 1,
                lease_until: (*delay & 2 == 2).then(|| now + Duration::from_millis(len as u64)),
            };
            engine.handle(Input::Leadership(lead), now);
            continue;
        }
        let Some((datagram, ours)) = tagged_by_sender(*kind, payload, &key) else {
            continue;
        };
        if let Ok(msg) = heartbeat::decode(&datagram, &key, &ours) {
            let before = engine.highest_epoch();
            for o in engine.handle(Input::Received(msg), now) {
                if let smart_membership::engine::Output::PersistEpoch(e) = o {
                    // Nothing persists a value it would refuse.
                    assert!(e <= smart_membership::engine::EPOCH_CEILING);
                    assert!(e <= before + engine.config().max_epoch_step + 1);
                }
            }
        }
    }
    let _ = engine.members();
});

/// A node key per id.
fn secret(id: u64) -> [u8; 32] {
    let mut s = [9u8; 32];
    s[..8].copy_from_slice(&id.to_le_bytes());
    s
}

/// The datagram of `kind` and `payload` (the fuzzer's bytes), tagged with the cluster key
/// and with the pair key of the member its payload names, and node 1's keys that check it;
/// `None` when the payload names no one (it does not decode).
fn tagged_by_sender(kind: u8, payload: &[u8], key: &ClusterKey) -> Option<(Vec<u8>, MemberKeys)> {
    let mut signed = MAGIC.to_vec();
    signed.push(VERSION);
    signed.push(kind);
    signed.extend_from_slice(payload);
    let datagram = |tags: &[smart_proto::pair::PairTag]| {
        let mut d = signed.clone();
        d.extend_from_slice(&postcard::to_allocvec(tags).unwrap());
        let tag = key.sign(&[&d]);
        d.extend_from_slice(&tag);
        d
    };
    // Keys that know no one name the sender of a payload that decodes.
    let nobody = MemberKeys::derive(NodeId(1), &secret(1), []);
    let from = match heartbeat::decode(&datagram(&[]), key, &nobody) {
        Err(WireError::UnknownSender(from)) => from,
        _ => return None,
    };
    if from == 1 {
        return None;
    }
    let sender = MemberKeys::derive(NodeId(from), &secret(from), [(NodeId(1), public_key(&secret(1)))]);
    let ours = MemberKeys::derive(NodeId(1), &secret(1), [(NodeId(from), public_key(&secret(from)))]);
    let tag = sender.tag(NodeId(1), &signed)?;
    Some((datagram(&[tag]), ours))
}
