//! [`ClusterIdentity`]: the id of the cluster this replica belongs to, in
//! its sled metadata beside the vote.
//!
//! Not in the replicated table: the id must not change the table's encoded
//! layout, and it is per replica state in the same way as the vote (set
//! once: at initialisation, by adopting a leader's, or by `qm-node
//! restore`/`recover`). See `consensus::announce` for how it spreads and
//! what it refuses.

use std::sync::{Arc, RwLock};

use super::db::KEY_CLUSTER_ID;
use super::durable::DurableFlush;
use super::error::StorageError;

/// The cluster id, read once at open and cached; cheap to clone.
#[derive(Clone)]
pub struct ClusterIdentity {
    meta: sled::Tree,
    flush: DurableFlush,
    cached: Arc<RwLock<Option<String>>>,
}

impl std::fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterIdentity").field("id", &self.get()).finish_non_exhaustive()
    }
}

impl ClusterIdentity {
    pub(crate) fn open(meta: sled::Tree, flush: DurableFlush) -> Result<ClusterIdentity, StorageError> {
        let stored = match meta.get(KEY_CLUSTER_ID)? {
            Some(bytes) => Some(String::from_utf8(bytes.to_vec()).map_err(|error| StorageError::Decode {
                what: "cluster id",
                reason: error.to_string(),
            })?),
            None => None,
        };
        Ok(ClusterIdentity {
            meta,
            flush,
            cached: Arc::new(RwLock::new(stored)),
        })
    }

    /// The id; `None` before this replica has one.
    pub fn get(&self) -> Option<String> {
        self.cached.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Stores `id` durably. Setting the id a replica already has does
    /// nothing; replacing one is a programmer's error (callers judge first).
    pub async fn set(&self, id: &str) -> Result<(), StorageError> {
        assert!(!id.is_empty(), "a cluster id is never empty");
        if let Some(current) = self.get() {
            assert_eq!(current, id, "a replica's cluster id never changes");
            return Ok(());
        }
        self.meta.insert(KEY_CLUSTER_ID, id.as_bytes())?;
        self.flush.flush().await.map_err(StorageError::Sync)?;
        *self.cached.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.to_owned());
        Ok(())
    }
}
