//! Transport figures, printed (not asserted on time: every request must come back with its
//! own answer). Run in release mode by `.ci/run`'s benchmark step, or by hand:
//!
//! ```text
//! cargo nextest run --release -p smart-transport --test transport_bench \
//!     --run-ignored only --no-capture
//! ```
//!
//! Prints: frame seal+open cost for small and 64 KiB bodies, encrypted (Noise
//! ChaCha20-Poly1305, what the transport does) and, for comparison, HMAC-SHA256-tagged
//! only (what it did before the Noise handshake); the handshake (connect + Noise XXpsk3) over TCP
//! loopback; request round-trip time over TCP loopback (p50/p99) through the plain `Client`
//! and through a `Peer` actor; and request throughput with concurrent requesters.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

mod transport_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use smart_proto::stats::percentile_sorted;
use smart_proto::{ClusterKey, NodeId};
use smart_transport::frame::{
    Cipher, DEFAULT_MAX_FRAME, Envelope, LEN_PREFIX, PROTOCOL_VERSION, open_payload, seal_frame,
};
use smart_transport::tcp::TcpTransport;
use smart_transport::{Client, Endpoint, Peer, PeerArgs, Server, peer};
use transport_common::*;

/// Percentile `q` of durations ([`smart_proto::stats`], nearest rank).
fn pct(sorted: &[Duration], q: f64) -> Duration {
    let secs: Vec<f64> = sorted.iter().map(Duration::as_secs_f64).collect();
    Duration::from_secs_f64(percentile_sorted(&secs, q).expect("samples"))
}

fn envelope(body_len: usize) -> Envelope<Vec<u8>> {
    Envelope {
        version: PROTOCOL_VERSION,
        from: NodeId(3),
        incarnation: 1,
        epoch: 5,
        seq: 1,
        body: vec![1u8; body_len],
    }
}

fn codec(body_len: usize, n: usize) {
    let (i, a) = Cipher::pair();
    let env = envelope(body_len);
    let start = Instant::now();
    let mut total = 0;
    let mut frame_len = 0;
    for _ in 0..n {
        let f = seal_frame(&env, &i, DEFAULT_MAX_FRAME).unwrap();
        let back: Envelope<Vec<u8>> = open_payload(&f[LEN_PREFIX..], &a).unwrap();
        total += back.body.len();
        frame_len = f.len();
    }
    let per = start.elapsed() / n as u32;
    println!(
        "codec, encrypted (ChaCha20-Poly1305): seal+open of a {body_len}-byte body: {:.2} us/frame (frame {frame_len} bytes, {total} checked)",
        per.as_secs_f64() * 1e6,
    );
}

/// The scheme before the Noise handshake: postcard envelope plus an HMAC-SHA256 tag under a session
/// key, no encryption (reproduced here only to print the comparison).
fn hmac_codec(body_len: usize, n: usize) {
    let key = ClusterKey::from_bytes(&[9; 32]).unwrap();
    let env = envelope(body_len);
    let start = Instant::now();
    let mut total = 0;
    for _ in 0..n {
        let mut f = vec![0u8; LEN_PREFIX];
        f.extend(postcard::to_allocvec(&env).unwrap());
        let tag = key.sign(&[&[1u8], &f[LEN_PREFIX..]]);
        f.extend_from_slice(&tag);
        let body = &f[LEN_PREFIX..f.len() - 32];
        assert!(key.verify(&[&[1u8], body], &f[f.len() - 32..]));
        let back: Envelope<Vec<u8>> = postcard::from_bytes(body).unwrap();
        total += back.body.len();
    }
    let per = start.elapsed() / n as u32;
    println!(
        "codec, before (HMAC-SHA256 tag only): seal+open of a {body_len}-byte body: {:.2} us/frame ({total} checked)",
        per.as_secs_f64() * 1e6,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release by .ci/run's benchmark step (--run-ignored only)"]
async fn transport_figures() {
    codec(100, 20_000);
    hmac_codec(100, 20_000);
    codec(64 * 1024, 500);
    hmac_codec(64 * 1024, 500);

    let s = Server::bind(
        &TcpTransport,
        "127.0.0.1:0",
        server_endpoint(),
        Arc::new(TestHandler::default()),
    )
    .await
    .unwrap();
    let c = Arc::new(
        Client::<Test>::connect(&TcpTransport, s.local_addr(), Endpoint::client(key()))
            .await
            .unwrap(),
    );
    let hs = 300;
    let mut times = Vec::with_capacity(hs);
    for _ in 0..hs {
        let t = Instant::now();
        let c = Client::<Test>::connect(&TcpTransport, s.local_addr(), Endpoint::client(key()))
            .await
            .unwrap();
        times.push(t.elapsed());
        drop(c);
    }
    times.sort();
    println!(
        "connect + Noise XXpsk3 handshake over TCP loopback, {hs} sequential: p50 {:?} p99 {:?}",
        pct(&times, 0.5),
        pct(&times, 0.99)
    );

    let n = 2000;
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = c.request(Req::Echo(format!("{i}")), T).await.unwrap();
        rtts.push(t.elapsed());
        assert_eq!(r, Resp::Text(format!("{i}")));
    }
    rtts.sort();
    println!(
        "client rtt over TCP loopback, {n} sequential small requests: p50 {:?} p99 {:?}",
        pct(&rtts, 0.5),
        pct(&rtts, 0.99)
    );

    let mut args = PeerArgs::new(Arc::new(TcpTransport), s.local_addr(), node_endpoint(2));
    args.expect = Some(NodeId(1));
    let p = Peer::<Test>::start(None, args).await.unwrap();
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = peer::request(&p, Req::Echo(format!("{i}")), T)
            .await
            .unwrap();
        rtts.push(t.elapsed());
        assert_eq!(r, Resp::Text(format!("{i}")));
    }
    rtts.sort();
    println!(
        "peer actor rtt over TCP loopback, {n} sequential small requests: p50 {:?} p99 {:?}",
        pct(&rtts, 0.5),
        pct(&rtts, 0.99)
    );

    let workers = 32;
    let per_worker = 500;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_worker {
                let r = c.request(Req::Echo(format!("{w}.{i}")), T).await.unwrap();
                assert_eq!(r, Resp::Text(format!("{w}.{i}")));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let el = start.elapsed();
    println!(
        "client throughput, {workers} concurrent requesters, {} requests: {:.0} req/s",
        workers * per_worker,
        (workers * per_worker) as f64 / el.as_secs_f64()
    );
    p.stop(None);
}
