//! TCP frames: the length prefix, the size limit, the postcard envelope and the per-frame tag.
//!
//! Everything that crosses a SMART TCP connection is a *frame*. This module is the pure codec
//! (no sockets, no `.await`): it turns values into frame bytes and frame bytes back into
//! values, refusing anything malformed with a typed [`FrameError`], never with a panic, and
//! never allocating more than the configured maximum frame size.
//!
//! # Wire format (enough to write a compatible peer in any language)
//!
//! ## Frame
//!
//! ```text
//! +----------------------+---------------------------+
//! | length: u32, big end | payload: `length` bytes   |
//! +----------------------+---------------------------+
//! ```
//!
//! `length` counts the payload only (not the 4 prefix bytes). A receiver reads the 4 bytes,
//! compares `length` with its limit (default [`DEFAULT_MAX_FRAME`] = 1 MiB for data frames,
//! [`HANDSHAKE_MAX_FRAME`] = 512 bytes until the handshake has succeeded) and closes the
//! connection if it is larger, *before* allocating anything. A length of 0 is legal at this
//! level but no SMART payload is empty, so it is then refused as truncated.
//!
//! ## Postcard
//!
//! Payload values are encoded with [postcard](https://postcard.jamesmunns.com/wire-format)
//! 1.x: `u8`/`i8` are one raw byte; `u16`/`u32`/`u64`/`u128`/`usize` are unsigned LEB128
//! varints (7 bits per byte, least significant group first, high bit set on every byte but
//! the last; e.g. 300 = `ac 02`); signed integers are zigzag-mapped (`0,-1,1,-2 → 0,1,2,3`)
//! then varints; `f32`/`f64` are 4/8 bytes little-endian; `bool` is one byte 0/1; `()` and
//! unit structs are nothing; a fixed array `[T; N]` and a tuple are their elements with no
//! length; a byte string, `String` (UTF-8) or `Vec<T>` is a varint count followed by the
//! elements; a map is a varint count followed by key, value pairs; `Option<T>` is a byte 0
//! (None) or 1 followed by `T`; an enum is a varint variant index (in declaration order,
//! starting at 0) followed by the variant's fields in order; a struct is its fields in order,
//! a newtype struct (like `NodeId(u64)`) its single field.
//!
//! ## Handshake payloads
//!
//! The first frames on a connection are handshake messages (see
//! [`crate::handshake`]): the payload is the postcard encoding of one message,
//! with no tag, and at most [`HANDSHAKE_MAX_FRAME`] bytes.
//!
//! ## Data payloads
//!
//! After the handshake every payload is the encryption of one [`Envelope`] under the
//! connection's Noise cipher ([`Cipher`]: ChaCha20-Poly1305, a key per direction, implicit
//! nonces counting the messages sent in that direction):
//!
//! ```text
//! payload   = noise(plain[0..65519]) || noise(plain[65519..]) || ...   (each +16-byte tag)
//! plain     = postcard(Envelope<B>)
//! Envelope  = version: u8 (= PROTOCOL_VERSION, raw byte, always the first plaintext byte)
//!             from: u64 varint         sender node id (client id for message-API clients)
//!             incarnation: u64 varint  sender boot counter (0 for clients)
//!             epoch: u64 varint        highest Control epoch the sender knows
//!             seq: u64 varint          per connection and direction, starts at 1, +1 per frame
//!             body: B                  the application body (see `transport::Message`)
//! ```
//!
//! A payload longer than one Noise message (65,535 bytes) is a run of them, split every
//! 65,535 bytes. A receiver checks, in this order: length limit, decryption and tag of
//! every message (before parsing anything; a frame sent in the other direction, replayed
//! or reordered does not decrypt), version byte, postcard decoding with no trailing bytes,
//! `seq` strictly greater than the previous frame's, and `from`/`incarnation` equal to the
//! identity proven in the handshake. Any failure closes the connection: a byte stream that
//! failed once cannot be trusted to be in sync again.
//!
//! ## Layout
//! - [`Envelope`] and [`PROTOCOL_VERSION`]: the header every data frame carries.
//! - [`FrameError`]: every way a frame can be refused.
//! - [`check_len`], [`encode_value`]/[`decode_value`]: prefix and plain (handshake) payloads.
//! - [`seal_frame`]/[`open_payload`]: encrypted data frames.
//! - [`decode_frame`]: a pure parser of a whole plaintext frame (prefix and envelope, what
//!   a data frame decrypts to), for fuzzing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::error::FrameError;
pub use crate::noise::Cipher;
use crate::noise::NOISE_TAG_LEN;
use smart_proto::{Epoch, Incarnation, NodeId};

/// The envelope version this build speaks. Bumped on any incompatible wire change.
/// 3: `Fault` carries a typed `smart_proto::error::RemoteError` instead of a string; the
/// Control ↔ Agent86 vocabulary lost `Reserve`/`Release` and `MigrateIn.reserved_as`, and
/// `LaunchSpec` carries the service's identity. 4: `NodeRequest::Raft` (the desired-state log).
/// 5: clients present an API token (`ClientHello`, `Identity::Client` carries its scope).
pub const PROTOCOL_VERSION: u8 = 5;

/// Length of the frame length prefix.
pub const LEN_PREFIX: usize = 4;

/// Default limit on a data frame's payload (1 MiB).
pub const DEFAULT_MAX_FRAME: u32 = 1024 * 1024;

/// Limit on a payload before the peer has proven the cluster key: an unauthenticated peer
/// can make us allocate at most this much.
pub const HANDSHAKE_MAX_FRAME: u32 = 512;

/// The header carried by every data frame, around the application body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<B> {
    /// Always [`PROTOCOL_VERSION`]; first byte of the payload.
    pub version: u8,
    /// The sender's node id (for a message-API client, its client id).
    pub from: NodeId,
    /// The sender's incarnation (0 for clients).
    pub incarnation: Incarnation,
    /// The highest Control epoch the sender has seen when it sent the frame.
    pub epoch: Epoch,
    /// Per connection and direction; strictly increasing (starts at 1).
    pub seq: u64,
    /// The application body.
    pub body: B,
}

fn malformed(e: postcard::Error) -> FrameError {
    match e {
        postcard::Error::DeserializeUnexpectedEnd => FrameError::Truncated("value"),
        other => FrameError::Malformed(other),
    }
}

/// Validates a length prefix against `max`; returns the payload length to read.
pub fn check_len(prefix: [u8; LEN_PREFIX], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    if len > max {
        return Err(FrameError::TooLarge {
            len: len.into(),
            max,
        });
    }
    Ok(len as usize)
}

/// Writes the big-endian length prefix into the first 4 bytes of `frame`, checking `max`.
fn finish_prefix(frame: &mut [u8], max: u32) -> Result<(), FrameError> {
    let len = frame.len() - LEN_PREFIX;
    if len > max as usize {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    frame[..LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encodes `value` as a whole frame with no tag (handshake messages).
pub fn encode_value<T: Serialize>(value: &T, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut frame = postcard::to_extend(value, vec![0u8; LEN_PREFIX]).map_err(malformed)?;
    finish_prefix(&mut frame, max)?;
    Ok(frame)
}

/// Decodes a payload holding exactly one postcard value (handshake messages).
pub fn decode_value<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Truncated("value"));
    }
    let (value, rest) = postcard::take_from_bytes(payload).map_err(malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

fn decode_envelope<B: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<B>, FrameError> {
    // The version byte is checked before decoding the rest so that a peer speaking another
    // version gets `BadVersion`, not a confusing decoding error.
    match bytes.first() {
        None => return Err(FrameError::Truncated("envelope")),
        Some(&v) if v != PROTOCOL_VERSION => {
            return Err(FrameError::BadVersion {
                got: v,
                expected: PROTOCOL_VERSION,
            });
        }
        Some(_) => {}
    }
    decode_value(bytes)
}

/// Encodes `env` as a whole data frame: prefix, then the envelope encrypted under the
/// connection's `cipher` (uses the next nonce(s) of our sending direction).
///
/// Refuses (with [`FrameError::TooLarge`]) a frame the receiver would refuse, before
/// encrypting (no nonce is used up), so an oversized message fails at its sender with a
/// clear error instead of killing the connection.
pub fn seal_frame<B: Serialize>(
    env: &Envelope<B>,
    cipher: &Cipher,
    max: u32,
) -> Result<Vec<u8>, FrameError> {
    let plain = postcard::to_allocvec(env).map_err(malformed)?;
    let len = Cipher::sealed_len(plain.len());
    if len > max as usize {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    let mut frame = Vec::with_capacity(LEN_PREFIX + len);
    frame.extend_from_slice(&[0u8; LEN_PREFIX]);
    cipher.seal_into(&plain, &mut frame)?;
    finish_prefix(&mut frame, max)?;
    Ok(frame)
}

/// Decrypts a data payload (prefix already stripped) with the connection's `cipher`, then
/// decodes its envelope.
pub fn open_payload<B: DeserializeOwned>(
    payload: &[u8],
    cipher: &Cipher,
) -> Result<Envelope<B>, FrameError> {
    if payload.len() < NOISE_TAG_LEN {
        return Err(FrameError::Truncated("tag"));
    }
    let plain = cipher.open(payload)?;
    decode_envelope(&plain)
}

/// Parses one whole plaintext frame (prefix included, then a postcard envelope: what a data
/// frame decrypts to): the parsing half of [`open_payload`], pure and panic-free, meant for
/// fuzz targets and diagnostics. `frame` must hold exactly one frame; extra bytes are
/// [`FrameError::TrailingBytes`].
pub fn decode_frame<B: DeserializeOwned>(
    frame: &[u8],
    max: u32,
) -> Result<Envelope<B>, FrameError> {
    let Some((prefix, rest)) = frame.split_first_chunk::<LEN_PREFIX>() else {
        return Err(FrameError::Truncated("length prefix"));
    };
    let len = check_len(*prefix, max)?;
    if rest.len() < len {
        return Err(FrameError::Truncated("payload"));
    }
    if rest.len() > len {
        return Err(FrameError::TrailingBytes(rest.len() - len));
    }
    decode_envelope(rest)
}

/// Encodes `env` as a whole plaintext frame (what [`decode_frame`] reads).
pub fn encode_plain_frame<B: Serialize>(
    env: &Envelope<B>,
    max: u32,
) -> Result<Vec<u8>, FrameError> {
    encode_value(env, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(body: Vec<u8>) -> Envelope<Vec<u8>> {
        Envelope {
            version: PROTOCOL_VERSION,
            from: NodeId(7),
            incarnation: 3,
            epoch: 42,
            seq: 1,
            body,
        }
    }

    #[test]
    fn seal_open_round_trip() {
        let (i, a) = Cipher::pair();
        let e = env(b"hello".to_vec());
        let frame = seal_frame(&e, &i, DEFAULT_MAX_FRAME).unwrap();
        let len = check_len(frame[..4].try_into().unwrap(), DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: Envelope<Vec<u8>> = open_payload(&frame[4..], &a).unwrap();
        assert_eq!(back, e);
        let plain = encode_plain_frame(&e, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(
            decode_frame::<Vec<u8>>(&plain, DEFAULT_MAX_FRAME).unwrap(),
            e
        );
    }

    /// The postcard rules stated in the module docs.
    #[test]
    fn postcard_rules_as_documented() {
        assert_eq!(postcard::to_allocvec(&300u64).unwrap(), [0xac, 0x02]);
        assert_eq!(postcard::to_allocvec(&300usize).unwrap(), [0xac, 0x02]);
        assert_eq!(postcard::to_allocvec(&-1i32).unwrap(), [1]);
        assert_eq!(postcard::to_allocvec(&1i64).unwrap(), [2]);
        assert_eq!(postcard::to_allocvec(&-2i8).unwrap(), [0xfe]);
        assert_eq!(postcard::to_allocvec(&1.0f32).unwrap(), [0, 0, 0x80, 0x3f]);
        assert_eq!(postcard::to_allocvec(&true).unwrap(), [1]);
        assert_eq!(postcard::to_allocvec(&()).unwrap(), [0u8; 0]);
        assert_eq!(postcard::to_allocvec(&[7u8, 8]).unwrap(), [7, 8]);
        assert_eq!(postcard::to_allocvec(&(1u8, 2u16)).unwrap(), [1, 2]);
        assert_eq!(postcard::to_allocvec(&"hi").unwrap(), [2, b'h', b'i']);
        assert_eq!(
            postcard::to_allocvec(&vec![1u16, 300]).unwrap(),
            [2, 1, 0xac, 0x02]
        );
        assert_eq!(postcard::to_allocvec(&Some(5u8)).unwrap(), [1, 5]);
        assert_eq!(postcard::to_allocvec(&None::<u8>).unwrap(), [0]);
        assert_eq!(postcard::to_allocvec(&NodeId(300)).unwrap(), [0xac, 0x02]);
        let mut m = std::collections::BTreeMap::new();
        m.insert(1u8, 2u8);
        assert_eq!(postcard::to_allocvec(&m).unwrap(), [1, 1, 2]);
    }

    #[test]
    fn wire_layout_is_as_documented() {
        let e = env(vec![0xAA]);
        let plain = encode_plain_frame(&e, DEFAULT_MAX_FRAME).unwrap();
        // version, from=7, incarnation=3, epoch=42, seq=1, body = len 1 + 0xAA.
        assert_eq!(&plain[4..], &[PROTOCOL_VERSION, 7, 3, 42, 1, 1, 0xAA]);
        let (i, _) = Cipher::pair();
        let frame = seal_frame(&e, &i, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(frame.len(), 4 + 7 + NOISE_TAG_LEN);
        assert_eq!(&frame[..4], &((7 + NOISE_TAG_LEN) as u32).to_be_bytes());
    }

    #[test]
    fn wrong_direction_or_cipher_or_flipped_bit_is_bad_tag() {
        let (i, a) = Cipher::pair();
        let (_, other) = Cipher::pair();
        let frame = seal_frame(&env(vec![1, 2]), &i, DEFAULT_MAX_FRAME).unwrap();
        assert!(matches!(
            open_payload::<Vec<u8>>(&frame[4..], &i),
            Err(FrameError::BadTag)
        ));
        assert!(matches!(
            open_payload::<Vec<u8>>(&frame[4..], &other),
            Err(FrameError::BadTag)
        ));
        let mut flipped = frame.clone();
        flipped[6] ^= 1;
        assert!(matches!(
            open_payload::<Vec<u8>>(&flipped[4..], &a),
            Err(FrameError::BadTag)
        ));
    }

    #[test]
    fn oversized_refused_at_sender_and_receiver() {
        let (i, _) = Cipher::pair();
        let e = env(vec![0; 100]);
        assert!(matches!(
            seal_frame(&e, &i, 64),
            Err(FrameError::TooLarge { max: 64, .. })
        ));
        assert!(matches!(
            check_len(u32::MAX.to_be_bytes(), DEFAULT_MAX_FRAME),
            Err(FrameError::TooLarge { len, .. }) if len == u64::from(u32::MAX)
        ));
    }

    #[test]
    fn bad_version_detected_before_decoding() {
        let (i, a) = Cipher::pair();
        let mut e = env(vec![]);
        e.version = 9;
        let frame = seal_frame(&e, &i, DEFAULT_MAX_FRAME).unwrap();
        assert!(matches!(
            open_payload::<Vec<u8>>(&frame[4..], &a),
            Err(FrameError::BadVersion {
                got: 9,
                expected: PROTOCOL_VERSION
            })
        ));
    }

    #[test]
    fn trailing_bytes_inside_an_authentic_payload_refused() {
        let (i, a) = Cipher::pair();
        let mut plain = postcard::to_allocvec(&env(vec![5])).unwrap();
        plain.push(0);
        let mut sealed = Vec::new();
        i.seal_into(&plain, &mut sealed).unwrap();
        assert!(matches!(
            open_payload::<Vec<u8>>(&sealed, &a),
            Err(FrameError::TrailingBytes(1))
        ));
    }

    #[test]
    fn plain_values_round_trip_and_reject_trailing() {
        let frame = encode_value(&(5u32, true), HANDSHAKE_MAX_FRAME).unwrap();
        assert_eq!(decode_value::<(u32, bool)>(&frame[4..]).unwrap(), (5, true));
        let mut extra = frame[4..].to_vec();
        extra.push(9);
        assert!(matches!(
            decode_value::<(u32, bool)>(&extra),
            Err(FrameError::TrailingBytes(1))
        ));
        assert!(matches!(
            decode_value::<(u32, bool)>(&[]),
            Err(FrameError::Truncated(_))
        ));
    }
}
