//! Every stored value is bincode 2 over serde: the crate's one encoding
//! ([`crate::codec`]), so a log entry on disk and on the wire are the same
//! bytes. This only names what failed to decode.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::StorageError;

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    crate::codec::encode(value)
}

/// Decodes a stored value, refusing trailing bytes (they would mean the value
/// was written by something else).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StorageError> {
    crate::codec::decode(bytes).map_err(|error| StorageError::Decode { what, reason: error.0 })
}
