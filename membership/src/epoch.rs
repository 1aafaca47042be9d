//! The node's highest epoch, shared by the actors and persisted by the node runtime, and
//! the typed error that tells the supervisor "this node must stop".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smart_proto::Epoch;

/// An epoch could not be made durable, typed by what the node must do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PersistError {
    /// A resource ran out and may come back (descriptors, memory, disk space): the node
    /// refuses to act on the epoch (steps down, claims nothing, refuses the command) and
    /// tries again later.
    #[error("cannot persist epoch {epoch} for now (will retry): {cause}")]
    Retryable {
        /// The epoch.
        epoch: Epoch,
        /// Why (the I/O error).
        cause: String,
    },
    /// The data directory is unusable (I/O error, read-only, permissions): the node must
    /// stop.
    #[error("cannot persist epoch {epoch}: {cause}")]
    Fatal {
        /// The epoch.
        epoch: Epoch,
        /// Why (the I/O error).
        cause: String,
    },
}

/// Where actors read and raise the node's highest epoch seen. Raising must be durable
/// before it returns (docs/DESIGN.md §2.1: persist before acting on a new epoch).
pub trait EpochStore: Send + Sync + 'static {
    /// The highest epoch this node has seen.
    fn highest(&self) -> Epoch;
    /// Persists `epoch` when it is higher than the current value.
    fn raise(&self, epoch: Epoch) -> Result<(), PersistError>;
}

/// Errors after which this node must stop (the supervisor escalates at once, and the
/// service manager restarts the process): an actor fails with one of these, boxed, and
/// the supervisor recognises it by type, never by message text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    /// A new epoch could not be made durable: acting on it could let a restarted node
    /// reuse it.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

impl Fatal {
    /// The fatal error inside an actor's failure, if it is one.
    pub fn of<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Fatal> {
        err.downcast_ref::<Fatal>()
    }
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

    fn raise(&self, epoch: Epoch) -> Result<(), PersistError> {
        self.0.fetch_max(epoch, Ordering::SeqCst);
        Ok(())
    }
}
