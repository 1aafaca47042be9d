//! [`AnyEngine`]: an [`Engine`] whose estimator is chosen at run time (from config), for the
//! Control actor. Every call delegates to the monomorphised engine, so the choice costs one
//! `match` per call.
//!
//! ## Layout
//! - [`AnyEngine`]: one variant per [`EstimatorKind`], with the engine's calls.

use std::collections::BTreeMap;

use crate::engine::{
    ClientDecision, ClientId, Decision, Engine, EngineConfig, EngineError, Evicted, NodeId,
    NodeSpec, NodeStatus, ProfileId, Rejection, ServiceId,
};
use crate::estimator::{Chernoff, Empirical, EstimatorKind, Gaussian, Mean, Peak};
use crate::profile::ServiceProfile;

/// An engine with a run-time choice of estimator.
pub enum AnyEngine {
    /// Percentile of time-aligned sums.
    Empirical(Engine<Empirical>),
    /// Normal approximation.
    Gaussian(Engine<Gaussian>),
    /// Chernoff bound.
    Chernoff(Engine<Chernoff>),
    /// Sum of peaks.
    Peak(Engine<Peak>),
    /// Sum of means.
    Mean(Engine<Mean>),
}

macro_rules! delegate {
    ($self:ident, $e:ident => $body:expr) => {
        match $self {
            AnyEngine::Empirical($e) => $body,
            AnyEngine::Gaussian($e) => $body,
            AnyEngine::Chernoff($e) => $body,
            AnyEngine::Peak($e) => $body,
            AnyEngine::Mean($e) => $body,
        }
    };
}

impl AnyEngine {
    /// A new engine with the named estimator.
    pub fn new(kind: EstimatorKind, cfg: EngineConfig) -> Result<Self, EngineError> {
        Ok(match kind {
            EstimatorKind::Empirical => AnyEngine::Empirical(Engine::new(Empirical, cfg)?),
            EstimatorKind::Gaussian => AnyEngine::Gaussian(Engine::new(Gaussian, cfg)?),
            EstimatorKind::Chernoff => AnyEngine::Chernoff(Engine::new(Chernoff, cfg)?),
            EstimatorKind::Peak => AnyEngine::Peak(Engine::new(Peak, cfg)?),
            EstimatorKind::Mean => AnyEngine::Mean(Engine::new(Mean, cfg)?),
        })
    }

    /// See [`Engine::estimator_name`].
    pub fn estimator_name(&self) -> &'static str {
        delegate!(self, e => e.estimator_name())
    }
    /// See [`Engine::register_profile`].
    pub fn register_profile(&mut self, p: &ServiceProfile) -> Result<ProfileId, EngineError> {
        delegate!(self, e => e.register_profile(p))
    }
    /// See [`Engine::add_node`].
    pub fn add_node(&mut self, key: NodeId, spec: NodeSpec) -> Result<(), EngineError> {
        delegate!(self, e => e.add_node(key, spec))
    }
    /// See [`Engine::remove_node`].
    pub fn remove_node(&mut self, key: NodeId) -> Result<Vec<Evicted>, EngineError> {
        delegate!(self, e => e.remove_node(key))
    }
    /// See [`Engine::node_failed`].
    pub fn node_failed(&mut self, key: NodeId) -> Result<Vec<Evicted>, EngineError> {
        delegate!(self, e => e.node_failed(key))
    }
    /// See [`Engine::admit_service`].
    pub fn admit_service(
        &mut self,
        profile: ProfileId,
        initial_clients: u32,
    ) -> Result<Decision, Rejection> {
        delegate!(self, e => e.admit_service(profile, initial_clients))
    }
    /// See [`Engine::readmit`].
    pub fn readmit(&mut self, ev: &Evicted) -> Result<Decision, Rejection> {
        delegate!(self, e => e.readmit(ev))
    }
    /// See [`Engine::admit_client`].
    pub fn admit_client(&mut self, service: ServiceId) -> Result<ClientDecision, Rejection> {
        delegate!(self, e => e.admit_client(service))
    }
    /// See [`Engine::release_client`].
    pub fn release_client(&mut self, client: ClientId) -> Result<ServiceId, EngineError> {
        delegate!(self, e => e.release_client(client))
    }
    /// See [`Engine::release_service`].
    pub fn release_service(&mut self, service: ServiceId) -> Result<Vec<ClientId>, EngineError> {
        delegate!(self, e => e.release_service(service))
    }
    /// See [`Engine::adopt`].
    pub fn adopt(&mut self, ev: &Evicted, node: NodeId) -> Result<(), EngineError> {
        delegate!(self, e => e.adopt(ev, node))
    }
    /// See [`Engine::hold`].
    pub fn hold(&mut self, profile: ProfileId, node: NodeId) -> Result<ServiceId, EngineError> {
        delegate!(self, e => e.hold(profile, node))
    }
    /// See [`Engine::move_elsewhere`].
    pub fn move_elsewhere(&mut self, service: ServiceId) -> Result<NodeId, Rejection> {
        delegate!(self, e => e.move_elsewhere(service))
    }
    /// See [`Engine::move_avoiding`].
    pub fn move_avoiding(
        &mut self,
        service: ServiceId,
        avoid: &[NodeId],
    ) -> Result<NodeId, Rejection> {
        delegate!(self, e => e.move_avoiding(service, avoid))
    }
    /// See [`Engine::adopt_clients`].
    pub fn adopt_clients(
        &mut self,
        service: ServiceId,
        n: u64,
    ) -> Result<Vec<ClientId>, EngineError> {
        delegate!(self, e => e.adopt_clients(service, n))
    }
    /// See [`Engine::adopt_new`].
    pub fn adopt_new(
        &mut self,
        profile: ProfileId,
        node: NodeId,
        clients: u64,
    ) -> Result<Evicted, EngineError> {
        delegate!(self, e => e.adopt_new(profile, node, clients))
    }
    /// See [`Engine::resize`].
    pub fn resize(
        &mut self,
        service: ServiceId,
        profile: ProfileId,
    ) -> Result<Option<NodeId>, Rejection> {
        delegate!(self, e => e.resize(service, profile))
    }
    /// See [`Engine::clients_of`].
    pub fn clients_of(&self, service: ServiceId) -> Option<&[ClientId]> {
        delegate!(self, e => e.clients_of(service))
    }
    /// See [`Engine::node_of`].
    pub fn node_of(&self, service: ServiceId) -> Option<NodeId> {
        delegate!(self, e => e.node_of(service))
    }
    /// See [`Engine::service_of`].
    pub fn service_of(&self, client: ClientId) -> Option<ServiceId> {
        delegate!(self, e => e.service_of(client))
    }
    /// See [`Engine::node_status`].
    pub fn node_status(&mut self, key: NodeId) -> Option<NodeStatus> {
        delegate!(self, e => e.node_status(key))
    }
    /// See [`Engine::node_keys`].
    pub fn node_keys(&self) -> Vec<NodeId> {
        delegate!(self, e => e.node_keys())
    }
    /// See [`Engine::placements`].
    pub fn placements(&self) -> BTreeMap<ServiceId, (NodeId, Vec<ClientId>)> {
        delegate!(self, e => e.placements())
    }
    /// See [`Engine::service_count`].
    pub fn service_count(&self) -> usize {
        delegate!(self, e => e.service_count())
    }
    /// See [`Engine::client_count`].
    pub fn client_count(&self) -> usize {
        delegate!(self, e => e.client_count())
    }
    /// See [`Engine::verify`].
    pub fn verify(&mut self) -> Result<(), String> {
        delegate!(self, e => e.verify())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{Gen, VideoSpec, distributor};

    #[test]
    fn every_kind_admits_and_releases_the_same_way() {
        let video = VideoSpec {
            bitrate_bps: 400e3,
            duration_s: 7200.0,
            cache_fraction: 0.2,
        };
        let p = distributor(
            &video,
            &Gen {
                len: 64,
                seed: 3,
                shared: None,
            },
        );
        for kind in EstimatorKind::ALL {
            let cfg = EngineConfig {
                grid: 64,
                ..EngineConfig::default()
            };
            let mut e = AnyEngine::new(kind, cfg).unwrap();
            assert_eq!(e.estimator_name(), kind.name());
            e.add_node(NodeId(7), NodeSpec::new(2 << 30, 2.0, 100e6))
                .unwrap();
            let id = e.register_profile(&p).unwrap();
            let d = e.admit_service(id, 1).unwrap();
            assert_eq!(d.node, NodeId(7));
            let c = e.admit_client(d.service).unwrap();
            assert_eq!(e.service_of(c.client), Some(d.service));
            assert_eq!(e.release_service(d.service).unwrap().len(), 2);
            assert_eq!((e.service_count(), e.client_count()), (0, 0));
            e.verify().unwrap();
        }
    }
}
