//! The Control actor over in-process Agent86 actors running real processes: the shell
//! executes the engine's decisions end to end (the engine's own tests, on exact outputs,
//! are in `engine/tests/`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use smart_proto::agent::{AgentEvent, AgentReport};
use smart_proto::api::{ApiError, Placement, ServiceSpec};

use super::*;

mod test_support {
    //! Shared by the Control's test modules.
    use super::*;
    use crate::peer::BoxFuture;
    use smart_agent86::{Agent86, Agent86Msg, Agent86Settings, AgentCore};
    use smart_membership::epoch::MemoryEpochStore;

    /// Routes agent commands straight to in-process Agent86 actors by address, as node
    /// `from`; other requests (replicas, events) and unknown addresses fail like an
    /// unreachable peer.
    pub(super) struct Direct(pub(super) BTreeMap<SocketAddr, ActorRef<Agent86Msg>>);

    impl PeerClient for Direct {
        fn request(
            &self,
            to: SocketAddr,
            req: NodeRequest,
            timeout: Duration,
        ) -> BoxFuture<'_, Result<NodeResponse, PeerError>> {
            Box::pin(async move {
                let a = self.0.get(&to).ok_or(PeerError::Timeout(to))?;
                let NodeRequest::Agent { epoch, cmd } = req else {
                    return Err(PeerError::Timeout(to));
                };
                a.call(
                    |reply| Agent86Msg::Command {
                        from: NodeId(1),
                        epoch,
                        cmd,
                        reply,
                    },
                    Some(timeout),
                )
                .await
                .map_err(|_| PeerError::Timeout(to))?
                .success_or(PeerError::Timeout(to))
                .map(NodeResponse::Agent)
            })
        }
    }

    /// A view with these agents.
    pub(super) fn view(agents: Vec<AgentAddr>) -> ClusterView {
        ClusterView {
            agents,
            ..Default::default()
        }
    }

    /// Spawns Agent86 actors for nodes `1..=nodes` (process runtime under `dir`, node `n`
    /// on 127.0.0.n), each reachable through [`Direct`] at `127.0.0.n:1`.
    pub(super) async fn spawn_agents(
        dir: &std::path::Path,
        nodes: u64,
    ) -> (
        BTreeMap<SocketAddr, ActorRef<Agent86Msg>>,
        Vec<AgentAddr>,
        Vec<Arc<AgentCore>>,
    ) {
        let mut routes = BTreeMap::new();
        let mut addrs = Vec::new();
        let mut cores = Vec::new();
        for n in 1..=nodes {
            let core = AgentCore::new(
                NodeId(n),
                Agent86Settings {
                    ready_timeout: Duration::from_millis(100),
                    ..Agent86Settings::new(
                        dir.join(format!("n{n}")),
                        format!("127.0.0.{n}").parse().unwrap(),
                    )
                },
                0,
            )
            .unwrap();
            cores.push(core.clone());
            let (a, _) = Actor::spawn(
                None,
                Agent86 {
                    node: NodeId(n),
                    epochs: Arc::new(MemoryEpochStore::new(0)),
                    core,
                    panic_on_message: None,
                },
                (),
            )
            .await
            .unwrap();
            let addr: SocketAddr = format!("127.0.0.{n}:1").parse().unwrap();
            routes.insert(addr, a);
            addrs.push(AgentAddr {
                node: NodeId(n),
                addr,
            });
        }
        (routes, addrs, cores)
    }
}

mod rebuild_tests {
    use super::*;
    use ractor::call_t;
    use smart_agent86::{Agent86, Agent86Msg};
    use smart_membership::epoch::{EpochStore, MemoryEpochStore};
    use std::sync::Mutex;

    /// Routes requests straight to in-process Agent86 actors by address.
    use super::test_support::Direct;

    async fn agent(node: u64, store: MemoryEpochStore) -> ActorRef<Agent86Msg> {
        let dir = std::env::temp_dir().join(format!(
            "smart-control-test-{}-{node}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let core = smart_agent86::AgentCore::new(
            NodeId(node),
            smart_agent86::Agent86Settings::new(&dir, "127.0.0.1".parse().unwrap()),
            store.highest(),
        )
        .unwrap();
        Actor::spawn(
            None,
            Agent86 {
                node: NodeId(node),
                epochs: Arc::new(store),
                core,
                panic_on_message: None,
            },
            (),
        )
        .await
        .unwrap()
        .0
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::SeqCst)
    }

    #[tokio::test]
    async fn rebuilds_from_reports_then_a_deposed_control_steps_down() {
        let stores = [MemoryEpochStore::new(0), MemoryEpochStore::new(0)];
        let mut routes = BTreeMap::new();
        let mut addrs = Vec::new();
        for (i, s) in stores.iter().enumerate() {
            let addr: SocketAddr = format!("127.0.0.{}:1", i + 1).parse().unwrap();
            routes.insert(addr, agent(i as u64 + 1, s.clone()).await);
            addrs.push(AgentAddr {
                node: NodeId(i as u64 + 1),
                addr,
            });
        }
        let peers: Arc<dyn PeerClient> = Arc::new(Direct(routes));
        let (_tx, rx) = watch::channel(test_support::view(addrs));
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let (acting_tx, acting_rx) = watch::channel(ActingLease::default());
        let (c, handle) = Actor::spawn(
            None,
            Control {
                node: NodeId(1),
                epoch: 3,
                acting: false,
                acting_source: Arc::new(acting_rx),
                peers,
                view: rx,
                events: Arc::new(move |e| ev.lock().unwrap().push(e)),
                publish: Arc::new(|_| {}),
                refresh: Duration::from_millis(20),
                replica: Replica::default(),
                desired: None,
                tuning: ControlTuning {
                    request_timeout: Duration::from_millis(500),
                    admission: super::engine::tests::settings(),
                    ..ControlTuning::default()
                },
            },
            (),
        )
        .await
        .unwrap();
        let s = call_t!(c, ControlMsg::Status, 1000).unwrap();
        assert!(
            s.rebuilt && !s.acting,
            "rebuilt, but not acting until the engine says so"
        );
        acting_tx.send_replace(ActingLease {
            epoch: Some(3),
            until: None,
        });
        c.send_message(ControlMsg::ActingChanged).unwrap();
        assert_eq!(s.agents.len(), 2);
        assert_eq!(
            events.lock().unwrap()[0],
            ControlEvent::Rebuilt {
                epoch: 3,
                agents: 2
            }
        );
        // A newer Control appears on agent 2's node: our next refresh is refused there.
        stores[1].raise(4).unwrap();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("stale control stops")
            .unwrap();
        assert!(events.lock().unwrap().contains(&ControlEvent::Stale {
            epoch: 3,
            highest: 4
        }));
    }
}

mod admission_tests {
    use super::*;
    use ractor::call_t;
    use std::sync::Mutex;

    use super::test_support::{Direct, spawn_agents};

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            class: "distributor".into(),
            command: vec!["sh".into(), "-c".into(), "exec sleep 60 # {listen}".into()],
            env: vec![],
            per_client_bps: Some(400_000),
            duration_ms: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admits_places_starts_and_readmits_a_dead_nodes_services() {
        let dir = tempfile::tempdir().unwrap();
        let (routes, addrs, cores) = spawn_agents(dir.path(), 2).await;
        let (tx, rx) = watch::channel(test_support::view(addrs.clone()));
        let published = Arc::new(Mutex::new(Vec::new()));
        let p2 = published.clone();
        let (acting_tx, acting_rx) = watch::channel(ActingLease::default());
        let (c, _) = Actor::spawn(
            None,
            Control {
                node: NodeId(1),
                epoch: 1,
                acting: false,
                acting_source: Arc::new(acting_rx),
                peers: Arc::new(Direct(routes)),
                view: rx,
                events: Arc::new(|_| {}),
                publish: Arc::new(move |e| p2.lock().unwrap().push(e)),
                refresh: Duration::from_millis(200),
                replica: Replica::default(),
                desired: None,
                tuning: ControlTuning {
                    request_timeout: Duration::from_secs(2),
                    admission: super::engine::tests::settings(),
                    ..ControlTuning::default()
                },
            },
            (),
        )
        .await
        .unwrap();
        acting_tx.send_replace(ActingLease {
            epoch: Some(1),
            until: None,
        });
        c.send_message(ControlMsg::ActingChanged).unwrap();
        let api = |r: Request| {
            let c = c.clone();
            async move { call_t!(c, ControlMsg::Api, 10_000, r).unwrap() }
        };
        // Two services, placed by the engine (worst-fit).
        let Response::Placed(a) = api(Request::AdmitService(spec("video-a"))).await else {
            panic!("not placed")
        };
        let Response::Placed(b) = api(Request::AdmitService(spec("video-b"))).await else {
            panic!("not placed")
        };
        assert!([1, 2].contains(&a.node.0) && [1, 2].contains(&b.node.0));
        assert!(
            a.endpoint
                .starts_with(&format!("http://127.0.0.{}:", a.node.0))
        );
        // A client joins its service's instance (Smart-GloVE rule), with an id.
        assert_eq!(
            api(Request::AdmitClient {
                service: "video-a".into(),
                spec: None,
                key: None,
            })
            .await,
            Response::Placed(Placement {
                client: Some(1),
                ..a.clone()
            })
        );
        // Unknown services are an explained error.
        assert!(matches!(
            api(Request::AdmitClient {
                service: "nope".into(),
                spec: None,
                key: None,
            })
            .await,
            Response::Error(ApiError::NotFound { .. })
        ));
        // Node of video-a dies: it is re-admitted on the other node, with a new endpoint.
        let dead = a.node;
        tx.send(test_support::view(
            addrs.iter().copied().filter(|x| x.node != dead).collect(),
        ))
        .unwrap();
        cores[(dead.0 - 1) as usize].stop_all();
        let mut moved = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Response::Placed(p) = api(Request::Locate {
                service: "video-a".into(),
            })
            .await
                && p.node != dead
            {
                moved = Some(p);
                break;
            }
        }
        let moved = moved.expect("re-admitted elsewhere");
        assert_ne!(moved.endpoint, a.endpoint);
        let ev = published.lock().unwrap().clone();
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Migrated { service, reason, .. }
                if service == "video-a" && reason == "node-failure")),
            "{ev:?}"
        );
        let s = call_t!(c, ControlMsg::Status, 1000).unwrap();
        assert_eq!(s.services["video-a"].2, 1, "its client came along");
        // Only one node is left: a drain of it has nowhere to go, says so, and leaves
        // everything in place.
        let survivor = moved.node;
        let r = api(Request::Drain { node: survivor }).await;
        assert!(
            matches!(&r, Response::Error(ApiError::Rejected { reason }) if reason.contains("video-a")),
            "{r:?}"
        );
        let Response::Placed(still) = api(Request::Locate {
            service: "video-a".into(),
        })
        .await
        else {
            panic!()
        };
        assert_eq!(still.node, survivor);
        // The dead node comes back (empty). Then the survivor fails a health check (its
        // agent's notice): it is drained, both services move back, by restart since `sleep`
        // has no workload control API, and the events say so.
        tx.send(test_support::view(addrs.clone())).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let st = call_t!(c, ControlMsg::Status, 1000).unwrap();
        let mut rep = st.agents[&survivor].clone();
        rep.failing_checks = vec![("memory_available".into(), "1 % available".into())];
        let addr = addrs.iter().find(|a| a.node == survivor).unwrap().addr;
        c.send_message(ControlMsg::Input(Input::Reports {
            started: std::time::Instant::now() - Duration::from_secs(5),
            results: vec![(
                AgentAddr {
                    node: survivor,
                    addr,
                },
                Ok(AgentReply::Report(Box::new(rep))),
            )],
        }))
        .unwrap();
        let mut done = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let ev = published.lock().unwrap().clone();
            let restarted = ev
                .iter()
                .filter(|e| matches!(e, Event::Migrated { reason, to, .. }
                    if reason.starts_with("health") && reason.contains("no workload control API") && *to == dead))
                .count();
            if restarted == 2 {
                done = true;
                break;
            }
        }
        assert!(done, "{:?}", published.lock().unwrap());
        for svc in ["video-a", "video-b"] {
            let Response::Placed(p) = api(Request::Locate {
                service: svc.into(),
            })
            .await
            else {
                panic!()
            };
            assert_eq!(p.node, dead, "{svc} moved off the drained node");
        }
        for core in cores {
            core.stop_all();
        }
    }
}

mod reaction_tests {
    //! The Control's reactions to what agents observe: anomalies (thesis §4.1.1) and
    //! viewers who left without telling the front-end.
    use super::*;
    use ractor::call_t;
    use smart_agent86::AgentCore;
    use smart_proto::agent::{Resource, UsageReading};
    use std::sync::Mutex;

    use super::test_support::{Direct, spawn_agents};

    struct Cluster {
        c: ActorRef<ControlMsg>,
        published: Arc<Mutex<Vec<Event>>>,
        addrs: Vec<AgentAddr>,
        cores: Vec<Arc<AgentCore>>,
        _dir: tempfile::TempDir,
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            for core in &self.cores {
                core.stop_all();
            }
            self.c.stop(None);
        }
    }

    impl Cluster {
        async fn new(nodes: u64, tuning: ControlTuning) -> Cluster {
            let dir = tempfile::tempdir().unwrap();
            let (routes, addrs, cores) = spawn_agents(dir.path(), nodes).await;
            let (tx, rx) = watch::channel(test_support::view(addrs.clone()));
            std::mem::forget(tx);
            let published = Arc::new(Mutex::new(Vec::new()));
            let p2 = published.clone();
            let (acting_tx, acting_rx) = watch::channel(ActingLease::default());
            let (c, _) = Actor::spawn(
                None,
                Control {
                    node: NodeId(1),
                    epoch: 1,
                    acting: false,
                    acting_source: Arc::new(acting_rx),
                    peers: Arc::new(Direct(routes)),
                    view: rx,
                    events: Arc::new(|_| {}),
                    publish: Arc::new(move |e| p2.lock().unwrap().push(e)),
                    refresh: Duration::from_millis(200),
                    replica: Replica::default(),
                    desired: None,
                    tuning: ControlTuning {
                        request_timeout: Duration::from_secs(2),
                        admission: super::super::engine::tests::settings(),
                        ..tuning
                    },
                },
                (),
            )
            .await
            .unwrap();
            acting_tx.send_replace(ActingLease {
                epoch: Some(1),
                until: None,
            });
            c.send_message(ControlMsg::ActingChanged).unwrap();
            Cluster {
                c,
                published,
                addrs,
                cores,
                _dir: dir,
            }
        }

        async fn api(&self, r: Request) -> Response {
            call_t!(self.c, ControlMsg::Api, 10_000, r).unwrap()
        }

        async fn status(&self) -> ControlStatus {
            call_t!(self.c, ControlMsg::Status, 1000).unwrap()
        }

        async fn admit(&self, name: &str) -> Placement {
            match self.api(Request::AdmitService(spec(name))).await {
                Response::Placed(p) => p,
                other => panic!("{other:?}"),
            }
        }

        /// One node whose Control neither releases a client nor counts it settled for
        /// `window` after its service's placement and its admission.
        async fn with_release_window(window: Duration) -> Cluster {
            let tuning = ControlTuning {
                release_grace: window,
                arrival_window: window,
                ..ControlTuning::default()
            };
            Cluster::new(1, tuning).await
        }

        /// Admits one client of `service` (which must run).
        async fn admit_client(&self, service: &str) {
            let r = self
                .api(Request::AdmitClient {
                    service: service.into(),
                    spec: None,
                    key: None,
                })
                .await;
            assert!(matches!(r, Response::Placed(_)), "{r:?}");
        }

        /// The node's last report, once it lists `instance`.
        async fn report_listing(&self, node: NodeId, instance: &str) -> AgentReport {
            for _ in 0..100 {
                let s = self.status().await;
                if let Some(r) = s.agents.get(&node)
                    && r.instances.iter().any(|i| i.instance == instance)
                {
                    return r.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{node} never reported {instance}");
        }

        /// Delivers `rep` as if a refresh round had brought it.
        fn inject(&self, rep: AgentReport) {
            let addr = self.addrs.iter().find(|a| a.node == rep.node).unwrap();
            self.c
                .send_message(ControlMsg::Input(Input::Reports {
                    started: std::time::Instant::now() - Duration::from_secs(5),
                    results: vec![(*addr, Ok(AgentReply::Report(Box::new(rep))))],
                }))
                .unwrap();
        }

        fn events(&self) -> Vec<Event> {
            self.published.lock().unwrap().clone()
        }
    }

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            class: "distributor".into(),
            command: vec!["sh".into(), "-c".into(), "exec sleep 60 # {listen}".into()],
            env: vec![],
            per_client_bps: Some(400_000),
            duration_ms: None,
        }
    }

    fn anomaly(instance: &str) -> AgentEvent {
        AgentEvent::Anomaly {
            instance: instance.into(),
            resource: Resource::Cpu,
            observed: 0.5,
            reserved: 0.05,
        }
    }

    fn instance_of(s: &ControlStatus, service: &str) -> String {
        s.services[service].1.clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_anomalous_instance_is_grown_in_place_once_and_its_agent_gets_the_new_reservation() {
        let cl = Cluster::new(2, ControlTuning::default()).await;
        let a = cl.admit("video-a").await;
        let inst = instance_of(&cl.status().await, "video-a");
        let mut rep = cl.report_listing(a.node, &inst).await;
        rep.notices.push((1_000, anomaly(&inst)));
        cl.inject(rep);
        // Its node has room for 0.5 cores: grown where it is, not moved.
        let mut grown = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            grown = cl.events().iter().any(|e| matches!(e, Event::Notice { reason, .. }
                if reason == &format!("anomaly (Cpu at 0.500, reserved 0.050): reservation grown in place on {}", a.node)));
            if grown {
                break;
            }
        }
        assert!(grown, "{:?}", cl.events());
        // The next refresh sends the agent the grown reservation (and its CPU limit).
        let mut reserved = 0.0;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let s = cl.status().await;
            reserved = s.agents[&a.node]
                .instance(&inst)
                .map_or(0.0, |i| i.reservation.cpu_cores);
            if reserved >= 0.5 {
                break;
            }
        }
        assert!(reserved >= 0.5, "agent's reservation {reserved}");
        // The same cause again: kept, never acted on twice.
        let mut rep = cl.report_listing(a.node, &inst).await;
        rep.notices.push((2_000, anomaly(&inst)));
        cl.inject(rep);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ev = cl.events();
        assert!(
            !ev.iter().any(|e| matches!(e, Event::Migrated { .. })),
            "{ev:?}"
        );
        assert!(
            ev.iter()
                .any(|e| matches!(e, Event::Notice { reason, .. } if reason.contains("already grown or moved once for its Cpu"))),
            "{ev:?}"
        );
        assert_eq!(cl.status().await.services["video-a"].0, a.node);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_anomalous_instance_with_nowhere_to_go_is_kept_and_the_event_says_why() {
        let cl = Cluster::new(1, ControlTuning::default()).await;
        let a = cl.admit("video-a").await;
        let inst = instance_of(&cl.status().await, "video-a");
        let mut rep = cl.report_listing(a.node, &inst).await;
        // 100 cores: more than any node has.
        rep.notices.push((
            1_000,
            AgentEvent::Anomaly {
                instance: inst.clone(),
                resource: Resource::Cpu,
                observed: 100.0,
                reserved: 0.05,
            },
        ));
        cl.inject(rep);
        let mut notice = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            notice = cl.events().into_iter().find_map(|e| match e {
                Event::Notice { reason, node, .. } => Some((node, reason)),
                _ => None,
            });
            if notice.is_some() {
                break;
            }
        }
        let (node, reason) = notice.expect("a notice");
        assert_eq!(node, a.node);
        assert!(
            reason.contains("fits on no node at its observed size"),
            "{reason}"
        );
        let ev = cl.events();
        assert!(
            !ev.iter().any(|e| matches!(e, Event::Migrated { .. })),
            "{ev:?}"
        );
        let s = cl.status().await;
        assert_eq!(
            (s.services["video-a"].0, &s.services["video-a"].1),
            (a.node, &inst)
        );
    }

    /// `rep` with instance `inst` reporting `n` connected clients (and no load).
    fn counting(rep: &AgentReport, inst: &str, n: u32) -> AgentReport {
        let mut r = rep.clone();
        for i in &mut r.instances {
            if i.instance == inst {
                i.usage = Some(UsageReading {
                    instance: inst.to_string(),
                    cpu_cores: 0.0,
                    net_bps: None,
                    mem_bytes: 0,
                    clients: Some(n),
                    speaks_api: false,
                });
            }
        }
        r
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_left_are_released_after_two_refreshes_outside_the_grace_period() {
        let grace = Duration::from_millis(400);
        let cl = Cluster::with_release_window(grace).await;
        let a = cl.admit("video-a").await;
        for _ in 0..3 {
            cl.admit_client("video-a").await;
        }
        let inst = instance_of(&cl.status().await, "video-a");
        let rep = cl.report_listing(a.node, &inst).await;
        let with_clients = |n: u32| counting(&rep, &inst, n);
        let admitted = |s: &ControlStatus| s.services["video-a"].2;
        // Within the grace period after the placement, and the clients' arrival window:
        // nothing is released.
        cl.inject(with_clients(1));
        cl.inject(with_clients(1));
        let s = cl.status().await;
        assert_eq!((admitted(&s), s.engine_clients), (3, 3));
        tokio::time::sleep(grace + Duration::from_millis(100)).await;
        // One refresh with fewer viewers is not enough; a refresh with all of them resets.
        cl.inject(with_clients(1));
        assert_eq!(admitted(&cl.status().await), 3);
        cl.inject(with_clients(3));
        cl.inject(with_clients(1));
        assert_eq!(admitted(&cl.status().await), 3);
        // The second consecutive one releases the surplus: 2 clients.
        cl.inject(with_clients(1));
        let s = cl.status().await;
        assert_eq!((admitted(&s), s.engine_clients), (1, 1));
        let ev = cl.events();
        assert!(
            ev.contains(&Event::Notice {
                service: "video-a".into(),
                node: a.node,
                reason: "released 2 client(s): its instance reports 1 connected, 3 were admitted"
                    .into(),
            }),
            "{ev:?}"
        );
        // The engine freed them: the Control's view and a further release agree.
        assert_eq!(
            cl.api(Request::ReleaseClient {
                service: "video-a".into(),
                client: None,
            })
            .await,
            Response::Ok
        );
        assert!(matches!(
            cl.api(Request::ReleaseClient {
                service: "video-a".into(),
                client: None,
            })
            .await,
            Response::Error(ApiError::NotFound { .. })
        ));
    }

    /// Admissions that never arrive (a `/watch` flood whose redirects are not followed)
    /// are released one arrival window after they were made, however many new ones keep
    /// coming; clients still inside their window are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_of_admissions_does_not_delay_the_release_of_those_that_never_came() {
        let window = Duration::from_millis(400);
        let cl = Cluster::with_release_window(window).await;
        let a = cl.admit("video-a").await;
        // Four phantoms now; after their window, three more while the reports say 1.
        for _ in 0..4 {
            cl.admit_client("video-a").await;
        }
        tokio::time::sleep(window + Duration::from_millis(100)).await;
        for _ in 0..3 {
            cl.admit_client("video-a").await;
        }
        let inst = instance_of(&cl.status().await, "video-a");
        let rep = counting(&cl.report_listing(a.node, &inst).await, &inst, 1);
        cl.inject(rep.clone());
        cl.inject(rep.clone());
        // Settled: the first viewer's admission and the four phantoms; one is counted, so
        // four go. The three tentative ones stay.
        let s = cl.status().await;
        assert_eq!((s.services["video-a"].2, s.engine_clients), (4, 4));
        // Once their window passes too, they go as well.
        tokio::time::sleep(window + Duration::from_millis(100)).await;
        cl.inject(rep.clone());
        cl.inject(rep);
        let s = cl.status().await;
        assert_eq!((s.services["video-a"].2, s.engine_clients), (1, 1));
    }
}

/// A health drain's changes go to the desired-state log as such: drains for the nodes
/// newly failing, undrains (of the health kind only) for the ones that recovered.
#[test]
fn health_drain_changes_are_written_as_drains_and_undrains_of_the_health_kind() {
    let set = |ns: &[u64]| ns.iter().map(|n| NodeId(*n)).collect::<BTreeSet<_>>();
    assert_eq!(
        desired::health_drain_changes(&set(&[1, 2]), &set(&[2, 3])),
        vec![
            DesiredCmd::Drain {
                node: NodeId(3),
                by_health: true
            },
            DesiredCmd::Undrain {
                node: NodeId(1),
                by_health: true
            },
        ]
    );
    assert_eq!(
        desired::health_drain_changes(&set(&[4]), &set(&[4])),
        vec![]
    );
}
