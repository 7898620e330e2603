//! The sled database of one data dir: opened with explicit flushing only,
//! locked against a second process, stamped with the layout version; the
//! names of its trees.

use std::path::Path;

use super::codec;
use super::durable::DurableFlush;
use super::error::StorageError;

/// sled's cache for hot pages. The log tail and the vote are what a replica
/// reads; the table itself lives in memory, so sled's default of 1 GiB would
/// mostly cache nothing useful. The log is written once and read soon after
/// (by the leader's replication, within a heartbeat or so: a few MB at full
/// load), if at all; at 64 MiB the cache held ~53 MB of old entries in a
/// loaded replica's heap (BENCHMARKS.md, "Where a million allocations' bytes
/// go"). A follower far behind reads from the OS's page cache instead.
pub const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// How often, and how far apart, opening retries a data dir whose lock is
/// held, before reporting [`StorageError::DataDirInUse`]. A Db dropped in this
/// process keeps its lock until sled's IO threads (and the log's background
/// purger, for the one batch it may be removing) let go of it, a few
/// milliseconds; 25 × 20 ms covers that with a wide margin and still
/// reports a real conflict within half a second.
pub const DATA_DIR_LOCK_RETRIES: u32 = 25;
pub const DATA_DIR_LOCK_RETRY_INTERVAL_MS: u64 = 20;

/// The layout of the trees below. Bumped when it changes, so a build refuses
/// a data dir it would misread.
pub const STORAGE_LAYOUT_VERSION: u32 = 1;

/// Tree names.
pub(crate) const LOG_TREE: &str = "raft_log";
pub(crate) const META_TREE: &str = "raft_meta";

/// Keys of the meta tree.
pub(crate) const KEY_LAYOUT_VERSION: &[u8] = b"layout_version";

/// Opens sled with explicit flushing only; blocking (sled recovers the log on
/// open).
pub(crate) fn open_db(path: &Path) -> Result<(sled::Db, DurableFlush), StorageError> {
    std::fs::create_dir_all(path).map_err(|source| StorageError::CreateDir {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lock_retries = 0;
    let db = loop {
        let config = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(SLED_CACHE_BYTES)
            // Never rely on a timer for durability: every durable point flushes.
            .flush_every_ms(None);
        match config.open() {
            Ok(db) => break db,
            // sled's IO threads hold the lock for a moment after the last
            // handle of a Db in this process is dropped; a real conflict
            // with another process outlasts the retries.
            Err(source) if is_lock_conflict(&source) && lock_retries < DATA_DIR_LOCK_RETRIES => {
                lock_retries += 1;
                std::thread::sleep(std::time::Duration::from_millis(DATA_DIR_LOCK_RETRY_INTERVAL_MS));
            }
            Err(source) if is_lock_conflict(&source) => {
                return Err(StorageError::DataDirInUse {
                    path: path.to_path_buf(),
                    source,
                });
            }
            Err(source) => {
                return Err(StorageError::Open {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    };
    check_layout_version(&db, path)?;
    let flush = DurableFlush::new(db.clone(), path)?;
    Ok((db, flush))
}

/// sled 0.34.7 reports a held lock only as an `io::Error` of kind `Other`
/// whose message starts "could not acquire lock" (`Config::try_lock`); the
/// version is pinned and a test opens a held data dir, so this match is safe.
fn is_lock_conflict(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other
        && io.to_string().starts_with("could not acquire lock"))
}

/// Stamps a new data dir with [`STORAGE_LAYOUT_VERSION`] and refuses one
/// stamped with another.
fn check_layout_version(db: &sled::Db, path: &Path) -> Result<(), StorageError> {
    let meta = db.open_tree(META_TREE)?;
    match meta.get(KEY_LAYOUT_VERSION)? {
        Some(stored) => {
            let found: u32 = codec::decode(&stored, "storage layout version")?;
            if found > STORAGE_LAYOUT_VERSION {
                return Err(StorageError::NewerLayoutVersion {
                    path: path.to_path_buf(),
                    found,
                    expected: STORAGE_LAYOUT_VERSION,
                });
            }
            // No older layout exists yet; when one does, it is migrated here.
            if found != STORAGE_LAYOUT_VERSION {
                return Err(StorageError::LayoutVersion {
                    path: path.to_path_buf(),
                    found,
                    expected: STORAGE_LAYOUT_VERSION,
                });
            }
        }
        None => {
            // Made durable by the first flush; a crash before it leaves an
            // empty, unstamped dir, which is stamped again on the next open.
            meta.insert(KEY_LAYOUT_VERSION, codec::encode(&STORAGE_LAYOUT_VERSION))?;
        }
    }
    Ok(())
}

/// Key of the meta tree: the cluster id this replica belongs to
/// ([`ClusterIdentity`](super::identity::ClusterIdentity)); absent until it
/// initialises a cluster or adopts a leader's id.
pub(crate) const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
