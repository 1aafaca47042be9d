//! Arbitrary bytes as the plaintext of a message-API / node-to-node frame (what a key holder
//! controls after the handshake): the envelope with its `Request`/`Response`/`Fault`/`Notify`
//! body of the node protocol (a `Fault` carries a typed `RemoteError`, a request may be
//! `ApiWithin` with its deadline). Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_transport::NodeProtocol;
use smart_transport::frame::{DEFAULT_MAX_FRAME, decode_frame, decode_value, Envelope};
use smart_transport::MessageOf;

fuzz_target!(|data: &[u8]| {
    let _ = decode_value::<Envelope<MessageOf<NodeProtocol>>>(data);
    let _ = decode_value::<MessageOf<NodeProtocol>>(data);
    let _ = decode_value::<smart_api::Event>(data);
    let _ = decode_value::<smart_proto::error::RemoteError>(data);
    let _ = decode_value::<smart_proto::node::NodeRequest>(data);
    let _ = decode_frame::<MessageOf<NodeProtocol>>(data, DEFAULT_MAX_FRAME);
});
