//! [`ReloadableTls`]: the replica's certificate, key, CA bundle and CRL,
//! read again while it runs, so that rotating a certificate or revoking one
//! needs no restart.
//!
//! ```text
//!  SIGHUP, or every --tls-reload-interval-ms when a file's mtime, size or inode changed
//!      ─▶ MutualTls::load(files)  (the same checks as at start: a resource_manager
//!         certificate, not expired, the key matches it, the CA and CRL parse)
//!           ok     ─▶ current = new material, generation + 1, Revocations replaced
//!           refused ─▶ warn once per change; the previous material stays in force
//!  each handshake (gRPC, HTTP, metrics) ─▶ current().server / http_server
//!  each peer channel ─▶ dropped and dialled again with current().peer when the generation
//!                       moved on: a peer whose certificate the new CRL lists is refused
//!                       at the handshake, so it gets no more of the log (network::dial)
//! ```
//!
//! A rotation writes the new key and certificate (best each by a rename);
//! between the two writes the pair does not match, the load is refused, and
//! the next look, once both are there, takes them. Connections already open
//! keep the certificate their handshake used; calls on them are still
//! checked against the current CRL ([`Revocations`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::revocation::Revocations;
use super::{MutualTls, TlsSetupError};
use crate::config::TlsFiles;

/// What identifies one version of a file: modification time, size, inode.
type FileStamp = Option<(SystemTime, u64, u64)>;

/// The replica's TLS material as of its last successful (re)load.
pub struct ReloadableTls {
    files: TlsFiles,
    current: RwLock<Arc<MutualTls>>,
    /// Grows at each successful reload: a peer channel dialled with an older
    /// generation's certificate is dialled again.
    generation: AtomicU64,
    /// The files' stamps when the material in force was read.
    loaded: Mutex<Vec<FileStamp>>,
    /// The stamps of the last refused load, so a bad set is warned about once.
    refused: Mutex<Option<Vec<FileStamp>>>,
    /// The CRL's certificates, shared with the guard.
    pub revocations: Arc<Revocations>,
}

impl ReloadableTls {
    /// Loads the material at start: any problem stops the replica.
    pub fn load(files: &TlsFiles) -> Result<Arc<ReloadableTls>, TlsSetupError> {
        let stamps = stamps(files);
        let tls = MutualTls::load(files)?;
        let revocations = Arc::new(Revocations::default());
        revocations.replace(tls.revoked.clone());
        Ok(Arc::new(ReloadableTls {
            files: files.clone(),
            current: RwLock::new(Arc::new(tls)),
            generation: AtomicU64::new(0),
            loaded: Mutex::new(stamps),
            refused: Mutex::new(None),
            revocations,
        }))
    }

    /// The material in force.
    pub fn current(&self) -> Arc<MutualTls> {
        self.current.read().expect("tls lock").clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a file changed since the material in force was read.
    pub fn files_changed(&self) -> bool {
        stamps(&self.files) != *self.loaded.lock().expect("stamps lock")
    }

    /// Reads the files again and puts them in force if they pass the start's
    /// checks; otherwise keeps the material in force and says why.
    pub fn reload(&self) -> Result<Arc<MutualTls>, TlsSetupError> {
        // Stamped before reading: a file written meanwhile is seen at the next look.
        let stamps = stamps(&self.files);
        let tls = match MutualTls::load(&self.files) {
            Ok(tls) => Arc::new(tls),
            Err(error) => {
                *self.refused.lock().expect("refused lock") = Some(stamps);
                return Err(error);
            }
        };
        self.revocations.replace(tls.revoked.clone());
        *self.current.write().expect("tls lock") = tls.clone();
        *self.loaded.lock().expect("stamps lock") = stamps;
        *self.refused.lock().expect("refused lock") = None;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(tls)
    }

    /// Reloads on SIGHUP, and every `interval_ms` (0: never) when a file
    /// changed. Runs until the task is dropped.
    pub async fn reload_when_asked(self: Arc<Self>, interval_ms: u64) {
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => Some(hangups),
            Err(error) => {
                warn!(%error, "no SIGHUP handler: TLS files are reloaded only when they change");
                None
            }
        };
        loop {
            let hangup = async {
                match &mut hangups {
                    Some(hangups) => {
                        hangups.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let poll = async {
                match interval_ms {
                    0 => std::future::pending().await,
                    interval => tokio::time::sleep(Duration::from_millis(interval)).await,
                }
            };
            let asked = tokio::select! {
                () = hangup => true,
                () = poll => false,
            };
            if !asked {
                let now = stamps(&self.files);
                let refused_already = self.refused.lock().expect("refused lock").as_ref() == Some(&now);
                if !self.files_changed() || refused_already {
                    continue;
                }
            }
            match self.reload() {
                Ok(tls) => {
                    info!(
                        identity = %tls.identity,
                        revoked = self.revocations.len(),
                        generation = self.generation(),
                        on_signal = asked,
                        "TLS certificate, key, CA and CRL reloaded; new connections use them"
                    );
                    if tls.expires_soon() {
                        warn!(identity = %tls.identity, "the reloaded certificate expires within {} days; issue a new one", super::CERT_EXPIRY_WARNING_DAYS);
                    }
                }
                Err(error) => warn!(%error, "TLS reload refused; the previous certificate, key, CA and CRL stay in force"),
            }
        }
    }
}

/// The stamps of the cert, key, CA and CRL files, in that order.
fn stamps(files: &TlsFiles) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    [Some(&files.cert), Some(&files.key), Some(&files.ca), files.crl.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len(), meta.ino()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use qm_api::tls::{Identity, Role};
    use qm_ca::{CertAuthority, CertSpec, Validity};

    use super::*;

    fn replica() -> Identity {
        Identity::new(Role::ResourceManager, "replica-1", None).unwrap()
    }

    /// Issues `holder.crt/.key` in `dir` with the CA there.
    fn issue(dir: &Path, identity: Identity) -> (Vec<u8>, Vec<u8>) {
        let authority = CertAuthority::load(dir).unwrap();
        let issued = authority.issue(&CertSpec::new(identity)).unwrap();
        (issued.cert_pem.into_bytes(), issued.key_pem.into_bytes())
    }

    #[test]
    fn a_reload_takes_a_valid_set_and_refuses_a_bad_one_keeping_the_previous() {
        let dir = tempfile::tempdir().unwrap();
        CertAuthority::generate("test CA", Validity::days_from_now(1))
            .unwrap()
            .save(dir.path())
            .unwrap();
        let files = TlsFiles {
            cert: dir.path().join("holder.crt"),
            key: dir.path().join("holder.key"),
            ca: dir.path().join("ca.crt"),
            crl: None,
        };
        let (cert, key) = issue(dir.path(), replica());
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let tls = ReloadableTls::load(&files).unwrap();
        assert_eq!(0, tls.generation());
        assert!(!tls.files_changed());

        // --- a new certificate without its key: the pair does not match, the old set stays
        let (new_cert, new_key) = issue(dir.path(), replica());
        std::fs::write(&files.cert, &new_cert).unwrap();
        assert!(tls.files_changed());
        assert!(tls.reload().is_err(), "a certificate with another's key");
        assert_eq!(0, tls.generation());

        // --- its key too: taken
        std::fs::write(&files.key, &new_key).unwrap();
        tls.reload().unwrap();
        assert_eq!(1, tls.generation());
        assert!(!tls.files_changed());

        // --- another role's certificate is refused as at start
        let (admin_cert, admin_key) = issue(dir.path(), Identity::new(Role::Admin, "ops", None).unwrap());
        std::fs::write(&files.cert, &admin_cert).unwrap();
        std::fs::write(&files.key, &admin_key).unwrap();
        assert!(matches!(tls.reload(), Err(TlsSetupError::NotAReplica { .. })));
        assert_eq!(replica(), tls.current().identity);
        assert_eq!(1, tls.generation());
    }

    #[test]
    fn a_crl_in_force_marks_the_certificates_it_lists() {
        let dir = tempfile::tempdir().unwrap();
        let authority = CertAuthority::generate("test CA", Validity::days_from_now(1)).unwrap();
        authority.save(dir.path()).unwrap();
        let (cert, key) = issue(dir.path(), replica());
        let consumer = authority
            .issue(&CertSpec::new(
                Identity::new(Role::ResourceConsumer, "agent", Some("team-a".into())).unwrap(),
            ))
            .unwrap();
        let crl = dir.path().join("ca.crl");
        authority.revoke(&crl, &[]).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("holder.crt"),
            key: dir.path().join("holder.key"),
            ca: dir.path().join("ca.crt"),
            crl: Some(crl.clone()),
        };
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let tls = ReloadableTls::load(&files).unwrap();
        let der = |pem: &str| x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        assert!(!tls.revocations.is_revoked(&der(&consumer.cert_pem)));

        authority.revoke(&crl, std::slice::from_ref(&consumer.cert_pem)).unwrap();
        tls.reload().unwrap();
        assert!(tls.revocations.is_revoked(&der(&consumer.cert_pem)));
        assert!(!tls.revocations.is_revoked(&der(&String::from_utf8(cert).unwrap())));

        // A file that is not a CRL is refused; the list in force stays.
        std::fs::write(&crl, "not a CRL").unwrap();
        assert!(matches!(tls.reload(), Err(TlsSetupError::Crl { .. })));
        assert!(tls.revocations.is_revoked(&der(&consumer.cert_pem)));
    }
}
