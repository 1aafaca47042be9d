//! Property tests of the frame codec: round trips, and arbitrary or hostile bytes that must
//! give a typed error, never a panic, and never an allocation of the announced length.
//!
//! A counting global allocator records the largest single allocation made by this thread,
//! so "never allocates the hostile length" is checked, not assumed.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use smart_proto::NodeId;
use smart_proto::error::RemoteError;
use smart_transport::Message;
use smart_transport::frame::{
    Cipher, DEFAULT_MAX_FRAME, Envelope, FrameError, HANDSHAKE_MAX_FRAME, LEN_PREFIX,
    PROTOCOL_VERSION, check_len, decode_frame, decode_value, encode_plain_frame, open_payload,
    seal_frame,
};
use smart_transport::handshake::HandshakeMsg;

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(layout.size())));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new_size)));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the largest allocation it made on this thread.
fn largest_alloc<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|m| m.set(0));
    let r = f();
    (r, LARGEST.with(|m| m.get()))
}

type Body = Message<Vec<u8>, String, (u32, bool)>;

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(id, body)| Message::Request { id, body }),
        (any::<u64>(), ".{0,40}").prop_map(|(id, body)| Message::Response { id, body }),
        (any::<u64>(), 0u8..4, ".{0,40}").prop_map(|(id, kind, text)| Message::Fault {
            id,
            error: match kind {
                0 => RemoteError::Refused { reason: text },
                1 => RemoteError::Unavailable { what: text },
                2 => RemoteError::TimedOut,
                _ => RemoteError::Internal { reason: text },
            },
        }),
        any::<(u32, bool)>().prop_map(|body| Message::Notify { body }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope<Body>> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        body(),
    )
        .prop_map(|(from, incarnation, epoch, seq, body)| Envelope {
            version: PROTOCOL_VERSION,
            from: NodeId(from),
            incarnation,
            epoch,
            seq,
            body,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sealed_frames_round_trip(env in envelope(), to_initiator in any::<bool>()) {
        let (i, a) = Cipher::pair();
        let (tx, rx) = if to_initiator { (&a, &i) } else { (&i, &a) };
        let frame = seal_frame(&env, tx, DEFAULT_MAX_FRAME).unwrap();
        let len = check_len(frame[..LEN_PREFIX].try_into().unwrap(), DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(len, frame.len() - LEN_PREFIX);
        // The sender's own receiving side (a reflection) refuses it.
        prop_assert!(matches!(
            open_payload::<Body>(&frame[LEN_PREFIX..], tx),
            Err(FrameError::BadTag)
        ));
        let opened: Envelope<Body> = open_payload(&frame[LEN_PREFIX..], rx).unwrap();
        prop_assert_eq!(&opened, &env);
        let plain = encode_plain_frame(&env, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(&decode_frame::<Body>(&plain, DEFAULT_MAX_FRAME).unwrap(), &env);
    }

    #[test]
    fn handshake_messages_round_trip(
        magic in any::<[u8; 4]>(),
        version in any::<u8>(),
        noise in proptest::collection::vec(any::<u8>(), 0..200),
        which in 0u8..3,
        id in any::<u64>(),
        inc in any::<u64>(),
    ) {
        use smart_transport::handshake::{Identity, Refusal, Verdict};
        let m = match which {
            0 => HandshakeMsg::Hello { magic, version, noise },
            1 => HandshakeMsg::Noise { noise },
            _ => HandshakeMsg::Refused { reason: Refusal::WrongKey },
        };
        let frame = smart_transport::frame::encode_value(&m, HANDSHAKE_MAX_FRAME).unwrap();
        prop_assert_eq!(decode_value::<HandshakeMsg>(&frame[LEN_PREFIX..]).unwrap(), m);
        for ident in [Identity::Node { id: NodeId(id), incarnation: inc }, Identity::Client { id, scope: None }] {
            let b = postcard::to_allocvec(&ident).unwrap();
            prop_assert_eq!(decode_value::<Identity>(&b).unwrap(), ident);
        }
        for v in [Verdict::Welcome, Verdict::Refused(Refusal::NotAllowed)] {
            let b = postcard::to_allocvec(&v).unwrap();
            prop_assert_eq!(decode_value::<Verdict>(&b).unwrap(), v);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let ((), largest) = largest_alloc(|| {
            let _ = decode_frame::<Body>(&bytes, DEFAULT_MAX_FRAME);
            let _ = open_payload::<Body>(&bytes, &Cipher::pair().1);
            let _ = decode_value::<HandshakeMsg>(&bytes);
        });
        // Decoding never allocates much more than the input itself.
        prop_assert!(largest <= 4096 + 8 * bytes.len(), "allocated {largest} for {} bytes", bytes.len());
    }

    #[test]
    fn hostile_length_prefix_refused_without_allocating(
        len in (HANDSHAKE_MAX_FRAME + 1)..=u32::MAX,
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend(&tail);
        let (r, largest) = largest_alloc(|| decode_frame::<Body>(&frame, HANDSHAKE_MAX_FRAME));
        let is_too_large = matches!(r, Err(FrameError::TooLarge { len: l, max: HANDSHAKE_MAX_FRAME }) if l == u64::from(len));
        prop_assert!(is_too_large);
        prop_assert!(largest < 1024, "allocated {largest}");
    }

    #[test]
    fn truncations_and_bit_flips_are_refused(env in envelope(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let plain = encode_plain_frame(&env, DEFAULT_MAX_FRAME).unwrap();
        let at = cut.index(plain.len());
        prop_assert!(decode_frame::<Body>(&plain[..at], DEFAULT_MAX_FRAME).is_err());
        // Any flipped bit of an encrypted payload breaks its tag.
        let (tx, rx) = Cipher::pair();
        let frame = seal_frame(&env, &tx, DEFAULT_MAX_FRAME).unwrap();
        let i = LEN_PREFIX + flip.index(frame.len() - LEN_PREFIX);
        let mut bad = frame.clone();
        bad[i] ^= 1 << bit;
        prop_assert!(matches!(
            open_payload::<Body>(&bad[LEN_PREFIX..], &rx),
            Err(FrameError::BadTag)
        ));
    }
}

/// An authentic envelope whose byte-string length claims 2^62 bytes: postcard must refuse it
/// from the remaining length, not try to allocate it.
#[test]
fn hostile_inner_length_does_not_allocate() {
    // version, from, incarnation, epoch, seq, Message::Request (0), id 1, then Vec<u8> with
    // length varint 2^62.
    let mut body = vec![PROTOCOL_VERSION, 1, 1, 0, 1, 0, 1];
    body.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
    body.extend([0u8; 16]);
    let (tx, rx) = Cipher::pair();
    let mut payload = Vec::new();
    tx.seal_into(&body, &mut payload).unwrap();
    let (r, largest) = largest_alloc(|| open_payload::<Body>(&payload, &rx));
    assert!(
        matches!(r, Err(FrameError::Truncated(_) | FrameError::Malformed(_))),
        "{r:?}"
    );
    assert!(largest < 1 << 20, "allocated {largest}");
}

/// The same over a real socket: a peer announcing a 4 GiB frame is refused from the prefix.
#[tokio::test]
async fn tcp_source_refuses_hostile_prefix_before_allocating() {
    use smart_transport::Transport;
    use smart_transport::tcp::TcpTransport;
    let mut l = TcpTransport.bind("127.0.0.1:0").await.unwrap();
    let mut out = TcpTransport.connect(&l.local_addr()).await.unwrap();
    let mut inbound = l.accept().await.unwrap();
    let mut frame = u32::MAX.to_be_bytes().to_vec();
    frame.extend([0u8; 100]);
    out.sink.send(frame).await.unwrap();
    LARGEST.with(|m| m.set(0));
    let r = inbound.source.recv(DEFAULT_MAX_FRAME).await;
    let largest = LARGEST.with(|m| m.get());
    assert!(
        matches!(r, Err(FrameError::TooLarge { len, max: DEFAULT_MAX_FRAME }) if len == u64::from(u32::MAX)),
        "{r:?}"
    );
    assert!(largest < 1 << 20, "allocated {largest}");
}
