//! The front-end's HLS sessions: one admitted client per viewer session.
//!
//! A session is born at the playlist request (`/watch/{video}.m3u8`; the front-end picks
//! its id, or adopts a well-formed id the player brings, e.g. from a front-end that
//! restarted) with one `AdmitClient`, and is passed to the distributor as `?s={id}`, which
//! counts it as one client too. Every request refreshes it; a session that has made no
//! request for `hls_session_timeout` (and has none in progress) is released with
//! `ReleaseClient{client}` by [`Sessions::sweep`]. The table is capped
//! (`max_hls_sessions`): a client opening sessions in a loop gets `503`, and admission
//! bounds how many can be admitted anyway.
//!
//! ## Layout
//! - [`Sessions`]: the table; [`Active`]: a request in progress (keeps its session alive).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A viewer session id: 1 to 32 characters of `[A-Za-z0-9_-]`, URL-safe without escaping
/// (the distributor accepts the same ids and adopts one it does not know).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SessionId(String);

impl SessionId {
    /// Checks a client-supplied id.
    pub(super) fn parse(s: &str) -> Option<Self> {
        (!s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(s.to_string()))
    }

    /// A new id from 64 random bits (16 hex digits).
    pub(super) fn random() -> Self {
        Self(format!("{:016x}", rand::random::<u64>()))
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a session cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum SessionError {
    /// The id belongs to a session of another video.
    #[error("the session belongs to another video")]
    OtherVideo,
    /// The table is full.
    #[error("too many HLS sessions")]
    Full,
}

#[derive(Debug)]
struct Session {
    video: String,
    /// The admitted client (None when the admission answer had no id).
    client: Option<u64>,
    last: Instant,
    /// Requests in progress.
    active: u32,
}

/// A released session: its video and client, to be released at the Control.
pub(super) type Released = (String, Option<u64>);

/// The session table.
#[derive(Debug)]
pub(super) struct Sessions {
    map: Mutex<HashMap<SessionId, Session>>,
    timeout: Duration,
    max: usize,
}

impl Sessions {
    pub(super) fn new(timeout: Duration, max: usize) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            timeout,
            max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live sessions.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// If `id` is a session of `video`, marks a request in progress and returns it; `None`
    /// when there is no such session (admit one, then [`Sessions::insert`]).
    pub(super) fn begin(
        self: &Arc<Self>,
        id: &SessionId,
        video: &str,
    ) -> Result<Option<Active>, SessionError> {
        let mut m = self.lock();
        let Some(s) = m.get_mut(id) else {
            return if m.len() >= self.max {
                Err(SessionError::Full)
            } else {
                Ok(None)
            };
        };
        if s.video != video {
            return Err(SessionError::OtherVideo);
        }
        s.active += 1;
        s.last = Instant::now();
        Ok(Some(Active {
            sessions: self.clone(),
            id: id.clone(),
        }))
    }

    /// Records a session admitted as `client`, with one request in progress. When another
    /// request created it meanwhile, the extra admission is returned for release.
    pub(super) fn insert(
        self: &Arc<Self>,
        id: &SessionId,
        video: &str,
        client: Option<u64>,
    ) -> Result<(Active, Option<Released>), SessionError> {
        let mut m = self.lock();
        let now = Instant::now();
        let full = m.len() >= self.max;
        let extra = match m.get_mut(id) {
            Some(s) if s.video != video => return Err(SessionError::OtherVideo),
            Some(s) => {
                s.active += 1;
                s.last = now;
                Some((video.to_string(), client))
            }
            None if full => return Err(SessionError::Full),
            None => {
                m.insert(
                    id.clone(),
                    Session {
                        video: video.to_string(),
                        client,
                        last: now,
                        active: 1,
                    },
                );
                None
            }
        };
        Ok((
            Active {
                sessions: self.clone(),
                id: id.clone(),
            },
            extra,
        ))
    }

    /// Removes the sessions idle for the timeout with no request in progress.
    pub(super) fn sweep(&self, now: Instant) -> Vec<Released> {
        let timeout = self.timeout;
        let mut out = Vec::new();
        self.lock().retain(|_, s| {
            let keep = s.active > 0 || now.saturating_duration_since(s.last) < timeout;
            if !keep {
                out.push((s.video.clone(), s.client));
            }
            keep
        });
        out
    }

    /// Removes every session (the front-end is stopping).
    pub(super) fn drain(&self) -> Vec<Released> {
        self.lock()
            .drain()
            .map(|(_, s)| (s.video, s.client))
            .collect()
    }
}

/// A request of a session in progress; the session's idle time starts when it drops.
#[derive(Debug)]
pub(super) struct Active {
    sessions: Arc<Sessions>,
    id: SessionId,
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(s) = self.sessions.lock().get_mut(&self.id) {
            s.active = s.active.saturating_sub(1);
            s.last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    #[test]
    fn ids_are_checked() {
        assert!(SessionId::parse("ab_12-Z").is_some());
        for bad in ["", "a/b", "a%2f", "<x>", &"a".repeat(33)] {
            assert!(SessionId::parse(bad).is_none(), "{bad}");
        }
        assert_ne!(SessionId::random(), SessionId::random());
        assert_eq!(SessionId::random().as_str().len(), 16);
    }

    #[test]
    fn sessions_expire_only_when_idle() {
        let t = Sessions::new(Duration::from_secs(20), 2);
        assert!(t.begin(&id("a"), "v1").unwrap().is_none());
        let (active, extra) = t.insert(&id("a"), "v1", Some(7)).unwrap();
        assert!(extra.is_none());
        assert_eq!(
            t.begin(&id("a"), "v2").unwrap_err(),
            SessionError::OtherVideo
        );
        // In progress: never expires.
        let s = |secs| Instant::now() + Duration::from_secs(secs);
        assert!(t.sweep(s(60)).is_empty());
        drop(active);
        assert!(t.sweep(s(19)).is_empty());
        assert_eq!(t.sweep(s(21)), vec![("v1".to_string(), Some(7))]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_race_to_create_returns_the_extra_admission_and_the_table_is_capped() {
        let t = Sessions::new(Duration::from_secs(20), 2);
        let (_a, _) = t.insert(&id("a"), "v1", Some(1)).unwrap();
        let (_b, extra) = t.insert(&id("a"), "v1", Some(2)).unwrap();
        assert_eq!(extra, Some(("v1".to_string(), Some(2))));
        let (_c, _) = t.insert(&id("c"), "v1", Some(3)).unwrap();
        assert_eq!(t.begin(&id("d"), "v1").unwrap_err(), SessionError::Full);
        assert_eq!(
            t.insert(&id("d"), "v1", Some(4)).unwrap_err(),
            SessionError::Full
        );
        let mut all = t.drain();
        all.sort();
        assert_eq!(all.len(), 2);
    }
}
