//! Hostile sessions against one server, generated from a seed: random bytes, random
//! handshake messages in random order, and random frames after a valid handshake. Every
//! hostile connection must end in a counted failure, none may succeed, and the server must
//! keep serving an honest client throughout.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

mod transport_common;

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smart_transport::frame::LEN_PREFIX;
use smart_transport::frame::{self, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION};
use smart_transport::handshake::{self, HandshakeMsg, Refusal};
use smart_transport::mem::MemNetwork;
use smart_transport::{Client, Endpoint, RawConn, Server, Transport};
use transport_common::*;

const SEED: u64 = 0x5EED_2026;

fn random_noise(rng: &mut ChaCha8Rng) -> Vec<u8> {
    // Noise messages are 32 (message 1), 96 + payload (2), 64 + payload (3) bytes.
    let len = [32usize, 48, 64, 100, 117][rng.random_range(0..5)];
    (0..len).map(|_| rng.random()).collect()
}

fn random_handshake_msg(rng: &mut ChaCha8Rng) -> HandshakeMsg {
    match rng.random_range(0..3) {
        0 => HandshakeMsg::Hello {
            magic: if rng.random_bool(0.8) {
                handshake::MAGIC
            } else {
                rng.random()
            },
            version: if rng.random_bool(0.8) {
                PROTOCOL_VERSION
            } else {
                rng.random()
            },
            noise: random_noise(rng),
        },
        1 => HandshakeMsg::Noise {
            noise: random_noise(rng),
        },
        _ => HandshakeMsg::Refused {
            reason: Refusal::BadProof,
        },
    }
}

/// A frame: a valid handshake message, random bytes with a correct prefix, or a prefix that
/// lies about the length.
fn random_frame(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 | 1 => frame::encode_value(&random_handshake_msg(rng), HANDSHAKE_MAX_FRAME).unwrap(),
        2 => {
            let n = rng.random_range(0..700);
            let mut f = (n as u32).to_be_bytes().to_vec();
            f.extend((0..n).map(|_| rng.random::<u8>()));
            f
        }
        _ => {
            let mut f = rng.random::<u32>().to_be_bytes().to_vec();
            f.extend((0..rng.random_range(0..40)).map(|_| rng.random::<u8>()));
            f
        }
    }
}

/// Sends the frames, then reads until the server closes (bounded).
async fn attack(mut raw: RawConn, frames: Vec<Vec<u8>>) {
    for f in frames {
        if raw.sink.send(f).await.is_err() {
            break;
        }
    }
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(3), raw.source.recv(1 << 20)).await {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return,
            Err(_) => panic!("server neither answered nor closed a hostile connection"),
        }
    }
}

#[tokio::test]
async fn random_handshake_garbage_never_succeeds() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let net = MemNetwork::new(SEED);
    let mut ep = server_endpoint();
    // Attackers that stop mid-handshake are cut off quickly.
    ep.limits.handshake_timeout = Duration::from_millis(300);
    let s = Server::bind(
        &net.transport("srv"),
        "srv",
        ep,
        Arc::new(TestHandler::default()),
    )
    .await
    .unwrap();
    let honest = Client::<Test>::connect(&net.transport("honest"), "srv", Endpoint::client(key()))
        .await
        .unwrap();
    let sessions = 150;
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let frames: Vec<Vec<u8>> = (0..rng.random_range(1..5))
            .map(|_| random_frame(&mut rng))
            .collect();
        let raw = net
            .transport(&format!("evil{i}"))
            .connect("srv")
            .await
            .unwrap();
        tasks.push(tokio::spawn(attack(raw, frames)));
        if i % 25 == 0 {
            assert_eq!(
                honest.request(Req::Echo(format!("{i}")), T).await,
                Ok(Resp::Text(format!("{i}"))),
                "seed {SEED:#x}, session {i}"
            );
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        eventually(T, || s.counters().handshakes_failed == sessions).await,
        "seed {SEED:#x}: {:?}",
        s.counters()
    );
    let c = s.counters();
    assert_eq!(
        c.handshakes_ok, 1,
        "only the honest client may get in: {c:?}"
    );
    assert_eq!(
        honest.request(Req::Echo("end".into()), T).await,
        Ok(Resp::Text("end".into()))
    );
}

#[tokio::test]
async fn random_frames_after_handshake_are_rejected() {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED + 1);
    let net = MemNetwork::new(SEED);
    let s = Server::bind(
        &net.transport("srv"),
        "srv",
        server_endpoint(),
        Arc::new(TestHandler::default()),
    )
    .await
    .unwrap();
    let honest = Client::<Test>::connect(&net.transport("honest"), "srv", Endpoint::client(key()))
        .await
        .unwrap();
    let sessions = 100;
    for i in 0..sessions {
        let mut raw = net
            .transport(&format!("evil{i}"))
            .connect("srv")
            .await
            .unwrap();
        handshake::initiate(&mut raw, &node_endpoint(9), None)
            .await
            .unwrap();
        // Random payloads under a correct prefix: the tag check refuses each one.
        let n = rng.random_range(0..300usize);
        let mut f = ((n) as u32).to_be_bytes().to_vec();
        f.extend((0..n).map(|_| rng.random::<u8>()));
        assert_eq!(f.len(), LEN_PREFIX + n);
        attack(raw, vec![f]).await;
    }
    assert!(
        eventually(T, || s.counters().frames_rejected == sessions).await,
        "seed {:#x}: {:?}",
        SEED + 1,
        s.counters()
    );
    assert_eq!(s.counters().frames_received, 0);
    assert_eq!(
        honest.request(Req::Echo("end".into()), T).await,
        Ok(Resp::Text("end".into()))
    );
}
