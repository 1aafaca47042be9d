//! Three (or so) control nodes in one process over the in-memory transport, each with its
//! own redb file in a temporary directory: elections, commits, forwarding, restarts,
//! partitions, snapshots and their chunked transfer, malformed messages.
//!
//! Real time, short LAN timings; every wait is on a condition with a deadline.

// Test targets link every dev-dependency and the library's dependencies.
#![allow(unused_crate_dependencies)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use smart_desired::mem::MemRouter;
use smart_desired::{
    ApplyResult, DesiredCmd, DesiredConfig, DesiredState, DesiredStore, OpenError, RaftRole,
    WriteError,
};
use smart_proto::NodeId;
use smart_proto::api::ServiceSpec;
use smart_proto::desired::{RAFT_PAYLOAD_MAX, RaftRpc, RaftRpcAnswer, WriteRefusal};
use tokio::time::Instant;

/// Generous: a loaded 2-core machine in a debug build.
const WAIT: Duration = Duration::from_secs(10);
const WRITE: Duration = Duration::from_secs(3);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn spec(name: &str, env_bytes: usize) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        class: "distributor".into(),
        command: vec!["vod".into(), "--listen".into(), "{listen}".into()],
        env: vec![("PAD".into(), "x".repeat(env_bytes))],
        per_client_bps: Some(1_000_000),
        duration_ms: Some(60_000),
    }
}

fn put(name: &str) -> DesiredCmd {
    DesiredCmd::PutService(spec(name, 8))
}

struct Cluster {
    router: MemRouter,
    root: tempfile::TempDir,
    voters: BTreeSet<NodeId>,
    config: DesiredConfig,
    nodes: BTreeMap<NodeId, DesiredStore>,
}

impl Cluster {
    async fn start(n: u64, config: DesiredConfig) -> Cluster {
        init_tracing();
        let mut c = Cluster {
            router: MemRouter::new(),
            root: tempfile::tempdir().expect("tempdir"),
            voters: (1..=n).map(NodeId).collect(),
            config,
            nodes: BTreeMap::new(),
        };
        for id in c.voters.clone() {
            c.open(id).await;
        }
        c
    }

    fn dir(&self, id: NodeId) -> PathBuf {
        self.root.path().join(id.to_string())
    }

    async fn open(&mut self, id: NodeId) {
        let store = DesiredStore::open(
            &self.dir(id),
            id,
            self.voters.clone(),
            self.router.transport(id),
            self.config.clone(),
        )
        .await
        .expect("open");
        self.router.register(store.clone());
        self.nodes.insert(id, store);
    }

    async fn stop(&mut self, id: NodeId) {
        self.router.unregister(id);
        if let Some(store) = self.nodes.remove(&id) {
            store.shutdown().await;
        }
    }

    async fn stop_all(&mut self) {
        for id in self.voters.clone() {
            self.stop(id).await;
        }
    }

    fn node(&self, id: NodeId) -> &DesiredStore {
        &self.nodes[&id]
    }

    /// Waits until one of `among` leads and every node of `among` knows it.
    async fn leader_of(&self, among: &[NodeId]) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let views: Vec<_> = among.iter().map(|id| self.node(*id).status()).collect();
            if let Some(l) = views[0].leader
                && among.contains(&l)
                && views.iter().all(|s| s.leader == Some(l))
                && self.node(l).status().role == RaftRole::Leader
            {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?}: {views:?}"
            );
            // Any node's status changes as the election goes: wait on the first's.
            let _ = self
                .node(among[0])
                .wait_status(Duration::from_millis(50), |_| false)
                .await;
        }
    }

    /// Waits until `id` counts as the acting leader (a quorum acknowledged it recently).
    async fn wait_leads(&self, id: NodeId) {
        let deadline = Instant::now() + WAIT;
        while !self.node(id).leads_with_quorum() {
            assert!(
                Instant::now() < deadline,
                "{id} never led with a quorum: {:?}",
                self.node(id).status()
            );
            let _ = self
                .node(id)
                .wait_status(Duration::from_millis(50), |_| false)
                .await;
        }
    }

    async fn leader(&self) -> NodeId {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.leader_of(&all).await
    }

    /// Waits until node `id`'s applied state satisfies `pred`.
    async fn wait_state(
        &self,
        id: NodeId,
        pred: impl Fn(&DesiredState) -> bool,
    ) -> Arc<DesiredState> {
        let mut rx = self.node(id).subscribe();
        let deadline = Instant::now() + WAIT;
        loop {
            let state = rx.borrow_and_update().clone();
            if pred(&state) {
                return state;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("{id}'s state never satisfied the condition: {state:?}"),
            }
        }
    }

    /// Waits until every node's state equals `expected`.
    async fn wait_all(&self, expected: &DesiredState) {
        for id in self.nodes.keys() {
            self.wait_state(*id, |s| s == expected).await;
        }
    }
}

fn names(state: &DesiredState) -> Vec<String> {
    state.services.keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_a_leader_and_commit_a_write_everywhere() {
    let mut c = Cluster::start(3, DesiredConfig::default()).await;
    let l = c.leader().await;
    c.wait_leads(l).await;
    let written = c.node(l).write(put("video-1"), WRITE).await.expect("write");
    assert_eq!(written.result, ApplyResult::Applied);
    let again = c.node(l).write(put("video-1"), WRITE).await.expect("write");
    assert_eq!(again.result, ApplyResult::Unchanged);
    assert!(again.index > written.index);
    let mut expected = DesiredState::default();
    expected.apply(&put("video-1"));
    c.wait_all(&expected).await;
    for id in c.voters.clone() {
        if id != l {
            assert!(!c.node(id).leads_with_quorum(), "{id} is a follower");
            assert_eq!(c.node(id).leader(), Some(l));
        }
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_follower_goes_to_the_leader() {
    let mut c = Cluster::start(3, DesiredConfig::default()).await;
    let l = c.leader().await;
    let f = *c.voters.iter().find(|id| **id != l).expect("a follower");
    let before = c.router.delivered("client-write");
    let w = c
        .node(f)
        .write(
            DesiredCmd::Drain {
                node: NodeId(9),
                by_health: false,
            },
            WRITE,
        )
        .await
        .expect("forwarded write");
    assert_eq!(w.result, ApplyResult::Applied);
    assert_eq!(c.router.delivered("client-write"), before + 1);
    let mut expected = DesiredState::default();
    expected.drained.insert(NodeId(9));
    c.wait_all(&expected).await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_group_restarts_with_its_desired_state() {
    let mut c = Cluster::start(3, DesiredConfig::default()).await;
    let l = c.leader().await;
    let cmds = [
        put("a"),
        put("b"),
        DesiredCmd::RemoveService { name: "a".into() },
        DesiredCmd::Drain {
            node: NodeId(3),
            by_health: true,
        },
    ];
    let mut expected = DesiredState::default();
    for cmd in &cmds {
        c.node(l).write(cmd.clone(), WRITE).await.expect("write");
        expected.apply(cmd);
    }
    c.wait_all(&expected).await;
    c.stop_all().await;

    for id in c.voters.clone() {
        c.open(id).await;
    }
    // Restored from disk before any election: every node re-applied what it had committed.
    for id in c.voters.clone() {
        assert_eq!(*c.node(id).state(), expected, "{id} after the restart");
    }
    let l = c.leader().await;
    c.node(l)
        .write(put("c"), WRITE)
        .await
        .expect("write after restart");
    expected.apply(&put("c"));
    c.wait_all(&expected).await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_cannot_commit_and_the_majority_moves_on() {
    let mut c = Cluster::start(3, DesiredConfig::default()).await;
    let old = c.leader().await;
    c.node(old)
        .write(put("before"), WRITE)
        .await
        .expect("write");
    let rest: Vec<NodeId> = c.voters.iter().copied().filter(|id| *id != old).collect();

    c.router.isolate(old);
    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let refused = c.node(old).write(put("lost"), timeout).await;
    let took = started.elapsed();
    assert_eq!(
        refused,
        Err(WriteError::NoMajority {
            reachable: 1,
            needed: 2
        })
    );
    assert!(
        took < timeout + Duration::from_millis(500),
        "the refusal took {took:?} for a {timeout:?} deadline"
    );
    let msg = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("no majority of control nodes reachable"),
        "{msg}"
    );
    // The cut-off leader no longer counts as acting.
    assert!(!c.node(old).leads_with_quorum());

    let new = c.leader_of(&rest).await;
    assert_ne!(new, old);
    let w = c
        .node(new)
        .write(put("after"), WRITE)
        .await
        .expect("majority write");
    assert_eq!(w.result, ApplyResult::Applied);
    c.wait_leads(new).await;

    c.router.heal();
    // The old leader follows the new one and catches up; its own entry was never committed
    // and is replaced, not applied.
    let caught_up = c
        .node(old)
        .wait_status(WAIT, |s| {
            s.leader == Some(new) && s.last_applied >= Some(w.index)
        })
        .await;
    assert!(
        caught_up.is_ok(),
        "old leader did not catch up: {caught_up:?}"
    );
    let state = c.node(old).state();
    assert_eq!(
        names(&state),
        vec!["after".to_string(), "before".to_string()]
    );
    let mut expected = DesiredState::default();
    expected.apply(&put("before"));
    expected.apply(&put("after"));
    c.wait_all(&expected).await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_the_minority_side_fails_with_no_majority() {
    let mut c = Cluster::start(3, DesiredConfig::default()).await;
    let l = c.leader().await;
    let f = *c.voters.iter().find(|id| **id != l).expect("a follower");
    c.router.isolate(f);
    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let refused = c.node(f).write(put("lost"), timeout).await;
    assert_eq!(
        refused,
        Err(WriteError::NoMajority {
            reachable: 1,
            needed: 2
        })
    );
    assert!(started.elapsed() < timeout + Duration::from_millis(500));
    c.router.heal();
    let w = c
        .node(f)
        .write(put("kept"), WRITE)
        .await
        .expect("write after heal");
    assert_eq!(w.result, ApplyResult::Applied);
    let mut expected = DesiredState::default();
    expected.apply(&put("kept"));
    c.wait_all(&expected).await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_built_the_log_purged_and_a_restart_loads_the_snapshot() {
    let config = DesiredConfig {
        snapshot_every: 50,
        logs_kept_after_snapshot: 5,
        ..DesiredConfig::default()
    };
    let mut c = Cluster::start(3, config).await;
    let l = c.leader().await;
    let mut expected = DesiredState::default();
    let mut last = 0;
    for i in 0..120 {
        let cmd = put(&format!("video-{i}"));
        last = c
            .node(l)
            .write(cmd.clone(), WRITE)
            .await
            .expect("write")
            .index;
        expected.apply(&cmd);
    }
    c.wait_all(&expected).await;
    // The policy: a snapshot every 50 entries, the log purged up to 5 entries behind it.
    let compacted = |s: &smart_desired::DesiredStatus| {
        matches!((s.snapshot, s.purged, s.last_log_index),
            (Some(snap), Some(purged), Some(last)) if snap + 50 > last && purged + 5 == snap)
    };
    for id in c.voters.clone() {
        let status = c.node(id).wait_status(WAIT, compacted).await;
        assert!(
            status.is_ok(),
            "{id} has no snapshot or did not purge: {status:?}"
        );
    }

    let f = *c.voters.iter().find(|id| **id != l).expect("a follower");
    c.stop(f).await;
    c.open(f).await;
    let status = c.node(f).status();
    assert!(compacted(&status), "{status:?}");
    assert_eq!(*c.node(f).state(), expected);
    assert!(status.last_applied >= Some(last), "{status:?}");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_from_a_snapshot_sent_in_chunks() {
    let config = DesiredConfig {
        snapshot_every: 20,
        logs_kept_after_snapshot: 0,
        snapshot_chunk_bytes: 8 * 1024,
        ..DesiredConfig::default()
    };
    let mut c = Cluster::start(3, config).await;
    let l = c.leader().await;
    let lagging = *c.voters.iter().find(|id| **id != l).expect("a follower");
    c.router.isolate(lagging);

    let mut expected = DesiredState::default();
    for i in 0..60 {
        // About 1 KiB each: the state is several chunks.
        let cmd = DesiredCmd::PutService(spec(&format!("video-{i}"), 1000));
        c.node(l).write(cmd.clone(), WRITE).await.expect("write");
        expected.apply(&cmd);
    }
    let state_bytes = postcard::to_allocvec(&expected).expect("encode").len();
    assert!(state_bytes > 4 * 8 * 1024, "state of {state_bytes} bytes");
    let behind = c.node(lagging).status().last_log_index;
    let purged = c
        .node(l)
        .wait_status(WAIT, |s| s.purged > behind)
        .await
        .expect("the leader purges what the lagging node lacks");
    assert!(purged.purged > behind);

    let chunks_before = c.router.delivered("install-snapshot");
    c.router.heal();
    c.wait_state(lagging, |s| *s == expected).await;
    let chunks = c.router.delivered("install-snapshot") - chunks_before;
    assert!(
        chunks >= 4,
        "{chunks} install-snapshot messages for {state_bytes} bytes"
    );
    let status = c.node(lagging).status();
    assert!(status.snapshot.is_some(), "{status:?}");

    // The installed snapshot is durable: the node restarts from it.
    c.stop(lagging).await;
    c.open(lagging).await;
    assert_eq!(*c.node(lagging).state(), expected);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_answered_as_such_and_change_nothing() {
    let mut c = Cluster::start(3, DesiredConfig::default()).await;
    let l = c.leader().await;
    c.node(l).write(put("a"), WRITE).await.expect("write");
    let before = c.node(l).status();
    for id in c.voters.clone() {
        let node = c.node(id);
        for rpc in [
            RaftRpc::AppendEntries(vec![0xff; 16]),
            RaftRpc::AppendEntries(vec![]),
            RaftRpc::Vote(vec![1, 2, 3]),
            RaftRpc::InstallSnapshot(vec![0x80; 64]),
            RaftRpc::InstallSnapshot(vec![0; RAFT_PAYLOAD_MAX + 1]),
        ] {
            let kind = rpc.kind();
            match node.handle_rpc(id, rpc).await {
                RaftRpcAnswer::Malformed(why) => assert!(why.starts_with(kind), "{why}"),
                other => panic!("{id} answered {other:?} to a garbage {kind}"),
            }
        }
        // A command too large for one Raft payload is refused before it is proposed.
        let huge = DesiredCmd::PutService(spec("huge", RAFT_PAYLOAD_MAX));
        match node
            .handle_rpc(
                id,
                RaftRpc::ClientWrite {
                    cmd: huge.clone(),
                    within_ms: 100,
                },
            )
            .await
        {
            RaftRpcAnswer::Write(Err(WriteRefusal::TooLarge { .. })) => {}
            other => panic!("{id} answered {other:?} to an oversized write"),
        }
        assert!(matches!(
            node.write(huge, WRITE).await,
            Err(WriteError::TooLarge { .. })
        ));
    }
    // A sender's wait is bounded by the receiver, whatever number it sends.
    let f = *c.voters.iter().find(|id| **id != l).expect("a follower");
    let forever = |name: &str| RaftRpc::ClientWrite {
        cmd: put(name),
        within_ms: u64::MAX,
    };
    match c.node(l).handle_rpc(f, forever("forever")).await {
        RaftRpcAnswer::Write(Ok(w)) => assert_eq!(w.result, ApplyResult::Applied),
        other => panic!("the leader answered {other:?}"),
    }
    match c.node(f).handle_rpc(l, forever("elsewhere")).await {
        RaftRpcAnswer::Write(Err(WriteRefusal::NotLeader { leader })) => {
            assert_eq!(leader, Some(l))
        }
        other => panic!("a follower answered {other:?}"),
    }
    assert_eq!(c.node(l).status().term, before.term);
    let w = c
        .node(l)
        .write(put("b"), WRITE)
        .await
        .expect("still writable");
    assert_eq!(w.result, ApplyResult::Applied);
    assert_eq!(names(&c.node(l).state()), ["a", "b", "forever"]);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_stand_or_lead_in_another_members_name() {
    let mut c = Cluster::start(3, DesiredConfig::default()).await;
    let l = c.leader().await;
    c.wait_leads(l).await;
    let others: Vec<NodeId> = c.voters.iter().copied().filter(|n| *n != l).collect();
    let (f, impostor) = (others[0], others[1]);
    let before = c.node(f).status();
    // The impostor asks f for a vote for the leader (a far term: granted, it would depose
    // the leader), and sends entries as the leader.
    let vote =
        openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(before.term + 100, l.0), None);
    let rpc = RaftRpc::Vote(postcard::to_allocvec(&vote).unwrap());
    match c.node(f).handle_rpc(impostor, rpc.clone()).await {
        RaftRpcAnswer::Malformed(why) => assert!(why.contains("in the name of"), "{why}"),
        other => panic!("an impostor's vote request was answered {other:?}"),
    }
    assert_eq!(c.node(f).status().term, before.term, "the term moved");
    assert_eq!(c.node(f).status().impostor_rpcs, 1);
    assert_eq!(c.node(l).leader(), Some(l));
    assert!(c.node(l).leads_with_quorum());
    // The same request from the member it names is a Raft message like any other.
    assert!(matches!(
        c.node(f).handle_rpc(l, rpc).await,
        RaftRpcAnswer::Reply(_)
    ));
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_a_voter_does_not_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = MemRouter::new();
    let err = DesiredStore::open(
        dir.path(),
        NodeId(7),
        BTreeSet::from([NodeId(1), NodeId(2)]),
        router.transport(NodeId(7)),
        DesiredConfig::default(),
    )
    .await
    .expect_err("not a voter");
    assert!(
        matches!(err, OpenError::NotAVoter { me: NodeId(7), .. }),
        "{err}"
    );
    let err = DesiredStore::open(
        dir.path(),
        NodeId(1),
        BTreeSet::from([NodeId(1)]),
        router.transport(NodeId(1)),
        DesiredConfig {
            snapshot_chunk_bytes: RAFT_PAYLOAD_MAX as u64,
            ..DesiredConfig::default()
        },
    )
    .await
    .expect_err("chunk over the payload limit");
    assert!(matches!(err, OpenError::Config(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_held_or_corrupt_is_an_open_error() {
    init_tracing();
    let router = MemRouter::new();
    let voters = BTreeSet::from([NodeId(1)]);
    let open = |dir: PathBuf| {
        let router = router.clone();
        let voters = voters.clone();
        async move {
            DesiredStore::open(
                &dir,
                NodeId(1),
                voters,
                router.transport(NodeId(1)),
                DesiredConfig::default(),
            )
            .await
        }
    };
    let held = tempfile::tempdir().expect("tempdir");
    let first = open(held.path().to_path_buf()).await.expect("first open");
    // A lone voter leads itself and commits alone.
    let w = first.write(put("solo"), WRITE).await.expect("write");
    assert_eq!(w.result, ApplyResult::Applied);
    let err = open(held.path().to_path_buf())
        .await
        .expect_err("file held");
    assert!(matches!(err, OpenError::Store { .. }), "{err}");
    first.shutdown().await;
    let again = open(held.path().to_path_buf())
        .await
        .expect("open after shutdown");
    assert_eq!(names(&again.state()), ["solo"]);
    again.shutdown().await;

    let corrupt = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        corrupt.path().join(smart_desired::STORE_FILE),
        vec![0x5a; 64 * 1024],
    )
    .expect("write garbage");
    let err = open(corrupt.path().to_path_buf())
        .await
        .expect_err("garbage file");
    assert!(matches!(err, OpenError::Store { .. }), "{err}");
}
