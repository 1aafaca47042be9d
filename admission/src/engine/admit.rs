//! Admission (eq. 4.1 fast reject, per-node test, placement search), Migrate the Smallest,
//! re-admission and adoption, and the Smart-GloVE client rule.

use super::*;

impl<E: Estimator> Engine<E> {
    // -----------------------------------------------------------------------------------
    // Admission
    // -----------------------------------------------------------------------------------

    pub(super) fn cluster_fits(&mut self, load: &Load<E>) -> Result<(), Rejection> {
        if self.cluster_limit_stale {
            self.recompute_cluster_limit();
            self.cluster_limit_stale = false;
        }
        for r in Resource::ALL {
            let i = r.idx();
            let lvl = self.est.level_merged(
                &self.cluster[i],
                &load.agg[i],
                self.cfg.cluster_conf,
                &mut self.scratch,
            );
            if lvl >= self.cluster_limit[i] {
                return Err(Rejection::ClusterCapacity(r));
            }
        }
        Ok(())
    }

    /// Index search for `load` among live nodes not in `exclude`. Inside Migrate the
    /// Smallest (`limited`), every node test spends the decision's test budget, so that a
    /// full cluster rejects in bounded time.
    pub(super) fn search(
        &mut self,
        load: &Load<E>,
        exclude: &[usize],
        limited: bool,
    ) -> Option<usize> {
        let Engine {
            index,
            nodes,
            est,
            scratch,
            cfg,
            ms_tests_left,
            ..
        } = self;
        let max = if limited { *ms_tests_left } else { usize::MAX };
        let (found, used) = index.search_bounded(cfg.policy, &load.need(), max, |slot| {
            !exclude.contains(&slot) && node_fits(est, &nodes[slot], load, None, scratch)
        });
        if limited {
            *ms_tests_left -= used;
        }
        found
    }

    /// Reference placement by linear scan (for tests and benchmarks of the index).
    pub fn linear_choice(&mut self, profile: ProfileId, clients: u32) -> Option<NodeId> {
        let ids: Vec<ClientId> = (0..clients as u64)
            .map(|i| ClientId(self.next_client + i))
            .collect();
        let load = self.load_of(profile, true, &ids);
        let Engine {
            index,
            nodes,
            est,
            scratch,
            cfg,
            ..
        } = self;
        index
            .linear(cfg.policy, &load.need(), |slot| {
                node_fits(est, &nodes[slot], &load, None, scratch)
            })
            .map(|s| nodes[s].key)
    }

    /// Index placement without MS and without changing anything (the counterpart of
    /// [`linear_choice`](Self::linear_choice)).
    pub fn index_choice(&mut self, profile: ProfileId, clients: u32) -> Option<NodeId> {
        let ids: Vec<ClientId> = (0..clients as u64)
            .map(|i| ClientId(self.next_client + i))
            .collect();
        let load = self.load_of(profile, true, &ids);
        self.search(&load, &[], false).map(|s| self.nodes[s].key)
    }

    /// Admits a new service of `profile` with `initial_clients` clients (a distributor
    /// started for its first viewer has 1).
    pub fn admit_service(
        &mut self,
        profile: ProfileId,
        initial_clients: u32,
    ) -> Result<Decision, Rejection> {
        if profile.0 as usize >= self.profiles.len() {
            return Err(Rejection::UnknownProfile(profile));
        }
        let sid = ServiceId(self.next_service);
        let clients: Vec<ClientId> = (0..initial_clients as u64)
            .map(|i| ClientId(self.next_client + i))
            .collect();
        let d = self.admit_load(profile, sid, clients)?;
        self.next_service += 1;
        self.next_client += initial_clients as u64;
        Ok(d)
    }

    /// Re-admits a service evicted from a removed or failed node, keeping its ids.
    pub fn readmit(&mut self, ev: &Evicted) -> Result<Decision, Rejection> {
        if ev.profile.0 as usize >= self.profiles.len() {
            return Err(Rejection::UnknownProfile(ev.profile));
        }
        if self.services.contains_key(&ev.service)
            || ev.clients.iter().any(|c| self.clients.contains_key(c))
        {
            return Err(Rejection::DuplicateId(ev.service));
        }
        let d = self.admit_load(ev.profile, ev.service, ev.clients.clone())?;
        self.next_service = self.next_service.max(ev.service.0 + 1);
        let maxc = ev.clients.iter().map(|c| c.0 + 1).max().unwrap_or(0);
        self.next_client = self.next_client.max(maxc);
        Ok(d)
    }

    /// Records a service that already runs on `node` (a new Control rebuilding its state
    /// from Agent86 reports, thesis §4.2): no admission test, because the service was
    /// admitted before; the node's and the cluster's aggregates include it from now on.
    /// Ids are kept, and later admissions get fresh ones.
    pub fn adopt(&mut self, ev: &Evicted, node: NodeId) -> Result<(), EngineError> {
        if ev.profile.0 as usize >= self.profiles.len() {
            return Err(EngineError::BadSpec(format!(
                "unknown profile {:?}",
                ev.profile
            )));
        }
        if self.services.contains_key(&ev.service) {
            return Err(EngineError::BadSpec(format!(
                "service {:?} already placed",
                ev.service
            )));
        }
        if let Some(c) = ev.clients.iter().find(|c| self.clients.contains_key(c)) {
            return Err(EngineError::BadSpec(format!("client {c:?} already placed")));
        }
        let slot = *self
            .by_key
            .get(&node)
            .ok_or(EngineError::UnknownNode(node))?;
        let load = self.load_of(ev.profile, true, &ev.clients);
        for &c in &ev.clients {
            self.clients.insert(c, ev.service);
        }
        self.services.insert(
            ev.service,
            Service {
                profile: ev.profile,
                slot,
                clients: ev.clients.clone(),
                agg: (ev.clients.len() >= CACHE_MIN_CLIENTS).then(|| load.agg.clone()),
            },
        );
        self.place(slot, ev.service, &load);
        self.apply_cluster(&load, false);
        self.next_service = self.next_service.max(ev.service.0 + 1);
        let maxc = ev.clients.iter().map(|c| c.0 + 1).max().unwrap_or(0);
        self.next_client = self.next_client.max(maxc);
        Ok(())
    }

    /// Records a running service that has no admission id yet (found running by a Control
    /// that did not admit it) on `node` with `clients` clients, under fresh ids, with no
    /// admission test, like [`adopt`](Self::adopt).
    pub fn adopt_new(
        &mut self,
        profile: ProfileId,
        node: NodeId,
        clients: u64,
    ) -> Result<Evicted, EngineError> {
        let ev = Evicted {
            service: ServiceId(self.next_service),
            profile,
            clients: (0..clients)
                .map(|i| ClientId(self.next_client + i))
                .collect(),
        };
        self.adopt(&ev, node)?;
        Ok(ev)
    }

    /// Reserves `profile`'s load on `node` without an admission test, under a fresh id
    /// (the network a migration's copy uses on its source and target while it runs, thesis
    /// §4.1.3); [`release_service`](Self::release_service) frees it.
    pub fn hold(&mut self, profile: ProfileId, node: NodeId) -> Result<ServiceId, EngineError> {
        let sid = ServiceId(self.next_service);
        self.adopt(
            &Evicted {
                service: sid,
                profile,
                clients: Vec::new(),
            },
            node,
        )?;
        Ok(sid)
    }

    pub(super) fn admit_load(
        &mut self,
        profile: ProfileId,
        sid: ServiceId,
        clients: Vec<ClientId>,
    ) -> Result<Decision, Rejection> {
        if self.by_key.is_empty() {
            return Err(Rejection::NoNodes);
        }
        let load = self.load_of(profile, true, &clients);
        self.cluster_fits(&load)?;
        let mut migrations = Vec::new();
        let slot = match self.search(&load, &[], false) {
            Some(s) => s,
            None => {
                self.ms_tests_left = self.cfg.ms_max_tests;
                let mut exclude = Vec::new();
                match self.relocate(&load, self.cfg.ms_depth, &mut exclude, &mut migrations) {
                    Some(s) => s,
                    None => {
                        tracing::debug!(profile = profile.0, "service rejected: no node fits");
                        return Err(Rejection::NoFit);
                    }
                }
            }
        };
        for &c in &clients {
            self.clients.insert(c, sid);
        }
        self.services.insert(
            sid,
            Service {
                profile,
                slot,
                clients: clients.clone(),
                agg: (clients.len() >= CACHE_MIN_CLIENTS).then(|| load.agg.clone()),
            },
        );
        self.place(slot, sid, &load);
        self.apply_cluster(&load, false);
        let node = self.nodes[slot].key;
        tracing::debug!(
            service = sid.0,
            node = node.0,
            migrations = migrations.len(),
            "service admitted"
        );
        Ok(Decision {
            service: sid,
            node,
            clients,
            migrations,
        })
    }

    /// Finds a node for `load` outside `exclude`, making room with MS within `budget`
    /// migrations. On `None` nothing has changed.
    pub(super) fn relocate(
        &mut self,
        load: &Load<E>,
        budget: u32,
        exclude: &mut Vec<usize>,
        migs: &mut Vec<Migration>,
    ) -> Option<usize> {
        if self.ms_tests_left == 0 {
            return None;
        }
        if let Some(s) = self.search(load, exclude, true) {
            return Some(s);
        }
        if budget == 0 {
            return None;
        }
        let ex = exclude.clone();
        let cands = self
            .index
            .top_by_free_mem(self.cfg.ms_candidates, |s| !ex.contains(&s));
        cands
            .into_iter()
            .find(|&slot| self.evict_one(slot, load, budget, exclude, None, migs))
    }

    /// Makes room for `load` on `slot` by moving one service (smallest working set first,
    /// never `skip`) elsewhere within `budget` migrations. On `false` nothing has changed;
    /// on `true` the caller places `load` on `slot`.
    pub(super) fn evict_one(
        &mut self,
        slot: usize,
        load: &Load<E>,
        budget: u32,
        exclude: &mut Vec<usize>,
        skip: Option<ServiceId>,
        migs: &mut Vec<Migration>,
    ) -> bool {
        if budget == 0 {
            return false;
        }
        let mut cands: Vec<(u64, ServiceId)> = self.nodes[slot]
            .services
            .iter()
            .filter(|s| Some(**s) != skip)
            .map(|s| {
                let sv = &self.services[s];
                let p = &self.profiles[sv.profile.0 as usize];
                (
                    p.ws.saturating_add(p.client_mem.saturating_mul(sv.clients.len() as u64)),
                    *s,
                )
            })
            .collect();
        cands.sort_unstable();
        exclude.push(slot);
        let mut done = false;
        for (_, v) in cands {
            if self.ms_tests_left == 0 {
                break;
            }
            self.ms_tests_left -= 1;
            let vload = self.service_load(v);
            if !node_fits(
                &self.est,
                &self.nodes[slot],
                load,
                Some(&vload),
                &mut self.scratch,
            ) {
                continue;
            }
            self.unplace(slot, v, &vload);
            if let Some(target) = self.relocate(&vload, budget - 1, exclude, migs) {
                self.place(target, v, &vload);
                migs.push(Migration {
                    service: v,
                    from: self.nodes[slot].key,
                    to: self.nodes[target].key,
                });
                done = true;
                break;
            }
            self.place(slot, v, &vload);
        }
        exclude.pop();
        done
    }

    /// Admits one more client to `service` (the Smart-GloVE rule: it joins the existing
    /// distributor; if its node is full, MS moves another distributor away).
    pub fn admit_client(&mut self, service: ServiceId) -> Result<ClientDecision, Rejection> {
        let (profile, slot) = match self.services.get(&service) {
            Some(s) => (s.profile, s.slot),
            None => return Err(Rejection::UnknownService(service)),
        };
        let cid = ClientId(self.next_client);
        let load = self.load_of(profile, false, &[cid]);
        self.cluster_fits(&load)?;
        let mut migrations = Vec::new();
        let fits = node_fits(&self.est, &self.nodes[slot], &load, None, &mut self.scratch);
        if !fits {
            self.ms_tests_left = self.cfg.ms_max_tests;
            let mut exclude = Vec::new();
            if !self.evict_one(
                slot,
                &load,
                self.cfg.ms_depth,
                &mut exclude,
                Some(service),
                &mut migrations,
            ) {
                tracing::debug!(
                    service = service.0,
                    "client rejected: distributor node full"
                );
                return Err(Rejection::NoFit);
            }
        }
        self.next_client += 1;
        self.apply(slot, &load, false);
        self.apply_cluster(&load, false);
        self.clients.insert(cid, service);
        let s = self.services.get_mut(&service).expect("checked above");
        s.clients.push(cid);
        match &mut s.agg {
            Some(agg) => {
                for (a, l) in agg.iter_mut().zip(&load.agg) {
                    self.est.merge(a, l, false);
                }
            }
            None if s.clients.len() >= CACHE_MIN_CLIENTS => {
                let clients = s.clients.clone();
                let full = self.load_of(profile, true, &clients);
                self.services.get_mut(&service).expect("checked above").agg = Some(full.agg);
            }
            None => {}
        }
        Ok(ClientDecision {
            client: cid,
            service,
            node: self.nodes[slot].key,
            migrations,
        })
    }
}
