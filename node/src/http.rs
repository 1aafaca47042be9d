//! HTTP serving for the node's surfaces (the front-end's `/watch`): an accept loop with a
//! cap on open connections, hyper's HTTP/1.1 with a deadline on reading a request head,
//! and an axum router for the routes.
//!
//! A connection over the cap is closed at once and counted (a client retries; a flood of
//! idle connections cannot starve the listener of file descriptors). A client that does not
//! send a complete request head within `header_timeout` is disconnected (slowloris), and
//! one that takes no response byte for `write_stall` is disconnected too ([`StallGuard`]):
//! a viewer that stops reading a relayed video cannot hold its upstream connection and its
//! admission forever.

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

/// Limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to receive a whole request head.
    pub header_timeout: Duration,
    /// A response write that makes no progress for this long fails the connection.
    pub write_stall: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(5),
            // Longer than any pause of a player that reads at its own pace (a browser
            // with a full buffer stops reading for a while, then asks for more).
            write_stall: Duration::from_secs(60),
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

/// Serves `app` on `listener` until the task is aborted. `name` prefixes the counters
/// (`{name}_refused_over_cap`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    counters: Arc<Counters>,
    name: &'static str,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refused = format!("{name}_refused_over_cap");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
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
        tokio::spawn(
            async move {
                let mut b = auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout);
                let io = TokioIo::new(StallGuard::new(stream, limits.write_stall));
                if let Err(e) = b.serve_connection(io, svc).await {
                    debug!(%peer, error = %e, "http connection ended");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
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
}
