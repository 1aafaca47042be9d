//! Arbitrary bytes into `wire::decode` and the keyring decoder `wire::decode_with` (plain and
//! encrypted formats): must never panic, and (without the key) never authenticate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_supervision::types::ClusterKey;
use smart_supervision::wire;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_bytes(b"fuzz-cluster-key-0123456789").unwrap();
    assert!(
        wire::decode(data, &key).is_err(),
        "unsigned bytes authenticated"
    );
    let ring = wire::Keyring::new(key).encrypted(true);
    assert!(
        wire::decode_with(data, &ring).is_err(),
        "unsealed bytes authenticated"
    );
});
