//! Mutual TLS (rustls, through tonic): the [`TlsConfig`] a client or a
//! replica dials with, and the [`Identity`] a certificate states. The CA that
//! issues certificates is the `qm-ca` crate.
//!
//! ```text
//!  TlsConfig { ca, cert, key } ──load──▶ ClientTlsConfig ──▶ endpoint("host:port") = https://host:port
//!  server: the handshake checks the chain up to ca.crt and the validity dates;
//!          Identity::from_certificate_der reads role / name / namespace from the SAN URIs
//! ```
//!
//! # Layout
//!
//! * [`identity`]: [`Role`], [`Identity`], the `qm://` SAN URIs.

pub mod identity;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

pub use identity::{Identity, IdentityError, Role};

/// The CA certificate's file name in a directory laid out by `qm certs init`.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA key's file name there.
pub const CA_KEY_FILE: &str = "ca.key";

/// A TLS handshake with a replica must finish within this.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// A [`TlsConfig`] that cannot be used: which file, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct TlsConfigError {
    /// `tls.ca`, `tls.cert` or `tls.key`.
    pub field: &'static str,
    pub reason: String,
}

impl TlsConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        TlsConfigError {
            field,
            reason: reason.into(),
        }
    }
}

/// A client's certificate, its key and the CA it trusts, as PEM files.
/// With them the client dials `https://` and presents the certificate;
/// the replicas decide from it what the client may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The cluster's CA certificate: replicas must present a certificate it signed.
    pub ca: PathBuf,
    /// This client's certificate (its role, name and namespace are in it).
    pub cert: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
}

impl TlsConfig {
    /// The three files of `<dir>/ca.crt`, `<dir>/<stem>.crt`, `<dir>/<stem>.key`,
    /// as `qm certs init` lays them out.
    pub fn in_dir(dir: &Path, stem: &str) -> TlsConfig {
        TlsConfig {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    /// Checks that every path is given; the error names the missing one.
    pub fn validate(&self) -> Result<(), TlsConfigError> {
        for (field, path) in [("tls.ca", &self.ca), ("tls.cert", &self.cert), ("tls.key", &self.key)] {
            if path.as_os_str().is_empty() {
                return Err(TlsConfigError::new(
                    field,
                    "is required when TLS is on (give the CA, the certificate and its key)",
                ));
            }
        }
        Ok(())
    }

    /// Reads the files into tonic's client configuration.
    pub fn load(&self) -> Result<ClientTlsConfig, TlsConfigError> {
        self.validate()?;
        let read = |field: &'static str, path: &Path| {
            std::fs::read(path).map_err(|error| TlsConfigError::new(field, format!("cannot read {}: {error}", path.display())))
        };
        let ca = read("tls.ca", &self.ca)?;
        let cert = read("tls.cert", &self.cert)?;
        let key = read("tls.key", &self.key)?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(tonic::transport::Identity::from_pem(cert, key))
            .timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS)))
    }
}

/// An endpoint for `addr` (`host:port`): `https://` with `tls`, `http://` without.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|error| format!("{addr:?}: {error}"))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.clone()).map_err(|error| format!("{addr:?}: {error}")),
        None => Ok(endpoint),
    }
}
