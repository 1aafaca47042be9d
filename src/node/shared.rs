//! State shared by the actors of one node: durable epochs, the views that membership keeps
//! current for the other actors, counters, and actor names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use smart_actors::control::AgentAddr;
use smart_actors::epoch::EpochStore;
use smart_actors::frontend::FrontEnd;
use smart_actors::proto::PeerClient;
use smart_api::{Event, NodeProtocol};
use smart_supervision::transport::Connection;
use smart_supervision::{ClusterKey, Epoch, NodeId};
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::persist::{EpochWriteError, StateFile};

/// The node's durable highest epoch, behind the actors' [`EpochStore`] seam.
pub struct DiskEpochs {
    file: Mutex<StateFile>,
    /// Shared with the transport endpoint, which stamps it on every envelope.
    cached: Arc<AtomicU64>,
}

impl DiskEpochs {
    /// Wraps an opened state file.
    pub fn new(file: StateFile) -> Self {
        let cached = Arc::new(AtomicU64::new(file.get().highest_epoch));
        Self {
            file: Mutex::new(file),
            cached,
        }
    }

    /// The cell holding the highest epoch (for the transport endpoint).
    pub fn cell(&self) -> Arc<AtomicU64> {
        self.cached.clone()
    }

    /// Persists `epoch` (when higher), typed by what to do on failure. A transient cause is
    /// retried a few times right here (a descriptor or a block may free up within
    /// milliseconds) before it is reported.
    pub fn raise_typed(&self, epoch: Epoch) -> Result<(), EpochWriteError> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let mut delay = std::time::Duration::from_millis(2);
        let mut tries = 0;
        loop {
            match f.raise_epoch(epoch) {
                Ok(()) => break,
                Err(e) => match EpochWriteError::new(epoch, e) {
                    EpochWriteError::Retryable { .. } if tries < 3 => {
                        tries += 1;
                        std::thread::sleep(delay);
                        delay *= 4;
                    }
                    err => return Err(err),
                },
            }
        }
        // Published only once durable.
        self.cached.fetch_max(epoch, Ordering::SeqCst);
        Ok(())
    }

    /// Starts a new incarnation (see [`StateFile::boot`]).
    pub fn boot(&self) -> Result<u64, String> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.boot().map_err(|e| e.to_string())
    }
}

impl EpochStore for DiskEpochs {
    fn highest(&self) -> Epoch {
        self.cached.load(Ordering::SeqCst)
    }

    fn raise(&self, epoch: Epoch) -> Result<(), String> {
        self.raise_typed(epoch).map_err(|e| e.to_string())
    }
}

/// Named counters (dropped datagrams by reason, restarts, ...), shown by `smart status`.
#[derive(Default)]
pub struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    /// Adds one to `name`.
    pub fn incr(&self, name: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(name.to_string()).or_default() += 1;
    }

    /// A copy of all counters.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Everything the node's actors share.
pub struct Shared {
    /// The configuration.
    pub cfg: NodeConfig,
    /// The cluster key.
    pub key: ClusterKey,
    /// The heartbeat keyring (the cluster key alone unless `[heartbeat] keys_file`).
    pub ring: smart_supervision::wire::Keyring,
    /// Durable epochs.
    pub epochs: Arc<DiskEpochs>,
    /// Transport address of the current Control, kept by membership.
    pub control_addr: watch::Sender<Option<SocketAddr>>,
    /// Live members with the agent role, kept by membership, read by the Control.
    pub agents: watch::Sender<Vec<AgentAddr>>,
    /// Transport addresses of the other live members (any role), kept by membership.
    pub others: watch::Sender<Vec<SocketAddr>>,
    /// Counters.
    pub counters: Counters,
    /// The current incarnation (changes when membership restarts).
    pub incarnation: AtomicU64,
    /// Set once membership has started: later starts are restarts and bump the incarnation.
    pub membership_started: std::sync::atomic::AtomicBool,
    /// The transport's counters (handshakes, rejected frames, ...).
    pub transport: Arc<smart_supervision::transport::Counters>,
    /// The last registry copy a Control sent this node.
    pub replica: Mutex<Vec<smart_actors::proto::ReplicaEntry>>,
    /// Message-API connections that subscribed to events.
    pub subscribers: Mutex<Vec<Connection<NodeProtocol>>>,
    /// One WARN line per kind and interval, with counts (hostile traffic must not flood
    /// the log).
    pub warnings: smart_supervision::ratelog::WarnLimiter,
}

impl Shared {
    /// Pushes `ev` to every subscriber; closed connections are forgotten. A full queue drops
    /// the event for that subscriber (counted by the transport): a slow subscriber never
    /// stalls the node.
    pub fn publish(&self, ev: Event) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|c| !c.is_closed());
        for c in subs.iter() {
            let _ = c.notify(ev.clone());
        }
    }

    /// Forwarding of message-API requests to the current Control, retrying the transient
    /// failures (no Control, rebuilding) for up to five request timeouts, so that clients
    /// wait across a Control failover instead of failing.
    pub fn forwarder(&self, peers: Arc<dyn PeerClient>) -> FrontEnd {
        let t = self.cfg.timing.request_timeout;
        FrontEnd {
            node: self.id(),
            control: self.control_addr.subscribe(),
            peers,
            deadline: t * 5,
            attempt_timeout: t,
        }
    }

    /// A rate-limited WARN line of `kind` (see [`smart_supervision::ratelog`]).
    pub fn warn_limited(&self, kind: &'static str, message: std::fmt::Arguments<'_>) {
        self.warnings.warn(kind, message);
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id()
    }

    /// The registry name of one of this node's actors. Names carry the node id because
    /// ractor's registry is process-global and tests run several nodes in one process.
    pub fn name(&self, actor: &str) -> String {
        format!("{}/{actor}", self.cfg.id())
    }
}
