//! bincode (2.0, standard configuration) for everything a replica stores or
//! sends to another replica: one encoding, so a log entry on disk and on the
//! wire are the same bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes `value`. Only types of this crate and openraft's pass through here,
/// and they always encode.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("replica types always encode")
}

/// Decodes a whole buffer; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map_err(|e| DecodeError(e.to_string()))?;
    if read != bytes.len() {
        return Err(DecodeError(format!("{} trailing bytes", bytes.len() - read)));
    }
    Ok(value)
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("could not decode: {0}")]
pub struct DecodeError(pub String);
