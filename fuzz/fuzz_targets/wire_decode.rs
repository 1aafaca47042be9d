//! Arbitrary bytes into `heartbeat::decode` and the keyring decoder `heartbeat::decode_with` (plain and
//! encrypted formats): must never panic, and (without the keys) never authenticate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_proto::key::ClusterKey;
use smart_proto::heartbeat;
use smart_proto::pair::{public_key, MemberKeys};
use smart_proto::NodeId;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_bytes(b"fuzz-cluster-key-0123456789").unwrap();
    let keys = MemberKeys::derive(NodeId(1), &[1; 32], [(NodeId(2), public_key(&[2; 32]))]);
    assert!(
        heartbeat::decode(data, &key, &keys).is_err(),
        "unsigned bytes authenticated"
    );
    let ring = heartbeat::Keyring::new(key).encrypted(true);
    assert!(
        heartbeat::decode_with(data, &ring, &keys).is_err(),
        "unsealed bytes authenticated"
    );
});
