//! Summaries and usage distributions of sample series (thesis Tables 5.2/5.3).
//!
//! # Layout
//! - [`Summary`]: mean and percentiles of a series.
//! - [`distribution`]: share of intervals per usage bucket, buckets in percent of a capacity.
//! - [`render_distribution`]: the text table printed by `smart profile`.

use serde::Serialize;

/// Mean and order statistics of a series.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub samples: usize,
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

pub use smart_proto::stats::percentile_sorted;

impl Summary {
    /// Summarise `v`; non-finite values are ignored.
    pub fn of(v: &[f64]) -> Self {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return Self::default();
        }
        s.sort_by(f64::total_cmp);
        let p = |q| percentile_sorted(&s, q).unwrap_or(0.0);
        Self {
            samples: s.len(),
            mean: s.iter().sum::<f64>() / s.len() as f64,
            min: s[0],
            p50: p(0.5),
            p90: p(0.9),
            p95: p(0.95),
            p99: p(0.99),
            max: s[s.len() - 1],
        }
    }
}

/// Bucket edges in percent of capacity used by `smart profile` (the thesis used 0-1 %,
/// 1-5 %, 5-10 %, ... ranges).
pub const DEFAULT_EDGES_PCT: &[f64] = &[0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0];

/// One row of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// Lower edge, percent of capacity (inclusive).
    pub lo_pct: f64,
    /// Upper edge, percent of capacity (exclusive; `f64::INFINITY` for the last).
    pub hi_pct: f64,
    /// Share of intervals in this bucket, 0..=1.
    pub share: f64,
}

/// Share of samples per bucket; `edges_pct` ascending, a final open bucket catches the rest.
/// A capacity of 0 puts everything in the first bucket.
pub fn distribution(values: &[f64], capacity: f64, edges_pct: &[f64]) -> Vec<Bucket> {
    let n = values.len().max(1) as f64;
    let mut rows: Vec<Bucket> = edges_pct
        .windows(2)
        .map(|w| Bucket {
            lo_pct: w[0],
            hi_pct: w[1],
            share: 0.0,
        })
        .collect();
    rows.push(Bucket {
        lo_pct: edges_pct.last().copied().unwrap_or(0.0),
        hi_pct: f64::INFINITY,
        share: 0.0,
    });
    for v in values {
        let pct = if capacity > 0.0 {
            v / capacity * 100.0
        } else {
            0.0
        };
        let i = rows
            .iter()
            .position(|b| pct < b.hi_pct)
            .unwrap_or(rows.len() - 1);
        rows[i].share += 1.0 / n;
    }
    rows
}

/// Render a distribution like thesis Tables 5.2/5.3: only non-empty rows, with the
/// absolute range in `unit` next to the percent range.
pub fn render_distribution(
    title: &str,
    capacity: f64,
    unit: &str,
    scale: f64,
    rows: &[Bucket],
) -> String {
    let mut s = format!("{title}\n");
    for b in rows.iter().filter(|b| b.share > 0.0) {
        let pct = if b.hi_pct.is_finite() {
            format!("{:>3} - {:>3} %", b.lo_pct, b.hi_pct)
        } else {
            format!("    > {:>3} %", b.lo_pct)
        };
        let abs_lo = capacity * b.lo_pct / 100.0 / scale;
        let abs = if b.hi_pct.is_finite() {
            format!(
                "{abs_lo:.3} - {:.3} {unit}",
                capacity * b.hi_pct / 100.0 / scale
            )
        } else {
            format!("> {abs_lo:.3} {unit}")
        };
        s.push_str(&format!(
            "  {pct:<12} {abs:<28} {:>5.1} %\n",
            b.share * 100.0
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!(s.samples, 100);
        assert_eq!(s.mean, 50.5);
        assert_eq!(
            (s.p50, s.p90, s.p95, s.p99, s.max, s.min),
            (50.0, 90.0, 95.0, 99.0, 100.0, 1.0)
        );
        assert_eq!(Summary::of(&[f64::NAN]), Summary::default());
    }

    #[test]
    fn distribution_matches_thesis_shape() {
        // 94 quiet intervals, 4 light, 2 bursts on a 1-core capacity.
        let mut v = vec![0.005; 94];
        v.extend([0.02; 4]);
        v.extend([0.15; 2]);
        let d = distribution(&v, 1.0, DEFAULT_EDGES_PCT);
        let share = |lo: f64| d.iter().find(|b| b.lo_pct == lo).unwrap().share;
        assert!((share(0.0) - 0.94).abs() < 1e-9);
        assert!((share(1.0) - 0.04).abs() < 1e-9);
        assert!((share(10.0) - 0.02).abs() < 1e-9);
        let t = render_distribution("CPU", 1.0, "cores", 1.0, &d);
        assert!(t.contains("  0 -   1 %"), "{t}");
        assert!(t.contains(" 94.0 %"), "{t}");
        assert_eq!(t.lines().count(), 4, "title + 3 non-empty rows:\n{t}");
    }

    #[test]
    fn over_capacity_goes_to_open_bucket() {
        let d = distribution(&[3.0], 2.0, DEFAULT_EDGES_PCT);
        assert_eq!(d.last().unwrap().share, 1.0);
    }
}
