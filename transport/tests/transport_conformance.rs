//! One conformance suite run against both transports (TCP on 127.0.0.1 port 0 and the
//! in-memory network): round trips, pushes, timeouts, and bad input (wrong key, garbage,
//! oversized, truncated, forged, replayed frames) that must close only the offending
//! connection, be counted, and leave the server serving others.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

mod transport_common;

use std::sync::Arc;
use std::time::Duration;

use smart_proto::error::RemoteError;
use smart_proto::{ClusterKey, NodeId};
use smart_transport::client::ConnectError;
use smart_transport::frame::{self, Envelope, FrameError, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION};
use smart_transport::{
    Client, Endpoint, HandshakeError, Identity, Message, MessageOf, RawConn, RequestError, Server,
    ServerHandle, handshake,
};
use transport_common::*;

async fn start(fx: &dyn Fixture) -> (ServerHandle, Arc<TestHandler>) {
    let h = Arc::new(TestHandler::default());
    let s = Server::bind(
        fx.transport("srv").as_ref(),
        &fx.listen_addr(),
        server_endpoint(),
        h.clone(),
    )
    .await
    .expect("bind");
    (s, h)
}

async fn client(fx: &dyn Fixture, s: &ServerHandle, who: &str) -> Client<Test> {
    Client::connect(
        fx.transport(who).as_ref(),
        s.local_addr(),
        Endpoint::client(key()),
    )
    .await
    .expect("connect")
}

/// A good client can still do a round trip: the server survived whatever came before.
async fn still_serving(fx: &dyn Fixture, s: &ServerHandle) {
    let c = client(fx, s, "good").await;
    assert_eq!(
        c.request(Req::Echo("still here".into()), T).await.unwrap(),
        Resp::Text("still here".into())
    );
}

/// A raw connection that completed the handshake as node 9.
async fn raw_authenticated(fx: &dyn Fixture, s: &ServerHandle) -> (RawConn, handshake::Session) {
    let mut raw = fx.transport("raw").connect(s.local_addr()).await.unwrap();
    let session = handshake::initiate(&mut raw, &node_endpoint(9), Some(NodeId(1)))
        .await
        .expect("handshake");
    (raw, session)
}

fn env(seq: u64, from: u64, body: MessageOf<Test>) -> Envelope<MessageOf<Test>> {
    Envelope {
        version: PROTOCOL_VERSION,
        from: NodeId(from),
        incarnation: 1,
        epoch: 0,
        seq,
        body,
    }
}

fn request(id: u64, s: &str) -> MessageOf<Test> {
    Message::Request {
        id,
        body: Req::Echo(s.into()),
    }
}

/// Reads until the connection ends; returns the frames' count and the ending error.
async fn drain(raw: &mut RawConn) -> (usize, FrameError) {
    let mut n = 0;
    loop {
        match tokio::time::timeout(T, raw.source.recv(1 << 20)).await {
            Ok(Ok(_)) => n += 1,
            Ok(Err(e)) => return (n, e),
            Err(_) => panic!("connection was not closed by the server"),
        }
    }
}

async fn round_trip(fx: &dyn Fixture) {
    let (s, _h) = start(fx).await;
    let c = client(fx, &s, "c1").await;
    assert_eq!(
        c.peer(),
        Identity::Node {
            id: NodeId(1),
            incarnation: 7
        }
    );
    assert_eq!(
        c.request(Req::Echo("hi".into()), T).await.unwrap(),
        Resp::Text("hi".into())
    );
    assert_eq!(
        c.request(Req::Fail, T).await,
        Err(RequestError::Fault(RemoteError::Refused {
            reason: "boom".into()
        }))
    );
    // A panicking handler answers with a fault and the connection stays up.
    assert_eq!(
        c.request(Req::Panic, T).await,
        Err(RequestError::Fault(RemoteError::Internal {
            reason: "request handler failed".into()
        }))
    );
    assert!(!c.is_closed());
    // Concurrent requests are correlated by id.
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.request(Req::Echo(format!("m{i}")), T).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), Resp::Text(format!("m{i}")));
    }
    // The envelope carries the sender's epoch.
    let ep = node_endpoint(5);
    ep.epoch.store(33, std::sync::atomic::Ordering::Relaxed);
    let n = Client::<Test>::connect(fx.transport("n5").as_ref(), s.local_addr(), ep)
        .await
        .unwrap();
    assert_eq!(
        n.request(Req::WhoAmI, T).await.unwrap(),
        Resp::Text("n5/1 epoch 33".into())
    );
    let snap = s.counters();
    assert!(snap.handshakes_ok >= 2, "{snap:?}");
    assert!(snap.frames_received >= 43, "{snap:?}");
    assert_eq!(snap.frames_rejected, 0);
}

async fn notifications_both_ways(fx: &dyn Fixture) {
    let (s, h) = start(fx).await;
    let sub = client(fx, &s, "sub").await;
    sub.request(Req::Subscribe, T).await.unwrap();
    let pusher = client(fx, &s, "pusher").await;
    for i in 0..3 {
        assert_eq!(
            pusher.request(Req::Push(format!("e{i}")), T).await.unwrap(),
            Resp::Text("pushed to 1".into())
        );
    }
    for i in 0..3 {
        let n = tokio::time::timeout(T, sub.next_notification())
            .await
            .unwrap();
        assert_eq!(n, Some(format!("e{i}")));
    }
    sub.notify("from client".into()).unwrap();
    assert!(
        eventually(T, || h.notes.lock().unwrap().iter().any(|(who, n)| *who
            == sub_identity(&sub, &h)
            && n == "from client"))
        .await
    );
}

fn sub_identity(_c: &Client<Test>, h: &TestHandler) -> Identity {
    h.subscribers.lock().unwrap()[0].peer()
}

async fn request_timeout(fx: &dyn Fixture) {
    let (s, _h) = start(fx).await;
    let c = client(fx, &s, "c").await;
    let t = Duration::from_millis(200);
    assert_eq!(
        c.request(Req::Sleep(u64::MAX), t).await,
        Err(RequestError::Timeout(t))
    );
    // The connection is still usable and a late answer does not confuse later requests.
    assert_eq!(
        c.request(Req::Echo("after".into()), T).await.unwrap(),
        Resp::Text("after".into())
    );
    assert_eq!(
        c.request(Req::Sleep(10), T).await.unwrap(),
        Resp::Text("slept".into())
    );
}

async fn oversized_messages_fail_at_the_sender(fx: &dyn Fixture) {
    // A small limit keeps this cheap on a loaded machine; the logic is the same at 1 MiB.
    let limits = smart_transport::Limits {
        max_frame: 64 * 1024,
        ..Default::default()
    };
    let s = Server::bind(
        fx.transport("srv").as_ref(),
        &fx.listen_addr(),
        server_endpoint().with_limits(limits),
        Arc::new(TestHandler::default()),
    )
    .await
    .unwrap();
    let c = Client::<Test>::connect(
        fx.transport("c").as_ref(),
        s.local_addr(),
        Endpoint::client(key()).with_limits(limits),
    )
    .await
    .unwrap();
    // A response above the limit becomes a fault instead of killing the connection.
    match c.request(Req::Big(100_000), T).await {
        Err(RequestError::Fault(RemoteError::Internal { reason: m })) => {
            assert!(m.contains("exceeds the limit"), "{m}")
        }
        other => panic!("expected a fault, got {other:?}"),
    }
    match c.request(Req::Blob(vec![1; 100_000]), T).await {
        Err(RequestError::NotSent(m)) => assert!(m.contains("exceeds the limit"), "{m}"),
        other => panic!("expected NotSent, got {other:?}"),
    }
    assert_eq!(
        c.request(Req::Big(60_000), T).await.unwrap(),
        Resp::Bytes(vec![7; 60_000])
    );
}

async fn wrong_key_refused_and_counted(fx: &dyn Fixture) {
    let (s, _h) = start(fx).await;
    let r = Client::<Test>::connect(
        fx.transport("evil").as_ref(),
        s.local_addr(),
        Endpoint::client(other_key()),
    )
    .await;
    match r {
        Err(ConnectError::Handshake {
            source: HandshakeError::BadKey,
            ..
        }) => {}
        other => panic!("expected BadKey, got {other:?}"),
    }
    // The server cannot decrypt the client's third handshake message (the cluster key is
    // mixed into it) and counts a bad key.
    assert!(eventually(T, || s.counters().handshakes_bad_key >= 1).await);
    still_serving(fx, &s).await;
}

async fn garbage_and_oversized_handshakes_refused(fx: &dyn Fixture) {
    let (s, _h) = start(fx).await;
    // Garbage instead of a Hello.
    let mut raw = fx.transport("g1").connect(s.local_addr()).await.unwrap();
    let mut junk = 200u32.to_be_bytes().to_vec();
    junk.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    raw.sink.send(junk).await.unwrap();
    let (_, end) = drain(&mut raw).await;
    assert!(!matches!(end, FrameError::TooLarge { .. }), "{end}");
    // A Hello announcing a huge frame: refused from the prefix alone.
    let mut raw = fx.transport("g2").connect(s.local_addr()).await.unwrap();
    let mut huge = (HANDSHAKE_MAX_FRAME + 1).to_be_bytes().to_vec();
    huge.extend(vec![0u8; HANDSHAKE_MAX_FRAME as usize + 1]);
    raw.sink.send(huge).await.unwrap();
    drain(&mut raw).await;
    // A Hello with a wrong magic.
    let mut raw = fx.transport("g3").connect(s.local_addr()).await.unwrap();
    let hello = handshake::HandshakeMsg::Hello {
        magic: *b"HTTP",
        version: PROTOCOL_VERSION,
        noise: vec![3; 32],
    };
    raw.sink
        .send(frame::encode_value(&hello, HANDSHAKE_MAX_FRAME).unwrap())
        .await
        .unwrap();
    drain(&mut raw).await;
    assert!(eventually(T, || s.counters().handshakes_failed >= 3).await);
    assert_eq!(s.counters().handshakes_bad_key, 0);
    still_serving(fx, &s).await;
}

async fn other_protocol_version_refused(fx: &dyn Fixture) {
    let (s, _h) = start(fx).await;
    let mut raw = fx.transport("v9").connect(s.local_addr()).await.unwrap();
    let hello = handshake::HandshakeMsg::Hello {
        magic: handshake::MAGIC,
        version: 9,
        noise: vec![3; 32],
    };
    raw.sink
        .send(frame::encode_value(&hello, HANDSHAKE_MAX_FRAME).unwrap())
        .await
        .unwrap();
    let answer = raw.source.recv(HANDSHAKE_MAX_FRAME).await.unwrap();
    assert_eq!(
        frame::decode_value::<handshake::HandshakeMsg>(&answer).unwrap(),
        handshake::HandshakeMsg::Refused {
            reason: handshake::Refusal::BadVersion
        }
    );
    let (frames, _) = drain(&mut raw).await;
    assert_eq!(frames, 0);
    assert!(eventually(T, || s.counters().handshakes_failed == 1).await);
    still_serving(fx, &s).await;
}

async fn stalled_handshake_times_out(fx: &dyn Fixture) {
    let h = Arc::new(TestHandler::default());
    let mut ep = server_endpoint();
    ep.limits.handshake_timeout = Duration::from_millis(200);
    let s = Server::bind(fx.transport("srv").as_ref(), &fx.listen_addr(), ep, h)
        .await
        .unwrap();
    let mut raw = fx.transport("slow").connect(s.local_addr()).await.unwrap();
    // Say nothing: the server gives up and closes.
    let (frames, _) = drain(&mut raw).await;
    assert_eq!(frames, 0);
    assert!(eventually(T, || s.counters().handshakes_failed >= 1).await);
    still_serving(fx, &s).await;
}

/// Sends `frame` after a valid handshake and checks the server drops the connection and
/// counts one rejected frame, and keeps serving.
async fn bad_data_frame(fx: &dyn Fixture, make: impl FnOnce(&handshake::Session) -> Vec<u8>) {
    let (s, _h) = start(fx).await;
    // A peer connected before the attack keeps its connection.
    let bystander = client(fx, &s, "bystander").await;
    bystander
        .request(Req::Echo("before".into()), T)
        .await
        .unwrap();
    let (mut raw, session) = raw_authenticated(fx, &s).await;
    raw.sink.send(make(&session)).await.unwrap();
    let (frames, _) = drain(&mut raw).await;
    assert_eq!(frames, 0, "the bad frame must not be answered");
    assert!(
        eventually(T, || s.counters().frames_rejected == 1).await,
        "{:?}",
        s.counters()
    );
    assert_eq!(
        bystander.request(Req::Echo("after".into()), T).await,
        Ok(Resp::Text("after".into()))
    );
    assert!(!bystander.is_closed());
    still_serving(fx, &s).await;
}

async fn oversized_data_frame(fx: &dyn Fixture) {
    bad_data_frame(fx, |_| {
        let mut f = (2u32 << 20).to_be_bytes().to_vec();
        f.extend([0u8; 64]);
        f
    })
    .await;
}

async fn forged_data_frame(fx: &dyn Fixture) {
    // Sealed under another connection's keys.
    bad_data_frame(fx, |_| {
        let (other, _) = frame::Cipher::pair();
        frame::seal_frame(&env(1, 9, request(1, "x")), &other, 1 << 20).unwrap()
    })
    .await;
}

async fn reflected_data_frame(fx: &dyn Fixture) {
    // Random bytes of a plausible length: no key, nothing decrypts.
    bad_data_frame(fx, |_| {
        let mut f = 48u32.to_be_bytes().to_vec();
        f.extend((0..48u8).map(|i| i.wrapping_mul(37)));
        f
    })
    .await;
}

async fn wrong_sender_frame(fx: &dyn Fixture) {
    bad_data_frame(fx, |s| {
        frame::seal_frame(&env(1, 4, request(1, "x")), &s.cipher, 1 << 20).unwrap()
    })
    .await;
}

async fn malformed_tagged_frame(fx: &dyn Fixture) {
    // Authentic (right keys) but not an envelope.
    bad_data_frame(fx, |s| {
        let body = [PROTOCOL_VERSION, 9, 1, 0, 1, 0xFF, 0xFF, 0xFF];
        let mut f = vec![0u8; 4];
        s.cipher.seal_into(&body, &mut f).unwrap();
        let len = (f.len() - 4) as u32;
        f[..4].copy_from_slice(&len.to_be_bytes());
        f
    })
    .await;
}

async fn replayed_frame(fx: &dyn Fixture) {
    let (s, _h) = start(fx).await;
    let (mut raw, session) = raw_authenticated(fx, &s).await;
    let f = frame::seal_frame(&env(1, 9, request(1, "once")), &session.cipher, 1 << 20).unwrap();
    raw.sink.send(f.clone()).await.unwrap();
    // The first copy is served.
    let payload = raw.source.recv(1 << 20).await.unwrap();
    let answer: Envelope<MessageOf<Test>> = frame::open_payload(&payload, &session.cipher).unwrap();
    assert_eq!(
        answer.body,
        Message::Response {
            id: 1,
            body: Resp::Text("once".into())
        }
    );
    assert_eq!(answer.from, NodeId(1));
    assert_eq!(answer.seq, 1);
    // The replay is refused and closes the connection.
    raw.sink.send(f).await.unwrap();
    let (frames, _) = drain(&mut raw).await;
    assert_eq!(frames, 0);
    assert!(eventually(T, || s.counters().frames_rejected == 1).await);
    still_serving(fx, &s).await;
}

async fn truncated_frame(fx: &dyn Fixture) {
    let (s, _h) = start(fx).await;
    let (mut raw, _session) = raw_authenticated(fx, &s).await;
    let mut f = 100u32.to_be_bytes().to_vec();
    f.extend([1u8; 10]);
    raw.sink.send(f).await.unwrap();
    // Half-close: the server sees the stream end inside the frame.
    drop(raw.sink);
    assert!(
        eventually(T, || s.counters().frames_rejected == 1).await,
        "{:?}",
        s.counters()
    );
    still_serving(fx, &s).await;
}

async fn client_identity_can_be_refused(fx: &dyn Fixture) {
    struct NodesOnly;
    impl smart_transport::Handler<Test> for NodesOnly {
        async fn handle(
            &self,
            _ctx: smart_transport::RequestContext<Test>,
            _req: Req,
        ) -> Result<Resp, RemoteError> {
            Ok(Resp::Text("node".into()))
        }
        fn allow(&self, peer: &Identity) -> bool {
            matches!(peer, Identity::Node { .. })
        }
    }
    let s = Server::bind(
        fx.transport("srv").as_ref(),
        &fx.listen_addr(),
        server_endpoint(),
        Arc::new(NodesOnly),
    )
    .await
    .unwrap();
    let r = Client::<Test>::connect(
        fx.transport("c").as_ref(),
        s.local_addr(),
        Endpoint::client(key()),
    )
    .await;
    assert!(
        matches!(
            r,
            Err(ConnectError::Handshake {
                source: HandshakeError::Refused(handshake::Refusal::NotAllowed),
                ..
            })
        ),
        "{r:?}"
    );
    let n = Client::<Test>::connect(fx.transport("n").as_ref(), s.local_addr(), node_endpoint(3))
        .await
        .unwrap();
    assert_eq!(
        n.request(Req::WhoAmI, T).await.unwrap(),
        Resp::Text("node".into())
    );
}

async fn client_connects_to_any_reachable_node(fx: &dyn Fixture) {
    let (s, _h) = start(fx).await;
    let dead = fx.dead_addr();
    let c = Client::<Test>::connect_any(
        fx.transport("c").as_ref(),
        &[dead.clone(), s.local_addr().to_owned()],
        Endpoint::client(key()),
    )
    .await
    .unwrap();
    assert_eq!(
        c.request(Req::Echo("any".into()), T).await.unwrap(),
        Resp::Text("any".into())
    );
    let none =
        Client::<Test>::connect_any(fx.transport("c").as_ref(), &[dead], Endpoint::client(key()))
            .await;
    assert!(matches!(none, Err(ConnectError::Io { .. })), "{none:?}");
}

async fn server_shutdown_closes_clients(fx: &dyn Fixture) {
    let (s, _h) = start(fx).await;
    let c = client(fx, &s, "c").await;
    c.request(Req::Echo("x".into()), T).await.unwrap();
    s.shutdown().await;
    assert_eq!(
        tokio::time::timeout(T, c.next_notification())
            .await
            .unwrap(),
        None
    );
    assert!(c.is_closed());
    assert_eq!(
        c.request(Req::Echo("y".into()), T).await,
        Err(RequestError::Disconnected)
    );
}

async fn connection_limit(fx: &dyn Fixture) {
    let mut ep = server_endpoint();
    ep.limits.max_silent = 2;
    ep.limits.max_connections = 1;
    let s = Server::bind(
        fx.transport("srv").as_ref(),
        &fx.listen_addr(),
        ep,
        Arc::new(TestHandler::default()),
    )
    .await
    .unwrap();
    // Two idle connections fill the silent quota; a third evicts the oldest, never itself;
    // a real client leaves that pool as soon as it speaks: idle sockets cannot lock it out.
    let mut a = fx.transport("a").connect(s.local_addr()).await.unwrap();
    let _b = fx.transport("b").connect(s.local_addr()).await.unwrap();
    assert!(eventually(T, || s.counters().connections_accepted == 2).await);
    let _c = fx.transport("c").connect(s.local_addr()).await.unwrap();
    let (frames, _) = drain(&mut a).await;
    assert_eq!(frames, 0);
    assert!(eventually(T, || s.counters().handshakes_evicted == 1).await);
    // A real client still gets in (the quota is full of idle ones again: it evicts one).
    let good = client(fx, &s, "good").await;
    assert_eq!(
        good.request(Req::Echo("in".into()), T).await.unwrap(),
        Resp::Text("in".into())
    );
    // One authenticated connection is the limit here: a second is closed and counted.
    let second = client(fx, &s, "second").await;
    assert!(second.request(Req::Echo("x".into()), T).await.is_err());
    assert!(eventually(T, || s.counters().connections_refused == 1).await);
    // Nodes have a pool of their own: a full client pool never keeps a member out.
    let n = Client::<Test>::connect(fx.transport("n").as_ref(), s.local_addr(), node_endpoint(3))
        .await
        .unwrap();
    assert_eq!(
        n.request(Req::Echo("member".into()), T).await.unwrap(),
        Resp::Text("member".into())
    );
    assert_eq!(s.counters().connections_refused, 1);
    // Once the slot frees up (when the server notices the close, which takes its own time),
    // clients are served again: wait for a served request, not for a fixed time.
    drop(good);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let c = client(fx, &s, "again").await;
        if let Ok(r) = c.request(Req::Echo("again".into()), T).await {
            assert_eq!(r, Resp::Text("again".into()));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed slot was never reused: {:?}",
            s.counters()
        );
    }
}

#[test]
fn unused_key_helper_is_distinct() {
    // Guards the fixtures: the "wrong key" really differs from the cluster key.
    let a: &ClusterKey = &key();
    assert!(!other_key().verify(&[b"x"], &a.sign(&[b"x"])));
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod tcp {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::TcpFix).await
                }
            )*
        }
        mod mem {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(&super::MemFix::new()).await
                }
            )*
        }
    };
}

/// A client that neither asks nor is told anything for `client_idle_timeout` is closed and
/// counted; one with a request in progress, or one that is sent events, is not.
async fn idle_clients_are_closed_busy_ones_are_not(fx: &dyn Fixture) {
    let idle = Duration::from_millis(300);
    let h = Arc::new(TestHandler::default());
    let s = Server::bind(
        fx.transport("srv").as_ref(),
        &fx.listen_addr(),
        server_endpoint().with_limits(smart_transport::Limits {
            client_idle_timeout: idle,
            ..Default::default()
        }),
        h.clone(),
    )
    .await
    .expect("bind");
    let quiet = client(fx, &s, "quiet").await;
    quiet.request(Req::Echo("once".into()), T).await.unwrap();
    let sub = client(fx, &s, "sub").await;
    sub.request(Req::Subscribe, T).await.unwrap();
    let slow = client(fx, &s, "slow").await;
    let pusher = client(fx, &s, "pusher").await;
    // The slow client's one request lasts three idle periods; the subscriber hears an
    // event every 100 ms from the pusher, which asks every 100 ms.
    let slow_answer = tokio::spawn(async move {
        let r = slow.request(Req::Sleep(900), T).await;
        (r, slow)
    });
    for i in 0..10 {
        pusher.request(Req::Push(format!("e{i}")), T).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (r, slow) = slow_answer.await.unwrap();
    assert_eq!(r, Ok(Resp::Text("slept".into())));
    assert!(!slow.is_closed() && !sub.is_closed() && !pusher.is_closed());
    for i in 0..10 {
        let n = tokio::time::timeout(T, sub.next_notification())
            .await
            .unwrap();
        assert_eq!(n, Some(format!("e{i}")));
    }
    assert!(
        eventually(T, || quiet.is_closed()).await,
        "the quiet client stays"
    );
    assert!(s.counters().clients_idle_closed >= 1);
    still_serving(fx, &s).await;
}

suite!(
    round_trip,
    notifications_both_ways,
    request_timeout,
    oversized_messages_fail_at_the_sender,
    wrong_key_refused_and_counted,
    garbage_and_oversized_handshakes_refused,
    other_protocol_version_refused,
    stalled_handshake_times_out,
    oversized_data_frame,
    forged_data_frame,
    reflected_data_frame,
    wrong_sender_frame,
    malformed_tagged_frame,
    replayed_frame,
    truncated_frame,
    client_identity_can_be_refused,
    server_shutdown_closes_clients,
    client_connects_to_any_reachable_node,
    connection_limit,
    idle_clients_are_closed_busy_ones_are_not,
);
