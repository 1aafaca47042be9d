//! Checkpoint pull over TCP, the I/O side of `smart_proto::pull` (the protocol, its
//! authentication and its limits are documented there).
//!
//! - [`serve_exports`]: the source node's export listener on its data-plane address. Each
//!   connection gets a fresh nonce; a pull whose proof checks makes this module ask the
//!   local instance for its checkpoint over its control socket and stream it on, paced at
//!   the puller's rate, ending with the data tag.
//! - [`relay`]: the target node's side. It listens on a private Unix socket that the new
//!   instance is told to `restore` from; when the instance asks `checkpoint`, the relay
//!   pulls from the source over TCP and forwards header and data, holding back the last
//!   chunk until the tag checks. The instance sees the ordinary workload control API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use smart_proto::pull::{
    self, Challenge, DataMac, PULL_VERSION, Pull, PullError, PullKey, TAG_LEN,
};
use smart_proto::workload::{self, CheckpointHeader, WorkloadRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// How long the puller may take to answer the challenge (an idle connection is not kept).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many checkpoints are exported at once (each holds a control connection).
/// A slot is taken only once the puller's proof checks, so strangers cannot hold them.
pub const MAX_CONCURRENT_EXPORTS: usize = 4;
/// At most this many connections wait for their proof at once (each for at most
/// [`HELLO_TIMEOUT`]); a newer one closes the oldest, so that connections held open by a
/// stranger never keep a member's pull out.
pub const MAX_PENDING_PULLS: usize = 64;
/// A write to the puller that makes no progress for this long ends the export.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The export never paces slower than this, whatever the puller asks: a puller that
/// reads slower is cut off by the export's overall deadline.
pub const MIN_RATE_BPS: u64 = 1_000_000;
/// The overall deadline of an export beyond the copy's time at its rate.
const DEADLINE_MARGIN: Duration = Duration::from_secs(30);
/// How long the relay waits for the source's export to accept (a dropped SYN would
/// otherwise hold the restore for the kernel's retries, minutes).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of the copy's chunks.
const CHUNK: usize = 64 * 1024;

/// Whether `name` may name an instance (`[A-Za-z0-9_.-]`, not `.`/`..`): the export maps it
/// to `<dir>/<name>.sock` and must never leave `dir`.
pub fn valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The connections waiting for their proof, oldest first: the oldest is closed to make
/// room for a new one.
#[derive(Default)]
struct Pending {
    next: u64,
    queue: std::collections::VecDeque<(u64, tokio::task::AbortHandle)>,
}

fn pending_lock(p: &std::sync::Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts pulls on `listener` for the instances whose control sockets are
/// `<dir>/<instance>.sock`, until the task is dropped.
pub async fn serve_exports(listener: TcpListener, key: PullKey, dir: PathBuf) {
    let pending = Arc::new(std::sync::Mutex::new(Pending::default()));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_EXPORTS));
    let warnings = Arc::new(smart_transport::ratelog::WarnLimiter::default());
    let key = Arc::new(key);
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warnings.warn(
                    "export_accept",
                    format_args!("checkpoint export: accept failed: {e}"),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Held while the task is spawned and queued, so that it cannot leave the queue
        // before it is in it (and be closed later as a waiting connection).
        let mut p = pending_lock(&pending);
        if p.queue.len() >= MAX_PENDING_PULLS
            && let Some((_, oldest)) = p.queue.pop_front()
        {
            oldest.abort();
            warnings.warn(
                "export_pending_full",
                format_args!(
                    "checkpoint export: {MAX_PENDING_PULLS} connections waited for their proof; closed the oldest"
                ),
            );
        }
        p.next += 1;
        let id = p.next;
        let (key, dir, slots, warnings) =
            (key.clone(), dir.clone(), slots.clone(), warnings.clone());
        let done_waiting = {
            let pending = pending.clone();
            move || pending_lock(&pending).queue.retain(|(i, _)| *i != id)
        };
        let task = tokio::spawn(async move {
            match export(s, &key, &dir, done_waiting, &slots).await {
                Ok((instance, bytes)) => {
                    tracing::info!(%peer, %instance, bytes, "checkpoint exported")
                }
                Err(e) => warnings.warn(
                    "export_failed",
                    format_args!("checkpoint export to {peer} failed: {e}"),
                ),
            }
        });
        p.queue.push_back((id, task.abort_handle()));
    }
}

async fn line<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R) -> Result<String, PullError> {
    match workload::read_line(rd).await {
        Ok(Some(l)) => Ok(l),
        Ok(None) => Err(PullError::Unreachable(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ))),
        Err(workload::WorkloadError::Io(e)) => Err(PullError::Unreachable(e)),
        Err(e) => Err(PullError::Protocol(e.to_string())),
    }
}

fn io(e: std::io::Error) -> PullError {
    PullError::Unreachable(e)
}

/// Parses and checks a checkpoint header line (or the instance's refusal).
fn header_of(l: &str) -> Result<CheckpointHeader, PullError> {
    let v: serde_json::Value =
        serde_json::from_str(l).map_err(|e| PullError::Protocol(e.to_string()))?;
    if v.get("ok") == Some(&serde_json::Value::Bool(false)) {
        let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or("refused");
        return Err(PullError::Refused(msg.to_string()));
    }
    let h: CheckpointHeader =
        serde_json::from_value(v).map_err(|e| PullError::Protocol(e.to_string()))?;
    h.check().map_err(|e| PullError::Protocol(e.to_string()))?;
    Ok(h)
}

/// Copies exactly `len` bytes from `rd` to `wr`, feeding `mac`, paced at `rate_bps`. When
/// `hold_last` is set the last chunk is returned instead of written (the relay writes it
/// once the tag checks).
async fn copy_exact<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    wr: &mut W,
    len: u64,
    mac: &mut DataMac,
    rate_bps: Option<u64>,
    hold_last: bool,
) -> Result<Vec<u8>, PullError> {
    let started = tokio::time::Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let (mut done, mut held) = (0u64, Vec::new());
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        rd.read_exact(&mut buf[..n]).await.map_err(io)?;
        mac.update(&buf[..n]);
        done += n as u64;
        if hold_last && done == len {
            held = buf[..n].to_vec();
        } else {
            write_within(wr, &buf[..n]).await?;
        }
        if let Some(rate) = rate_bps.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(done as f64 * 8.0 / rate as f64);
            tokio::time::sleep_until(started + due).await;
        }
    }
    Ok(held)
}

/// Writes `bytes`, failing if the reader takes none of them for [`WRITE_TIMEOUT`].
async fn write_within<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8]) -> Result<(), PullError> {
    tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(bytes))
        .await
        .map_err(|_| PullError::Timeout(WRITE_TIMEOUT))?
        .map_err(io)
}

/// Tells the puller why, then fails.
async fn refuse<T, W: AsyncWrite + Unpin>(wr: &mut W, e: PullError) -> Result<T, PullError> {
    let _ = wr
        .write_all(workload::error_line(&e.to_string()).as_bytes())
        .await;
    Err(e)
}

/// One export connection: challenge, proof, then (holding one of `slots`) the checkpoint,
/// within an overall deadline. `done_waiting` takes it off the connections that wait for
/// their proof once its proof is judged. Returns the instance and the bytes sent.
async fn export(
    s: TcpStream,
    key: &PullKey,
    dir: &Path,
    done_waiting: impl FnOnce(),
    slots: &Arc<tokio::sync::Semaphore>,
) -> Result<(String, u64), PullError> {
    s.set_nodelay(true).ok();
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    let nonce: [u8; TAG_LEN] = rand::random();
    let hello = Challenge {
        v: PULL_VERSION,
        nonce: pull::hex(&nonce),
    };
    let mut l = serde_json::to_string(&hello).expect("serializable");
    l.push('\n');
    wr.write_all(l.as_bytes()).await.map_err(io)?;
    let req = tokio::time::timeout(HELLO_TIMEOUT, line(&mut rd))
        .await
        .map_err(|_| PullError::Timeout(HELLO_TIMEOUT))??;
    let req: Pull = match serde_json::from_str(req.trim_end()) {
        Ok(r) => r,
        Err(e) => return refuse(&mut wr, PullError::Protocol(e.to_string())).await,
    };
    done_waiting();
    // Nothing about the instances is revealed before the proof checks.
    if let Err(e) = pull::verify_pull(key, &nonce, &req) {
        return refuse(&mut wr, e).await;
    }
    let Ok(_slot) = slots.clone().try_acquire_owned() else {
        return refuse(
            &mut wr,
            PullError::Refused(format!(
                "{MAX_CONCURRENT_EXPORTS} checkpoints are being exported already; retry"
            )),
        )
        .await;
    };
    if !valid_instance_name(&req.instance) {
        return refuse(&mut wr, PullError::Refused("invalid instance name".into())).await;
    }
    let socket = dir.join(format!("{}.sock", req.instance));
    let local = match UnixStream::connect(&socket).await {
        Ok(s) => s,
        Err(e) => {
            return refuse(
                &mut wr,
                PullError::Refused(format!("no instance {} here ({e})", req.instance)),
            )
            .await;
        }
    };
    let (lrd, mut lwr) = local.into_split();
    let mut lrd = BufReader::new(lrd);
    let mut ask = serde_json::to_string(&WorkloadRequest::Checkpoint).expect("serializable");
    ask.push('\n');
    lwr.write_all(ask.as_bytes()).await.map_err(io)?;
    let hl = line(&mut lrd).await?;
    let header = match header_of(&hl) {
        Ok(h) => h,
        Err(e) => return refuse(&mut wr, e).await,
    };
    let mut mac = DataMac::new(key, &nonce);
    mac.update(hl.as_bytes());
    // Never slower than the floor, and done within the copy's time at that pace, doubled,
    // and a margin: a puller that reads slower loses the export, not the node its slot.
    let rate = req.rate_bps.unwrap_or(u64::MAX).max(MIN_RATE_BPS);
    let at_rate = Duration::from_secs_f64(header.data_len as f64 * 8.0 / rate as f64);
    let deadline = DEADLINE_MARGIN + at_rate * 2;
    let copy = async {
        write_within(&mut wr, hl.as_bytes()).await?;
        copy_exact(
            &mut lrd,
            &mut wr,
            header.data_len,
            &mut mac,
            req.rate_bps.map(|r| r.max(MIN_RATE_BPS)),
            false,
        )
        .await?;
        write_within(&mut wr, &mac.tag()).await?;
        tokio::time::timeout(WRITE_TIMEOUT, wr.flush())
            .await
            .map_err(|_| PullError::Timeout(WRITE_TIMEOUT))?
            .map_err(io)
    };
    tokio::time::timeout(deadline, copy)
        .await
        .map_err(|_| PullError::Timeout(deadline))??;
    Ok((req.instance, header.data_len))
}

/// What a finished [`relay`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Checkpoint data bytes.
    pub bytes: u64,
}

/// The target's side of a pull: waits (up to `accept_within`) for the local instance to
/// connect to `listener` and ask `checkpoint`, then pulls `instance`'s checkpoint from the
/// export at `source` and forwards it. Any failure closes the instance's connection before
/// its last byte, so its restore fails too; the returned error says why.
pub async fn relay(
    listener: UnixListener,
    source: String,
    instance: String,
    key: PullKey,
    rate_bps: Option<u64>,
    accept_within: Duration,
    call_timeout: Duration,
) -> Result<Relayed, PullError> {
    let (local, _) = tokio::time::timeout(accept_within, listener.accept())
        .await
        .map_err(|_| PullError::Timeout(accept_within))?
        .map_err(io)?;
    let (lrd, mut lwr) = local.into_split();
    let mut lrd = BufReader::new(lrd);
    let ask = line(&mut lrd).await?;
    if workload::parse_request(&ask) != Ok(WorkloadRequest::Checkpoint) {
        let _ = lwr
            .write_all(workload::error_line("this socket only relays a checkpoint").as_bytes())
            .await;
        return Err(PullError::Protocol(format!(
            "the instance asked {} of the relay",
            ask.trim_end()
        )));
    }
    // Once the header went to the instance, an error line would be read as data: then the
    // connection is only closed (short of the held-back bytes, the restore fails).
    let mut header_sent = false;
    let work = async {
        let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&source))
            .await
            .map_err(|_| PullError::Timeout(CONNECT_TIMEOUT))?
            .map_err(io)?;
        s.set_nodelay(true).ok();
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::new(rd);
        let hello: Challenge = serde_json::from_str(line(&mut rd).await?.trim_end())
            .map_err(|e| PullError::Protocol(e.to_string()))?;
        if hello.v != PULL_VERSION {
            return Err(PullError::Protocol(format!(
                "source speaks pull version {}",
                hello.v
            )));
        }
        let nonce = pull::unhex(&hello.nonce)
            .ok_or_else(|| PullError::Protocol("malformed nonce".into()))?;
        let req = Pull {
            v: PULL_VERSION,
            instance: instance.clone(),
            proof: pull::hex(&pull::proof(&key, &nonce, &instance)),
            rate_bps,
        };
        let mut l = serde_json::to_string(&req).expect("serializable");
        l.push('\n');
        wr.write_all(l.as_bytes()).await.map_err(io)?;
        let hl = line(&mut rd).await?;
        let header = header_of(&hl)?;
        let mut mac = DataMac::new(&key, &nonce);
        mac.update(hl.as_bytes());
        lwr.write_all(hl.as_bytes()).await.map_err(io)?;
        header_sent = true;
        let held = copy_exact(&mut rd, &mut lwr, header.data_len, &mut mac, None, true).await?;
        let mut tag = [0u8; TAG_LEN];
        rd.read_exact(&mut tag).await.map_err(io)?;
        mac.verify(&tag)?;
        lwr.write_all(&held).await.map_err(io)?;
        lwr.flush().await.map_err(io)?;
        Ok(Relayed {
            bytes: header.data_len,
        })
    };
    let r = tokio::time::timeout(call_timeout, work)
        .await
        .map_err(|_| PullError::Timeout(call_timeout))?;
    if let Err(e) = &r
        && !header_sent
    {
        // The instance must not wait for bytes that will never come; tell it why.
        let _ = lwr
            .write_all(workload::error_line(&e.to_string()).as_bytes())
            .await;
    }
    r
}

#[cfg(test)]
mod tests;
