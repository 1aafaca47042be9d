//! HTTP serving for the node's surfaces (the front-end's `/watch`): an accept loop with a
//! cap on open connections, hyper's HTTP/1.1 with a deadline on reading a request head,
//! and an axum router for the routes.
//!
//! A connection over the cap is closed at once and counted (a client retries; a flood of
//! idle connections cannot starve the listener of file descriptors). A client that does not
//! send a complete request head within `header_timeout` is disconnected (slowloris).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug};

use super::counters::Counters;

/// Limits of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time to receive a whole request head.
    pub header_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(5),
        }
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
        let svc = TowerToHyperService::new(app.clone());
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let mut b = auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout);
                if let Err(e) = b.serve_connection(TokioIo::new(stream), svc).await {
                    debug!(%peer, error = %e, "http connection ended");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}
