//! HTTP serving for the node's surfaces (the front-end's `/watch`): an accept loop with a
//! cap on open connections, hyper's HTTP/1.1 with a deadline on reading a request head,
//! and an axum router for the routes.
//!
//! A connection over the cap is closed at once and counted (a client retries; a flood of
//! idle connections cannot starve the listener of file descriptors). A client that sends no
//! byte within `header_timeout` of its connection is closed and counted (hyper's own head
//! timer starts only at the first byte, so silent sockets would be kept forever), one that
//! does not send a complete request head within `header_timeout` is disconnected
//! (slowloris), a request head may not exceed [`MAX_HEAD`] (half-sent huge heads cannot
//! grow the node's memory), and
//! one that takes no response byte for `write_stall` is disconnected too ([`StallGuard`]):
//! a viewer that stops reading a relayed video cannot hold its upstream connection and its
//! admission forever. One address may hold at most `max_per_address` connections (an IPv6
//! address counts by its /64, what one host or one subscriber usually holds): a stranger
//! cannot take the whole cap from real viewers; a connection over its address's share is
//! held unread for a second before it is closed (`Tarpit`), so a stranger reconnecting in a
//! loop does so about once a second per socket, not as fast as the listener can refuse.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tracing::{Instrument, debug};

use crate::counters::Counters;

/// The largest request head (request line and headers) a connection may send, and its
/// read buffer: what a browser or a player sends is a few hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;

/// The accept queue of an HTTP listener (the kernel caps it at `net.core.somaxconn`): a
/// connect flood from one stranger, whose connections are closed at once, should not
/// overflow it and drop a viewer's SYN (retransmitted only a second later).
pub const BACKLOG: u32 = 4096;

/// A listener on `addr` with a [`BACKLOG`]-deep accept queue (tokio's `bind` asks 1,024).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Limits of one HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to receive a whole request head.
    pub header_timeout: Duration,
    /// A response write that makes no progress for this long fails the connection.
    pub write_stall: Duration,
    /// Open connections at most from one address (IPv6: from one /64).
    pub max_per_address: usize,
    /// Addresses not capped per address (trusted proxies: many clients behind one).
    pub uncapped: Arc<[ipnet::IpNet]>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(5),
            // Longer than any pause of a player that reads at its own pace (a browser
            // with a full buffer stops reading for a while, then asks for more).
            write_stall: Duration::from_secs(60),
            // Room for the viewers behind one NAT, far below the cap.
            max_per_address: 256,
            uncapped: Arc::from([]),
        }
    }
}

/// How long a connection refused for its address's share is kept open, unread, before it
/// is closed.
const TARPIT_HOLD: Duration = Duration::from_secs(1);

/// Refused connections held at most; beyond, the oldest is closed.
const TARPIT_MAX: usize = 4096;

/// Connections refused for their address's share, held open (never read) for
/// [`TARPIT_HOLD`] before they are closed: a stranger that reconnects as soon as it is
/// closed then reconnects about once a second per socket, instead of as fast as the
/// listener can accept and close, which is what its flood costs the viewers. Bounded by
/// [`TARPIT_MAX`] descriptors, all given back when an accept fails (descriptors short).
#[derive(Default)]
struct Tarpit {
    held: std::collections::VecDeque<(tokio::time::Instant, tokio::net::TcpStream)>,
}

impl Tarpit {
    /// Closes the connections held for [`TARPIT_HOLD`] by `now`.
    fn expire(&mut self, now: tokio::time::Instant) {
        while self
            .held
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= TARPIT_HOLD)
        {
            self.held.pop_front();
        }
    }

    /// When the oldest held connection is due (never, when none is held).
    async fn next_expiry(&self) {
        match self.held.front() {
            Some((at, _)) => tokio::time::sleep_until(*at + TARPIT_HOLD).await,
            None => std::future::pending().await,
        }
    }

    fn hold(&mut self, stream: tokio::net::TcpStream, now: tokio::time::Instant) {
        self.expire(now);
        if self.held.len() >= TARPIT_MAX {
            self.held.pop_front();
        }
        self.held.push_back((now, stream));
    }
}

/// Whose connections count together: an IPv4 address (an IPv4-mapped IPv6 address is its
/// IPv4 address), or an IPv6 address's /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    /// One IPv4 address.
    V4(std::net::Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl AddressKey {
    /// The key of `ip`.
    pub fn of(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(v4) => AddressKey::V4(v4),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4),
                None => AddressKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Open connections per address; a [`PerAddressSlot`] gives its place back when dropped.
#[derive(Debug, Default)]
struct PerAddress {
    open: std::sync::Mutex<std::collections::HashMap<AddressKey, usize>>,
}

/// One connection's place in its address's count.
struct PerAddressSlot {
    table: Arc<PerAddress>,
    key: AddressKey,
}

impl PerAddress {
    /// A place for a connection from `ip`, unless it already holds `max`.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PerAddressSlot> {
        let key = AddressKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerAddressSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for PerAddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// A connection whose writes fail with `TimedOut` when the peer has taken no byte for
/// `stall` (reads pass through untouched).
pub struct StallGuard<S> {
    io: S,
    stall: Duration,
    /// Running while a write is pending.
    pending_since: Option<Pin<Box<Sleep>>>,
}

impl<S> StallGuard<S> {
    /// Guards `io`.
    pub fn new(io: S, stall: Duration) -> Self {
        Self {
            io,
            stall,
            pending_since: None,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.pending_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let stall = self.stall;
                let timer = self
                    .pending_since
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `app` on `listener` until the task is aborted, over TLS when `tls` is given
/// (see [`crate::tls`]). `name` prefixes the counters (`{name}_refused_over_cap`,
/// `{name}_tls_failed`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    counters: Arc<Counters>,
    name: &'static str,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let refused = format!("{name}_refused_over_cap");
    let refused_address = format!("{name}_refused_per_address");
    let silent: Arc<str> = format!("{name}_closed_silent").into();
    let tls_failed: Arc<str> = format!("{name}_tls_failed").into();
    let mut tarpit = Tarpit::default();
    loop {
        // `accept` is cancel-safe: the tarpit's timer may win and nothing is lost.
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = tarpit.next_expiry() => {
                tarpit.expire(tokio::time::Instant::now());
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: give back the tarpit's descriptors first, then back
                // off instead of spinning.
                tarpit.held.clear();
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let capped = !limits.uncapped.iter().any(|n| n.contains(&peer.ip()));
        let place = match capped {
            true => match per_address.take(peer.ip(), limits.max_per_address) {
                Some(place) => Some(place),
                None => {
                    counters.incr(&refused_address);
                    tarpit.hold(stream, tokio::time::Instant::now());
                    continue;
                }
            },
            false => None,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.incr(&refused);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Handlers may ask for the client's address (`ConnectInfo<SocketAddr>`).
        let app = tower::Layer::layer(
            &axum::Extension(axum::extract::ConnectInfo(peer)),
            app.clone(),
        );
        let svc = TowerToHyperService::new(app);
        let span = tracing::Span::current();
        let (counters, silent, tls_failed) = (counters.clone(), silent.clone(), tls_failed.clone());
        let (header_timeout, write_stall) = (limits.header_timeout, limits.write_stall);
        let tls = tls.clone();
        tokio::spawn(
            async move {
                // The head's timer starts at accept: a socket that sends nothing holds a
                // slot for `header_timeout` at most.
                match tokio::time::timeout(header_timeout, stream.peek(&mut [0u8; 1])).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return,
                    Err(_) => {
                        counters.incr(&silent);
                        return;
                    }
                }
                let stream = StallGuard::new(stream, write_stall);
                let ended = match tls {
                    None => serve_connection(stream, svc, header_timeout).await,
                    // The handshake shares the head's deadline: a client that stalls it
                    // holds its slot no longer than one that stalls its head.
                    Some(tls) => {
                        match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => serve_connection(stream, svc, header_timeout).await,
                            Ok(Err(e)) => {
                                counters.incr(&tls_failed);
                                Err(e.to_string())
                            }
                            Err(_) => {
                                counters.incr(&tls_failed);
                                Err("TLS handshake timed out".into())
                            }
                        }
                    }
                };
                if let Err(e) = ended {
                    debug!(%peer, error = %e, "http connection ended");
                }
                drop(permit);
                drop(place);
            }
            .instrument(span),
        );
    }
}

/// A connection's router, with its client's address for `ConnectInfo`.
type App = axum::middleware::AddExtension<Router, axum::extract::ConnectInfo<std::net::SocketAddr>>;

/// Serves one connection (plain, or TLS once the handshake is done) with hyper's HTTP/1.1
/// and HTTP/2 under the head limits.
async fn serve_connection<S>(
    io: S,
    svc: TowerToHyperService<App>,
    header_timeout: Duration,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD);
    b.http2().max_header_list_size(MAX_HEAD as u32);
    b.serve_connection(TokioIo::new(io), svc)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_the_peer_does_not_take_fails_after_the_stall() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut g = StallGuard::new(a, Duration::from_millis(100));
        // The peer reads a little, then stops: the writer fails instead of waiting forever.
        let t = tokio::time::Instant::now();
        let w = tokio::spawn(async move { g.write_all(&[7u8; 4096]).await });
        let mut first = [0u8; 32];
        b.read_exact(&mut first).await.unwrap();
        let err = w.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= Duration::from_millis(100));
        // A peer that keeps reading is never timed out, however slowly it reads.
        let (a, mut b) = tokio::io::duplex(64);
        let mut g = StallGuard::new(a, Duration::from_millis(100));
        let w = tokio::spawn(async move { g.write_all(&[7u8; 1024]).await });
        let mut got = 0;
        while got < 1024 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            got += b.read(&mut [0u8; 64]).await.unwrap();
        }
        w.await.unwrap().unwrap();
    }

    async fn server(limits: HttpLimits) -> (std::net::SocketAddr, Arc<Counters>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(l, app, limits, None, counters.clone(), "t"));
        (addr, counters)
    }

    /// With TLS, the same routes answer over HTTPS to a client that trusts the cluster CA;
    /// a plain-HTTP client gets nothing and the failed handshake is counted.
    #[tokio::test]
    async fn with_tls_only_https_is_served() {
        crate::tls::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::make_ca(dir.path()).unwrap();
        let (cert, key) = crate::tls::issue(dir.path(), "n1", &["127.0.0.1".into()]).unwrap();
        let tls = crate::tls::acceptor(&cert, &key).unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(
            l,
            app,
            HttpLimits::default(),
            Some(tls),
            counters.clone(),
            "t",
        ));
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
        let https = reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .unwrap();
        let r = https.get(format!("https://{addr}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
        // Not trusted without the CA.
        let untrusting = reqwest::Client::builder().build().unwrap();
        assert!(
            untrusting
                .get(format!("https://{addr}/"))
                .send()
                .await
                .is_err()
        );
        // Plain HTTP: no answer.
        let plain = reqwest::Client::new();
        assert!(plain.get(format!("http://{addr}/")).send().await.is_err());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while counters
            .snapshot()
            .get("t_tls_failed")
            .copied()
            .unwrap_or(0)
            < 2
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                counters.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A socket that sends nothing is closed `header_timeout` after it connected (not
    /// kept until its first byte), and counted; a client that speaks is served.
    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_head_timeout_from_accept() {
        let limits = HttpLimits {
            header_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        };
        let (addr, counters) = server(limits).await;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t = tokio::time::Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut [0u8; 16]))
            .await
            .expect("closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert!(t.elapsed() >= Duration::from_millis(190));
        assert_eq!(counters.snapshot().get("t_closed_silent"), Some(&1));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        c.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    }

    #[test]
    fn addresses_count_by_ipv4_address_and_ipv6_slash_64() {
        let k = |s: &str| AddressKey::of(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
        assert_ne!(k("10.0.0.1"), k("10.0.0.2"));
    }

    /// One address holds at most `max_per_address` connections; the next is counted,
    /// held unread for the tarpit's second (a stranger's reconnect loop slows to it) and
    /// closed, and a place comes back when a connection ends.
    #[tokio::test]
    async fn one_address_holds_at_most_its_share() {
        let limits = HttpLimits {
            max_per_address: 2,
            ..HttpLimits::default()
        };
        let (addr, counters) = server(limits).await;
        let a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t = tokio::time::Instant::now();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut [0u8; 16]))
            .await
            .expect("closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(t.elapsed() >= TARPIT_HOLD, "closed after {:?}", t.elapsed());
        assert_eq!(counters.snapshot().get("t_refused_per_address"), Some(&1));
        drop(a);
        // Its place is given back once the server sees it closed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut d = tokio::net::TcpStream::connect(addr).await.unwrap();
            d.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .ok();
            let mut body = String::new();
            let _ = d.read_to_string(&mut body).await;
            if body.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no place came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A trusted proxy's address is not capped: its many clients share it.
    #[tokio::test]
    async fn an_uncapped_address_holds_more_than_the_share() {
        let limits = HttpLimits {
            max_per_address: 1,
            uncapped: Arc::from(["127.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]),
            ..HttpLimits::default()
        };
        let (addr, counters) = server(limits).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut d = tokio::net::TcpStream::connect(addr).await.unwrap();
            d.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut head = [0u8; 12];
            d.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
            held.push(d);
        }
        assert_eq!(counters.snapshot().get("t_refused_per_address"), None);
    }

    /// A kept-alive connection that sends no further request is closed about
    /// `header_timeout` after its last response (hyper's head timer also runs between
    /// requests): an idle keep-alive socket does not hold its place.
    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
        let limits = HttpLimits {
            header_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let (addr, _) = server(limits).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let t = tokio::time::Instant::now();
        // Then nothing: the server closes it.
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "an idle keep-alive connection was kept");
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }

    /// A request head larger than [`MAX_HEAD`] is refused, not buffered.
    #[tokio::test]
    async fn a_head_over_the_limit_is_refused() {
        let (addr, _) = server(HttpLimits::default()).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let big = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD * 2)
        );
        // The server may close while we still write: either way no 200 comes back.
        let _ = c.write_all(big.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }
}
