//! `qm-node recover`: a one-replica cluster from the data dir of the one
//! replica that survived losing a majority (like etcd's
//! `--force-new-cluster` or Nomad's `peers.json`).
//!
//! ```text
//!  DIR (stopped survivor) ──open──▶ snapshot + every entry of its log applied (committed or not, as etcd does)
//!        │                                   │ table, last log id, vote
//!        └─rename─▶ DIR.pre-recovery         ▼
//!                              DIR: seeded afresh, the survivor the only voter, at its last log id and vote
//! ```
//!
//! What it cannot know: entries the lost replicas committed that never
//! reached the survivor are gone, and entries only the survivor had (never
//! committed) now count. So it refuses to run unless the operator says,
//! with `--accept-data-loss`, that they accept this. The old data dir is
//! kept beside the new one. The lost replicas must not come back with
//! their old data dirs: wipe them and add them as new replicas
//! (`qm cluster add`). The cluster keeps its id, as etcd's
//! `--force-new-cluster` does. As after any leader change, the new leader gives
//! leases and provider heartbeats a fresh window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::RaftLogReader;
use qm_state_machine::TableConfig;

use crate::consensus::announce::cluster_id_at_initialization;
use crate::restore::seed;
use crate::storage::StorageError;
use crate::types::{LogId, NodeId};

/// `qm-node recover`: make the one surviving replica a one-replica cluster.
#[derive(Parser, Debug, Clone)]
#[command(name = "qm-node recover")]
pub struct RecoverArgs {
    /// The surviving replica's data dir; the replica must be stopped.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The surviving replica's id.
    #[arg(long)]
    pub id: NodeId,
    /// Required: the operator accepts losing writes the lost replicas may
    /// have committed that never reached this one.
    #[arg(long)]
    pub accept_data_loss: bool,
}

/// What a recovery kept.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The last log entry applied (the new cluster starts after it).
    pub last_log_id: Option<LogId>,
    pub revision: u64,
    /// The old data dir, kept.
    pub kept: PathBuf,
    /// The replica's address, its only member.
    pub addr: String,
    /// The cluster's id, kept.
    pub cluster_id: String,
}

/// Why a recovery refused; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(
        "refusing to recover without --accept-data-loss: writes the lost replicas committed that never reached replica {id} will be lost"
    )]
    NotAccepted { id: NodeId },
    #[error("data dir {} holds no replica data", .path.display())]
    Empty { path: PathBuf },
    #[error("{} exists: move it away first (a previous recovery's copy?)", .path.display())]
    KeptExists { path: PathBuf },
    #[error("invalid id: replica {id} is not in the survivor's membership")]
    NotAMember { id: NodeId },
    #[error("cannot move {} aside: {source}", .path.display())]
    Move { path: PathBuf, source: std::io::Error },
    #[error("the survivor's log: {0}")]
    Log(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub async fn recover(args: &RecoverArgs) -> Result<Recovered, RecoverError> {
    if !args.accept_data_loss {
        return Err(RecoverError::NotAccepted { id: args.id });
    }
    let kept = kept_path(&args.data_dir);
    if kept.exists() {
        return Err(RecoverError::KeptExists { path: kept });
    }
    if !args.data_dir.join("db").exists() {
        return Err(RecoverError::Empty {
            path: args.data_dir.clone(),
        });
    }
    let survivor = read_survivor(&args.data_dir).await?;
    let addr = survivor
        .members
        .get(&args.id)
        .cloned()
        .ok_or(RecoverError::NotAMember { id: args.id })?;
    std::fs::rename(&args.data_dir, &kept).map_err(|source| RecoverError::Move {
        path: args.data_dir.clone(),
        source,
    })?;
    let log_id = survivor.last_log_id.unwrap_or_default();
    let members = BTreeMap::from([(args.id, addr.clone())]);
    // The same cluster, smaller: it keeps its id, as etcd's
    // --force-new-cluster keeps its cluster id. One from before ids gets
    // one now, derived as at initialisation.
    let cluster_id = survivor
        .cluster_id
        .clone()
        .unwrap_or_else(|| cluster_id_at_initialization(args.id, &members, crate::clock::now_ms()));
    seed(&args.data_dir, log_id, &members, survivor.vote, &cluster_id, survivor.table).await?;
    Ok(Recovered {
        last_log_id: survivor.last_log_id,
        revision: survivor.revision,
        kept,
        addr,
        cluster_id,
    })
}

fn kept_path(data_dir: &Path) -> PathBuf {
    let mut kept = data_dir.as_os_str().to_owned();
    kept.push(".pre-recovery");
    PathBuf::from(kept)
}

/// The survivor's table with every entry of its log applied.
struct Survivor {
    table: Vec<u8>,
    revision: u64,
    last_log_id: Option<LogId>,
    members: BTreeMap<NodeId, String>,
    vote: Option<crate::types::Vote>,
    cluster_id: Option<String>,
}

async fn read_survivor(data_dir: &Path) -> Result<Survivor, RecoverError> {
    let log_error = |error: openraft::StorageError<NodeId>| RecoverError::Log(error.to_string());
    let (mut log_store, mut state_machine) = crate::storage::open(data_dir, TableConfig::default()).await?;
    let vote = log_store.read_vote().await.map_err(log_error)?;
    let cluster_id = log_store.cluster_identity()?.get();
    let log_state = log_store.get_log_state().await.map_err(log_error)?;
    let (applied, _) = state_machine.applied_state().await.map_err(log_error)?;
    let from = applied.map_or(0, |log_id| log_id.index + 1);
    if let Some(last) = log_state.last_log_id.filter(|last| last.index >= from) {
        let entries = log_store.try_get_log_entries(from..=last.index).await.map_err(log_error)?;
        state_machine.apply(entries).await.map_err(log_error)?;
    }
    let reader = state_machine.reader();
    let state = reader.read().await;
    Ok(Survivor {
        table: state.table().to_snapshot_bytes(),
        revision: state.table().revision(),
        last_log_id: state.last_applied(),
        members: state
            .last_membership()
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect(),
        vote,
        cluster_id,
    })
}
