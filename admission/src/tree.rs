//! The placement index: a tournament tree over the nodes' free memory (thesis §5.6,
//! docs/DESIGN.md §4), extended with per-subtree maxima of the CPU and network headroom.
//!
//! The thesis keeps a loser tree ordered by free memory so the worst-fit node is found in
//! O(1) and an update costs O(log n), but falls back to O(n) when the best candidates fail
//! the CPU or network test. Here every internal node also stores the largest CPU and network
//! headroom below it, and the estimators give a lower bound on what a newcomer adds to any
//! aggregate; a subtree whose headroom maxima are below that bound (or whose memory maximum
//! is below the newcomer's working set) is skipped whole. The full per-node test is a closure
//! supplied by the engine, so the index only ever prunes: it returns exactly the node a
//! linear scan with the same policy would (the property tests check this).
//!
//! How much it prunes depends on the estimator's bound: the mean for `gaussian`, `chernoff`
//! and `mean`, the peak for `peak`, but only the newcomer's smallest sample for `empirical`
//! (the only sound bound on a percentile of sums). So with `empirical`, when the nodes with
//! the most free memory are full in CPU or network, a worst-fit search still tests them one
//! by one: the thesis's O(n) worst case remains for that estimator.
//!
//! ## Layout
//! - [`Policy`]: worst-fit (thesis default), first-fit, best-fit.
//! - [`Leaf`]: what the index knows of one node slot.
//! - [`Need`]: what a newcomer needs (memory, and the lower bounds of CPU and network).
//! - [`PlacementIndex`]: the tree; [`PlacementIndex::search`] and the reference
//!   [`PlacementIndex::linear`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

/// How to choose among the nodes that fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The node with the most free memory (thesis default; spreads load).
    WorstFit,
    /// The lowest-numbered node (fast, packs the first nodes).
    FirstFit,
    /// The node with the least free memory that still fits (packs tightest).
    BestFit,
}

impl Policy {
    /// All policies in display order.
    pub const ALL: [Policy; 3] = [Policy::WorstFit, Policy::FirstFit, Policy::BestFit];

    /// The name used in results.
    pub fn name(self) -> &'static str {
        match self {
            Policy::WorstFit => "worst-fit",
            Policy::FirstFit => "first-fit",
            Policy::BestFit => "best-fit",
        }
    }
}

/// What the index knows of one node slot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Leaf {
    /// False for empty or removed slots: they never match.
    pub alive: bool,
    /// Free memory in bytes.
    pub free_mem: u64,
    /// CPU and network headroom (`VR × capacity − level`), in resource units.
    pub head: [f64; 2],
}

impl Leaf {
    /// A slot that never matches.
    pub const DEAD: Leaf = Leaf {
        alive: false,
        free_mem: 0,
        head: [f64::NEG_INFINITY; 2],
    };
}

/// What a newcomer needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Need {
    /// Memory in bytes (exact: memory is never overbooked).
    pub mem: u64,
    /// Lower bounds of the CPU and network level increase.
    pub lb: [f64; 2],
}

/// The tournament tree. Slot `i` is leaf `cap + i` of an implicit complete binary tree.
#[derive(Clone, Debug, Default)]
pub struct PlacementIndex {
    cap: usize,
    leaves: Vec<Leaf>,
    mem_max: Vec<u64>,
    mem_min: Vec<u64>,
    head_max: [Vec<f64>; 2],
    heap: BinaryHeap<(u64, Reverse<usize>, usize)>,
    stack: Vec<usize>,
}

/// Relative slack when comparing a lower bound against a headroom computed with floats, so
/// that rounding can never prune a node that the exact test would accept.
fn may_fit(lb: f64, head: f64) -> bool {
    lb <= head + 1e-9 * (1.0 + lb.abs().max(head.abs()))
}

impl PlacementIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of slots (alive or not).
    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// True when there are no slots.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The leaf of a slot.
    pub fn leaf(&self, slot: usize) -> Leaf {
        self.leaves.get(slot).copied().unwrap_or(Leaf::DEAD)
    }

    /// Sets a slot's leaf and updates its ancestors: O(log n) (amortised O(1) extra when the
    /// tree doubles).
    pub fn set(&mut self, slot: usize, leaf: Leaf) {
        if slot >= self.leaves.len() {
            self.leaves.resize(slot + 1, Leaf::DEAD);
        }
        self.leaves[slot] = leaf;
        if slot >= self.cap {
            self.rebuild();
            return;
        }
        let mut i = self.cap + slot;
        self.write_leaf(i, leaf);
        while i > 1 {
            i /= 2;
            self.pull(i);
        }
    }

    fn write_leaf(&mut self, i: usize, leaf: Leaf) {
        if leaf.alive {
            self.mem_max[i] = leaf.free_mem;
            self.mem_min[i] = leaf.free_mem;
            self.head_max[0][i] = leaf.head[0];
            self.head_max[1][i] = leaf.head[1];
        } else {
            self.mem_max[i] = 0;
            self.mem_min[i] = u64::MAX;
            self.head_max[0][i] = f64::NEG_INFINITY;
            self.head_max[1][i] = f64::NEG_INFINITY;
        }
    }

    fn pull(&mut self, i: usize) {
        let (l, r) = (2 * i, 2 * i + 1);
        self.mem_max[i] = self.mem_max[l].max(self.mem_max[r]);
        self.mem_min[i] = self.mem_min[l].min(self.mem_min[r]);
        for h in &mut self.head_max {
            h[i] = h[l].max(h[r]);
        }
    }

    fn rebuild(&mut self) {
        self.cap = self.leaves.len().next_power_of_two().max(1);
        let n = 2 * self.cap;
        self.mem_max = vec![0; n];
        self.mem_min = vec![u64::MAX; n];
        self.head_max = [vec![f64::NEG_INFINITY; n], vec![f64::NEG_INFINITY; n]];
        for slot in 0..self.leaves.len() {
            self.write_leaf(self.cap + slot, self.leaves[slot]);
        }
        for i in (1..self.cap).rev() {
            self.pull(i);
        }
    }

    fn pruned(&self, i: usize, need: &Need) -> bool {
        self.mem_max[i] < need.mem
            || !may_fit(need.lb[0], self.head_max[0][i])
            || !may_fit(need.lb[1], self.head_max[1][i])
    }

    /// First slot covered by tree node `i`.
    fn start(&self, i: usize) -> usize {
        let depth = usize::BITS - 1 - i.leading_zeros();
        let leaf_depth = self.cap.trailing_zeros();
        (i << (leaf_depth - depth)) - self.cap
    }

    /// Finds the slot `policy` picks among those that are alive, have `need.mem` free and
    /// pass `fits` (the engine's full test). `fits` is only called on candidates that the
    /// subtree maxima cannot rule out.
    pub fn search(
        &mut self,
        policy: Policy,
        need: &Need,
        fits: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        self.search_bounded(policy, need, usize::MAX, fits).0
    }

    /// [`search`](Self::search) that calls `fits` at most `max_tests` times and then gives
    /// up (returning the best slot found so far, for best-fit). Also returns the number of
    /// calls made. Migrate the Smallest uses it to bound a decision's cost.
    pub fn search_bounded(
        &mut self,
        policy: Policy,
        need: &Need,
        max_tests: usize,
        mut fits: impl FnMut(usize) -> bool,
    ) -> (Option<usize>, usize) {
        let mut tests = 0usize;
        if self.leaves.is_empty() || self.pruned(1, need) {
            return (None, 0);
        }
        match policy {
            Policy::WorstFit => {
                let mut heap = std::mem::take(&mut self.heap);
                heap.clear();
                heap.push((self.mem_max[1], Reverse(0), 1));
                let mut found = None;
                while let Some((_, _, i)) = heap.pop() {
                    if i >= self.cap {
                        let slot = i - self.cap;
                        if !self.leaves[slot].alive {
                            continue;
                        }
                        if tests == max_tests {
                            break;
                        }
                        tests += 1;
                        if fits(slot) {
                            found = Some(slot);
                            break;
                        }
                        continue;
                    }
                    for c in [2 * i, 2 * i + 1] {
                        if !self.pruned(c, need) {
                            heap.push((self.mem_max[c], Reverse(self.start(c)), c));
                        }
                    }
                }
                self.heap = heap;
                (found, tests)
            }
            Policy::FirstFit | Policy::BestFit => {
                let mut stack = std::mem::take(&mut self.stack);
                stack.clear();
                stack.push(1);
                let mut best: Option<(u64, usize)> = None;
                while let Some(i) = stack.pop() {
                    if self.pruned(i, need) {
                        continue;
                    }
                    if let Some((b, _)) = best {
                        // Leaves are visited in slot order, so an equal free memory further
                        // right can never win a tie.
                        if self.mem_min[i] >= b {
                            continue;
                        }
                    }
                    if i >= self.cap {
                        let slot = i - self.cap;
                        let leaf = self.leaves[slot];
                        if !leaf.alive {
                            continue;
                        }
                        if tests == max_tests {
                            break;
                        }
                        tests += 1;
                        if fits(slot) {
                            best = Some((leaf.free_mem, slot));
                            if policy == Policy::FirstFit {
                                break;
                            }
                        }
                        continue;
                    }
                    stack.push(2 * i + 1);
                    stack.push(2 * i);
                }
                self.stack = stack;
                (best.map(|(_, s)| s), tests)
            }
        }
    }

    /// Slots in decreasing free memory (ties by slot), alive ones passing `keep`, at most
    /// `limit` of them. Used by Migrate the Smallest to pick the nodes to make room on.
    pub fn top_by_free_mem(
        &mut self,
        limit: usize,
        mut keep: impl FnMut(usize) -> bool,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        if self.leaves.is_empty() || limit == 0 {
            return out;
        }
        let mut heap = std::mem::take(&mut self.heap);
        heap.clear();
        heap.push((self.mem_max[1], Reverse(0), 1));
        while let Some((_, _, i)) = heap.pop() {
            if i >= self.cap {
                let slot = i - self.cap;
                if self.leaves[slot].alive && keep(slot) {
                    out.push(slot);
                    if out.len() >= limit {
                        break;
                    }
                }
                continue;
            }
            for c in [2 * i, 2 * i + 1] {
                if self.head_max[0][c] > f64::NEG_INFINITY {
                    heap.push((self.mem_max[c], Reverse(self.start(c)), c));
                }
            }
        }
        self.heap = heap;
        out
    }

    /// The reference: the same choice as [`search`](Self::search) by scanning every slot.
    pub fn linear(
        &self,
        policy: Policy,
        need: &Need,
        mut fits: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (slot, leaf) in self.leaves.iter().enumerate() {
            if !leaf.alive || leaf.free_mem < need.mem || !fits(slot) {
                continue;
            }
            let better = match (policy, best) {
                (_, None) => true,
                (Policy::FirstFit, Some(_)) => false,
                (Policy::WorstFit, Some((b, _))) => leaf.free_mem > b,
                (Policy::BestFit, Some((b, _))) => leaf.free_mem < b,
            };
            if better {
                best = Some((leaf.free_mem, slot));
            }
        }
        best.map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(free: u64, cpu: f64, net: f64) -> Leaf {
        Leaf {
            alive: true,
            free_mem: free,
            head: [cpu, net],
        }
    }

    #[test]
    fn policies_pick_the_expected_slot() {
        let mut t = PlacementIndex::new();
        t.set(0, leaf(10, 5.0, 5.0));
        t.set(1, leaf(30, 0.5, 5.0));
        t.set(2, leaf(20, 5.0, 5.0));
        t.set(3, leaf(15, 5.0, 5.0));
        let need = Need {
            mem: 12,
            lb: [1.0, 1.0],
        };
        // Slot 1 has the most memory but its CPU headroom maximum rules it out.
        let fits = |s: usize| s != 1;
        assert_eq!(t.search(Policy::WorstFit, &need, fits), Some(2));
        assert_eq!(t.search(Policy::FirstFit, &need, fits), Some(2));
        assert_eq!(t.search(Policy::BestFit, &need, fits), Some(3));
        t.set(2, Leaf::DEAD);
        assert_eq!(t.search(Policy::WorstFit, &need, fits), Some(3));
        assert_eq!(t.top_by_free_mem(2, |_| true), vec![1, 3]);
    }

    #[test]
    fn bounded_search_stops_after_its_budget() {
        let mut t = PlacementIndex::new();
        for s in 0..8 {
            t.set(s, leaf(100 - s as u64, 1.0, 1.0));
        }
        let need = Need {
            mem: 1,
            lb: [0.0, 0.0],
        };
        // Only slot 5 fits; worst-fit tries 0, 1, 2, ... in order of free memory.
        let fits = |s: usize| s == 5;
        assert_eq!(
            t.search_bounded(Policy::WorstFit, &need, 3, fits),
            (None, 3)
        );
        assert_eq!(
            t.search_bounded(Policy::WorstFit, &need, 6, fits),
            (Some(5), 6)
        );
        assert_eq!(
            t.search_bounded(Policy::FirstFit, &need, 2, fits),
            (None, 2)
        );
    }

    #[test]
    fn pruning_skips_subtrees_without_calling_the_test() {
        let mut t = PlacementIndex::new();
        for s in 0..64 {
            t.set(s, leaf(100, if s == 63 { 10.0 } else { 0.0 }, 10.0));
        }
        let mut calls = 0;
        let got = t.search(
            Policy::WorstFit,
            &Need {
                mem: 1,
                lb: [5.0, 0.0],
            },
            |_| {
                calls += 1;
                true
            },
        );
        assert_eq!(got, Some(63));
        assert_eq!(calls, 1);
    }
}
