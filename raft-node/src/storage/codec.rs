//! Every stored value is bincode 2 (standard configuration) over serde, the
//! same encoding as the table's snapshot bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StorageError;

/// Encodes a value. Only our own serde types are stored, none of which has a
/// map with non-string keys or a field serde cannot size, so this cannot fail.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("stored values always encode with bincode")
}

/// Decodes a stored value, refusing trailing bytes (they would mean the value
/// was written by something else).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StorageError> {
    let (value, len): (T, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(|error| StorageError::Decode {
            what,
            reason: error.to_string(),
        })?;
    if len != bytes.len() {
        return Err(StorageError::Decode {
            what,
            reason: format!("{} trailing bytes after {len}", bytes.len() - len),
        });
    }
    Ok(value)
}
