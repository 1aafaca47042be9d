//! The Raft log, vote and commit index in the redb file.
//!
//! Every change is one redb write transaction, durable when `commit` returns (redb's
//! default durability fsyncs), and only then reported to openraft: an entry is acknowledged
//! to the leader, and so counted towards a commit, only once it is on disk. redb's calls
//! block on the disk, so they run on tokio's blocking pool.

// openraft's storage traits return its `StorageError` by value; the helpers here pass it on.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::types::TypeConfig;

type Entry = openraft::impls::Entry<TypeConfig>;

/// Log entries by index, each the postcard bytes of an openraft entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Single values by name (the keys below), each postcard bytes.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The vote (term, candidate, committed).
const VOTE: &str = "vote";
/// The last log id known committed (saved so a restart re-applies up to it at once).
const COMMITTED: &str = "committed";
/// The last log id purged (all entries up to it are gone, covered by a snapshot).
const PURGED: &str = "purged";
/// The current snapshot: meta and data.
pub(crate) const SNAPSHOT: &str = "snapshot";

/// The open store file, shared by Raft's log and state-machine tasks.
pub(crate) struct Db {
    // Declared first, so dropped first: the file is closed before `closed` says so.
    db: Database,
    /// Dropped once the file is closed, telling `DesiredStore::shutdown` it may return.
    _closed: watch::Sender<()>,
}

impl std::ops::Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Opens (or creates) the store file and its tables; the receiver hears the sender drop
/// when the file is closed again.
pub(crate) fn open_db(path: &Path) -> Result<(Db, watch::Receiver<()>), redb::Error> {
    let db = Database::create(path)?;
    let tx = db.begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.commit()?;
    let (tx, rx) = watch::channel(());
    Ok((Db { db, _closed: tx }, rx))
}

/// A storage error about `subject`.
pub(crate) fn sto_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<u64> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(&e)),
    }
}

/// Runs a blocking redb job on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    job: F,
) -> Result<T, StorageError<u64>>
where
    F: FnOnce() -> Result<T, StorageError<u64>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(job).await {
        Ok(r) => r,
        Err(e) => Err(sto_err(subject, verb, e)),
    }
}

/// Reads one META value.
pub(crate) fn read_meta<T: DeserializeOwned>(
    db: &Database,
    key: &str,
    subject: ErrorSubject<u64>,
) -> Result<Option<T>, StorageError<u64>> {
    let r = |e: redb::Error| sto_err(subject.clone(), ErrorVerb::Read, e);
    let tx = db.begin_read().map_err(|e| r(e.into()))?;
    let table = tx.open_table(META).map_err(|e| r(e.into()))?;
    let Some(v) = table.get(key).map_err(|e| r(e.into()))? else {
        return Ok(None);
    };
    postcard::from_bytes(v.value())
        .map(Some)
        .map_err(|e| sto_err(subject.clone(), ErrorVerb::Read, e))
}

/// Writes one META value, durably.
pub(crate) fn write_meta<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    subject: ErrorSubject<u64>,
) -> Result<(), StorageError<u64>> {
    let w = |e: redb::Error| sto_err(subject.clone(), ErrorVerb::Write, e);
    let bytes =
        postcard::to_allocvec(value).map_err(|e| sto_err(subject.clone(), ErrorVerb::Write, e))?;
    let tx = db.begin_write().map_err(|e| w(e.into()))?;
    {
        let mut table = tx.open_table(META).map_err(|e| w(e.into()))?;
        table
            .insert(key, bytes.as_slice())
            .map_err(|e| w(e.into()))?;
    }
    tx.commit().map_err(|e| w(e.into()))
}

/// The log half of the store: log entries, vote, commit index.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> Self {
        LogStore { db }
    }
}

fn read_range(
    db: &Database,
    start: Bound<u64>,
    end: Bound<u64>,
) -> Result<Vec<Entry>, StorageError<u64>> {
    let r = |e: redb::Error| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e);
    let tx = db.begin_read().map_err(|e| r(e.into()))?;
    let table = tx.open_table(LOG).map_err(|e| r(e.into()))?;
    let mut out = Vec::new();
    for item in table.range((start, end)).map_err(|e| r(e.into()))? {
        let (k, v) = item.map_err(|e| r(e.into()))?;
        let entry: Entry = postcard::from_bytes(v.value())
            .map_err(|e| sto_err(ErrorSubject::LogIndex(k.value()), ErrorVerb::Read, e))?;
        out.push(entry);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let db = self.db.clone();
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            read_range(&db, start, end)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            let purged: Option<LogId<u64>> = read_meta(&db, PURGED, ErrorSubject::Logs)?;
            let r = |e: redb::Error| sto_err(ErrorSubject::Logs, ErrorVerb::Read, e);
            let tx = db.begin_read().map_err(|e| r(e.into()))?;
            let table = tx.open_table(LOG).map_err(|e| r(e.into()))?;
            let last = match table.last().map_err(|e| r(e.into()))? {
                Some((k, v)) => {
                    let entry: Entry = postcard::from_bytes(v.value()).map_err(|e| {
                        sto_err(ErrorSubject::LogIndex(k.value()), ErrorVerb::Read, e)
                    })?;
                    Some(*entry.get_log_id())
                }
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(ErrorSubject::Vote, ErrorVerb::Write, move || {
            write_meta(&db, VOTE, &vote, ErrorSubject::Vote)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Vote, ErrorVerb::Read, move || {
            read_meta(&db, VOTE, ErrorSubject::Vote)
        })
        .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Store, ErrorVerb::Write, move || {
            write_meta(&db, COMMITTED, &committed, ErrorSubject::Store)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Store, ErrorVerb::Read, move || {
            Ok(read_meta::<Option<LogId<u64>>>(&db, COMMITTED, ErrorSubject::Store)?.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let index = entry.get_log_id().index;
            let bytes = postcard::to_allocvec(&entry)
                .map_err(|e| sto_err(ErrorSubject::LogIndex(index), ErrorVerb::Write, e))?;
            rows.push((index, bytes));
        }
        let db = self.db.clone();
        let written = blocking(ErrorSubject::Logs, ErrorVerb::Write, move || {
            let w = |e: redb::Error| sto_err(ErrorSubject::Logs, ErrorVerb::Write, e);
            let tx = db.begin_write().map_err(|e| w(e.into()))?;
            {
                let mut table = tx.open_table(LOG).map_err(|e| w(e.into()))?;
                for (index, bytes) in &rows {
                    table
                        .insert(*index, bytes.as_slice())
                        .map_err(|e| w(e.into()))?;
                }
            }
            tx.commit().map_err(|e| w(e.into()))
        })
        .await;
        // Acknowledged only once durable: openraft counts this node's copy towards a commit
        // when the callback says so.
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let w = |e: redb::Error| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
            let tx = db.begin_write().map_err(|e| w(e.into()))?;
            {
                let mut table = tx.open_table(LOG).map_err(|e| w(e.into()))?;
                table
                    .retain_in(log_id.index.., |_, _| false)
                    .map_err(|e| w(e.into()))?;
            }
            tx.commit().map_err(|e| w(e.into()))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let w = |e: redb::Error| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
            let bytes = postcard::to_allocvec(&log_id)
                .map_err(|e| sto_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            // The purge mark and the removal in one transaction: a crash leaves neither or
            // both.
            let tx = db.begin_write().map_err(|e| w(e.into()))?;
            {
                let mut meta = tx.open_table(META).map_err(|e| w(e.into()))?;
                meta.insert(PURGED, bytes.as_slice())
                    .map_err(|e| w(e.into()))?;
                let mut table = tx.open_table(LOG).map_err(|e| w(e.into()))?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(|e| w(e.into()))?;
            }
            tx.commit().map_err(|e| w(e.into()))
        })
        .await
    }
}
