//! Engine unit tests.

use super::*;
use crate::estimator::{Empirical, Peak};
use crate::profile::{PROFILE_FORMAT_VERSION, Series};

const MB: u64 = 1 << 20;

fn series(cpu: f64, net: f64) -> Series {
    Series {
        cpu_cores: vec![cpu; 4],
        net_bps: vec![net; 4],
        mem_bytes: vec![0; 4],
    }
}

fn profile(ws_mb: u64, cpu: f64, net: f64, client_net: Option<f64>) -> ServiceProfile {
    ServiceProfile {
        version: PROFILE_FORMAT_VERSION,
        service: "t".into(),
        interval_ms: 1000,
        base: series(cpu, net),
        per_client: client_net.map(|n| series(0.0, n)),
        working_set_bytes: ws_mb * MB,
        video: None,
    }
}

fn engine(nodes: &[(u64, f64, f64)]) -> Engine<Peak> {
    let cfg = EngineConfig {
        grid: 4,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(Peak, cfg).unwrap();
    for (i, (mem, cpu, net)) in nodes.iter().enumerate() {
        let mut spec = NodeSpec::new(mem * MB, *cpu, *net);
        spec.vr = 1.0;
        e.add_node(NodeId(i as u64), spec).unwrap();
    }
    e
}

#[test]
fn move_elsewhere_picks_another_node_or_changes_nothing() {
    let mut e = engine(&[(100, 4.0, 1e9), (300, 4.0, 1e9)]);
    let p = e
        .register_profile(&profile(80, 0.1, 1e6, Some(1e5)))
        .unwrap();
    let d = e.admit_service(p, 2).unwrap();
    assert_eq!(d.node, NodeId(1));
    assert_eq!(e.move_elsewhere(d.service), Ok(NodeId(0)));
    assert_eq!(e.node_of(d.service), Some(NodeId(0)));
    assert_eq!(e.clients_of(d.service).unwrap().len(), 2);
    e.verify().unwrap();
    // Node 1 filled up to 20 MB free: the service cannot go back there.
    let big = e.register_profile(&profile(280, 0.1, 1e6, None)).unwrap();
    assert_eq!(e.admit_service(big, 0).unwrap().node, NodeId(1));
    assert_eq!(e.move_elsewhere(d.service), Err(Rejection::NoFit));
    assert_eq!(e.node_of(d.service), Some(NodeId(0)));
    e.verify().unwrap();
    assert_eq!(
        e.move_elsewhere(ServiceId(99)),
        Err(Rejection::UnknownService(ServiceId(99)))
    );
}

#[test]
fn worst_fit_spreads_and_memory_is_never_overbooked() {
    let mut e = engine(&[(100, 4.0, 1e9), (300, 4.0, 1e9)]);
    let p = e.register_profile(&profile(120, 0.1, 1e6, None)).unwrap();
    let d1 = e.admit_service(p, 0).unwrap();
    assert_eq!((d1.node, d1.migrations.len()), (NodeId(1), 0));
    let d2 = e.admit_service(p, 0).unwrap();
    assert_eq!(d2.node, NodeId(1));
    // 60 MB left on node 1, 100 MB on node 0: 120 MB fits nowhere, and MS cannot help
    // because moving a 120 MB service frees room only where nothing else fits.
    assert_eq!(e.admit_service(p, 0), Err(Rejection::NoFit));
    e.verify().unwrap();
}

#[test]
fn adopt_rebuilds_the_same_state_as_the_admissions() {
    let mut a = engine(&[(300, 4.0, 1e9), (300, 4.0, 1e9)]);
    let p = a
        .register_profile(&profile(50, 0.1, 1e6, Some(4e5)))
        .unwrap();
    let d1 = a.admit_service(p, 2).unwrap();
    let d2 = a.admit_service(p, 1).unwrap();
    // A new Control learns the same placements from reports.
    let mut b = engine(&[(300, 4.0, 1e9), (300, 4.0, 1e9)]);
    let pb = b
        .register_profile(&profile(50, 0.1, 1e6, Some(4e5)))
        .unwrap();
    for d in [&d1, &d2] {
        let ev = Evicted {
            service: d.service,
            profile: pb,
            clients: d.clients.clone(),
        };
        b.adopt(&ev, d.node).unwrap();
    }
    assert_eq!(a.placements(), b.placements());
    assert_eq!(
        a.node_status(d1.node).unwrap().used_mem,
        b.node_status(d1.node).unwrap().used_mem
    );
    b.verify().unwrap();
    // Twice is refused; new ids do not collide with adopted ones.
    let again = Evicted {
        service: d1.service,
        profile: pb,
        clients: vec![],
    };
    assert!(b.adopt(&again, d1.node).is_err());
    let d3 = b.admit_service(pb, 1).unwrap();
    assert!(d3.service.0 > d2.service.0);
    assert!(d3.clients[0].0 > d2.clients[0].0);
}

#[test]
fn migrate_the_smallest_moves_one_service_and_reports_it() {
    // Node 0: 100 MB; node 1: 60 MB. Put a 50 MB service on node 0 (worst-fit), then a
    // 60 MB one fills node 1. An 80 MB newcomer fits nowhere, until the 50 MB service
    // leaves node 0 ... but node 1 is full, so it needs a third node.
    let mut e = engine(&[(100, 4.0, 1e9), (60, 4.0, 1e9), (55, 4.0, 1e9)]);
    let small = e.register_profile(&profile(50, 0.1, 1e6, None)).unwrap();
    let big = e.register_profile(&profile(80, 0.1, 1e6, None)).unwrap();
    let s = e.admit_service(small, 0).unwrap();
    assert_eq!(s.node, NodeId(0));
    let d = e.admit_service(big, 0).unwrap();
    assert_eq!(d.node, NodeId(0));
    assert_eq!(
        d.migrations,
        vec![Migration {
            service: s.service,
            from: NodeId(0),
            to: NodeId(1),
        }]
    );
    assert_eq!(e.node_of(s.service), Some(NodeId(1)));
    e.verify().unwrap();
}

#[test]
fn migrate_the_smallest_chains_up_to_its_depth() {
    let setup = |depth: u32| {
        let mut e = engine(&[(100, 4.0, 1e9), (60, 4.0, 1e9), (40, 4.0, 1e9)]);
        e.cfg.ms_depth = depth;
        let v = e.register_profile(&profile(50, 0.1, 1e6, None)).unwrap();
        let w = e.register_profile(&profile(30, 0.1, 1e6, None)).unwrap();
        let x = e.register_profile(&profile(80, 0.1, 1e6, None)).unwrap();
        let dv = e.admit_service(v, 0).unwrap();
        let dw = e.admit_service(w, 0).unwrap();
        assert_eq!((dv.node, dw.node), (NodeId(0), NodeId(1)));
        (e, x, dv.service, dw.service)
    };
    // 80 MB fits nowhere; v (50 MB) must leave node 0 for node 1, which needs w (30 MB)
    // to leave for node 2 first: a chain of two.
    let (mut e, x, v, w) = setup(2);
    let d = e.admit_service(x, 0).unwrap();
    assert_eq!(d.node, NodeId(0));
    assert_eq!(
        d.migrations,
        vec![
            Migration {
                service: w,
                from: NodeId(1),
                to: NodeId(2),
            },
            Migration {
                service: v,
                from: NodeId(0),
                to: NodeId(1),
            },
        ]
    );
    e.verify().unwrap();
    // With depth 1 the same request is refused and nothing moves.
    let (mut e, x, _, _) = setup(1);
    let before = e.placements();
    assert_eq!(e.admit_service(x, 0), Err(Rejection::NoFit));
    assert_eq!(e.placements(), before);
    e.verify().unwrap();
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let mut e = engine(&[(1000, 4.0, 1e9)]);
    let mut nan = profile(10, 0.1, 1e6, None);
    nan.base.cpu_cores[1] = f64::NAN;
    assert!(matches!(
        e.register_profile(&nan),
        Err(EngineError::BadProfile { .. })
    ));
    let mut empty = profile(10, 0.1, 1e6, None);
    empty.base.mem_bytes.clear();
    assert!(matches!(
        e.register_profile(&empty),
        Err(EngineError::BadProfile { .. })
    ));
    let mut spec = NodeSpec::new(MB, 1.0, 1e6);
    spec.conf = 1.0;
    assert!(matches!(
        e.add_node(NodeId(9), spec),
        Err(EngineError::BadSpec(_))
    ));
    assert!(matches!(
        e.add_node(NodeId(0), NodeSpec::new(MB, 1.0, 1e6)),
        Err(EngineError::DuplicateNode(NodeId(0)))
    ));
    // A hostile per-client memory cannot overflow: the load simply fits nowhere.
    let mut huge = profile(10, 0.1, 1e6, Some(1e3));
    huge.per_client.as_mut().unwrap().mem_bytes = vec![u64::MAX; 4];
    let p = e.register_profile(&huge).unwrap();
    assert_eq!(e.admit_service(p, 3), Err(Rejection::NoFit));
    assert_eq!(
        e.admit_service(ProfileId(99), 0),
        Err(Rejection::UnknownProfile(ProfileId(99)))
    );
    assert_eq!(
        e.release_client(ClientId(5)),
        Err(EngineError::UnknownClient(ClientId(5)))
    );
    e.verify().unwrap();
}

#[test]
fn failed_migration_changes_nothing() {
    let mut e = engine(&[(100, 4.0, 1e9), (40, 4.0, 1e9)]);
    let small = e.register_profile(&profile(50, 0.1, 1e6, None)).unwrap();
    let big = e.register_profile(&profile(80, 0.1, 1e6, None)).unwrap();
    e.admit_service(small, 0).unwrap();
    let before = e.placements();
    assert_eq!(e.admit_service(big, 0), Err(Rejection::NoFit));
    assert_eq!(e.placements(), before);
    e.verify().unwrap();
}

#[test]
fn client_joins_its_distributor_and_ms_moves_another_away() {
    // Node 0 (worst-fit first) has 10 Mbit/s; each distributor base uses 2 Mbit/s, each
    // client 1 Mbit/s.
    let mut e = engine(&[(1000, 4.0, 10e6), (500, 4.0, 10e6)]);
    let video = e
        .register_profile(&profile(100, 0.1, 2e6, Some(1e6)))
        .unwrap();
    let other = e
        .register_profile(&profile(50, 0.1, 2e6, Some(1e6)))
        .unwrap();
    let a = e.admit_service(video, 1).unwrap();
    assert_eq!(a.node, NodeId(0));
    let b = e.admit_service(other, 1).unwrap();
    assert_eq!(b.node, NodeId(0), "still the most free memory");
    // Node 0 uses 2+1+2+1 = 6 Mbit/s. Three more clients of `video` fill it to 9.
    for _ in 0..3 {
        let c = e.admit_client(a.service).unwrap();
        assert!(c.migrations.is_empty());
    }
    // The next one needs the other distributor (3 Mbit/s) to move to node 1.
    let c = e.admit_client(a.service).unwrap();
    assert_eq!(c.node, NodeId(0));
    assert_eq!(
        c.migrations,
        vec![Migration {
            service: b.service,
            from: NodeId(0),
            to: NodeId(1),
        }]
    );
    assert_eq!(e.clients_of(a.service).unwrap().len(), 5);
    e.verify().unwrap();
    // Releasing returns everything.
    e.release_client(c.client).unwrap();
    let gone = e.release_service(a.service).unwrap();
    assert_eq!(gone.len(), 4);
    e.release_service(b.service).unwrap();
    assert_eq!((e.service_count(), e.client_count()), (0, 0));
    e.verify().unwrap();
}

#[test]
fn cluster_test_rejects_fast() {
    let mut e = engine(&[(1000, 1.0, 1e9), (1000, 1.0, 1e9)]);
    let p = e.register_profile(&profile(10, 0.6, 1e6, None)).unwrap();
    let q = e.register_profile(&profile(10, 0.9, 1e6, None)).unwrap();
    e.admit_service(p, 0).unwrap();
    e.admit_service(p, 0).unwrap();
    // 1.2 + 0.9 cores exceed the cluster's 2.0 before any node is tried.
    assert_eq!(
        e.admit_service(q, 0),
        Err(Rejection::ClusterCapacity(Resource::Cpu))
    );
}

#[test]
fn failed_node_services_are_readmitted_with_their_ids() {
    let mut e = engine(&[(1000, 4.0, 1e9), (1000, 4.0, 1e9)]);
    let p = e
        .register_profile(&profile(100, 0.1, 1e6, Some(1e5)))
        .unwrap();
    let d = e.admit_service(p, 2).unwrap();
    let ev = e.node_failed(d.node).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].clients, d.clients);
    assert_eq!(e.service_count(), 0);
    let again = e.readmit(&ev[0]).unwrap();
    assert_eq!(again.service, d.service);
    assert_ne!(again.node, d.node);
    assert_eq!(e.service_of(d.clients[0]), Some(d.service));
    assert_eq!(e.readmit(&ev[0]), Err(Rejection::DuplicateId(d.service)));
    e.verify().unwrap();
}

#[test]
fn empirical_overbooks_where_peak_cannot() {
    // Bursts in 1 of 4 intervals at different phases: peaks sum to 4 cores, but at
    // C = 0.75 the aligned sums never exceed 2.
    let mk = |k: usize| {
        let mut cpu = vec![0.5; 4];
        cpu[k] = 1.0;
        ServiceProfile {
            version: PROFILE_FORMAT_VERSION,
            service: "b".into(),
            interval_ms: 1000,
            base: Series {
                cpu_cores: cpu,
                net_bps: vec![0.0; 4],
                mem_bytes: vec![0; 4],
            },
            per_client: None,
            working_set_bytes: MB,
            video: None,
        }
    };
    let cfg = EngineConfig {
        grid: 4,
        cluster_conf: 0.5,
        ..EngineConfig::default()
    };
    let mut spec = NodeSpec::new(1000 * MB, 2.6, 1e9);
    spec.vr = 1.0;
    spec.conf = 0.75;
    let mut emp = Engine::new(Empirical, cfg).unwrap();
    let mut peak = Engine::new(Peak, cfg).unwrap();
    emp.add_node(NodeId(0), spec).unwrap();
    peak.add_node(NodeId(0), spec).unwrap();
    let (mut ne, mut np) = (0, 0);
    for k in 0..4 {
        let pe = emp.register_profile(&mk(k)).unwrap();
        let pp = peak.register_profile(&mk(k)).unwrap();
        ne += emp.admit_service(pe, 0).is_ok() as u32;
        np += peak.admit_service(pp, 0).is_ok() as u32;
    }
    // Empirical: 4 services give sums 2.5 everywhere (< 2.6). Peak: 1.0 each → 2 fit.
    assert_eq!((ne, np), (4, 2));
}

#[test]
fn resize_grows_in_place_moves_when_it_must_and_otherwise_changes_nothing() {
    // n0 8 GB, n1 6 GB (in MB); worst fit puts the first two services on n0.
    let mut e = engine(&[(8192, 4.0, 1e9), (6000, 4.0, 1e9)]);
    let p = |mb| profile(mb, 0.1, 1e6, None);
    let (small, three, giant, big) = (
        e.register_profile(&p(1024)).unwrap(),
        e.register_profile(&p(3072)).unwrap(),
        e.register_profile(&p(20_000)).unwrap(),
        e.register_profile(&p(5500)).unwrap(),
    );
    let d = e.admit_service(small, 0).unwrap();
    let other = e.admit_service(three, 0).unwrap();
    assert_eq!((d.node, other.node), (NodeId(0), NodeId(0)));
    // Grows in place: n0 has room.
    assert_eq!(e.resize(d.service, three), Ok(None));
    assert_eq!(e.node_status(NodeId(0)).unwrap().used_mem, 6144 * MB);
    // Too big for any node: refused, nothing changes.
    assert_eq!(e.resize(d.service, giant), Err(Rejection::NoFit));
    assert_eq!(e.node_of(d.service), Some(NodeId(0)));
    assert_eq!(e.node_status(NodeId(0)).unwrap().used_mem, 6144 * MB);
    // No longer fits beside `other` on n0 (5120 MB free without it), fits on n1: moves.
    assert_eq!(e.resize(d.service, big), Ok(Some(NodeId(1))));
    assert_eq!(e.node_of(d.service), Some(NodeId(1)));
    assert_eq!(e.node_status(NodeId(0)).unwrap().used_mem, 3072 * MB);
    assert_eq!(e.node_status(NodeId(1)).unwrap().used_mem, 5500 * MB);
    e.verify().unwrap();
}

#[test]
fn move_avoiding_skips_the_nodes_named_and_changes_nothing_when_none_is_left() {
    let mut e = engine(&[(100, 4.0, 1e9), (300, 4.0, 1e9), (200, 4.0, 1e9)]);
    let p = e.register_profile(&profile(80, 0.1, 1e6, None)).unwrap();
    let d = e.admit_service(p, 1).unwrap();
    assert_eq!(d.node, NodeId(1));
    // Worst fit would pick node 2; it is avoided, so node 0.
    assert_eq!(e.move_avoiding(d.service, &[NodeId(2)]), Ok(NodeId(0)));
    assert_eq!(e.node_of(d.service), Some(NodeId(0)));
    // Its own node and every other one avoided (an unknown key is ignored).
    assert_eq!(
        e.move_avoiding(d.service, &[NodeId(1), NodeId(2), NodeId(9)]),
        Err(Rejection::NoFit)
    );
    assert_eq!(e.node_of(d.service), Some(NodeId(0)));
    e.verify().unwrap();
}

#[test]
fn adopted_services_and_clients_get_fresh_ids_without_a_test() {
    let mut e = engine(&[(200, 4.0, 1e9)]);
    let p = e
        .register_profile(&profile(80, 0.1, 1e6, Some(1e5)))
        .unwrap();
    let d = e.admit_service(p, 2).unwrap();
    let ev = e.adopt_new(p, NodeId(0), 3).unwrap();
    assert_ne!(ev.service, d.service);
    assert_eq!(ev.clients.len(), 3);
    assert!(ev.clients.iter().all(|c| !d.clients.contains(c)));
    let more = e.adopt_clients(d.service, 2).unwrap();
    assert_eq!(more.len(), 2);
    assert!(
        more.iter()
            .all(|c| !ev.clients.contains(c) && !d.clients.contains(c))
    );
    assert_eq!(e.clients_of(d.service).unwrap().len(), 4);
    assert_eq!(e.node_of(d.service), Some(NodeId(0)));
    assert_eq!(e.client_count(), 7);
    e.verify().unwrap();
    assert_eq!(
        e.adopt_clients(ServiceId(99), 1),
        Err(EngineError::UnknownService(ServiceId(99)))
    );
    assert_eq!(
        e.adopt_new(p, NodeId(5), 0).map(|ev| ev.service),
        Err(EngineError::UnknownNode(NodeId(5)))
    );
}
