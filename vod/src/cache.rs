//! The shared block cache of one video (GloVE's collapsed cooperative cache), as pure logic.
//!
//! Blocks are fixed-size slices of the video (`Bytes`, immutable, shared by every viewer's
//! writes without copying). The cache knows where its viewers are (block granularity), which
//! blocks viewers are waiting for, and decides what the single origin fetcher reads next:
//! demanded blocks first, then sequential read-ahead up to the window ahead of the slowest
//! viewer. When a new block needs room, blocks behind the slowest viewer go first (oldest
//! first), so viewers who join later still find the start while the window allows; only if
//! none is behind, the block farthest ahead goes. The cache never holds more than the window.
//!
//! ## Layout
//! - [`BlockCache`]: the state; every method is synchronous and I/O free, so the distributor
//!   calls it under a short mutex and the tests drive it directly.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

/// The cache of one video.
#[derive(Debug)]
pub struct BlockCache {
    block_size: u64,
    size: u64,
    window: u64,
    blocks: BTreeMap<u64, Bytes>,
    bytes: u64,
    viewers: BTreeMap<u64, u32>,
    demand: BTreeSet<u64>,
    read_ahead: u64,
    readahead_blocks: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to wait for the origin.
    pub misses: u64,
    /// Blocks evicted.
    pub evictions: u64,
    /// Highest byte count ever held.
    pub peak_bytes: u64,
}

impl BlockCache {
    /// A cache for a video of `size` bytes. The window is rounded down to whole blocks but
    /// never below two blocks.
    pub fn new(block_size: u64, size: u64, window: u64) -> Self {
        let block_size = block_size.max(188);
        let window = (window / block_size).max(2) * block_size;
        Self {
            block_size,
            size,
            window,
            blocks: BTreeMap::new(),
            bytes: 0,
            viewers: BTreeMap::new(),
            demand: BTreeSet::new(),
            read_ahead: 0,
            readahead_blocks: u64::MAX,
            hits: 0,
            misses: 0,
            evictions: 0,
            peak_bytes: 0,
        }
    }

    /// Limits read-ahead to `bytes` beyond the fastest viewer (default: the whole window
    /// ahead of the slowest), and to at most a quarter of the window. A short read-ahead
    /// keeps the window for blocks behind the viewers, so that viewers joining later find them.
    pub fn with_readahead(mut self, bytes: u64) -> Self {
        let quarter = self.window / self.block_size / 4;
        self.readahead_blocks = bytes.div_ceil(self.block_size).min(quarter).max(1);
        self
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Window (cache budget) in bytes.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of blocks of the video.
    pub fn total_blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    /// Length of block `b` (the last one may be short).
    pub fn block_len(&self, b: u64) -> u64 {
        self.size
            .saturating_sub(b * self.block_size)
            .min(self.block_size)
    }

    /// Block `b` if cached, counting a hit or a miss.
    pub fn get(&mut self, b: u64) -> Option<Bytes> {
        let r = self.blocks.get(&b).cloned();
        if r.is_some() {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        r
    }

    /// True if block `b` is cached.
    pub fn contains(&self, b: u64) -> bool {
        self.blocks.contains_key(&b)
    }

    /// Records that a viewer waits for block `b`.
    pub fn want(&mut self, b: u64) {
        if b < self.total_blocks() && !self.blocks.contains_key(&b) {
            self.demand.insert(b);
        }
    }

    /// Stores a fetched block and evicts to stay within the window.
    pub fn insert(&mut self, b: u64, data: Bytes) {
        if b >= self.total_blocks() {
            return;
        }
        self.demand.remove(&b);
        if let Some(old) = self.blocks.insert(b, data.clone()) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += data.len() as u64;
        if b >= self.read_ahead {
            self.read_ahead = b + 1;
        }
        self.evict(Some(b));
        self.peak_bytes = self.peak_bytes.max(self.bytes);
    }

    /// The slowest viewer's block.
    pub fn slowest(&self) -> Option<u64> {
        self.viewers.keys().next().copied()
    }

    /// Viewer positions: `(block, viewers at that block)`.
    pub fn viewer_blocks(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.viewers.iter().map(|(b, n)| (*b, *n))
    }

    /// A viewer starts at block `b`.
    pub fn add_viewer(&mut self, b: u64) {
        *self.viewers.entry(b).or_default() += 1;
    }

    /// A viewer leaves block `b`.
    pub fn remove_viewer(&mut self, b: u64) {
        if let Some(n) = self.viewers.get_mut(&b) {
            *n -= 1;
            if *n == 0 {
                self.viewers.remove(&b);
            }
        }
    }

    /// Bytes held behind the slowest viewer (evictable first).
    fn behind_bytes(&self) -> u64 {
        match self.slowest() {
            Some(s) => self.blocks.range(..s).map(|(_, d)| d.len() as u64).sum(),
            None => 0,
        }
    }

    /// A viewer moves from block `from` to block `to`. Returns true when the slowest or the
    /// fastest viewer's block changed: only then can the fetcher have new work (room behind
    /// the slowest, read-ahead beyond the fastest), so only then is it worth waking.
    pub fn move_viewer(&mut self, from: u64, to: u64) -> bool {
        let before = self.span();
        *self.viewers.entry(to).or_default() += 1;
        self.remove_viewer(from);
        self.span() != before
    }

    /// The slowest and fastest viewers' blocks.
    fn span(&self) -> (Option<u64>, Option<u64>) {
        (
            self.viewers.keys().next().copied(),
            self.viewers.keys().next_back().copied(),
        )
    }

    /// The next block the origin fetcher should read, or None to wait.
    pub fn next_fetch(&mut self) -> Option<u64> {
        while let Some(&d) = self.demand.iter().next() {
            if self.blocks.contains_key(&d) {
                self.demand.remove(&d);
            } else {
                return Some(d);
            }
        }
        let total = self.total_blocks();
        let window_blocks = self.window / self.block_size;
        // With viewers: the first hole at or after the slowest one, within the window ahead
        // of it. Without: continue the sequential prefill.
        let (mut b, limit) = match self.slowest() {
            Some(s) => {
                let fastest = self.viewers.keys().next_back().copied().unwrap_or(s);
                (
                    s,
                    (s + window_blocks).min(fastest.saturating_add(self.readahead_blocks)),
                )
            }
            None => (self.read_ahead, u64::MAX),
        };
        for (&k, _) in self.blocks.range(b..) {
            if k != b || b >= limit {
                break;
            }
            b += 1;
        }
        if b < total
            && b < limit
            && self.bytes - self.behind_bytes() + self.block_len(b) <= self.window
        {
            Some(b)
        } else {
            None
        }
    }

    /// While over the window: the oldest block behind the slowest viewer, else (no viewer)
    /// the oldest block, else the block farthest ahead; never `keep`, the block just inserted.
    fn evict(&mut self, keep: Option<u64>) {
        while self.bytes > self.window && self.blocks.len() > 1 {
            let oldest = self.blocks.keys().copied().find(|b| Some(*b) != keep);
            let victim = match self.slowest() {
                None => oldest,
                Some(s) if oldest.is_some_and(|o| o < s) => oldest,
                Some(_) => self.blocks.keys().rev().copied().find(|b| Some(*b) != keep),
            };
            match victim {
                Some(b) => self.drop_block(b),
                None => break,
            }
        }
    }

    fn drop_block(&mut self, b: u64) {
        if let Some(old) = self.blocks.remove(&b) {
            self.bytes -= old.len() as u64;
            self.evictions += 1;
        }
    }

    /// All cached blocks (cheap: reference-counted).
    pub fn snapshot(&self) -> Vec<(u64, Bytes)> {
        self.blocks.iter().map(|(b, d)| (*b, d.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn read_ahead_fills_window_then_waits() {
        let mut c = BlockCache::new(1000, 100_000, 5000);
        let mut fetched = vec![];
        while let Some(b) = c.next_fetch() {
            fetched.push(b);
            c.insert(b, block(1000));
        }
        assert_eq!(fetched, vec![0, 1, 2, 3, 4]);
        assert_eq!(c.bytes(), 5000);
    }

    #[test]
    fn demand_comes_first_and_eviction_follows_slowest_viewer() {
        let mut c = BlockCache::new(1000, 100_000, 4000);
        c.add_viewer(0);
        for b in 0..4 {
            assert_eq!(c.next_fetch(), Some(b));
            c.insert(b, block(1000));
        }
        assert_eq!(c.next_fetch(), None, "window full");
        // A viewer jumps to block 50: it is fetched first even though the window is full.
        c.add_viewer(50);
        c.want(50);
        assert_eq!(c.next_fetch(), Some(50));
        c.insert(50, block(1000));
        assert!(c.bytes() <= c.window());
        assert!(c.contains(50));
        // The slow viewer moves on: read-ahead resumes and the blocks behind it go first.
        assert!(c.move_viewer(0, 2), "the slowest viewer moved");
        assert!(c.contains(0), "kept while the window allows");
        let next = c.next_fetch().unwrap();
        c.insert(next, block(1000));
        assert!(!c.contains(0) && c.contains(2) && c.contains(next));
        assert!(c.bytes() <= c.window());
    }

    #[test]
    fn bytes_never_exceed_window_under_random_use() {
        let mut c = BlockCache::new(1000, 1_000_000, 20_000);
        let mut viewers: Vec<u64> = (0..8).map(|i| i * 37).collect();
        for &v in &viewers {
            c.add_viewer(v);
        }
        for step in 0..5_000u64 {
            let i = (step * 7 % 8) as usize;
            let b = viewers[i];
            if c.get(b).is_none() {
                c.want(b);
            } else {
                let nb = (b + 1) % 1000;
                c.move_viewer(b, nb);
                viewers[i] = nb;
            }
            if let Some(f) = c.next_fetch() {
                c.insert(f, block(1000));
            }
            assert!(
                c.bytes() <= c.window(),
                "step {step}: {} > {}",
                c.bytes(),
                c.window()
            );
        }
        assert!(c.hits > 0 && c.evictions > 0);
    }

    #[test]
    fn short_readahead_keeps_blocks_for_late_joiners() {
        let mut c = BlockCache::new(1000, 100_000, 10_000).with_readahead(2000);
        c.add_viewer(0);
        let mut fetched = vec![];
        for step in 0..6 {
            while let Some(b) = c.next_fetch() {
                fetched.push(b);
                c.insert(b, block(1000));
            }
            c.move_viewer(step, step + 1);
        }
        assert_eq!(fetched, (0..=6).collect::<Vec<_>>());
        // A viewer joining at the start still finds block 0.
        assert!(c.contains(0));
    }

    #[test]
    fn moves_inside_the_span_do_not_need_the_fetcher() {
        let mut c = BlockCache::new(1000, 100_000, 10_000);
        for b in [2, 5, 9] {
            c.add_viewer(b);
        }
        assert!(!c.move_viewer(5, 6), "between slowest and fastest");
        assert!(c.move_viewer(9, 10), "fastest moved: read-ahead may go on");
        assert!(c.move_viewer(2, 3), "slowest moved: room behind it");
        c.add_viewer(3);
        assert!(
            !c.move_viewer(3, 4),
            "another viewer is still at the slowest block"
        );
    }

    #[test]
    fn short_last_block_and_tiny_window() {
        let c = BlockCache::new(1000, 2500, 10);
        assert_eq!(c.total_blocks(), 3);
        assert_eq!(c.block_len(2), 500);
        assert_eq!(c.window(), 2000);
    }
}
