//! openraft's own storage test suite (`openraft::testing::Suite`) against the
//! real sled-backed stores, each test in a fresh temporary data dir.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};
use qm_raft_node::storage::{self, LogStore, StateMachineStore};
use qm_raft_node::types::{NodeId, TypeConfig};
use qm_state_machine::TableConfig;
use tempfile::TempDir;

/// Opens the stores in a new temporary dir; the dir is the suite's guard, so
/// it is removed only after the stores are dropped.
struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), openraft::StorageError<NodeId>> {
        let to_raft_error =
            |error: &dyn std::fmt::Display| -> openraft::StorageError<NodeId> { StorageIOError::write(AnyError::error(error)).into() };
        let dir = tempfile::tempdir().map_err(|error| to_raft_error(&error))?;
        let (log_store, state_machine) = storage::open(dir.path(), TableConfig::default())
            .await
            .map_err(|error| to_raft_error(&error))?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
fn sled_stores_pass_the_openraft_storage_suite() {
    if let Err(error) = Suite::test_all(SledStoreBuilder) {
        panic!("openraft's storage suite failed: {error}");
    }
}
