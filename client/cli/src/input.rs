//! Reading a JSON document from a file or, for `-`, from stdin.

use std::io::Read;
use std::path::Path;

use super::error::CliError;

/// Largest input document: a registration of the maximum 4096 resources with
/// labels fits with room to spare; anything bigger is not meant for us.
pub const INPUT_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// The text of `path`, or of `stdin` when `path` is `-`.
pub fn read_document(path: &Path, stdin: &mut dyn Read) -> Result<String, CliError> {
    let input_error = |reason: String| CliError::Input {
        path: path.display().to_string(),
        reason,
    };
    let mut text = String::new();
    let read = if path == Path::new("-") {
        stdin.take(INPUT_BYTES_MAX + 1).read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|file| file.take(INPUT_BYTES_MAX + 1).read_to_string(&mut text))
    };
    read.map_err(|error| input_error(error.to_string()))?;
    if text.len() as u64 > INPUT_BYTES_MAX {
        return Err(input_error(format!("is larger than {INPUT_BYTES_MAX} bytes")));
    }
    Ok(text)
}
