//! A lean HTTP/1.1 layer for long paced streams: request heads parsed with `httparse`,
//! byte ranges, response heads, URLs, and a minimal client.
//!
//! Why not hyper: every connection here is one GET answered by one long body written from
//! shared cache blocks at a paced rate, then closed. That needs no keep-alive, no chunked
//! encoding and no body channel; hand-rolling it keeps a paced connection at one task, one
//! socket and a few words of state (no per-connection buffers once the head is parsed), and
//! lets the load generator read 10k sockets into a per-thread buffer. Parsing, the part that
//! must be robust against hostile input, is `httparse`'s.
//!
//! ## Layout
//! - [`read_request`], [`Request`], [`HttpError`]: server side request heads with limits.
//! - [`RangeSpec`], [`parse_range`], [`resolve_range`]: `Range: bytes=...`.
//! - [`ResponseHead`]: builds status line and headers.
//! - [`ConnLimit`], [`ConnGuard`]: the cap on concurrent connections of a server.
//! - [`write_all_timeout`]: a body write that fails when the peer stops reading.
//! - [`Url`], [`get`], [`ClientResponse`]: client side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// True for HEAD (no body), false for GET.
    pub head_only: bool,
    /// Path without query string.
    pub path: String,
    /// Query string (after `?`, undecoded), if any. HLS segment URIs carry the session here.
    pub query: Option<String>,
    /// Raw value of the Range header, if any.
    pub range: Option<String>,
}

/// A request that must be answered with an error status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Syntax error in the request head.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Head larger than [`MAX_HEAD`] or too many headers.
    #[error("request head too large")]
    TooLarge,
    /// Method other than GET or HEAD.
    #[error("method not allowed")]
    Method,
    /// The client did not send a complete head in time.
    #[error("request timeout")]
    Timeout,
    /// The client sent nothing at all in time (a spare connection): closed silently.
    #[error("idle connection")]
    Idle,
    /// The connection closed or failed before a complete head.
    #[error("connection closed before a complete request")]
    Closed,
}

impl HttpError {
    /// Status code to answer with, or None when nothing can be answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Malformed(_) => Some(400),
            HttpError::TooLarge => Some(431),
            HttpError::Method => Some(405),
            HttpError::Timeout => Some(408),
            HttpError::Idle | HttpError::Closed => None,
        }
    }
}

/// Parses a complete request head from `buf`; Ok(None) means more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD {
                Err(HttpError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Ok(httparse::Status::Complete(_)) => {
            let head_only = match req.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => return Err(HttpError::Method),
            };
            let raw = req.path.unwrap_or("");
            let (path, query) = match raw.split_once('?') {
                Some((p, q)) => (p, Some(q.to_string())),
                None => (raw, None),
            };
            if !path.starts_with('/') || path.split('/').any(|s| s == "..") {
                return Err(HttpError::Malformed(format!("bad path {raw:?}")));
            }
            let range = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("range"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned());
            Ok(Some(Request {
                head_only,
                path: path.to_string(),
                query,
                range,
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooLarge),
        Err(e) => Err(HttpError::Malformed(e.to_string())),
    }
}

/// Reads one request head from a fresh connection, with a size limit and a deadline.
///
/// A connection that sends nothing before the deadline is closed without an answer
/// ([`HttpError::Idle`]): browsers open spare connections ahead of need, and a `408` on one
/// of them just as the browser starts a request there fails that request.
pub async fn read_request(stream: &mut TcpStream, timeout: Duration) -> Result<Request, HttpError> {
    let mut received = false;
    let fut = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|_| HttpError::Closed)?;
            if n == 0 {
                return Err(if buf.is_empty() {
                    HttpError::Closed
                } else {
                    HttpError::Malformed("truncated head".into())
                });
            }
            received = true;
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = parse_request(&buf)? {
                return Ok(r);
            }
        }
    };
    let r = tokio::time::timeout(timeout, fut).await;
    match r {
        Ok(r) => r,
        Err(_) if received => Err(HttpError::Timeout),
        Err(_) => Err(HttpError::Idle),
    }
}

/// A `Range: bytes=` request for a single range (multiple ranges are not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-`
    From(u64),
    /// `bytes=a-b` (inclusive end)
    FromTo(u64, u64),
    /// `bytes=-n`: the last n bytes
    Suffix(u64),
}

/// Parses a Range header value. Any form this server does not serve is an error, answered 416.
pub fn parse_range(value: &str) -> Result<RangeSpec, String> {
    let spec = value
        .trim()
        .strip_prefix("bytes=")
        .ok_or_else(|| format!("unsupported range unit in {value:?}"))?;
    if spec.contains(',') {
        return Err("multiple ranges are not supported".into());
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| format!("bad range {value:?}"))?;
    let num = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("bad range {value:?}"));
        }
        s.parse::<u64>()
            .map_err(|_| format!("range number out of bounds in {value:?}"))
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Err(format!("bad range {value:?}")),
        (true, false) => Ok(RangeSpec::Suffix(num(b)?)),
        (false, true) => Ok(RangeSpec::From(num(a)?)),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(format!("range end before start in {value:?}"));
            }
            Ok(RangeSpec::FromTo(a, b))
        }
    }
}

/// Turns a range into `[start, end)` within a resource of `size` bytes, or None when it
/// cannot be satisfied (416).
pub fn resolve_range(spec: RangeSpec, size: u64) -> Option<(u64, u64)> {
    match spec {
        RangeSpec::From(a) if a < size => Some((a, size)),
        RangeSpec::FromTo(a, b) if a < size => Some((a, b.saturating_add(1).min(size))),
        RangeSpec::Suffix(n) if n > 0 && size > 0 => Some((size - n.min(size), size)),
        _ => None,
    }
}

/// Builder for a response head. Every response closes the connection after its body.
#[derive(Debug)]
pub struct ResponseHead(String);

impl ResponseHead {
    /// Starts a head with the status line.
    pub fn new(status: u16) -> Self {
        let reason = match status {
            200 => "OK",
            206 => "Partial Content",
            302 => "Found",
            307 => "Temporary Redirect",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            416 => "Range Not Satisfiable",
            431 => "Request Header Fields Too Large",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            _ => "Status",
        };
        Self(format!("HTTP/1.1 {status} {reason}\r\n"))
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        use std::fmt::Write;
        let _ = write!(self.0, "{name}: {value}\r\n");
        self
    }

    /// Finishes the head (adds `Connection: close`).
    pub fn finish(self) -> Vec<u8> {
        let mut s = self.0;
        s.push_str("Connection: close\r\n\r\n");
        s.into_bytes()
    }
}

/// Writes a short error response (with a text body) and closes.
pub async fn write_error(stream: &mut TcpStream, status: u16, extra: &[(&str, String)]) {
    let body = format!("{status}\n");
    let mut head = ResponseHead::new(status)
        .header("Content-Type", "text/plain")
        .header("Content-Length", body.len());
    for (k, v) in extra {
        head = head.header(k, v);
    }
    let mut bytes = head.finish();
    bytes.extend_from_slice(body.as_bytes());
    // Bounded: a client that never reads must not hold the connection.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Default request-head timeout of the servers: a client that has not sent a complete head
/// by then (slowloris) is answered 408 and dropped.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The open-file limit of this process (soft), or None when it cannot be read.
pub fn nofile_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct only.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r.rlim_cur)
}

/// A connection cap that leaves file descriptors for everything else a server opens
/// (listeners, origin streams, control connections): the open-file limit minus 256, at
/// least 64. Past the file limit `accept` itself would fail and the backlog would fill
/// silently; below it, a refused client gets a clear 503.
pub fn default_max_connections() -> usize {
    nofile_limit()
        .map(|n| n.saturating_sub(256).max(64))
        .unwrap_or(1024)
        .min(usize::MAX as u64) as usize
}

/// The cap on concurrent connections of one server, and how often it refused.
#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    open: AtomicUsize,
    /// Connections refused because the cap was reached.
    pub refused: AtomicU64,
    /// Refusals being answered now (each holds a descriptor for a moment).
    rejecting: AtomicUsize,
}

/// One admitted connection; dropping it frees its place under the cap.
#[derive(Debug)]
pub struct ConnGuard(Arc<ConnLimit>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnLimit {
    /// A cap of `max` concurrent connections (at least 1).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            rejecting: AtomicUsize::new(0),
        })
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections admitted and still open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits one more connection, or None (counted as refused) when the cap is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnGuard> {
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if n >= self.max {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self
                .open
                .compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(ConnGuard(self.clone())),
                Err(now) => n = now,
            }
        }
    }

    /// Refuses a connection that came over the cap: answers `503` with `Retry-After` after
    /// reading its head (briefly), so the client sees why. At most 64 refusals are answered
    /// at once; past that the connection is just closed, so a flood over the cap cannot use
    /// up descriptors.
    pub fn refuse(self: &Arc<Self>, mut stream: TcpStream) {
        if self.rejecting.fetch_add(1, Ordering::Relaxed) >= 64 {
            self.rejecting.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _ = read_request(&mut stream, Duration::from_millis(500)).await;
            write_error(&mut stream, 503, &[("Retry-After", "1".into())]).await;
            me.rejecting.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Writes all of `buf`, failing with `TimedOut` when the peer accepts no byte for `timeout`
/// (it stopped reading). Progress resets the clock, so a slow but reading peer is kept.
pub async fn write_all_timeout(
    stream: &mut TcpStream,
    buf: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    write_counted(stream, buf, timeout, None).await
}

/// [`write_all_timeout`] that counts the bytes it sends in `sent`.
///
/// The bytes are counted before the write and the rest is taken back after a short or
/// failed one: the receiver can read bytes before the writer returns from the syscall (and
/// the writer may be preempted right then), so counting afterwards would let a reader of the
/// counter see fewer bytes than the peer already has.
pub async fn write_counted(
    stream: &mut TcpStream,
    mut buf: &[u8],
    timeout: Duration,
    sent: Option<&AtomicU64>,
) -> std::io::Result<()> {
    let zero = AtomicU64::new(0);
    let sent = sent.unwrap_or(&zero);
    sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
    while !buf.is_empty() {
        let r = match tokio::time::timeout(timeout, stream.write(buf)).await {
            Ok(Ok(0)) => Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => {
                buf = &buf[n..];
                continue;
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
        sent.fetch_sub(buf.len() as u64, Ordering::Relaxed);
        return r;
    }
    Ok(())
}

/// An `http://host:port/path` URL (no TLS, no user info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP literal.
    pub host: String,
    /// TCP port (80 when absent).
    pub port: u16,
    /// Path, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses an absolute http URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("not an http:// URL: {s:?}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>().map_err(|_| format!("bad port in {s:?}"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("empty host in {s:?}"));
        }
        Ok(Url {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// Resolves a reference against this URL: an absolute `http://` URL, an absolute path,
    /// or a relative path (against this path's directory, as a playlist's segment URIs are).
    pub fn join(&self, location: &str) -> Result<Url, String> {
        if location.starts_with("http://") {
            Url::parse(location)
        } else if location.starts_with('/') {
            Ok(self.with_path(location))
        } else if location.is_empty()
            || location.contains("://")
            || location.starts_with("//")
            || location
                .split(['?', '#'])
                .next()
                .unwrap_or("")
                .split('/')
                .any(|s| s == "..")
        {
            Err(format!("unsupported reference {location:?}"))
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            let dir = if dir.is_empty() { "/" } else { dir };
            Ok(self.with_path(&format!("{dir}{location}")))
        }
    }

    /// `host:port`.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// This URL with another path.
    pub fn with_path(&self, path: &str) -> Url {
        Url {
            path: path.to_string(),
            ..self.clone()
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// Client side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The response head was not valid HTTP.
    #[error("bad response: {0}")]
    Bad(String),
    /// No complete head in time.
    #[error("timed out")]
    Timeout,
}

/// A response head plus the connection positioned at the start of the body.
#[derive(Debug)]
pub struct ClientResponse {
    /// Status code.
    pub status: u16,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body bytes that arrived with the head.
    pub leftover: Vec<u8>,
    /// The connection.
    pub stream: TcpStream,
}

impl ClientResponse {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Header parsed as a number.
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.trim().parse().ok())
    }

    /// `(start, total)` from `Content-Range: bytes a-b/total`.
    pub fn content_range(&self) -> Option<(u64, u64)> {
        let v = self.header("content-range")?.strip_prefix("bytes ")?;
        let (range, total) = v.split_once('/')?;
        let (a, _) = range.split_once('-')?;
        Some((a.trim().parse().ok()?, total.trim().parse().ok()?))
    }
}

impl ClientResponse {
    /// Reads the whole body (by `Content-Length`, else to the end of the connection), at
    /// most `limit` bytes; for small bodies (playlists, indexes, segments).
    pub async fn body(mut self, limit: usize, timeout: Duration) -> Result<Vec<u8>, ClientError> {
        let len = self.header_u64("content-length");
        if len.is_some_and(|n| n > limit as u64) {
            return Err(ClientError::Bad(format!("body larger than {limit} bytes")));
        }
        let want = len.map_or(limit, |n| n as usize);
        let mut body = std::mem::take(&mut self.leftover);
        let fut = async {
            let mut chunk = vec![0u8; 16 * 1024];
            while body.len() < want {
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            Ok::<_, ClientError>(())
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout)??;
        if len.is_some_and(|n| body.len() as u64 != n) {
            return Err(ClientError::Bad(format!(
                "body of {} bytes, Content-Length {}",
                body.len(),
                len.unwrap_or(0)
            )));
        }
        if body.len() > limit {
            return Err(ClientError::Bad(format!("body larger than {limit} bytes")));
        }
        Ok(body)
    }
}

/// Sends `GET url` (with `Range: bytes=from-` when `from` is given) and reads the head.
pub async fn get(
    url: &Url,
    from: Option<u64>,
    timeout: Duration,
) -> Result<ClientResponse, ClientError> {
    request("GET", url, from, timeout).await
}

/// Sends `HEAD url` and reads the head.
pub async fn head(url: &Url, timeout: Duration) -> Result<ClientResponse, ClientError> {
    request("HEAD", url, None, timeout).await
}

async fn request(
    method: &str,
    url: &Url,
    from: Option<u64>,
    timeout: Duration,
) -> Result<ClientResponse, ClientError> {
    let fut = async {
        let mut stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
        stream.set_nodelay(true)?;
        let mut req = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: smart-vod\r\n",
            url.path,
            url.authority()
        );
        if let Some(f) = from {
            req.push_str(&format!("Range: bytes={f}-\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ClientError::Bad(
                    "connection closed before response head".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let headers = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let leftover = buf[len..].to_vec();
                    return Ok(ClientResponse {
                        status,
                        headers,
                        leftover,
                        stream,
                    });
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
                Ok(httparse::Status::Partial) => {
                    return Err(ClientError::Bad("response head too large".into()));
                }
                Err(e) => return Err(ClientError::Bad(e.to_string())),
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ClientError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_with_range() {
        let r = parse_request(b"GET /v.ts?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=10-\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            Request {
                head_only: false,
                path: "/v.ts".into(),
                query: Some("x=1".into()),
                range: Some("bytes=10-".into())
            }
        );
        assert_eq!(parse_request(b"GET /v.ts HTTP/1.1\r\nHost"), Ok(None));
    }

    #[test]
    fn rejects_bad_requests_with_statuses() {
        let status = |b: &[u8]| parse_request(b).unwrap_err().status();
        assert_eq!(status(b"POST /v HTTP/1.1\r\n\r\n"), Some(405));
        assert_eq!(status(b"GET /../etc HTTP/1.1\r\n\r\n"), Some(400));
        assert_eq!(status(b"\x00\x01garbage\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET nopath HTTP/1.1\r\n\r\n"), Some(400));
        // A spare connection that never spoke is closed without an answer.
        assert_eq!(HttpError::Idle.status(), None);
        assert_eq!(HttpError::Timeout.status(), Some(408));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(big.as_bytes()), Some(431));
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Some(431)
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=5-"), Ok(RangeSpec::From(5)));
        assert_eq!(parse_range("bytes=5-9"), Ok(RangeSpec::FromTo(5, 9)));
        assert_eq!(parse_range("bytes=-3"), Ok(RangeSpec::Suffix(3)));
        for bad in [
            "bytes=9-5",
            "bytes=a-",
            "items=1-",
            "bytes=1-2,4-5",
            "bytes=-",
            "bytes=99999999999999999999999-",
        ] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
        assert_eq!(resolve_range(RangeSpec::From(5), 10), Some((5, 10)));
        assert_eq!(resolve_range(RangeSpec::From(10), 10), None);
        assert_eq!(
            resolve_range(RangeSpec::FromTo(2, u64::MAX), 10),
            Some((2, 10))
        );
        assert_eq!(resolve_range(RangeSpec::Suffix(30), 10), Some((0, 10)));
        assert_eq!(resolve_range(RangeSpec::Suffix(0), 10), None);
    }

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080/a/v.ts").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/a/v.ts")
        );
        assert_eq!(Url::parse("http://h").unwrap().path, "/");
        assert_eq!(u.join("/b").unwrap().to_string(), "http://127.0.0.1:8080/b");
        assert_eq!(u.join("http://x:1/c").unwrap().authority(), "x:1");
        let p = Url::parse("http://h:1/watch/v.ts.m3u8?s=1").unwrap();
        assert_eq!(
            p.join("v.ts/seg/0.ts?s=ab").unwrap().to_string(),
            "http://h:1/watch/v.ts/seg/0.ts?s=ab"
        );
        assert!(p.join("../etc").is_err());
        assert!(p.join("ftp://x/").is_err());
        assert!(Url::parse("https://h/").is_err());
        assert!(Url::parse("http://h:99999/").is_err());
    }
}
