//! A CA and certificates for tests of a TLS cluster (made with the code
//! behind `qm certs`), and a three-replica TLS cluster started on them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qm_ca::{CertAuthority, CertSpec, Validity};
use qm_client::proto::api::quartermaster_client::QuartermasterClient;
use qm_client::proto::api::*;
use qm_client::tls::{Identity, Role, TlsConfig};
use qm_testkit::LocalCluster;
use tonic::transport::Channel;

use super::{node_binary, QUIET_PROVIDERS};

/// One call of a test may take this long (a refused handshake is quick).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The certificates of one test: `ca.crt`/`ca.key`, the replicas' shared
/// `replica` certificate (127.0.0.1), `admin`, provider `node_a`, consumers
/// `team-a` and `team-b`.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new().prefix("qm-pki-").tempdir().expect("tempdir");
        let ca = CertAuthority::generate("test cluster CA", Validity::days_from_now(1)).expect("CA");
        ca.save(dir.path()).expect("save CA");
        let pki = Pki { dir };
        pki.issue("replica", Identity::new(Role::ResourceManager, "replica", None).unwrap());
        pki.issue("admin", Identity::new(Role::Admin, "admin", None).unwrap());
        pki.issue("node_a", Identity::new(Role::ResourceProvider, "node_a", None).unwrap());
        for namespace in ["team-a", "team-b"] {
            let consumer = Identity::new(Role::ResourceConsumer, format!("agent-{namespace}"), Some(namespace.into())).unwrap();
            pki.issue(namespace, consumer);
        }
        pki
    }

    pub fn authority(&self) -> CertAuthority {
        CertAuthority::load(self.dir.path()).expect("CA")
    }

    /// Issues `<stem>.crt/.key` for `identity` (a replica's names 127.0.0.1),
    /// written over an existing pair by renaming, as an operator rotating
    /// a certificate would, so that a replica never reads half a file.
    pub fn issue(&self, stem: &str, identity: Identity) {
        let hosts: &[&str] = match identity.role {
            Role::ResourceManager => &["127.0.0.1", "localhost"],
            _ => &[],
        };
        let issued = self
            .authority()
            .issue(&CertSpec::new(identity).with_hosts(hosts.iter().copied()))
            .expect("issue");
        let staging = tempfile::Builder::new()
            .prefix("staging-")
            .tempdir_in(self.dir.path())
            .expect("staging dir");
        issued.save(staging.path(), stem).expect("save");
        // Key first: a replica that reloads between the two renames finds a
        // key that does not match the old certificate, refuses the pair and
        // keeps what it had, then takes both at its next look.
        for extension in ["key", "crt"] {
            let name = format!("{stem}.{extension}");
            std::fs::rename(staging.path().join(&name), self.path(&name)).expect("rename");
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `ca.crt`, `<stem>.crt`, `<stem>.key`.
    pub fn client(&self, stem: &str) -> TlsConfig {
        TlsConfig::in_dir(self.dir.path(), stem)
    }

    /// The replicas' flags: [`QUIET_PROVIDERS`], the shared replica
    /// certificate and the CA, then `extra`.
    pub fn node_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = QUIET_PROVIDERS.iter().map(|arg| arg.to_string()).collect();
        for (flag, file) in [("--tls-cert", "replica.crt"), ("--tls-key", "replica.key"), ("--tls-ca", "ca.crt")] {
            args.push(flag.to_owned());
            args.push(path_arg(&self.path(file)));
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    }
}

pub fn path_arg(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_owned()
}

/// A TLS cluster of three with `extra` flags; its leader's address.
/// `LocalCluster::start` probes replicas over plain http, so the replicas
/// are started one by one and the leader found over TLS.
pub async fn start_tls_cluster(pki: &Pki, extra: &[&str]) -> (LocalCluster, String) {
    let args = pki.node_args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = LocalCluster::configure(node_binary(), 3, &args).expect("layout");
    cluster.kill_after(Duration::from_secs(600));
    for id in 1..=3 {
        cluster.start_replica(id).expect("start");
    }
    let leader = wait_for_leader(&cluster, pki).await;
    (cluster, leader)
}

/// The leader's address, once every replica agrees on one.
pub async fn wait_for_leader(cluster: &LocalCluster, pki: &Pki) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for addr in cluster.endpoints() {
            let status = match connect(&addr, &pki.client("admin")).await {
                Ok(mut client) => client.cluster_status(ClusterStatusRequest {}).await.ok().map(|r| r.into_inner()),
                Err(_) => None,
            };
            views.push(status.filter(|status| status.leader_id.is_some()).map(|status| status.leader_addr));
        }
        if let Some(Some(leader)) = views.first() {
            if views.iter().all(|view| view.as_ref() == Some(leader)) {
                return leader.clone();
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader over TLS; logs:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new connection to `addr` presenting `tls` (a fresh handshake).
pub async fn connect(addr: &str, tls: &TlsConfig) -> Result<QuartermasterClient<Channel>, String> {
    let tls = tls.load().map_err(|error| error.to_string())?;
    let endpoint = qm_client::tls::endpoint(addr, Some(&tls))?.connect_timeout(CALL_TIMEOUT);
    match tokio::time::timeout(CALL_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(QuartermasterClient::new(channel)),
        Ok(Err(error)) => Err(format!("{error:?}")),
        Err(_) => Err("connect timed out".into()),
    }
}

/// A client of `addr` presenting `<stem>.crt`.
pub async fn as_holder(addr: &str, pki: &Pki, stem: &str) -> QuartermasterClient<Channel> {
    connect(addr, &pki.client(stem)).await.expect("connects")
}
