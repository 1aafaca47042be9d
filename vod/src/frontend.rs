//! A minimal front-end: answers every GET with `302 Found` to the same path at the current
//! target. It stands in for SMART's FrontEnd (GloVE's Supervisor) in tests and demos: after a
//! migration the target changes, and viewers that come back here land on the new distributor.
//!
//! It also serves the player page and its contract ([`crate::player`]): `/play/{video}`,
//! `/play/hls.min.js`, and `/watch/{video}/where` from the node name and events set with
//! [`Frontend::place`] and [`Frontend::push_event`]. A `/watch/` prefix is dropped before
//! redirecting (`/watch/v.ts.m3u8` → `{target}/v.ts.m3u8`), like SMART's front-end does.
//!
//! ## Layout
//! - [`Frontend`]: the target, node, events and the accept loop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::http::{self, ResponseHead, Url};
use crate::player::{self, PlayerEvent, Where};

/// Events kept for the page.
const EVENTS_KEPT: usize = 50;

/// The redirecting front-end.
#[derive(Debug)]
pub struct Frontend {
    target: RwLock<Url>,
    node: RwLock<Option<String>>,
    events: Mutex<(u64, VecDeque<PlayerEvent>)>,
}

impl Frontend {
    /// A front-end sending viewers to `target` (a base URL).
    pub fn new(target: Url) -> Arc<Self> {
        Arc::new(Self {
            target: RwLock::new(target),
            node: RwLock::new(None),
            events: Mutex::new((0, VecDeque::new())),
        })
    }

    /// Points new requests at another base URL.
    pub fn set_target(&self, target: Url) {
        *self.target.write().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Points new requests at `target`, served by `node` (what the page shows).
    pub fn place(&self, target: Url, node: &str) {
        self.set_target(target);
        *self.node.write().unwrap_or_else(|e| e.into_inner()) = Some(node.to_string());
    }

    /// Records an event for the page (`kind` as in [`PlayerEvent`]).
    pub fn push_event(&self, kind: &str, text: &str) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        ev.0 += 1;
        let seq = ev.0;
        ev.1.push_back(PlayerEvent {
            seq,
            at_ms,
            kind: kind.to_string(),
            text: text.to_string(),
        });
        while ev.1.len() > EVENTS_KEPT {
            ev.1.pop_front();
        }
    }

    fn where_json(&self, video: &str) -> String {
        let w = Where {
            video: video.to_string(),
            node: self.node.read().unwrap_or_else(|e| e.into_inner()).clone(),
            endpoint: Some(
                self.target
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .with_path("/")
                    .to_string(),
            ),
            events: self
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .iter()
                .cloned()
                .collect(),
        };
        serde_json::to_string(&w).unwrap_or_default()
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
        let req = match http::read_request(&mut s, Duration::from_secs(5)).await {
            Ok(req) => req,
            Err(e) => {
                if let Some(status) = e.status() {
                    http::write_error(&mut s, status, &[]).await;
                }
                return;
            }
        };
        let body = match player::route(&req.path) {
            Some(player::Route::Page(_)) => Some((
                "text/html; charset=utf-8",
                player::PAGE_HTML.as_bytes().to_vec(),
            )),
            Some(player::Route::Asset(name)) => match player::asset(name) {
                Some(a) => Some(a),
                None => return http::write_error(&mut s, 404, &[]).await,
            },
            Some(player::Route::Where(video)) => {
                Some(("application/json", self.where_json(video).into_bytes()))
            }
            None => None,
        };
        if let Some((ctype, body)) = body {
            let mut out = ResponseHead::new(200)
                .header("Content-Type", ctype)
                .header("Content-Length", body.len())
                .header("Cache-Control", "no-store")
                .finish();
            if !req.head_only {
                out.extend_from_slice(&body);
            }
            let _ = s.write_all(&out).await;
            let _ = s.shutdown().await;
            return;
        }
        let path = match req.path.strip_prefix("/watch/") {
            Some(rest) => format!("/{rest}"),
            None => req.path.clone(),
        };
        let path = match &req.query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let to = self
            .target
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .with_path(&path);
        http::write_error(
            &mut s,
            302,
            &[
                ("Location", to.to_string()),
                ("Access-Control-Allow-Origin", "*".to_string()),
            ],
        )
        .await;
    }
}
