//! Mutual TLS (rustls, through tonic): a client's [`TlsConfig`], the
//! [`Identity`] a certificate states, and the [`CertAuthority`] that issues
//! certificates (`qm certs`).
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
//! * [`authority`]: [`CertAuthority`], [`CertSpec`], [`IssuedCert`].

pub mod authority;
pub mod identity;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

pub use authority::{CertAuthority, CertError, CertSpec, IssuedCert, Validity};
pub use identity::{Identity, IdentityError, Role};

use crate::config::ConfigError;

/// A TLS handshake with a replica must finish within this.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

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
            ca: dir.join(authority::CA_CERT_FILE),
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    /// Checks that every path is given; the error names the missing one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, path) in [("tls.ca", &self.ca), ("tls.cert", &self.cert), ("tls.key", &self.key)] {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    field,
                    "is required when TLS is on (give the CA, the certificate and its key)",
                ));
            }
        }
        Ok(())
    }

    /// Reads the files into tonic's client configuration.
    pub fn load(&self) -> Result<ClientTlsConfig, ConfigError> {
        self.validate()?;
        let read = |field: &str, path: &Path| {
            std::fs::read(path).map_err(|error| ConfigError::new(field, format!("cannot read {}: {error}", path.display())))
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
