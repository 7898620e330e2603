//! Security: mutual TLS between replicas and with clients, and
//! capability-based authorization of every call (`SECURITY.md`).
//!
//! ```text
//!  TCP ─▶ rustls handshake: the peer's certificate must chain to --tls-ca and be within its dates
//!         (else the connection is dropped: the caller sees UNAVAILABLE / a transport error)
//!      ─▶ tonic service ─▶ Guard::admit(request, Call)
//!              │ the leaf's SAN URIs ─▶ Identity { role, name, namespace }   else UNAUTHENTICATED
//!              │ policy: may this role make this call?                         else PERMISSION_DENIED
//!              ▼
//!          Caller ─▶ handler: a consumer's namespace forced and checked, a provider held to its own id,
//!                    records it may not see answered NOT_FOUND ─▶ only then Node::propose / reads
//! ```
//!
//! # Layout
//!
//! * [`policy`]: [`Call`] and which roles may make each.
//! * [`audit`]: the audit trail: a JSON line per write, admin read and refusal.
//! * [`guard`]: [`Guard`]: authentication and the role check, per call.
//! * [`caller`]: [`Caller`]: namespace and provider scoping in the handlers.
//! * [`capability`]: capability policies: the caller's effective capability
//!   and the check of an allocate against it, before anything is proposed.
//! * [`handshakes`]: the gRPC listener's TLS handshakes, refusals logged
//!   with the peer's address (rate-limited).
//! * [`reload`]: [`ReloadableTls`](reload::ReloadableTls): the certificate,
//!   key, CA and CRL read again on SIGHUP or when their files change.
//! * [`revocation`]: [`Revocations`](revocation::Revocations): the CRL's
//!   certificates, refused per call too (connections opened before the list).
//! * [`MutualTls`] (here): the replica's certificates, loaded and checked;
//!   [`rustls_server_config`], the listeners' rustls configuration;
//!   [`rustls_peer_config`], the one peers are dialled with (`network::dial`).

pub mod audit;
pub mod caller;
pub mod capability;
pub mod guard;
pub mod handshakes;
pub mod policy;
pub mod reload;
pub mod revocation;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use qm_api::tls::{Identity, Role};
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

pub use caller::Caller;
pub use guard::Guard;
pub use policy::Call;
pub use revocation::RevokedSet;

use crate::config::TlsFiles;

/// A TLS handshake on the replica's listener must finish within this; a
/// connection that stalls it is dropped.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// A replica certificate expiring sooner than this is warned about at start.
pub const CERT_EXPIRY_WARNING_DAYS: u64 = 30;

/// A replica's TLS material: what it serves with, what it dials peers with.
pub struct MutualTls {
    /// The gRPC listener: this replica's certificate, clients' certificates
    /// required and checked against the CA and the CRL, HTTP/2 (ALPN `h2`).
    pub server: Arc<rustls::ServerConfig>,
    /// The HTTP listeners (API and metrics): the same, HTTP/1.1 only.
    pub http_server: Arc<rustls::ServerConfig>,
    /// The certificates the CRL lists (empty without `--tls-crl`).
    pub revoked: RevokedSet,
    /// Dialling peers (Raft, bootstrap and health probes, a joiner's
    /// check; `network::dial`): the same certificate presented, peers'
    /// certificates checked against the CA and the CRL, HTTP/2 (ALPN `h2`).
    pub peer: Arc<rustls::ClientConfig>,
    /// What this replica's own certificate states.
    pub identity: Identity,
    /// When this replica's certificate expires.
    pub not_after: SystemTime,
}

/// Why TLS could not be set up; the replica does not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--tls-{flag} {path}: {reason}")]
    File { flag: &'static str, path: String, reason: String },
    #[error("--tls-cert: {0}")]
    Identity(#[from] qm_api::tls::IdentityError),
    #[error("--tls-cert states {identity}; a replica needs a resource_manager certificate (qm certs issue --role resource_manager)")]
    NotAReplica { identity: Identity },
    #[error("--tls-cert expired; issue a new one (qm certs issue --role resource_manager)")]
    Expired,
    #[error("--tls-crl {path}: {reason}")]
    Crl { path: String, reason: String },
}

impl MutualTls {
    /// Reads and checks the replica's certificate, key and CA.
    pub fn load(files: &TlsFiles) -> Result<MutualTls, TlsSetupError> {
        let read = |flag: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|error| TlsSetupError::File {
                flag,
                path: path.display().to_string(),
                reason: error.to_string(),
            })
        };
        let cert = read("cert", &files.cert)?;
        // Read here too, so that a missing file is named by its own flag
        // before rustls parses them all.
        read("key", &files.key)?;
        read("ca", &files.ca)?;
        if let Some(crl) = &files.crl {
            read("crl", crl)?;
        }
        let (crls, revoked) = match &files.crl {
            None => (Vec::new(), RevokedSet::new()),
            Some(path) => revocation::read_crl(path).map_err(|reason| TlsSetupError::Crl {
                path: path.display().to_string(),
                reason,
            })?,
        };
        let (identity, not_after) = read_own_certificate(&cert).map_err(|reason| TlsSetupError::File {
            flag: "cert",
            path: files.cert.display().to_string(),
            reason,
        })?;
        let identity = identity?;
        if identity.role != Role::ResourceManager {
            return Err(TlsSetupError::NotAReplica { identity });
        }
        if not_after <= SystemTime::now() {
            return Err(TlsSetupError::Expired);
        }
        let server_config = |alpn: &[u8]| {
            rustls_server_config(files, &crls, alpn).map_err(|error| TlsSetupError::File {
                flag: "cert",
                path: files.cert.display().to_string(),
                reason: format!("{error:#}"),
            })
        };
        let server = server_config(b"h2")?;
        let http_server = server_config(b"http/1.1")?;
        let peer = rustls_peer_config(files, &crls).map_err(|error| TlsSetupError::File {
            flag: "cert",
            path: files.cert.display().to_string(),
            reason: format!("{error:#}"),
        })?;
        Ok(MutualTls {
            server,
            http_server,
            revoked,
            peer,
            identity,
            not_after,
        })
    }

    /// Whether the certificate expires within [`CERT_EXPIRY_WARNING_DAYS`].
    pub fn expires_soon(&self) -> bool {
        self.not_after
            .duration_since(SystemTime::now())
            .is_ok_and(|left| left < Duration::from_secs(CERT_EXPIRY_WARNING_DAYS * 86_400))
    }
}

/// A listener's rustls configuration: this replica's certificate, client
/// certificates required and checked against the CA and `crls`, offering `alpn`.
///
/// A certificate of a CA in the bundle that no CRL covers is accepted (its
/// revocation status is unknown, not revoked): while a cluster moves to a new
/// CA, the bundle holds both and the CRL is the old or the new CA's.
pub fn rustls_server_config(
    files: &TlsFiles,
    crls: &[CertificateRevocationListDer<'static>],
    alpn: &[u8],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key, roots) = read_pem_files(files)?;
    let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if !crls.is_empty() {
        verifier = verifier
            .with_crls(crls.iter().cloned())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let verifier = verifier.build().context("client certificate verifier (--tls-ca, --tls-crl)")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the replica's certificate and key")?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The peers' rustls configuration (`network::dial`): this replica's
/// certificate presented, the peer's checked against the CA and `crls` as
/// [`rustls_server_config`] checks a client's (a revoked peer is refused at
/// the handshake, one of a CA no CRL covers accepted), HTTP/2 (ALPN `h2`).
pub fn rustls_peer_config(files: &TlsFiles, crls: &[CertificateRevocationListDer<'static>]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key, roots) = read_pem_files(files)?;
    let mut verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
    if !crls.is_empty() {
        verifier = verifier
            .with_crls(crls.iter().cloned())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let verifier = verifier.build().context("peer certificate verifier (--tls-ca, --tls-crl)")?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .context("the replica's certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The replica's certificate chain, its key, and the CA bundle as roots.
type PemFiles = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, Arc<rustls::RootCertStore>);

fn read_pem_files(files: &TlsFiles) -> anyhow::Result<PemFiles> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--tls-cert {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).with_context(|| format!("--tls-key {}", files.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca).with_context(|| format!("--tls-ca {}", files.ca.display()))? {
        roots
            .add(ca.with_context(|| format!("--tls-ca {}", files.ca.display()))?)
            .context("--tls-ca")?;
    }
    Ok((chain, key, Arc::new(roots)))
}

/// The identity and expiry of a PEM certificate.
type OwnCertificate = (Result<Identity, qm_api::tls::IdentityError>, SystemTime);

fn read_own_certificate(pem: &[u8]) -> Result<OwnCertificate, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|error| format!("not a PEM certificate: {error}"))?;
    let certificate = block.parse_x509().map_err(|error| format!("not an X.509 certificate: {error}"))?;
    let not_after_secs = certificate.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(not_after_secs.max(0) as u64);
    Ok((Identity::from_certificate_der(&block.contents), not_after))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use qm_ca::{CertAuthority, CertSpec, Validity};

    use super::*;

    /// A CA in `dir` and one certificate `<stem>.crt/.key` for `identity`.
    fn files(dir: &Path, identity: Identity, validity: Validity) -> TlsFiles {
        let authority = CertAuthority::generate("test CA", Validity::days_from_now(1)).unwrap();
        authority.save(dir).unwrap();
        let spec = CertSpec::new(identity).with_validity(validity);
        let (cert, key) = authority.issue(&spec).unwrap().save(dir, "holder").unwrap();
        TlsFiles {
            cert,
            key,
            ca: dir.join("ca.crt"),
            crl: None,
        }
    }

    #[test]
    fn a_replica_certificate_loads() {
        let dir = tempfile::tempdir().unwrap();
        let replica = Identity::new(Role::ResourceManager, "replica-1", None).unwrap();
        let tls = MutualTls::load(&files(dir.path(), replica.clone(), Validity::days_from_now(365))).unwrap();
        assert_eq!(replica, tls.identity);
        assert!(!tls.expires_soon());
    }

    #[test]
    fn a_replica_refuses_to_start_with_another_role_or_an_expired_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let admin = Identity::new(Role::Admin, "admin", None).unwrap();
        let refused = MutualTls::load(&files(dir.path(), admin, Validity::days_from_now(1)));
        assert!(matches!(refused, Err(TlsSetupError::NotAReplica { .. })), "{:?}", refused.err());

        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let expired = Validity {
            not_before: now - Duration::from_secs(2 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        };
        let replica = Identity::new(Role::ResourceManager, "replica-1", None).unwrap();
        let refused = MutualTls::load(&files(dir.path(), replica, expired));
        assert!(matches!(refused, Err(TlsSetupError::Expired)), "{:?}", refused.err());
    }

    #[test]
    fn a_missing_file_is_named() {
        let missing = TlsFiles {
            cert: "/nonexistent/replica.crt".into(),
            key: "/nonexistent/replica.key".into(),
            ca: "/nonexistent/ca.crt".into(),
            crl: None,
        };
        let error = MutualTls::load(&missing).err().unwrap().to_string();
        assert!(error.starts_with("--tls-cert /nonexistent/replica.crt"), "{error}");
    }
}
