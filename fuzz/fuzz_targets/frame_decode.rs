//! Arbitrary bytes into the TCP frame decoders: the plaintext parser `decode_frame` (prefix
//! and envelope) and the authenticated `open_payload`, which must refuse every input that was
//! not sealed by its peer. Never a panic, never an allocation beyond the size limit.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smart_transport::frame::{self, Cipher, DEFAULT_MAX_FRAME, Envelope};

static PAIR: OnceLock<(Cipher, Cipher)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode_frame::<Vec<u8>>(data, DEFAULT_MAX_FRAME);
    let (_, acceptor) = PAIR.get_or_init(Cipher::pair);
    let opened: Result<Envelope<Vec<u8>>, _> = frame::open_payload(data, acceptor);
    assert!(opened.is_err(), "unsealed bytes authenticated");
});
