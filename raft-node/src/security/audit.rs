//! The audit trail: one JSON line per accepted or refused write, per read
//! of request records by a caller that sees every namespace, and per refused
//! call of any kind, written by the replica that received the call
//! (`--audit-log PATH|-`, `SECURITY.md` "Audit trail").
//!
//! ```text
//!  api / http handler ─▶ AuditLog::record(AuditRecord) ── the policy (AuditRecord::wanted) says whether
//!        │ try_send, never waits                          ▼
//!        └──────────────▶ bounded queue (AUDIT_QUEUE_RECORDS_MAX) ─▶ writer thread ─▶ stdout | RotatingFile
//!                         full: the record is counted as dropped, warned about       (size-bounded, N files kept)
//! ```
//!
//! A call never waits for the disk: the writer is a thread of its own that
//! flushes whenever its queue runs empty, so `qm audit tail -f` sees a line
//! a moment after the call was answered. What a record holds is built from
//! the caller's identity (the certificate's SAN URIs: role, name,
//! namespace), the call's name, ids and outcome; never a certificate, a key,
//! or a request's body, so nothing secret can reach the file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use qm_api::tls::{Identity, Role};
use serde::Serialize;
use tonic::{Code, Status};
use tracing::warn;

use super::caller::Caller;
use super::policy::Call;

/// Records waiting for the writer thread; a call that finds the queue full
/// drops its record (counted and warned about) rather than wait for the disk.
pub const AUDIT_QUEUE_RECORDS_MAX: usize = 65_536;
/// A rotated file is started when the current one would grow past this.
pub const AUDIT_FILE_BYTES_MAX_DEFAULT: u64 = 100 * 1024 * 1024;
/// The smallest `--audit-log-file-bytes-max` accepted: one record must fit.
pub const AUDIT_FILE_BYTES_MIN: u64 = 64 * 1024;
/// Rotated files kept beside the current one (`audit.log.1` is the newest).
pub const AUDIT_FILES_KEPT_DEFAULT: u32 = 5;
/// The most rotated files `--audit-log-files-kept` may ask for.
pub const AUDIT_FILES_KEPT_MAX: u32 = 1_000;
/// A status message is cut to this many characters in a record.
pub const AUDIT_MESSAGE_CHARS_MAX: usize = 256;
/// An id or a correlation id taken from a caller is cut to this many characters.
pub const AUDIT_ID_CHARS_MAX: usize = 128;
/// Dropped records are warned about once, then once per this many.
const DROPPED_WARNING_EVERY: u64 = 1_000;

/// Where the records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditDestination {
    /// One line per record on standard output (`--audit-log -`).
    Stdout,
    /// A file, rotated by size: `PATH`, `PATH.1` (newest rotated) ... `PATH.<files_kept>`.
    File {
        path: PathBuf,
        file_bytes_max: u64,
        files_kept: u32,
    },
}

/// Which API the call came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Grpc,
    /// A call on a `Pipeline` stream (recorded as the call it is).
    GrpcPipeline,
    Http,
}

/// Who made the call, as the certificate states it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditCaller {
    /// Whether the replica runs mutual TLS; without it there is no identity.
    pub tls: bool,
    /// The certificate's `qm://name/...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl AuditCaller {
    /// A caller whose certificate was not even read (TLS off), or stated no identity.
    pub fn unidentified(tls: bool) -> AuditCaller {
        AuditCaller {
            tls,
            ..AuditCaller::default()
        }
    }

    pub fn of_identity(identity: &Identity) -> AuditCaller {
        AuditCaller {
            tls: true,
            name: Some(identity.name.clone()),
            role: Some(identity.role.as_str()),
            namespace: identity.namespace.clone(),
        }
    }

    pub fn of(caller: &Caller) -> AuditCaller {
        match caller {
            Caller::Anyone => AuditCaller::unidentified(false),
            Caller::Authenticated(identity) => AuditCaller::of_identity(identity),
        }
    }

    /// Whether this caller sees every namespace: an admin, or anyone on a
    /// replica without TLS. Its reads of request records are audited.
    fn sees_everything(&self) -> bool {
        !self.tls || self.role == Some(Role::Admin.as_str())
    }
}

/// The ids a call names or was answered with: `request_id`, `allocation_id`,
/// `provider_id`, `namespace`, `replica_id`, `cursor`, ... (sorted by name).
pub type AuditIds = BTreeMap<&'static str, String>;

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered successfully (a queued or rejected allocation is still an answer).
    Ok,
    /// Refused by the security checks: `UNAUTHENTICATED` or `PERMISSION_DENIED`.
    Denied,
    /// Any other error status: invalid input, not found, not the leader, unknown outcome ...
    Error,
}

/// One line of the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    /// When the replica finished the call, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The replica that received the call.
    pub replica: u64,
    pub transport: Transport,
    /// The call's name, as the role table names it (`Allocate`, `Release`, ...).
    pub call: &'static str,
    pub caller: AuditCaller,
    pub ids: AuditIds,
    /// The caller's `x-qm-correlation-id` if it sent one, else the request id the call is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    pub outcome: Outcome,
    /// The gRPC status code, `ok` on success (HTTP calls carry the same codes).
    pub code: String,
    /// The status message of a refusal or an error (bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl AuditRecord {
    /// The record of `call` by `caller` ending in `error` (or success).
    pub fn new(transport: Transport, call: Call, caller: AuditCaller, ids: AuditIds, error: Option<&Status>) -> AuditRecord {
        let (outcome, code, message) = match error {
            None => (Outcome::Ok, "ok".to_owned(), None),
            Some(status) => {
                let outcome = match status.code() {
                    Code::PermissionDenied | Code::Unauthenticated => Outcome::Denied,
                    _ => Outcome::Error,
                };
                (
                    outcome,
                    code_name(status.code()),
                    Some(bounded(status.message(), AUDIT_MESSAGE_CHARS_MAX)),
                )
            }
        };
        let correlation_id = ids.get("request_id").or_else(|| ids.get("id")).cloned();
        AuditRecord {
            time: rfc3339_ms(crate::clock::now_ms()),
            replica: 0,
            transport,
            call: call.name(),
            caller,
            ids,
            correlation_id,
            outcome,
            code,
            message,
        }
    }

    /// Takes the caller's own correlation id (a header) over the request id.
    pub fn with_correlation_id(mut self, correlation_id: Option<&str>) -> AuditRecord {
        if let Some(given) = correlation_id.filter(|given| !given.is_empty()) {
            self.correlation_id = Some(bounded(given, AUDIT_ID_CHARS_MAX));
        }
        self
    }

    /// The audit policy: every refusal; every write, whatever its outcome;
    /// reads of request records (and the backup) by a caller that sees every
    /// namespace. Not: accepted Raft traffic, heartbeats (the leader's
    /// memory, every second per provider), cluster views any role may read.
    pub fn wanted(&self, call: Call) -> bool {
        if self.outcome == Outcome::Denied {
            return true;
        }
        match call.audit_class() {
            AuditClass::Write => true,
            AuditClass::RecordRead => self.caller.sees_everything(),
            AuditClass::RefusalsOnly => false,
        }
    }
}

/// What the audit trail records of a call (see [`AuditRecord::wanted`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditClass {
    /// A change to the table or the membership: always recorded.
    Write,
    /// A read of request records or of the whole table: recorded for admins
    /// (and everyone without TLS).
    RecordRead,
    /// Recorded only when refused.
    RefusalsOnly,
}

/// The replica's audit trail; off unless `--audit-log` is given.
pub struct AuditLog {
    replica: u64,
    queue: Option<SyncSender<String>>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Records nothing.
    pub fn off() -> AuditLog {
        AuditLog {
            replica: 0,
            queue: None,
            dropped: AtomicU64::new(0),
        }
    }

    /// Opens `destination` (appending to an existing file) and starts the writer thread.
    pub fn start(replica: u64, destination: &AuditDestination) -> std::io::Result<AuditLog> {
        let sink = match destination {
            AuditDestination::Stdout => Sink::Stdout(std::io::stdout()),
            AuditDestination::File {
                path,
                file_bytes_max,
                files_kept,
            } => Sink::File(RotatingFile::open(path, *file_bytes_max, *files_kept)?),
        };
        let (queue, records) = std::sync::mpsc::sync_channel(AUDIT_QUEUE_RECORDS_MAX);
        std::thread::Builder::new()
            .name("qm-audit".into())
            .spawn(move || write_records(records, sink))?;
        Ok(AuditLog {
            replica,
            queue: Some(queue),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Records `record` of `call` if the policy wants it; never waits.
    pub fn record(&self, call: Call, mut record: AuditRecord) {
        let Some(queue) = &self.queue else { return };
        if !record.wanted(call) {
            return;
        }
        record.replica = self.replica;
        let line = serde_json::to_string(&record).expect("an audit record serializes");
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped == 1 || dropped % DROPPED_WARNING_EVERY == 0 {
                    warn!(
                        dropped,
                        "audit records dropped: the audit writer is behind or has stopped (see earlier errors)"
                    );
                }
            }
        }
    }

    /// Records dropped so far because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

enum Sink {
    Stdout(std::io::Stdout),
    File(RotatingFile),
}

/// The writer thread: writes lines as they come, flushes whenever the queue
/// is empty, ends when the [`AuditLog`] is dropped.
fn write_records(records: Receiver<String>, mut sink: Sink) {
    let mut failing = false;
    while let Ok(first) = records.recv() {
        let mut batch = vec![first];
        batch.extend(records.try_iter().take(AUDIT_QUEUE_RECORDS_MAX));
        let written = match &mut sink {
            Sink::Stdout(stdout) => {
                let mut out = stdout.lock();
                batch.iter().try_for_each(|line| writeln!(out, "{line}")).and_then(|()| out.flush())
            }
            Sink::File(file) => batch.iter().try_for_each(|line| file.write_line(line)).and_then(|()| file.flush()),
        };
        match written {
            Ok(()) => failing = false,
            Err(error) if !failing => {
                failing = true;
                warn!(%error, lost = batch.len(), "cannot write the audit log; records are lost until it works again");
            }
            Err(_) => {}
        }
    }
}

/// A file that is rotated before it would grow past `file_bytes_max`:
/// `path` → `path.1` → ... → `path.<files_kept>`, the oldest deleted.
pub struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    bytes: u64,
    file_bytes_max: u64,
    files_kept: u32,
}

impl RotatingFile {
    pub fn open(path: &Path, file_bytes_max: u64, files_kept: u32) -> std::io::Result<RotatingFile> {
        assert!(file_bytes_max > 0 && files_kept > 0, "validated by the configuration");
        let file = append_to(path)?;
        let bytes = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            file: BufWriter::new(file),
            bytes,
            file_bytes_max,
            files_kept,
        })
    }

    /// Writes `line` and a newline, rotating first if it would not fit.
    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let length = line.len() as u64 + 1;
        if self.bytes > 0 && self.bytes + length > self.file_bytes_max {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.bytes += length;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| rotated_path(&self.path, n);
        // The oldest goes; rename fails only if it does not exist yet.
        let _ = std::fs::remove_file(numbered(self.files_kept));
        for n in (1..self.files_kept).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = BufWriter::new(append_to(&self.path)?);
        self.bytes = 0;
        Ok(())
    }
}

/// `path.<n>`: the n-th newest rotated file of `path`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Opens for appending, created owner-read-write only: the trail says who
/// did what, which is for operators.
fn append_to(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// `text` cut to `chars_max` characters, control characters replaced.
pub fn bounded(text: &str, chars_max: usize) -> String {
    text.chars().take(chars_max).map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// A gRPC code as its snake_case name (`permission_denied`).
pub fn code_name(code: Code) -> String {
    let words = format!("{code:?}");
    let mut name = String::with_capacity(words.len() + 4);
    for (position, c) in words.chars().enumerate() {
        if c.is_ascii_uppercase() && position > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// Milliseconds since the epoch as `2026-12-07T05:35:01.123Z`.
pub fn rfc3339_ms(ms: u64) -> String {
    let (days, ms_of_day) = (ms / 86_400_000, ms % 86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (hours, minutes, seconds, millis) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1_000 % 60,
        ms_of_day % 1_000,
    );
    format!("{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{millis:03}Z")
}

#[cfg(test)]
#[path = "audit_test.rs"]
mod tests;
