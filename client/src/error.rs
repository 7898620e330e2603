//! [`Error`]: what a call can end in, with the values a caller needs.
//!
//! The one distinction every caller must keep: [`Error::Unavailable`] means
//! nothing happened (no replica took the call), [`Error::Unknown`] means a
//! write may or may not have taken effect (STYLE.md rule 6). An unknown
//! allocation is resolved by sending the same request again (same
//! `request_id`) or by reading it back with `get`.

use qm_api::wire::ConflictKind;
use qm_api::ConvertError;

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input, caught by the client or the server; nothing changed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// As spelled in the protocol's JSON, e.g. `resource_requirements.cpu_cores`.
        field: String,
        reason: String,
    },
    /// No request, allocation or provider with that id.
    #[error("{message}")]
    NotFound { message: String },
    /// The request will never be granted: the table rejected it (it cannot
    /// fit, its deadline passed, the queue is full) or it was cancelled while
    /// queued. From `allocate_and_wait`; `allocate` returns a rejection as a
    /// reply with status `rejected`.
    #[error("request {request_id} was rejected: {reason}")]
    Rejected { request_id: String, reason: String },
    /// `allocate_and_wait` waited as long as it was told to; the request is
    /// still queued and may be granted later (or released to cancel it).
    #[error("request {request_id} is still queued after waiting {waited_ms} ms")]
    StillQueued { request_id: String, waited_ms: u64 },
    /// The table refused the operation in its current state; nothing changed.
    #[error("{message}")]
    Conflict { kind: ConflictKind, message: String },
    /// No replica served the call within its deadline and retries, and the
    /// call did not take effect anywhere: safe to try again later.
    #[error("no replica served the call after {attempts} attempts; last cause: {last_cause}")]
    Unavailable { attempts: u32, last_cause: String },
    /// A write reached a replica but its outcome could not be learned in
    /// time: it may or may not have taken effect. Never report this as failed.
    #[error("outcome unknown{}: the write may or may not have taken effect; last cause: {last_cause}", request_id.as_ref().map(|id| format!(" for request {id}")).unwrap_or_default())]
    Unknown {
        /// For an allocation: the `request_id` to send again or read back,
        /// which matters when the client generated it.
        request_id: Option<String>,
        last_cause: String,
    },
    /// The client could not set up a connection at all (not a replica being
    /// down: that is retried and ends in `Unavailable` or `Unknown`).
    #[error("transport error: {message}")]
    Transport { message: String },
    /// The server answered with a status the protocol does not use for this
    /// call (internal error, permission denied, ...). Not retried.
    #[error("the server answered {code:?}: {message}")]
    Server { code: tonic::Code, message: String },
    /// The server's answer does not decode: a bug or a version mismatch.
    #[error(transparent)]
    MalformedReply(#[from] ConvertError),
}

impl Error {
    /// The caller's input was wrong; retrying the same call cannot help.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, Error::InvalidArgument { .. })
    }

    /// A write that may or may not have taken effect.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Error::Unknown { .. })
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<qm_state_machine::InvalidArgument> for Error {
    fn from(invalid: qm_state_machine::InvalidArgument) -> Self {
        Error::InvalidArgument {
            field: invalid.field,
            reason: invalid.reason,
        }
    }
}
