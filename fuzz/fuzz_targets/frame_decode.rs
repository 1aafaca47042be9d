//! Arbitrary bytes into the TCP frame decoders (structural `decode_frame` and the
//! authenticated `open_payload`): must never panic nor allocate beyond the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_supervision::frame::{self, DEFAULT_MAX_FRAME, Direction, Envelope};
use smart_supervision::types::ClusterKey;

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode_frame::<Vec<u8>>(data, DEFAULT_MAX_FRAME);
    let key = ClusterKey::from_bytes(b"fuzz-cluster-key-0123456789").unwrap();
    let opened: Result<Envelope<Vec<u8>>, _> =
        frame::open_payload(data, &key, Direction::ToAcceptor);
    assert!(opened.is_err(), "unsigned bytes authenticated");
});
