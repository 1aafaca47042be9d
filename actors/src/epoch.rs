//! The node's highest epoch, shared by the actors and persisted by the node runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smart_supervision::Epoch;

/// Where actors read and raise the node's highest epoch seen. Raising must be durable
/// before it returns (DESIGN §2.1: persist before acting on a new epoch).
pub trait EpochStore: Send + Sync + 'static {
    /// The highest epoch this node has seen.
    fn highest(&self) -> Epoch;
    /// Persists `epoch` when it is higher than the current value. An error means the node
    /// can no longer guarantee fencing and must stop.
    fn raise(&self, epoch: Epoch) -> Result<(), String>;
}

/// An in-memory store for tests and simulations.
#[derive(Debug, Default, Clone)]
pub struct MemoryEpochStore(Arc<AtomicU64>);

impl MemoryEpochStore {
    /// A store starting at `epoch`.
    pub fn new(epoch: Epoch) -> Self {
        Self(Arc::new(AtomicU64::new(epoch)))
    }
}

impl EpochStore for MemoryEpochStore {
    fn highest(&self) -> Epoch {
        self.0.load(Ordering::SeqCst)
    }

    fn raise(&self, epoch: Epoch) -> Result<(), String> {
        self.0.fetch_max(epoch, Ordering::SeqCst);
        Ok(())
    }
}
