//! The per-peer actor over both transports: reconnection after the server dies and comes
//! back, deadlines, notifications pushed to it, a wrong node at the address; and, on the
//! in-memory network, link cuts, heals and frame drops (also under paused time).

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

mod transport_common;

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use smart_proto::NodeId;
use smart_transport::peer::{self, LinkState};
use smart_transport::{
    Backoff, Endpoint, Identity, Peer, PeerArgs, PeerMsg, RequestError, Server, ServerHandle,
};
use tokio::sync::mpsc;
use transport_common::*;

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    }
}

async fn start_at(fx: &dyn Fixture, addr: &str) -> (ServerHandle, Arc<TestHandler>) {
    let h = Arc::new(TestHandler::default());
    let s = Server::bind(
        fx.transport("srv").as_ref(),
        addr,
        server_endpoint(),
        h.clone(),
    )
    .await
    .expect("bind");
    (s, h)
}

async fn spawn_peer(
    fx: &dyn Fixture,
    addr: &str,
    ep: Endpoint,
    expect: Option<NodeId>,
) -> (ActorRef<PeerMsg<Test>>, mpsc::Receiver<(Identity, String)>) {
    let (tx, rx) = mpsc::channel(16);
    let mut args = PeerArgs::new(fx.transport("n2"), addr, ep);
    args.expect = expect;
    args.backoff = fast_backoff();
    args.notifications = Some(tx);
    args.seed = 7;
    (Peer::start(None, args).await.expect("spawn"), rx)
}

async fn echo(p: &ActorRef<PeerMsg<Test>>, s: &str) -> Result<Resp, RequestError> {
    peer::request(p, Req::Echo(s.into()), Duration::from_millis(500)).await
}

/// Retries until a request succeeds, at most `limit`; returns how many attempts it took.
async fn until_ok(p: &ActorRef<PeerMsg<Test>>, limit: Duration) -> usize {
    let start = std::time::Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        if echo(p, "ping").await == Ok(Resp::Text("ping".into())) {
            return n;
        }
        assert!(
            start.elapsed() < limit,
            "no successful request within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn reconnects_after_server_restart(fx: &dyn Fixture) {
    let (s, _) = start_at(fx, &fx.listen_addr()).await;
    let addr = s.local_addr().to_owned();
    let ep = node_endpoint(2);
    let counters = ep.counters.clone();
    let (p, _) = spawn_peer(fx, &addr, ep, Some(NodeId(1))).await;
    // A request made while the first connection is opening waits for it.
    assert_eq!(echo(&p, "first").await, Ok(Resp::Text("first".into())));

    s.shutdown().await;
    // With the server gone, requests fail (fast, or at their deadline) but get an answer.
    let r = echo(&p, "while down").await;
    assert!(
        matches!(
            r,
            Err(RequestError::Disconnected
                | RequestError::Unavailable(_)
                | RequestError::Timeout(_))
        ),
        "{r:?}"
    );
    let st = peer::status(&p, T).await.unwrap();
    assert!(matches!(st.state, LinkState::Backoff { .. }), "{st:?}");

    let (_s2, _) = start_at(fx, &addr).await;
    until_ok(&p, Duration::from_secs(5)).await;
    let snap = counters.snapshot();
    assert!(snap.reconnects >= 1, "{snap:?}");
    assert!(snap.handshakes_ok >= 2, "{snap:?}");
    p.stop(None);
}

async fn request_deadline(fx: &dyn Fixture) {
    let (s, _) = start_at(fx, &fx.listen_addr()).await;
    let ep = node_endpoint(2);
    let counters = ep.counters.clone();
    let (p, _) = spawn_peer(fx, s.local_addr(), ep, Some(NodeId(1))).await;
    let t = Duration::from_millis(150);
    let started = std::time::Instant::now();
    assert_eq!(
        peer::request(&p, Req::Sleep(u64::MAX), t).await,
        Err(RequestError::Timeout(t))
    );
    assert!(started.elapsed() >= t);
    assert_eq!(counters.snapshot().requests_timed_out, 1);
    // Still connected; nothing is left pending.
    assert_eq!(echo(&p, "ok").await, Ok(Resp::Text("ok".into())));
    let st = peer::status(&p, T).await.unwrap();
    assert_eq!(st.pending, 0);
    assert!(matches!(st.state, LinkState::Up { .. }));
    p.stop(None);
}

async fn server_push_reaches_peer(fx: &dyn Fixture) {
    let (s, _h) = start_at(fx, &fx.listen_addr()).await;
    let (p, mut notes) = spawn_peer(fx, s.local_addr(), node_endpoint(2), None).await;
    peer::request(&p, Req::Subscribe, T).await.unwrap();
    peer::request(&p, Req::Push("event".into()), T)
        .await
        .unwrap();
    let (from, n) = tokio::time::timeout(T, notes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, "event");
    assert_eq!(from.node_id(), Some(NodeId(1)));
    p.stop(None);
}

async fn wrong_node_at_address(fx: &dyn Fixture) {
    let (s, _) = start_at(fx, &fx.listen_addr()).await;
    let ep = node_endpoint(2);
    let counters = ep.counters.clone();
    let (p, _) = spawn_peer(fx, s.local_addr(), ep, Some(NodeId(99))).await;
    let r = echo(&p, "x").await;
    assert!(
        matches!(&r, Err(RequestError::Unavailable(m)) if m.contains("expected node n99")),
        "{r:?}"
    );
    assert!(counters.snapshot().connects_failed >= 1);
    p.stop(None);
}

async fn wrong_key_peer_keeps_failing_and_counting(fx: &dyn Fixture) {
    let (s, _) = start_at(fx, &fx.listen_addr()).await;
    let ep = Endpoint::node(NodeId(2), 1, other_key());
    let counters = ep.counters.clone();
    let (p, _) = spawn_peer(fx, s.local_addr(), ep, Some(NodeId(1))).await;
    let r = echo(&p, "x").await;
    assert!(
        matches!(&r, Err(RequestError::Unavailable(m)) if m.contains("wrong cluster key")),
        "{r:?}"
    );
    // It retries with backoff, failing each time, and both sides count.
    assert!(eventually(T, || counters.snapshot().reconnects >= 2).await);
    assert!(eventually(T, || counters.snapshot().handshakes_bad_key >= 2).await);
    assert!(s.counters().handshakes_failed >= 2, "{:?}", s.counters());
    p.stop(None);
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

suite!(
    reconnects_after_server_restart,
    request_deadline,
    server_push_reaches_peer,
    wrong_node_at_address,
    wrong_key_peer_keeps_failing_and_counting,
);

#[tokio::test]
async fn mem_link_cut_fails_fast_and_heal_recovers() {
    let fx = MemFix::new();
    let (s, _) = start_at(&fx, "srv").await;
    let (p, _) = spawn_peer(&fx, s.local_addr(), node_endpoint(2), Some(NodeId(1))).await;
    assert_eq!(echo(&p, "a").await, Ok(Resp::Text("a".into())));

    // A request in flight when the link is cut fails at once, not at its deadline.
    let p2 = p.clone();
    let slow = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = peer::request(&p2, Req::Sleep(u64::MAX), Duration::from_secs(10)).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    fx.0.cut("n2", "srv");
    let (r, took) = slow.await.unwrap();
    assert_eq!(r, Err(RequestError::Disconnected));
    assert!(took < Duration::from_secs(5), "{took:?}");

    // While cut, requests fail fast (unreachable) instead of hanging.
    let started = std::time::Instant::now();
    let r = echo(&p, "cut").await;
    assert!(
        matches!(
            r,
            Err(RequestError::Unavailable(_) | RequestError::Timeout(_))
        ),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    fx.0.heal("n2", "srv");
    until_ok(&p, Duration::from_secs(5)).await;
    p.stop(None);
}

#[tokio::test]
async fn mem_dropped_frames_time_out() {
    let fx = MemFix::new();
    let (s, _) = start_at(&fx, "srv").await;
    let (p, _) = spawn_peer(&fx, s.local_addr(), node_endpoint(2), Some(NodeId(1))).await;
    assert_eq!(echo(&p, "a").await, Ok(Resp::Text("a".into())));
    // Responses are lost: requests reach the server but answers never come back.
    fx.0.set_drop_rate("srv", "n2", 1.0);
    let t = Duration::from_millis(100);
    assert_eq!(
        peer::request(&p, Req::Echo("lost".into()), t).await,
        Err(RequestError::Timeout(t))
    );
    assert!(fx.0.frames_dropped() >= 1);
    fx.0.set_drop_rate("srv", "n2", 0.0);
    // Frames are encrypted with implicit nonces: the gap a lost frame leaves is detected by
    // the next one, which fails to decrypt, and the connection is replaced (over TCP frames
    // are never lost, so this only happens on the simulated network).
    until_ok(&p, Duration::from_secs(5)).await;
    assert_eq!(echo(&p, "back").await, Ok(Resp::Text("back".into())));
    p.stop(None);
}

/// Under paused time so that a slow machine cannot turn a delivered request into a timeout.
#[tokio::test(start_paused = true)]
async fn mem_partial_loss_is_seeded_and_counted() {
    let fx = MemFix::new();
    let (s, _) = start_at(&fx, "srv").await;
    let (p, _) = spawn_peer(&fx, s.local_addr(), node_endpoint(2), Some(NodeId(1))).await;
    assert_eq!(echo(&p, "a").await, Ok(Resp::Text("a".into())));
    fx.0.set_drop_rate("n2", "srv", 0.15);
    let (mut ok, mut timed_out, mut replaced) = (0, 0, 0);
    for i in 0..40 {
        // Past the longest backoff (200 ms) between requests: a connection replaced after a
        // loss is back before the next one, so each request is a trial of its own (without
        // the pause, paused time never lets the backoff run out and every later request
        // fails at once, unavailable).
        tokio::time::sleep(Duration::from_millis(300)).await;
        match peer::request(&p, Req::Echo(format!("{i}")), Duration::from_millis(100)).await {
            Ok(r) => {
                assert_eq!(r, Resp::Text(format!("{i}")));
                ok += 1;
            }
            // A lost frame times out its request ...
            Err(RequestError::Timeout(_)) => timed_out += 1,
            // ... and the next frame on that connection no longer decrypts (its nonce is
            // ahead), so the connection is replaced under the requests that follow.
            Err(RequestError::Disconnected | RequestError::Unavailable(_)) => replaced += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let dropped = fx.0.frames_dropped();
    println!("ok {ok}, timed out {timed_out}, replaced {replaced}, frames dropped {dropped}");
    // Each dropped frame is one request's, which times out.
    assert_eq!(dropped, timed_out);
    // The losses are drawn from the network's seed and the clock is paused: every run is
    // this same run, so the counts are exact (seed 42, 15 % of 40 requests).
    assert_eq!((ok, timed_out, replaced, dropped), (27, 7, 6, 7));
    p.stop(None);
}

/// The in-memory network under paused time, as the lead's cluster simulations run it:
/// handshakes, timeouts and backoff all follow the virtual clock.
#[tokio::test(start_paused = true)]
async fn mem_under_paused_time() {
    let fx = MemFix::new();
    let (s, _) = start_at(&fx, "srv").await;
    let (p, _) = spawn_peer(&fx, s.local_addr(), node_endpoint(2), Some(NodeId(1))).await;
    assert_eq!(echo(&p, "a").await, Ok(Resp::Text("a".into())));
    let t0 = tokio::time::Instant::now();
    let t = Duration::from_secs(30);
    assert_eq!(
        peer::request(&p, Req::Sleep(u64::MAX), t).await,
        Err(RequestError::Timeout(t))
    );
    assert!(t0.elapsed() >= t);
    fx.0.cut("n2", "srv");
    tokio::time::sleep(Duration::from_secs(1)).await;
    fx.0.heal("n2", "srv");
    // Backoff is capped at 200 ms: the next virtual second brings the link back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(echo(&p, "back").await, Ok(Resp::Text("back".into())));
    p.stop(None);
}

#[tokio::test]
async fn peer_set_addresses_nodes_by_id() {
    use smart_transport::PeerSet;
    let net = smart_transport::mem::MemNetwork::new(1);
    let mut servers = Vec::new();
    for i in 1..=3u64 {
        let name = format!("n{i}");
        let s = Server::bind(
            &net.transport(&name),
            &name,
            node_endpoint(i),
            Arc::new(TestHandler::default()),
        )
        .await
        .unwrap();
        servers.push(s);
    }
    let ep = node_endpoint(10);
    let set = PeerSet::<Test>::new(
        Arc::new(net.transport("n10")),
        ep,
        fast_backoff(),
        None,
        None,
    );
    for i in 1..=3u64 {
        set.ensure(NodeId(i), &format!("n{i}")).await.unwrap();
    }
    // Idempotent for the same address.
    let again = set.ensure(NodeId(2), "n2").await.unwrap();
    assert_eq!(again.get_id(), set.get(NodeId(2)).unwrap().get_id());
    assert_eq!(set.nodes(), vec![NodeId(1), NodeId(2), NodeId(3)]);
    for i in 1..=3u64 {
        assert_eq!(
            set.request(NodeId(i), Req::WhoAmI, T).await,
            Ok(Resp::Text("n10/1 epoch 0".into()))
        );
    }
    // Node 3 "moves" to node 1's address: the handshake sees node 1 and refuses.
    set.ensure(NodeId(3), "n1").await.unwrap();
    let r = set.request(NodeId(3), Req::Echo("x".into()), T).await;
    assert!(
        matches!(&r, Err(RequestError::Unavailable(m)) if m.contains("expected node n3")),
        "{r:?}"
    );
    set.remove(NodeId(3));
    assert!(matches!(
        set.request(NodeId(3), Req::Echo("x".into()), T).await,
        Err(RequestError::Unavailable(_))
    ));
    let st = set.statuses(T).await;
    assert_eq!(st.len(), 2);
    assert!(
        st.iter()
            .all(|(_, s)| matches!(s.state, LinkState::Up { .. }))
    );
    set.stop_all();
}

#[tokio::test]
async fn mem_partition_and_heal_all() {
    use smart_transport::PeerSet;
    let net = smart_transport::mem::MemNetwork::new(3);
    let mut servers = Vec::new();
    let mut sets = Vec::new();
    for i in 1..=3u64 {
        let name = format!("n{i}");
        servers.push(
            Server::bind(
                &net.transport(&name),
                &name,
                node_endpoint(i),
                Arc::new(TestHandler::default()),
            )
            .await
            .unwrap(),
        );
        let set = PeerSet::<Test>::new(
            Arc::new(net.transport(&name)),
            node_endpoint(i),
            fast_backoff(),
            None,
            None,
        );
        for j in (1..=3u64).filter(|j| *j != i) {
            set.ensure(NodeId(j), &format!("n{j}")).await.unwrap();
        }
        sets.push(set);
    }
    let ask = |from: usize, to: u64| {
        let set = &sets[from - 1];
        async move {
            set.request(
                NodeId(to),
                Req::Echo("p".into()),
                Duration::from_millis(300),
            )
            .await
        }
    };
    for (a, b) in [(1, 2), (2, 3), (3, 1)] {
        assert_eq!(ask(a, b).await, Ok(Resp::Text("p".into())));
    }
    net.partition(&[&["n1"], &["n2", "n3"]]);
    assert!(ask(1, 2).await.is_err());
    assert!(ask(3, 1).await.is_err());
    // Inside the majority side, traffic flows.
    assert_eq!(ask(2, 3).await, Ok(Resp::Text("p".into())));
    assert_eq!(ask(3, 2).await, Ok(Resp::Text("p".into())));
    net.heal_all();
    for (a, b) in [(1u64, 2u64), (3, 1)] {
        let set = &sets[a as usize - 1];
        let start = std::time::Instant::now();
        loop {
            if set
                .request(NodeId(b), Req::Echo("h".into()), T)
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{a}->{b} not healed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for s in &sets {
        s.stop_all();
    }
}
