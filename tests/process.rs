//! Real `smart node` processes on loopback (docs/DESIGN.md §7 level 3): kill -9, SIGSTOP/SIGCONT,
//! panicking children, escalation, hostile datagrams and frames, the status command.
//!
//! Every test starts its own cluster on its own loopback addresses and ports (see
//! `smart_bench::cluster`), and every wait is bounded.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::time::Duration;

use smart_api::{NodeProtocol, NodeRequest, NodeResponse};
use smart_bench::cluster::{ClusterSpec, LocalCluster};
use smart_bench::demo::kill_control_and_measure;
use smart_proto::agent::{AgentCommand, AgentReply};
use smart_proto::{ClusterKey, NodeId};
use smart_testkit::cluster::{self, counter, wait_status};
use smart_transport::Client;
use smart_transport::tcp::TcpTransport;

fn spec(nodes: usize) -> ClusterSpec {
    cluster::spec(env!("CARGO_BIN_EXE_smart"), nodes, "info")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_control_elects_a_new_one() {
    let mut c = LocalCluster::start(spec(3)).unwrap();
    let f = kill_control_and_measure(&mut c).await.unwrap();
    assert_ne!(f.new_control, f.killed);
    assert!(f.new_epoch > f.old_epoch);
    // The dead node is reported dead by every survivor.
    for n in c.running() {
        let s = c.status(n).await.unwrap();
        let dead = s
            .members
            .iter()
            .find(|m| m.node_id == NodeId(f.killed))
            .unwrap();
        assert!(!dead.alive, "n{n} still sees n{} alive", f.killed);
    }
    // A generous bound: this is a correctness check, the figure comes from `smart bench`.
    assert!(
        f.failover_ms < 5_000.0,
        "failover took {} ms",
        f.failover_ms
    );
    // The new Control rebuilt and acts (its actor was not lost to a re-assertion race).
    wait_status(&c, f.new_control, Duration::from_secs(5), |s| {
        counter(s, "control_acting") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_multicast_unicast_seeds_carry_the_heartbeats() {
    let mut s = spec(3);
    s.unicast_only = true;
    let mut c = LocalCluster::start(s).unwrap();
    let f = kill_control_and_measure(&mut c).await.unwrap();
    assert_ne!(f.new_control, f.killed);
    for n in c.running() {
        let st = c.status(n).await.unwrap();
        assert!(counter(&st, "accepted") > 0);
        assert_eq!(st.members.iter().filter(|m| m.alive).count(), 2);
    }
}

/// Sends a Control command with `epoch` to node `to`, as node `from`: what a deposed
/// Control would send.
async fn command_as(c: &LocalCluster, from: u64, to: u64, epoch: u64) -> AgentReply {
    // With node `from`'s real key: what that (deposed) node itself would present.
    let ep = c.node_endpoint(from, 9_999);
    let addr = c.nodes[(to - 1) as usize].addr.to_string();
    let client = Client::<NodeProtocol>::connect(&TcpTransport, &addr, ep)
        .await
        .unwrap();
    let body = NodeRequest::Agent {
        epoch,
        cmd: AgentCommand::Report,
    };
    match client.request(body, Duration::from_secs(2)).await.unwrap() {
        NodeResponse::Agent(r) => r,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_control_steps_down_on_resume_and_its_commands_are_refused() {
    let mut c = LocalCluster::start(spec(3)).unwrap();
    let all = c.running();
    let (old, old_epoch) = c
        .wait_agreed_control(&all, Duration::from_secs(10), |_, _| true)
        .await
        .unwrap();
    c.pause(old).unwrap();
    let others: Vec<u64> = all.iter().copied().filter(|&n| n != old).collect();
    let (new, new_epoch) = c
        .wait_agreed_control(&others, Duration::from_secs(10), |n, e| {
            n != old && e > old_epoch
        })
        .await
        .unwrap();
    // The new Control commands the agents at its epoch: a round of it has reached them.
    cluster::wait_registry_copies(&c, &others, 1).await;
    c.resume(old).unwrap();
    // Everyone, the zombie included, ends up agreeing on a Control other than the zombie.
    let (agreed, _) = c
        .wait_agreed_control(&all, Duration::from_secs(10), |n, _| n != old)
        .await
        .unwrap();
    assert_eq!(agreed, new);
    let zs = c.status(old).await.unwrap();
    assert!(
        counter(&zs, "pauses") + counter(&zs, "stepped_down") >= 1,
        "zombie did not notice: {zs:?}"
    );
    // A command stamped with the deposed Control's epoch is refused by every agent.
    for &n in &others {
        match command_as(&c, old, n, old_epoch).await {
            AgentReply::Refused { epoch, highest } => {
                assert_eq!(epoch, old_epoch);
                assert!(highest >= new_epoch);
            }
            other => panic!("n{n} executed a stale command: {other:?}"),
        }
    }
    // And no agent ever executed a command with a lower epoch after a higher one.
    for &n in &all {
        let s = c.status(n).await.unwrap();
        assert_eq!(counter(&s, "agent_epoch_regressions"), 0, "n{n}: {s:?}");
        assert!(
            counter(&s, "agent_recent_commands") > 0,
            "n{n} was never commanded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_child_is_restarted() {
    let mut s = spec(1);
    s.env
        .push(("SMART_FAULT".into(), "agent86-panics=2".into()));
    let mut c = LocalCluster::start(s).unwrap();
    // The Control commands its own agent every second: two panics, two restarts, then the
    // agent works again.
    let st = wait_status(&c, 1, Duration::from_secs(15), |s| {
        counter(s, "restarts") == 2 && counter(s, "agent_recent_commands") > 0
    })
    .await;
    assert_eq!(counter(&st, "restarts"), 2);
    assert!(c.exited(1).is_none(), "node exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_keeps_panicking_escalates_and_the_node_exits_non_zero() {
    let mut s = spec(1);
    s.env
        .push(("SMART_FAULT".into(), "agent86-panics=1000".into()));
    s.extra_toml = "[supervision]\nmax_restarts = 3\nwithin = \"30s\"\n".into();
    let mut c = LocalCluster::start(s).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(code) = c.exited(1) {
            break code;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node did not escalate; log:\n{}",
            c.log_tail(1, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(70), "log:\n{}", c.log_tail(1, 30));
    assert!(c.log_tail(1, 50).contains("escalat"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_and_frames_are_dropped_and_counted() {
    use smart_proto::heartbeat::{self, Claim, Message};
    use tokio::io::AsyncWriteExt;

    let c = LocalCluster::start(spec(1)).unwrap();
    let st = wait_status(&c, 1, Duration::from_secs(10), |s| s.control.is_some()).await;
    let addr = c.nodes[0].addr;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let key = c.key().clone();
    let claim = Message::Claim(Claim {
        from: NodeId(77),
        incarnation: 1,
        seq: 1,
        epoch: 1,
    });
    // Node 77 has no key in the book: whatever node key tags its claim, it is refused.
    let book = &c.keys().book;
    let publics = book.nodes().map(|n| (n, *book.get(n).expect("listed")));
    let keys = smart_proto::pair::MemberKeys::derive(NodeId(77), &[77; 32], publics);
    let good = heartbeat::encode(&claim, &key, &keys).remove(0);
    let wrong_key = ClusterKey::from_bytes(b"not-the-cluster-key-at-all").unwrap();
    let forged = heartbeat::encode(&claim, &wrong_key, &keys).remove(0);
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let datagrams: Vec<Vec<u8>> = vec![
        vec![b'x'; 64],
        b"short".to_vec(),
        vec![0u8; 3000],
        good[..good.len() - 5].to_vec(),
        forged,
        flipped,
        good.clone(),
        good.clone(), // replayed
    ];
    for d in &datagrams {
        udp.send_to(d, addr).await.unwrap();
    }
    // A client with a token the node does not know is refused at the handshake.
    let creds = smart_api::client::Credentials::new("not-a-token", c.keys().book.clone());
    let bad = smart_api::client::ApiClient::connect(&addr.to_string(), creds).await;
    let err = bad.expect_err("an unknown token was accepted").to_string();
    assert!(err.contains("token"), "{err}");
    // Raw garbage and a hostile length prefix on the TCP port.
    for bytes in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff, 0xff, 0xff, 0xff, 1, 2],
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
    }
    let after = wait_status(&c, 1, Duration::from_secs(10), |s| {
        // Node 77 is not in the key book: its tagged claim and the copy are refused as
        // such.
        counter(s, "dropped_unknown_sender") >= 2
            // The cut-short copy, the other key's and the flipped one.
            && counter(s, "dropped_bad_tag") >= 3
            && counter(s, "transport_handshakes_failed") >= 3
            && counter(s, "transport_handshakes_bad_token") >= 1
    })
    .await;
    assert!(counter(&after, "dropped_bad_magic") >= 1, "{after:?}");
    assert!(counter(&after, "dropped_too_large") >= 1, "{after:?}");
    assert!(counter(&after, "dropped_truncated") >= 1, "{after:?}");
    // The node keeps serving and stays Control at the same epoch: the one tagged claim
    // came from a node id that is not in the key book.
    assert_eq!(after.control, st.control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_prints_json_with_control_and_members() {
    let c = LocalCluster::start(spec(2)).unwrap();
    let all = c.running();
    let (ctl, epoch) = c
        .wait_agreed_control(&all, Duration::from_secs(10), |_, _| true)
        .await
        .unwrap();
    // Over the HTTP API of node 2, address and token from the environment.
    let out = smart_testkit::cluster::succeeded(
        "smart status",
        smart_testkit::cluster::smart_cli(
            env!("CARGO_BIN_EXE_smart"),
            &["status", "--json"],
            &c.http_url(2),
            c.read_token(),
        ),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["control"]["node_id"], ctl);
    assert_eq!(v["control"]["epoch"], epoch);
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m["alive"] == true));
    // Every member's API URL: its own from config, the other's learned over the transport.
    let st = wait_status(&c, 2, Duration::from_secs(10), |s| {
        s.members.iter().all(|m| m.http.is_some())
    })
    .await;
    for m in &st.members {
        assert_eq!(m.http.as_deref(), Some(c.http_url(m.node_id.0).as_str()));
    }
    // Heartbeats carry each node's load: n2 sees n1's memory in use (sampled by n1's
    // Agent86, sent in n1's heartbeats).
    let st = wait_status(&c, 2, Duration::from_secs(10), |s| {
        s.members
            .iter()
            .any(|m| m.node_id == NodeId(1) && m.load.mem_used_mib > 0)
    })
    .await;
    assert!(st.members.iter().all(|m| m.load.mem_used_mib > 0), "{st:?}");
}

#[test]
fn a_broken_config_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "node_id = 1\ndata_dir = \"d\"\nlisten = \"127.0.0.1:7101\"\ncluster_key_file = \"k\"\n[timing]\nheartbeat_interval = \"fast\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smart"))
        .args(["node", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("heartbeat_interval"),
        "{err}"
    );
}
