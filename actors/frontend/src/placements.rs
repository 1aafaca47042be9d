//! Where each video's distributor runs now, as the front-end last heard it: one cached
//! [`Placement`] per video, from admissions, from the Control's events, and from `Locate`
//! when the cache has none or a caller found the cached endpoint broken.
//!
//! Relayed and redirected segment requests read this cache instead of asking the Control
//! each time (an HLS viewer asks for a segment every 2 s: a thousand viewers would be 500
//! `Locate`s a second). When a relay cannot use the cached endpoint (connection refused, a
//! dead node's connection cut), it asks [`Placements::current`] again naming the broken
//! endpoint: one `Locate` per video is in flight at a time and the viewers of that video
//! wait for its answer (a node death makes every viewer of its videos ask at once), and a
//! placement refreshed less than [`RELOCATE_EVERY`] ago is returned as is rather than asked
//! again (the Control answers with the dead endpoint until its failure detector fires).
//! A placement on a node that this node's membership view no longer lists as a live agent
//! is never handed out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smart_proto::NodeId;
use smart_proto::api::{ApiError, Placement, Request, Response};
use tokio::time::Instant;

use super::service_of;
use smart_control::forward::Forwarder;

/// A broken endpoint is asked about again at most this often per video.
pub(super) const RELOCATE_EVERY: Duration = Duration::from_millis(100);
/// After a handoff, how often the Control is asked until it names the new endpoint, and
/// for how long.
const HANDOFF_POLL: Duration = Duration::from_millis(5);
const HANDOFF_WAIT: Duration = Duration::from_millis(250);
/// A cached placement older than this is refreshed by [`Placements::fresh`] (the player
/// page's `where`); events keep it current in between.
const MAX_AGE: Duration = Duration::from_secs(5);
/// Videos tracked at most (hostile names cannot grow the table without bound: a name the
/// Control does not know is never cached, and this caps the rest).
const MAX_VIDEOS: usize = 100_000;

#[derive(Debug, Default)]
struct Slot {
    placement: Option<Placement>,
    at: Option<Instant>,
}

/// The placement cache (see the module docs).
pub(super) struct Placements {
    forwarder: Forwarder,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl Placements {
    pub(super) fn new(forwarder: Forwarder) -> Self {
        Self {
            forwarder,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The forwarder to the Control.
    pub(super) fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// True when this node's membership counts `node` as a live agent.
    pub(super) fn alive(&self, node: NodeId) -> bool {
        self.forwarder
            .view
            .borrow()
            .agents
            .iter()
            .any(|a| a.node == node)
    }

    fn slot(&self, video: &str) -> Option<Arc<tokio::sync::Mutex<Slot>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(video) {
            return Some(s.clone());
        }
        if slots.len() >= MAX_VIDEOS {
            return None;
        }
        Some(slots.entry(video.to_string()).or_default().clone())
    }

    /// Records a placement heard from an admission or an event.
    pub(super) fn set(&self, video: &str, p: &Placement) {
        if p.endpoint.is_empty() {
            return;
        }
        if let Some(slot) = self.slot(video)
            && let Ok(mut s) = slot.try_lock()
        {
            // A `Locate` in flight will store its own (newer) answer: skip rather than wait.
            s.placement = Some(Placement {
                client: None,
                ..p.clone()
            });
            s.at = Some(Instant::now());
        }
    }

    /// True when a placement of `video` is cached (its service runs, as far as this
    /// front-end heard).
    pub(super) fn has(&self, video: &str) -> bool {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(video)
            .cloned();
        // Busy: a `Locate` or an update in flight, so the video is being served.
        slot.is_some_and(|s| s.try_lock().map_or(true, |s| s.placement.is_some()))
    }

    /// Forgets `video`'s placement (it moved: the next caller asks the Control).
    pub(super) fn forget(&self, video: &str) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(video)
            .cloned();
        if let Some(slot) = slot
            && let Ok(mut s) = slot.try_lock()
        {
            s.placement = None;
        }
    }

    /// Videos whose cached placement is on `node`.
    pub(super) fn on_node(&self, node: NodeId) -> Vec<String> {
        let slots: Vec<(String, Arc<tokio::sync::Mutex<Slot>>)> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        slots
            .into_iter()
            .filter(|(_, s)| {
                s.try_lock()
                    .is_ok_and(|s| s.placement.as_ref().is_some_and(|p| p.node == node))
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// The placement for the page: cached when younger than [`MAX_AGE`], else asked.
    pub(super) async fn fresh(&self, video: &str) -> Option<Placement> {
        let slot = self.slot(video)?;
        {
            let s = slot.lock().await;
            if let (Some(p), Some(at)) = (&s.placement, s.at)
                && at.elapsed() < MAX_AGE
            {
                return Some(p.clone());
            }
        }
        self.current(video, None).await.ok()
    }

    /// Where `video`'s clients connect now, after the distributor at `broken` said (by
    /// redirecting elsewhere) that it handed its viewers off: the Control is asked at once
    /// unless the cache already names another endpoint (another viewer of the video asked,
    /// or an event came), and asked again every [`HANDOFF_POLL`] while it still names
    /// `broken` (it learns of the cut-over from the source's agent a moment after the
    /// viewers were closed), for [`HANDOFF_WAIT`] at most. One `Locate` per video at a
    /// time, as with [`Self::current`].
    pub(super) async fn moved(&self, video: &str, broken: &str) -> Result<Placement, ApiError> {
        let Some(slot) = self.slot(video) else {
            return self.locate(video).await;
        };
        let mut s = slot.lock().await;
        if let Some(p) = &s.placement
            && p.endpoint != broken
            && self.alive(p.node)
        {
            return Ok(p.clone());
        }
        let t = Instant::now();
        let p = loop {
            let p = self.locate(video).await?;
            if p.endpoint != broken || t.elapsed() >= HANDOFF_WAIT {
                break p;
            }
            tokio::time::sleep(HANDOFF_POLL).await;
        };
        s.placement = Some(p.clone());
        s.at = Some(Instant::now());
        if !self.alive(p.node) {
            return Err(ApiError::NoControl);
        }
        Ok(p)
    }

    /// Where `video`'s clients connect now. `broken` names an endpoint the caller could not
    /// use: unless the cache was refreshed in the last [`RELOCATE_EVERY`], the Control is
    /// asked again. Errors are the Control's (`NotFound`: no such service) or `NoControl`
    /// when the answer is on a node this node believes dead.
    pub(super) async fn current(
        &self,
        video: &str,
        broken: Option<&str>,
    ) -> Result<Placement, ApiError> {
        let Some(slot) = self.slot(video) else {
            return self.locate(video).await;
        };
        let mut s = slot.lock().await;
        if let (Some(p), Some(at)) = (&s.placement, s.at) {
            let usable = self.alive(p.node);
            // Asked a moment ago: the caller retries this answer shortly instead.
            let recent = at.elapsed() < RELOCATE_EVERY;
            if usable && (recent || broken != Some(p.endpoint.as_str())) {
                return Ok(p.clone());
            }
            if !usable && recent {
                return Err(ApiError::NoControl);
            }
        }
        let p = match self.locate(video).await {
            Ok(p) => p,
            Err(e) => {
                if s.placement.is_none() && matches!(e, ApiError::NotFound { .. }) {
                    // Not a video the Control knows: keep no slot for it.
                    drop(s);
                    self.slots
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(video);
                }
                return Err(e);
            }
        };
        s.placement = Some(p.clone());
        s.at = Some(Instant::now());
        if !self.alive(p.node) {
            // The Control has not noticed yet; the caller waits and asks again.
            return Err(ApiError::NoControl);
        }
        Ok(p)
    }

    async fn locate(&self, video: &str) -> Result<Placement, ApiError> {
        match self
            .forwarder
            .forward(Request::Locate {
                service: service_of(video),
            })
            .await
        {
            Response::Placed(p) if !p.endpoint.is_empty() => Ok(p),
            Response::Placed(_) => Err(ApiError::Rebuilding),
            Response::Error(e) => Err(e),
            other => Err(ApiError::Internal {
                reason: format!("unexpected answer to Locate: {other:?}"),
            }),
        }
    }
}
