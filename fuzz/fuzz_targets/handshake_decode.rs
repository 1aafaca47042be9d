//! Arbitrary bytes into the handshake decoders (what an unauthenticated peer controls
//! entirely): the handshake message, the sealed verdict and the identity payloads. Never a
//! panic; a Noise message inside a Hello is also fed to a responder, which must refuse it
//! without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_transport::frame::decode_value;
use smart_transport::handshake::{HandshakeMsg, Identity, Verdict};

fuzz_target!(|data: &[u8]| {
    let _ = decode_value::<Verdict>(data);
    let _ = decode_value::<Identity>(data);
    if let Ok(HandshakeMsg::Hello { noise, .. } | HandshakeMsg::Noise { noise }) =
        decode_value::<HandshakeMsg>(data)
    {
        let _ = decode_value::<Identity>(&noise);
    }
});
