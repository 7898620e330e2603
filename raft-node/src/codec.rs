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

/// The string and byte contents one decode may claim, in total. bincode
/// allocates a string's claimed length before reading it, so without a limit
/// a corrupt or hostile message of a few bytes claiming 2^60 aborts the
/// replica (found by fuzzing: `fuzz/corpus/raft_message`). The largest
/// genuine claim is one log entry of [`PROPOSAL_BATCH_COMMANDS_MAX`] commands
/// of at most 4 MiB each.
///
/// [`PROPOSAL_BATCH_COMMANDS_MAX`]: crate::consensus::proposer::PROPOSAL_BATCH_COMMANDS_MAX
pub const DECODED_BYTES_MAX: usize = 2 << 30;

/// Decodes a whole buffer; trailing bytes are an error, and so are claims
/// past [`DECODED_BYTES_MAX`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let config = bincode::config::standard().with_limit::<DECODED_BYTES_MAX>();
    let (value, read) = bincode::serde::decode_from_slice(bytes, config).map_err(|e| DecodeError(e.to_string()))?;
    if read != bytes.len() {
        return Err(DecodeError(format!("{} trailing bytes", bytes.len() - read)));
    }
    Ok(value)
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("could not decode: {0}")]
pub struct DecodeError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_claiming_more_than_the_limit_is_refused_before_any_allocation() {
        // bincode's varint: 0xFD then a little-endian u64, here 2^60 bytes.
        let mut claim = vec![0xFD];
        claim.extend_from_slice(&(1u64 << 60).to_le_bytes());
        claim.extend_from_slice(b"abc");
        // Without the limit this allocation aborts the process.
        assert!(decode::<String>(&claim).is_err());
        assert!(decode::<crate::types::Entry>(&claim).is_err());
    }

    #[test]
    fn what_encodes_decodes() {
        let text = "a".repeat(1000);
        assert_eq!(Ok(text.clone()), decode::<String>(&encode(&text)).map_err(|error| error.0));
    }
}
