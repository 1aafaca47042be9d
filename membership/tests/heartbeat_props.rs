//! Property tests of the datagram codec: arbitrary messages round-trip, arbitrary bytes never
//! panic (and never authenticate), any single bit flip of a valid datagram is rejected, a
//! wrong key is always rejected, and the replay guard never accepts a (node, incarnation,
//! seq) twice.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use smart_proto::heartbeat::{
    self as wire, Challenge, Claim, ControlAssert, ControlView, Heartbeat, LoadSummary,
    MAX_DATAGRAM, Message, Proof, ReplayGuard, WireError,
};
use smart_proto::pair::{MemberKeys, public_key};
use smart_proto::{ClusterKey, NodeId, Role};

fn key() -> ClusterKey {
    ClusterKey::from_bytes(b"property-test-cluster-key!!").unwrap()
}

/// A node key per id.
fn secret(id: NodeId) -> [u8; 32] {
    let mut s = [7u8; 32];
    s[..8].copy_from_slice(&id.0.to_le_bytes());
    s
}

/// The receiver of every datagram in these tests (no generated message is from it).
const RECEIVER: NodeId = NodeId(u64::MAX - 1);

/// The pair keys of `m`'s sender with the receiver.
fn sender_keys(m: &Message) -> MemberKeys {
    MemberKeys::derive(
        m.from(),
        &secret(m.from()),
        [(RECEIVER, public_key(&secret(RECEIVER)))],
    )
}

/// `encode` by the message's sender, for the receiver.
fn enc(m: &Message, k: &ClusterKey) -> Vec<u8> {
    let mut d = wire::encode(m, k, &sender_keys(m));
    assert_eq!(d.len(), 1);
    d.remove(0)
}

/// The receiver's pair key with `m`'s sender.
fn book(m: &Message) -> MemberKeys {
    MemberKeys::derive(
        RECEIVER,
        &secret(RECEIVER),
        [(m.from(), public_key(&secret(m.from())))],
    )
}

/// The receiver's pair keys with a few members.
fn some_book() -> MemberKeys {
    let publics = (0..4u64).map(|i| (NodeId(i), public_key(&secret(NodeId(i)))));
    MemberKeys::derive(RECEIVER, &secret(RECEIVER), publics)
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Agent),
        Just(Role::Profiler),
        Just(Role::FrontEnd),
        Just(Role::Control)
    ]
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    (
        (any::<u64>(), any::<u64>(), any::<u64>(), addr()),
        proptest::collection::vec(role(), 0..4),
        any::<u64>(),
        proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>())),
        proptest::option::of((any::<u64>(), any::<u64>())),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u16>()),
    )
        .prop_map(
            |((from, inc, seq, tcp_addr), roles, highest, view, assert, load)| Heartbeat {
                from: NodeId(from),
                incarnation: inc,
                seq,
                tcp_addr,
                roles,
                highest_epoch: highest,
                control: view.map(|(n, est, e)| ControlView {
                    node_id: NodeId(n),
                    established_epoch: est,
                    epoch: e,
                }),
                as_control: assert.map(|(a, b)| ControlAssert {
                    established_epoch: a,
                    epoch: b,
                }),
                load: LoadSummary {
                    cpu_milli: load.0,
                    mem_used_mib: load.1,
                    net_kbps: load.2,
                    instances: load.3,
                },
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        heartbeat().prop_map(Message::Heartbeat),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(f, i, s, e)| {
            Message::Claim(Claim {
                from: NodeId(f),
                incarnation: i,
                seq: s,
                epoch: e,
            })
        }),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<[u8; 16]>()).prop_map(
            |(f, i, s, nonce)| {
                Message::Challenge(Challenge {
                    from: NodeId(f % 8),
                    incarnation: i,
                    seq: s,
                    nonce,
                })
            }
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 16]>()
        )
            .prop_map(|(f, i, s, t, nonce)| {
                Message::Proof(Proof {
                    from: NodeId(f % 8),
                    incarnation: i,
                    seq: s,
                    to: NodeId(t % 3),
                    nonce,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(m in message()) {
        let k = key();
        let bytes = enc(&m, &k);
        prop_assert!(bytes.len() <= MAX_DATAGRAM);
        prop_assert_eq!(wire::decode(&bytes, &k, &book(&m)), Ok(m));
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_authenticate(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        prop_assert!(wire::decode(&bytes, &key(), &some_book()).is_err());
    }

    #[test]
    fn arbitrary_payload_behind_a_valid_header_is_refused(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = b"SMRT\x01\x01".to_vec();
        bytes.extend_from_slice(&tail);
        prop_assert!(wire::decode(&bytes, &key(), &some_book()).is_err());
    }

    #[test]
    fn any_single_bit_flip_is_rejected(m in message(), bit in any::<prop::sample::Index>()) {
        let k = key();
        let mut bytes = enc(&m, &k);
        let i = bit.index(bytes.len() * 8);
        bytes[i / 8] ^= 1 << (i % 8);
        let r = wire::decode(&bytes, &k, &book(&m));
        prop_assert!(
            matches!(r, Err(WireError::BadMagic | WireError::BadVersion(_) | WireError::BadTag)),
            "bit {} flipped: {:?}", i, r
        );
    }

    #[test]
    fn wrong_key_is_rejected(m in message()) {
        let other = ClusterKey::from_bytes(b"some-other-cluster-key-xyz").unwrap();
        prop_assert_eq!(wire::decode(&enc(&m, &key()), &other, &book(&m)), Err(WireError::BadTag));
    }

    #[test]
    fn another_members_tag_is_rejected(m in message(), seed in any::<[u8; 32]>()) {
        // A cluster-key holder with a node key of its own, speaking in `m`'s sender's name.
        prop_assume!(public_key(&seed) != public_key(&secret(m.from())));
        let impostor =
            MemberKeys::derive(m.from(), &seed, [(RECEIVER, public_key(&secret(RECEIVER)))]);
        let bytes = wire::encode(&m, &key(), &impostor).remove(0);
        prop_assert_eq!(
            wire::decode(&bytes, &key(), &book(&m)),
            Err(WireError::BadPairTag(m.from().0))
        );
    }

    #[test]
    fn truncations_are_rejected(m in message(), cut in any::<prop::sample::Index>()) {
        let k = key();
        let bytes = enc(&m, &k);
        let n = cut.index(bytes.len());
        prop_assert!(wire::decode(&bytes[..n], &k, &book(&m)).is_err());
    }

    #[test]
    fn replay_guard_accepts_each_triple_at_most_once(
        seqs in proptest::collection::vec((0u64..3, 0u64..3, 0u64..200), 1..400)
    ) {
        let mut g = ReplayGuard::new();
        let mut accepted = HashSet::new();
        let mut max_inc = std::collections::HashMap::new();
        for (node, inc, seq) in seqs {
            let ok = g.check(NodeId(node), inc, seq).is_ok();
            if ok {
                prop_assert!(accepted.insert((node, inc, seq)), "accepted twice: {:?}", (node, inc, seq));
                let m = max_inc.entry(node).or_insert(inc);
                prop_assert!(inc >= *m, "accepted an older incarnation");
                *m = inc;
            }
        }
    }
}

mod hostile_peers {
    //! Authenticated but hostile messages (an insider with the key, or a buggy peer) fed to a
    //! node engine between ticks: it must never panic, its highest epoch never decreases and
    //! every PersistEpoch strictly raises the previous one.

    use std::time::Duration;

    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use smart_membership::election::Mode;
    use smart_membership::engine::{EngineConfig, Input, NodeEngine, Output};
    use smart_proto::{NodeId, Role};
    use tokio::time::Instant;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn engine_survives_hostile_authenticated_messages(
            majority in any::<bool>(),
            proof in any::<bool>(),
            steps in proptest::collection::vec((0u64..300, message()), 1..60),
        ) {
            let mut cfg = EngineConfig::new(
                NodeId(1), 1, "127.0.0.1:7000".parse().unwrap(), vec![Role::Agent, Role::Control]);
            cfg.incarnation_proof = proof;
            let step = cfg.max_epoch_step;
            if majority {
                cfg.election.mode = Mode::Majority { members: [1, 2, 3].map(NodeId).into() };
            }
            let mut e = NodeEngine::new(cfg, 0, ChaCha8Rng::seed_from_u64(0));
            let k = super::key();
            let mut now = Instant::now();
            let mut persisted = 0u64;
            for (delay, msg) in steps {
                now += Duration::from_millis(delay);
                let before = e.highest_epoch();
                let mut out = e.handle(Input::Tick, now);
                // Through the codec, as the shell does.
                let msg = wire::decode(&super::enc(&msg, &k), &k, &super::book(&msg)).unwrap();
                out.extend(e.handle(Input::Received(msg), now));
                prop_assert!(e.highest_epoch() >= before);
                for o in out {
                    if let Output::PersistEpoch(p) = o {
                        prop_assert!(p > persisted, "persist {} after {}", p, persisted);
                        // Nothing persists a value it would refuse: at most the step above
                        // what it had, plus one for its own claim or re-assertion.
                        prop_assert!(p <= before + step + 1, "persist {} from {}", p, before);
                        prop_assert!(p <= smart_membership::engine::EPOCH_CEILING);
                        persisted = p;
                    }
                }
            }
        }
    }
}
