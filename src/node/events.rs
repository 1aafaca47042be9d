//! Message-API event subscribers of this node. The Control fans its events out to every
//! node, so a subscriber on any node hears them.

use std::sync::Mutex;

use smart_api::{Event, NodeProtocol};
use smart_supervision::transport::Connection;

/// The connections that asked for events.
#[derive(Default)]
pub struct Subscribers(Mutex<Vec<Connection<NodeProtocol>>>);

impl Subscribers {
    /// Adds a connection.
    pub fn add(&self, c: Connection<NodeProtocol>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    /// Pushes `ev` to every subscriber; closed connections are forgotten. A full queue drops
    /// the event for that subscriber (counted by the transport): a slow subscriber never
    /// stalls the node.
    pub fn publish(&self, ev: &Event) {
        let mut subs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|c| !c.is_closed());
        for c in subs.iter() {
            let _ = c.notify(ev.clone());
        }
    }
}
