//! This node's events: message-API subscribers, and a bounded ring of recent events,
//! numbered, for the HTTP API's `/v1/events` (which resumes from an index).
//!
//! Events reach a node from its own membership (Control changes, members up and down) and
//! from the Control, which fans its events out to every node; everything a node hears goes
//! through [`Subscribers::publish`], which numbers it into the ring and pushes it to the
//! transport subscribers.
//!
//! ## Numbering: what survives a failover
//! The **node** numbers the events it hears, not the Control: an index made by the Control
//! would start again at every new Control, and a client resuming "after 41" would miss or
//! repeat events across a failover. A node's index is `incarnation × 1000 + n` (`n`
//! counting from 1 since the node started; the incarnation is the start's Unix time in
//! milliseconds, or more), so it grows through Control failovers (the node keeps counting)
//! and across restarts of the node itself (a restart starts at least a millisecond later,
//! i.e. 1000 indices higher: a node would have to hear more than a thousand events per
//! millisecond of its life to overlap). A client resuming with an index of an earlier
//! incarnation is given everything in the new ring after a `gap` record. Indices stay
//! below 2^53 (exact in JavaScript) until the year 2255. They are per node: a client that
//! moves to another node starts from that node's ring (`from=0`).
//!
//! This node's own actors (the front-end's player page) hear the same events through
//! [`Subscribers::local`].
//!
//! ## Layout
//! - [`Subscribers`]: transport subscribers and the ring; [`EventLog`], [`Record`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use smart_proto::api::{Event, EventNote};
use smart_transport::Connection;
use smart_transport::NodeProtocol;
use tokio::sync::{broadcast, watch};

/// Events buffered for a slow local subscriber before it misses some (it is told so).
const LOCAL_BACKLOG: usize = 256;

/// Events kept in a node's ring.
pub const RING: usize = 1024;

/// One numbered event.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its index on this node.
    pub index: u64,
    /// When this node heard it, Unix milliseconds.
    pub at_ms: u64,
    /// The event.
    pub event: Event,
}

/// What a reader gets from [`EventLog::since`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Since {
    /// Events after the index asked for, oldest first.
    pub records: Vec<Arc<Record>>,
    /// Events that were asked for but are no longer (or never were) in the ring: the first
    /// and last index missed.
    pub missed: Option<(u64, u64)>,
}

struct Ring {
    records: VecDeque<Arc<Record>>,
    next: u64,
}

/// The ring of recent events.
pub struct EventLog {
    ring: Mutex<Ring>,
    /// The newest index, for waiting readers.
    newest: watch::Sender<u64>,
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl EventLog {
    /// A ring numbering from `incarnation × 1000 + 1`.
    pub fn new(incarnation: u64) -> Self {
        let base = incarnation.saturating_mul(1000);
        Self {
            ring: Mutex::new(Ring {
                records: VecDeque::with_capacity(RING),
                next: base + 1,
            }),
            newest: watch::channel(base).0,
        }
    }

    /// Numbers and keeps `event`; returns its index.
    pub fn push(&self, event: Event) -> u64 {
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let index = r.next;
        r.next += 1;
        if r.records.len() == RING {
            r.records.pop_front();
        }
        r.records.push_back(Arc::new(Record {
            index,
            at_ms: unix_ms(),
            event,
        }));
        drop(r);
        self.newest.send_replace(index);
        index
    }

    /// The newest index (the base when nothing was heard yet).
    pub fn newest(&self) -> u64 {
        *self.newest.borrow()
    }

    /// Waits for indices above the one seen.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }

    /// Events after `from`, and what was missed: with `from` older than the ring (or from an
    /// earlier incarnation), everything kept is returned after a gap.
    pub fn since(&self, from: u64) -> Since {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = r.records.front().map(|x| x.index).unwrap_or(r.next);
        let from = from.min(r.next - 1); // an index from the future: nothing yet
        // `from = 0` asks for everything kept; any other index older than the ring (of this
        // incarnation or an earlier one) missed what lies between.
        let missed = (from != 0 && from + 1 < oldest).then(|| (from + 1, oldest - 1));
        let records = r
            .records
            .iter()
            .filter(|x| x.index > from)
            .cloned()
            .collect();
        Since { records, missed }
    }
}

/// Called with every event published on the node, before anyone else sees it.
pub type EventObserver = Arc<dyn Fn(&Event) + Send + Sync>;

/// The connections that asked for events, and the ring.
pub struct Subscribers {
    conns: Mutex<Vec<Connection<NodeProtocol>>>,
    log: EventLog,
    /// In-process listeners.
    local: broadcast::Sender<Event>,
    /// Events heard (all of them, numbered).
    heard: AtomicU64,
    /// Sees every event first (the node's metrics count migrations, failovers, ...).
    observer: Option<EventObserver>,
}

impl Default for Subscribers {
    fn default() -> Self {
        Self::new(0, None)
    }
}

impl Subscribers {
    /// No subscriber yet; the ring numbers from `incarnation` (see the module docs).
    pub fn new(incarnation: u64, observer: Option<EventObserver>) -> Self {
        Self {
            conns: Mutex::new(Vec::new()),
            log: EventLog::new(incarnation),
            local: broadcast::channel(LOCAL_BACKLOG).0,
            heard: AtomicU64::new(0),
            observer,
        }
    }

    /// Adds a connection.
    pub fn add(&self, c: Connection<NodeProtocol>) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    /// Every event published on this node from now on (a receiver that falls more than
    /// `LOCAL_BACKLOG` behind gets `Lagged` and continues with newer ones).
    pub fn local(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    /// The ring.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Events heard so far.
    pub fn heard(&self) -> u64 {
        self.heard.load(Ordering::Relaxed)
    }

    /// Numbers `ev` into the ring and pushes it to every subscriber; closed connections are
    /// forgotten. A full queue drops the event for that subscriber (counted by the
    /// transport): a slow subscriber never stalls the node.
    pub fn publish(&self, ev: &Event) {
        self.heard.fetch_add(1, Ordering::Relaxed);
        if let Some(observe) = &self.observer {
            observe(ev);
        }
        self.log.push(ev.clone());
        let mut subs = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        // No local receiver is not an error: the front-end may not run here.
        let _ = self.local.send(ev.clone());
        subs.retain(|c| !c.is_closed());
        for c in subs.iter() {
            let _ = c.notify(EventNote::Known(ev.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smart_proto::NodeId;

    fn ev(n: u64) -> Event {
        Event::MemberChanged {
            node: NodeId(n),
            alive: true,
        }
    }

    #[test]
    fn readers_resume_after_an_index_and_see_what_they_missed() {
        let log = EventLog::new(3);
        let base = 3000u64;
        assert_eq!(
            log.since(0),
            Since::default(),
            "nothing yet, nothing missed"
        );
        for n in 1..=5 {
            assert_eq!(log.push(ev(n)), base + n);
        }
        let s = log.since(base + 2);
        assert_eq!(
            s.records.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![base + 3, base + 4, base + 5]
        );
        assert_eq!(s.missed, None);
        assert!(log.since(base + 5).records.is_empty());
        assert!(
            log.since(base + 99).records.is_empty(),
            "an index from the future"
        );
        // From the start of this incarnation (or an older one): everything, nothing missed.
        assert_eq!(log.since(0).records.len(), 5);
        assert_eq!(log.since(0).missed, None);
        // From the previous incarnation: what happened since is unknown, and said so.
        assert_eq!(log.since(2007).missed, Some((2008, base)));
        assert_eq!(log.since(2007).records.len(), 5);
    }

    #[test]
    fn a_reader_behind_the_ring_is_told_the_gap() {
        let log = EventLog::new(1);
        let base = 1000u64;
        for n in 0..(RING as u64 + 10) {
            log.push(ev(n));
        }
        let s = log.since(base + 3);
        assert_eq!(s.missed, Some((base + 4, base + 10)));
        assert_eq!(s.records.len(), RING);
        assert_eq!(s.records[0].index, base + 11);
        // `0` asks for whatever is kept.
        assert_eq!(log.since(0).missed, None);
    }
}
