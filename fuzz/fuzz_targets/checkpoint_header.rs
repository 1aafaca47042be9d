//! Arbitrary JSON as a checkpoint header (the line before the cache blocks of a live
//! migration): `decode_checkpoint_header` refuses inconsistent or oversized ones (block
//! lengths that overflow when added included) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = smart_vod::control::decode_checkpoint_header(v);
    }
});
