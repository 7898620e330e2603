//! [`JepsenError`]: what can stop a run before it reaches a verdict.
//!
//! A run that reaches its checkers never fails with an error: a broken
//! cluster shows up as anomalies or unavailability in the verdict. These
//! errors are for the harness itself (a bad flag, a binary that is missing,
//! certificates that cannot be made, a cluster that never elects a first
//! leader, an unwritable report).

use std::path::PathBuf;

/// Why a run (or an offline check) could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum JepsenError {
    /// A flag is out of range or contradicts another one.
    #[error("invalid --{flag}: {reason}")]
    InvalidConfig { flag: &'static str, reason: String },
    /// The `qm-node` binary was not found where it was looked for.
    #[error("no qm-node binary at {path}: build it first (cargo build -p qm-raft-node --bin qm-node) or pass --node-binary")]
    NodeBinaryMissing { path: PathBuf },
    /// The cluster, a proxy or a replica could not be started or changed.
    #[error("cluster: {reason}")]
    Cluster { reason: String },
    /// Making the CA or a certificate of a `--tls` run failed.
    #[error("certificate for {holder}: {source}")]
    Certificate {
        /// The role and name the certificate was for, e.g. `admin jepsen-admin`.
        holder: String,
        #[source]
        source: qm_ca::CertError,
    },
    /// The workload's setup (providers, units) failed.
    #[error("setup: {reason}")]
    Setup { reason: String },
    /// Reading or writing a file of the report or the history.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A history line or a test description that does not parse.
    #[error("{path}, line {line}: {reason}")]
    Parse { path: PathBuf, line: usize, reason: String },
    /// Drawing a plot failed.
    #[error("plot {name}: {reason}")]
    Plot { name: &'static str, reason: String },
}

impl JepsenError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> JepsenError {
        let path = path.into();
        move |source| JepsenError::Io { path, source }
    }

    pub fn cluster(reason: impl std::fmt::Display) -> JepsenError {
        JepsenError::Cluster {
            reason: reason.to_string(),
        }
    }
}
