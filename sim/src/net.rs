//! The simulated network: who can reach whom (partitions as sides, one-way cuts), datagram
//! loss, and the seeded delays that reorder messages.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;

/// Links and loss. Every datagram and every request or answer between nodes asks it.
#[derive(Debug, Clone)]
pub struct Network {
    /// The side of the partition each node is on (all 0: no partition).
    side: Vec<usize>,
    /// One-way cuts `(from, to)`.
    cuts: BTreeSet<(usize, usize)>,
    /// Datagram loss, percent.
    loss_pct: u32,
}

/// One-way delay of a datagram or a TCP segment on the LAN.
const MIN_DELAY_US: u64 = 100;
const MAX_DELAY_US: u64 = 3_000;
/// A TCP segment lost is sent again after about this long.
const RETRANSMIT: Duration = Duration::from_millis(200);

impl Network {
    /// A healed network of `n` nodes without loss.
    pub fn new(n: usize) -> Self {
        Network {
            side: vec![0; n],
            cuts: BTreeSet::new(),
            loss_pct: 0,
        }
    }

    /// Whether anything `from` sends reaches `to` now.
    pub fn reachable(&self, from: usize, to: usize) -> bool {
        from == to || (self.side[from] == self.side[to] && !self.cuts.contains(&(from, to)))
    }

    /// Splits the nodes: each listed group is a side, the unlisted nodes one more.
    pub fn partition(&mut self, sides: &[Vec<usize>]) {
        let rest = sides.len() + 1;
        for s in self.side.iter_mut() {
            *s = rest;
        }
        for (k, group) in sides.iter().enumerate() {
            for &i in group {
                if i < self.side.len() {
                    self.side[i] = k + 1;
                }
            }
        }
    }

    /// Cuts `from → to`.
    pub fn cut(&mut self, from: usize, to: usize) {
        self.cuts.insert((from, to));
    }

    /// No partition, no cut.
    pub fn heal(&mut self) {
        self.side.iter_mut().for_each(|s| *s = 0);
        self.cuts.clear();
    }

    /// Sets the loss.
    pub fn set_loss(&mut self, pct: u32) {
        self.loss_pct = pct.min(100);
    }

    /// The loss, percent.
    pub fn loss(&self) -> u32 {
        self.loss_pct
    }

    /// The delay of one datagram, or `None` when it is lost.
    pub fn datagram<R: Rng>(&self, rng: &mut R) -> Option<Duration> {
        if rng.random_range(0..100) < self.loss_pct {
            return None;
        }
        Some(Duration::from_micros(
            rng.random_range(MIN_DELAY_US..MAX_DELAY_US),
        ))
    }

    /// The delay of one message over TCP: never lost while the link holds, but each loss
    /// costs a retransmission.
    pub fn segment<R: Rng>(&self, rng: &mut R) -> Duration {
        let mut d = Duration::from_micros(rng.random_range(MIN_DELAY_US..MAX_DELAY_US));
        let mut tries = 0;
        while tries < 5 && rng.random_range(0..100) < self.loss_pct {
            d += RETRANSMIT * (1 << tries);
            tries += 1;
        }
        d
    }
}
