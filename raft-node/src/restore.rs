//! `qm-node restore`: seeds a new cluster's replica from a backup file
//! (`qm snapshot save`), as `etcdutl snapshot restore` does.
//!
//! ```text
//!  FILE ──backup::decode (magic, version, SHA-256)──▶ table bytes ──from_snapshot_bytes (version, decodes)──┐
//!  --id, --peers ──▶ membership (every peer a voter)                                                        │
//!  --data-dir (must be empty) ──▶ sled stamped with its layout version, table.snapshot ◀──────────────────────┘
//! ```
//!
//! The data dir gets the backup's table bytes, unchanged, as its stored
//! snapshot, at the backup's applied index with the new membership; its
//! log is empty and its vote unset. Every replica restored from the same
//! file therefore starts with byte-identical tables; openraft starts them
//! as an initialized cluster (the snapshot's membership) and they elect a
//! leader. As on any leader change, the new leader's first duties give
//! leases and provider heartbeats a fresh window (`consensus::duties`:
//! `RefreshLeases`, an empty heartbeat book).
//!
//! The new cluster gets a new cluster id, as `etcdutl snapshot restore`
//! gives one: derived from the file's checksum and `--peers`, so every
//! replica restored from the same file with the same peers derives the
//! same id on its own, and a replica restored from another file (or
//! belonging to the old cluster) is refused by the new one's replicas
//! (`consensus::announce`). The backup's own id stays in its header.
//!
//! The snapshot's log id has term 0 (the term `initialize` gives the first
//! membership entry), so that the new cluster's first term, 1, is past it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::Parser;
use openraft::{BasicNode, CommittedLeaderId, Membership};
use qm_api::backup::{self, BackupError, BackupHeader, BACKUP_FILE_BYTES_MAX};
use qm_state_machine::AllocationTable;

use crate::config::{parse_peers, ConfigError};
use crate::consensus::announce::cluster_id_for_restore;
use openraft::storage::RaftLogStorage;

use crate::storage::StorageError;
use crate::types::{LogId, NodeId, SnapshotMeta, StoredMembership, Vote};

/// `qm-node restore`: seed a new cluster's replica from a backup file.
#[derive(Parser, Debug, Clone)]
#[command(name = "qm-node restore")]
pub struct RestoreArgs {
    /// The backup file (`qm snapshot save FILE`).
    #[arg(long)]
    pub from: PathBuf,
    /// The new replica's data dir: created, or empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new replica's id; must be in --peers.
    #[arg(long)]
    pub id: NodeId,
    /// The new cluster's members, `1=host:port,2=host:port,3=host:port`:
    /// the same on every replica restored from the file.
    #[arg(long)]
    pub peers: String,
}

/// What a restore wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct Restored {
    pub header: BackupHeader,
    pub members: BTreeMap<NodeId, String>,
    /// The new cluster's id (the backup's is `header.cluster_id`).
    pub cluster_id: String,
}

/// Why a restore refused; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", .path.display())]
    Backup { path: PathBuf, source: BackupError },
    #[error("{}: the table in it does not decode: {source}", .path.display())]
    Table {
        path: PathBuf,
        source: qm_state_machine::SnapshotError,
    },
    #[error("invalid peers: {0}")]
    Peers(#[from] ConfigError),
    #[error("invalid id: {id} is not in --peers")]
    IdNotInPeers { id: NodeId },
    #[error("data dir {} is not empty: restore only seeds a new replica", .path.display())]
    DataDirNotEmpty { path: PathBuf },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Checks the file and the arguments, then writes the data dir.
pub async fn restore(args: &RestoreArgs) -> Result<Restored, RestoreError> {
    let backup = read_backup(&args.from)?;
    let members = parse_peers(&args.peers)?;
    if !members.contains_key(&args.id) {
        return Err(RestoreError::IdNotInPeers { id: args.id });
    }
    require_empty(&args.data_dir)?;
    let log_id = LogId::new(CommittedLeaderId::new(0, 0), backup.header.applied_index);
    let cluster_id = cluster_id_for_restore(&backup.checksum, &members);
    seed(&args.data_dir, log_id, &members, None, &cluster_id, backup.table).await?;
    Ok(Restored {
        header: backup.header,
        members,
        cluster_id,
    })
}

/// Writes a new data dir: sled stamped with its layout version, its
/// `cluster_id` (and `vote`, if given), and `table` as the stored snapshot at `log_id` with
/// every one of `members` a voter. The log is empty: openraft starts from
/// the snapshot.
pub(crate) async fn seed(
    data_dir: &Path,
    log_id: LogId,
    members: &BTreeMap<NodeId, String>,
    vote: Option<Vote>,
    cluster_id: &str,
    table: Vec<u8>,
) -> Result<(), StorageError> {
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> = members.iter().map(|(id, addr)| (*id, BasicNode { addr: addr.clone() })).collect();
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), Membership::new(vec![voters], nodes)),
        snapshot_id: format!("seeded-{}", log_id.index),
    };
    std::fs::create_dir_all(data_dir).map_err(|source| StorageError::CreateDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    crate::storage::save_restored_snapshot(data_dir, meta, table).await?;
    let (mut log_store, _) = crate::storage::open(data_dir, qm_state_machine::TableConfig::default()).await?;
    log_store.cluster_identity()?.set(cluster_id).await?;
    if let Some(vote) = vote {
        log_store.save_vote(&vote).await.map_err(|error| StorageError::Decode {
            what: "vote",
            reason: error.to_string(),
        })?;
    }
    Ok(())
}

/// Reads and checks a backup file as a restore needs it: whole, of a
/// version this build reads, and its table decoding.
pub fn read_backup(path: &Path) -> Result<backup::Backup, RestoreError> {
    let read_error = |source| RestoreError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(read_error)?.len();
    if bytes > BACKUP_FILE_BYTES_MAX {
        return Err(RestoreError::Backup {
            path: path.to_path_buf(),
            source: BackupError::TooLarge {
                bytes,
                max: BACKUP_FILE_BYTES_MAX,
            },
        });
    }
    let file = std::fs::read(path).map_err(read_error)?;
    let backup = backup::decode(&file).map_err(|source| RestoreError::Backup {
        path: path.to_path_buf(),
        source,
    })?;
    AllocationTable::from_snapshot_bytes(&backup.table).map_err(|source| RestoreError::Table {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(backup)
}

fn require_empty(dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => match entries.count() {
            0 => Ok(()),
            _ => Err(RestoreError::DataDirNotEmpty { path: dir.to_path_buf() }),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RestoreError::Read {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
