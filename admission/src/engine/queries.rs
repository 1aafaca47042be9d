//! Releases, queries and the self-check of the engine's aggregates.

use super::*;

impl<E: Estimator> Engine<E> {
    // -----------------------------------------------------------------------------------
    // Release
    // -----------------------------------------------------------------------------------

    /// A client left; returns the service it was watching.
    pub fn release_client(&mut self, client: ClientId) -> Result<ServiceId, EngineError> {
        let sid = *self
            .clients
            .get(&client)
            .ok_or(EngineError::UnknownClient(client))?;
        let s = &self.services[&sid];
        let (profile, slot) = (s.profile, s.slot);
        let load = self.load_of(profile, false, &[client]);
        self.apply(slot, &load, true);
        self.apply_cluster(&load, true);
        self.clients.remove(&client);
        let s = self
            .services
            .get_mut(&sid)
            .expect("client maps to a service");
        if let Some(i) = s.clients.iter().position(|c| *c == client) {
            s.clients.swap_remove(i);
        }
        if let Some(agg) = &mut s.agg {
            for (a, l) in agg.iter_mut().zip(&load.agg) {
                self.est.merge(a, l, true);
            }
        }
        Ok(sid)
    }

    /// Moves a placed service, with its clients, to another node where it fits (no MS, and
    /// never back onto its current node): what the Control does with an instance that runs
    /// persistently over its profile (thesis §4.1.1). The cluster aggregate is unchanged.
    /// Returns the new node; on `NoFit` nothing changes.
    pub fn move_elsewhere(&mut self, service: ServiceId) -> Result<NodeId, Rejection> {
        self.move_avoiding(service, &[])
    }

    /// [`move_elsewhere`](Self::move_elsewhere), also never onto the nodes in `avoid`
    /// (nodes where the service's instance already failed to start). Unknown keys in
    /// `avoid` are ignored.
    pub fn move_avoiding(
        &mut self,
        service: ServiceId,
        avoid: &[NodeId],
    ) -> Result<NodeId, Rejection> {
        let Some(s) = self.services.get(&service) else {
            return Err(Rejection::UnknownService(service));
        };
        let from = s.slot;
        let mut exclude = vec![from];
        exclude.extend(avoid.iter().filter_map(|k| self.by_key.get(k).copied()));
        let load = self.service_load(service);
        let Some(to) = self.search(&load, &exclude, false) else {
            return Err(Rejection::NoFit);
        };
        self.unplace(from, service, &load);
        self.place(to, service, &load);
        Ok(self.nodes[to].key)
    }

    /// Records `n` more clients of a placed service with no admission test, under fresh
    /// ids, and returns them: viewers that are already watching (a new Control found them
    /// on a duplicate instance it stopped, and they reconnect to the one it kept).
    pub fn adopt_clients(
        &mut self,
        service: ServiceId,
        n: u64,
    ) -> Result<Vec<ClientId>, EngineError> {
        let Some(s) = self.services.get(&service) else {
            return Err(EngineError::UnknownService(service));
        };
        let (profile, node) = (s.profile, self.nodes[s.slot].key);
        let fresh: Vec<ClientId> = (0..n).map(|i| ClientId(self.next_client + i)).collect();
        let mut clients = self.release_service(service)?;
        clients.extend(&fresh);
        self.adopt(
            &Evicted {
                service,
                profile,
                clients,
            },
            node,
        )?;
        Ok(fresh)
    }

    /// Gives a running service a new profile (its usage turned out larger, or smaller,
    /// than profiled): on its own node when that node still fits it (`Ok(None)`), else on
    /// another node where it fits at the new size (`Ok(Some(node))`, the caller moves it);
    /// when it fits nowhere, `Err` and nothing changes. Its clients stay with it.
    pub fn resize(
        &mut self,
        service: ServiceId,
        profile: ProfileId,
    ) -> Result<Option<NodeId>, Rejection> {
        if profile.0 as usize >= self.profiles.len() {
            return Err(Rejection::UnknownProfile(profile));
        }
        let Some(s) = self.services.get(&service) else {
            return Err(Rejection::UnknownService(service));
        };
        let (slot, clients) = (s.slot, s.clients.clone());
        let old = self.service_load(service);
        self.unplace(slot, service, &old);
        self.apply_cluster(&old, true);
        let new = self.load_of(profile, true, &clients);
        let keep_agg = (clients.len() >= CACHE_MIN_CLIENTS).then(|| new.agg.clone());
        let fits_cluster = self.cluster_fits(&new).is_ok();
        let here =
            fits_cluster && node_fits(&self.est, &self.nodes[slot], &new, None, &mut self.scratch);
        let target = if here {
            Some(slot)
        } else if fits_cluster {
            self.search(&new, &[slot], false)
        } else {
            None
        };
        let Some(to) = target else {
            // Nothing changes.
            self.place(slot, service, &old);
            self.apply_cluster(&old, false);
            return Err(Rejection::NoFit);
        };
        if let Some(s) = self.services.get_mut(&service) {
            s.profile = profile;
            s.agg = keep_agg;
        }
        self.place(to, service, &new);
        self.apply_cluster(&new, false);
        Ok((to != slot).then(|| self.nodes[to].key))
    }

    /// A service ended; its remaining clients are released with it and returned.
    pub fn release_service(&mut self, service: ServiceId) -> Result<Vec<ClientId>, EngineError> {
        if !self.services.contains_key(&service) {
            return Err(EngineError::UnknownService(service));
        }
        let load = self.service_load(service);
        let slot = self.services[&service].slot;
        self.unplace(slot, service, &load);
        self.apply_cluster(&load, true);
        let s = self.services.remove(&service).expect("checked above");
        for c in &s.clients {
            self.clients.remove(c);
        }
        Ok(s.clients)
    }

    // -----------------------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------------------

    /// The node running a service.
    pub fn node_of(&self, service: ServiceId) -> Option<NodeId> {
        self.services.get(&service).map(|s| self.nodes[s.slot].key)
    }

    /// The service a client watches.
    pub fn service_of(&self, client: ClientId) -> Option<ServiceId> {
        self.clients.get(&client).copied()
    }

    /// A service's clients.
    pub fn clients_of(&self, service: ServiceId) -> Option<&[ClientId]> {
        self.services.get(&service).map(|s| s.clients.as_slice())
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Number of clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Keys of the live nodes.
    pub fn node_keys(&self) -> Vec<NodeId> {
        let mut k: Vec<NodeId> = self.by_key.keys().copied().collect();
        k.sort();
        k
    }

    /// Status of a node.
    pub fn node_status(&mut self, key: NodeId) -> Option<NodeStatus> {
        let slot = *self.by_key.get(&key)?;
        let n = &self.nodes[slot];
        let mut level = [0.0; 2];
        for r in Resource::ALL {
            let u = self
                .est
                .level(&n.agg[r.idx()], n.spec.conf, &mut self.scratch);
            level[r.idx()] = r.from_units(u);
        }
        Some(NodeStatus {
            key,
            spec: n.spec,
            used_mem: n.used_mem,
            level,
            services: n.services.len(),
        })
    }

    /// Every service with its node and clients (sorted): the registry the Control replicates.
    pub fn placements(&self) -> BTreeMap<ServiceId, (NodeId, Vec<ClientId>)> {
        self.services
            .iter()
            .map(|(sid, s)| {
                let mut c = s.clients.clone();
                c.sort();
                (*sid, (self.nodes[s.slot].key, c))
            })
            .collect()
    }

    /// Recomputes every aggregate, memory sum and index leaf from scratch and compares them
    /// with the incremental state; also checks that no node's memory is overbooked.
    pub fn verify(&mut self) -> Result<(), String> {
        let grid = self.cfg.grid;
        let mut cluster = [
            self.est.empty(Resource::Cpu, grid),
            self.est.empty(Resource::Net, grid),
        ];
        for slot in 0..self.nodes.len() {
            let n = &self.nodes[slot];
            if !n.alive {
                if self.index.leaf(slot).alive {
                    return Err(format!("dead slot {slot} is alive in the index"));
                }
                continue;
            }
            let mut agg = [
                self.est.empty(Resource::Cpu, grid),
                self.est.empty(Resource::Net, grid),
            ];
            let mut mem = 0u64;
            for sid in &n.services {
                let s = self
                    .services
                    .get(sid)
                    .ok_or(format!("node lists unknown {sid:?}"))?;
                if s.slot != slot {
                    return Err(format!(
                        "{sid:?} listed on slot {slot} but placed on {}",
                        s.slot
                    ));
                }
                // Rebuild the service from its profile and clients, not from its cache.
                let load = self.load_of(s.profile, true, &s.clients);
                if s.agg.as_ref().is_some_and(|a| *a != load.agg) {
                    return Err(format!("{sid:?} aggregate drifted"));
                }
                mem += load.mem;
                for r in 0..2 {
                    self.est.merge(&mut agg[r], &load.agg[r], false);
                    self.est.merge(&mut cluster[r], &load.agg[r], false);
                }
            }
            if agg != n.agg {
                return Err(format!("node {:?} aggregate drifted", n.key));
            }
            if mem != n.used_mem {
                return Err(format!(
                    "node {:?} memory {} != recomputed {mem}",
                    n.key, n.used_mem
                ));
            }
            if mem > n.spec.mem_bytes {
                return Err(format!(
                    "node {:?} memory overbooked: {mem} > {}",
                    n.key, n.spec.mem_bytes
                ));
            }
            let leaf = self.index.leaf(slot);
            let mut head = [0.0; 2];
            for (r, h) in head.iter_mut().enumerate() {
                *h = n.limit[r] - self.est.level(&n.agg[r], n.spec.conf, &mut self.scratch);
            }
            if !leaf.alive || leaf.free_mem != n.spec.mem_bytes - mem || leaf.head != head {
                return Err(format!("index leaf of {:?} is stale", n.key));
            }
        }
        if cluster != self.cluster {
            return Err("cluster aggregate drifted".into());
        }
        let listed: usize = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.services.len())
            .sum();
        if listed != self.services.len() {
            return Err(format!(
                "{listed} services on nodes, {} known",
                self.services.len()
            ));
        }
        let nclients: usize = self.services.values().map(|s| s.clients.len()).sum();
        if nclients != self.clients.len() {
            return Err(format!(
                "{nclients} clients on services, {} known",
                self.clients.len()
            ));
        }
        Ok(())
    }
}
