//! The workload control API: how SMART's Agent86 drives a workload instance (usage, checkpoint,
//! restore, handoff, drain), documented so that other workloads can implement it.
//!
//! ## Transport
//! The instance reads the environment variable `SMART_CONTROL_SOCKET` (a filesystem path) and
//! **listens** there on a Unix stream socket; Agent86 connects as a client. Several clients
//! may connect; each connection carries any number of requests, answered in order. A request
//! is one JSON object on one line (`\n`-terminated, at most 64 KiB); every reply is one JSON
//! object on one line. Failures reply `{"ok":false,"error":"<message>"}`.
//!
//! ## Operations
//! | request | reply |
//! |---|---|
//! | `{"op":"usage"}` | `{"bytes_sent":u64,"bytes_received":u64,"clients":u32,"cache_bytes":u64, ...}` (extra keys: `origin_streams`, `viewers_total`, `cache_hits`, `cache_misses`, `evictions`, `mode`) |
//! | `{"op":"checkpoint"}` | a header line, then `data_len` raw bytes (see below) |
//! | `{"op":"restore","from":"/path/of/source.sock"}` | `{"ok":true,"videos":n,"blocks":n,"bytes":n,"ms":f64}` |
//! | `{"op":"handoff","to":"http://host:port"}` | `{"ok":true,"viewers":n,"ms":f64}` |
//! | `{"op":"drain"}` | `{"ok":true,"clients":n}` |
//! | `{"op":"resume"}` | `{"ok":true}` |
//! | `{"op":"stop"}` | `{"ok":true}`; the process then exits |
//!
//! **checkpoint** header: `{"ok":true,"format":1,"videos":[{"path","size","bitrate_bps",
//! "duration_ms"}],"blocks":[[video,block,block_size,len],...],"viewers":[[video,offset,count],
//! ...],"data_len":N}` followed on the same connection by exactly `N` bytes: the blocks' data
//! concatenated in the order of `blocks` (block `b` of size `block_size` starts at byte
//! `b*block_size` of the video). Viewer positions are block start offsets (viewers themselves
//! know their exact byte); the restoring instance pins them for 10 s so the blocks the
//! handed-off viewers will ask for are not evicted before they arrive. The cache is taken by reference while the instance keeps serving
//! (blocks never change), so the checkpoint is one consistent pass.
//!
//! **restore** makes the instance (started empty, in restore mode) connect to the source's
//! socket, ask `checkpoint` and load it while the source keeps serving: pre-copy.
//!
//! **handoff**: the instance closes every viewer connection at once and from then on answers
//! every request (the viewers' reconnects included) with `307 Temporary Redirect` to the same
//! path under `to`; viewers follow it and resume with `Range: bytes=<last byte + 1>-`. A viewer
//! that cannot reach the old instance goes back to its front-end URL, which must point at the
//! new instance (SMART's FrontEnd answers `302`). The reply comes once all viewers are closed.
//! Keep the source running for a grace period after the reply (a few seconds; `usage` counts
//! the 307s it sent as `redirects`) so that reconnecting viewers find their redirect; then
//! `stop` it. Viewers that arrive after it is gone need a front-end URL.
//!
//! **drain**: new viewers get `503`; existing ones continue. `resume` undoes drain/handoff.
//!
//! An instance without this socket can be started, stopped and restarted elsewhere, but not
//! live-migrated.
//!
//! ## Layout
//! - [`serve`]: the server side over a [`Distributor`].
//! - [`Client`]: the client Agent86 uses; [`migrate`]: restore + handoff in one call.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::distributor::{Distributor, Snapshot, VideoMeta};
use crate::http::Url;

/// Environment variable holding the control socket path.
pub const ENV_SOCKET: &str = "SMART_CONTROL_SOCKET";
const MAX_LINE: u64 = 64 * 1024;
/// Largest checkpoint accepted (keeps a corrupt header from allocating wildly).
const MAX_CHECKPOINT: u64 = 64 << 30;
const MAX_BLOCK: u64 = 64 << 20;

/// Control API failure.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Socket error.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// A line that is not the JSON expected.
    #[error("bad control message: {0}")]
    Protocol(String),
    /// The instance answered `ok:false`.
    #[error("instance refused: {0}")]
    Refused(String),
}

/// Reply to `usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes sent to clients.
    pub bytes_sent: u64,
    /// Bytes received (from the origin).
    pub bytes_received: u64,
    /// Clients connected now.
    pub clients: u32,
    /// Bytes of cache held now.
    pub cache_bytes: u64,
    /// Origin streams opened (distributor extension).
    #[serde(default)]
    pub origin_streams: u64,
}

/// Reply to `restore`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Videos restored.
    pub videos: u64,
    /// Blocks received.
    pub blocks: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Time taken.
    pub ms: f64,
}

/// Reply to `handoff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffReport {
    /// Viewers that were connected and have been told to move.
    pub viewers: u64,
    /// Time until all were closed.
    pub ms: f64,
}

/// Result of [`migrate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The pre-copy.
    pub restore: RestoreReport,
    /// The cut-over.
    pub handoff: HandoffReport,
    /// Both, wall clock.
    pub total_ms: f64,
}

/// The JSON line that starts a `checkpoint` reply (see the module docs); decoded and checked
/// by [`decode_checkpoint_header`].
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointHeader {
    ok: bool,
    format: u32,
    videos: Vec<VideoMeta>,
    blocks: Vec<(usize, u64, u64, u64)>,
    viewers: Vec<(usize, u64, u32)>,
    data_len: u64,
}

/// Parses one request line of the control API: JSON with a string `op` (a missing or
/// non-string `op` is the empty op, answered "unknown op"). Pure; fuzzed (`fuzz/`).
pub fn parse_control_line(line: &str) -> Result<(String, Value), String> {
    let req: Value = serde_json::from_str(line).map_err(|e| format!("bad json: {e}"))?;
    let op = req
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Ok((op, req))
}

/// Decodes and checks a checkpoint header: format 1, block lengths that add up (without
/// overflow) to `data_len`, nothing above the size limits. Pure; fuzzed (`fuzz/`).
pub fn decode_checkpoint_header(v: Value) -> Result<CheckpointHeader, ControlError> {
    let h: CheckpointHeader =
        serde_json::from_value(v).map_err(|e| ControlError::Protocol(e.to_string()))?;
    let sum = h
        .blocks
        .iter()
        .try_fold(0u64, |acc, b| acc.checked_add(b.3));
    if h.format != 1
        || sum != Some(h.data_len)
        || h.data_len > MAX_CHECKPOINT
        || h.blocks.iter().any(|b| b.3 > MAX_BLOCK)
    {
        return Err(ControlError::Protocol(
            "inconsistent checkpoint header".into(),
        ));
    }
    Ok(h)
}

/// Serves the control API for `dist` on `listener`. `stopped` is notified after a `stop`.
pub async fn serve(dist: Arc<Distributor>, listener: UnixListener, stopped: Arc<Notify>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let (d, st) = (dist.clone(), stopped.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(d, s, st).await {
                        tracing::debug!(cause = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(cause = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn read_line(rd: &mut BufReader<OwnedReadHalf>) -> Result<Option<String>, ControlError> {
    let mut line = String::new();
    let n = (&mut *rd).take(MAX_LINE).read_line(&mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(ControlError::Protocol("line too long or truncated".into()));
    }
    Ok(Some(line))
}

async fn write_json(wr: &mut OwnedWriteHalf, v: &Value) -> Result<(), ControlError> {
    let mut s = v.to_string();
    s.push('\n');
    wr.write_all(s.as_bytes()).await?;
    Ok(())
}

async fn connection(
    d: Arc<Distributor>,
    s: UnixStream,
    stopped: Arc<Notify>,
) -> Result<(), ControlError> {
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    while let Some(line) = read_line(&mut rd).await? {
        let (op, req) = match parse_control_line(&line) {
            Ok(r) => r,
            Err(e) => {
                write_json(&mut wr, &json!({"ok": false, "error": e})).await?;
                continue;
            }
        };
        let op = op.as_str();
        tracing::debug!(op, "control request");
        let reply = match op {
            "usage" => {
                let (hits, misses, evictions, _) = d.cache_counters();
                let st = &d.stats;
                let ld =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                json!({
                    "bytes_sent": ld(&st.bytes_sent),
                    "bytes_received": ld(&st.bytes_received),
                    "clients": ld(&st.viewers_active) as u32,
                    "cache_bytes": d.cache_bytes(),
                    "origin_streams": ld(&st.origin_streams),
                    "viewers_total": ld(&st.viewers_total),
                    "cache_hits": hits,
                    "cache_misses": misses,
                    "evictions": evictions,
                    "errors": ld(&st.errors),
                    "redirects": ld(&st.redirects),
                    "write_errors": ld(&st.write_errors),
                    "mode": format!("{:?}", d.mode()),
                })
            }
            "checkpoint" => {
                let snap = d.checkpoint();
                let header = CheckpointHeader {
                    ok: true,
                    format: 1,
                    videos: snap.videos,
                    blocks: snap
                        .blocks
                        .iter()
                        .map(|(v, b, bs, data)| (*v, *b, *bs, data.len() as u64))
                        .collect(),
                    viewers: snap.viewers,
                    data_len: snap.blocks.iter().map(|x| x.3.len() as u64).sum(),
                };
                let v = serde_json::to_value(&header)
                    .map_err(|e| ControlError::Protocol(e.to_string()))?;
                write_json(&mut wr, &v).await?;
                for (_, _, _, data) in &snap.blocks {
                    wr.write_all(data).await?;
                }
                continue;
            }
            "restore" => match req.get("from").and_then(Value::as_str) {
                Some(from) => match restore(&d, Path::new(from)).await {
                    Ok(r) => {
                        json!({"ok": true, "videos": r.videos, "blocks": r.blocks, "bytes": r.bytes, "ms": r.ms})
                    }
                    Err(e) => json!({"ok": false, "error": e.to_string()}),
                },
                None => json!({"ok": false, "error": "restore needs \"from\""}),
            },
            "handoff" => match req.get("to").and_then(Value::as_str).map(Url::parse) {
                Some(Ok(to)) => {
                    let t = Instant::now();
                    let n = d.handoff(to, Duration::from_secs(5)).await;
                    json!({"ok": true, "viewers": n, "ms": t.elapsed().as_secs_f64() * 1000.0})
                }
                Some(Err(e)) => json!({"ok": false, "error": e}),
                None => json!({"ok": false, "error": "handoff needs \"to\""}),
            },
            "drain" => {
                d.drain();
                json!({"ok": true, "clients": d.stats.viewers_active.load(std::sync::atomic::Ordering::Relaxed)})
            }
            "resume" => {
                d.resume();
                json!({"ok": true})
            }
            "stop" => {
                d.stop();
                write_json(&mut wr, &json!({"ok": true})).await?;
                stopped.notify_waiters();
                return Ok(());
            }
            other => json!({"ok": false, "error": format!("unknown op {other:?}")}),
        };
        write_json(&mut wr, &reply).await?;
    }
    Ok(())
}

/// Pre-copy: loads the checkpoint of the instance listening at `source` into `d`.
pub async fn restore(d: &Arc<Distributor>, source: &Path) -> Result<RestoreReport, ControlError> {
    let t = Instant::now();
    let mut c = Client::connect(source).await?;
    let snap = c.checkpoint().await?;
    let (videos, blocks) = (snap.videos.len() as u64, snap.blocks.len() as u64);
    let bytes = d.restore(snap);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(videos, blocks, bytes, ms, "restored from checkpoint");
    Ok(RestoreReport {
        videos,
        blocks,
        bytes,
        ms,
    })
}

/// A control API client (what Agent86 uses).
#[derive(Debug)]
pub struct Client {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Client {
    /// Connects to an instance's control socket.
    pub async fn connect(path: &Path) -> Result<Self, ControlError> {
        let s = UnixStream::connect(path).await?;
        let (rd, wr) = s.into_split();
        Ok(Self {
            rd: BufReader::new(rd),
            wr,
        })
    }

    /// Sends any request and returns the reply; `ok:false` becomes [`ControlError::Refused`].
    pub async fn call(&mut self, req: &Value) -> Result<Value, ControlError> {
        write_json(&mut self.wr, req).await?;
        let line = read_line(&mut self.rd)
            .await?
            .ok_or_else(|| ControlError::Protocol("instance closed the connection".into()))?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))?;
        if v.get("ok") == Some(&Value::Bool(false)) {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unspecified")
                .to_string();
            return Err(ControlError::Refused(msg));
        }
        Ok(v)
    }

    fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ControlError> {
        serde_json::from_value(v).map_err(|e| ControlError::Protocol(e.to_string()))
    }

    /// `usage`.
    pub async fn usage(&mut self) -> Result<Usage, ControlError> {
        Self::parse(self.call(&json!({"op": "usage"})).await?)
    }

    /// `checkpoint`: header and block data.
    pub async fn checkpoint(&mut self) -> Result<Snapshot, ControlError> {
        let v = self.call(&json!({"op": "checkpoint"})).await?;
        let h = decode_checkpoint_header(v)?;
        let mut snap = Snapshot {
            videos: h.videos,
            blocks: Vec::with_capacity(h.blocks.len()),
            viewers: h.viewers,
        };
        for (vi, b, bs, len) in h.blocks {
            let mut buf = BytesMut::zeroed(len as usize);
            self.rd.read_exact(&mut buf).await?;
            snap.blocks.push((vi, b, bs, buf.freeze()));
        }
        Ok(snap)
    }

    /// `restore` from the instance listening at `source`.
    pub async fn restore_from(&mut self, source: &Path) -> Result<RestoreReport, ControlError> {
        Self::parse(
            self.call(&json!({"op": "restore", "from": source.to_string_lossy()}))
                .await?,
        )
    }

    /// `handoff` to the base URL `to`.
    pub async fn handoff(&mut self, to: &str) -> Result<HandoffReport, ControlError> {
        Self::parse(self.call(&json!({"op": "handoff", "to": to})).await?)
    }

    /// `drain`; returns the clients still connected.
    pub async fn drain(&mut self) -> Result<u64, ControlError> {
        let v = self.call(&json!({"op": "drain"})).await?;
        Ok(v.get("clients").and_then(Value::as_u64).unwrap_or(0))
    }

    /// `resume`.
    pub async fn resume(&mut self) -> Result<(), ControlError> {
        self.call(&json!({"op": "resume"})).await.map(|_| ())
    }

    /// `stop`.
    pub async fn stop(&mut self) -> Result<(), ControlError> {
        self.call(&json!({"op": "stop"})).await.map(|_| ())
    }
}

/// Live migration at workload level: the target (started empty) restores from the source
/// while the source serves, then the source hands its viewers to `target_url`.
pub async fn migrate(
    source: &Path,
    target: &Path,
    target_url: &str,
) -> Result<MigrationReport, ControlError> {
    let t = Instant::now();
    let restore = Client::connect(target).await?.restore_from(source).await?;
    let handoff = Client::connect(source).await?.handoff(target_url).await?;
    Ok(MigrationReport {
        restore,
        handoff,
        total_ms: t.elapsed().as_secs_f64() * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_parse_or_give_a_reason() {
        let (op, v) = parse_control_line(r#"{"op":"usage"}"#).unwrap();
        assert_eq!(op, "usage");
        assert_eq!(v["op"], "usage");
        assert_eq!(parse_control_line(r#"{"op":7}"#).unwrap().0, "");
        assert!(parse_control_line("{").unwrap_err().starts_with("bad json"));
        for junk in ["", "\u{0}", "[1,2", "null", "{\"op\":\"stop\"}}"] {
            let _ = parse_control_line(junk);
        }
    }

    #[test]
    fn checkpoint_headers_round_trip_and_hostile_ones_are_refused() {
        let good = CheckpointHeader {
            ok: true,
            format: 1,
            videos: vec![],
            blocks: vec![(0, 0, 1024, 10), (0, 1, 1024, 20)],
            viewers: vec![],
            data_len: 30,
        };
        let v = serde_json::to_value(&good).unwrap();
        let back = decode_checkpoint_header(v).unwrap();
        assert_eq!(back.data_len, 30);
        // Block lengths that overflow when added must not panic, nor pass.
        let hostile = json!({"ok": true, "format": 1, "videos": [], "viewers": [],
            "blocks": [[0, 0, 1, u64::MAX], [0, 1, 1, 2]], "data_len": 1});
        assert!(decode_checkpoint_header(hostile).is_err());
        let huge = json!({"ok": true, "format": 1, "videos": [], "viewers": [],
            "blocks": [[0, 0, 1, MAX_BLOCK + 1]], "data_len": MAX_BLOCK + 1});
        assert!(decode_checkpoint_header(huge).is_err());
        assert!(decode_checkpoint_header(json!({"format": 2})).is_err());
    }
}
