//! Message-API event subscribers of this node. The Control fans its events out to every
//! node, so a subscriber on any node hears them: remote ones over their API connection,
//! and this node's own actors (the front-end's player page) through [`Subscribers::local`].

use std::sync::Mutex;

use smart_api::{Event, NodeProtocol};
use smart_supervision::transport::Connection;
use tokio::sync::broadcast;

/// Events buffered for a slow local subscriber before it misses some (it is told so).
const LOCAL_BACKLOG: usize = 256;

/// The connections that asked for events, and the in-process listeners.
pub struct Subscribers {
    remote: Mutex<Vec<Connection<NodeProtocol>>>,
    local: broadcast::Sender<Event>,
}

impl Default for Subscribers {
    fn default() -> Self {
        Self {
            remote: Mutex::new(Vec::new()),
            local: broadcast::channel(LOCAL_BACKLOG).0,
        }
    }
}

impl Subscribers {
    /// Adds a connection.
    pub fn add(&self, c: Connection<NodeProtocol>) {
        self.remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
    }

    /// Every event published on this node from now on (a receiver that falls more than
    /// [`LOCAL_BACKLOG`] behind gets `Lagged` and continues with newer ones).
    pub fn local(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    /// Pushes `ev` to every subscriber; closed connections are forgotten. A full queue drops
    /// the event for that subscriber (counted by the transport): a slow subscriber never
    /// stalls the node.
    pub fn publish(&self, ev: &Event) {
        // No local receiver is not an error: the front-end may not run here.
        let _ = self.local.send(ev.clone());
        let mut subs = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|c| !c.is_closed());
        for c in subs.iter() {
            let _ = c.notify(ev.clone());
        }
    }
}
