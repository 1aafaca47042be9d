//! Order statistics of sample series, in one place: every crate that reports a p50 or a p99
//! (the admission summaries, the profiles' headline figures, the viewers' QoE, the demo and
//! benchmarks, the test suites) reads it through [`percentile_sorted`], so a figure means the
//! same thing wherever it is printed. It lives here because this crate is below all others.

/// Percentile `q` in [0, 1] of sorted data, nearest-rank (the value of an actual sample,
/// as the thesis reads its distributions). `None` when empty.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// [`percentile_sorted`] of `v` in any order (sorted here, by `f64::total_cmp`; `v` is
/// left sorted). `None` when empty.
pub fn percentile(v: &mut [f64], q: f64) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    percentile_sorted(v, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_picks_an_actual_sample() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile_sorted(&v, 0.5), Some(50.0));
        assert_eq!(percentile_sorted(&v, 0.99), Some(99.0));
        assert_eq!(percentile_sorted(&v, 1.0), Some(100.0));
        assert_eq!(percentile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(percentile_sorted(&[], 0.5), None);
        let mut w = vec![3.0, 1.0, 2.0];
        assert_eq!(percentile(&mut w, 0.5), Some(2.0));
        assert_eq!(w, [1.0, 2.0, 3.0]);
    }
}
