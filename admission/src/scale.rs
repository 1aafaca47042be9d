//! From a class's measured profile to what one service needs (docs/DESIGN.md §3).
//!
//! - [`for_video`]: a distributor's profile was measured serving one video (its
//!   [`VideoRef`]); another video of bitrate `B` and duration `D` needs more or less of
//!   everything that the video drives. Network (the origin stream and every client's
//!   stream) scales with the bitrate; the per-client CPU (packets to send) too; the base
//!   CPU (timers, the control API) does not; the memory is the process's own plus its
//!   cache window, which holds a fraction of the video: `window · B/8 · D`. So a 4 Mbit/s,
//!   two-hour video reserves ten times the network and twelve times the cache of a
//!   400 kbit/s, ten-minute one, and the same base CPU.
//! - [`reservation_of`]: what Agent86 sets aside for a service with `n` clients: per
//!   resource, a high percentile (`quantile`) of `base(t) + n · per_client(t)`, and the
//!   working set. It is the yardstick of the anomaly detector (an instance persistently
//!   over it) and the base of the limits Agent86 enforces.
//! - [`grown`]: a profile scaled up so that its reservation covers an observed usage
//!   (an anomalous instance re-admitted at its observed size).

use smart_proto::agent::Reservation;
use smart_proto::profile::{Series, ServiceProfile, VideoRef};

/// `p` (measured with `p.video`) scaled to a video of `bitrate_bps` and `duration_ms`.
/// Profiles without a reference video are returned as they are.
pub fn for_video(p: &ServiceProfile, bitrate_bps: u64, duration_ms: Option<u64>) -> ServiceProfile {
    let Some(reference) = p.video else {
        return p.clone();
    };
    if reference.bitrate_bps == 0 {
        return p.clone();
    }
    let r = bitrate_bps as f64 / reference.bitrate_bps as f64;
    let target = VideoRef {
        bitrate_bps,
        duration_ms: duration_ms.unwrap_or(reference.duration_ms),
        window_fraction: reference.window_fraction,
    };
    let (old_cache, new_cache) = (reference.cache_bytes(), target.cache_bytes());
    let mem = |m: u64| m.saturating_sub(old_cache).saturating_add(new_cache);
    let scale = |v: &[f64], k: f64| v.iter().map(|x| x * k).collect::<Vec<f64>>();
    ServiceProfile {
        base: Series {
            cpu_cores: p.base.cpu_cores.clone(),
            net_bps: scale(&p.base.net_bps, r),
            mem_bytes: p.base.mem_bytes.iter().map(|&m| mem(m)).collect(),
        },
        per_client: p.per_client.as_ref().map(|pc| Series {
            cpu_cores: scale(&pc.cpu_cores, r),
            net_bps: scale(&pc.net_bps, r),
            mem_bytes: pc.mem_bytes.clone(),
        }),
        working_set_bytes: mem(p.working_set_bytes),
        video: Some(target),
        ..p.clone()
    }
}

/// The `quantile` (e.g. 0.99) of `base(t) + clients · per_client(t)`.
fn level(base: &[f64], per_client: Option<&[f64]>, clients: usize, quantile: f64) -> f64 {
    let mut v: Vec<f64> = base
        .iter()
        .enumerate()
        .map(|(t, b)| {
            b + per_client
                .and_then(|pc| pc.get(t % pc.len().max(1)))
                .map_or(0.0, |x| x * clients as f64)
        })
        .collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * quantile).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].max(0.0)
}

/// What a service of profile `p` with `clients` clients reserves.
pub fn reservation_of(p: &ServiceProfile, clients: usize, quantile: f64) -> Reservation {
    let pc = p.per_client.as_ref();
    let client_mem = pc
        .map(|pc| {
            let n = pc.mem_bytes.len().max(1) as u64;
            pc.mem_bytes.iter().sum::<u64>() / n
        })
        .unwrap_or(0);
    Reservation {
        cpu_cores: level(
            &p.base.cpu_cores,
            pc.map(|s| s.cpu_cores.as_slice()),
            clients,
            quantile,
        ),
        net_bps: level(
            &p.base.net_bps,
            pc.map(|s| s.net_bps.as_slice()),
            clients,
            quantile,
        ),
        mem_bytes: p
            .working_set_bytes
            .saturating_add(client_mem.saturating_mul(clients as u64)),
    }
}

/// `p` with its base scaled up so that a service with `clients` clients reserves at least
/// `observed` (per resource; never scaled down).
pub fn grown(
    p: &ServiceProfile,
    clients: usize,
    quantile: f64,
    observed: &Reservation,
) -> ServiceProfile {
    let now = reservation_of(p, clients, quantile);
    let k = |obs: f64, cur: f64| {
        if cur > 0.0 && obs > cur {
            obs / cur
        } else {
            1.0
        }
    };
    let (kc, kn) = (
        k(observed.cpu_cores, now.cpu_cores),
        k(observed.net_bps, now.net_bps),
    );
    let mut out = p.clone();
    for x in out.base.cpu_cores.iter_mut() {
        *x *= kc;
    }
    for x in out.base.net_bps.iter_mut() {
        *x *= kn;
    }
    if let Some(pc) = out.per_client.as_mut() {
        for x in pc.cpu_cores.iter_mut() {
            *x *= kc;
        }
        for x in pc.net_bps.iter_mut() {
            *x *= kn;
        }
    }
    if observed.mem_bytes > now.mem_bytes {
        out.working_set_bytes = out
            .working_set_bytes
            .saturating_add(observed.mem_bytes - now.mem_bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use smart_proto::profile::PROFILE_FORMAT_VERSION;

    fn distributor() -> ServiceProfile {
        // Profiled with a 400 kbit/s, 10-minute video: its cache is 6 MB, the process 4 MB.
        let reference = VideoRef {
            bitrate_bps: 400_000,
            duration_ms: 600_000,
            window_fraction: 0.2,
        };
        assert_eq!(reference.cache_bytes(), 6_000_000);
        ServiceProfile {
            version: PROFILE_FORMAT_VERSION,
            service: "distributor".into(),
            interval_ms: 1000,
            base: Series {
                cpu_cores: vec![0.01, 0.02, 0.03, 0.04],
                net_bps: vec![400e3, 400e3, 800e3, 400e3],
                mem_bytes: vec![10_000_000; 4],
            },
            per_client: Some(Series {
                cpu_cores: vec![0.001, 0.002, 0.001, 0.001],
                net_bps: vec![400e3; 4],
                mem_bytes: vec![1000; 4],
            }),
            working_set_bytes: 10_000_000,
            video: Some(reference),
        }
    }

    #[test]
    fn a_bigger_video_reserves_what_it_needs() {
        let p = distributor();
        // 4 Mbit/s, two hours: ten times the network, a 720 MB cache.
        let s = for_video(&p, 4_000_000, Some(7_200_000));
        assert_eq!(s.working_set_bytes, 4_000_000 + 720_000_000);
        assert_eq!(s.base.net_bps, vec![4e6, 4e6, 8e6, 4e6]);
        assert_eq!(
            s.base.cpu_cores, p.base.cpu_cores,
            "base CPU does not scale"
        );
        let pc = s.per_client.as_ref().unwrap();
        assert_eq!(pc.net_bps, vec![4e6; 4]);
        assert!((pc.cpu_cores[1] - 0.02).abs() < 1e-12);
        assert_eq!(s.video.unwrap().bitrate_bps, 4_000_000);
        // The same video: unchanged (but for the reference).
        assert_eq!(for_video(&p, 400_000, Some(600_000)), p);
        // A profile that is not a distributor's is not scaled.
        let mut plain = p.clone();
        plain.video = None;
        assert_eq!(for_video(&plain, 4_000_000, None), plain);
    }

    #[test]
    fn reservations_take_a_percentile_of_base_plus_clients() {
        let p = distributor();
        let r = reservation_of(&p, 0, 1.0);
        assert_eq!(
            (r.cpu_cores, r.net_bps, r.mem_bytes),
            (0.04, 800e3, 10_000_000)
        );
        let r = reservation_of(&p, 10, 1.0);
        assert!((r.cpu_cores - 0.05).abs() < 1e-12, "{r:?}");
        assert_eq!(r.net_bps, 800e3 + 10.0 * 400e3);
        assert_eq!(r.mem_bytes, 10_000_000 + 10 * 1000);
        // The median ignores the burst.
        assert_eq!(reservation_of(&p, 0, 0.5).net_bps, 400e3);
    }

    #[test]
    fn grown_profiles_cover_the_observed_usage_and_never_shrink() {
        let p = distributor();
        let observed = Reservation {
            cpu_cores: 0.08,
            net_bps: 400e3,
            mem_bytes: 30_000_000,
        };
        let g = grown(&p, 0, 1.0, &observed);
        let r = reservation_of(&g, 0, 1.0);
        assert!((r.cpu_cores - 0.08).abs() < 1e-12, "{r:?}");
        assert_eq!(r.net_bps, 800e3, "not scaled down");
        assert_eq!(r.mem_bytes, 30_000_000);
    }
}
