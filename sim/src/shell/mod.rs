//! The shells the simulator plays, one module each, written after the real ones:
//! - `membership`: the Membership actor (`membership/src/actor.rs`) and the node
//!   supervisor's handling of its messages (`supervision/src/supervisor.rs`);
//! - `control`: the Control actor (`actors/control/src/lib.rs`);
//! - `agent`: Agent86's actor (`actors/agent86/src/actor.rs`), the node's TCP port
//!   (`supervision/src/server.rs`) and a simulated instance runtime;
//! - `api`: the Forwarder (`actors/control/src/forward.rs`) and the operator's requests.

mod agent;
mod api;
mod control;
mod membership;

pub(crate) use api::spec;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use smart_agent86::engine::{Agent86Config, Agent86Engine};
use smart_control::{AdmissionSettings, ControlTuning};
use smart_membership::detector::DetectorConfig;
use smart_membership::election::Mode as ElectionMode;
use smart_membership::engine::{EngineConfig, NodeEngine};
use smart_membership::view::ClusterView;
use smart_proto::{NodeId, Role};

use crate::world::{Mode, Proc, Sim};

/// The node's `[timing]` defaults (`config/src/lib.rs`).
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(100);
pub(crate) const DEAD_AFTER: Duration = Duration::from_millis(450);
pub(crate) const BACKOFF: Duration = Duration::from_millis(300);
pub(crate) const PROFILER_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// `request_budget` defaults to the timeout of a start (5 × the request timeout).
pub(crate) const BUDGET: Duration = Duration::from_secs(10);

/// The class profile every simulated service is admitted with: the synthetic distributor
/// the Control's own tests use (a 400 kbit/s, 10-minute video).
fn profile() -> smart_proto::profile::ServiceProfile {
    use smart_admission::synthetic::{Gen, VideoSpec, distributor};
    let mut p = distributor(
        &VideoSpec {
            bitrate_bps: 400e3,
            duration_s: 600.0,
            cache_fraction: 0.2,
        },
        &Gen {
            len: 64,
            seed: 7,
            shared: None,
        },
    );
    p.video = Some(smart_proto::profile::VideoRef {
        bitrate_bps: 400_000,
        duration_ms: 600_000,
        window_fraction: 0.2,
    });
    p
}

/// The Control's tuning as the supervisor builds it from the default config, with a default
/// profile (every service is admissible), no idle stops (a service without viewers stays:
/// the invariants count instances) and no copy-rate cap.
pub(crate) fn tuning() -> ControlTuning {
    ControlTuning {
        request_timeout: REQUEST_TIMEOUT,
        admission: AdmissionSettings {
            default_profile: Some(profile()),
            idle_stop_after: None,
            copy_rate_bps: None,
            ..AdmissionSettings::default()
        },
        ..ControlTuning::default()
    }
}

/// A fresh process of node `i` (its incarnation already raised): membership's engine as
/// `engine_config` builds it, Agent86's engine at the persisted epoch, an empty registry copy.
pub(crate) fn new_proc(sim: &Sim, i: usize) -> Proc {
    let n = &sim.nodes[i];
    let members: std::collections::BTreeSet<NodeId> = sim.nodes.iter().map(|n| n.id).collect();
    let mut e = EngineConfig::new(
        n.id,
        n.incarnation,
        n.addr,
        vec![Role::Agent, Role::Control],
    );
    e.heartbeat_interval = HEARTBEAT;
    e.detector = DetectorConfig {
        interval: HEARTBEAT,
        dead_after: DEAD_AFTER,
    };
    e.election.backoff = BACKOFF;
    e.election.profiler_backoff = PROFILER_BACKOFF;
    e.election.listen = DEAD_AFTER;
    e.election.mode = match sim.setup.mode {
        Mode::Available => ElectionMode::Available,
        Mode::Majority => ElectionMode::Majority {
            members: members.clone(),
        },
    };
    e.members = members;
    let rng = ChaCha8Rng::seed_from_u64(sim.seed ^ ((i as u64 + 1) << 40) ^ n.incarnation);
    let mut acfg = Agent86Config::new(n.id);
    acfg.stop_grace = Duration::from_secs(1);
    Proc {
        boot: n.incarnation,
        membership: NodeEngine::new(e, n.disk_highest, rng),
        view: ClusterView::default(),
        acting: Default::default(),
        agent: Agent86Engine::new(acfg, n.disk_highest),
        agent_waits: HashMap::new(),
        next_areq: 1,
        queued: VecDeque::new(),
        persisted: n.disk_highest,
        runtime: BTreeMap::new(),
        replica: Default::default(),
        slot: None,
        control: None,
    }
}
