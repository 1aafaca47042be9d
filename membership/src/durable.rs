//! The node's durable state behind the actors' [`EpochStore`] seam: the highest epoch
//! (raised before the node acts on it) and the incarnation (a new one at every start of
//! membership, so that sequence numbers restarting at zero are not taken for replays).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::epoch::{EpochStore, PersistError};
use smart_proto::{Epoch, Incarnation};

use crate::persist::{EpochWriteError, StateFile};

/// The state file, and the values other parts read without touching the disk.
pub struct DurableState {
    file: Mutex<StateFile>,
    /// Shared with the transport endpoint, which stamps it on every envelope.
    highest: Arc<AtomicU64>,
    incarnation: AtomicU64,
}

impl DurableState {
    /// Wraps an opened (and booted) state file.
    pub fn new(file: StateFile) -> Self {
        let d = file.get();
        Self {
            file: Mutex::new(file),
            highest: Arc::new(AtomicU64::new(d.highest_epoch)),
            incarnation: AtomicU64::new(d.incarnation),
        }
    }

    /// The cell holding the highest epoch (for the transport endpoint).
    pub fn cell(&self) -> Arc<AtomicU64> {
        self.highest.clone()
    }

    /// The current incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation.load(Ordering::SeqCst)
    }

    /// Starts a new incarnation (see [`StateFile::boot`]).
    pub fn boot(&self) -> Result<Incarnation, crate::persist::PersistError> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let i = f.boot()?;
        self.incarnation.store(i, Ordering::SeqCst);
        Ok(i)
    }
}

impl EpochStore for DurableState {
    fn highest(&self) -> Epoch {
        self.highest.load(Ordering::SeqCst)
    }

    fn raise(&self, epoch: Epoch) -> Result<(), PersistError> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // A transient cause is retried a few times right here (a descriptor or a block may
        // free up within milliseconds) before it is reported.
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
                    EpochWriteError::Retryable { source, .. } => {
                        return Err(PersistError::Retryable {
                            epoch,
                            cause: source.to_string(),
                        });
                    }
                    EpochWriteError::Fatal { source, .. } => {
                        return Err(PersistError::Fatal {
                            epoch,
                            cause: source.to_string(),
                        });
                    }
                },
            }
        }
        // Published only once durable.
        self.highest.fetch_max(epoch, Ordering::SeqCst);
        Ok(())
    }
}
