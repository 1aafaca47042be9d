//! `smart node`: one SMART peer (DESIGN §1).
//!
//! [`run`] loads the key and durable state, starts the supervision tree
//! ([`supervisor::NodeSupervisor`]) and waits until the tree escalates or `shutdown`
//! resolves. Everything is injected — configuration, shutdown signal, fault injection — so
//! tests run several nodes in one process as easily as the binary runs one.
//!
//! ## Layout
//! - [`shared`]: state shared by the node's actors (durable epochs, views, counters).
//! - [`membership`]: the actor shell around the heartbeat/election engine.
//! - [`http_frontend`]: the front-end's HTTP side (`GET /watch/{video}`).
//! - [`server`]: the TCP port (node-to-node and message API) and outgoing peers.
//! - [`supervisor`]: the supervision tree and its restart policy.

pub mod http_frontend;
pub mod membership;
pub mod server;
pub mod shared;
pub mod supervisor;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

use ractor::Actor;
use smart_supervision::ClusterKey;
use smart_supervision::transport::Endpoint;
use smart_supervision::transport::noise::{KeyBook, NodeKey, NoiseKeyError};
use tokio::sync::watch;
use tracing::{error, info};

use crate::config::{NodeConfig, RuntimeDriver};
use crate::persist::StateFile;
use server::TransportPeers;
use shared::{Counters, DiskEpochs, Shared};
use smart_actors::agent86::{Agent86Settings, AgentCore, RuntimeKind};
use supervisor::{Exit, NodeMsg, NodeSupervisor};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The cluster key could not be loaded.
    #[error(transparent)]
    Key(#[from] smart_supervision::types::KeyError),
    /// The node's key or the key book could not be loaded.
    #[error(transparent)]
    NodeKey(#[from] NoiseKeyError),
    /// The data directory could not be used.
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
    /// The stored highest epoch is beyond what any cluster can reach.
    #[error(
        "stored highest epoch {epoch} in {data_dir} is unusable (corrupt or forged): stop the node and run `smart repair --data-dir {data_dir} --epoch N` with N at least the cluster's highest epoch (`smart status` on a healthy node)"
    )]
    UnusableEpoch {
        /// The stored value.
        epoch: u64,
        /// The data directory.
        data_dir: String,
    },
    /// The supervision tree could not start (a socket could not be bound, ...).
    #[error("node failed to start: {0}")]
    Start(String),
}

/// Fault injection for tests, from the `SMART_FAULT` environment variable:
/// `agent86-panics=N` makes Agent86 panic on its first N messages (over all its restarts).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Panics left for Agent86.
    pub agent86_panics: Option<u32>,
}

impl Faults {
    /// Parses `SMART_FAULT` (unknown entries are ignored with a warning).
    pub fn from_env() -> Self {
        let mut f = Faults::default();
        if let Ok(spec) = std::env::var("SMART_FAULT") {
            for part in spec.split(',').filter(|p| !p.is_empty()) {
                match part.split_once('=') {
                    Some(("agent86-panics", n)) => f.agent86_panics = n.parse().ok(),
                    _ => tracing::warn!(%part, "unknown SMART_FAULT entry ignored"),
                }
            }
        }
        f
    }
}

/// Runs a node until `shutdown` resolves (`Ok(Exit::Shutdown)`) or its supervision tree
/// escalates (`Ok(Exit::Escalated(reason))`: the caller should exit non-zero).
pub async fn run(
    cfg: NodeConfig,
    faults: Faults,
    shutdown: impl Future<Output = ()>,
) -> Result<Exit, NodeError> {
    let key = ClusterKey::load(&cfg.cluster_key_file)?;
    let state = StateFile::open_and_boot(&cfg.data_dir)?;
    let durable = state.get();
    if durable.highest_epoch > smart_supervision::engine::EPOCH_CEILING {
        // A corrupt or hostile value: this node could never claim nor follow again.
        return Err(NodeError::UnusableEpoch {
            epoch: durable.highest_epoch,
            data_dir: cfg.data_dir.display().to_string(),
        });
    }
    let epochs = Arc::new(DiskEpochs::new(state));
    let node_key = NodeKey::load(&cfg.node_key_file)?;
    let book = KeyBook::load(&cfg.node_public_keys_file)?;
    match book.get(cfg.id()) {
        Some(k) if *k == node_key.public() => {}
        listed => {
            return Err(NodeError::Start(format!(
                "{} does not list this node's key ({} in {}): run `smart keys` again or fix node_key_file",
                cfg.node_public_keys_file.display(),
                if listed.is_some() {
                    "another key"
                } else {
                    "no key"
                },
                cfg.node_key_file.display(),
            )));
        }
    }
    let mut endpoint = Endpoint::node(cfg.id(), durable.incarnation, key.clone())
        .with_limits(cfg.limits.transport())
        .with_keys(node_key, book);
    endpoint.epoch = epochs.cell();
    let peers = Arc::new(TransportPeers::new(endpoint.clone()));
    let (control_addr, _) = watch::channel(None);
    let (agents, _) = watch::channel(Vec::new());
    let (others, _) = watch::channel(Vec::new());
    let ring = match &cfg.heartbeat.keys_file {
        Some(path) => smart_supervision::wire::Keyring::load(path)?,
        None => smart_supervision::wire::Keyring::new(key.clone()),
    }
    .encrypted(cfg.heartbeat.encrypt);
    let shared = Arc::new(Shared {
        key,
        ring,
        epochs,
        control_addr,
        agents,
        others,
        counters: Counters::default(),
        incarnation: AtomicU64::new(durable.incarnation),
        membership_started: AtomicBool::new(false),
        subscribers: Default::default(),
        replica: Default::default(),
        transport: endpoint.counters.clone(),
        warnings: Default::default(),
        cfg,
    });
    info!(node = %shared.id(), incarnation = durable.incarnation, highest_epoch = durable.highest_epoch, "node starting");
    let agent_core = AgentCore::new(
        shared.id(),
        Agent86Settings {
            dir: shared.cfg.data_dir.join("instances"),
            host: shared.cfg.listen.ip(),
            nic_bps: shared.cfg.nic_bps,
            interval: shared.cfg.agent.sample_interval,
            stop_grace: shared.cfg.agent.stop_grace,
            runtime: match shared.cfg.agent.runtime {
                RuntimeDriver::Process => RuntimeKind::Process,
                RuntimeDriver::Cgroup => RuntimeKind::Cgroup,
            },
            ready_timeout: std::time::Duration::from_secs(5),
        },
        durable.highest_epoch,
    )
    .map_err(|e| NodeError::Start(format!("agent86 runtime: {e}")))?;
    let (exit_tx, mut exit_rx) = watch::channel(Exit::Running);
    let (sup, handle) = Actor::spawn(
        Some(shared.name("supervisor")),
        NodeSupervisor {
            shared: shared.clone(),
            peers: peers.clone(),
            endpoint,
            exit: exit_tx,
            agent86_panics: faults.agent86_panics.map(|n| Arc::new(AtomicU32::new(n))),
            agent_core: agent_core.clone(),
        },
        (),
    )
    .await
    .map_err(|e| NodeError::Start(e.to_string()))?;
    tokio::pin!(shutdown);
    let exit = tokio::select! {
        _ = &mut shutdown => {
            let _ = sup.send_message(NodeMsg::Shutdown);
            Exit::Shutdown
        }
        r = exit_rx.wait_for(|e| *e != Exit::Running) => {
            r.map(|e| e.clone()).unwrap_or(Exit::Shutdown)
        }
    };
    // Bounded: a wedged actor must not keep the process alive.
    if tokio::time::timeout(std::time::Duration::from_secs(5), handle)
        .await
        .is_err()
    {
        error!(node = %shared.id(), "supervision tree did not stop within 5 s");
    }
    peers.stop_all();
    // Our instances do not outlive the node (a killed node's are killed by its next start).
    tokio::task::spawn_blocking(move || agent_core.stop_all())
        .await
        .ok();
    Ok(exit)
}
