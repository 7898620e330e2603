//! [`LocalCluster`]: real `qm-node` processes on 127.0.0.1, for integration
//! tests and the fault-injection suite.
//!
//! Each replica gets a port picked by the kernel (so concurrent test binaries
//! never collide), its own data dir under one temporary directory, and its
//! output in `replica-N.log` there. Replicas are signalled only through the
//! pid this harness started; dropping the cluster kills every one of them,
//! and so does a watchdog if a test hangs past its lifetime
//! ([`LocalCluster::kill_after`]). Every method that starts or signals a
//! replica takes `&self`, so a cluster can be shared between tasks.
//!
//! By default a replica listens on 127.0.0.1 and is reached there. The
//! fault-injection suite lays replicas out itself ([`LocalCluster::configure_with`],
//! [`ReplicaAddrs`]): replica N listens on its own loopback address
//! (127.0.0.N+1, which is also where its outgoing Raft connections come from)
//! and is advertised to the others at a proxy that forwards to it, so that the
//! proxy can cut or delay single links.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

/// One replica of a [`LocalCluster`]: where it is. Whether it runs is the
/// cluster's to say ([`LocalCluster::is_answering`], [`LocalCluster::pid`]).
pub struct LocalReplica {
    pub id: u64,
    /// The advertised address: what peers and clients dial.
    pub addr: String,
    /// The address the process binds; equal to `addr` unless a proxy sits in front.
    pub listen: String,
    pub data_dir: PathBuf,
}

/// A replica's process as the cluster last left it.
#[derive(Default)]
struct Process {
    /// `Some` while it runs, paused or not.
    child: Option<Child>,
    paused: bool,
}

/// The processes by replica id, shared with the watchdog.
type Processes = Arc<Mutex<BTreeMap<u64, Process>>>;

/// In an extra flag, replaced by each replica's own id: a file of its own
/// (`--audit-log /tmp/x/audit-{id}.log`) under flags every replica shares.
pub const REPLICA_ID_PLACEHOLDER: &str = "{id}";

/// A cluster of real replicas.
pub struct LocalCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    pub replicas: BTreeMap<u64, LocalReplica>,
    processes: Processes,
    /// Flags added to every replica's command line ([`REPLICA_ID_PLACEHOLDER`]
    /// in one becomes the replica's id).
    extra_args: Vec<String>,
}

impl LocalCluster {
    /// Starts `count` replicas of `binary` with `extra_args` and waits until
    /// they agree on a leader.
    pub async fn start(binary: &Path, count: u64, extra_args: &[&str]) -> anyhow::Result<LocalCluster> {
        let cluster = LocalCluster::configure(binary, count, extra_args)?;
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
            processes: Processes::default(),
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

    /// Kills every replica still running after `lifetime`, whatever the test
    /// is doing: a hung test must not leave replicas behind. Harnesses whose
    /// runs have no fixed length (the fault-injection suite) do not call it.
    pub fn kill_after(&self, lifetime: Duration) {
        let processes = Arc::downgrade(&self.processes);
        std::thread::spawn(move || {
            std::thread::sleep(lifetime);
            if let Some(processes) = processes.upgrade() {
                eprintln!("a test cluster outlived {lifetime:?}; killing its replicas");
                kill_all(&processes);
            }
        });
    }

    /// Starts (or restarts) replica `id` with its data dir.
    pub fn start_replica(&self, id: u64) -> anyhow::Result<()> {
        self.start_replica_with(id, &[])
    }

    /// [`LocalCluster::start_replica`] with flags of its own after the
    /// shared ones (a replica that claims to be another build).
    pub fn start_replica_with(&self, id: u64, own_args: &[&str]) -> anyhow::Result<()> {
        let replica = self.replicas.get(&id).ok_or_else(|| anyhow::anyhow!("no replica {id}"))?;
        let mut processes = self.processes();
        let process = processes.entry(id).or_default();
        anyhow::ensure!(process.child.is_none(), "replica {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id))?;
        let mut command = Command::new(&self.binary);
        // qm-node reads QM_NODE_* settings from the environment: none from the
        // developer's shell may leak into a test cluster.
        for (name, _) in std::env::vars_os().filter(|(name, _)| name.to_string_lossy().starts_with("QM_NODE_")) {
            command.env_remove(name);
        }
        let child = command
            .args(["--id", &id.to_string(), "--listen", &replica.listen, "--peers", &self.peers()])
            .arg("--data-dir")
            .arg(&replica.data_dir)
            .args(
                self.extra_args
                    .iter()
                    .map(|arg| arg.replace(REPLICA_ID_PLACEHOLDER, &id.to_string())),
            )
            .args(own_args)
            .env(
                "QM_LOG",
                std::env::var("QM_LOG").unwrap_or_else(|_| "info,openraft=warn,sled=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|error| anyhow::anyhow!("cannot start {}: {error}", self.binary.display()))?;
        *process = Process {
            child: Some(child),
            paused: false,
        };
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

    /// [`LocalCluster::add_blank_replica`] with flags of its own
    /// ([`LocalCluster::start_replica_with`]).
    pub fn add_blank_replica_with(&mut self, id: u64, own_args: &[&str]) -> anyhow::Result<String> {
        anyhow::ensure!(!self.replicas.contains_key(&id), "replica {id} exists");
        let addrs = ReplicaAddrs::direct(free_loopback_addr()?);
        let advertised = addrs.advertised.clone();
        self.replicas.insert(id, LocalReplica::laid_out(id, addrs, self.dir.path()));
        self.start_replica_with(id, own_args)?;
        Ok(advertised)
    }

    /// kill -9, through the replica's own `Child` handle.
    pub fn kill(&self, id: u64) -> anyhow::Result<()> {
        anyhow::ensure!(self.replicas.contains_key(&id), "no replica {id}");
        let mut processes = self.processes();
        let process = processes.entry(id).or_default();
        if let Some(mut child) = process.child.take() {
            child.kill()?;
            child.wait()?;
        }
        process.paused = false;
        Ok(())
    }

    /// SIGSTOP: the process keeps its sockets (the kernel still accepts
    /// connections on them) but answers nothing.
    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "STOP")?;
        self.processes().entry(id).or_default().paused = true;
        Ok(())
    }

    /// SIGCONT after [`LocalCluster::pause`].
    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "CONT")?;
        self.processes().entry(id).or_default().paused = false;
        Ok(())
    }

    /// The pid of replica `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.processes().get(&id)?.child.as_ref().map(Child::id)
    }

    /// Running and not paused.
    pub fn is_answering(&self, id: u64) -> bool {
        self.processes()
            .get(&id)
            .is_some_and(|process| process.child.is_some() && !process.paused)
    }

    /// Sends a signal to exactly this replica's pid, with the `kill` utility.
    fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(id).ok_or_else(|| anyhow::anyhow!("replica {id} is not running"))?;
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    fn processes(&self) -> MutexGuard<'_, BTreeMap<u64, Process>> {
        self.processes.lock().unwrap_or_else(PoisonError::into_inner)
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
        let answering: Vec<u64> = self.replicas.keys().copied().filter(|id| self.is_answering(*id)).collect();
        for id in answering {
            let status = self.status_of(id).await.ok()?;
            let view = (status.leader_id?, status.term);
            if agreed.is_some_and(|seen| seen != view) {
                return None;
            }
            agreed = Some(view);
        }
        let (leader, _) = agreed?;
        // The leader itself must be up and not paused.
        self.is_answering(leader).then_some(agreed)?
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

fn kill_all(processes: &Mutex<BTreeMap<u64, Process>>) {
    let mut processes = processes.lock().unwrap_or_else(PoisonError::into_inner);
    for process in processes.values_mut() {
        if let Some(mut child) = process.child.take() {
            // SIGKILL ends a stopped (paused) process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        kill_all(&self.processes);
        // A failed test's logs are worth keeping; so are any, when asked.
        if std::thread::panicking() || std::env::var_os("QM_KEEP_TEST_CLUSTER").is_some() {
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
        }
    }
}

/// Ports handed out in this process: never handed out twice, so clusters
/// laid out at the same time cannot pick the same port between choosing it
/// and binding it.
static PORTS_HANDED_OUT: Mutex<BTreeSet<(IpAddr, u16)>> = Mutex::new(BTreeSet::new());
/// Ports asked of the kernel for one fresh port, at most.
const PORT_TRIES_MAX: usize = 100;

/// A port on 127.0.0.1 that was free a moment ago and was not handed out
/// before in this process.
pub fn free_loopback_addr() -> std::io::Result<String> {
    free_addr_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A port on `ip` that was free a moment ago (bound to 0, then let go) and
/// not handed out before in this process. On Linux every address of
/// 127.0.0.0/8 is local, so replicas can each have their own without any
/// setup. A process outside the tests could still take it before the
/// replica binds it, which the replica then reports clearly.
pub fn free_addr_on(ip: IpAddr) -> std::io::Result<String> {
    let mut handed_out = PORTS_HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    // Held until a fresh one is found, so the kernel does not offer them again.
    let mut listeners = Vec::new();
    for _ in 0..PORT_TRIES_MAX {
        let listener = TcpListener::bind((ip, 0))?;
        let addr = listener.local_addr()?;
        if handed_out.insert((ip, addr.port())) {
            return Ok(addr.to_string());
        }
        listeners.push(listener);
    }
    Err(std::io::Error::other(format!("no fresh port on {ip} in {PORT_TRIES_MAX} tries")))
}
