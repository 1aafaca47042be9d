//! Client side of the workload control API, as far as sampling needs it: `usage`.
//!
//! Contract (the instance is the server): the instance listens on the Unix stream socket
//! whose path is in `$SMART_CONTROL_SOCKET`; a client connects and writes one JSON object
//! per line; `{"op":"usage"}` is answered by one line
//! `{"bytes_sent":u64,"bytes_received":u64,"clients":u32,"cache_bytes":u64}` (byte counters
//! are cumulative since the instance started). An instance with no socket, or one that does
//! not answer within the timeout, "does not speak the API": the sampler then falls back to
//! what the OS offers and retries the API later with an exponential back-off, so a silent
//! instance costs one timeout per back-off period, not one per tick.
//!
//! # Layout
//! - [`Usage`]: the reply; [`ControlError`]: why a query failed.
//! - [`ControlClient`]: one connection, kept open and reused; reconnects once per query;
//!   a query is `send` then `recv`, so a sampler can ask all instances before reading.
//! - [`UsagePoller`]: a client with back-off (`begin`/`finish`), what the sampler holds per
//!   instance.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Longest reply line accepted; a longer one is an error, never an allocation.
pub const MAX_REPLY_BYTES: u64 = 64 * 1024;

/// The `usage` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    /// Bytes sent since the instance started.
    pub bytes_sent: u64,
    /// Bytes received since the instance started.
    pub bytes_received: u64,
    /// Clients currently served.
    #[serde(default)]
    pub clients: u32,
    /// Bytes held in its cache.
    #[serde(default)]
    pub cache_bytes: u64,
}

/// Why a `usage` query failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Connect, write or read failed (no socket, refused, timed out, closed).
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The reply was not a usage object.
    #[error("control socket {path}: bad reply: {reason}")]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// A connection to one instance's control socket.
///
/// A query has two halves, [`ControlClient::send`] and [`ControlClient::recv`], so that a
/// sampler can send to every instance first and then collect the replies: instances answer
/// in parallel and one slow instance delays the tick once, not once per instance.
#[derive(Debug)]
pub struct ControlClient {
    path: PathBuf,
    timeout: Duration,
    conn: Option<BufReader<UnixStream>>,
    /// The request in flight went over a connection kept from an earlier query (which the
    /// server may have closed since): a failure then earns one retry on a new connection.
    reused: bool,
    line: String,
}

const REQUEST: &[u8] = b"{\"op\":\"usage\"}\n";

impl ControlClient {
    /// A client for `path`; `timeout` bounds connect, send, and the reply of one query.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
            conn: None,
            reused: false,
            line: String::new(),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: io::Error) -> ControlError {
        ControlError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn connect(&self) -> io::Result<BufReader<UnixStream>> {
        let s = UnixStream::connect(&self.path)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        Ok(BufReader::new(s))
    }

    fn fresh_send(&mut self) -> Result<(), ControlError> {
        self.conn = None;
        self.reused = false;
        let mut c = self.connect().map_err(|e| self.io(e))?;
        c.get_mut().write_all(REQUEST).map_err(|e| self.io(e))?;
        self.conn = Some(c);
        Ok(())
    }

    /// Send a `usage` request (connecting if needed).
    pub fn send(&mut self) -> Result<(), ControlError> {
        if let Some(c) = self.conn.as_mut()
            && c.get_mut().write_all(REQUEST).is_ok()
        {
            self.reused = true;
            return Ok(());
        }
        self.fresh_send()
    }

    fn read_reply(&mut self, deadline: Instant) -> io::Result<()> {
        let conn = self.conn.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        conn.get_ref().set_read_timeout(Some(left))?;
        self.line.clear();
        let n = conn
            .by_ref()
            .take(MAX_REPLY_BYTES)
            .read_line(&mut self.line)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !self.line.ends_with('\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long or unterminated",
            ));
        }
        Ok(())
    }

    /// Read the reply to the request sent, waiting at most until `deadline` (at least
    /// 1 ms). A kept connection that turns out closed is replaced once.
    pub fn recv(&mut self, deadline: Instant) -> Result<Usage, ControlError> {
        let mut r = self.read_reply(deadline);
        if r.as_ref().is_err_and(|e| {
            e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::TimedOut
        }) && self.reused
        {
            self.fresh_send()?;
            r = self.read_reply(deadline.max(Instant::now() + self.timeout));
        }
        let res = match r {
            Ok(()) => serde_json::from_str::<Usage>(self.line.trim()).map_err(|e| {
                ControlError::BadReply {
                    path: self.path.clone(),
                    reason: e.to_string(),
                }
            }),
            Err(e) => Err(self.io(e)),
        };
        if res.is_err() {
            // Never reuse a connection in an unknown state (a late reply would be taken
            // for the answer to the next request).
            self.conn = None;
        }
        self.reused = false;
        res
    }

    /// Ask for usage: [`send`](Self::send) then [`recv`](Self::recv) within the timeout.
    pub fn usage(&mut self) -> Result<Usage, ControlError> {
        self.send()?;
        self.recv(Instant::now() + self.timeout)
    }
}

/// A [`ControlClient`] with back-off after failures.
#[derive(Debug)]
pub struct UsagePoller {
    client: ControlClient,
    failures: u32,
    next_try: Option<Instant>,
    speaks: bool,
    in_flight: bool,
}

/// Longest wait between retries of a silent instance.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl UsagePoller {
    /// A poller for `path`.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            client: ControlClient::new(path, timeout),
            failures: 0,
            next_try: None,
            speaks: false,
            in_flight: false,
        }
    }

    /// True once the instance has answered at least once and not failed since.
    pub fn speaks_api(&self) -> bool {
        self.speaks
    }

    fn failed(&mut self, e: &ControlError, now: Instant) {
        if self.speaks {
            tracing::debug!(error = %e, "instance stopped answering the control API");
        }
        self.speaks = false;
        self.failures = self.failures.saturating_add(1);
        let wait = Duration::from_secs(1 << self.failures.min(6)).min(MAX_BACKOFF);
        self.next_try = Some(now + wait);
    }

    /// First half of a poll: send the request unless backing off. True when a reply is
    /// now expected from [`finish`](Self::finish).
    pub fn begin(&mut self, now: Instant) -> bool {
        self.in_flight = false;
        if self.next_try.is_some_and(|t| now < t) {
            return false;
        }
        match self.client.send() {
            Ok(()) => self.in_flight = true,
            Err(e) => self.failed(&e, now),
        }
        self.in_flight
    }

    /// Second half: the reply, waiting at most until `deadline`; `None` when no request
    /// is in flight or the instance did not answer in time.
    pub fn finish(&mut self, deadline: Instant, now: Instant) -> Option<Usage> {
        if !std::mem::take(&mut self.in_flight) {
            return None;
        }
        match self.client.recv(deadline) {
            Ok(u) => {
                self.failures = 0;
                self.next_try = None;
                self.speaks = true;
                Some(u)
            }
            Err(e) => {
                self.failed(&e, now);
                None
            }
        }
    }

    /// Query now unless backing off; `None` means "no answer this tick".
    pub fn poll(&mut self, now: Instant) -> Option<Usage> {
        if !self.begin(now) {
            return None;
        }
        let deadline = Instant::now() + self.client.timeout;
        self.finish(deadline, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A tiny server answering `usage` lines with a growing counter; closes after `max`
    /// replies per connection (to exercise reconnect).
    fn serve(path: &Path, per_conn: usize) -> std::thread::JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            for s in l.incoming().take(3) {
                let mut s = BufReader::new(s.unwrap());
                for _ in 0..per_conn {
                    let mut line = String::new();
                    if s.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    assert_eq!(line, "{\"op\":\"usage\"}\n");
                    sent += 1000;
                    let reply = format!(
                        "{{\"bytes_sent\":{sent},\"bytes_received\":5,\"clients\":2,\"cache_bytes\":7}}\n"
                    );
                    s.get_mut().write_all(reply.as_bytes()).unwrap();
                }
            }
        })
    }

    #[test]
    fn usage_round_trip_reuses_and_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.sock");
        let _srv = serve(&p, 2);
        let mut c = ControlClient::new(&p, Duration::from_secs(2));
        let a = c.usage().unwrap();
        assert_eq!(
            a,
            Usage {
                bytes_sent: 1000,
                bytes_received: 5,
                clients: 2,
                cache_bytes: 7
            }
        );
        assert_eq!(c.usage().unwrap().bytes_sent, 2000);
        // The server closed after two replies: the client reconnects transparently.
        assert_eq!(c.usage().unwrap().bytes_sent, 3000);
    }

    #[test]
    fn missing_socket_and_silent_server_fail_within_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ControlClient::new(dir.path().join("none.sock"), Duration::from_millis(100));
        assert!(matches!(c.usage(), Err(ControlError::Io { .. })));

        let p = dir.path().join("silent.sock");
        let _l = UnixListener::bind(&p).unwrap(); // accepts (backlog) but never answers
        let mut c = ControlClient::new(&p, Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(matches!(c.usage(), Err(ControlError::Io { .. })));
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn garbage_and_oversized_replies_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (i, reply) in ["not json\n".to_string(), "x".repeat(70_000) + "\n"]
            .into_iter()
            .enumerate()
        {
            let p = dir.path().join(format!("g{i}.sock"));
            let l = UnixListener::bind(&p).unwrap();
            let t = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let _ = s.write_all(reply.as_bytes());
                std::thread::sleep(Duration::from_millis(200));
            });
            let mut c = ControlClient::new(&p, Duration::from_secs(1));
            let e = c.usage().unwrap_err();
            assert!(
                matches!(e, ControlError::BadReply { .. } | ControlError::Io { .. }),
                "{e}"
            );
            t.join().unwrap();
        }
    }

    #[test]
    fn two_phase_polls_share_one_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.sock");
        let _srv = serve(&good, 10);
        let silent: Vec<_> = (0..5)
            .map(|i| {
                let p = dir.path().join(format!("silent{i}.sock"));
                (UnixListener::bind(&p).unwrap(), p)
            })
            .collect();
        let timeout = Duration::from_millis(200);
        let mut polls: Vec<UsagePoller> = silent
            .iter()
            .map(|(_, p)| UsagePoller::new(p, timeout))
            .collect();
        polls.push(UsagePoller::new(&good, timeout));
        let t0 = Instant::now();
        assert!(polls.iter_mut().all(|p| p.begin(t0)), "all requests sent");
        let deadline = Instant::now() + timeout;
        let got: Vec<Option<Usage>> = polls.iter_mut().map(|p| p.finish(deadline, t0)).collect();
        let took = t0.elapsed();
        assert!(got[..5].iter().all(Option::is_none));
        assert_eq!(got[5].unwrap().bytes_sent, 1000);
        // Five silent instances cost one shared timeout, not five.
        assert!(took < timeout * 3, "{took:?}");
    }

    #[test]
    fn poller_backs_off_after_failure() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("later.sock");
        let mut poller = UsagePoller::new(&p, Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(poller.poll(t0), None);
        let _srv = serve(&p, 10);
        // Within the back-off window the socket is not even tried.
        assert_eq!(poller.poll(t0 + Duration::from_millis(500)), None);
        assert!(!poller.speaks_api());
        let u = poller.poll(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(u.bytes_sent, 1000);
        assert!(poller.speaks_api());
    }
}
