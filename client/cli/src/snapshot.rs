//! `qm snapshot save FILE` and `qm snapshot inspect FILE`: backups.
//!
//! `save` asks the leader for a backup (`SnapshotSave`), checks it exactly
//! as `inspect` and `qm-node restore` will (checksum, versions, the table
//! decodes), then writes it to `FILE.part`, fsyncs it and renames it over
//! `FILE`: a backup on disk is always whole. `inspect` reads a file and
//! prints what it holds; a damaged one is refused with a one-line reason.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::Serialize;

use super::error::CliError;
use super::output::{print_json, OutputFormat};
use super::table::Table;
use qm_client::Client;
use qm_state_machine::AllocationTable;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a backup of the whole table (linearizable, from the leader) to FILE; admin only under TLS.
    Save {
        /// Where to write it; written to FILE.part first, then renamed.
        file: PathBuf,
    },
    /// Print what a backup file holds and verify its checksum.
    Inspect {
        /// The backup file.
        file: PathBuf,
    },
}

/// What a backup holds (`--output json`).
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub format_version: u32,
    pub snapshot_format_version: u32,
    pub revision: u64,
    pub applied_index: u64,
    pub applied_term: u64,
    pub created_by: u64,
    pub created_at_ms: u64,
    pub cluster_id: String,
    pub members: Vec<String>,
    pub providers: usize,
    pub active_allocations: usize,
    pub queued: usize,
    pub requests: usize,
}

pub async fn save(client: &Client, file: &Path, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let bytes = client.snapshot_save().await?;
    let summary = summarize(file, &bytes)?;
    write_whole(file, &bytes).map_err(|error| backup_error(file, format!("cannot write it: {error}")))?;
    print(&summary, format, out)
}

pub fn inspect(file: &Path, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let bytes = std::fs::read(file).map_err(|error| CliError::Input {
        path: file.display().to_string(),
        reason: error.to_string(),
    })?;
    let summary = summarize(file, &bytes)?;
    print(&summary, format, out)
}

fn backup_error(file: &Path, reason: String) -> CliError {
    CliError::Backup {
        path: file.display().to_string(),
        reason,
    }
}

/// Checks a backup as a restore would, and says what it holds.
fn summarize(file: &Path, bytes: &[u8]) -> Result<BackupSummary, CliError> {
    let backup = qm_client::backup::decode(bytes).map_err(|error| backup_error(file, error.to_string()))?;
    let table = AllocationTable::from_snapshot_bytes(&backup.table).map_err(|error| backup_error(file, error.to_string()))?;
    let header = backup.header;
    Ok(BackupSummary {
        file: file.display().to_string(),
        bytes: bytes.len() as u64,
        sha256: backup.checksum,
        format_version: backup.format_version,
        snapshot_format_version: header.snapshot_format_version,
        revision: header.revision,
        applied_index: header.applied_index,
        applied_term: header.applied_term,
        created_by: header.created_by,
        created_at_ms: header.created_at_ms,
        cluster_id: header.cluster_id,
        members: header.members.iter().map(|(id, addr)| format!("{id}={addr}")).collect(),
        providers: table.providers().count(),
        active_allocations: table.active_allocations(),
        queued: table.queue_len(),
        requests: table.requests_len(),
    })
}

/// `bytes` to `file` durably and whole: a temporary file, fsynced, renamed.
fn write_whole(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut handle = std::fs::File::create(&part)?;
    handle.write_all(bytes)?;
    handle.sync_all()?;
    std::fs::rename(&part, file)?;
    if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn print(summary: &BackupSummary, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return print_json(summary, out);
    }
    let mut table = Table::new(["FIELD", "VALUE"]);
    let members = if summary.members.is_empty() {
        "-".to_owned()
    } else {
        summary.members.join(",")
    };
    let cluster_id = if summary.cluster_id.is_empty() { "-" } else { &summary.cluster_id };
    let rows: [(&str, String); 16] = [
        ("file", summary.file.clone()),
        ("bytes", summary.bytes.to_string()),
        ("sha256", format!("{} (verified)", summary.sha256)),
        ("format_version", summary.format_version.to_string()),
        ("snapshot_format_version", summary.snapshot_format_version.to_string()),
        ("revision", summary.revision.to_string()),
        ("applied_index", summary.applied_index.to_string()),
        ("applied_term", summary.applied_term.to_string()),
        ("created_by", summary.created_by.to_string()),
        ("created_at_ms", summary.created_at_ms.to_string()),
        ("cluster_id", cluster_id.to_owned()),
        ("members", members),
        ("providers", summary.providers.to_string()),
        ("active_allocations", summary.active_allocations.to_string()),
        ("queued", summary.queued.to_string()),
        ("requests", summary.requests.to_string()),
    ];
    for (field, value) in &rows {
        table.row([*field, value.as_str()]);
    }
    table.write(out)
}
