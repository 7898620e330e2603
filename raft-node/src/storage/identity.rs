//! [`ClusterIdentity`]: the id of the cluster this replica belongs to, in
//! its sled metadata beside the vote.
//!
//! Not in the replicated table: the id must not change the table's encoded
//! layout, and it is per replica state in the same way as the vote (set
//! once: at initialisation, by adopting a leader's, or by `qm-node
//! restore`/`recover`). See `consensus::announce` for how it spreads and
//! what it refuses.

use std::sync::{Arc, Mutex, RwLock};

use super::db::KEY_CLUSTER_ID;
use super::durable::DurableFlush;
use super::error::StorageError;

/// The cluster id, read once at open and cached; cheap to clone.
///
/// Clones live in the node and the network, which a pass of the server
/// may leave behind for a moment (a connection still draining after the
/// shutdown grace). They must not keep the data dir open: the server
/// [`release`](Self::release)s the store at the end of each pass, so that a
/// replica reopening its storage after a disk fault gets sled's lock.
#[derive(Clone)]
pub struct ClusterIdentity {
    store: Arc<Mutex<Option<Store>>>,
    cached: Arc<RwLock<Option<String>>>,
}

/// Where the id is written.
struct Store {
    meta: sled::Tree,
    flush: DurableFlush,
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
            store: Arc::new(Mutex::new(Some(Store { meta, flush }))),
            cached: Arc::new(RwLock::new(stored)),
        })
    }

    /// The id; `None` before this replica has one.
    pub fn get(&self) -> Option<String> {
        self.cached.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Stores `id` durably. Setting the id a replica already has does
    /// nothing; replacing one is a programmer's error (callers judge first).
    /// After [`Self::release`] it fails: the storage is closed.
    pub async fn set(&self, id: &str) -> Result<(), StorageError> {
        assert!(!id.is_empty(), "a cluster id is never empty");
        if let Some(current) = self.get() {
            assert_eq!(current, id, "a replica's cluster id never changes");
            return Ok(());
        }
        let (meta, flush) = {
            let store = self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let store = store.as_ref().ok_or(StorageError::Closed)?;
            (store.meta.clone(), store.flush.clone())
        };
        meta.insert(KEY_CLUSTER_ID, id.as_bytes())?;
        flush.flush().await.map_err(StorageError::Sync)?;
        *self.cached.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.to_owned());
        Ok(())
    }

    /// Lets go of the data dir (every clone does): the id stays readable.
    pub fn release(&self) {
        *self.store.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}
