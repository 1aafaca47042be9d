//! # smart-supervision
//!
//! One SMART node (`smart node`, docs/DESIGN.md §1): its supervision tree and restart
//! policy, the typed routes through which its actors reach each other, and the two ports
//! that route requests to them (the TCP port: node-to-node messages and the message API;
//! the HTTP port: the operator's `/v1` API, `/metrics`, `/ui`).
//!
//! [`run`] loads the key and durable state, starts the supervision tree
//! ([`supervisor::NodeSupervisor`]) and waits until the tree escalates or `shutdown`
//! resolves. Everything is injected — configuration, shutdown signal, fault injection — so
//! tests run several nodes in one process as easily as the binary runs one.
//!
//! ## Layout
//! - [`supervisor`]: the supervision tree (who supervises whom, what a child's death means).
//! - [`restart`]: restart intensity (at most R restarts in W, then escalate).
//! - [`routes`]: typed handles to the node's actors, refreshed by the supervisor.
//! - [`server`]: the TCP port (node-to-node and message API) and outgoing peers.
//! - [`dispatch`]: where a message-API request is answered (shared by the TCP port and the
//!   HTTP API); [`directory`]: the members' HTTP addresses; [`replica`]: the newest copy of
//!   the Control's registry.
//! - [`api_http`], [`dashboard`], [`metrics`], [`tokens`]: the operator's HTTP surface
//!   (`/v1` JSON API, `/ui`, `/metrics`) and its API tokens.
//!
//! The actors themselves live in their own crates: `smart-membership`, `smart-control`,
//! `smart-agent86`, `smart-frontend` (and `smart-agent99`, the profiler).

// Unit tests link the dev-dependencies too; the lint is meant for the library.
#![cfg_attr(test, allow(unused_crate_dependencies))]

pub mod api_http;
pub mod dashboard;
pub mod desired_link;
pub mod directory;
pub mod dispatch;
pub mod metrics;
pub mod replica;
pub mod restart;
pub mod routes;
pub mod server;
pub mod supervisor;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use ractor::Actor;
use smart_agent86::{Agent86Settings, AgentCore, RuntimeKind};
use smart_membership::epoch::EpochStore;
use smart_proto::ClusterKey;
use smart_transport::Endpoint;
use smart_transport::noise::{KeyBook, NodeKey, NoiseKeyError};
use tokio::sync::watch;
use tracing::{error, info};

use server::TransportPeers;
use smart_config::{NodeConfig, RuntimeDriver};
use smart_membership::durable::DurableState;
use smart_membership::messages::NodeMsg;
use smart_membership::persist::StateFile;
use supervisor::{Exit, NodeSupervisor};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The cluster key could not be loaded.
    #[error(transparent)]
    Key(#[from] smart_proto::key::KeyError),
    /// The node's key or the key book could not be loaded.
    #[error(transparent)]
    NodeKey(#[from] NoiseKeyError),
    /// The data directory could not be used.
    #[error(transparent)]
    Persist(#[from] smart_membership::persist::PersistError),
    /// The API tokens file could not be used.
    #[error(transparent)]
    Tokens(#[from] tokens::TokenFileError),
    /// A secret key file is readable by others than its owner.
    #[error(transparent)]
    TooOpen(#[from] smart_proto::key::TooOpen),
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
    let cfg = Arc::new(cfg);
    let admission = smart_control::AdmissionSettings::from_config(&cfg.admission)
        .map_err(|e| NodeError::Start(e.to_string()))?;
    // Secrets readable by others are refused, as ssh refuses such private keys.
    smart_proto::key::require_private(&cfg.cluster_key_file)?;
    smart_proto::key::require_private(&cfg.node_key_file)?;
    let key = ClusterKey::load(&cfg.cluster_key_file)?;
    let tokens = Arc::new(tokens::TokenStore::open(cfg.tokens_file.as_deref())?);
    let state = StateFile::open_and_boot(&cfg.data_dir)?;
    let durable = Arc::new(DurableState::new(state));
    if durable.highest() > smart_membership::engine::EPOCH_CEILING {
        // A corrupt or hostile value: this node could never claim nor follow again.
        return Err(NodeError::UnusableEpoch {
            epoch: durable.highest(),
            data_dir: cfg.data_dir.display().to_string(),
        });
    }
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
    // Pair keys with every member of the book: what proves our heartbeats are ours.
    let member_keys = node_key.member_keys(cfg.id(), &book);
    // Message-API clients present an API token of the tokens file, never the cluster key.
    let client_auth = {
        let tokens = tokens.clone();
        smart_transport::handshake::ClientAuth::new(move |token| {
            tokens
                .check(Some(token), tokens::Scope::Read)
                .ok()
                .map(|g| g.scope)
        })
    };
    let mut endpoint = Endpoint::node(cfg.id(), durable.incarnation(), key.clone())
        .with_limits(cfg.limits.transport())
        .with_keys(node_key, book)
        .with_client_auth(client_auth);
    endpoint.epoch = durable.cell();
    let peers = Arc::new(TransportPeers::new(endpoint.clone()));
    let ring = match &cfg.heartbeat.keys_file {
        Some(path) => smart_proto::heartbeat::Keyring::load(path)?,
        None => smart_proto::heartbeat::Keyring::new(key.clone()),
    }
    .encrypted(cfg.heartbeat.encrypt);
    info!(node = %cfg.id(), incarnation = durable.incarnation(), highest_epoch = durable.highest(), "node starting");
    let agent_core = AgentCore::new(
        cfg.id(),
        Agent86Settings {
            dir: cfg.data_dir.join("instances"),
            // Instances bind and advertise the data-plane IP (routable, never a wildcard).
            host: cfg.data_plane_ip(),
            nic_bps: cfg.nic_bps,
            interval: cfg.agent.sample_interval,
            stop_grace: cfg.agent.stop_grace,
            runtime: match cfg.agent.runtime {
                RuntimeDriver::Process => RuntimeKind::Process,
                RuntimeDriver::Cgroup => RuntimeKind::Cgroup,
            },
            ready_timeout: std::time::Duration::from_secs(5),
            // Derived from the cluster key (domain-separated: a pull proof is never valid
            // for anything else the key authenticates).
            pull_key: Some(smart_proto::pull::PullKey::new(
                &key.sign(&[b"smart/pull/v1/key"]),
            )),
            checkpoint_port: Some(cfg.agent.checkpoint_port),
            commands: smart_agent86::engine::CommandPolicy::new(
                cfg.allowed_commands(),
                std::env::current_exe().ok(),
            ),
            health: smart_agent86::HealthSettings::from_config(&cfg.health),
        },
        durable.highest(),
    )
    .map_err(|e| NodeError::Start(format!("agent86 runtime: {e}")))?;
    let (exit_tx, mut exit_rx) = watch::channel(Exit::Running);
    let metrics = Arc::new(metrics::NodeMetrics::new(cfg.id()));
    let observer: smart_node::events::EventObserver = {
        let metrics = metrics.clone();
        Arc::new(move |ev| metrics.event(ev))
    };
    let subscribers = Arc::new(smart_node::events::Subscribers::new(
        durable.incarnation(),
        Some(observer),
    ));
    let view = Arc::new(watch::channel(Default::default()).0);
    // The desired-state log: a Raft group of the configured members over this transport,
    // persisted under the data directory (docs/DESIGN.md, "Desired state in a Raft log").
    let desired = smart_desired::DesiredStore::open(
        &cfg.data_dir,
        cfg.id(),
        cfg.election
            .members
            .iter()
            .map(|m| smart_proto::NodeId(*m))
            .collect(),
        Arc::new(desired_link::NodeRaftLink::new(
            peers.clone(),
            view.subscribe(),
        )),
        smart_desired::DesiredConfig {
            // A voter without the Control role never leads: majority mode's Control is
            // the leader.
            may_lead: cfg.has_role(smart_proto::Role::Control),
            ..smart_desired::DesiredConfig::default()
        },
    )
    .await
    .map_err(|e| NodeError::Start(format!("desired-state log: {e}")))?;
    let directory = Arc::new(directory::MemberDirectory::default());
    // Learns the members' HTTP addresses; ends with the view (below) or is aborted.
    let learner = tokio::spawn(directory.clone().run(
        cfg.id(),
        view.subscribe(),
        peers.clone(),
        cfg.timing.request_timeout,
    ));
    let (sup, handle) = Actor::spawn(
        None,
        NodeSupervisor {
            cfg: cfg.clone(),
            key,
            ring,
            member_keys,
            warnings: Default::default(),
            durable,
            peers: peers.clone(),
            view,
            acting: Arc::new(watch::channel(Default::default()).0),
            counters: Default::default(),
            subscribers,
            metrics,
            tokens,
            directory,
            replica: Default::default(),
            routes: Default::default(),
            endpoint,
            exit: exit_tx,
            agent86_panics: faults.agent86_panics.map(|n| Arc::new(AtomicU32::new(n))),
            agent_core: agent_core.clone(),
            admission,
            desired: desired.clone(),
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
        error!(node = %cfg.id(), "supervision tree did not stop within 5 s");
    }
    learner.abort();
    // Closes the log's file: a node restarted in the same process (tests) reopens it.
    desired.shutdown().await;
    peers.stop_all();
    // Our instances do not outlive the node (a killed node's are killed by its next start).
    tokio::task::spawn_blocking(move || agent_core.stop_all())
        .await
        .ok();
    Ok(exit)
}
