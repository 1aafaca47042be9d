//! The failure detector: a pure state machine that turns "heard from node X at time t" and
//! the passing of time into Up/Down events.
//!
//! We use a fixed timeout ("k missed intervals") rather than phi-accrual: on a LAN with a
//! 100 ms heartbeat the arrival jitter is tiny next to the interval, so phi adds tuning knobs
//! without buying faster detection, and a fixed bound is what the failover goal (p99 ≤ 1 s)
//! is reasoned against. A node is Down once nothing was heard from it for more than
//! [`DetectorConfig::dead_after`] (default 400 ms = 4 missed 100 ms heartbeats). With the
//! shell ticking every 10-20 ms a crash is therefore reported within ~0.42 s, inside the
//! 0.5 s goal, and a single lost datagram never causes a false Down.
//!
//! Time is the monotonic [`tokio::time::Instant`] passed in by the caller: wall-clock jumps
//! cannot affect it, and paused tokio time drives it in tests.
//!
//! ## Layout
//! - [`DetectorConfig`] — timings.
//! - [`Detector`] — `heard`, `tick`, queries; emits [`DetectorEvent`]s.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use smart_proto::NodeId;

/// Failure detector timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Heartbeat interval of every node (used to derive `dead_after` in [`Self::with_interval`]).
    pub interval: Duration,
    /// Silence after which a node is declared Down.
    pub dead_after: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self::with_interval(Duration::from_millis(100), 4)
    }
}

impl DetectorConfig {
    /// `dead_after = missed × interval`.
    pub fn with_interval(interval: Duration, missed: u32) -> Self {
        Self {
            interval,
            dead_after: interval * missed.max(1),
        }
    }
}

/// A change of a node's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectorEvent {
    /// First heard, or heard again after being Down.
    Up(NodeId),
    /// Silent for longer than `dead_after`.
    Down(NodeId),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last_heard: Instant,
    alive: bool,
}

/// The failure detector. Nodes are kept after they go Down (so a status view can show them),
/// until [`Detector::forget`].
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
    nodes: BTreeMap<NodeId, Entry>,
}

impl Detector {
    /// A detector with no known nodes.
    pub fn new(cfg: DetectorConfig) -> Self {
        Self {
            cfg,
            nodes: BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Records a heartbeat from `node`; returns `Up` if it was unknown or Down.
    pub fn heard(&mut self, node: NodeId, now: Instant) -> Option<DetectorEvent> {
        match self.nodes.get_mut(&node) {
            Some(e) => {
                // Out-of-order calls never move time backwards.
                e.last_heard = e.last_heard.max(now);
                if e.alive {
                    None
                } else {
                    e.alive = true;
                    Some(DetectorEvent::Up(node))
                }
            }
            None => {
                self.nodes.insert(
                    node,
                    Entry {
                        last_heard: now,
                        alive: true,
                    },
                );
                Some(DetectorEvent::Up(node))
            }
        }
    }

    /// Declares Down every alive node silent for more than `dead_after`, in node id order.
    pub fn tick(&mut self, now: Instant) -> Vec<DetectorEvent> {
        let mut out = Vec::new();
        for (id, e) in &mut self.nodes {
            if e.alive && now.saturating_duration_since(e.last_heard) > self.cfg.dead_after {
                e.alive = false;
                out.push(DetectorEvent::Down(*id));
            }
        }
        out
    }

    /// After this node itself could not run for a while (paused process, stalled machine),
    /// the silence of the others says nothing about them: give every alive node a fresh
    /// `dead_after` from `now` instead of declaring them all Down.
    pub fn grace_all(&mut self, now: Instant) {
        for e in self.nodes.values_mut() {
            if e.alive {
                e.last_heard = e.last_heard.max(now);
            }
        }
    }

    /// Declares `node` Down now (it said it leaves); returns `Down` if it was alive.
    pub fn mark_down(&mut self, node: NodeId) -> Option<DetectorEvent> {
        let e = self.nodes.get_mut(&node)?;
        std::mem::replace(&mut e.alive, false).then_some(DetectorEvent::Down(node))
    }

    /// Whether `node` is known and alive.
    pub fn is_alive(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|e| e.alive)
    }

    /// When `node` was last heard.
    pub fn last_heard(&self, node: NodeId) -> Option<Instant> {
        self.nodes.get(&node).map(|e| e.last_heard)
    }

    /// Removes a node.
    pub fn forget(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_detect_within_half_a_second() {
        let c = DetectorConfig::default();
        assert_eq!(c.interval, ms(100));
        assert_eq!(c.dead_after, ms(400));
    }

    #[test]
    fn up_then_down_then_up() {
        let t0 = Instant::now();
        let mut d = Detector::new(DetectorConfig::default());
        assert_eq!(d.heard(NodeId(1), t0), Some(DetectorEvent::Up(NodeId(1))));
        assert_eq!(d.heard(NodeId(1), t0 + ms(100)), None);
        // 400 ms of silence is not yet "more than dead_after".
        assert_eq!(d.tick(t0 + ms(500)), vec![]);
        assert_eq!(d.tick(t0 + ms(501)), vec![DetectorEvent::Down(NodeId(1))]);
        // Reported once.
        assert_eq!(d.tick(t0 + ms(900)), vec![]);
        assert!(!d.is_alive(NodeId(1)));
        assert_eq!(
            d.heard(NodeId(1), t0 + ms(950)),
            Some(DetectorEvent::Up(NodeId(1)))
        );
        assert!(d.is_alive(NodeId(1)));
    }

    #[test]
    fn heartbeats_every_interval_with_one_loss_keep_alive() {
        let t0 = Instant::now();
        let mut d = Detector::new(DetectorConfig::default());
        let mut events = vec![];
        for i in 0..50u64 {
            let now = t0 + ms(i * 100);
            // Lose every third heartbeat.
            if i % 3 != 2 {
                events.extend(d.heard(NodeId(7), now));
            }
            for j in 0..10 {
                events.extend(d.tick(now + ms(j * 10)));
            }
        }
        assert_eq!(events, vec![DetectorEvent::Up(NodeId(7))]);
    }

    #[test]
    fn grace_after_local_pause() {
        let t0 = Instant::now();
        let mut d = Detector::new(DetectorConfig::default());
        d.heard(NodeId(1), t0);
        d.heard(NodeId(2), t0);
        d.grace_all(t0 + ms(3000));
        assert_eq!(d.tick(t0 + ms(3100)), vec![]);
        assert_eq!(
            d.tick(t0 + ms(3401)),
            vec![
                DetectorEvent::Down(NodeId(1)),
                DetectorEvent::Down(NodeId(2))
            ]
        );
    }
}
