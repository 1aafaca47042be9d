//! Estimators of aggregate usage: how much of a resource a set of services will use with a
//! given confidence (thesis §4.1.2 eq. 4.1, docs/DESIGN.md §3).
//!
//! Every estimator answers one question: given the services already summed into an
//! aggregate, what is the *level* `q` such that `P(U < q')` holds with confidence `C` for any
//! `q' > q`? The engine admits a load on a node when the level of the node's aggregate plus
//! the load stays strictly below `VR × capacity`, and uses the same estimator over the
//! whole cluster for the fast reject of eq. 4.1.
//!
//! All aggregates are integers (samples in fixed units, see [`Resource::unit`]), so adding
//! and then removing a component restores the aggregate bit for bit: the engine can run for
//! days of simulated time without drift, and the tests compare aggregates for equality.
//!
//! ## Layout
//! - [`Resource`]: the two time-shared resources (CPU, network) and their fixed units.
//! - [`Estimator`]: the trait (per-component item, aggregate, incremental add/remove, level).
//! - [`Empirical`]: time-aligned sums of sample series and their percentile (the thesis).
//! - [`Gaussian`]: `Σμ + z_C·√Σσ²`, O(1) per operation.
//! - [`Chernoff`]: sums of log moment generating functions on a grid of θ: a safe bound.
//! - [`Peak`] and [`Mean`]: the baselines (a reservation scheduler, and no margin at all).
//! - [`EstimatorKind`]: the names used on the command line and in results.
//! - [`normal_quantile`]: the inverse standard normal CDF used by [`Gaussian`].

use std::fmt::Debug;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A time-shared resource that the estimators overbook (memory never is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Resource {
    /// Processor time.
    Cpu,
    /// Network throughput.
    Net,
}

impl Resource {
    /// Both resources, in index order.
    pub const ALL: [Resource; 2] = [Resource::Cpu, Resource::Net];

    /// Index into per-resource arrays.
    pub fn idx(self) -> usize {
        match self {
            Resource::Cpu => 0,
            Resource::Net => 1,
        }
    }

    /// Size of one integer unit in the profile's absolute unit: a micro-core for CPU,
    /// one kbit/s for network. Fine enough that rounding is far below any decision margin.
    pub fn unit(self) -> f64 {
        match self {
            Resource::Cpu => 1e-6,
            Resource::Net => 1e3,
        }
    }

    /// Converts an absolute value (cores, bit/s) to integer units. Negative, NaN and
    /// absurdly large values are clamped so that sums can never overflow.
    pub fn to_units(self, v: f64) -> u64 {
        if v.is_nan() || v <= 0.0 {
            return 0;
        }
        (v / self.unit()).round().min(MAX_SAMPLE as f64) as u64
    }

    /// Converts integer units back to the absolute unit.
    pub fn from_units(self, u: f64) -> f64 {
        u * self.unit()
    }

    /// Typical node capacity in units, used to place the Chernoff θ grid.
    fn scale(self) -> f64 {
        match self {
            Resource::Cpu => 1e6,
            Resource::Net => 1e5,
        }
    }
}

/// Largest sample accepted, in units (2^40: a million cores or an exabit/s), so that sums of
/// millions of components stay far from `u64::MAX`.
pub const MAX_SAMPLE: u64 = 1 << 40;

/// Index of the order statistic that the percentile method reads: the smallest `k` (1-based)
/// with `k / n ≥ conf`. The tiny slack absorbs binary rounding of products like `0.95 × 20`.
pub fn rank(conf: f64, n: usize) -> usize {
    let k = (conf * n as f64 - 1e-9).ceil();
    (k.max(1.0) as usize).min(n.max(1))
}

/// One estimator of aggregate usage. `Item` is what one component (a service's base series
/// or one client's increment) contributes, computed once per profile; `Agg` is the running
/// aggregate of a node or of the whole cluster for one resource.
pub trait Estimator: Clone + Debug + Send + Sync + 'static {
    /// Per-component precomputed data.
    type Item: Clone + Debug + Send + Sync;
    /// Aggregate of many components for one resource.
    type Agg: Clone + Debug + PartialEq + Send + Sync;

    /// Name used in results (`empirical`, `gaussian`, ...).
    fn name(&self) -> &'static str;
    /// Precomputes a component from its samples (all of the engine's grid length).
    fn item(&self, resource: Resource, samples: &Arc<[u64]>) -> Self::Item;
    /// An empty aggregate for `grid` intervals.
    fn empty(&self, resource: Resource, grid: usize) -> Self::Agg;
    /// Adds a component shifted by `phase` intervals.
    fn add(&self, agg: &mut Self::Agg, item: &Self::Item, phase: usize);
    /// Removes a component previously added with the same phase; exact inverse of `add`.
    fn remove(&self, agg: &mut Self::Agg, item: &Self::Item, phase: usize);
    /// The level `q` with `P(U ≤ q) ≥ conf` by this estimator's model.
    fn level(&self, agg: &Self::Agg, conf: f64, scratch: &mut Vec<u64>) -> f64;
    /// The level of `agg` plus `extra` components, without changing `agg`.
    fn level_with(
        &self,
        agg: &Self::Agg,
        extra: &[(Self::Item, usize)],
        conf: f64,
        scratch: &mut Vec<u64>,
    ) -> f64 {
        let mut a = agg.clone();
        for (item, phase) in extra {
            self.add(&mut a, item, *phase);
        }
        self.level(&a, conf, scratch)
    }
    /// Adds (or with `sub`, removes) a whole aggregate: aggregates are sums, so a service's
    /// own aggregate moves between nodes in one step whatever its number of clients.
    fn merge(&self, into: &mut Self::Agg, from: &Self::Agg, sub: bool);
    /// The level of `agg` plus the aggregate `extra`, without changing `agg`.
    fn level_merged(
        &self,
        agg: &Self::Agg,
        extra: &Self::Agg,
        conf: f64,
        scratch: &mut Vec<u64>,
    ) -> f64 {
        let mut a = agg.clone();
        self.merge(&mut a, extra, false);
        self.level(&a, conf, scratch)
    }
    /// A lower bound on how much adding `item` raises any aggregate's level, so the placement
    /// index can skip whole subtrees whose headroom is below it.
    fn lower_bound(&self, item: &Self::Item) -> f64;
}

/// Adds `src` shifted by `phase` into `dst` (`dst[t] += src[(t + phase) % n]`) with wrapping
/// arithmetic, which makes `remove` its exact inverse whatever the values.
fn add_shifted(dst: &mut [u64], src: &[u64], phase: usize, sub: bool) {
    let n = dst.len().min(src.len());
    if n == 0 {
        return;
    }
    let p = phase % n;
    let (head, tail) = dst[..n].split_at_mut(n - p);
    let op = |d: &mut u64, s: u64| {
        *d = if sub {
            d.wrapping_sub(s)
        } else {
            d.wrapping_add(s)
        }
    };
    for (d, s) in head.iter_mut().zip(&src[p..n]) {
        op(d, *s);
    }
    for (d, s) in tail.iter_mut().zip(&src[..p]) {
        op(d, *s);
    }
}

// ---------------------------------------------------------------------------------------
// Empirical
// ---------------------------------------------------------------------------------------

/// The thesis's method: sum the sample series interval by interval (keeping whatever
/// correlation their time alignment carries) and read the `C` percentile of the sums.
#[derive(Clone, Copy, Debug, Default)]
pub struct Empirical;

/// A component for [`Empirical`]: its series and its minimum (the pruning bound).
#[derive(Clone, Debug)]
pub struct EmpiricalItem {
    values: Arc<[u64]>,
    min: u64,
}

impl Estimator for Empirical {
    type Item = EmpiricalItem;
    type Agg = Vec<u64>;

    fn name(&self) -> &'static str {
        "empirical"
    }
    fn item(&self, _resource: Resource, samples: &Arc<[u64]>) -> EmpiricalItem {
        EmpiricalItem {
            values: samples.clone(),
            min: samples.iter().copied().min().unwrap_or(0),
        }
    }
    fn empty(&self, _resource: Resource, grid: usize) -> Vec<u64> {
        vec![0; grid]
    }
    fn add(&self, agg: &mut Vec<u64>, item: &EmpiricalItem, phase: usize) {
        add_shifted(agg, &item.values, phase, false);
    }
    fn remove(&self, agg: &mut Vec<u64>, item: &EmpiricalItem, phase: usize) {
        add_shifted(agg, &item.values, phase, true);
    }
    fn level(&self, agg: &Vec<u64>, conf: f64, scratch: &mut Vec<u64>) -> f64 {
        scratch.clear();
        scratch.extend_from_slice(agg);
        select(scratch, conf)
    }
    fn level_with(
        &self,
        agg: &Vec<u64>,
        extra: &[(EmpiricalItem, usize)],
        conf: f64,
        scratch: &mut Vec<u64>,
    ) -> f64 {
        scratch.clear();
        scratch.extend_from_slice(agg);
        for (item, phase) in extra {
            add_shifted(scratch, &item.values, *phase, false);
        }
        select(scratch, conf)
    }
    fn merge(&self, into: &mut Vec<u64>, from: &Vec<u64>, sub: bool) {
        add_shifted(into, from, 0, sub);
    }
    fn level_merged(
        &self,
        agg: &Vec<u64>,
        extra: &Vec<u64>,
        conf: f64,
        scratch: &mut Vec<u64>,
    ) -> f64 {
        scratch.clear();
        scratch.extend(agg.iter().zip(extra).map(|(a, b)| a.wrapping_add(*b)));
        select(scratch, conf)
    }
    fn lower_bound(&self, item: &EmpiricalItem) -> f64 {
        item.min as f64
    }
}

fn select(v: &mut [u64], conf: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let k = rank(conf, v.len());
    let (_, x, _) = v.select_nth_unstable(k - 1);
    *x as f64
}

// ---------------------------------------------------------------------------------------
// Gaussian
// ---------------------------------------------------------------------------------------

/// The normal approximation: `Σμ + z_C·√Σσ²`. O(1) per operation; assumes the components
/// are independent and their sum near-normal (many components, light tails).
#[derive(Clone, Copy, Debug, Default)]
pub struct Gaussian;

/// A component for [`Gaussian`], [`Mean`] and [`Peak`]: integer moments of its samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moments {
    /// Number of samples.
    pub n: u64,
    /// Sum of the samples.
    pub sum: u128,
    /// `n·Σx² − (Σx)²`, which is `n²` times the variance; integer so sums are exact.
    pub var_num: u128,
    /// Largest sample.
    pub peak: u64,
}

impl Moments {
    fn of(samples: &[u64]) -> Moments {
        let n = samples.len() as u64;
        let sum: u128 = samples.iter().map(|&x| x as u128).sum();
        let sq: u128 = samples.iter().map(|&x| (x as u128) * (x as u128)).sum();
        Moments {
            n,
            sum,
            var_num: (n as u128 * sq).saturating_sub(sum * sum),
            peak: samples.iter().copied().max().unwrap_or(0),
        }
    }
    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }
}

/// Running sums of [`Moments`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MomentSums {
    n: u64,
    sum: u128,
    var_num: u128,
    peak: u128,
}

impl MomentSums {
    fn new(n: usize) -> Self {
        MomentSums {
            n: n as u64,
            sum: 0,
            var_num: 0,
            peak: 0,
        }
    }
    fn apply(&mut self, m: &Moments, sub: bool) {
        if sub {
            self.sum = self.sum.wrapping_sub(m.sum);
            self.var_num = self.var_num.wrapping_sub(m.var_num);
            self.peak = self.peak.wrapping_sub(m.peak as u128);
        } else {
            self.sum = self.sum.wrapping_add(m.sum);
            self.var_num = self.var_num.wrapping_add(m.var_num);
            self.peak = self.peak.wrapping_add(m.peak as u128);
        }
    }
    fn merge(&mut self, o: &MomentSums, sub: bool) {
        let op = |a: u128, b: u128| {
            if sub {
                a.wrapping_sub(b)
            } else {
                a.wrapping_add(b)
            }
        };
        self.sum = op(self.sum, o.sum);
        self.var_num = op(self.var_num, o.var_num);
        self.peak = op(self.peak, o.peak);
    }
    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }
    fn std(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.var_num as f64).sqrt() / self.n as f64
        }
    }
}

impl Estimator for Gaussian {
    type Item = Moments;
    type Agg = MomentSums;

    fn name(&self) -> &'static str {
        "gaussian"
    }
    fn item(&self, _resource: Resource, samples: &Arc<[u64]>) -> Moments {
        Moments::of(samples)
    }
    fn empty(&self, _resource: Resource, grid: usize) -> MomentSums {
        MomentSums::new(grid)
    }
    fn add(&self, agg: &mut MomentSums, item: &Moments, _phase: usize) {
        agg.apply(item, false);
    }
    fn remove(&self, agg: &mut MomentSums, item: &Moments, _phase: usize) {
        agg.apply(item, true);
    }
    fn level(&self, agg: &MomentSums, conf: f64, _scratch: &mut Vec<u64>) -> f64 {
        agg.mean() + normal_quantile(conf).max(0.0) * agg.std()
    }
    fn merge(&self, into: &mut MomentSums, from: &MomentSums, sub: bool) {
        into.merge(from, sub);
    }
    fn lower_bound(&self, item: &Moments) -> f64 {
        item.mean()
    }
}

// ---------------------------------------------------------------------------------------
// Peak and Mean
// ---------------------------------------------------------------------------------------

/// Baseline: the sum of peaks, what a reservation scheduler does. Never overloads, wastes
/// most of the capacity on bursty services.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peak;

impl Estimator for Peak {
    type Item = Moments;
    type Agg = MomentSums;

    fn name(&self) -> &'static str {
        "peak"
    }
    fn item(&self, _resource: Resource, samples: &Arc<[u64]>) -> Moments {
        Moments::of(samples)
    }
    fn empty(&self, _resource: Resource, grid: usize) -> MomentSums {
        MomentSums::new(grid)
    }
    fn add(&self, agg: &mut MomentSums, item: &Moments, _phase: usize) {
        agg.apply(item, false);
    }
    fn remove(&self, agg: &mut MomentSums, item: &Moments, _phase: usize) {
        agg.apply(item, true);
    }
    fn level(&self, agg: &MomentSums, _conf: f64, _scratch: &mut Vec<u64>) -> f64 {
        agg.peak as f64
    }
    fn merge(&self, into: &mut MomentSums, from: &MomentSums, sub: bool) {
        into.merge(from, sub);
    }
    fn lower_bound(&self, item: &Moments) -> f64 {
        item.peak as f64
    }
}

/// Baseline: the sum of means, no margin at all. Packs the most and overloads often.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mean;

impl Estimator for Mean {
    type Item = Moments;
    type Agg = MomentSums;

    fn name(&self) -> &'static str {
        "mean"
    }
    fn item(&self, _resource: Resource, samples: &Arc<[u64]>) -> Moments {
        Moments::of(samples)
    }
    fn empty(&self, _resource: Resource, grid: usize) -> MomentSums {
        MomentSums::new(grid)
    }
    fn add(&self, agg: &mut MomentSums, item: &Moments, _phase: usize) {
        agg.apply(item, false);
    }
    fn remove(&self, agg: &mut MomentSums, item: &Moments, _phase: usize) {
        agg.apply(item, true);
    }
    fn level(&self, agg: &MomentSums, _conf: f64, _scratch: &mut Vec<u64>) -> f64 {
        agg.mean()
    }
    fn merge(&self, into: &mut MomentSums, from: &MomentSums, sub: bool) {
        into.merge(from, sub);
    }
    fn lower_bound(&self, item: &Moments) -> f64 {
        item.mean()
    }
}

// ---------------------------------------------------------------------------------------
// Chernoff
// ---------------------------------------------------------------------------------------

/// Number of θ values in the Chernoff grid.
const CHERNOFF_GRID: usize = 32;
/// Fixed-point scale of the stored log-MGF values (rounded up, so the bound stays safe).
const LMGF_SCALE: f64 = (1u64 << 24) as f64;

/// The Chernoff bound `P(U ≥ x) ≤ exp(Λ(θ) − θx)` with `Λ = Σ Λ_i` the sum of the
/// components' log moment generating functions, minimised over a fixed grid of θ: the level
/// is `min_θ (Λ(θ) + ln(1/(1−C))) / θ`, capped by the sum of peaks. Safe (an upper bound
/// under independence) and O(grid) per operation, but conservative.
#[derive(Clone, Copy, Debug, Default)]
pub struct Chernoff;

/// A component for [`Chernoff`].
#[derive(Clone, Debug)]
pub struct ChernoffItem {
    lmgf: Arc<[i64]>,
    moments: Moments,
}

/// Running sums for [`Chernoff`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChernoffAgg {
    resource: Resource,
    lmgf: Vec<i64>,
    moments: MomentSums,
}

fn theta(resource: Resource, j: usize) -> f64 {
    // Geometric grid from 10^-0.5 to 10^4 per typical capacity.
    let e = -0.5 + 4.5 * j as f64 / (CHERNOFF_GRID - 1) as f64;
    10f64.powf(e) / resource.scale()
}

impl Estimator for Chernoff {
    type Item = ChernoffItem;
    type Agg = ChernoffAgg;

    fn name(&self) -> &'static str {
        "chernoff"
    }
    fn item(&self, resource: Resource, samples: &Arc<[u64]>) -> ChernoffItem {
        let n = samples.len().max(1) as f64;
        let max = samples.iter().copied().max().unwrap_or(0) as f64;
        let lmgf = (0..CHERNOFF_GRID)
            .map(|j| {
                let th = theta(resource, j);
                // log-sum-exp around the maximum so large θ·x cannot overflow.
                let s: f64 = samples.iter().map(|&x| (th * (x as f64 - max)).exp()).sum();
                let l = th * max + (s / n).ln();
                (l.max(0.0) * LMGF_SCALE).ceil().min(1e15) as i64
            })
            .collect();
        ChernoffItem {
            lmgf,
            moments: Moments::of(samples),
        }
    }
    fn empty(&self, resource: Resource, grid: usize) -> ChernoffAgg {
        ChernoffAgg {
            resource,
            lmgf: vec![0; CHERNOFF_GRID],
            moments: MomentSums::new(grid),
        }
    }
    fn add(&self, agg: &mut ChernoffAgg, item: &ChernoffItem, _phase: usize) {
        for (a, l) in agg.lmgf.iter_mut().zip(item.lmgf.iter()) {
            *a = a.wrapping_add(*l);
        }
        agg.moments.apply(&item.moments, false);
    }
    fn remove(&self, agg: &mut ChernoffAgg, item: &ChernoffItem, _phase: usize) {
        for (a, l) in agg.lmgf.iter_mut().zip(item.lmgf.iter()) {
            *a = a.wrapping_sub(*l);
        }
        agg.moments.apply(&item.moments, true);
    }
    fn level(&self, agg: &ChernoffAgg, conf: f64, _scratch: &mut Vec<u64>) -> f64 {
        let peak = agg.moments.peak as f64;
        let eps = 1.0 - conf;
        if eps <= 0.0 {
            return peak;
        }
        let log_inv = (1.0 / eps).ln();
        let mut best = peak;
        for (j, l) in agg.lmgf.iter().enumerate() {
            let th = theta(agg.resource, j);
            let b = (*l as f64 / LMGF_SCALE + log_inv) / th;
            if b < best {
                best = b;
            }
        }
        best
    }
    fn merge(&self, into: &mut ChernoffAgg, from: &ChernoffAgg, sub: bool) {
        for (a, l) in into.lmgf.iter_mut().zip(&from.lmgf) {
            *a = if sub {
                a.wrapping_sub(*l)
            } else {
                a.wrapping_add(*l)
            };
        }
        into.moments.merge(&from.moments, sub);
    }
    fn lower_bound(&self, item: &ChernoffItem) -> f64 {
        item.moments.mean()
    }
}

// ---------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------

/// The estimators by name, for the command line and results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EstimatorKind {
    /// Percentile of time-aligned sums (the thesis).
    Empirical,
    /// Normal approximation.
    Gaussian,
    /// Chernoff bound on a θ grid.
    Chernoff,
    /// Sum of peaks (reservation baseline).
    Peak,
    /// Sum of means (no margin).
    Mean,
}

impl EstimatorKind {
    /// All estimators in display order.
    pub const ALL: [EstimatorKind; 5] = [
        EstimatorKind::Empirical,
        EstimatorKind::Gaussian,
        EstimatorKind::Chernoff,
        EstimatorKind::Peak,
        EstimatorKind::Mean,
    ];

    /// The name used in results.
    pub fn name(self) -> &'static str {
        match self {
            EstimatorKind::Empirical => "empirical",
            EstimatorKind::Gaussian => "gaussian",
            EstimatorKind::Chernoff => "chernoff",
            EstimatorKind::Peak => "peak",
            EstimatorKind::Mean => "mean",
        }
    }
}

/// Inverse of the standard normal CDF (`z` with `Φ(z) = p`), by a rational approximation with
/// relative error below 1.2e-9 over (0, 1) (P. J. Acklam's coefficients). Returns ±∞ at the
/// ends and NaN outside [0, 1].
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.38357751867269e2,
        -3.066479806614716e1,
        2.506628277459239e0,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838e0,
        -2.549732539343734e0,
        4.374664141464968e0,
        2.938163982698783e0,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996e0,
        3.754408661907416e0,
    ];
    const LOW: f64 = 0.02425;
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc(v: &[u64]) -> Arc<[u64]> {
        v.to_vec().into()
    }

    #[test]
    fn normal_quantile_known_values() {
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(0.95) - 1.644_853_626_951).abs() < 1e-7);
        assert!((normal_quantile(0.99) - 2.326_347_874_041).abs() < 1e-7);
        assert!((normal_quantile(0.01) + 2.326_347_874_041).abs() < 1e-7);
        assert!(normal_quantile(1.5).is_nan());
    }

    #[test]
    fn rank_handles_binary_rounding() {
        assert_eq!(rank(0.95, 20), 19);
        assert_eq!(rank(0.95, 100), 95);
        assert_eq!(rank(1.0, 7), 7);
        assert_eq!(rank(0.0, 7), 1);
    }

    #[test]
    fn empirical_sums_with_phase_and_reads_percentile() {
        let e = Empirical;
        let mut agg = e.empty(Resource::Cpu, 4);
        let a = e.item(Resource::Cpu, &arc(&[1, 2, 3, 4]));
        e.add(&mut agg, &a, 1);
        assert_eq!(agg, vec![2, 3, 4, 1]);
        e.add(&mut agg, &a, 0);
        assert_eq!(agg, vec![3, 5, 7, 5]);
        let mut s = Vec::new();
        // 4 samples, conf 0.75 -> 3rd smallest of {3,5,5,7} = 5.
        assert_eq!(e.level(&agg, 0.75, &mut s), 5.0);
        assert_eq!(e.level(&agg, 1.0, &mut s), 7.0);
        e.remove(&mut agg, &a, 1);
        assert_eq!(agg, vec![1, 2, 3, 4]);
    }

    #[test]
    fn baselines_and_gaussian_levels() {
        let s = arc(&[0, 0, 0, 10]);
        let mut scratch = Vec::new();
        let mut agg = Peak.empty(Resource::Net, 4);
        Peak.add(&mut agg, &Peak.item(Resource::Net, &s), 0);
        Peak.add(&mut agg, &Peak.item(Resource::Net, &s), 0);
        assert_eq!(Peak.level(&agg, 0.95, &mut scratch), 20.0);
        let mut m = Mean.empty(Resource::Net, 4);
        Mean.add(&mut m, &Mean.item(Resource::Net, &s), 0);
        assert_eq!(Mean.level(&m, 0.95, &mut scratch), 2.5);
        let mut g = Gaussian.empty(Resource::Net, 4);
        Gaussian.add(&mut g, &Gaussian.item(Resource::Net, &s), 0);
        // mean 2.5, population std sqrt(18.75)
        let want = 2.5 + normal_quantile(0.95) * 18.75f64.sqrt();
        assert!((Gaussian.level(&g, 0.95, &mut scratch) - want).abs() < 1e-9);
    }

    #[test]
    fn chernoff_lies_between_mean_and_peak_and_bounds_the_tail() {
        let c = Chernoff;
        let samples: Vec<u64> = (0..200)
            .map(|i| if i % 10 == 0 { 50_000 } else { 5_000 })
            .collect();
        let item = c.item(Resource::Net, &arc(&samples));
        let mut agg = c.empty(Resource::Net, 200);
        for _ in 0..20 {
            c.add(&mut agg, &item, 0);
        }
        let mut s = Vec::new();
        let lvl = c.level(&agg, 0.95, &mut s);
        let mean = 20.0 * 9_500.0;
        let peak = 20.0 * 50_000.0;
        assert!(lvl > mean && lvl < peak, "level {lvl}");
        // Independent sum of 20 such components: exact 95th percentile by binomial count of
        // bursts; a Chernoff level must be at least that.
        let mut cdf = 0.0;
        let mut bursts = 0;
        for k in 0..=20u32 {
            let p = binom(20, k) * 0.1f64.powi(k as i32) * 0.9f64.powi(20 - k as i32);
            cdf += p;
            if cdf >= 0.95 {
                bursts = k;
                break;
            }
        }
        let exact = bursts as f64 * 50_000.0 + (20 - bursts) as f64 * 5_000.0;
        assert!(lvl >= exact, "chernoff {lvl} below exact {exact}");
    }

    fn binom(n: u32, k: u32) -> f64 {
        (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
    }
}
