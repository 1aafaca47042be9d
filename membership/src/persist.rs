//! The node's durable state: its incarnation (boot counter) and the highest Control epoch it
//! has seen (docs/DESIGN.md §2.1: persisted before the node acts on it).
//!
//! Stored as a small JSON file in the data directory, replaced atomically (write to a
//! temporary file, fsync, rename, fsync the directory) so that a crash at any point leaves
//! either the old or the new value, never a torn file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What a node keeps across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Durable {
    /// Incremented at every start.
    pub incarnation: u64,
    /// Highest Control epoch this node has seen.
    pub highest_epoch: u64,
}

/// Why the durable state could not be read or written. Both are fatal for the node: it must
/// not act on an epoch it could not persist.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// File system error.
    #[error("data dir {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another process holds the data directory: a node runs on it (two nodes on one data
    /// dir would reuse each other's epochs and incarnations), or `smart repair` does.
    #[error("data dir {dir} is in use by another process (a running `smart node`?): stop it first")]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The state file exists but is corrupt: refuse to start rather than reuse epochs.
    #[error(
        "state file {path} is corrupt ({reason}); repair it with `smart repair --data-dir <dir> --epoch <N>`, N at least the cluster's highest epoch (`smart status`)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
}

impl PersistError {
    /// Whether retrying may succeed: the cause is a resource that runs out and comes back
    /// (descriptors, memory, disk space, quota, an interrupted call). Everything else (an
    /// I/O error of the device, a read-only or vanished file system, permissions, a
    /// corrupt file) is fatal: retrying cannot help and the node must stop.
    pub fn is_transient(&self) -> bool {
        match self {
            PersistError::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(
                        libc::EMFILE
                            | libc::ENFILE
                            | libc::ENOMEM
                            | libc::ENOSPC
                            | libc::EDQUOT
                            | libc::EAGAIN
                            | libc::EINTR
                            | libc::ENOBUFS
                    )
                ) || matches!(
                    source.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                )
            }
            PersistError::Corrupt { .. } | PersistError::Locked { .. } => false,
        }
    }
}

/// A failed write of the highest epoch, typed by what the node must do about it.
#[derive(Debug, thiserror::Error)]
pub enum EpochWriteError {
    /// A resource ran out (EMFILE, ENFILE, ENOMEM, ENOSPC, EDQUOT, EAGAIN, EINTR): the node
    /// refuses to act on the epoch (steps down, does not claim) and retries.
    #[error("cannot persist epoch {epoch} for now (will retry): {source}")]
    Retryable {
        /// The epoch that could not be written.
        epoch: u64,
        /// The cause.
        source: PersistError,
    },
    /// The data dir is unusable (EIO, EROFS, EACCES, vanished, ...): the node must stop.
    #[error("cannot persist epoch {epoch}: {source}")]
    Fatal {
        /// The epoch that could not be written.
        epoch: u64,
        /// The cause.
        source: PersistError,
    },
}

impl EpochWriteError {
    /// Classifies a write failure of `epoch`.
    pub fn new(epoch: u64, source: PersistError) -> Self {
        if source.is_transient() {
            EpochWriteError::Retryable { epoch, source }
        } else {
            EpochWriteError::Fatal { epoch, source }
        }
    }
}

/// The state file in a data directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    current: Durable,
    /// The data dir's exclusive lock, held as long as any clone of this lives.
    _lock: Arc<File>,
}

const FILE_NAME: &str = "node-state.json";

/// The lock file in a data directory: a process that uses the directory holds an exclusive
/// lock on it (`flock`, released by the kernel when the process dies, however it dies).
const LOCK_FILE: &str = "lock";

/// Takes the data dir's exclusive lock, or says who holds it.
fn lock(data_dir: &Path) -> Result<Arc<File>, PersistError> {
    let path = data_dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(Arc::new(file)),
        Err(fs::TryLockError::WouldBlock) => Err(PersistError::Locked {
            dir: data_dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io(&path)(e)),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl StateFile {
    /// Opens (creating the directory if needed) and locks the data dir for as long as the
    /// value lives ([`PersistError::Locked`] when another process holds it), bumps the
    /// incarnation and persists it.
    pub fn open_and_boot(data_dir: &Path) -> Result<Self, PersistError> {
        fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        let lock = lock(data_dir)?;
        let path = data_dir.join(FILE_NAME);
        let current = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PersistError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Durable::default(),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut file = Self {
            path,
            current,
            _lock: lock,
        };
        file.boot()?;
        Ok(file)
    }

    /// Starts a new incarnation and persists it: called at node start and whenever the
    /// heartbeat engine restarts, so that its sequence numbers, which restart at zero, are
    /// never taken for replays by the other nodes.
    ///
    /// The incarnation is at least the wall clock in milliseconds: a node whose data dir was
    /// lost restarts at 1 otherwise, and its peers would drop its datagrams as coming from
    /// an older incarnation. The clock is only a floor; a clock set back changes nothing,
    /// since the persisted value + 1 still wins.
    pub fn boot(&mut self) -> Result<u64, PersistError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let next = Durable {
            incarnation: (self.current.incarnation + 1).max(now_ms),
            ..self.current
        };
        self.write(next)?;
        Ok(next.incarnation)
    }

    /// Operator repair (`smart repair`): sets the highest epoch to `epoch`, even lower than
    /// the stored one, keeping the incarnation; a corrupt or missing file is replaced.
    /// Returns the value found (`None` if missing or corrupt) and the value written. Only for
    /// a stopped node (refused with [`PersistError::Locked`] while a node runs on it):
    /// `epoch` must be at least the cluster's highest (from `smart status`).
    pub fn repair(data_dir: &Path, epoch: u64) -> Result<(Option<Durable>, Durable), PersistError> {
        fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        let lock = lock(data_dir)?;
        let path = data_dir.join(FILE_NAME);
        let found: Option<Durable> = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&path)(e)),
        };
        let mut file = Self {
            path,
            current: found.unwrap_or_default(),
            _lock: lock,
        };
        let value = Durable {
            highest_epoch: epoch,
            ..file.current
        };
        file.write(value)?;
        Ok((found, value))
    }

    /// The current durable values.
    pub fn get(&self) -> Durable {
        self.current
    }

    /// Persists a new highest epoch (no-op when not higher). Returns once it is on disk.
    pub fn raise_epoch(&mut self, epoch: u64) -> Result<(), PersistError> {
        if epoch <= self.current.highest_epoch {
            return Ok(());
        }
        self.write(Durable {
            highest_epoch: epoch,
            ..self.current
        })
    }

    fn write(&mut self, value: Durable) -> Result<(), PersistError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            let body = serde_json::to_vec(&value).expect("plain struct serialises");
            f.write_all(&body).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        // The rename is durable only once the directory entry is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        self.current = value;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_grows_and_epoch_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateFile::open_and_boot(dir.path()).unwrap();
        let first = s.get().incarnation;
        assert!(first > 1, "floored by the clock");
        s.raise_epoch(7).unwrap();
        s.raise_epoch(3).unwrap(); // lower: ignored
        assert_eq!(s.get().highest_epoch, 7);
        drop(s);
        let mut s = StateFile::open_and_boot(dir.path()).unwrap();
        assert!(s.get().incarnation > first);
        assert_eq!(s.get().highest_epoch, 7);
        // Even a persisted incarnation far in the future only grows.
        s.write(Durable {
            incarnation: u64::MAX / 2,
            highest_epoch: 7,
        })
        .unwrap();
        assert_eq!(s.boot().unwrap(), u64::MAX / 2 + 1);
    }

    #[test]
    fn repair_lowers_an_unusable_epoch_and_replaces_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateFile::open_and_boot(dir.path()).unwrap();
        s.raise_epoch(u64::MAX).unwrap();
        let inc = s.get().incarnation;
        drop(s);
        let (found, now) = StateFile::repair(dir.path(), 12).unwrap();
        assert_eq!(found.unwrap().highest_epoch, u64::MAX);
        assert_eq!(
            now,
            Durable {
                incarnation: inc,
                highest_epoch: 12
            }
        );
        fs::write(dir.path().join(FILE_NAME), b"{\"incarn").unwrap();
        let (found, now) = StateFile::repair(dir.path(), 5).unwrap();
        assert!(found.is_none());
        assert_eq!(now.highest_epoch, 5);
        assert_eq!(
            StateFile::open_and_boot(dir.path())
                .unwrap()
                .get()
                .highest_epoch,
            5
        );
    }

    #[test]
    fn transient_and_fatal_write_errors_are_told_apart_by_errno() {
        let e = |errno| PersistError::Io {
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        for t in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOSPC,
            libc::EDQUOT,
            libc::EINTR,
        ] {
            assert!(matches!(
                EpochWriteError::new(1, e(t)),
                EpochWriteError::Retryable { .. }
            ));
        }
        for f in [libc::EIO, libc::EROFS, libc::EACCES, libc::ENOENT] {
            assert!(matches!(
                EpochWriteError::new(1, e(f)),
                EpochWriteError::Fatal { .. }
            ));
        }
    }

    /// Two processes on one data dir would reuse each other's epochs: the second open, and
    /// a repair while a node runs, are refused; both work once the holder is gone.
    #[test]
    fn a_data_dir_in_use_is_refused_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateFile::open_and_boot(dir.path()).unwrap();
        let held = s.clone();
        drop(s);
        assert!(matches!(
            StateFile::open_and_boot(dir.path()),
            Err(PersistError::Locked { .. })
        ));
        assert!(matches!(
            StateFile::repair(dir.path(), 3),
            Err(PersistError::Locked { .. })
        ));
        drop(held);
        StateFile::repair(dir.path(), 3).unwrap();
        assert_eq!(
            StateFile::open_and_boot(dir.path())
                .unwrap()
                .get()
                .highest_epoch,
            3
        );
    }

    #[test]
    fn corrupt_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"{\"incarn").unwrap();
        let err = StateFile::open_and_boot(dir.path()).unwrap_err();
        assert!(matches!(err, PersistError::Corrupt { .. }), "{err}");
    }
}
