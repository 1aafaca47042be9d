//! Commit latency of the desired-state log: three voters in one process over the in-memory
//! transport, each with its own redb file (fsynced commits) in a temporary directory.
//! Writes one command at a time, through the leader and then through a follower
//! (forwarded), and prints p50/p99/max per path. No assertion: a measurement.
//!
//! `cargo run --release -p smart-desired --example commit_latency [-- WRITES]`
//! (WRITES per path, 300 by default). `TMPDIR` picks the disk.

// Examples link every dev-dependency and the library's dependencies.
#![allow(unused_crate_dependencies)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use smart_desired::mem::MemRouter;
use smart_desired::{DesiredCmd, DesiredConfig, DesiredStore, RaftRole};
use smart_proto::NodeId;
use smart_proto::api::ServiceSpec;
use smart_proto::stats::percentile_sorted;

fn cmd(i: usize) -> DesiredCmd {
    DesiredCmd::PutService(ServiceSpec {
        name: format!("video-{i}"),
        class: "distributor".into(),
        command: vec!["vod".into(), "--listen".into(), "{listen}".into()],
        env: vec![],
        per_client_bps: Some(2_000_000),
        duration_ms: Some(600_000),
    })
}

async fn measure(store: &DesiredStore, from: usize, writes: usize) -> Vec<f64> {
    let mut ms = Vec::with_capacity(writes);
    for i in from..from + writes {
        let t = Instant::now();
        if let Err(e) = store.write(cmd(i), Duration::from_secs(5)).await {
            eprintln!("write {i} failed: {e}");
            continue;
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms
}

fn report(path: &str, mut ms: Vec<f64>) {
    let n = ms.len();
    ms.sort_by(f64::total_cmp);
    let p = |q| percentile_sorted(&ms, q).unwrap_or(f64::NAN);
    let (p50, p99, max) = (p(0.5), p(0.99), p(1.0));
    println!("{path:<24} n={n:<5} p50={p50:.2} ms  p99={p99:.2} ms  max={max:.2} ms");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let writes: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(300);
    let root = tempfile::tempdir()?;
    let router = MemRouter::new();
    let voters: BTreeSet<NodeId> = (1..=3).map(NodeId).collect();
    let mut nodes = Vec::new();
    for id in &voters {
        let store = DesiredStore::open(
            &root.path().join(id.to_string()),
            *id,
            voters.clone(),
            router.transport(*id),
            DesiredConfig::default(),
        )
        .await?;
        router.register(store.clone());
        nodes.push(store);
    }
    let leader = nodes[0]
        .wait_status(Duration::from_secs(10), |s| s.leader.is_some())
        .await
        .map_err(|s| format!("no leader: {s:?}"))?
        .leader
        .ok_or("no leader")?;
    let leader_store = nodes.iter().find(|n| n.id() == leader).ok_or("leader")?;
    leader_store
        .wait_status(Duration::from_secs(10), |s| s.role == RaftRole::Leader)
        .await
        .map_err(|s| format!("{leader} does not lead: {s:?}"))?;
    let follower = nodes.iter().find(|n| n.id() != leader).ok_or("follower")?;
    println!(
        "3 voters, in-memory transport, redb files under {}",
        root.path().display()
    );
    // Warm-up: the first writes open files and fill caches.
    measure(leader_store, 1_000_000, 20).await;
    report("via the leader", measure(leader_store, 0, writes).await);
    report("via a follower", measure(follower, writes, writes).await);
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}
