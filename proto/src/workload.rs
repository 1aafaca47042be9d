//! The workload control API: how Agent86 drives a service instance (usage, checkpoint,
//! restore, handoff, drain, resume, stop), as one typed, serde-tagged vocabulary with one
//! async [`WorkloadClient`]. Documented here so that other workloads can implement it.
//!
//! ## Transport
//! The instance reads `SMART_CONTROL_SOCKET` ([`ENV_SOCKET`], a filesystem path) and
//! **listens** there on a Unix stream socket; Agent86 connects as a client. Several clients
//! may connect; each connection carries any number of requests, answered in order. A request
//! is one JSON object on one line (`\n`-terminated, at most [`MAX_LINE`] bytes); every reply
//! is one JSON object on one line. Failures reply `{"ok":false,"error":"<message>"}`;
//! successful replies carry `"ok":true` (a `usage` reply may omit it).
//!
//! ## Operations ([`WorkloadRequest`])
//! | request | reply |
//! |---|---|
//! | `{"op":"usage"}` | [`Usage`]: `{"bytes_sent":u64,"bytes_received":u64,"clients":u32,"cache_bytes":u64, ...}` |
//! | `{"op":"checkpoint"}` | a [`CheckpointHeader`] line, then `data_len` raw bytes |
//! | `{"op":"restore","from":"/path/of/source.sock","rate_bps":N}` (`rate_bps` optional) | [`RestoreReport`] |
//! | `{"op":"handoff","to":"http://host:port"}` | [`HandoffReport`] |
//! | `{"op":"drain"}` | [`DrainReport`] |
//! | `{"op":"resume"}` | `{"ok":true}` |
//! | `{"op":"stop"}` | `{"ok":true}`; the process then exits |
//!
//! **checkpoint**: the header lists the videos, then `blocks` as
//! `[video, block, block_size, len]`, then `viewers` as `[video, offset, count]`, then
//! `data_len` (and, from a distributor, an optional `hls` object: segment indexes and live
//! sessions); exactly `data_len` bytes follow on the same connection: the blocks' data
//! concatenated in the order of `blocks` (block `b` of size `block_size` starts at byte
//! `b*block_size` of the video). Viewer positions are block start offsets; the restoring
//! instance pins them for a while so the blocks the handed-off viewers will ask for are not
//! evicted before they arrive. Blocks never change, so the source takes the checkpoint by
//! reference while it keeps serving: one consistent pass.
//!
//! **restore** makes the instance (started empty, in restore mode) connect to the source's
//! socket, ask `checkpoint` and load it while the source keeps serving: pre-copy.
//!
//! **handoff**: the instance closes every viewer connection at once and from then on
//! answers every request with `307 Temporary Redirect` to the same path under `to`; viewers
//! resume there with `Range` at their exact byte. The reply comes once all viewers are
//! closed. **drain**: new viewers get `503`, existing ones continue; `resume` undoes
//! drain/handoff.
//!
//! An instance without this socket can be started, stopped and restarted elsewhere, but not
//! live-migrated.

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Environment variable holding the control socket path.
pub const ENV_SOCKET: &str = "SMART_CONTROL_SOCKET";
/// Longest request or reply line; a longer one is an error, never an allocation.
pub const MAX_LINE: u64 = 64 * 1024;
/// Largest checkpoint accepted (keeps a corrupt header from allocating wildly).
pub const MAX_CHECKPOINT: u64 = 64 << 30;
/// Largest block in a checkpoint.
pub const MAX_BLOCK: u64 = 64 << 20;
/// Version of the checkpoint format.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WorkloadRequest {
    /// Counters and gauges.
    Usage,
    /// The instance's state (cache), for a restoring instance.
    Checkpoint,
    /// Load the state of the instance whose control socket is `from`.
    Restore {
        /// The source's control socket.
        from: String,
        /// Cap on the copy's rate, bits/s (the copy shares the network with viewers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_bps: Option<u64>,
    },
    /// Hand every viewer over to the base URL `to`.
    Handoff {
        /// Where viewers go.
        to: String,
    },
    /// No new viewers; existing ones continue.
    Drain,
    /// Undo drain/handoff.
    Resume,
    /// Exit.
    Stop,
}

/// Reply to `usage`. Byte counters are cumulative since the instance started; the fields
/// after `cache_bytes` are optional for other workloads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes sent to clients.
    pub bytes_sent: u64,
    /// Bytes received (from the origin).
    pub bytes_received: u64,
    /// Clients connected now.
    #[serde(default)]
    pub clients: u32,
    /// Bytes of cache held now.
    #[serde(default)]
    pub cache_bytes: u64,
    /// Origin streams opened (distributor).
    #[serde(default)]
    pub origin_streams: u64,
    /// Viewer connections served in all.
    #[serde(default)]
    pub viewers_total: u64,
    /// Cache hits.
    #[serde(default)]
    pub cache_hits: u64,
    /// Cache misses.
    #[serde(default)]
    pub cache_misses: u64,
    /// Blocks evicted.
    #[serde(default)]
    pub evictions: u64,
    /// Requests answered with an error status.
    #[serde(default)]
    pub errors: u64,
    /// Requests redirected after a handoff.
    #[serde(default)]
    pub redirects: u64,
    /// Viewer connections that ended with a write error.
    #[serde(default)]
    pub write_errors: u64,
    /// Viewers dropped because their socket accepted nothing for the write timeout.
    #[serde(default)]
    pub write_timeouts: u64,
    /// Connections closed because their request head did not arrive in time.
    #[serde(default)]
    pub head_timeouts: u64,
    /// Connections refused (503) over the connection cap.
    #[serde(default)]
    pub over_capacity: u64,
    /// The connection cap.
    #[serde(default)]
    pub max_connections: u64,
    /// The instance's mode, free text (`Serving`, `Draining`, ...).
    #[serde(default)]
    pub mode: String,
    /// Progressive (one long response) connections now; `clients` minus HLS sessions.
    #[serde(default)]
    pub progressive_clients: u64,
    /// Live HLS sessions, included in `clients`.
    #[serde(default)]
    pub hls_sessions: u64,
    /// HLS sessions seen in all.
    #[serde(default)]
    pub hls_sessions_total: u64,
    /// HLS sessions that timed out.
    #[serde(default)]
    pub hls_sessions_expired: u64,
    /// HLS playlists served.
    #[serde(default)]
    pub hls_playlists: u64,
    /// HLS segments served.
    #[serde(default)]
    pub hls_segments: u64,
    /// HLS segment bytes served.
    #[serde(default)]
    pub hls_segment_bytes: u64,
    /// HLS requests held back by the per-session fetch allowance.
    #[serde(default)]
    pub hls_delayed: u64,
    /// Cache bytes loaded by restores (a migration's pre-copy).
    #[serde(default)]
    pub restored_bytes: u64,
    /// Bytes fetched from the origin again for blocks a restore had delivered (evicted
    /// before use): what a migration cost the origin that the copy should have saved.
    #[serde(default)]
    pub origin_refetched_bytes: u64,
}

/// Metadata of one video in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoMeta {
    /// Request path, e.g. `/movie.ts`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Bitrate in bits per second.
    pub bitrate_bps: u64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
}

/// The header line of a `checkpoint` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    /// Always true.
    pub ok: bool,
    /// [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// The videos.
    pub videos: Vec<VideoMeta>,
    /// `(video, block, block_size, len)` in data order.
    pub blocks: Vec<(usize, u64, u64, u64)>,
    /// `(video, offset, count)`: where viewers are.
    pub viewers: Vec<(usize, u64, u32)>,
    /// Bytes that follow.
    pub data_len: u64,
    /// Distributor extension: the HLS segment indexes and live sessions (the target serves
    /// the same segments without asking the origin, and counts the sessions at once).
    /// Absent from older instances' checkpoints; ignored by instances that do not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<serde_json::Value>,
}

impl CheckpointHeader {
    /// Refuses a header whose sizes do not add up or exceed the limits, before anything is
    /// allocated for its data.
    pub fn check(&self) -> Result<(), WorkloadError> {
        let mut sum = 0u64;
        for b in &self.blocks {
            if b.3 > MAX_BLOCK || b.0 >= self.videos.len() {
                return Err(WorkloadError::Protocol(
                    "checkpoint block out of range".into(),
                ));
            }
            sum = sum.saturating_add(b.3);
        }
        if self.format != CHECKPOINT_FORMAT || sum != self.data_len || sum > MAX_CHECKPOINT {
            return Err(WorkloadError::Protocol(
                "inconsistent checkpoint header".into(),
            ));
        }
        Ok(())
    }
}

/// A checkpoint as read by [`WorkloadClient::checkpoint`]: the header and each block's
/// bytes, in the header's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The header.
    pub header: CheckpointHeader,
    /// Block data, one per `header.blocks` entry.
    pub data: Vec<Bytes>,
}

/// Reply to `restore`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HandoffReport {
    /// Viewers that were connected and have been told to move.
    pub viewers: u64,
    /// HLS sessions that were live (they follow the 307s on their next request).
    #[serde(default)]
    pub hls_sessions: u64,
    /// Time until all were closed.
    pub ms: f64,
}

/// Reply to `drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DrainReport {
    /// Clients still connected.
    pub clients: u64,
}

/// An empty success reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Done {}

/// Why a control-API call failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Socket error (no socket, refused, closed).
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// No reply in time.
    #[error("control API timed out after {0:?}")]
    Timeout(Duration),
    /// A line that is not the JSON expected.
    #[error("bad control message: {0}")]
    Protocol(String),
    /// The instance answered `ok:false`.
    #[error("instance refused: {0}")]
    Refused(String),
}

/// Encodes `reply` as one line with `"ok":true` added.
pub fn ok_line<T: Serialize>(reply: &T) -> String {
    let mut v = serde_json::to_value(reply).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("ok".into(), serde_json::Value::Bool(true));
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// Encodes a failure as one line.
pub fn error_line(error: &str) -> String {
    let mut s = serde_json::json!({"ok": false, "error": error}).to_string();
    s.push('\n');
    s
}

/// Parses one request line.
pub fn parse_request(line: &str) -> Result<WorkloadRequest, String> {
    serde_json::from_str(line.trim_end()).map_err(|e| format!("bad request: {e}"))
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at end of stream.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    rd: &mut R,
) -> Result<Option<String>, WorkloadError> {
    let mut line = String::new();
    let n = (&mut *rd).take(MAX_LINE).read_line(&mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(WorkloadError::Protocol("line too long or truncated".into()));
    }
    Ok(Some(line))
}

/// The one client of the workload control API (Agent86's sampler and migrations, the
/// restoring instance, benchmarks, `vod control`).
#[derive(Debug)]
pub struct WorkloadClient {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    timeout: Duration,
}

impl WorkloadClient {
    /// Connects to an instance's control socket; `timeout` bounds the connect and each
    /// later request (a checkpoint's data included).
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, WorkloadError> {
        let s = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| WorkloadError::Timeout(timeout))??;
        let (rd, wr) = s.into_split();
        Ok(Self {
            rd: BufReader::new(rd),
            wr,
            timeout,
        })
    }

    async fn exchange(
        &mut self,
        req: &WorkloadRequest,
    ) -> Result<serde_json::Value, WorkloadError> {
        let mut line =
            serde_json::to_string(req).map_err(|e| WorkloadError::Protocol(e.to_string()))?;
        line.push('\n');
        self.wr.write_all(line.as_bytes()).await?;
        let ans = read_line(&mut self.rd)
            .await?
            .ok_or_else(|| WorkloadError::Protocol("instance closed the connection".into()))?;
        let v: serde_json::Value =
            serde_json::from_str(&ans).map_err(|e| WorkloadError::Protocol(e.to_string()))?;
        if v.get("ok") == Some(&serde_json::Value::Bool(false)) {
            let msg = v
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unspecified")
                .to_string();
            return Err(WorkloadError::Refused(msg));
        }
        Ok(v)
    }

    /// Sends `req` and decodes its reply as `T`, within the client's timeout.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        req: &WorkloadRequest,
    ) -> Result<T, WorkloadError> {
        let t = self.timeout;
        let v = tokio::time::timeout(t, self.exchange(req))
            .await
            .map_err(|_| WorkloadError::Timeout(t))??;
        serde_json::from_value(v).map_err(|e| WorkloadError::Protocol(e.to_string()))
    }

    /// `usage`.
    pub async fn usage(&mut self) -> Result<Usage, WorkloadError> {
        self.call(&WorkloadRequest::Usage).await
    }

    /// `checkpoint`: the header, then every block's data, read at most at `rate_bps`
    /// (the reader slows down; the source's socket buffer holds the rest).
    pub async fn checkpoint(&mut self, rate_bps: Option<u64>) -> Result<Checkpoint, WorkloadError> {
        let header: CheckpointHeader = self.call(&WorkloadRequest::Checkpoint).await?;
        header.check()?;
        let t = self.timeout;
        let mut data = Vec::with_capacity(header.blocks.len().min(1 << 16));
        let started = tokio::time::Instant::now();
        let read = async {
            let mut bytes = 0u64;
            for b in &header.blocks {
                let mut buf = BytesMut::zeroed(b.3 as usize);
                self.rd.read_exact(&mut buf).await?;
                data.push(buf.freeze());
                bytes += b.3;
                if let Some(rate) = rate_bps.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(bytes as f64 * 8.0 / rate as f64);
                    tokio::time::sleep_until(started + due).await;
                }
            }
            Ok::<(), WorkloadError>(())
        };
        tokio::time::timeout(t, read)
            .await
            .map_err(|_| WorkloadError::Timeout(t))??;
        Ok(Checkpoint { header, data })
    }

    /// `restore` from the instance whose control socket is `source`, copying at most at
    /// `rate_bps`.
    pub async fn restore(
        &mut self,
        source: &str,
        rate_bps: Option<u64>,
    ) -> Result<RestoreReport, WorkloadError> {
        self.call(&WorkloadRequest::Restore {
            from: source.to_string(),
            rate_bps,
        })
        .await
    }

    /// `handoff` to the base URL `to`.
    pub async fn handoff(&mut self, to: &str) -> Result<HandoffReport, WorkloadError> {
        self.call(&WorkloadRequest::Handoff { to: to.to_string() })
            .await
    }

    /// `drain`; returns the clients still connected.
    pub async fn drain(&mut self) -> Result<u64, WorkloadError> {
        self.call::<DrainReport>(&WorkloadRequest::Drain)
            .await
            .map(|r| r.clients)
    }

    /// `resume`.
    pub async fn resume(&mut self) -> Result<(), WorkloadError> {
        self.call::<Done>(&WorkloadRequest::Resume)
            .await
            .map(|_| ())
    }

    /// `stop`.
    pub async fn stop(&mut self) -> Result<(), WorkloadError> {
        self.call::<Done>(&WorkloadRequest::Stop).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_tagged_json_object() {
        let cases = [
            (WorkloadRequest::Usage, r#"{"op":"usage"}"#),
            (WorkloadRequest::Checkpoint, r#"{"op":"checkpoint"}"#),
            (
                WorkloadRequest::Restore {
                    from: "/s".into(),
                    rate_bps: None,
                },
                r#"{"op":"restore","from":"/s"}"#,
            ),
            (
                WorkloadRequest::Restore {
                    from: "/s".into(),
                    rate_bps: Some(8_000_000),
                },
                r#"{"op":"restore","from":"/s","rate_bps":8000000}"#,
            ),
            (
                WorkloadRequest::Handoff {
                    to: "http://h:1".into(),
                },
                r#"{"op":"handoff","to":"http://h:1"}"#,
            ),
            (WorkloadRequest::Drain, r#"{"op":"drain"}"#),
            (WorkloadRequest::Resume, r#"{"op":"resume"}"#),
            (WorkloadRequest::Stop, r#"{"op":"stop"}"#),
        ];
        for (req, json) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), json);
            assert_eq!(parse_request(json).unwrap(), req);
        }
        assert!(parse_request(r#"{"op":"explode"}"#).is_err());
        assert!(parse_request(r#"{"op":"restore"}"#).is_err());
        assert!(parse_request("not json").is_err());
    }

    #[test]
    fn ok_lines_carry_ok_and_usage_parses_a_minimal_reply() {
        let l = ok_line(&DrainReport { clients: 3 });
        assert_eq!(l, "{\"clients\":3,\"ok\":true}\n");
        let u: Usage = serde_json::from_str(r#"{"bytes_sent":1,"bytes_received":2}"#).unwrap();
        assert_eq!((u.bytes_sent, u.bytes_received, u.clients), (1, 2, 0));
        assert_eq!(error_line("no"), "{\"error\":\"no\",\"ok\":false}\n");
    }

    #[test]
    fn inconsistent_checkpoint_headers_are_refused_before_allocation() {
        let v = VideoMeta {
            path: "/v".into(),
            size: 10,
            bitrate_bps: 1,
            duration_ms: 1,
        };
        let good = CheckpointHeader {
            ok: true,
            format: CHECKPOINT_FORMAT,
            videos: vec![v],
            blocks: vec![(0, 0, 4, 4), (0, 1, 4, 4)],
            viewers: vec![],
            data_len: 8,
            hls: None,
        };
        assert!(good.check().is_ok());
        let mut bad = good.clone();
        bad.data_len = 9;
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.blocks[0].3 = u64::MAX;
        bad.data_len = u64::MAX;
        assert!(bad.check().is_err());
        let mut bad = good.clone();
        bad.blocks[0].0 = 5;
        assert!(bad.check().is_err());
        let mut bad = good;
        bad.format = 99;
        assert!(bad.check().is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_lines_never_panic(s in ".{0,200}") {
            let _ = parse_request(&s);
            let _ = serde_json::from_str::<CheckpointHeader>(&s).map(|h| h.check());
        }

        /// Block lengths that overflow when added are refused, never wrapped into a match.
        #[test]
        fn checkpoint_sums_are_checked_without_overflow(
            lens in proptest::collection::vec(proptest::num::u64::ANY, 0..6),
            declared in proptest::num::u64::ANY,
            format in 0u32..3,
        ) {
            let h = CheckpointHeader {
                ok: true,
                format,
                videos: vec![VideoMeta { path: "/v".into(), size: 1, bitrate_bps: 1, duration_ms: 1 }],
                blocks: lens.iter().enumerate().map(|(i, l)| (0, i as u64, 1024, *l)).collect(),
                viewers: vec![],
                data_len: declared,
                hls: None,
            };
            if h.check().is_ok() {
                let sum = lens.iter().try_fold(0u64, |a, l| a.checked_add(*l));
                proptest::prop_assert_eq!(format, CHECKPOINT_FORMAT);
                proptest::prop_assert_eq!(sum, Some(declared));
            }
        }
    }
}
