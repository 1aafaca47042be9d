//! The state machine: [`DesiredState`] in memory, its snapshots in the redb file.
//!
//! The state is not written on every apply: a restart loads the current snapshot and
//! openraft re-applies the committed log entries after it (the log keeps every entry the
//! snapshot does not cover). A snapshot is the postcard bytes of the state with openraft's
//! metadata, stored under one key, replaced whole by the next one.

// openraft's storage traits return its `StorageError` by value; the helpers here pass it on.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogId, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use smart_proto::desired::{ApplyResult, DesiredState};
use tokio::sync::watch;

use crate::log_store::{Db, SNAPSHOT, blocking, read_meta, sto_err, write_meta};
use crate::types::TypeConfig;

type Entry = openraft::impls::Entry<TypeConfig>;
type Membership = StoredMembership<u64, openraft::EmptyNode>;
type Meta = SnapshotMeta<u64, openraft::EmptyNode>;

/// A snapshot as stored: openraft's metadata and the encoded state.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

/// The state machine.
pub(crate) struct StateMachine {
    db: Arc<Db>,
    state: Arc<DesiredState>,
    last_applied: Option<LogId<u64>>,
    membership: Membership,
    /// Every applied state goes out here (`DesiredStore::state`).
    tx: watch::Sender<Arc<DesiredState>>,
}

impl StateMachine {
    /// Loads the current snapshot, if any; openraft re-applies the log after it.
    pub(crate) fn open(
        db: Arc<Db>,
        tx: watch::Sender<Arc<DesiredState>>,
    ) -> Result<Self, StorageError<u64>> {
        let mut sm = StateMachine {
            db,
            state: Arc::default(),
            last_applied: None,
            membership: Membership::default(),
            tx,
        };
        if let Some(stored) = read_meta::<StoredSnapshot>(&sm.db, SNAPSHOT, snapshot_subject())? {
            sm.load(&stored)?;
        }
        Ok(sm)
    }

    fn load(&mut self, stored: &StoredSnapshot) -> Result<(), StorageError<u64>> {
        let state: DesiredState = postcard::from_bytes(&stored.data).map_err(|e| {
            sto_err(
                ErrorSubject::Snapshot(Some(stored.meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        self.state = Arc::new(state);
        self.last_applied = stored.meta.last_log_id;
        self.membership = stored.meta.last_membership.clone();
        self.tx.send_replace(self.state.clone());
        Ok(())
    }
}

fn snapshot_subject() -> ErrorSubject<u64> {
    ErrorSubject::Snapshot(None)
}

/// Builds a snapshot of the state as it was when the builder was made.
pub(crate) struct SnapshotBuilder {
    db: Arc<Db>,
    state: Arc<DesiredState>,
    last_applied: Option<LogId<u64>>,
    membership: Membership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let data = postcard::to_allocvec(&*self.state)
            .map_err(|e| sto_err(snapshot_subject(), ErrorVerb::Write, e))?;
        // Unique per build: two builds at the same log id may still differ in bytes.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let index = self.last_applied.map(|l| l.index).unwrap_or(0);
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!("{index}-{nanos}"),
        };
        let stored = StoredSnapshot { meta, data };
        let db = self.db.clone();
        let stored = blocking(snapshot_subject(), ErrorVerb::Write, move || {
            write_meta(&db, SNAPSHOT, &stored, snapshot_subject())?;
            Ok(stored)
        })
        .await?;
        tracing::info!(
            index,
            bytes = stored.data.len(),
            "desired state snapshot built"
        );
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let mut changed = false;
        for entry in entries {
            let log_id = *entry.get_log_id();
            self.last_applied = Some(log_id);
            let result = match entry.payload {
                EntryPayload::Blank => ApplyResult::Unchanged,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(log_id), m);
                    ApplyResult::Unchanged
                }
                EntryPayload::Normal(cmd) => {
                    // Copies the state only while a reader still holds the previous one.
                    let result = Arc::make_mut(&mut self.state).apply(&cmd);
                    changed |= result == ApplyResult::Applied;
                    result
                }
            };
            results.push(result);
        }
        if changed {
            self.tx.send_replace(self.state.clone());
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        // Decoded before it is stored: a snapshot that does not decode replaces nothing.
        let state: DesiredState = postcard::from_bytes(&stored.data).map_err(|e| {
            sto_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        let db = self.db.clone();
        let stored = blocking(snapshot_subject(), ErrorVerb::Write, move || {
            write_meta(&db, SNAPSHOT, &stored, snapshot_subject())?;
            Ok(stored)
        })
        .await?;
        tracing::info!(
            index = stored.meta.last_log_id.map(|l| l.index),
            bytes = stored.data.len(),
            "desired state snapshot installed"
        );
        self.state = Arc::new(state);
        self.last_applied = stored.meta.last_log_id;
        self.membership = stored.meta.last_membership.clone();
        self.tx.send_replace(self.state.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let db = self.db.clone();
        let stored = blocking(snapshot_subject(), ErrorVerb::Read, move || {
            read_meta::<StoredSnapshot>(&db, SNAPSHOT, snapshot_subject())
        })
        .await?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
