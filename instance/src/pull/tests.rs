//! Export and relay end to end over real sockets, with a stand-in workload that answers
//! `checkpoint` from known bytes.

use std::sync::atomic::{AtomicU64, Ordering};

use smart_proto::workload::{CHECKPOINT_FORMAT, VideoMeta, WorkloadClient, WorkloadError};

use super::*;

const KEY: &[u8] = b"a cluster key of enough length!!";

/// A workload at `<dir>/<name>.sock` whose checkpoint is `data` in blocks of `block`;
/// counts the checkpoints it was asked for.
fn fake_instance(dir: &Path, name: &str, data: Vec<u8>, block: u64) -> Arc<AtomicU64> {
    let asked = Arc::new(AtomicU64::new(0));
    let l = UnixListener::bind(dir.join(format!("{name}.sock"))).unwrap();
    let a = asked.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (data, a) = (data.clone(), a.clone());
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut rd = BufReader::new(rd);
                while let Ok(Some(l)) = workload::read_line(&mut rd).await {
                    assert_eq!(workload::parse_request(&l), Ok(WorkloadRequest::Checkpoint));
                    a.fetch_add(1, Ordering::SeqCst);
                    let blocks: Vec<_> = data
                        .chunks(block as usize)
                        .enumerate()
                        .map(|(i, c)| (0usize, i as u64, block, c.len() as u64))
                        .collect();
                    let h = CheckpointHeader {
                        ok: true,
                        format: CHECKPOINT_FORMAT,
                        videos: vec![VideoMeta {
                            path: "/v.ts".into(),
                            size: data.len() as u64,
                            bitrate_bps: 1_000_000,
                            duration_ms: 1000,
                        }],
                        blocks,
                        viewers: vec![(0, 0, 3)],
                        data_len: data.len() as u64,
                        hls: None,
                    };
                    wr.write_all(workload::ok_line(&h).as_bytes())
                        .await
                        .unwrap();
                    wr.write_all(&data).await.unwrap();
                }
            });
        }
    });
    asked
}

async fn export_on(dir: &Path, key: &[u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(serve_exports(l, PullKey::new(key), dir.to_path_buf()));
    addr
}

/// Starts a relay to `source` and reads the checkpoint through it as a restoring instance
/// does; returns what the instance got and what the relay said.
async fn pull_through(
    dir: &Path,
    source: String,
    key: &[u8],
    rate: Option<u64>,
) -> (
    Result<smart_proto::workload::Checkpoint, WorkloadError>,
    Result<Relayed, PullError>,
) {
    let sock = dir.join("relay.sock");
    let _ = std::fs::remove_file(&sock);
    let l = UnixListener::bind(&sock).unwrap();
    let relay = tokio::spawn(relay(
        l,
        source,
        "vod-1.2".into(),
        PullKey::new(key),
        rate,
        Duration::from_secs(5),
        Duration::from_secs(20),
    ));
    let got = async {
        WorkloadClient::connect(&sock, Duration::from_secs(20))
            .await?
            .checkpoint(None)
            .await
    }
    .await;
    (got, relay.await.unwrap())
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn a_pull_delivers_the_exact_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(300_000);
    let asked = fake_instance(dir.path(), "vod-1.2", d.clone(), 65_536);
    let addr = export_on(dir.path(), KEY).await;
    let (got, relayed) = pull_through(dir.path(), addr, KEY, None).await;
    let cp = got.unwrap();
    assert_eq!(relayed.unwrap(), Relayed { bytes: 300_000 });
    assert_eq!(cp.data.concat(), d);
    assert_eq!(cp.header.blocks.len(), 5);
    assert_eq!(cp.header.viewers, vec![(0, 0, 3)]);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_wrong_key_gets_nothing_and_the_instance_is_never_asked() {
    let dir = tempfile::tempdir().unwrap();
    let asked = fake_instance(dir.path(), "vod-1.2", data(1000), 512);
    let addr = export_on(dir.path(), KEY).await;
    let (got, relayed) =
        pull_through(dir.path(), addr, b"some other cluster's key here...", None).await;
    match relayed {
        Err(PullError::Refused(m)) => assert!(m.contains("bad proof"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The relay tells the restoring instance why.
    match got {
        Err(WorkloadError::Refused(m)) => assert!(m.contains("bad proof"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_unknown_instance_or_an_unreachable_source_is_refused_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let addr = export_on(dir.path(), KEY).await;
    let (got, relayed) = pull_through(dir.path(), addr, KEY, None).await;
    assert!(matches!(&relayed, Err(PullError::Refused(m)) if m.contains("no instance vod-1.2")));
    assert!(!relayed.unwrap_err().retryable());
    assert!(got.is_err());
    // Nothing listens there any more.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap().to_string();
    drop(gone);
    let (got, relayed) = pull_through(dir.path(), addr, KEY, None).await;
    let e = relayed.unwrap_err();
    assert!(
        matches!(e, PullError::Unreachable(_)) && e.retryable(),
        "{e:?}"
    );
    assert!(matches!(got, Err(WorkloadError::Refused(m)) if m.contains("unreachable")));
}

#[tokio::test]
async fn a_tampered_copy_never_completes_a_restore() {
    let dir = tempfile::tempdir().unwrap();
    fake_instance(dir.path(), "vod-1.2", data(200_000), 65_536);
    let addr = export_on(dir.path(), KEY).await;
    // A man in the middle that flips one byte of the data.
    let mitm = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mitm_addr = mitm.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (c, _) = mitm.accept().await.unwrap();
        let s = TcpStream::connect(&addr).await.unwrap();
        let (mut crd, mut cwr) = c.into_split();
        let (mut srd, mut swr) = s.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut crd, &mut swr).await });
        // Forwarded as it comes (the challenge must get through), byte 100 000 of the
        // stream (inside the data: challenge and header are far shorter) flipped.
        let (mut seen, mut buf) = (0usize, vec![0u8; 65_536]);
        loop {
            let n = srd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            if (seen..seen + n).contains(&100_000) {
                buf[100_000 - seen] ^= 1;
            }
            seen += n;
            if cwr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let (got, relayed) = pull_through(dir.path(), mitm_addr, KEY, None).await;
    assert!(matches!(relayed, Err(PullError::Corrupt)), "{relayed:?}");
    assert!(got.is_err());
}

#[tokio::test]
async fn idle_connections_hold_no_export_slot_and_a_members_pull_still_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let d = data(200_000);
    fake_instance(dir.path(), "vod-1.2", d.clone(), 65_536);
    let addr = export_on(dir.path(), KEY).await;
    // A stranger holds more connections than there are places to wait for a proof, and
    // far more than there are export slots, and says nothing.
    let mut idle = Vec::new();
    for _ in 0..(MAX_PENDING_PULLS + MAX_CONCURRENT_EXPORTS + 20) {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let (got, relayed) = pull_through(dir.path(), addr, KEY, None).await;
    assert_eq!(relayed.unwrap(), Relayed { bytes: 200_000 });
    assert_eq!(got.unwrap().data.concat(), d);
    drop(idle);
}

#[tokio::test]
async fn the_source_paces_the_copy_at_the_asked_rate() {
    let dir = tempfile::tempdir().unwrap();
    fake_instance(dir.path(), "vod-1.2", data(500_000), 65_536);
    let addr = export_on(dir.path(), KEY).await;
    let t = std::time::Instant::now();
    // 500 kB at 16 Mbit/s: 250 ms at least.
    let (got, relayed) = pull_through(dir.path(), addr, KEY, Some(16_000_000)).await;
    let took = t.elapsed();
    assert!(got.is_ok() && relayed.is_ok());
    assert!(took >= Duration::from_millis(240), "{took:?}");
}

#[test]
fn instance_names_cannot_leave_the_directory() {
    assert!(valid_instance_name("vod-1.2"));
    for bad in ["", ".", "..", "../x", "a/b", "a b", "x\n"] {
        assert!(!valid_instance_name(bad), "{bad:?}");
    }
}
