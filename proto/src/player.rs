//! The player page's contract with whoever serves it (the data plane's small front-end,
//! `smart_vod::frontend`, and SMART's front-end, `smart_frontend`): the JSON of
//! `GET /watch/{video}/where`, which the page polls every second. The page itself, its
//! routes and how it shows these fields are documented with it, in `smart_vod::player`.

use serde::{Deserialize, Serialize};

/// One event the page shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerEvent {
    /// Increasing per video.
    pub seq: u64,
    /// Wall clock, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `placed`, `migrated`, `restarted`, `node_failed`, `refused`, `lost`, or another
    /// word (the page colours the first five and prints any other as is).
    pub kind: String,
    /// For people.
    pub text: String,
}

/// The answer to `GET /watch/{video}/where`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Where {
    /// The video.
    pub video: String,
    /// The node serving it now (`n3`), if placed.
    pub node: Option<String>,
    /// Its distributor's base URL, if placed.
    pub endpoint: Option<String>,
    /// Recent events, oldest first.
    pub events: Vec<PlayerEvent>,
}
