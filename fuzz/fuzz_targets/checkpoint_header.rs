//! Arbitrary JSON as a checkpoint header (the line before the cache blocks of a live
//! migration): `CheckpointHeader::check` refuses inconsistent or oversized ones (block
//! lengths that overflow when added included) without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = serde_json::from_slice::<smart_proto::workload::CheckpointHeader>(data) {
        let _ = h.check();
    }
});
