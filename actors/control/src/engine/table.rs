//! The service table: every service the Control knows, by name and by admission id, with
//! its identity (spec, admission id and profile) and its placement (node, generation,
//! current instance, admitted clients and the idempotency keys that admitted them, API
//! requests waiting for it to run).
//!
//! It holds no operation in flight (that is [`super::moves::Moves`]) and no QoS clock (that
//! is [`super::qos::QosBook`]): the engine keeps the three in step when a service is added
//! or removed. Names and admission ids stay a bijection because only [`ServiceTable`]
//! inserts and removes.

use std::collections::{BTreeMap, HashMap};
use std::ops::Index;
use std::time::{Duration, Instant};

use smart_admission::{ClientId, Evicted, ProfileId, ServiceId};
use smart_proto::agent::InstanceReport;
use smart_proto::api::{Placement, ServiceSpec};
use smart_proto::profile::ProfileSource;
use smart_proto::{NodeId, ServiceName};

use super::ApiId;

/// One admitted client, and when it was admitted: within the arrival window it is
/// *tentative* (its viewer may not have reached the distributor yet, so a count without it
/// proves nothing), after it *settled* (a count without it means the viewer is gone, or
/// never came).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Admitted {
    id: ClientId,
    at: Instant,
}

/// A service as the Control knows it: who it is and where it runs.
#[derive(Debug)]
pub(crate) struct Svc {
    spec: ServiceSpec,
    sid: ServiceId,
    profile: ProfileId,
    /// Where its profile comes from.
    source: ProfileSource,
    /// Where admission placed it (during a move: the target).
    node: NodeId,
    /// Generation of its newest instance (`<name>.<generation>`).
    generation: u64,
    /// Its current instance, once running (`None` while starting or restarting).
    info: Option<InstanceReport>,
    /// Its admitted clients, oldest first.
    clients: Vec<Admitted>,
    /// The idempotency key each keyed admission came with, and the client it admitted: a
    /// repeat of the key answers that client. A key lives as long as its client (released
    /// clients take their keys with them), so there are never more keys than clients.
    keys: Vec<(u64, ClientId)>,
    /// API requests waiting for its first (or next) instance, with the client each
    /// admitted (if any).
    waiting: Vec<(ApiId, Option<ClientId>)>,
    /// When its current instance was confirmed (reports older than this may not list it).
    placed_at: Instant,
}

impl Svc {
    pub(crate) fn spec(&self) -> &ServiceSpec {
        &self.spec
    }

    pub(crate) fn sid(&self) -> ServiceId {
        self.sid
    }

    /// Its admission profile.
    pub(crate) fn profile(&self) -> ProfileId {
        self.profile
    }

    pub(crate) fn source(&self) -> ProfileSource {
        self.source
    }

    pub(crate) fn node(&self) -> NodeId {
        self.node
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Its current instance, once running.
    pub(crate) fn info(&self) -> Option<&InstanceReport> {
        self.info.as_ref()
    }

    /// Its current instance's name, once running.
    pub(crate) fn instance(&self) -> Option<&str> {
        self.info.as_ref().map(|i| i.instance.as_str())
    }

    /// How many clients are admitted.
    pub(crate) fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Its admitted clients, oldest first.
    pub(crate) fn client_id_list(&self) -> Vec<ClientId> {
        self.clients.iter().map(|c| c.id).collect()
    }

    /// How many of its clients were admitted at least `window` before `now` (settled).
    pub(crate) fn settled_clients(&self, now: Instant, window: Duration) -> usize {
        self.clients
            .iter()
            .filter(|c| now.saturating_duration_since(c.at) >= window)
            .count()
    }

    /// Whether API requests wait for its instance.
    pub(crate) fn has_waiters(&self) -> bool {
        !self.waiting.is_empty()
    }

    pub(crate) fn placed_at(&self) -> Instant {
        self.placed_at
    }

    /// Where it is served: `None` until an instance runs.
    pub(crate) fn placement(&self) -> Option<Placement> {
        Some(Placement {
            service: self.spec.name.clone(),
            node: self.node,
            endpoint: self.info.as_ref()?.endpoint.clone().unwrap_or_default(),
            client: None,
        })
    }

    /// Admission placed it on `node` (its instance has not moved yet).
    pub(crate) fn place_on(&mut self, node: NodeId) {
        self.node = node;
    }

    /// It is re-admitted with another admission profile.
    pub(crate) fn set_profile(&mut self, profile: ProfileId, source: ProfileSource) {
        self.profile = profile;
        self.source = source;
    }

    /// A further admission profile from the same source (grown for an anomaly).
    pub(crate) fn grow(&mut self, profile: ProfileId) {
        self.profile = profile;
    }

    /// The generation of its next instance, now its newest.
    pub(crate) fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Its newest generation is at least `generation` (it runs a copy another Control
    /// started): later instances get names above it.
    pub(crate) fn at_least(&mut self, generation: u64) {
        self.generation = self.generation.max(generation);
    }

    /// Its instance is gone: clients wait for the next one instead of being sent to a dead
    /// endpoint.
    pub(crate) fn forget_instance(&mut self) {
        self.info = None;
    }

    /// A start whose outcome is unknown (no answer): no instance, and only a report of a
    /// round begun after `now` shows whether it runs.
    pub(crate) fn unconfirmed(&mut self, now: Instant) {
        self.info = None;
        self.placed_at = now;
    }

    /// A running instance found in a report (rebuild).
    pub(crate) fn adopt(&mut self, info: InstanceReport) {
        self.info = Some(info);
    }

    /// Its new instance `info` runs on `node` since `now`: returns the requests that were
    /// waiting for it.
    pub(crate) fn placed(
        &mut self,
        node: NodeId,
        info: InstanceReport,
        now: Instant,
    ) -> Vec<(ApiId, Option<ClientId>)> {
        self.placed_at = now;
        self.kept(node, info)
    }

    /// A move failed: it stays with its old instance `info` on `node` (which was confirmed
    /// long ago, so its placement time stays); returns the requests that were waiting.
    pub(crate) fn kept(
        &mut self,
        node: NodeId,
        info: InstanceReport,
    ) -> Vec<(ApiId, Option<ClientId>)> {
        self.node = node;
        self.info = Some(info);
        std::mem::take(&mut self.waiting)
    }

    /// API request `id` waits for its instance (with the client it admitted, if any).
    pub(crate) fn wait(&mut self, id: ApiId, client: Option<ClientId>) {
        self.waiting.push((id, client));
    }

    /// Client `c` was admitted at `now`.
    pub(crate) fn add_client(&mut self, c: ClientId, now: Instant) {
        self.clients.push(Admitted { id: c, at: now });
    }

    /// Client `c` was admitted at `now` by a request with idempotency key `key`.
    pub(crate) fn add_keyed_client(&mut self, c: ClientId, key: u64, now: Instant) {
        self.add_client(c, now);
        self.keys.push((key, c));
    }

    /// The client a request with idempotency key `key` admitted, while it is admitted.
    pub(crate) fn client_of_key(&self, key: u64) -> Option<ClientId> {
        self.keys.iter().find(|(k, _)| *k == key).map(|(_, c)| *c)
    }

    /// Drops the keys of clients no longer admitted.
    fn forget_released_keys(&mut self) {
        let clients = &self.clients;
        self.keys
            .retain(|(_, c)| clients.iter().any(|a| a.id == *c));
    }

    /// Releases client `c`, or the newest when `None`; `None` when there is no such client.
    pub(crate) fn release_client(&mut self, c: Option<u64>) -> Option<ClientId> {
        let gone = match c {
            None => self.clients.pop(),
            Some(c) => self
                .clients
                .iter()
                .position(|x| x.id.0 == c)
                .map(|i| self.clients.remove(i)),
        };
        self.forget_released_keys();
        gone.map(|a| a.id)
    }

    /// Of the clients settled at `now` (admitted at least `window` before), keeps the
    /// oldest `keep` and releases the others; tentative clients all stay. Returns the
    /// released.
    pub(crate) fn release_settled_beyond(
        &mut self,
        keep: usize,
        now: Instant,
        window: Duration,
    ) -> Vec<ClientId> {
        let mut settled = 0;
        let mut gone = Vec::new();
        self.clients.retain(|c| {
            if now.saturating_duration_since(c.at) < window {
                return true;
            }
            settled += 1;
            if settled <= keep {
                return true;
            }
            gone.push(c.id);
            false
        });
        self.forget_released_keys();
        gone
    }
}

/// What happened to a removed service: what the engine must still answer.
pub(crate) struct Removed {
    pub(crate) sid: ServiceId,
    pub(crate) node: NodeId,
    pub(crate) waiting: Vec<(ApiId, Option<ClientId>)>,
}

/// Every service, by name (ordered: the engine's outputs follow this order) and by
/// admission id.
#[derive(Debug, Default)]
pub(crate) struct ServiceTable {
    services: BTreeMap<ServiceName, Svc>,
    by_sid: HashMap<ServiceId, ServiceName>,
}

impl ServiceTable {
    /// A new service (not started yet): the admitted service `a` on `node`.
    pub(crate) fn insert(
        &mut self,
        spec: ServiceSpec,
        a: Evicted,
        source: ProfileSource,
        node: NodeId,
        generation: u64,
        now: Instant,
    ) -> ServiceName {
        let Evicted {
            service: sid,
            profile,
            clients,
        } = a;
        let name = spec.name.clone();
        self.by_sid.insert(sid, name.clone());
        self.services.insert(
            name.clone(),
            Svc {
                spec,
                sid,
                profile,
                source,
                node,
                generation,
                info: None,
                clients: clients
                    .into_iter()
                    .map(|id| Admitted { id, at: now })
                    .collect(),
                keys: Vec::new(),
                waiting: Vec::new(),
                placed_at: now,
            },
        );
        name
    }

    /// Forgets a service.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Removed> {
        let s = self.services.remove(name)?;
        self.by_sid.remove(&s.sid);
        Some(Removed {
            sid: s.sid,
            node: s.node,
            waiting: s.waiting,
        })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Svc> {
        self.services.get(name)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Svc> {
        self.services.get_mut(name)
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// The service admission knows as `sid`.
    pub(crate) fn name_of(&self, sid: ServiceId) -> Option<&ServiceName> {
        self.by_sid.get(&sid)
    }

    /// The service whose current instance is `instance` on `node`.
    pub(crate) fn running(&self, node: NodeId, instance: &str) -> Option<&ServiceName> {
        self.services
            .iter()
            .find(|(_, s)| s.node == node && s.instance() == Some(instance))
            .map(|(n, _)| n)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ServiceName, &Svc)> {
        self.services.iter()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Svc> {
        self.services.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.services.len()
    }
}

impl Index<&str> for ServiceTable {
    type Output = Svc;

    fn index(&self, name: &str) -> &Svc {
        &self.services[name]
    }
}

#[cfg(test)]
mod tests {
    use smart_proto::agent::{InstanceState, LaunchSpec, Reservation};

    use super::*;

    fn spec(name: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            class: "distributor".into(),
            command: vec!["d".into()],
            env: vec![],
            per_client_bps: None,
            duration_ms: None,
        }
    }

    fn info(instance: &str, endpoint: &str) -> InstanceReport {
        InstanceReport {
            instance: instance.into(),
            launch: LaunchSpec::default(),
            state: InstanceState::Running,
            reservation: Reservation::default(),
            endpoint: Some(endpoint.into()),
            control_socket: String::new(),
            checkpoint_export: None,
            speaks_api: true,
            usage: None,
            restarts: 0,
            anomalous: vec![],
            limits_enforced: true,
        }
    }

    fn admitted(sid: u64, clients: &[u64]) -> Evicted {
        Evicted {
            service: ServiceId(sid),
            profile: ProfileId(1),
            clients: clients.iter().map(|c| ClientId(*c)).collect(),
        }
    }

    fn table(now: Instant) -> ServiceTable {
        let mut t = ServiceTable::default();
        let a = spec("video-a");
        t.insert(
            a,
            admitted(7, &[1, 2, 3]),
            ProfileSource::Default,
            NodeId(1),
            0,
            now,
        );
        t
    }

    #[test]
    fn a_service_is_found_by_name_by_admission_id_and_by_its_running_instance() {
        let now = Instant::now();
        let mut t = table(now);
        assert_eq!(t.name_of(ServiceId(7)).map(String::as_str), Some("video-a"));
        assert_eq!(t["video-a"].client_count(), 3);
        // Not running yet: no placement, no instance to find.
        assert_eq!(t["video-a"].placement(), None);
        assert_eq!(t.running(NodeId(1), "video-a.1"), None);
        let g = t.get_mut("video-a").unwrap().next_generation();
        t.get_mut("video-a")
            .unwrap()
            .placed(NodeId(2), info("video-a.1", "http://n2/"), now);
        assert_eq!(g, 1);
        assert_eq!(
            t.running(NodeId(2), "video-a.1").map(String::as_str),
            Some("video-a")
        );
        assert_eq!(t.running(NodeId(1), "video-a.1"), None);
        let p = t["video-a"].placement().unwrap();
        assert_eq!((p.node, p.endpoint.as_str()), (NodeId(2), "http://n2/"));
        let gone = t.remove("video-a").unwrap();
        assert_eq!((gone.sid, gone.node), (ServiceId(7), NodeId(2)));
        assert_eq!(t.name_of(ServiceId(7)), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn waiters_are_handed_back_once_when_an_instance_runs() {
        let now = Instant::now();
        let mut t = table(now);
        let s = t.get_mut("video-a").unwrap();
        s.wait(10, None);
        s.wait(11, Some(ClientId(4)));
        assert!(s.has_waiters());
        let later = now + std::time::Duration::from_secs(1);
        assert_eq!(
            s.placed(NodeId(1), info("video-a.1", "e"), later),
            vec![(10, None), (11, Some(ClientId(4)))]
        );
        assert!(!s.has_waiters());
        assert_eq!(s.placed_at(), later);
        // A failed move keeps the old instance and its placement time.
        assert_eq!(s.kept(NodeId(1), info("video-a.1", "e")), vec![]);
        assert_eq!(s.placed_at(), later);
    }

    #[test]
    fn clients_are_released_by_id_newest_first_or_beyond_a_count_of_settled_ones() {
        let t0 = Instant::now();
        let w = Duration::from_secs(3);
        let mut t = table(t0);
        let s = t.get_mut("video-a").unwrap();
        assert_eq!(s.release_client(Some(2)), Some(ClientId(2)));
        assert_eq!(s.release_client(Some(2)), None);
        assert_eq!(s.release_client(None), Some(ClientId(3)));
        s.add_client(ClientId(5), t0 + Duration::from_secs(1));
        s.add_client(ClientId(6), t0 + Duration::from_secs(2));
        s.add_client(ClientId(7), t0 + Duration::from_secs(4));
        // At t0 + 5 s, 1, 5 and 6 are settled, 7 is tentative.
        let now = t0 + Duration::from_secs(5);
        assert_eq!(s.settled_clients(now, w), 3);
        assert_eq!(
            s.release_settled_beyond(1, now, w),
            vec![ClientId(5), ClientId(6)]
        );
        assert_eq!(s.client_id_list(), vec![ClientId(1), ClientId(7)]);
        // Nothing settled beyond the count: nothing released.
        assert_eq!(s.release_settled_beyond(1, now, w), vec![]);
        assert_eq!(s.release_settled_beyond(0, now, w), vec![ClientId(1)]);
        assert_eq!(s.client_id_list(), vec![ClientId(7)]);
    }

    #[test]
    fn an_idempotency_key_names_its_client_until_that_client_is_released() {
        let mut t = table(Instant::now());
        let s = t.get_mut("video-a").unwrap();
        let t0 = Instant::now();
        s.add_keyed_client(ClientId(7), 70, t0);
        s.add_keyed_client(ClientId(8), 80, t0);
        assert_eq!(s.client_of_key(70), Some(ClientId(7)));
        assert_eq!(s.client_of_key(80), Some(ClientId(8)));
        assert_eq!(s.client_of_key(90), None);
        assert_eq!(s.keys.len(), 2);
        // Released by id, or as the newest: the key goes with its client.
        assert_eq!(s.release_client(Some(7)), Some(ClientId(7)));
        assert_eq!(s.client_of_key(70), None);
        assert_eq!(s.release_client(None), Some(ClientId(8)));
        assert_eq!(s.client_of_key(80), None);
        assert_eq!(s.keys.len(), 0);
        // Released beyond a count: likewise.
        // (The fixture's service has clients 1, 2 and 3.)
        s.add_keyed_client(ClientId(9), 90, t0);
        assert_eq!(
            s.client_id_list(),
            vec![ClientId(1), ClientId(2), ClientId(3), ClientId(9)]
        );
        assert_eq!(
            s.release_settled_beyond(3, t0, Duration::ZERO),
            vec![ClientId(9)]
        );
        assert_eq!(s.client_of_key(90), None);
        assert_eq!(s.keys.len(), 0);
    }
}
