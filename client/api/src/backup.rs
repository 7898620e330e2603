//! The backup file: a point-in-time copy of the allocation table that
//! `qm snapshot save` writes, `qm snapshot inspect` reads and `qm-node
//! restore` seeds a new cluster from.
//!
//! ```text
//!  offset  bytes  what
//!  0       8      BACKUP_FILE_MAGIC "QMBACKUP"
//!  8       4      backup format version, u32 little-endian (BACKUP_FORMAT_VERSION)
//!  12      4      header length h, u32 little-endian (at most BACKUP_HEADER_BYTES_MAX)
//!  16      h      BackupHeader (below)
//!  16+h    n      the table: AllocationTable::to_snapshot_bytes (its own version first)
//!  16+h+n  32     SHA-256 of every byte before it
//! ```
//!
//! The header, every integer little-endian, every string a u32 length then
//! UTF-8: snapshot format version (u32), revision (u64), applied index
//! (u64), applied term (u64), created by replica (u64), created at (u64,
//! ms since the Unix epoch, the leader's clock), cluster id (string, "" when
//! the cluster has none), members (u32 count, then id u64 and address
//! string each), table length n (u64).
//!
//! Written by hand rather than with a serializer so that the layout above
//! is the whole contract: another version of this program, or a script,
//! can read a header without Quartermaster's types.
//!
//! Reading checks, in order, the length, the magic, the version, the
//! checksum, then the header; every refusal is a [`BackupError`] whose
//! message is one line. The table bytes are decoded by the caller
//! ([`qm_state_machine::AllocationTable::from_snapshot_bytes`]), which
//! checks their own version.

use sha2::{Digest, Sha256};

/// The first bytes of a backup file.
pub const BACKUP_FILE_MAGIC: &[u8; 8] = b"QMBACKUP";
/// Bumped whenever the layout above changes. A build reads its own version
/// and refuses a newer one (see the README's compatibility policy).
pub const BACKUP_FORMAT_VERSION: u32 = 1;
/// A header is a few numbers and the members' addresses; anything longer
/// is a damaged file, not a reason to allocate.
pub const BACKUP_HEADER_BYTES_MAX: u32 = 64 * 1024;
/// The most members a header may list (Raft clusters have 3, 5, 7).
pub const BACKUP_MEMBERS_MAX: u32 = 64;
/// The longest string (an address, a cluster id) a header may hold.
pub const BACKUP_STRING_BYTES_MAX: u32 = 1024;
/// The largest backup file read or written: 16 GiB, far above a table of
/// a million allocations (hundreds of MB).
pub const BACKUP_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;
/// Bytes per message of the `SnapshotSave` stream (under gRPC's 4 MiB).
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;

const CHECKSUM_BYTES: usize = 32;
const PREFIX_BYTES: usize = 16;

/// What a backup says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupHeader {
    /// The version of the table bytes (`SNAPSHOT_FORMAT_VERSION` of the
    /// build that wrote them).
    pub snapshot_format_version: u32,
    /// The table's revision: the number of the last event it holds.
    pub revision: u64,
    /// The last log entry the table reflects, and its term.
    pub applied_index: u64,
    pub applied_term: u64,
    /// The leader that wrote it.
    pub created_by: u64,
    /// The leader's wall clock when it wrote it (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// The cluster's id; "" while clusters have none.
    pub cluster_id: String,
    /// The membership when it was written: (replica id, address).
    pub members: Vec<(u64, String)>,
}

/// A backup read back and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub format_version: u32,
    pub header: BackupHeader,
    /// The table, as `AllocationTable::to_snapshot_bytes` wrote it.
    pub table: Vec<u8>,
    /// The SHA-256 the file carries (and its bytes match), as hex.
    pub checksum: String,
}

/// Why a file is not a usable backup. Each message is one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a Quartermaster backup: it does not start with {expected:?}")]
    NotABackup { expected: String },
    #[error("truncated: {bytes} bytes, {needed} at least")]
    Truncated { bytes: u64, needed: u64 },
    #[error("too large: {bytes} bytes, at most {max}")]
    TooLarge { bytes: u64, max: u64 },
    #[error("backup format version {found} is newer than this build reads ({supported}); use a newer qm")]
    NewerVersion { found: u32, supported: u32 },
    #[error("backup format version {found} is not one this build reads ({supported})")]
    UnknownVersion { found: u32, supported: u32 },
    #[error("checksum mismatch: the file says {stored}, its bytes hash to {computed} (damaged or truncated)")]
    Checksum { stored: String, computed: String },
    #[error("damaged header: {reason}")]
    Header { reason: String },
}

/// The whole file for `header` and `table` (`header.table` length is taken
/// from `table`).
pub fn encode(header: &BackupHeader, table: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    head.extend_from_slice(&header.snapshot_format_version.to_le_bytes());
    for number in [
        header.revision,
        header.applied_index,
        header.applied_term,
        header.created_by,
        header.created_at_ms,
    ] {
        head.extend_from_slice(&number.to_le_bytes());
    }
    put_string(&mut head, &header.cluster_id);
    assert!(header.members.len() as u64 <= u64::from(BACKUP_MEMBERS_MAX), "too many members");
    head.extend_from_slice(&(header.members.len() as u32).to_le_bytes());
    for (id, addr) in &header.members {
        head.extend_from_slice(&id.to_le_bytes());
        put_string(&mut head, addr);
    }
    head.extend_from_slice(&(table.len() as u64).to_le_bytes());
    assert!(head.len() <= BACKUP_HEADER_BYTES_MAX as usize, "header too long");

    let mut file = Vec::with_capacity(PREFIX_BYTES + head.len() + table.len() + CHECKSUM_BYTES);
    file.extend_from_slice(BACKUP_FILE_MAGIC);
    file.extend_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&(head.len() as u32).to_le_bytes());
    file.extend_from_slice(&head);
    file.extend_from_slice(table);
    let checksum = Sha256::digest(&file);
    file.extend_from_slice(&checksum);
    file
}

/// Reads and checks a whole backup file.
pub fn decode(file: &[u8]) -> Result<Backup, BackupError> {
    let bytes = file.len() as u64;
    if bytes > BACKUP_FILE_BYTES_MAX {
        return Err(BackupError::TooLarge {
            bytes,
            max: BACKUP_FILE_BYTES_MAX,
        });
    }
    if file.len() < BACKUP_FILE_MAGIC.len() || &file[..BACKUP_FILE_MAGIC.len()] != BACKUP_FILE_MAGIC {
        return Err(BackupError::NotABackup {
            expected: String::from_utf8_lossy(BACKUP_FILE_MAGIC).into_owned(),
        });
    }
    let needed = (PREFIX_BYTES + CHECKSUM_BYTES) as u64;
    if bytes < needed {
        return Err(BackupError::Truncated { bytes, needed });
    }
    let format_version = u32::from_le_bytes(file[8..12].try_into().expect("4 bytes"));
    if format_version > BACKUP_FORMAT_VERSION {
        return Err(BackupError::NewerVersion {
            found: format_version,
            supported: BACKUP_FORMAT_VERSION,
        });
    }
    if format_version != BACKUP_FORMAT_VERSION {
        return Err(BackupError::UnknownVersion {
            found: format_version,
            supported: BACKUP_FORMAT_VERSION,
        });
    }
    let (body, stored) = file.split_at(file.len() - CHECKSUM_BYTES);
    let computed = Sha256::digest(body);
    if computed.as_slice() != stored {
        return Err(BackupError::Checksum {
            stored: hex(stored),
            computed: hex(&computed),
        });
    }
    let header_len = u32::from_le_bytes(body[12..16].try_into().expect("4 bytes"));
    if header_len > BACKUP_HEADER_BYTES_MAX {
        return Err(header_error(format!("{header_len} bytes, at most {BACKUP_HEADER_BYTES_MAX}")));
    }
    let rest = &body[PREFIX_BYTES..];
    if rest.len() < header_len as usize {
        return Err(header_error(format!("{header_len} bytes, the file has {}", rest.len())));
    }
    let (head, table) = rest.split_at(header_len as usize);
    let (header, table_len) = read_header(head)?;
    if table.len() as u64 != table_len {
        return Err(header_error(format!("says {table_len} table bytes, the file has {}", table.len())));
    }
    Ok(Backup {
        format_version,
        header,
        table: table.to_vec(),
        checksum: hex(stored),
    })
}

fn header_error(reason: String) -> BackupError {
    BackupError::Header { reason }
}

fn put_string(out: &mut Vec<u8>, value: &str) {
    assert!(
        value.len() <= BACKUP_STRING_BYTES_MAX as usize,
        "string too long for a backup header"
    );
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// Reads a header, and the table length it states; every read is bounded.
fn read_header(head: &[u8]) -> Result<(BackupHeader, u64), BackupError> {
    let mut reader = HeaderReader { bytes: head };
    let snapshot_format_version = reader.u32()?;
    let mut header = BackupHeader {
        snapshot_format_version,
        revision: reader.u64()?,
        applied_index: reader.u64()?,
        applied_term: reader.u64()?,
        created_by: reader.u64()?,
        created_at_ms: reader.u64()?,
        cluster_id: reader.string()?,
        members: Vec::new(),
    };
    let members = reader.u32()?;
    if members > BACKUP_MEMBERS_MAX {
        return Err(header_error(format!("{members} members, at most {BACKUP_MEMBERS_MAX}")));
    }
    for _ in 0..members {
        let id = reader.u64()?;
        header.members.push((id, reader.string()?));
    }
    let table_len = reader.u64()?;
    if !reader.bytes.is_empty() {
        return Err(header_error(format!("{} bytes past its end", reader.bytes.len())));
    }
    Ok((header, table_len))
}

struct HeaderReader<'a> {
    bytes: &'a [u8],
}

impl HeaderReader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], BackupError> {
        if self.bytes.len() < count {
            return Err(header_error("ends early".to_owned()));
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, BackupError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, BackupError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self) -> Result<String, BackupError> {
        let len = self.u32()?;
        if len > BACKUP_STRING_BYTES_MAX {
            return Err(header_error(format!("a string of {len} bytes, at most {BACKUP_STRING_BYTES_MAX}")));
        }
        let bytes = self.take(len as usize)?.to_vec();
        String::from_utf8(bytes).map_err(|_| header_error("a string that is not UTF-8".to_owned()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BackupHeader {
        BackupHeader {
            snapshot_format_version: 4,
            revision: 42,
            applied_index: 17,
            applied_term: 3,
            created_by: 2,
            created_at_ms: 1_700_000_000_000,
            cluster_id: String::new(),
            members: vec![(1, "127.0.0.1:7101".into()), (2, "127.0.0.1:7102".into())],
        }
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let file = encode(&header(), b"table bytes");
        let backup = decode(&file).expect("decodes");
        assert_eq!(
            (BACKUP_FORMAT_VERSION, header(), b"table bytes".to_vec()),
            (backup.format_version, backup.header, backup.table)
        );
        assert_eq!(hex(&file[file.len() - 32..]), backup.checksum);
    }

    #[test]
    fn every_truncation_is_refused() {
        let file = encode(&header(), b"table bytes");
        for len in 0..file.len() {
            assert!(decode(&file[..len]).is_err(), "accepted {len} of {} bytes", file.len());
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let file = encode(&header(), b"table bytes");
        for bit in 0..file.len() * 8 {
            let mut damaged = file.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged).is_err(), "accepted bit {bit} flipped");
        }
    }

    #[test]
    fn refusals_name_their_reason() {
        let file = encode(&header(), b"table bytes");
        assert!(matches!(decode(b"PK\x03\x04 a zip file"), Err(BackupError::NotABackup { .. })));
        let mut newer = file.clone();
        newer[8] = 2;
        assert_eq!(Err(BackupError::NewerVersion { found: 2, supported: 1 }), decode(&newer));
        let mut flipped = file.clone();
        *flipped.last_mut().expect("bytes") ^= 1;
        assert!(matches!(decode(&flipped), Err(BackupError::Checksum { .. })));
        for error in [decode(&file[..20]).unwrap_err(), decode(&flipped).unwrap_err()] {
            assert!(!error.to_string().contains('\n'), "{error}");
        }
    }
}
