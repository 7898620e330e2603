//! The certificates a CRL revokes, as the replica checks them.
//!
//! rustls checks the CRL at every handshake. A connection opened before a
//! certificate was revoked would still carry its calls, so the guard checks
//! each call's certificate against [`Revocations`] too: a revoked
//! certificate is refused from the moment its CRL is loaded, whatever
//! connection it comes on.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::RwLock;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;

/// Revoked certificates by (issuer's DER name, serial number bytes).
pub type RevokedSet = BTreeSet<(Vec<u8>, Vec<u8>)>;

/// The revoked set in force, replaced whole when the CRL is reloaded.
#[derive(Debug, Default)]
pub struct Revocations {
    revoked: RwLock<RevokedSet>,
}

impl Revocations {
    pub fn replace(&self, revoked: RevokedSet) {
        *self.revoked.write().expect("revocations lock") = revoked;
    }

    /// Whether the DER certificate `leaf` is revoked (a certificate that
    /// does not parse is not: the handshake and the identity check refuse it).
    pub fn is_revoked(&self, leaf: &[u8]) -> bool {
        let revoked = self.revoked.read().expect("revocations lock");
        if revoked.is_empty() {
            return false;
        }
        let Ok((_, certificate)) = x509_parser::parse_x509_certificate(leaf) else {
            return false;
        };
        revoked.contains(&(certificate.issuer().as_raw().to_vec(), certificate.raw_serial().to_vec()))
    }

    pub fn len(&self) -> usize {
        self.revoked.read().expect("revocations lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The CRLs in the PEM file `path` (for rustls) and the certificates they list.
pub fn read_crl(path: &Path) -> Result<(Vec<CertificateRevocationListDer<'static>>, RevokedSet), String> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|crls| crls.collect::<Result<Vec<_>, _>>())
        .map_err(|error| error.to_string())?;
    if crls.is_empty() {
        return Err("holds no X509 CRL block (make one with qm certs revoke)".into());
    }
    let mut revoked = RevokedSet::new();
    for crl in &crls {
        let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref()).map_err(|error| format!("not a CRL: {error}"))?;
        let issuer = parsed.issuer().as_raw().to_vec();
        for cert in parsed.iter_revoked_certificates() {
            revoked.insert((issuer.clone(), cert.raw_serial().to_vec()));
        }
    }
    Ok((crls, revoked))
}
