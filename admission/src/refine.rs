//! Online profile refinement (docs/DESIGN.md §1: Agent99 refines profiles from Agent86 samples; the
//! thesis left this to an operator).
//!
//! A [`ProfileRefiner`] holds a service's profile and a bounded window of the most recent
//! per-interval samples of its running instances. [`ProfileRefiner::refined`] returns the
//! profile with its base series replaced by the window, so that admission works from what
//! the service does now, not from what it did on the profiling day:
//!
//! - When the profile has a per-client increment and a sample says how many clients the
//!   instance served, the sample is normalised to the base (`observed - clients * mean
//!   increment`, clamped at 0) before it enters the window; the increment itself is kept.
//! - A sample without a network figure uses the profile's mean base network, so that a
//!   missing measurement neither inflates nor erases the series.
//! - Memory is never overbooked (docs/DESIGN.md §3), so the working set only grows: the refined
//!   value is the larger of the profile's and the window's peak.
//! - Until `min_samples` samples are in, the original profile is returned unchanged.
//!
//! Pure: no clock, no I/O. `changed` tells the caller when a refined profile differs enough
//! from the last one published to be worth sending to the Control.
//!
//! # Layout
//! - [`RefineConfig`], [`ProfileRefiner`].

use std::collections::VecDeque;

use crate::profile::{Series, ServiceProfile};

use smart_proto::agent::UsageReading;

/// Refinement settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefineConfig {
    /// Samples kept (e.g. 3600 = one hour at 1 s).
    pub window: usize,
    /// Samples needed before the window replaces the profile.
    pub min_samples: usize,
    /// Relative change of the CPU or network p95 that counts as "changed".
    pub change_ratio: f64,
}

impl Default for RefineConfig {
    fn default() -> Self {
        Self {
            window: 3600,
            min_samples: 300,
            change_ratio: 0.05,
        }
    }
}

/// The bounded-window updater of one service's profile.
#[derive(Debug, Clone)]
pub struct ProfileRefiner {
    cfg: RefineConfig,
    profile: ServiceProfile,
    cpu: VecDeque<f64>,
    net: VecDeque<f64>,
    mem: VecDeque<u64>,
    published_p95: Option<(f64, f64)>,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn p95(v: impl Iterator<Item = f64>) -> f64 {
    let mut s: Vec<f64> = v.collect();
    s.sort_by(f64::total_cmp);
    crate::stats::percentile_sorted(&s, 0.95).unwrap_or(0.0)
}

impl ProfileRefiner {
    /// Start from a profile (as written by `smart profile`).
    pub fn new(profile: ServiceProfile, cfg: RefineConfig) -> Self {
        let window = cfg.window.max(1);
        Self {
            cfg: RefineConfig { window, ..cfg },
            profile,
            cpu: VecDeque::with_capacity(window),
            net: VecDeque::with_capacity(window),
            mem: VecDeque::with_capacity(window),
            published_p95: None,
        }
    }

    /// Samples in the window.
    pub fn samples(&self) -> usize {
        self.cpu.len()
    }

    /// Add one interval of one instance of this service.
    pub fn push(&mut self, s: &UsageReading) {
        let (inc_cpu, inc_net) = match (&self.profile.per_client, s.clients) {
            (Some(pc), Some(c)) => (c as f64 * mean(&pc.cpu_cores), c as f64 * mean(&pc.net_bps)),
            _ => (0.0, 0.0),
        };
        let net = s
            .net_bps
            .filter(|v| v.is_finite())
            .map(|v| v - inc_net)
            .unwrap_or_else(|| mean(&self.profile.base.net_bps));
        let cpu = if s.cpu_cores.is_finite() {
            s.cpu_cores - inc_cpu
        } else {
            0.0
        };
        if self.cpu.len() == self.cfg.window {
            self.cpu.pop_front();
            self.net.pop_front();
            self.mem.pop_front();
        }
        self.cpu.push_back(cpu.max(0.0));
        self.net.push_back(net.max(0.0));
        self.mem.push_back(s.mem_bytes);
    }

    /// The profile admission should use now.
    pub fn refined(&self) -> ServiceProfile {
        if self.samples() < self.cfg.min_samples {
            return self.profile.clone();
        }
        let peak = self.mem.iter().copied().max().unwrap_or(0);
        ServiceProfile {
            base: Series {
                cpu_cores: self.cpu.iter().copied().collect(),
                net_bps: self.net.iter().copied().collect(),
                mem_bytes: self.mem.iter().copied().collect(),
            },
            working_set_bytes: self.profile.working_set_bytes.max(peak),
            ..self.profile.clone()
        }
    }

    /// True when the refined profile's CPU or network p95 moved by more than
    /// `change_ratio` since the last call that returned true (the first eligible call
    /// returns true). Call after pushes; publish the refined profile when it says so.
    pub fn changed(&mut self) -> bool {
        if self.samples() < self.cfg.min_samples {
            return false;
        }
        let now = (p95(self.cpu.iter().copied()), p95(self.net.iter().copied()));
        let moved = |a: f64, b: f64| {
            let scale = a.abs().max(b.abs());
            scale > 0.0 && (a - b).abs() / scale > self.cfg.change_ratio
        };
        let changed = match self.published_p95 {
            None => true,
            Some((c, n)) => moved(c, now.0) || moved(n, now.1),
        };
        if changed {
            self.published_p95 = Some(now);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::PROFILE_FORMAT_VERSION;

    fn profile(per_client: Option<Series>) -> ServiceProfile {
        ServiceProfile {
            version: PROFILE_FORMAT_VERSION,
            service: "vod".into(),
            interval_ms: 1000,
            base: Series {
                cpu_cores: vec![0.1; 4],
                net_bps: vec![1.0e5; 4],
                mem_bytes: vec![10; 4],
            },
            per_client,
            working_set_bytes: 100,
            video: None,
        }
    }

    fn reading(cpu: f64, net: Option<f64>, mem: u64, clients: Option<u32>) -> UsageReading {
        UsageReading {
            instance: "i".into(),
            cpu_cores: cpu,
            net_bps: net,
            mem_bytes: mem,
            clients,
            speaks_api: false,
        }
    }

    fn cfg(window: usize, min: usize) -> RefineConfig {
        RefineConfig {
            window,
            min_samples: min,
            change_ratio: 0.05,
        }
    }

    #[test]
    fn original_until_enough_samples_then_bounded_window() {
        let mut r = ProfileRefiner::new(profile(None), cfg(3, 2));
        r.push(&reading(0.5, Some(2.0e5), 50, None));
        assert_eq!(r.refined(), profile(None));
        for (i, c) in [0.6, 0.7, 0.8].into_iter().enumerate() {
            r.push(&reading(c, Some(2.0e5), 60 + i as u64, None));
        }
        let p = r.refined();
        assert_eq!(
            p.base.cpu_cores,
            vec![0.6, 0.7, 0.8],
            "oldest sample dropped"
        );
        assert_eq!(p.base.mem_bytes, vec![60, 61, 62]);
        assert_eq!(
            p.working_set_bytes, 100,
            "never below the profiled working set"
        );
        r.push(&reading(0.1, Some(1.0), 500, None));
        assert_eq!(r.refined().working_set_bytes, 500, "grows with reality");
    }

    #[test]
    fn samples_are_normalised_to_base_and_gaps_filled() {
        let pc = Series {
            cpu_cores: vec![0.01; 2],
            net_bps: vec![4.0e5; 2],
            mem_bytes: vec![0; 2],
        };
        let mut r = ProfileRefiner::new(profile(Some(pc.clone())), cfg(10, 1));
        // 10 clients at 400 kbit/s each on top of a 100 kbit/s base.
        r.push(&reading(0.2, Some(4.1e6), 70, Some(10)));
        r.push(&reading(0.2, None, 70, Some(10)));
        let p = r.refined();
        assert!((p.base.cpu_cores[0] - 0.1).abs() < 1e-9);
        assert!((p.base.net_bps[0] - 1.0e5).abs() < 1e-3);
        assert_eq!(
            p.base.net_bps[1], 1.0e5,
            "missing figure uses the profile mean"
        );
        assert_eq!(p.per_client, Some(pc));
    }

    #[test]
    fn change_detection_is_relative_and_sticky() {
        let mut r = ProfileRefiner::new(profile(None), cfg(20, 5));
        for _ in 0..5 {
            r.push(&reading(0.5, Some(1.0e6), 1, None));
        }
        assert!(r.changed(), "first eligible profile is news");
        assert!(!r.changed());
        for _ in 0..20 {
            r.push(&reading(0.51, Some(1.0e6), 1, None));
        }
        assert!(!r.changed(), "2 % is below the 5 % threshold");
        for _ in 0..20 {
            r.push(&reading(0.8, Some(1.0e6), 1, None));
        }
        assert!(r.changed());
    }
}
