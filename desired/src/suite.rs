//! openraft's own storage test suite, run against the redb log store and the state
//! machine: the contract openraft relies on (log state, vote, truncate, purge, apply,
//! membership, re-apply of committed entries, snapshots).

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use smart_proto::desired::DesiredState;
use tokio::sync::watch;

use crate::log_store::{LogStore, open_db, sto_err};
use crate::state_machine::StateMachine;
use crate::types::TypeConfig;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let io = |e: std::io::Error| {
            sto_err(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e)
        };
        let dir = tempfile::tempdir().map_err(io)?;
        let (db, _closed) = open_db(&dir.path().join(crate::STORE_FILE))
            .map_err(|e| sto_err(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e))?;
        let db = Arc::new(db);
        let (tx, _rx) = watch::channel(Arc::new(DesiredState::default()));
        let sm = StateMachine::open(db.clone(), tx)?;
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn the_store_passes_openraft_s_storage_suite() {
    Suite::test_all(RedbBuilder).expect("storage suite");
}
