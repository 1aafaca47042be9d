//! Admission decisions per second and p99 latency at 1k, 10k and 100k nodes with 10
//! services per node (docs/figures.md, "Speed"; goal at 10k nodes / 100k services: ≥ 20,000
//! decisions/s and p99 ≤ 50 µs on one core).
//!
//! Each cluster is filled to 10 services per node (Smart-GloVE distributors with one viewer,
//! from 256 synthetic profiles), then every measured step releases a random service and
//! admits a new one; only the admission is timed (cluster test, index search, node tests,
//! Migrate the Smallest when needed, commit). Before criterion's own run, a fixed loop of
//! 20,000 decisions prints decisions/s and p50/p99 from a histogram.
//!
//! Run: `CARGO_TARGET_DIR=... cargo bench -p smart-admission --bench decisions`
//! (`SMART_BENCH_SIZES=1000,10000` to choose sizes).

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]
// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use smart_admission::synthetic::{Gen, VideoSpec, distributor};
use smart_admission::{
    Empirical, Engine, EngineConfig, Estimator, Gaussian, NodeId, NodeSpec, ProfileId, ServiceId,
};

const GRID: usize = 256;

struct Bed<E: Estimator> {
    eng: Engine<E>,
    profiles: Vec<ProfileId>,
    live: Vec<ServiceId>,
    rng: ChaCha8Rng,
    rejected: u64,
}

fn spec(i: usize) -> NodeSpec {
    const GIB: u64 = 1 << 30;
    match i % 4 {
        0 => NodeSpec::new(2 * GIB, 2.0, 100e6),
        1 | 2 => NodeSpec::new(8 * GIB, 4.0, 1e9),
        _ => NodeSpec::new(16 * GIB, 8.0, 1e9),
    }
}

fn build<E: Estimator>(est: E, nodes: usize) -> Bed<E> {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let cfg = EngineConfig {
        grid: GRID,
        ..EngineConfig::default()
    };
    let mut eng = Engine::new(est, cfg).expect("config");
    for i in 0..nodes {
        eng.add_node(NodeId(i as u64), spec(i)).expect("node");
    }
    let profiles = (0..256)
        .map(|k| {
            let v = VideoSpec {
                bitrate_bps: rng.random_range(300e3..2e6),
                duration_s: rng.random_range(300.0..3600.0),
                cache_fraction: 0.2,
            };
            let p = distributor(
                &v,
                &Gen {
                    len: GRID,
                    seed: k,
                    shared: None,
                },
            );
            eng.register_profile(&p).expect("profile")
        })
        .collect::<Vec<_>>();
    let mut live = Vec::with_capacity(nodes * 10);
    let mut rejected = 0;
    for _ in 0..nodes * 10 {
        let p = profiles[rng.random_range(0..profiles.len())];
        match eng.admit_service(p, 1) {
            Ok(d) => live.push(d.service),
            Err(_) => rejected += 1,
        }
    }
    Bed {
        eng,
        profiles,
        live,
        rng,
        rejected,
    }
}

/// `iters` steps of release-one, admit-one; returns the time spent admitting.
fn steps<E: Estimator>(
    b: &mut Bed<E>,
    iters: u64,
    mut hist: Option<&mut Histogram<u64>>,
) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        if !b.live.is_empty() {
            let i = b.rng.random_range(0..b.live.len());
            let sid = b.live.swap_remove(i);
            b.eng.release_service(sid).expect("live service");
        }
        let p = b.profiles[b.rng.random_range(0..b.profiles.len())];
        let t0 = Instant::now();
        let res = black_box(b.eng.admit_service(p, 1));
        let dt = t0.elapsed();
        spent += dt;
        if let Some(h) = hist.as_deref_mut() {
            let _ = h.record(dt.as_nanos().max(1) as u64);
        }
        match res {
            Ok(d) => b.live.push(d.service),
            Err(_) => b.rejected += 1,
        }
    }
    spent
}

fn report<E: Estimator>(c: &mut Criterion, est: E, nodes: usize) {
    let name = est.name();
    let t0 = Instant::now();
    let mut bed = build(est, nodes);
    let fill = t0.elapsed();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    let n = 20_000;
    let before = bed.rejected;
    let spent = steps(&mut bed, n, Some(&mut hist));
    println!(
        "FIGURE {name} nodes={nodes} services={} fill={:.1}s: {:.0} decisions/s, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs, rejected {}/{n}",
        bed.live.len(),
        fill.as_secs_f64(),
        n as f64 / spent.as_secs_f64(),
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.max() as f64 / 1e3,
        bed.rejected - before,
    );
    let mut g = c.benchmark_group("admit_service");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function(BenchmarkId::new(name, nodes), |b| {
        b.iter_custom(|iters| steps(&mut bed, iters, None))
    });
    g.finish();
}

fn sizes() -> Vec<usize> {
    std::env::var("SMART_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000])
}

fn bench(c: &mut Criterion) {
    for n in sizes() {
        report(c, Empirical, n);
        if n <= 10_000 {
            report(c, Gaussian, n);
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
