//! Arbitrary bytes as what another member sends the desired-state log: a `RaftRpc` envelope,
//! and each of the Raft library's messages it carries (append-entries, vote,
//! install-snapshot), decoded as the receiving node does before acting. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_proto::desired::RaftRpc;

fuzz_target!(|data: &[u8]| {
    if let Ok(rpc) = postcard::from_bytes::<RaftRpc>(data) {
        let _ = smart_desired::types::decode_rpc(rpc);
    }
    for rpc in [
        RaftRpc::AppendEntries(data.to_vec()),
        RaftRpc::Vote(data.to_vec()),
        RaftRpc::InstallSnapshot(data.to_vec()),
    ] {
        let _ = smart_desired::types::decode_rpc(rpc);
    }
});
