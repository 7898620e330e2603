//! The whole table to bytes and back (bincode 2, standard configuration).
//!
//! Only the state is encoded; the indexes are rebuilt on restore, which keeps
//! snapshots small and proves on every restore that they are derivable.

use super::AllocationTable;
use crate::error::SnapshotError;

/// Bumped whenever the encoded layout changes; a build refuses snapshots of
/// another version rather than misreading them.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

impl AllocationTable {
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec((SNAPSHOT_FORMAT_VERSION, self), bincode::config::standard())
            .expect("the table always encodes: it holds no maps with non-string keys or unsized values")
    }

    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<AllocationTable, SnapshotError> {
        let config = bincode::config::standard();
        let decode_error = |error: bincode::error::DecodeError| SnapshotError::Decode(error.to_string());
        // The version first, alone, so a snapshot of another layout is named as such.
        let (version, version_len): (u32, usize) = bincode::serde::decode_from_slice(bytes, config).map_err(decode_error)?;
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::Version { found: version, expected: SNAPSHOT_FORMAT_VERSION });
        }
        let (mut table, table_len): (AllocationTable, usize) =
            bincode::serde::decode_from_slice(&bytes[version_len..], config).map_err(decode_error)?;
        let trailing = bytes.len() - version_len - table_len;
        if trailing != 0 {
            return Err(SnapshotError::Trailing { trailing });
        }
        table.rebuild_indexes();
        Ok(table)
    }
}
