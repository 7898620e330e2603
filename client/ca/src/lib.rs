//! # qm-ca: the cluster's own certificate authority
//!
//! [`CertAuthority`] and the certificates it issues (what `qm certs init` and
//! `qm certs issue` write, and what tests generate). Kept apart from the
//! client library and the replica, which only read certificates: neither
//! carries the certificate generator (rcgen).
//!
//! ```text
//!  CertAuthority::generate ──▶ ca.crt (trusted by every replica and client), ca.key (keep it offline)
//!        │ issue(CertSpec { identity, hosts, validity })
//!        ▼
//!  IssuedCert { cert_pem, key_pem }: ECDSA P-256, SAN URIs of the identity,
//!  EKU clientAuth (+ serverAuth and DNS/IP SANs for a resource_manager)
//! ```
//!
//! Whoever holds `ca.key` can mint any identity, admin included: it is the
//! root of the whole security model.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};

use qm_api::tls::{Identity, IdentityError, Role, CA_CERT_FILE, CA_KEY_FILE};

/// A CA made by `qm certs init` is valid this long.
pub const CA_VALIDITY_DAYS: u64 = 3_650;
/// An issued certificate is valid this long unless told otherwise.
pub const CERT_VALIDITY_DAYS: u64 = 365;
/// Longest validity `issue` accepts.
pub const VALIDITY_DAYS_MAX: u64 = 36_500;
/// Certificates start being valid this long before they are made, so that a
/// replica whose clock is a little behind accepts them at once.
pub const CLOCK_SKEW_ALLOWANCE_SECS: u64 = 300;
/// Host names or addresses one replica certificate may name.
pub const HOSTS_MAX: usize = 64;
/// Serial numbers: 16 random bytes (RFC 5280 allows up to 20).
const SERIAL_BYTES: usize = 16;
/// The revocation list `qm certs revoke` writes beside `ca.crt`.
pub const CRL_FILE: &str = "ca.crl";
/// A CRL's `nextUpdate` is this far after its `thisUpdate`. Replicas do not
/// refuse a CRL past it (a lapsed list must not lock everyone out); it is
/// there for other readers, and `qm certs revoke` renews it.
pub const CRL_VALIDITY_DAYS: u64 = 365;
/// Certificates one CRL lists at most.
pub const CRL_ENTRIES_MAX: usize = 100_000;

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From now (less the clock-skew allowance) for `days`.
    pub fn days_from_now(days: u64) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(CLOCK_SKEW_ALLOWANCE_SECS),
            not_after: now + Duration::from_secs(days * 86_400),
        }
    }
}

/// What to put in a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    pub identity: Identity,
    /// DNS names and IP addresses the holder serves on (a replica: what
    /// peers and clients dial). Only a resource_manager serves; for the
    /// other roles this must be empty.
    pub hosts: Vec<String>,
    pub validity: Validity,
}

impl CertSpec {
    /// A certificate for `identity`, valid [`CERT_VALIDITY_DAYS`] from now, serving nowhere.
    pub fn new(identity: Identity) -> CertSpec {
        CertSpec {
            identity,
            hosts: Vec::new(),
            validity: Validity::days_from_now(CERT_VALIDITY_DAYS),
        }
    }

    pub fn with_hosts(self, hosts: impl IntoIterator<Item = impl Into<String>>) -> CertSpec {
        CertSpec {
            hosts: hosts.into_iter().map(Into::into).collect(),
            ..self
        }
    }

    pub fn with_validity(self, validity: Validity) -> CertSpec {
        CertSpec { validity, ..self }
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why a certificate could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("certificate generation failed: {0}")]
    Generation(#[from] rcgen::Error),
}

impl CertError {
    fn file(path: &Path, error: impl std::fmt::Display) -> CertError {
        CertError::File {
            path: path.to_owned(),
            reason: error.to_string(),
        }
    }
}

/// The cluster's certificate authority: its certificate and signing key.
pub struct CertAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertAuthority {
    /// A new self-signed CA that may sign leaf certificates only.
    pub fn generate(common_name: &str, validity: Validity) -> Result<CertAuthority, CertError> {
        check_validity(&validity)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its PEM certificate and key (as `ca.crt` and `ca.key` hold them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertAuthority, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(|error| CertError::Invalid {
            field: "ca key",
            reason: error.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|error| CertError::Invalid {
            field: "ca certificate",
            reason: error.to_string(),
        })?;
        Ok(CertAuthority {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// Reads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<CertAuthority, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|error| CertError::file(&path, error))
        };
        CertAuthority::from_pem(&read(CA_CERT_FILE)?, &read(CA_KEY_FILE)?)
    }

    /// Writes `ca.crt` and `ca.key` (owner-only) into `dir`; refuses to
    /// replace an existing CA key, which would orphan every certificate it signed.
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        let key_path = dir.join(CA_KEY_FILE);
        if key_path.exists() {
            return Err(CertError::file(
                &key_path,
                "exists already; a new CA would orphan every certificate it signed",
            ));
        }
        write_file(&dir.join(CA_CERT_FILE), &self.cert_pem, false)?;
        write_file(&key_path, &self.issuer.key().serialize_pem(), true)
    }

    /// The CA certificate, PEM: what replicas and clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `spec`.
    pub fn issue(&self, spec: &CertSpec) -> Result<IssuedCert, CertError> {
        spec.identity.validate()?;
        check_validity(&spec.validity)?;
        let serves = spec.identity.role == Role::ResourceManager;
        if !serves && !spec.hosts.is_empty() {
            return Err(CertError::Invalid {
                field: "hosts",
                reason: format!(
                    "only a resource_manager certificate names hosts; this one is {}",
                    spec.identity.role
                ),
            });
        }
        if spec.hosts.len() > HOSTS_MAX {
            return Err(CertError::Invalid {
                field: "hosts",
                reason: format!("{} hosts, at most {HOSTS_MAX}", spec.hosts.len()),
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&spec.identity.name);
        params.subject_alt_names = spec
            .hosts
            .iter()
            .map(|host| host_san(host))
            .chain(spec.identity.san_uris().into_iter().map(|uri| uri_san(&uri)))
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match serves {
            true => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            false => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.validity.not_before.into();
        params.not_after = spec.validity.not_after.into();
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// One certificate a CRL lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedCert {
    /// The certificate's serial number, as its bytes.
    pub serial: Vec<u8>,
    /// When it was revoked (seconds since the epoch).
    pub revoked_at_secs: i64,
}

impl CertAuthority {
    /// A CRL signed by this CA listing `revoked`, numbered `number` (which
    /// must grow from one list to the next), PEM.
    pub fn revocation_list(&self, revoked: &[RevokedCert], number: u64) -> Result<String, CertError> {
        if revoked.len() > CRL_ENTRIES_MAX {
            return Err(CertError::Invalid {
                field: "revoked",
                reason: format!("{} certificates, at most {CRL_ENTRIES_MAX} in one list", revoked.len()),
            });
        }
        let now = SystemTime::now();
        let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let params = CertificateRevocationListParams {
            this_update: (now - Duration::from_secs(CLOCK_SKEW_ALLOWANCE_SECS)).into(),
            next_update: (now + Duration::from_secs(CRL_VALIDITY_DAYS * 86_400)).into(),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|cert| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&cert.serial),
                    revocation_time: at(cert.revoked_at_secs),
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Adds the certificates `cert_pems` to the CRL at `crl_path` (a new one
    /// if there is none) and writes it back, replaced whole by a rename so
    /// that a replica never reads half a list. Returns every certificate the
    /// list now holds. A certificate of another CA is refused.
    pub fn revoke(&self, crl_path: &Path, cert_pems: &[String]) -> Result<Vec<RevokedCert>, CertError> {
        let mut revoked = match std::fs::read_to_string(crl_path) {
            Ok(pem) => read_revocation_list(&pem).map_err(|reason| CertError::file(crl_path, reason))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(CertError::file(crl_path, error)),
        };
        let now_secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() as i64);
        for pem in cert_pems {
            let serial = self.serial_of(pem)?;
            if !revoked.iter().any(|known| known.serial == serial) {
                revoked.push(RevokedCert {
                    serial,
                    revoked_at_secs: now_secs,
                });
            }
        }
        // Milliseconds since the epoch: a number that grows from one list to the next.
        let number = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let pem = self.revocation_list(&revoked, number)?;
        let staging = crl_path.with_extension("crl.new");
        write_file(&staging, &pem, false)?;
        std::fs::rename(&staging, crl_path).map_err(|error| CertError::file(crl_path, error))?;
        Ok(revoked)
    }

    /// The serial number of `cert_pem`, if this CA issued it.
    fn serial_of(&self, cert_pem: &str) -> Result<Vec<u8>, CertError> {
        let invalid = |reason: String| CertError::Invalid {
            field: "certificate",
            reason,
        };
        let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|error| invalid(format!("not PEM: {error}")))?;
        let cert = block.parse_x509().map_err(|error| invalid(format!("not X.509: {error}")))?;
        let (_, ca_block) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes()).map_err(|error| invalid(error.to_string()))?;
        let ca = ca_block.parse_x509().map_err(|error| invalid(error.to_string()))?;
        if cert.verify_signature(Some(ca.public_key())).is_err() {
            return Err(invalid(format!("{} was not issued by this CA", cert.subject())));
        }
        Ok(cert.raw_serial().to_vec())
    }
}

/// The certificates a PEM CRL lists.
pub fn read_revocation_list(pem: &str) -> Result<Vec<RevokedCert>, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|error| format!("not a PEM CRL: {error}"))?;
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents).map_err(|error| format!("not a CRL: {error}"))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|cert| RevokedCert {
            serial: cert.raw_serial().to_vec(),
            revoked_at_secs: cert.revocation_date.timestamp(),
        })
        .collect())
}

impl IssuedCert {
    /// Writes `<stem>.crt` and `<stem>.key` (owner-only) into `dir`; returns their paths.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), CertError> {
        let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        write_file(&cert_path, &self.cert_pem, false)?;
        write_file(&key_path, &self.key_pem, true)?;
        Ok((cert_path, key_path))
    }
}

/// The file stem `qm certs` gives a certificate: `replica-<name>`,
/// `provider-<name>`, `consumer-<name>` or `admin-<name>`, without
/// doubling a prefix the name has already (`replica-1` stays `replica-1`).
pub fn file_stem(identity: &Identity) -> String {
    let prefix = match identity.role {
        Role::ResourceManager => "replica",
        Role::ResourceProvider => "provider",
        Role::ResourceConsumer => "consumer",
        Role::Admin => "admin",
    };
    match identity
        .name
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('-') || rest.is_empty())
    {
        true => identity.name.clone(),
        false => format!("{prefix}-{}", identity.name),
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Quartermaster");
    name.push(DnType::CommonName, common_name);
    name
}

fn host_san(host: &str) -> Result<SanType, CertError> {
    let invalid = |reason: String| CertError::Invalid { field: "hosts", reason };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = !host.is_empty() && host.len() <= 253 && host.chars().all(|c| c.is_ascii_alphanumeric() || "-.*".contains(c));
    if !valid_dns {
        return Err(invalid(format!("{host:?} is neither an IP address nor a DNS name")));
    }
    Ok(SanType::DnsName(
        host.try_into().map_err(|error: rcgen::Error| invalid(error.to_string()))?,
    ))
}

fn uri_san(uri: &str) -> Result<SanType, CertError> {
    // Identity::validate has limited names to ASCII, so this cannot fail.
    Ok(SanType::URI(uri.try_into()?))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; SERIAL_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    // Positive, and no leading zero byte to be stripped.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn check_validity(validity: &Validity) -> Result<(), CertError> {
    let span = validity
        .not_after
        .duration_since(validity.not_before)
        .map_err(|_| CertError::Invalid {
            field: "validity",
            reason: "ends before it starts".into(),
        })?;
    if span > Duration::from_secs(VALIDITY_DAYS_MAX * 86_400) {
        return Err(CertError::Invalid {
            field: "validity",
            reason: format!("longer than {VALIDITY_DAYS_MAX} days"),
        });
    }
    Ok(())
}

/// Writes `text` to `path`, readable by its owner only if `private`.
fn write_file(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(|error| CertError::file(path, error))?;
    file.write_all(text.as_bytes()).map_err(|error| CertError::file(path, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer() -> Identity {
        Identity::new(Role::ResourceConsumer, "agent_1", Some("team-a".into())).unwrap()
    }

    #[test]
    fn an_issued_certificate_states_its_identity() {
        let authority = CertAuthority::generate("test CA", Validity::days_from_now(1)).unwrap();
        let issued = authority.issue(&CertSpec::new(consumer())).unwrap();
        assert_eq!(Ok(consumer()), Identity::from_certificate_pem(&issued.cert_pem));
    }

    #[test]
    fn a_reloaded_authority_issues_for_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let authority = CertAuthority::generate("test CA", Validity::days_from_now(1)).unwrap();
        authority.save(dir.path()).unwrap();
        let reloaded = CertAuthority::load(dir.path()).unwrap();
        assert_eq!(authority.cert_pem(), reloaded.cert_pem());

        let issued = reloaded.issue(&CertSpec::new(consumer())).unwrap();
        let (_, cert) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        let (_, ca) = x509_parser::pem::parse_x509_pem(authority.cert_pem().as_bytes()).unwrap();
        let cert = cert.parse_x509().unwrap();
        let ca = ca.parse_x509().unwrap();
        assert_eq!(ca.subject(), cert.issuer());
        cert.verify_signature(Some(ca.public_key())).expect("signed by the original CA key");

        assert!(
            matches!(authority.save(dir.path()), Err(CertError::File { .. })),
            "never overwrites a CA key"
        );
    }

    #[test]
    fn revoking_adds_to_the_list_once_and_only_for_this_cas_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let crl = dir.path().join(CRL_FILE);
        let authority = CertAuthority::generate("test CA", Validity::days_from_now(1)).unwrap();
        let first = authority.issue(&CertSpec::new(consumer())).unwrap();
        let second = authority.issue(&CertSpec::new(consumer())).unwrap();

        assert!(authority.revoke(&crl, &[]).unwrap().is_empty(), "an empty list to start from");
        let listed = authority.revoke(&crl, std::slice::from_ref(&first.cert_pem)).unwrap();
        assert_eq!(1, listed.len());
        let listed = authority.revoke(&crl, &[first.cert_pem.clone(), second.cert_pem.clone()]).unwrap();
        assert_eq!(2, listed.len(), "the first is not listed twice");
        let read = read_revocation_list(&std::fs::read_to_string(&crl).unwrap()).unwrap();
        assert_eq!(listed, read);

        let (_, cert) = x509_parser::pem::parse_x509_pem(second.cert_pem.as_bytes()).unwrap();
        assert_eq!(cert.parse_x509().unwrap().raw_serial(), read[1].serial.as_slice());

        let stranger = CertAuthority::generate("another CA", Validity::days_from_now(1)).unwrap();
        let foreign = stranger.issue(&CertSpec::new(consumer())).unwrap();
        assert!(matches!(
            authority.revoke(&crl, &[foreign.cert_pem]),
            Err(CertError::Invalid { field: "certificate", .. })
        ));
        assert_eq!(2, read_revocation_list(&std::fs::read_to_string(&crl).unwrap()).unwrap().len());
    }

    #[test]
    fn only_replicas_name_hosts() {
        let authority = CertAuthority::generate("test CA", Validity::days_from_now(1)).unwrap();
        let consumer_with_hosts = CertSpec::new(consumer()).with_hosts(["localhost"]);
        assert!(matches!(
            authority.issue(&consumer_with_hosts),
            Err(CertError::Invalid { field: "hosts", .. })
        ));

        let replica = Identity::new(Role::ResourceManager, "replica-1", None).unwrap();
        let issued = authority
            .issue(&CertSpec::new(replica.clone()).with_hosts(["localhost", "127.0.0.1"]))
            .unwrap();
        assert_eq!(Ok(replica.clone()), Identity::from_certificate_pem(&issued.cert_pem));
        let bad_host = CertSpec::new(replica).with_hosts(["not a host"]);
        assert!(matches!(authority.issue(&bad_host), Err(CertError::Invalid { field: "hosts", .. })));
    }

    #[test]
    fn file_stems_name_the_role_once() {
        let stem = |role, name: &str, namespace: Option<&str>| file_stem(&Identity::new(role, name, namespace.map(Into::into)).unwrap());
        assert_eq!("replica-1", stem(Role::ResourceManager, "replica-1", None));
        assert_eq!("replica-4", stem(Role::ResourceManager, "4", None));
        assert_eq!("provider-node_1", stem(Role::ResourceProvider, "node_1", None));
        assert_eq!("consumer-agent_1", stem(Role::ResourceConsumer, "agent_1", Some("team-a")));
        assert_eq!("admin", stem(Role::Admin, "admin", None));
        assert_eq!("admin-replicaops", stem(Role::Admin, "replicaops", None));
    }

    #[test]
    fn validity_must_end_after_it_starts() {
        let now = SystemTime::now();
        let backwards = Validity {
            not_before: now,
            not_after: now - Duration::from_secs(1),
        };
        assert!(matches!(
            CertAuthority::generate("x", backwards),
            Err(CertError::Invalid { field: "validity", .. })
        ));
    }
}
