//! The player page's side of the front-end: the page and hls.js, and
//! `/watch/{video}/where` with the node serving the video and its events. The contract
//! between the page and its server is written down with the page, in the data plane's
//! `smart_vod::player` (`vod/ui/play.html`); its JSON is `smart_proto::player`, the same types
//! the data plane's front-end serves and the e2e tests decode. The node library does not link the
//! data plane: the page and hls.js are files, read from `[frontend] player_dir`.
//!
//! Events come from the Control's own events, which it fans out to every node
//! ([`super::smart_node::events::Subscribers::local`]): `Admitted` is `placed`, `Migrated` is
//! `migrated` (or `restarted` when the service was restarted after a node failure or a
//! crash), a member declared dead that ran a video's distributor is `node_failed` for that
//! video, and an admission the front-end saw refused is `refused`. The same events keep the
//! placement cache current (a move forgets the old placement).
//!
//! ## Layout
//! - [`Where`], [`PlayerEvent`]: the JSON (`smart_proto::player`).
//! - [`EventLog`]: the last events per video; [`follow`]: the task feeding it.
//! - [`player_dir`], [`file`]: the page's files.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use smart_proto::api::Event;
use tokio::sync::broadcast;

use super::placements::Placements;

/// Events kept per video.
const KEPT: usize = 50;
/// Videos with an event log at most.
const MAX_VIDEOS: usize = 10_000;

pub(super) use smart_proto::player::{PlayerEvent, Where};

/// The video of a service name (`video-{video}`).
pub(super) fn video_of(service: &str) -> Option<&str> {
    service.strip_prefix("video-")
}

/// The last events of each video.
#[derive(Debug, Default)]
pub(super) struct EventLog(Mutex<HashMap<String, (u64, VecDeque<PlayerEvent>)>>);

impl EventLog {
    /// Records an event of `video`.
    pub(super) fn push(&self, video: &str, kind: &str, text: String) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(video) && m.len() >= MAX_VIDEOS {
            return;
        }
        let (seq, q) = m.entry(video.to_string()).or_default();
        *seq += 1;
        q.push_back(PlayerEvent {
            seq: *seq,
            at_ms,
            kind: kind.to_string(),
            text,
        });
        while q.len() > KEPT {
            q.pop_front();
        }
    }

    /// `video`'s events, oldest first.
    pub(super) fn of(&self, video: &str) -> Vec<PlayerEvent> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(video)
            .map(|(_, q)| q.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What an event means for the page and the cache.
pub(super) fn apply(ev: &Event, log: &EventLog, placements: &Placements) {
    match ev {
        Event::Admitted(p) => {
            if let Some(v) = video_of(&p.service) {
                placements.set(v, p);
                log.push(v, "placed", format!("placed on {}", p.node));
            }
        }
        Event::Migrated {
            service,
            from,
            to,
            reason,
        } => {
            if let Some(v) = video_of(service) {
                placements.forget(v);
                let kind = if reason.starts_with("node-failure") || reason.starts_with("crashed") {
                    "restarted"
                } else {
                    "migrated"
                };
                log.push(v, kind, format!("moved from {from} to {to} ({reason})"));
            }
        }
        Event::MemberChanged { node, alive: false } => {
            for v in placements.on_node(*node) {
                placements.forget(&v);
                log.push(&v, "node_failed", format!("node {node} failed"));
            }
        }
        Event::Lost { service, reason } => {
            if let Some(v) = video_of(service) {
                placements.forget(v);
                log.push(v, "lost", reason.clone());
            }
        }
        _ => {}
    }
}

/// Feeds the log and the cache from this node's events until the channel closes.
pub(super) async fn follow(
    mut rx: broadcast::Receiver<Event>,
    log: Arc<EventLog>,
    placements: Arc<Placements>,
) {
    loop {
        match rx.recv().await {
            Ok(ev) => apply(&ev, &log, &placements),
            // Missed some: the cache may be stale; relays re-locate on failure anyway.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Environment variable naming the page's directory when `[frontend] player_dir` is not
/// set (the data plane's tests and tools use the same one).
pub(super) const UI_DIR_ENV: &str = "SMART_UI_DIR";

/// Where the page's files are: `configured`, else `$SMART_UI_DIR`, else `vod/ui` of the
/// source tree this binary was built from (where `scripts/setup.sh` installs hls.js).
pub(super) fn player_dir(configured: Option<&Path>) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(UI_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../vod/ui")))
}

/// A file of the page by the name it is asked for under `/play/`: `(content type, path)`.
/// Only two names exist; nothing from the request reaches the file system.
pub(super) fn file(dir: &Path, name: &str) -> Option<(&'static str, PathBuf)> {
    match name {
        "hls.min.js" => Some((
            "text/javascript",
            dir.join("node_modules/hls.js/dist/hls.min.js"),
        )),
        "" => Some(("text/html; charset=utf-8", dir.join("play.html"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_last_events_with_growing_seq() {
        let log = EventLog::default();
        for i in 0..60 {
            log.push("v1", "migrated", format!("{i}"));
        }
        let e = log.of("v1");
        assert_eq!(e.len(), KEPT);
        assert_eq!(e.first().unwrap().seq, 11);
        assert_eq!(e.last().unwrap().seq, 60);
        assert!(log.of("v2").is_empty());
        assert_eq!(video_of("video-v1"), Some("v1"));
        assert_eq!(video_of("other"), None);
    }

    #[test]
    fn only_two_files_are_served() {
        let d = Path::new("/ui");
        assert_eq!(file(d, "").unwrap().1, Path::new("/ui/play.html"));
        assert!(file(d, "hls.min.js").unwrap().1.ends_with("hls.min.js"));
        for other in ["../play.html", "play.html", "/etc/passwd", "hls.js"] {
            assert!(file(d, other).is_none(), "{other}");
        }
        assert!(
            player_dir(None).join("play.html").exists(),
            "the source tree's page"
        );
    }
}
