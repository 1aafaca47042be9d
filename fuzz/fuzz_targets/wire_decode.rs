//! Arbitrary bytes into `heartbeat::decode` and the keyring decoder `heartbeat::decode_with` (plain and
//! encrypted formats): must never panic, and (without the key) never authenticate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_proto::key::ClusterKey;
use smart_proto::heartbeat;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_bytes(b"fuzz-cluster-key-0123456789").unwrap();
    assert!(
        heartbeat::decode(data, &key).is_err(),
        "unsigned bytes authenticated"
    );
    let ring = heartbeat::Keyring::new(key).encrypted(true);
    assert!(
        heartbeat::decode_with(data, &ring).is_err(),
        "unsealed bytes authenticated"
    );
});
