//! [`Credentials`]: which certificate each client of a run presents, and the
//! flags that put the replicas on mutual TLS. Without `--tls` every client is
//! plain and the replicas get no TLS flags, as before TLS existed.
//!
//! With `--tls` the run makes a fresh CA and issues, into `<out>/certs/`:
//!
//! ```text
//!  ca.crt                          trusted by replicas and every client; the CA key is never written
//!  replica-jepsen-replicas.crt/.key  resource_manager, shared by every replica (LocalCluster gives
//!                                  them all the same flags); names every host a replica is dialled at
//!  admin-jepsen-admin.crt/.key     admin: the membership nemesis's AddReplica / RemoveReplica
//!  consumer-jepsen-workers.crt/.key resource_consumer of namespace "default": workers, final read
//!  provider-<id>.crt/.key          resource_provider, one per provider: it registers and heartbeats as itself
//! ```
//!
//! Which address a TLS client checks the certificate against is the one it
//! dials. Peers, clients and the harness's status probes all dial the proxies
//! (127.0.0.1); the proxies forward bytes and leave TLS alone, so the replica
//! behind one answers the handshake for the proxy's address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use qm_ca::{file_stem, CertAuthority, CertError, CertSpec, Validity, HOSTS_MAX};
use qm_client::tls::{Identity, Role, TlsConfig, CA_CERT_FILE};
use qm_state_machine::request::DEFAULT_NAMESPACE;

use crate::config::{RunConfig, REPLICA_ID_MAX};
use crate::error::JepsenError;
use crate::proxy::replica_ip;
use crate::workload;

/// The run's certificates go here, under `--out`.
pub const CERTS_DIR: &str = "certs";
/// The certificates outlive any run by far, and are useless once the run's
/// replicas are gone: nothing else trusts this CA.
pub const CERT_VALIDITY_DAYS: u64 = 2;
/// Name of the certificate every replica shares.
pub const REPLICA_NAME: &str = "jepsen-replicas";
/// Name of the membership nemesis's admin certificate.
pub const ADMIN_NAME: &str = "jepsen-admin";
/// Name of the consumer certificate of the workers and the final read.
pub const CONSUMER_NAME: &str = "jepsen-workers";
/// Host names every replica certificate names besides the replicas' own
/// listen addresses: the proxies listen on 127.0.0.1.
pub const REPLICA_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];
/// Replica ids (from 1) whose own listen address, 127.0.0.(id+1), the
/// replica certificate also names, so that a person can dial a replica past
/// its proxy. The certificate holds at most `HOSTS_MAX` hosts; the harness
/// itself only ever dials the proxies, so later ids lose nothing.
pub const LISTEN_ADDRS_NAMED_MAX: u64 = {
    let room = (HOSTS_MAX - REPLICA_HOSTS.len()) as u64;
    if room < REPLICA_ID_MAX {
        room
    } else {
        REPLICA_ID_MAX
    }
};

/// The certificate each client of a run presents; all `None` without TLS.
#[derive(Clone, Debug)]
pub struct Credentials {
    issued: Option<Issued>,
}

/// The files of a TLS run.
#[derive(Clone, Debug)]
struct Issued {
    /// Where the files are (absolute, since the replicas read them too).
    dir: PathBuf,
    replica: TlsConfig,
    admin: TlsConfig,
    consumer: TlsConfig,
    /// Provider id → its certificate.
    providers: BTreeMap<String, TlsConfig>,
}

impl Credentials {
    /// No TLS: plain gRPC, every call allowed.
    pub fn plain() -> Credentials {
        Credentials { issued: None }
    }

    /// What `config` asks for: with `--tls`, a fresh CA and certificates in
    /// `<out>/certs` for the replicas, the admin, the workers and each of the
    /// workload's providers.
    pub fn for_run(config: &RunConfig) -> Result<Credentials, JepsenError> {
        match config.tls {
            false => Ok(Credentials::plain()),
            true => Credentials::issue(&config.out.join(CERTS_DIR), &workload::provider_ids(config.workload)),
        }
    }

    /// Makes a CA and issues every certificate of a run into `dir` (created
    /// if missing; files of an earlier run there are replaced).
    pub fn issue(dir: &Path, provider_ids: &[String]) -> Result<Credentials, JepsenError> {
        std::fs::create_dir_all(dir).map_err(JepsenError::io(dir))?;
        let dir = std::path::absolute(dir).map_err(JepsenError::io(dir))?;
        let authority = CertAuthority::generate("qm-jepsen run CA", Validity::days_from_now(CERT_VALIDITY_DAYS))
            .map_err(certificate_error("the run's CA"))?;
        // The CA key stays in memory: nothing needs to sign after the run starts.
        let ca_path = dir.join(CA_CERT_FILE);
        std::fs::write(&ca_path, authority.cert_pem()).map_err(JepsenError::io(&ca_path))?;

        let issue = |role: Role, name: &str, namespace: Option<&str>, hosts: Vec<String>| -> Result<TlsConfig, JepsenError> {
            let holder = format!("{role} {name}");
            let identity = Identity::new(role, name, namespace.map(str::to_owned))
                .map_err(|error| certificate_error(&holder)(CertError::from(error)))?;
            let stem = file_stem(&identity);
            let spec = CertSpec::new(identity)
                .with_hosts(hosts)
                .with_validity(Validity::days_from_now(CERT_VALIDITY_DAYS));
            let (cert, key) = authority
                .issue(&spec)
                .and_then(|issued| issued.save(&dir, &stem))
                .map_err(certificate_error(&holder))?;
            Ok(TlsConfig {
                ca: ca_path.clone(),
                cert,
                key,
            })
        };
        let replica = issue(Role::ResourceManager, REPLICA_NAME, None, replica_hosts())?;
        let admin = issue(Role::Admin, ADMIN_NAME, None, Vec::new())?;
        let consumer = issue(Role::ResourceConsumer, CONSUMER_NAME, Some(DEFAULT_NAMESPACE), Vec::new())?;
        let providers = provider_ids
            .iter()
            .map(|id| Ok((id.clone(), issue(Role::ResourceProvider, id, None, Vec::new())?)))
            .collect::<Result<BTreeMap<_, _>, JepsenError>>()?;
        Ok(Credentials {
            issued: Some(Issued {
                dir,
                replica,
                admin,
                consumer,
                providers,
            }),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.issued.is_some()
    }

    /// Where the certificates are, on a TLS run.
    pub fn dir(&self) -> Option<&Path> {
        self.issued.as_ref().map(|issued| issued.dir.as_path())
    }

    /// Flags for every replica: `--tls-cert <file> --tls-key <file> --tls-ca
    /// <file>`, each value a separate argument, which is how `LocalCluster`
    /// finds them to probe the replicas over TLS. Empty without TLS.
    pub fn node_flags(&self) -> Vec<String> {
        let Some(issued) = &self.issued else {
            return Vec::new();
        };
        let path = |path: &Path| path.to_string_lossy().into_owned();
        vec![
            "--tls-cert".to_owned(),
            path(&issued.replica.cert),
            "--tls-key".to_owned(),
            path(&issued.replica.key),
            "--tls-ca".to_owned(),
            path(&issued.replica.ca),
        ]
    }

    /// For membership changes.
    pub fn admin(&self) -> Option<TlsConfig> {
        self.issued.as_ref().map(|issued| issued.admin.clone())
    }

    /// For the workers and the final read: namespace `default`, where every
    /// request of the workloads lands (they name none).
    pub fn consumer(&self) -> Option<TlsConfig> {
        self.issued.as_ref().map(|issued| issued.consumer.clone())
    }

    /// For provider `provider_id`'s registration and heartbeats.
    ///
    /// # Panics
    /// On a TLS run, if no certificate was issued for `provider_id`: the
    /// providers are known before the run starts, so that is a harness bug.
    pub fn provider(&self, provider_id: &str) -> Option<TlsConfig> {
        let issued = self.issued.as_ref()?;
        let tls = issued.providers.get(provider_id);
        assert!(tls.is_some(), "no certificate was issued for provider {provider_id:?}");
        tls.cloned()
    }
}

/// Every host the replica certificate names: localhost, 127.0.0.1 (the
/// proxies) and the listen addresses of the first replica ids.
pub fn replica_hosts() -> Vec<String> {
    let listen_ips = (1..=LISTEN_ADDRS_NAMED_MAX).map(|id| replica_ip(id).to_string());
    let hosts: Vec<String> = REPLICA_HOSTS.iter().map(|host| (*host).to_owned()).chain(listen_ips).collect();
    assert!(hosts.len() <= HOSTS_MAX, "a certificate names at most {HOSTS_MAX} hosts");
    assert!(
        hosts.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST).to_string()),
        "the proxies' address must be named"
    );
    hosts
}

fn certificate_error(holder: &str) -> impl FnOnce(CertError) -> JepsenError + '_ {
    move |source| JepsenError::Certificate {
        holder: holder.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_holder_gets_its_own_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let providers = vec!["jepsen-p0".to_owned(), "jepsen-p1".to_owned()];
        let credentials = Credentials::issue(dir.path(), &providers).expect("issued");
        let identity = |tls: Option<TlsConfig>| {
            let pem = std::fs::read_to_string(tls.expect("tls").cert).expect("readable");
            Identity::from_certificate_pem(&pem).expect("an identity")
        };
        assert_eq!(Role::Admin, identity(credentials.admin()).role);
        let consumer = identity(credentials.consumer());
        assert_eq!(
            (Role::ResourceConsumer, Some(DEFAULT_NAMESPACE.to_owned())),
            (consumer.role, consumer.namespace)
        );
        for provider in &providers {
            let holder = identity(credentials.provider(provider));
            assert_eq!((Role::ResourceProvider, provider.as_str()), (holder.role, holder.name.as_str()));
        }
        assert!(dir.path().join(CA_CERT_FILE).exists());
        assert!(!dir.path().join("ca.key").exists(), "the CA key is never written");
    }

    #[test]
    fn replicas_get_the_three_flags_as_separate_arguments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = Credentials::issue(dir.path(), &[]).expect("issued");
        let flags = credentials.node_flags();
        let names: Vec<&str> = flags.iter().step_by(2).map(String::as_str).collect();
        assert_eq!(vec!["--tls-cert", "--tls-key", "--tls-ca"], names);
        let pem = std::fs::read_to_string(&flags[1]).expect("replica certificate");
        assert_eq!(Role::ResourceManager, Identity::from_certificate_pem(&pem).expect("identity").role);
        assert!(Path::new(&flags[1]).is_absolute(), "replicas may run in another directory");
        assert!(Credentials::plain().node_flags().is_empty());
    }

    #[test]
    fn the_replica_certificate_names_the_proxies_and_listen_addresses() {
        let hosts = replica_hosts();
        for host in ["localhost", "127.0.0.1", "127.0.0.2", "127.0.0.4"] {
            assert!(hosts.contains(&host.to_owned()), "{host} in {hosts:?}");
        }
        assert_eq!(HOSTS_MAX, hosts.len());
    }

    #[test]
    #[should_panic(expected = "no certificate was issued")]
    fn an_unknown_provider_is_a_harness_bug() {
        let dir = tempfile::tempdir().expect("tempdir");
        let credentials = Credentials::issue(dir.path(), &[]).expect("issued");
        let _ = credentials.provider("jepsen-p9");
    }
}
