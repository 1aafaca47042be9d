//! Arbitrary bytes as one line of the workload control API (`$SMART_CONTROL_SOCKET`), as
//! `smart_proto::workload::parse_request` reads it: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let _ = smart_proto::workload::parse_request(&line);
});
