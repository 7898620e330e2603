//! [`LocalCluster`]: real `qm-node` processes on 127.0.0.1, for integration
//! tests and the fault-injection suite.
//!
//! Each replica gets a port picked by the kernel (so concurrent test binaries
//! never collide), its own data dir under one temporary directory, and its
//! output in `node.log` there. Replicas are signalled only through the pid
//! this harness started; dropping the cluster kills every one of them.
//!
//! By default a replica listens on 127.0.0.1 and is reached there. The
//! fault-injection suite lays replicas out itself ([`LocalCluster::configure_with`],
//! [`ReplicaAddrs`]): replica N listens on its own loopback address
//! (127.0.0.N+1, which is also where its outgoing Raft connections come from)
//! and is advertised to the others at a proxy that forwards to it, so that the
//! proxy can cut or delay single links.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qm_api::proto::api::quartermaster_client::QuartermasterClient;
use qm_api::proto::api::{ClusterStatusReply, ClusterStatusRequest};
use qm_api::tls::TlsConfig;

/// How long one status probe of a replica may take.
pub const STATUS_PROBE_TIMEOUT_MS: u64 = 1_000;

/// Where one replica listens and where the others and clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaAddrs {
    /// What the process binds (`--listen`). Its IP is also the source of the
    /// replica's outgoing Raft connections.
    pub listen: String,
    /// Its entry in `--peers`, hence in the membership: what peers and
    /// clients dial. The listen address itself, or a proxy in front of it.
    pub advertised: String,
}

impl ReplicaAddrs {
    /// Reached where it listens, with no proxy in between.
    pub fn direct(addr: String) -> ReplicaAddrs {
        ReplicaAddrs {
            listen: addr.clone(),
            advertised: addr,
        }
    }
}

/// One replica of a [`LocalCluster`].
pub struct LocalReplica {
    pub id: u64,
    /// The advertised address: what peers and clients dial.
    pub addr: String,
    /// The address the process binds; equal to `addr` unless a proxy sits in front.
    pub listen: String,
    pub data_dir: PathBuf,
    process: Option<Child>,
    paused: bool,
}

impl LocalReplica {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Stopped with SIGSTOP and not resumed since.
    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

/// A cluster of real replicas.
pub struct LocalCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    pub replicas: BTreeMap<u64, LocalReplica>,
    /// Flags added to every replica's command line.
    extra_args: Vec<String>,
}

impl LocalCluster {
    /// Starts `count` replicas of `binary` with `extra_args` and waits until
    /// they agree on a leader.
    pub async fn start(binary: &Path, count: u64, extra_args: &[&str]) -> anyhow::Result<LocalCluster> {
        let mut cluster = LocalCluster::configure(binary, count, extra_args)?;
        for id in 1..=count {
            cluster.start_replica(id)?;
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Lays out `count` replicas with free ports without starting them.
    pub fn configure(binary: &Path, count: u64, extra_args: &[&str]) -> anyhow::Result<LocalCluster> {
        let layout = (1..=count)
            .map(|id| Ok((id, ReplicaAddrs::direct(free_loopback_addr()?))))
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
        LocalCluster::configure_with(binary, layout, extra_args)
    }

    /// Lays out replicas at the given addresses without starting them.
    pub fn configure_with(binary: &Path, layout: BTreeMap<u64, ReplicaAddrs>, extra_args: &[&str]) -> anyhow::Result<LocalCluster> {
        anyhow::ensure!(
            binary.exists(),
            "{} does not exist: build it first (cargo build -p qm-raft-node)",
            binary.display()
        );
        anyhow::ensure!(!layout.is_empty(), "a cluster needs at least one replica");
        let dir = tempfile::Builder::new().prefix("qm-cluster-").tempdir()?;
        let replicas = layout
            .into_iter()
            .map(|(id, addrs)| (id, LocalReplica::laid_out(id, addrs, dir.path())))
            .collect();
        Ok(LocalCluster {
            binary: binary.to_owned(),
            dir,
            replicas,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// `1=addr,2=addr,...` of the initial members.
    pub fn peers(&self) -> String {
        self.replicas
            .values()
            .map(|replica| format!("{}={}", replica.id, replica.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every replica's address, for a client.
    pub fn endpoints(&self) -> Vec<String> {
        self.replicas.values().map(|replica| replica.addr.clone()).collect()
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.replicas[&id].addr
    }

    /// Where the cluster's data dirs and logs are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts (or restarts) replica `id` with its data dir.
    pub fn start_replica(&mut self, id: u64) -> anyhow::Result<()> {
        let peers = self.peers();
        let log_path = self.log_path(id);
        let replica = self.replicas.get_mut(&id).ok_or_else(|| anyhow::anyhow!("no replica {id}"))?;
        anyhow::ensure!(replica.process.is_none(), "replica {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path)?;
        let child = Command::new(&self.binary)
            .args(["--id", &id.to_string(), "--listen", &replica.listen, "--peers", &peers])
            .arg("--data-dir")
            .arg(&replica.data_dir)
            .args(&self.extra_args)
            .env(
                "QM_LOG",
                std::env::var("QM_LOG").unwrap_or_else(|_| "info,openraft=warn,sled=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        replica.process = Some(child);
        replica.paused = false;
        Ok(())
    }

    /// Adds a replica that is not in the initial members (for membership
    /// changes): it starts blank and waits to be added through the API.
    pub fn add_blank_replica(&mut self, id: u64) -> anyhow::Result<String> {
        let addrs = ReplicaAddrs::direct(free_loopback_addr()?);
        self.add_blank_replica_at(id, addrs.clone())?;
        Ok(addrs.advertised)
    }

    /// [`LocalCluster::add_blank_replica`] at the given addresses.
    pub fn add_blank_replica_at(&mut self, id: u64, addrs: ReplicaAddrs) -> anyhow::Result<()> {
        anyhow::ensure!(!self.replicas.contains_key(&id), "replica {id} exists");
        self.replicas.insert(id, LocalReplica::laid_out(id, addrs, self.dir.path()));
        self.start_replica(id)
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let replica = self.replicas.get_mut(&id).ok_or_else(|| anyhow::anyhow!("no replica {id}"))?;
        if let Some(mut child) = replica.process.take() {
            child.kill()?;
            child.wait()?;
        }
        replica.paused = false;
        Ok(())
    }

    /// SIGSTOP: the process stays, frozen.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "STOP")?;
        self.replicas.get_mut(&id).expect("signalled").paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "CONT")?;
        self.replicas.get_mut(&id).expect("signalled").paused = false;
        Ok(())
    }

    fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .replicas
            .get(&id)
            .and_then(LocalReplica::pid)
            .ok_or_else(|| anyhow::anyhow!("replica {id} is not running"))?;
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Asks replica `id` for its view of the cluster. On a TLS cluster
    /// (`--tls-cert/--tls-key/--tls-ca` among the extra args) the probe
    /// presents the replicas' own certificate: any role may read the status.
    pub async fn status_of(&self, id: u64) -> anyhow::Result<ClusterStatusReply> {
        let tls = self.replica_tls().map(|tls| tls.load()).transpose()?;
        let endpoint = qm_api::tls::endpoint(self.addr(id), tls.as_ref()).map_err(anyhow::Error::msg)?;
        let probe = async move {
            let mut client = QuartermasterClient::new(endpoint.connect().await?);
            anyhow::Ok(client.cluster_status(ClusterStatusRequest {}).await?.into_inner())
        };
        tokio::time::timeout(Duration::from_millis(STATUS_PROBE_TIMEOUT_MS), probe).await?
    }

    /// The TLS files the replicas were given, if any.
    pub fn replica_tls(&self) -> Option<TlsConfig> {
        let flag = |name: &str| {
            let at = self.extra_args.iter().position(|arg| arg == name)?;
            self.extra_args.get(at + 1).map(PathBuf::from)
        };
        Some(TlsConfig {
            cert: flag("--tls-cert")?,
            key: flag("--tls-key")?,
            ca: flag("--tls-ca")?,
        })
    }

    /// The leader every running, unpaused replica agrees on, with its term.
    pub async fn agreed_leader(&self) -> Option<(u64, u64)> {
        let mut agreed: Option<(u64, u64)> = None;
        for replica in self.replicas.values().filter(|r| r.is_running() && !r.paused) {
            let status = self.status_of(replica.id).await.ok()?;
            let view = (status.leader_id?, status.term);
            if agreed.is_some_and(|seen| seen != view) {
                return None;
            }
            agreed = Some(view);
        }
        let (leader, _) = agreed?;
        // The leader itself must be up and not paused.
        self.replicas.get(&leader).filter(|r| r.is_running() && !r.paused)?;
        agreed
    }

    /// Waits until the running replicas agree on a leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((leader, _)) = self.agreed_leader().await {
                return Ok(leader);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until replica `id` has applied at least `index`.
    pub async fn wait_for_applied(&self, id: u64, index: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.status_of(id).await.is_ok_and(|status| status.applied_index >= index) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "replica {id} did not apply {index} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where replica `id`'s output goes.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}.log"))
    }

    /// The text each replica logged, for test failure messages.
    pub fn logs(&self) -> String {
        self.replicas
            .keys()
            .map(|id| {
                let text = std::fs::read_to_string(self.log_path(*id)).unwrap_or_default();
                format!("--- replica {id}\n{text}")
            })
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for replica in self.replicas.values_mut() {
            if let Some(mut child) = replica.process.take() {
                // SIGKILL ends a stopped (paused) process too.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("QM_KEEP_TEST_CLUSTER").is_some() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("keeping test cluster files in {}", kept.keep().display());
        }
    }
}

impl LocalReplica {
    fn laid_out(id: u64, addrs: ReplicaAddrs, cluster_dir: &Path) -> LocalReplica {
        LocalReplica {
            id,
            addr: addrs.advertised,
            listen: addrs.listen,
            data_dir: cluster_dir.join(format!("replica-{id}")),
            process: None,
            paused: false,
        }
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound to 0, then let go).
pub fn free_loopback_addr() -> std::io::Result<String> {
    free_addr_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A port on `ip` that was free a moment ago (bound to 0, then let go). On
/// Linux every address of 127.0.0.0/8 is local, so replicas can each have
/// their own without any setup.
pub fn free_addr_on(ip: IpAddr) -> std::io::Result<String> {
    let listener = TcpListener::bind((ip, 0))?;
    Ok(listener.local_addr()?.to_string())
}
