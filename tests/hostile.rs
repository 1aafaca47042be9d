//! Hostile peers and hostile clients against real `smart node` processes (docs/security.md):
//! every
//! attack found by hand becomes a test here.
//!
//! - a forged `u64::MAX` claim from a node id the key book does not list;
//! - a cluster-key holder speaking in every member's name (far epochs, a far sequence
//!   number, forged proofs and hand-overs), and a member asserting a far epoch of its own;
//! - 1,100 idle TCP connections held open (reopened when closed);
//! - `ulimit -n 150` plus held connections, then `kill -9` of the Control;
//! - a node presenting another node's id;
//! - a member that is not the Control sending agent commands with its own real key;
//! - a member that is not the Control pushing a registry copy that lists a stopped service;
//! - `/watch` for videos the origin does not have, 1,000 of them from one address, and an
//!   origin that went away.
//!
//! Every test starts its own cluster on its own loopback addresses (see `smart::cluster`),
//! and every wait and every attack loop is bounded.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use smart_bench::cluster::{ClusterSpec, LocalCluster};
use smart_proto::NodeId;
use smart_proto::heartbeat::{self, Claim, Message};
use smart_proto::pair::MemberKeys;
use smart_testkit::cluster::{self, counter, wait_status};
use tokio::time::Instant;

fn spec(nodes: usize) -> ClusterSpec {
    cluster::spec(env!("CARGO_BIN_EXE_smart"), nodes, "info")
}

/// [`spec`] for the tests that count refusals under a Control that must stay in place
/// (their workloads are shell commands, allowed as an operator would).
fn steady(nodes: usize) -> ClusterSpec {
    let mut s = spec(nodes);
    s.extra_toml = format!("{}{}", cluster::STEADY_TIMING, cluster::ALLOW_SHELL);
    s
}

/// The stored highest epoch of node `id` (its `node-state.json`).
fn stored_epoch(c: &LocalCluster, id: u64) -> u64 {
    let path = c.dir().join(format!("n{id}")).join("node-state.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["highest_epoch"].as_u64().unwrap()
}

/// Holds `n` idle TCP connections to `addr`, reopening any that closes, until dropped.
/// Returns how many connects succeeded in all.
struct Holder {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Holder {
    fn start(addr: SocketAddr, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), opened.clone());
        let task = tokio::spawn(async move {
            let mut slots = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (s, o) = (s.clone(), o.clone());
                slots.spawn(async move {
                    let mut buf = [0u8; 64];
                    while !s.load(Ordering::Relaxed) {
                        match tokio::net::TcpStream::connect(addr).await {
                            Ok(mut c) => {
                                o.fetch_add(1, Ordering::Relaxed);
                                // Idle: never say anything; wait for the server to close.
                                use tokio::io::AsyncReadExt;
                                let _ =
                                    tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
                                        .await;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                });
            }
            while slots.join_next().await.is_some() {}
        });
        Self { stop, opened, task }
    }

    fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

/// A cluster of `s` once every node agrees on its Control: the cluster, its nodes and the
/// Control's (node, epoch).
async fn started(s: ClusterSpec) -> (LocalCluster, Vec<u64>, (u64, u64)) {
    let c = LocalCluster::start(s).unwrap();
    let all = c.running();
    let control = c
        .wait_agreed_control(&all, Duration::from_secs(20), |_, _| true)
        .await
        .unwrap();
    (c, all, control)
}

async fn send_to_all(c: &LocalCluster, datagram: &[u8]) {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for n in &c.nodes {
        udp.send_to(datagram, n.addr).await.unwrap();
    }
}

/// Pair keys made with a node key of the attacker's own, presenting itself as `id` to
/// every member of the cluster's key book: what a holder of the cluster key (every node,
/// and formerly every client) can make.
fn impostor(c: &LocalCluster, id: u64) -> MemberKeys {
    let book = &c.keys().book;
    let publics = book.nodes().map(|n| (n, *book.get(n).expect("listed")));
    MemberKeys::derive(NodeId(id), &rand::random(), publics)
}

/// Sends every datagram of `msg` made with `keys` to every node.
async fn send_msg_to_all(c: &LocalCluster, msg: &Message, keys: &MemberKeys) {
    for d in heartbeat::encode(msg, c.key(), keys) {
        send_to_all(c, &d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_max_claim_from_a_node_the_key_book_does_not_list_is_ignored() {
    let (c, all, before) = started(spec(3)).await;
    // Tagged with the real cluster key, from node 99, which has no key in the book.
    let keys = impostor(&c, 99);
    for seq in 1..=20 {
        let claim = Message::Claim(Claim {
            from: NodeId(99),
            incarnation: 1,
            seq,
            epoch: u64::MAX,
        });
        send_msg_to_all(&c, &claim, &keys).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &n in &all {
        let s = wait_status(&c, n, Duration::from_secs(5), |s| {
            counter(s, "dropped_unknown_sender") >= 20
        })
        .await;
        // Exactly the 20 sent: nothing else in this test names an unknown node.
        assert_eq!(counter(&s, "dropped_unknown_sender"), 20, "n{n}: {s:?}");
        assert!(s.highest_epoch < 1000, "n{n}: {s:?}");
        assert!(stored_epoch(&c, n) < 1000, "n{n} persisted a forged epoch");
    }
    // The cluster keeps its Control, at the same epoch.
    let after = c
        .wait_agreed_control(&all, Duration::from_secs(5), |_, _| true)
        .await
        .unwrap();
    assert_eq!(after, before);
}

/// A cluster-key holder speaks in every member's name for 3 s: heartbeats and claims "from
/// every member" at epoch 2^63 - 1 (they once stopped every election for good), the
/// Control's heartbeat with its sequence number + 2^40 and a new incarnation (it once
/// evicted the Control), proofs of a forged incarnation 2^62 answering a nonce read off the
/// wire, and a hand-over naming another successor. Every datagram is refused for its pair
/// tag; nothing is persisted, no one is evicted, the Control stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_key_holder_cannot_speak_in_a_members_name() {
    let (c, all, before) = started(steady(3)).await;
    let far = smart_membership::engine::EPOCH_CEILING;
    let impostors: Vec<MemberKeys> = all.iter().map(|&m| impostor(&c, m)).collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    // Per receiver, the datagrams in another member's name (those in the receiver's own
    // name are dropped without a count, as its own multicast looped back is).
    let mut expected = std::collections::BTreeMap::<u64, u64>::new();
    let mut seq = 1u64 << 40;
    while Instant::now() < deadline {
        for &m in &all {
            seq += 1;
            let hb = Message::Heartbeat(heartbeat::Heartbeat {
                from: NodeId(m),
                incarnation: 1 << 62,
                seq,
                tcp_addr: c.nodes[(m - 1) as usize].addr,
                roles: vec![smart_proto::Role::Agent, smart_proto::Role::Control],
                highest_epoch: far,
                control: None,
                as_control: Some(heartbeat::ControlAssert {
                    established_epoch: far,
                    epoch: far,
                }),
                load: Default::default(),
            });
            let claim = Message::Claim(Claim {
                from: NodeId(m),
                incarnation: 1 << 62,
                seq,
                epoch: far,
            });
            let proof = Message::Proof(heartbeat::Proof {
                from: NodeId(m),
                incarnation: 1 << 62,
                seq,
                to: NodeId(before.0),
                nonce: rand::random(),
            });
            let handover = Message::Handover(heartbeat::Handover {
                from: NodeId(before.0),
                incarnation: 1 << 62,
                seq,
                epoch: before.1,
                successor: Some(NodeId(m)),
            });
            for msg in [hb, claim, proof, handover] {
                let keys = &impostors[(msg.from().0 - 1) as usize];
                send_msg_to_all(&c, &msg, keys).await;
                for &n in all.iter().filter(|&&n| n != msg.from().0) {
                    *expected.entry(n).or_default() += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &n in &all {
        let in_others_names = expected[&n];
        let s = wait_status(&c, n, Duration::from_secs(5), |s| {
            counter(s, "dropped_bad_pair_tag") >= in_others_names
        })
        .await;
        assert_eq!(
            counter(&s, "dropped_bad_pair_tag"),
            in_others_names,
            "n{n}: {s:?}"
        );
        assert_eq!(counter(&s, "forged_incarnation"), 0, "n{n}: {s:?}");
        assert!(s.highest_epoch < 1000, "n{n}: {s:?}");
        assert!(stored_epoch(&c, n) < 1000, "n{n} persisted a forged epoch");
        assert!(s.members.iter().all(|m| m.alive), "n{n} evicted: {s:?}");
    }
    let after = c
        .wait_agreed_control(&all, Duration::from_secs(5), |_, _| true)
        .await
        .unwrap();
    assert_eq!(after, before, "the Control or its epoch moved");
}

/// A member (its own real key) asserting an epoch near the ceiling is believed by no one:
/// the far epoch is dropped as a jump, not persisted, and the Control stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_own_far_epoch_is_not_believed() {
    let (c, ctl, epoch, others) = steady_three().await;
    let all = c.running();
    let m = others[0];
    let keys = c
        .keys()
        .node_key(m)
        .unwrap()
        .member_keys(NodeId(m), &c.keys().book);
    let far = smart_membership::engine::EPOCH_CEILING;
    for i in 0..20u64 {
        let claim = Message::Claim(Claim {
            from: NodeId(m),
            incarnation: u64::MAX,
            seq: u64::MAX - 100 + i,
            epoch: far,
        });
        send_msg_to_all(&c, &claim, &keys).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for &n in &all {
        let s = c.status(n).await.unwrap();
        assert_eq!(counter(&s, "dropped_bad_pair_tag"), 0, "n{n}: {s:?}");
        assert!(s.highest_epoch < 1000, "n{n}: {s:?}");
        assert!(stored_epoch(&c, n) < 1000, "n{n} persisted a far epoch");
    }
    let after = c
        .wait_agreed_control(&all, Duration::from_secs(5), |_, _| true)
        .await
        .unwrap();
    assert_eq!(after, (ctl, epoch));
}

/// A client admits a service whose command is a shell: under the default configuration
/// no node runs it (the agent refuses it, the admission fails and says why), and nothing
/// is left reserved or in the desired state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_shell_command_runs_nowhere_by_default() {
    use smart_api::{Request, Response, ServiceSpec};
    let c = LocalCluster::start(spec(3)).unwrap();
    let all = c.running();
    c.wait_agreed_control(&all, Duration::from_secs(20), |_, _| true)
        .await
        .unwrap();
    let marker = c.dir().join("shell-ran");
    let cl = c.client(all[0]).await.unwrap();
    for (i, command) in [
        vec![
            "sh".to_string(),
            "-c".into(),
            format!("touch {}", marker.display()),
        ],
        // The node's own binary, but not the distributor.
        vec![
            env!("CARGO_BIN_EXE_smart").to_string(),
            "keys".into(),
            "--dir".into(),
            marker.display().to_string(),
            "--nodes".into(),
            "1".into(),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let r = cl
            .request(Request::AdmitService(ServiceSpec {
                name: format!("root-shell-{i}"),
                class: "distributor".into(),
                command,
                env: vec![],
                per_client_bps: None,
                duration_ms: None,
            }))
            .await
            .unwrap();
        match r {
            Response::Error(e) => assert!(e.to_string().contains("not allowed"), "{e}"),
            other => panic!("admitted: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!marker.exists(), "a node ran the client's command");
    match cl.request(Request::Services).await.unwrap() {
        Response::Services(list) => assert!(list.is_empty(), "{list:?}"),
        other => panic!("{other:?}"),
    }
}

/// The cluster key is not a client credential: a client that holds it (and no token) is
/// refused at the handshake; a read token reads but may not admit, drain or stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_need_their_own_token_and_a_read_token_only_reads() {
    use smart_api::client::ApiClient;
    use smart_api::{Request, Response};
    use smart_transport::Client;
    use smart_transport::tcp::TcpTransport;
    let c = LocalCluster::start(spec(3)).unwrap();
    let all = c.running();
    c.wait_agreed_control(&all, Duration::from_secs(20), |_, _| true)
        .await
        .unwrap();
    let addr = c.nodes[0].addr.to_string();
    let key_holder = Client::<smart_transport::NodeProtocol>::connect(
        &TcpTransport,
        &addr,
        smart_transport::Endpoint::client(c.key().clone()),
    )
    .await;
    assert!(
        key_holder.is_err(),
        "a client with only the cluster key got in"
    );
    let reader = ApiClient::connect(&addr, c.credentials(false))
        .await
        .unwrap();
    assert!(matches!(
        reader.request(Request::Status).await.unwrap(),
        Response::Status(_)
    ));
    for req in [
        Request::Drain {
            node: smart_api::NodeId(2),
        },
        Request::StopService {
            service: "anything".into(),
        },
    ] {
        let err = reader
            .request(req)
            .await
            .expect_err("a read token changed the cluster");
        assert!(err.to_string().contains("admin token"), "{err}");
    }
    let s = wait_status(&c, 1, Duration::from_secs(5), |s| {
        counter(s, "clients_without_token_refused") >= 1
    })
    .await;
    assert_eq!(counter(&s, "client_requests_forbidden"), 2, "{s:?}");
    // The admin token may.
    let admin = ApiClient::connect(&addr, c.credentials(true))
        .await
        .unwrap();
    assert!(matches!(
        admin.request(Request::Services).await.unwrap(),
        Response::Services(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_connections_do_not_block_status_nor_node_requests() {
    let (c, all, (ctl, _)) = started(spec(3)).await;
    // The Control's node is flooded: `smart status` asks it directly, and API requests
    // that other nodes forward to the Control are node-to-node requests into it.
    let flooded = ctl;
    let other = all.iter().copied().find(|&n| n != ctl).unwrap();
    let target = c.nodes[(flooded - 1) as usize].addr;
    let holder = Holder::start(target, 1100);
    // Let the flood build up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder.opened() < 1100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(holder.opened() >= 1100, "only {} opened", holder.opened());
    // A message-API client on a fresh connection (a handshake through the flood) and
    // `smart status` (the CLI, a fresh process, over the node's HTTP API) keep working.
    for _ in 0..5 {
        let fresh = c.client(flooded).await.expect("connect under the flood");
        match fresh.request(smart_api::Request::Status).await {
            Ok(smart_api::Response::Status(_)) => {}
            other => panic!("status over the flooded port failed: {other:?}"),
        }
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_smart"))
            .args(["status", "--json", "--addr", &c.http_url(flooded)])
            .args(["--token", c.read_token()])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "smart status failed under the flood: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Node-to-node: another node forwards `Services` to the flooded Control.
    let api = c.client(other).await.unwrap();
    for _ in 0..5 {
        match api.request(smart_api::Request::Services).await {
            Ok(smart_api::Response::Services(_)) => {}
            other => panic!("forwarded request failed under the flood: {other:?}"),
        }
    }
    // The idle ones were closed by the silent timeout, and reopened, over and over.
    let s = wait_status(&c, flooded, Duration::from_secs(5), |s| {
        counter(s, "transport_handshakes_failed") > 1100
    })
    .await;
    // One WARN line per kind and 10 s, not one per refusal.
    let log = std::fs::read_to_string(c.dir().join(format!("n{flooded}.log"))).unwrap();
    let warns = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("handshake"))
        .count();
    assert!(
        warns < 20,
        "{warns} WARN lines about handshakes ({} failed)",
        counter(&s, "transport_handshakes_failed")
    );
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ulimit_150_and_held_connections_a_killed_control_is_replaced_and_no_node_exits() {
    let mut s = spec(3);
    s.nofile = Some(150);
    let (mut c, all, (old, old_epoch)) = started(s).await;
    let holders: Vec<Holder> = c.nodes.iter().map(|n| Holder::start(n.addr, 200)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.kill(old).unwrap();
    // The failover runs under the descriptor pressure (elections ride on UDP; the epoch
    // write needs a descriptor): give it 4 s, checking that no node exits meanwhile.
    let survivors: Vec<u64> = all.iter().copied().filter(|&n| n != old).collect();
    for _ in 0..40 {
        for &n in &survivors {
            assert!(
                c.exited(n).is_none(),
                "n{n} exited; log:\n{}",
                c.log_tail(n, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then look (status needs TCP descriptors, scarce while the connections are held).
    drop(holders);
    let (new, _) = c
        .wait_agreed_control(&survivors, Duration::from_secs(15), |n, e| {
            n != old && e > old_epoch
        })
        .await
        .unwrap();
    for &n in &survivors {
        assert!(c.exited(n).is_none(), "n{n} exited");
    }
    // Elected while the connections were held: its log says when it became Control.
    let log = std::fs::read_to_string(c.dir().join(format!("n{new}.log"))).unwrap();
    assert!(
        log.contains("became control"),
        "n{new} never became Control"
    );
    wait_status(&c, new, Duration::from_secs(5), |s| {
        counter(s, "control_acting") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_presenting_another_nodes_id_is_refused() {
    use smart_transport::client::ConnectError;
    use smart_transport::handshake::{HandshakeError, Refusal};
    use smart_transport::tcp::TcpTransport;
    use smart_transport::{Client, Endpoint};

    let c = LocalCluster::start(spec(2)).unwrap();
    let all = c.running();
    c.wait_agreed_control(&all, Duration::from_secs(20), |_, _| true)
        .await
        .unwrap();
    let addr = c.nodes[0].addr.to_string();
    // Node 2's id with node 2's real key: accepted (the key book lists it).
    let genuine = Client::<smart_transport::NodeProtocol>::connect(
        &TcpTransport,
        &addr,
        c.node_endpoint(2, 1),
    )
    .await;
    assert!(genuine.is_ok(), "{:?}", genuine.err());
    // Node 2's id with another key (the cluster key is right): refused.
    let impostor = Endpoint::node(NodeId(2), 1, c.key().clone());
    match Client::<smart_transport::NodeProtocol>::connect(&TcpTransport, &addr, impostor).await {
        Err(ConnectError::Handshake {
            source: HandshakeError::Refused(Refusal::WrongKey),
            ..
        }) => {}
        other => panic!("impostor not refused: {other:?}"),
    }
    // Node 1's own key presented under node 2's id: refused too.
    let k1 = c.keys().node_key(1).unwrap().clone();
    let borrowed =
        Endpoint::node(NodeId(2), 1, c.key().clone()).with_keys(k1, c.keys().book.clone());
    assert!(
        Client::<smart_transport::NodeProtocol>::connect(&TcpTransport, &addr, borrowed)
            .await
            .is_err()
    );
    // The node counts a refusal once its handshake ends, which may be after the client saw
    // it: wait for both, then check that there were exactly the two this test made.
    let s = wait_status(&c, 1, Duration::from_secs(5), |s| {
        counter(s, "transport_handshakes_wrong_identity") >= 2
    })
    .await;
    assert_eq!(
        counter(&s, "transport_handshakes_wrong_identity"),
        2,
        "{s:?}"
    );
    assert_eq!(counter(&s, "transport_handshakes_bad_key"), 0, "{s:?}");
    // Message-API clients still connect with the cluster key alone, and the CLI works.
    c.client(1)
        .await
        .expect("a message-API client with the cluster key alone")
        .request(smart_api::Request::Status)
        .await
        .expect("status over the message API");
    cluster::succeeded(
        "smart status --addr --token",
        std::process::Command::new(env!("CARGO_BIN_EXE_smart"))
            .args(["status", "--json", "--addr", &c.http_url(1), "--token"])
            .arg(c.read_token())
            .output()
            .unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_heartbeats_elect_and_fail_over_and_plain_forgeries_are_refused() {
    let mut s = spec(3);
    s.extra_toml = "[heartbeat]\nencrypt = true\n".into();
    let mut c = LocalCluster::start(s).unwrap();
    let f = smart_bench::demo::kill_control_and_measure(&mut c)
        .await
        .unwrap();
    assert_ne!(f.new_control, f.killed);
    // A datagram under another key, encrypted or not, is refused.
    let other = smart_proto::ClusterKey::from_bytes(b"not-the-cluster-key-at-all").unwrap();
    let ring = smart_proto::heartbeat::Keyring::new(other).encrypted(true);
    let claim = Message::Claim(Claim {
        from: NodeId(f.new_control),
        incarnation: u64::MAX,
        seq: 1,
        epoch: f.new_epoch + 1,
    });
    let keys = c
        .keys()
        .node_key(f.new_control)
        .unwrap()
        .member_keys(NodeId(f.new_control), &c.keys().book);
    for d in heartbeat::encode_with(&claim, &ring, &keys) {
        send_to_all(&c, &d).await;
    }
    let st = wait_status(&c, f.new_control, Duration::from_secs(5), |s| {
        counter(s, "dropped_bad_tag") >= 1
    })
    .await;
    assert_eq!(
        st.control.map(|c| c.node_id),
        Some(smart_api::NodeId(f.new_control))
    );
}

/// A steady 3-node cluster once every node agrees on its Control: the cluster, the
/// Control's node and epoch, and the two other nodes.
async fn steady_three() -> (LocalCluster, u64, u64, Vec<u64>) {
    let (c, all, (ctl, epoch)) = started(steady(3)).await;
    let others = all.into_iter().filter(|&n| n != ctl).collect();
    (c, ctl, epoch, others)
}

/// Sends `req` to node `to` as node `from`, with `from`'s real key.
async fn node_request_as(
    c: &LocalCluster,
    from: u64,
    to: u64,
    req: smart_api::NodeRequest,
) -> Result<smart_api::NodeResponse, smart_transport::RequestError> {
    use smart_transport::Client;
    use smart_transport::tcp::TcpTransport;
    let addr = c.nodes[(to - 1) as usize].addr.to_string();
    let client = Client::<smart_transport::NodeProtocol>::connect(
        &TcpTransport,
        &addr,
        c.node_endpoint(from, 1),
    )
    .await
    .unwrap();
    client.request(req, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_commands_from_a_member_that_is_not_the_control_are_refused() {
    use smart_proto::agent::{AgentCommand, AgentReply, LaunchSpec};
    let (c, ctl, epoch, others) = steady_three().await;
    let all = c.running();
    let (intruder, target) = (others[0], others[1]);
    let marker = c.dir().join("intruder-start-ran");
    let start = |instance: &str| AgentCommand::Start {
        instance: instance.into(),
        launch: LaunchSpec {
            service: "x".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("touch {}; sleep 30", marker.display()),
            ],
            ..Default::default()
        },
        reservation: Default::default(),
    };
    // Refusals counted before the attack (a node paused by a loaded machine and deposed
    // meanwhile has its late commands refused too): the attack's are counted from here.
    let refused_before = |n: u64| {
        let c = &c;
        async move { cluster::node_counter(c, n, "agent_command_not_from_control").await }
    };
    let (target_before, ctl_before) = (refused_before(target).await, refused_before(ctl).await);
    // Likewise for commands above the view's epoch (a new Control's first round may reach
    // a node before its claim does).
    let above = |n: u64| {
        let c = &c;
        async move { cluster::node_counter(c, n, "agent_command_above_view").await }
    };
    let (target_above, ctl_above) = (above(target).await, above(ctl).await);
    // At the Control's own epoch, and one above it (as if the intruder were a new Control
    // the target had not heard of yet), to the target and to the Control's own agent.
    for (to, e, instance) in [
        (target, epoch, "intruder.1"),
        (target, epoch + 1, "intruder.2"),
        (ctl, epoch + 1, "intruder.3"),
    ] {
        let r = node_request_as(
            &c,
            intruder,
            to,
            smart_api::NodeRequest::Agent {
                epoch: e,
                cmd: start(instance),
            },
        )
        .await;
        assert!(
            !matches!(
                r,
                Ok(smart_api::NodeResponse::Agent(
                    AgentReply::Instance(_) | AgentReply::Done
                ))
            ),
            "n{to} executed n{intruder}'s start at epoch {e}: {r:?}"
        );
        // Above the view's epoch: refused at once, to ask again, never waited for.
        if e > epoch {
            let err = r.expect_err("a start above the view's epoch was answered");
            assert!(
                err.to_string().contains(smart_proto::error::VIEW_BEHIND),
                "{err}"
            );
        }
    }
    // A deposed-looking epoch is told it is stale, as Agent86's fencing would.
    let r = node_request_as(
        &c,
        intruder,
        target,
        smart_api::NodeRequest::Agent {
            epoch: epoch - 1,
            cmd: AgentCommand::Report,
        },
    )
    .await;
    assert!(
        matches!(r, Ok(smart_api::NodeResponse::Agent(AgentReply::Refused { highest, .. })) if highest == epoch),
        "{r:?}"
    );
    // A node counts a refusal before it answers, and every answer is in: the counts are
    // exactly what this test sent (a start and the report to the target at or below the
    // view's epoch, one start above it to the target and one to the Control).
    let st = wait_status(&c, target, Duration::from_secs(5), |_| true).await;
    assert_eq!(
        counter(&st, "agent_command_not_from_control") - target_before,
        2,
        "{st:?}"
    );
    assert_eq!(
        counter(&st, "agent_command_above_view") - target_above,
        1,
        "{st:?}"
    );
    assert_eq!(st.highest_epoch, epoch, "the intruder's epoch was adopted");
    let sc = wait_status(&c, ctl, Duration::from_secs(5), |_| true).await;
    assert_eq!(
        counter(&sc, "agent_command_not_from_control") - ctl_before,
        0,
        "{sc:?}"
    );
    assert_eq!(
        counter(&sc, "agent_command_above_view") - ctl_above,
        1,
        "{sc:?}"
    );
    // Refused before Agent86 saw them: no process was started, so none can touch the marker.
    assert!(!marker.exists(), "an intruder's start ran a process");
    // The real Control keeps commanding its agents, at its epoch.
    let after = c
        .wait_agreed_control(&all, Duration::from_secs(5), |_, _| true)
        .await
        .unwrap();
    assert_eq!(after, (ctl, epoch));
    let before = counter(&st, "agent_recent_commands");
    wait_status(&c, target, Duration::from_secs(5), |s| {
        counter(s, "agent_recent_commands") > before || before >= 16
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_registry_copy_does_not_resurrect_a_stopped_service() {
    use smart_api::{Request, Response, ServiceSpec};
    use smart_proto::node::{Replica, ReplicaEntry};
    let (mut c, ctl, epoch, others) = steady_three().await;
    let all = c.running();
    let marker = c.dir().join("lazarus-starts");
    let spec = ServiceSpec {
        name: "lazarus".into(),
        class: "distributor".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("echo started >> {}; sleep 300", marker.display()),
        ],
        env: vec![],
        per_client_bps: None,
        duration_ms: None,
    };
    let cl = c.client(others[0]).await.unwrap();
    let r = cl
        .request(Request::AdmitService(spec.clone()))
        .await
        .unwrap();
    let Response::Placed(placement) = r else {
        panic!("not placed: {r:?}");
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the service never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = cl
        .request(Request::StopService {
            service: "lazarus".into(),
        })
        .await
        .unwrap();
    assert!(matches!(r, Response::Ok), "{r:?}");
    // The Control's copies without it must reach every node before the Control dies: the
    // successor restores from its own node's copy, and a copy taken before the stop lists
    // the service (rightly: it ran then). Two copies accepted from here on include one made
    // after the stop.
    cluster::wait_registry_copies(&c, &all, 2).await;
    // Refusals counted before the attack (a node paused by a loaded machine and deposed
    // meanwhile has its late copies refused too): the attack's are counted from here.
    let mut refused_before = Vec::new();
    for &n in &all {
        refused_before.push((
            cluster::node_counter(&c, n, "replica_not_from_control").await,
            cluster::node_counter(&c, n, "replica_above_view").await,
        ));
    }
    // A member that is not the Control pushes a copy that still lists it, "newer" by
    // (epoch, version) than anything the Control sent.
    let forged = Replica {
        epoch,
        version: 1_000_000,
        services: vec![ReplicaEntry {
            spec,
            node: placement.node,
            clients: 0,
        }],
        ..Replica::default()
    };
    for &to in &all {
        for e in [epoch, epoch + 1] {
            let r = node_request_as(
                &c,
                others[0],
                to,
                smart_api::NodeRequest::Replica(Replica {
                    epoch: e,
                    ..forged.clone()
                }),
            )
            .await;
            assert!(
                r.is_err(),
                "n{to} accepted n{}'s forged copy at epoch {e} (Control n{ctl} at {epoch}): {r:?}; {:?}",
                others[0],
                c.status(to).await
            );
        }
    }
    // Counted before the refusal is answered: exactly the two forged copies sent to each,
    // the one at the view's epoch as not from the Control, the one above it as above the
    // view (refused at once, not waited for).
    for (&to, &(before, above)) in all.iter().zip(&refused_before) {
        let s = wait_status(&c, to, Duration::from_secs(5), |_| true).await;
        assert_eq!(
            counter(&s, "replica_not_from_control") - before,
            1,
            "n{to}: {s:?}"
        );
        assert_eq!(counter(&s, "replica_above_view") - above, 1, "n{to}: {s:?}");
    }
    // The Control dies: its successor restores what its copy lists, and that is not the
    // stopped service.
    c.kill(ctl).unwrap();
    c.wait_agreed_control(&others, Duration::from_secs(10), |n, e| {
        n != ctl && e > epoch
    })
    .await
    .unwrap();
    // The successor answers `Services` only once it has rebuilt, and rebuilding includes
    // restoring its copy: a resurrection would be in this answer.
    let cl = c.client(others[0]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let services = loop {
        match cl.request(Request::Services).await.unwrap() {
            Response::Services(s) => break s,
            other => {
                assert!(Instant::now() < deadline, "no services answer: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(
        services.iter().all(|s| s.placement.service != "lazarus"),
        "{services:?}"
    );
    let starts = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(
        starts.lines().count(),
        1,
        "the stopped service was restarted"
    );
}

/// An origin on loopback with the given `(name, bitrate_bps, seconds)` videos; the task
/// serving it (abort it to make the origin unreachable).
async fn origin_with(videos: &[(&str, u64, u64)]) -> (String, tokio::task::JoinHandle<()>) {
    use smart_vod::origin::{Origin, Video};
    use smart_vod::ts::VideoParams;
    let mut o = Origin::new();
    for &(name, bitrate_bps, secs) in videos {
        let v = Video::generated(VideoParams {
            bitrate_bps,
            duration_ms: secs * 1000,
        })
        .unwrap();
        o.add(name, v);
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (format!("http://{addr}"), tokio::spawn(Arc::new(o).serve(l)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_end_admits_only_the_origins_videos_at_their_bitrate_and_rate_limits_new_ones() {
    let (origin, origin_task) = origin_with(&[
        ("hi", 2_000_000, 30),
        ("lo", 800_000, 30),
        ("long", 800_000, 120),
    ])
    .await;
    let mut s = spec(2);
    s.frontends = vec![2];
    s.origin = origin;
    // The configured bitrate is neither video's: the origin's X-Bitrate must win.
    s.bitrate_bps = 400_000;
    s.new_services = (1.0, 8);
    let c = LocalCluster::start(s).unwrap();
    let all = c.running();
    c.wait_agreed_control(&all, Duration::from_secs(20), |_, _| true)
        .await
        .unwrap();
    let fe = c.frontend_url(2).unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let watch = |video: &str| http.get(format!("{fe}/watch/{video}")).send();
    let services = || async {
        let r = http
            .get(format!("{}/v1/services", c.http_url(1)))
            .bearer_auth(c.read_token())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        v["services"].as_array().unwrap().clone()
    };
    // Unknown videos: 404, nothing started (progressive and HLS alike).
    for v in ["aa", "bb", "cc"] {
        let r = watch(v).await.unwrap();
        assert_eq!(r.status(), 404, "{v}");
    }
    let r = watch("dd.m3u8").await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(services().await.is_empty());
    // Known videos: admitted.
    for v in ["hi", "lo", "long"] {
        let r = watch(v).await.unwrap();
        // Relayed (the default): the video's bytes follow; dropped unread.
        assert_eq!(r.status(), 200, "{v}");
    }
    // Their reservations scale with the origin's bitrate (and the cache with the duration).
    let deadline = Instant::now() + Duration::from_secs(20);
    let by_name = loop {
        let list = services().await;
        let get = |n: &str| {
            list.iter()
                .find(|s| s["name"] == format!("video-{n}"))
                .cloned()
        };
        if let (Some(hi), Some(lo), Some(long)) = (get("hi"), get("lo"), get("long"))
            && hi["clients"] == lo["clients"]
            && lo["clients"] == long["clients"]
            && [&hi, &lo, &long].iter().all(|s| s["reserved"].is_object())
        {
            break (hi, lo, long);
        }
        assert!(
            Instant::now() < deadline,
            "services never settled: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (hi, lo, long) = by_name;
    let net = |s: &serde_json::Value| s["reserved"]["network_bps"].as_f64().unwrap();
    let mem = |s: &serde_json::Value| s["reserved"]["memory_bytes"].as_u64().unwrap();
    let ratio = net(&hi) / net(&lo);
    println!(
        "reserved network: hi {:.0} lo {:.0} long {:.0} bit/s (ratio {ratio:.3}); memory lo {} long {}",
        net(&hi),
        net(&lo),
        net(&long),
        mem(&lo),
        mem(&long)
    );
    assert!(
        (ratio - 2.5).abs() < 0.025,
        "hi/lo network {ratio}: {hi} {lo}"
    );
    assert!((net(&long) / net(&lo) - 1.0).abs() < 0.01, "{long} {lo}");
    assert!(
        mem(&long) > mem(&lo),
        "a 4x longer video caches more: {long} {lo}"
    );
    // A burst of new names beyond the bucket (8, of which 7 are spent): 429 with Retry-After.
    let mut limited = 0;
    for k in 0..10 {
        let r = watch(&format!("x{k}")).await.unwrap();
        match r.status().as_u16() {
            404 => {}
            429 => {
                limited += 1;
                let after: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=2).contains(&after), "retry-after {after}");
            }
            other => panic!("x{k}: {other}"),
        }
    }
    assert!(limited >= 8, "only {limited} of 10 limited");
    // A viewer of a running video starts nothing new: not limited.
    assert_eq!(watch("hi").await.unwrap().status(), 200);
    assert_eq!(services().await.len(), 3);
    let st = wait_status(&c, 2, Duration::from_secs(5), |s| {
        counter(s, "frontend_429") >= limited
    })
    .await;
    assert!(counter(&st, "frontend_unknown_video") >= 4, "{st:?}");
    // The origin goes away: a new video is 502 with the cause, and nothing starts.
    origin_task.abort();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = watch("zz").await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("origin"), "{body}");
    assert_eq!(services().await.len(), 3);
}

/// A stranger holds 4,200 idle sockets to the front-end (more than its whole cap of
/// 4,096) from one address: only its address's share is kept, and real viewers, from their
/// own addresses, still get their video (relayed, the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_idle_sockets_do_not_keep_viewers_out() {
    use std::net::IpAddr;
    let (origin, _origin_task) = origin_with(&[("v0", 400_000, 10)]).await;
    let mut s = spec(2);
    s.frontends = vec![2];
    s.origin = origin;
    let c = LocalCluster::start(s).unwrap();
    let all = c.running();
    c.wait_agreed_control(&all, Duration::from_secs(20), |_, _| true)
        .await
        .unwrap();
    let fe = c.frontend_url(2).unwrap();
    let fe_addr: SocketAddr = fe.trim_start_matches("http://").parse().unwrap();
    let stranger: IpAddr = "127.250.0.9".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..4200 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(stranger, 0)).unwrap();
        if let Ok(s) = sock.connect(fe_addr).await {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 4200, "the kernel took every connection");
    for k in 1..=5u8 {
        let viewer = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(IpAddr::from([127, 251, 0, k]))
            .build()
            .unwrap();
        let r = viewer.get(format!("{fe}/watch/v0")).send().await.unwrap();
        assert_eq!(r.status(), 200, "viewer {k}");
    }
    let st = wait_status(&c, 2, Duration::from_secs(10), |s| {
        counter(s, "frontend_refused_per_address") >= 4200 - 256
    })
    .await;
    assert_eq!(counter(&st, "frontend_refused_over_cap"), 0, "{st:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unknown_videos_from_one_address_are_404_or_429_and_start_nothing() {
    let (origin, _origin_task) = origin_with(&[("v0", 400_000, 10)]).await;
    let mut s = spec(2);
    s.frontends = vec![2];
    s.origin = origin;
    let (rate, burst) = (5.0, 20);
    s.new_services = (rate, burst);
    let c = LocalCluster::start(s).unwrap();
    let all = c.running();
    c.wait_agreed_control(&all, Duration::from_secs(20), |_, _| true)
        .await
        .unwrap();
    let fe = c.frontend_url(2).unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let t0 = Instant::now();
    let (mut not_found, mut limited) = (0u64, 0u64);
    for k in 0..1000 {
        let r = http
            .get(format!("{fe}/watch/nope{k}"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            404 => not_found += 1,
            429 => limited += 1,
            other => panic!("nope{k}: {other}"),
        }
    }
    let took = t0.elapsed().as_secs_f64();
    // At most the burst plus what the bucket refilled reached the origin.
    let allowed = burst as f64 + rate * took + 1.0;
    println!("1000 unknown videos in {took:.2} s: {not_found} x 404, {limited} x 429");
    assert_eq!(not_found + limited, 1000);
    assert!(not_found as f64 <= allowed, "{not_found} > {allowed}");
    assert!(not_found >= burst as u64);
    let st = wait_status(&c, 2, Duration::from_secs(5), |s| {
        counter(s, "frontend_429") == limited
    })
    .await;
    assert_eq!(counter(&st, "frontend_unknown_video"), not_found);
    let cl = c.client(1).await.unwrap();
    match cl.request(smart_api::Request::Services).await.unwrap() {
        smart_api::Response::Services(s) => assert!(s.is_empty(), "{s:?}"),
        other => panic!("{other:?}"),
    }
    // The address's known video still plays once the bucket refills.
    tokio::time::sleep(Duration::from_secs_f64(1.0 / rate + 0.1)).await;
    let r = http.get(format!("{fe}/watch/v0")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Only the Control publishes cluster events: a member that is not the Control cannot push
/// one (a forged placement would steer the front-end's viewers); it is refused and counted,
/// and the Control's own events still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_a_member_that_is_not_the_control_is_refused() {
    let (c, ctl, _, others) = steady_three().await;
    let (intruder, target) = (others[0], others[1]);
    let forged = smart_api::Event::Stopped {
        service: "video-x".into(),
        node: smart_proto::NodeId(intruder),
        reason: "forged".into(),
    };
    let before = cluster::node_counter(&c, target, "event_not_from_control").await;
    let r = node_request_as(
        &c,
        intruder,
        target,
        smart_api::NodeRequest::Event(forged.clone()),
    )
    .await;
    assert!(r.is_err(), "a forged event was accepted: {r:?}");
    assert_eq!(
        cluster::node_counter(&c, target, "event_not_from_control").await,
        before + 1
    );
    let r = node_request_as(&c, ctl, target, smart_api::NodeRequest::Event(forged)).await;
    assert!(r.is_ok(), "the Control's event was refused: {r:?}");
}

/// A registry copy stamped above the view's epoch is refused, even from the Control's own
/// node: kept, it would outrank every real copy for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_copy_above_the_views_epoch_is_refused() {
    use smart_proto::node::Replica;
    let (c, ctl, epoch, others) = steady_three().await;
    let target = others[0];
    let before = cluster::node_counter(&c, target, "replica_above_view_epoch").await;
    let forged = Replica {
        epoch: epoch + 1_000,
        version: 1,
        ..Replica::default()
    };
    let r = node_request_as(&c, ctl, target, smart_api::NodeRequest::Replica(forged)).await;
    assert!(r.is_err(), "a copy above the view's epoch was kept: {r:?}");
    assert_eq!(
        cluster::node_counter(&c, target, "replica_above_view_epoch").await,
        before + 1
    );
}

/// A stranger floods `/watch` of a playing video from one address with six threads and
/// never follows a redirect, while 30 real viewers, each from its own address, join over
/// ten seconds and stay. Every real viewer gets its `302` (the worst real-viewer `503`
/// share is printed: the goal is 0), the stranger is answered `429` beyond its address's
/// bucket, and the reservations it holds stay far below the node's capacity, in the
/// shipped default limits (`[frontend] viewer_admissions_*`,
/// `timing.client_arrival_window`), with the front-end redirecting progressive viewers: a
/// redirect is where a reservation outlives the request (relaying, the default, holds one
/// only while the viewer's connection is open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_watch_flood_does_not_keep_real_viewers_out() {
    use std::net::IpAddr;
    let (origin, _origin_task) = origin_with(&[("v0", 400_000, 120)]).await;
    let mut s = spec(2);
    s.frontends = vec![2];
    s.frontend_toml = "progressive = \"redirect\"\n".into();
    s.origin = origin;
    s.viewer_admissions = None;
    // Room for a few dozen viewers of the video's distributor: a flood that costs a
    // reservation per request fills it in well under a second.
    s.nic_bps = 40_000_000;
    let (c, _, _) = started(s).await;
    let fe = c.frontend_url(2).unwrap();
    let client = |ip: IpAddr| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(ip)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    // The first viewer starts the video's distributor.
    let first = client(IpAddr::from([127, 251, 1, 1]));
    let r = first.get(format!("{fe}/watch/v0")).send().await.unwrap();
    assert_eq!(r.status(), 302, "{:?}", r.text().await);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let mut held = vec![first.get(&location).send().await.unwrap()];
    assert_eq!(held[0].status(), 200);
    // Past the grace period after the start (in which no client is released, viewers
    // still connecting).
    tokio::time::sleep(Duration::from_secs(11)).await;

    // The flood: six tasks from one address, as fast as the front-end answers.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, got_302, got_429) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let stranger = client(IpAddr::from([127, 250, 0, 7]));
    let flood_started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..6 {
        let (stranger, fe, stop) = (stranger.clone(), fe.clone(), stop.clone());
        let (sent, got_302, got_429) = (sent.clone(), got_302.clone(), got_429.clone());
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                if let Ok(r) = stranger.get(format!("{fe}/watch/v0")).send().await {
                    match r.status().as_u16() {
                        302 => got_302.fetch_add(1, Ordering::Relaxed),
                        429 => got_429.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                }
            }
        }));
    }
    // The most clients the Control holds for the video while the flood runs.
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (http, url, token, peak, stop) = (
            reqwest::Client::new(),
            format!("{}/v1/services", c.http_url(1)),
            c.read_token().to_string(),
            peak.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = http.get(&url).bearer_auth(&token).send().await
                    && let Ok(v) = r.json::<serde_json::Value>().await
                    && let Some(list) = v["services"].as_array()
                {
                    for s in list.iter().filter(|s| s["name"] == "video-v0") {
                        peak.fetch_max(s["clients"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Real viewers: one every ~330 ms, each from its own address; each follows its
    // redirect and stays connected.
    let mut refused = Vec::new();
    for k in 2..=31u8 {
        tokio::time::sleep(Duration::from_millis(330)).await;
        let viewer = client(IpAddr::from([127, 251, 1, k]));
        let r = viewer.get(format!("{fe}/watch/v0")).send().await.unwrap();
        if r.status() != 302 {
            refused.push((k, r.status().as_u16()));
            continue;
        }
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let mut body = viewer.get(&location).send().await.unwrap();
        assert_eq!(body.status(), 200, "viewer {k} at its distributor");
        // Bytes flow to it.
        assert!(body.chunk().await.unwrap().is_some(), "viewer {k}");
        held.push(body);
    }
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.await.unwrap();
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    watcher.await.unwrap();
    let (sent, got_302, got_429) = (
        sent.load(Ordering::Relaxed),
        got_302.load(Ordering::Relaxed),
        got_429.load(Ordering::Relaxed),
    );
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "phantom /watch flood: stranger sent {sent}, {got_302} admitted, {got_429} refused 429; \
         real viewers refused {}/30 ({:.1}% 503 or other); peak clients held for the video {peak}; \
         flood {flood_secs:.1} s",
        refused.len(),
        100.0 * refused.len() as f64 / 30.0
    );
    assert!(refused.is_empty(), "real viewers refused: {refused:?}");
    assert!(sent > 500, "the flood was a flood: {sent} requests");
    assert!(got_429 > sent / 2, "{got_429} of {sent} refused");
    // Its bucket: 10 at once and 2 per second, for as long as the flood ran.
    let bound = (10.0 + 2.0 * flood_secs).floor() as u64;
    assert!(
        got_302 <= bound,
        "{got_302} admitted in {flood_secs:.1} s (bucket: {bound})"
    );
    // 31 real viewers, plus the stranger's admissions of the last arrival window and
    // refresh rounds (its burst, then 2 per second for about 5 s).
    assert!(peak <= 31 + 24, "peak {peak}");
    let st = wait_status(&c, 2, Duration::from_secs(5), |s| {
        counter(s, "frontend_429_address") >= got_429
    })
    .await;
    assert_eq!(counter(&st, "frontend_503"), 0, "{st:?}");
    // Once the flood stops, its last admissions go too; every real viewer stays admitted.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v: serde_json::Value = http
            .get(format!("{}/v1/services", c.http_url(1)))
            .bearer_auth(c.read_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let clients = v["services"][0]["clients"].as_u64().unwrap();
        if clients == 31 {
            break;
        }
        assert!(clients > 31, "a real viewer was released: {v}");
        assert!(Instant::now() < deadline, "phantoms never released: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(held);
}
