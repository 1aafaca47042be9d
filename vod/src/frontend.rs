//! A minimal front-end: answers every GET with `302 Found` to the same path at the current
//! target. It stands in for SMART's FrontEnd (GloVE's Supervisor) in tests and demos: after a
//! migration the target changes, and viewers that come back here land on the new distributor.
//!
//! ## Layout
//! - [`Frontend`]: the target and the accept loop.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::http::{self, Url};

/// The redirecting front-end.
#[derive(Debug)]
pub struct Frontend {
    target: RwLock<Url>,
}

impl Frontend {
    /// A front-end sending viewers to `target` (a base URL).
    pub fn new(target: Url) -> Arc<Self> {
        Arc::new(Self {
            target: RwLock::new(target),
        })
    }

    /// Points new requests at another base URL.
    pub fn set_target(&self, target: Url) {
        *self.target.write().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Runs the accept loop.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                let me = self.clone();
                tokio::spawn(async move { me.handle(s).await });
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    async fn handle(&self, mut s: TcpStream) {
        match http::read_request(&mut s, Duration::from_secs(5)).await {
            Ok(req) => {
                let to = self
                    .target
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .with_path(&req.path);
                http::write_error(&mut s, 302, &[("Location", to.to_string())]).await;
            }
            Err(e) => {
                if let Some(status) = e.status() {
                    http::write_error(&mut s, status, &[]).await;
                }
            }
        }
    }
}
