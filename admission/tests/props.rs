//! Property tests of the admission engine's invariants (docs/DESIGN.md §3–§4): memory is never
//! overbooked,
//! a rejected admission changes nothing, Migrate the Smallest never leaves an admitted
//! service unplaced, incremental aggregates equal a recomputation, the placement index
//! returns what a linear scan returns, and the empirical eq. 4.1 test equals a brute-force
//! percentile.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::sync::Arc;

use proptest::prelude::*;
use smart_admission::estimator::rank;
use smart_admission::profile::{PROFILE_FORMAT_VERSION, Series, ServiceProfile};
use smart_admission::tree::{Leaf, Need, PlacementIndex};
use smart_admission::{
    Chernoff, Empirical, Engine, EngineConfig, Estimator, Gaussian, Mean, NodeId, NodeSpec, Peak,
    Policy, Rejection, Resource, ServiceId,
};

const GRID: usize = 12;

fn series_strategy() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(prop_oneof![3 => 0u64..1_000, 1 => 1_000u64..50_000], GRID)
}

fn check_add_remove<E: Estimator>(est: E, comps: &[Vec<u64>], ops: &[(usize, usize, bool)]) {
    let items: Vec<E::Item> = comps
        .iter()
        .map(|c| est.item(Resource::Net, &Arc::<[u64]>::from(c.clone())))
        .collect();
    let mut agg = est.empty(Resource::Net, GRID);
    let mut present: Vec<(usize, usize)> = Vec::new();
    for &(i, phase, add) in ops {
        let i = i % items.len();
        if add || present.is_empty() {
            est.add(&mut agg, &items[i], phase);
            present.push((i, phase));
        } else {
            let (j, ph) = present.swap_remove(i % present.len());
            est.remove(&mut agg, &items[j], ph);
        }
    }
    let mut fresh = est.empty(Resource::Net, GRID);
    for (j, ph) in &present {
        est.add(&mut fresh, &items[*j], *ph);
    }
    assert_eq!(agg, fresh, "{} drifted", est.name());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn estimator_add_remove_equals_recomputation(
        comps in prop::collection::vec(series_strategy(), 1..6),
        ops in prop::collection::vec((0usize..100, 0usize..GRID, any::<bool>()), 0..60),
    ) {
        check_add_remove(Empirical, &comps, &ops);
        check_add_remove(Gaussian, &comps, &ops);
        check_add_remove(Chernoff, &comps, &ops);
        check_add_remove(Peak, &comps, &ops);
        check_add_remove(Mean, &comps, &ops);
    }

    #[test]
    fn eq_4_1_matches_brute_force_percentile(
        comps in prop::collection::vec((series_strategy(), 0usize..GRID), 1..6),
        limit in 0u64..200_000,
        conf in 0.5f64..0.99,
    ) {
        let est = Empirical;
        let mut agg = est.empty(Resource::Cpu, GRID);
        let (last, rest) = comps.split_last().unwrap();
        for (c, ph) in rest {
            est.add(&mut agg, &est.item(Resource::Cpu, &Arc::<[u64]>::from(c.clone())), *ph);
        }
        let newcomer = est.item(Resource::Cpu, &Arc::<[u64]>::from(last.0.clone()));
        let mut scratch = Vec::new();
        let admitted = est.level_with(&agg, &[(newcomer, last.1)], conf, &mut scratch) < limit as f64;
        // Brute force: P(Σ U_i(t) < limit) over the intervals, against C.
        let below = (0..GRID)
            .filter(|&t| {
                let sum: u64 = comps.iter().map(|(c, ph)| c[(t + ph) % GRID]).sum();
                sum < limit
            })
            .count();
        let brute = below >= rank(conf, GRID);
        prop_assert_eq!(admitted, brute);
        prop_assert_eq!(brute, below as f64 / GRID as f64 >= conf - 1e-9);
    }

    #[test]
    fn tournament_tree_equals_linear_scan(
        leaves in prop::collection::vec(
            (any::<bool>(), 0u64..100, -5.0f64..20.0, -5.0f64..20.0, any::<bool>()), 1..70),
        updates in prop::collection::vec((0usize..70, 0u64..100, -5.0f64..20.0), 0..20),
        mem in 0u64..100,
        lb in (0.0f64..10.0, 0.0f64..10.0),
    ) {
        let mut t = PlacementIndex::new();
        let mut mask = Vec::new();
        for (slot, (alive, free, h0, h1, m)) in leaves.iter().enumerate() {
            t.set(slot, Leaf { alive: *alive, free_mem: *free, head: [*h0, *h1] });
            mask.push(*m);
        }
        for (slot, free, h0) in updates {
            let slot = slot % leaves.len();
            let old = t.leaf(slot);
            t.set(slot, Leaf { free_mem: free, head: [h0, old.head[1]], ..old });
        }
        let need = Need { mem, lb: [lb.0, lb.1] };
        let snapshot = t.clone();
        // The full test must imply the lower bounds (that is what the engine guarantees).
        let fits = |s: usize| {
            let l = snapshot.leaf(s);
            mask[s] && l.head[0] >= need.lb[0] && l.head[1] >= need.lb[1]
        };
        for p in Policy::ALL {
            prop_assert_eq!(t.search(p, &need, fits), t.linear(p, &need, fits), "{:?}", p);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Whole-engine sequences
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    AdmitService { profile: usize, clients: u32 },
    AdmitClient { pick: usize },
    ReleaseClient { pick: usize },
    ReleaseService { pick: usize },
    FailNode { pick: usize },
    AddNode { class: usize },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..6, 0u32..4).prop_map(|(profile, clients)| Op::AdmitService { profile, clients }),
        6 => (0usize..1000).prop_map(|pick| Op::AdmitClient { pick }),
        3 => (0usize..1000).prop_map(|pick| Op::ReleaseClient { pick }),
        2 => (0usize..1000).prop_map(|pick| Op::ReleaseService { pick }),
        1 => (0usize..1000).prop_map(|pick| Op::FailNode { pick }),
        1 => (0usize..3).prop_map(|class| Op::AddNode { class }),
    ]
}

fn test_profile(i: usize, seed: u64) -> ServiceProfile {
    // Small deterministic bursty series; working sets 40..240 MB.
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(i as u64);
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut s = |scale: f64| -> Vec<f64> {
        (0..GRID)
            .map(|_| {
                let u = next();
                if u > 0.9 { scale * 4.0 * u } else { scale * u }
            })
            .collect()
    };
    ServiceProfile {
        version: PROFILE_FORMAT_VERSION,
        service: format!("p{i}"),
        interval_ms: 1000,
        base: Series {
            cpu_cores: s(0.3),
            net_bps: s(20e6),
            mem_bytes: vec![0; GRID],
        },
        per_client: Some(Series {
            cpu_cores: s(0.01),
            net_bps: s(4e6),
            mem_bytes: vec![if i.is_multiple_of(2) { 1 << 20 } else { 0 }; GRID],
        }),
        working_set_bytes: (40 + 40 * i as u64) << 20,
        video: None,
    }
}

fn node_class(c: usize) -> NodeSpec {
    match c % 3 {
        0 => NodeSpec::new(300 << 20, 1.0, 100e6),
        1 => NodeSpec::new(600 << 20, 2.0, 200e6),
        _ => NodeSpec::new(1000 << 20, 4.0, 400e6),
    }
}

fn run_sequence<E: Estimator>(est: E, policy: Policy, ops: &[Op], seed: u64) {
    let cfg = EngineConfig {
        grid: GRID,
        policy,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(est, cfg).unwrap();
    let profiles: Vec<_> = (0..6)
        .map(|i| e.register_profile(&test_profile(i, seed)).unwrap())
        .collect();
    let mut next_key = 0u64;
    for c in 0..4 {
        e.add_node(NodeId(next_key), node_class(c)).unwrap();
        next_key += 1;
    }
    let services = |e: &Engine<E>| -> Vec<ServiceId> { e.placements().keys().copied().collect() };
    for op in ops {
        let before = e.placements();
        let statuses: Vec<_> = e
            .node_keys()
            .into_iter()
            .map(|k| e.node_status(k).unwrap())
            .collect();
        let mut rejected = false;
        match op {
            Op::AdmitService { profile, clients } => {
                // The index must agree with a linear scan before deciding.
                let p = profiles[*profile];
                assert_eq!(e.index_choice(p, *clients), e.linear_choice(p, *clients));
                match e.admit_service(p, *clients) {
                    Ok(d) => {
                        assert_eq!(e.node_of(d.service), Some(d.node));
                        for m in &d.migrations {
                            assert!(
                                e.node_of(m.service).is_some(),
                                "MS unplaced {:?}",
                                m.service
                            );
                        }
                    }
                    Err(_) => rejected = true,
                }
            }
            Op::AdmitClient { pick } => {
                let s = services(&e);
                if s.is_empty() {
                    continue;
                }
                match e.admit_client(s[pick % s.len()]) {
                    Ok(cd) => assert_eq!(e.service_of(cd.client), Some(cd.service)),
                    Err(Rejection::UnknownService(_)) => panic!("service vanished"),
                    Err(_) => rejected = true,
                }
            }
            Op::ReleaseClient { pick } => {
                let all: Vec<_> = e
                    .placements()
                    .values()
                    .flat_map(|(_, c)| c.clone())
                    .collect();
                if !all.is_empty() {
                    e.release_client(all[pick % all.len()]).unwrap();
                }
            }
            Op::ReleaseService { pick } => {
                let s = services(&e);
                if !s.is_empty() {
                    e.release_service(s[pick % s.len()]).unwrap();
                }
            }
            Op::FailNode { pick } => {
                let keys = e.node_keys();
                if keys.len() > 1 {
                    let ev = e.node_failed(keys[pick % keys.len()]).unwrap();
                    for x in ev {
                        let _ = e.readmit(&x);
                    }
                }
            }
            Op::AddNode { class } => {
                e.add_node(NodeId(next_key), node_class(*class)).unwrap();
                next_key += 1;
            }
        }
        if rejected {
            assert_eq!(
                e.placements(),
                before,
                "rejected admission changed placements"
            );
            let after: Vec<_> = e
                .node_keys()
                .into_iter()
                .map(|k| e.node_status(k).unwrap())
                .collect();
            assert_eq!(after, statuses, "rejected admission changed node state");
        }
        // Aggregates equal a recomputation, memory never overbooked, every service placed
        // on a live node.
        e.verify().unwrap();
        for (sid, (node, _)) in e.placements() {
            assert!(e.node_status(node).is_some(), "{sid:?} on a dead node");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_invariants_hold_under_random_sequences(
        ops in prop::collection::vec(op_strategy(), 1..80),
        seed in any::<u64>(),
        policy in prop_oneof![Just(Policy::WorstFit), Just(Policy::FirstFit), Just(Policy::BestFit)],
    ) {
        run_sequence(Empirical, policy, &ops, seed);
        run_sequence(Gaussian, policy, &ops, seed);
        run_sequence(Chernoff, policy, &ops, seed);
        run_sequence(Peak, policy, &ops, seed);
    }
}
