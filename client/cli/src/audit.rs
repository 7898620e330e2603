//! `qm audit tail FILE [-n N] [-f] [--call C] [--outcome O]`: the last lines
//! of a replica's audit trail (`qm-node --audit-log FILE`), then, with
//! `--follow`, each new line as the replica writes it, across rotations.
//!
//! It reads the file the replica writes on its own host (the trail is a
//! local file, not served over the API); `--output json` prints the JSON
//! lines as they are, the table one line per record.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use qm_state_machine::InvalidArgument;
use serde_json::Value;

use crate::error::CliError;
use crate::output::OutputFormat;

/// `--follow` looks for new lines (and a rotation) this often.
pub const FOLLOW_POLL_INTERVAL_MS: u64 = 200;
/// The most lines `-n` may ask for.
pub const TAIL_LINES_MAX: usize = 1_000_000;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The last lines of an audit file, and with --follow what is written next.
    Tail {
        /// The replica's `--audit-log` file.
        file: PathBuf,
        /// How many of the last records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Keep printing records as they are written, across rotations (Ctrl-C ends it).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only records of this call (`Allocate`, `Release`, `AddReplica`, ...).
        #[arg(long)]
        call: Option<String>,
        /// Only records with this outcome: `ok`, `denied` or `error`.
        #[arg(long)]
        outcome: Option<String>,
    },
}

/// Which records to print.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub call: Option<String>,
    pub outcome: Option<String>,
}

impl AuditFilter {
    fn keeps(&self, record: &Value) -> bool {
        let matches = |field: &str, wanted: &Option<String>| wanted.as_ref().is_none_or(|wanted| record[field].as_str() == Some(wanted));
        matches("call", &self.call) && matches("outcome", &self.outcome)
    }
}

pub fn run(command: AuditCommand, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let AuditCommand::Tail {
        file,
        lines,
        follow,
        call,
        outcome,
    } = command;
    if lines > TAIL_LINES_MAX {
        return Err(InvalidArgument::new("lines", format!("at most {TAIL_LINES_MAX}")).into());
    }
    if let Some(outcome) = &outcome {
        if !["ok", "denied", "error"].contains(&outcome.as_str()) {
            return Err(InvalidArgument::new("outcome", "is ok, denied or error").into());
        }
    }
    let filter = AuditFilter { call, outcome };
    let offset = tail(&file, lines, &filter, format, out)?;
    if follow {
        self::follow(&file, offset, &filter, format, out, None)?;
    }
    Ok(())
}

/// Prints the last `lines` records `filter` keeps; returns where the file ended.
pub fn tail(file: &Path, lines: usize, filter: &AuditFilter, format: OutputFormat, out: &mut dyn Write) -> Result<u64, CliError> {
    let unreadable = |error: std::io::Error| CliError::Input {
        path: file.display().to_string(),
        reason: error.to_string(),
    };
    let opened = File::open(file).map_err(unreadable)?;
    let mut reader = BufReader::new(opened);
    let mut last: VecDeque<(String, Value)> = VecDeque::with_capacity(lines.min(1_024));
    let mut offset = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(unreadable)?;
        // A line still being written (no newline yet) is left for --follow.
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        offset += read as u64;
        let Some(record) = parse(&line) else { continue };
        if lines > 0 && filter.keeps(&record) {
            if last.len() == lines {
                last.pop_front();
            }
            last.push_back((line.trim_end().to_owned(), record));
        }
    }
    for (text, record) in last {
        print(&text, &record, format, out)?;
    }
    Ok(offset)
}

/// Prints each record written to `file` after `offset`, reopening the file
/// when the replica rotates it (it shrank or is another file). Stops after
/// `stop_after` records if given (tests), else never.
pub fn follow(
    file: &Path,
    mut offset: u64,
    filter: &AuditFilter,
    format: OutputFormat,
    out: &mut dyn Write,
    stop_after: Option<usize>,
) -> Result<(), CliError> {
    let mut printed = 0usize;
    let mut identity = file_identity(file);
    let mut pending = String::new();
    loop {
        let now = file_identity(file);
        if now.is_none() {
            // Between the replica's rename and its new file: wait for the new one.
            std::thread::sleep(Duration::from_millis(FOLLOW_POLL_INTERVAL_MS));
            continue;
        }
        let length = std::fs::metadata(file).map(|meta| meta.len()).unwrap_or(0);
        if now != identity || length < offset {
            // Rotated: what was left unread of the old file is in `PATH.1`;
            // read it to its end, then start the new file from its beginning.
            if now != identity {
                if let Some(rest) = read_from(&rotated(file), offset) {
                    pending.push_str(&rest);
                }
            }
            identity = now;
            offset = 0;
        }
        if let Some(text) = read_from(file, offset) {
            offset += text.len() as u64;
            pending.push_str(&text);
        }
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            if let Some(record) = parse(&line).filter(|record| filter.keeps(record)) {
                print(line.trim_end(), &record, format, out)?;
                printed += 1;
                if stop_after.is_some_and(|stop| printed >= stop) {
                    return Ok(());
                }
            }
        }
        out.flush().map_err(CliError::from)?;
        std::thread::sleep(Duration::from_millis(FOLLOW_POLL_INTERVAL_MS));
    }
}

/// The first rotated file of `file` (`PATH.1`), as the replica names it.
fn rotated(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Which file `path` names now (device and inode), to notice a rotation.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|meta| (meta.dev(), meta.ino()))
}

/// Whatever `path` holds from `offset` on (complete lines or not).
fn read_from(path: &Path, offset: u64) -> Option<String> {
    let mut file = File::open(path).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    (!text.is_empty()).then_some(text)
}

fn parse(line: &str) -> Option<Value> {
    serde_json::from_str(line.trim_end()).ok()
}

fn print(text: &str, record: &Value, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => writeln!(out, "{text}")?,
        OutputFormat::Table => writeln!(out, "{}", summary(record))?,
    }
    Ok(())
}

/// One record in one line: `time replica transport call outcome(code) caller ids`.
pub fn summary(record: &Value) -> String {
    let text = |value: &Value| value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
    let caller = &record["caller"];
    let who = match caller["role"].as_str() {
        Some(role) => {
            let namespace = caller["namespace"].as_str().map(|ns| format!(" ns={ns}")).unwrap_or_default();
            format!("{role}/{}{namespace}", text(&caller["name"]))
        }
        None if caller["tls"] == Value::Bool(false) => "anyone(no-tls)".to_owned(),
        None => "unidentified".to_owned(),
    };
    let ids = record["ids"]
        .as_object()
        .map(|ids| {
            ids.iter()
                .map(|(name, value)| format!("{name}={}", text(value)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let outcome = match record["outcome"].as_str() {
        Some("ok") | None => text(&record["outcome"]),
        Some(outcome) => format!("{outcome}({})", text(&record["code"])),
    };
    format!(
        "{} r{} {} {} {} {} {}",
        text(&record["time"]),
        text(&record["replica"]),
        text(&record["transport"]),
        text(&record["call"]),
        outcome,
        who,
        ids
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(call: &str, outcome: &str, n: u32) -> String {
        format!(
            r#"{{"time":"2026-12-07T06:00:00.000Z","replica":1,"transport":"grpc","call":"{call}","caller":{{"tls":true,"name":"agent","role":"resource_consumer","namespace":"team-a"}},"ids":{{"n":"{n}"}},"outcome":"{outcome}","code":"ok"}}"#
        )
    }

    fn append(path: &Path, lines: &[String]) {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
    }

    #[test]
    fn tail_prints_the_last_records_the_filter_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        append(
            &path,
            &[
                line("Allocate", "ok", 1),
                line("AddReplica", "denied", 2),
                line("Allocate", "ok", 3),
            ],
        );
        // A line still being written is not printed.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"call\":")
            .unwrap();
        let mut out = Vec::new();
        let filter = AuditFilter {
            call: Some("Allocate".into()),
            outcome: None,
        };
        let offset = tail(&path, 1, &filter, OutputFormat::Table, &mut out).unwrap();
        assert_eq!(
            "2026-12-07T06:00:00.000Z r1 grpc Allocate ok resource_consumer/agent ns=team-a n=3\n",
            String::from_utf8(out).unwrap()
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len() - b"{\"call\":".len() as u64, offset);
    }

    #[test]
    fn follow_reads_on_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        append(&path, &[line("Allocate", "ok", 1)]);
        let offset = tail(&path, 0, &AuditFilter::default(), OutputFormat::Json, &mut Vec::new()).unwrap();
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(FOLLOW_POLL_INTERVAL_MS));
                append(&path, &[line("Release", "ok", 2)]);
                // The replica rotates: the file becomes audit.log.1 and a new one starts.
                std::fs::rename(&path, rotated(&path)).unwrap();
                append(&path, &[line("Allocate", "error", 3)]);
            })
        };
        let mut out = Vec::new();
        follow(&path, offset, &AuditFilter::default(), OutputFormat::Json, &mut out, Some(2)).unwrap();
        writer.join().unwrap();
        let printed: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let numbers: Vec<&str> = printed.iter().map(|record| record["ids"]["n"].as_str().unwrap()).collect();
        assert_eq!(vec!["2", "3"], numbers, "the old file's last line, then the new file's");
    }
}
