//! [`CliError`]: what `qm` prints as its one line on stderr, and its exit code.

use qm_client::ConfigError;
use qm_client::Error;

/// Why a `qm` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the client or the server: `invalid <field>: <reason>`, not found,
    /// unavailable, outcome unknown, ...
    #[error(transparent)]
    Client(#[from] Error),
    /// The global options do not make a usable client configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An input file could not be read.
    #[error("cannot read {path}: {reason}")]
    Input { path: String, reason: String },
    /// A backup file is damaged, of another version, or could not be written.
    #[error("{path}: {reason}")]
    Backup { path: String, reason: String },
    /// Printing the answer failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// `qm certs`: a certificate could not be made, read or written.
    #[error(transparent)]
    Certs(#[from] qm_ca::CertError),
}

/// Exit code for bad input: the same command cannot succeed as typed.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code for every other failure.
pub const EXIT_FAILURE: u8 = 1;

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(error) if error.is_invalid_argument() => EXIT_BAD_INPUT,
            CliError::Config(_) | CliError::Input { .. } => EXIT_BAD_INPUT,
            CliError::Certs(qm_ca::CertError::Identity(_) | qm_ca::CertError::Invalid { .. }) => EXIT_BAD_INPUT,
            CliError::Client(_) | CliError::Output(_) | CliError::Certs(_) | CliError::Backup { .. } => EXIT_FAILURE,
        }
    }

    /// The reader of our output went away (`qm watch | head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(error) if error.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

impl From<qm_state_machine::InvalidArgument> for CliError {
    fn from(invalid: qm_state_machine::InvalidArgument) -> Self {
        CliError::Client(invalid.into())
    }
}
