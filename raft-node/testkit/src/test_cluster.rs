//! Test support: real `qm-node` clusters ([`TestCluster`]), a cluster shared
//! by tests that only add to the table ([`shared_cluster`]), time bounds
//! ([`bounded`], [`eventually`]), and in-process fake replicas
//! ([`crate::fake::FakeCluster`]) for the few situations a real replica cannot be
//! made to produce on demand.
//!
//! [`TestCluster`] builds nothing: it runs the `qm-node` binary that
//! `cargo build --workspace --bins` left in the workspace's target directory
//! ([`crate::binaries`]). Each cluster picks
//! its own free loopback ports, keeps its data in a temporary directory,
//! kills exactly the processes it started (by their pid, through their
//! `Child` handles) when dropped, and is killed by a watchdog if a test hangs
//! past [`CLUSTER_LIFETIME_MAX`]. At most [`CLUSTERS_AT_ONCE_MAX`] clusters
//! run at once in one test binary, however many test threads there are.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use qm_client::proto::api;
use qm_client::proto::api::quartermaster_client::QuartermasterClient;
use qm_client::{Client, ClientConfig};
use qm_state_machine::{ProviderRegistration, ResourceRequest};
use serde_json::json;
use tonic::transport::Endpoint;
use uuid::Uuid;

use crate::binaries::node_binary;

/// A test cluster's processes are killed after this long, whatever the test is doing.
pub const CLUSTER_LIFETIME_MAX: Duration = Duration::from_secs(300);
/// How long a cluster may take to agree on a leader (first election, or after a failure).
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(20);
/// Clusters running at once in one test binary (three processes each); a
/// test starting another waits for a slot.
pub const CLUSTERS_AT_ONCE_MAX: usize = 4;
/// How long [`TestCluster::ask_status`] waits for one replica's answer.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a test waits for a cluster slot before it gives up.
pub const CLUSTER_SLOT_WAIT_MAX: Duration = Duration::from_secs(240);
/// How long one test may run, cluster start included ([`bounded`]).
pub const TEST_TIME_MAX: Duration = Duration::from_secs(90);
/// Test providers do not heartbeat: without a long failure window the leader
/// would (rightly) declare them failed after 5 s and move their allocations.
pub const QUIET_PROVIDERS: [&str; 2] = ["--provider-failure-window-ms", "600000"];

/// Runs a test body, failing the test if it takes longer than [`TEST_TIME_MAX`].
pub async fn bounded<T>(test: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_TIME_MAX, test).await {
        Ok(done) => done,
        Err(_) => panic!("the test did not finish within {TEST_TIME_MAX:?}"),
    }
}

/// Waits until `condition` holds, polling; panics after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ports [`free_ports`] handed out in this test binary: never handed out
/// twice, so clusters started at the same time cannot pick the same port
/// between choosing it and binding it.
static PORTS_HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Ports [`free_ports`] asks the kernel for, per port wanted, at most.
const PORT_TRIES_MAX: usize = 100;

/// `count` distinct free loopback ports, none handed out before in this test
/// binary. A process outside the tests could still take one between here
/// and the node's bind, which the node then reports clearly.
pub fn free_ports(count: usize) -> Vec<u16> {
    let mut handed_out = PORTS_HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    // All held until all are picked, so the kernel gives each only once.
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..count * PORT_TRIES_MAX {
        if ports.len() == count {
            return ports;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    assert_eq!(count, ports.len(), "no {count} fresh ports in {} tries", count * PORT_TRIES_MAX);
    ports
}

/// Loopback addresses that refuse every connection for as long as this
/// lives: each port is bound (so nothing else gets it) but not listened on.
pub struct DeadEndpoints {
    pub endpoints: Vec<String>,
    _bound: Vec<tokio::net::TcpSocket>,
}

pub fn dead_endpoints(count: usize) -> DeadEndpoints {
    let bound: Vec<tokio::net::TcpSocket> = (0..count)
        .map(|_| {
            let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
            socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind 127.0.0.1:0");
            socket
        })
        .collect();
    let endpoints = bound
        .iter()
        .map(|socket| format!("127.0.0.1:{}", socket.local_addr().unwrap().port()))
        .collect();
    DeadEndpoints { endpoints, _bound: bound }
}

/// A client for `endpoints`, with timeouts short enough for tests: a call
/// gives up after 5 s, one attempt after 1 s.
pub fn client_for(endpoints: Vec<String>) -> Client {
    let config = ClientConfig {
        request_timeout_ms: 5_000,
        attempt_timeout_ms: 1_000,
        connect_timeout_ms: 300,
        ..ClientConfig::with_endpoints(endpoints)
    };
    Client::new(config).expect("a valid client config")
}

/// One replica process.
pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
}

/// A replica's process, as the cluster last left it.
#[derive(Default)]
struct Process {
    /// `Some` while it runs (paused or not).
    child: Option<Child>,
    paused: bool,
}

/// A real cluster of `qm-node` processes on loopback.
pub struct TestCluster {
    binary: PathBuf,
    nodes: Vec<TestNode>,
    /// Flags every replica is started with, besides its identity.
    extra_args: Vec<String>,
    /// `processes[i]` is node `i + 1`'s; shared with the watchdog.
    processes: Arc<Mutex<Vec<Process>>>,
    root: Option<tempfile::TempDir>,
    _slot: ClusterSlot,
}

impl TestCluster {
    /// Starts `size` replicas (ids 1..=size) that form a fresh cluster, with
    /// [`QUIET_PROVIDERS`].
    pub fn start(size: usize) -> TestCluster {
        TestCluster::start_with(size, &QUIET_PROVIDERS)
    }

    /// Starts `size` replicas with exactly these extra `qm-node` flags.
    pub fn start_with(size: usize, extra_args: &[&str]) -> TestCluster {
        let binary = node_binary();
        let slot = ClusterSlot::acquire();
        let root = tempfile::Builder::new()
            .prefix("qm-test-cluster-")
            .tempdir()
            .expect("a temporary directory");
        let nodes: Vec<TestNode> = free_ports(size)
            .into_iter()
            .enumerate()
            .map(|(index, port)| {
                let id = index as u64 + 1;
                let data_dir = root.path().join(format!("node-{id}"));
                std::fs::create_dir_all(&data_dir).unwrap();
                TestNode {
                    id,
                    addr: format!("127.0.0.1:{port}"),
                    log_path: root.path().join(format!("node-{id}.log")),
                    data_dir,
                }
            })
            .collect();
        let cluster = TestCluster {
            binary,
            nodes,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            processes: Arc::new(Mutex::new((0..size).map(|_| Process::default()).collect())),
            root: Some(root),
            _slot: slot,
        };
        for id in 1..=size as u64 {
            cluster.spawn(id);
        }
        cluster.start_watchdog();
        cluster
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[(id - 1) as usize]
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes.iter().map(|node| node.id)
    }

    /// The id of the replica at `addr`.
    pub fn id_of(&self, addr: &str) -> u64 {
        self.nodes
            .iter()
            .find(|node| node.addr == addr)
            .unwrap_or_else(|| panic!("no replica at {addr}"))
            .id
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.addr.clone()).collect()
    }

    /// `1=127.0.0.1:p1,2=127.0.0.1:p2,...`
    pub fn peers(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("{}={}", node.id, node.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client for every replica ([`client_for`]).
    pub fn client(&self) -> Client {
        client_for(self.endpoints())
    }

    /// A client that knows only replica `id` (and leaders it is told of).
    pub fn node_client(&self, id: u64) -> Client {
        client_for(vec![self.node(id).addr.clone()])
    }

    /// Waits until every running, unpaused replica names the same leader and
    /// that leader is one of them; returns its id.
    pub async fn wait_for_leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + ELECTION_TIMEOUT_MAX;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader agreed on within {ELECTION_TIMEOUT_MAX:?}; logs in {}",
                self.root_path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn agreed_leader(&self) -> Option<u64> {
        let mut agreed = None;
        for id in self.ids().filter(|id| self.is_answering(*id)) {
            let status = self.ask_status(id).await?;
            assert_eq!(id, status.node_id, "replica {id} answers as node {}", status.node_id);
            let leader = status.leader_id?;
            if agreed.is_some_and(|agreed| agreed != leader) {
                return None;
            }
            agreed = Some(leader);
        }
        agreed.filter(|leader| self.is_answering(*leader))
    }

    /// Replica `id`'s own cluster status: one plain gRPC call to it, without
    /// the client library (whose `cluster_status` moves on to the leader).
    pub async fn ask_status(&self, id: u64) -> Option<api::ClusterStatusReply> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.node(id).addr))
            .unwrap()
            .connect_timeout(STATUS_TIMEOUT)
            .timeout(STATUS_TIMEOUT);
        let ask = async {
            let mut replica = QuartermasterClient::new(endpoint.connect().await.ok()?);
            replica.cluster_status(api::ClusterStatusRequest {}).await.ok()
        };
        tokio::time::timeout(STATUS_TIMEOUT, ask)
            .await
            .ok()?
            .map(tonic::Response::into_inner)
    }

    /// Waits until replica `id` has applied everything the leader had
    /// committed when this was called: its stale reads then see every write
    /// acknowledged before.
    pub async fn wait_until_caught_up(&self, id: u64) {
        let leader = self.wait_for_leader().await;
        let deadline = tokio::time::Instant::now() + ELECTION_TIMEOUT_MAX;
        let mut committed = None;
        loop {
            if committed.is_none() {
                committed = self.ask_status(leader).await.map(|status| status.commit_index);
            }
            let applied = self.ask_status(id).await.map(|status| status.applied_index);
            if let (Some(committed), Some(applied)) = (committed, applied) {
                if applied >= committed {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {id} did not catch up with the leader's commit index {committed:?} within {ELECTION_TIMEOUT_MAX:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Running and not paused.
    pub fn is_answering(&self, id: u64) -> bool {
        let processes = self.processes();
        let process = &processes[(id - 1) as usize];
        process.child.is_some() && !process.paused
    }

    /// SIGKILL, through the node's own `Child` handle.
    pub fn kill(&self, id: u64) {
        let mut processes = self.processes();
        let process = &mut processes[(id - 1) as usize];
        if let Some(mut child) = process.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        process.paused = false;
    }

    /// Starts a killed node again on the same port and data directory.
    pub fn restart(&self, id: u64) {
        assert!(self.processes()[(id - 1) as usize].child.is_none(), "node {id} is running");
        self.spawn(id);
    }

    /// SIGSTOP: the process keeps its sockets (the kernel still accepts
    /// connections on them) but answers nothing.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
        self.processes()[(id - 1) as usize].paused = true;
    }

    /// SIGCONT after [`TestCluster::pause`].
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
        self.processes()[(id - 1) as usize].paused = false;
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.processes()[(id - 1) as usize].child.as_ref().map(Child::id)
    }

    pub fn root_path(&self) -> &Path {
        self.root.as_ref().expect("held until drop").path()
    }

    fn processes(&self) -> MutexGuard<'_, Vec<Process>> {
        self.processes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(&self, id: u64) {
        let node = self.node(id);
        let log = File::options().create(true).append(true).open(&node.log_path).expect("a log file");
        let mut command = Command::new(&self.binary);
        // The node reads QM_NODE_* settings from the environment: none from the
        // developer's shell may leak into a test cluster.
        for (name, _) in std::env::vars_os().filter(|(name, _)| name.to_string_lossy().starts_with("QM_NODE_")) {
            command.env_remove(name);
        }
        let child = command
            .args(["--id", &id.to_string(), "--listen", &node.addr, "--peers", &self.peers()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        self.processes()[(id - 1) as usize] = Process {
            child: Some(child),
            paused: false,
        };
    }

    /// Sends a signal to exactly this node's pid, with the `kill` utility.
    fn signal(&self, id: u64, signal: &str) {
        let pid = self.pid(id).unwrap_or_else(|| panic!("node {id} is not running"));
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("the kill utility");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Kills the cluster's processes if the test is still running after
    /// [`CLUSTER_LIFETIME_MAX`]: a hung test must not leave replicas behind.
    fn start_watchdog(&self) {
        let processes = Arc::downgrade(&self.processes);
        std::thread::spawn(move || {
            std::thread::sleep(CLUSTER_LIFETIME_MAX);
            if let Some(processes) = processes.upgrade() {
                eprintln!("test cluster outlived {CLUSTER_LIFETIME_MAX:?}; killing its replicas");
                kill_all(&processes);
            }
        });
    }
}

fn kill_all(processes: &Mutex<Vec<Process>>) {
    let mut processes = processes.lock().unwrap_or_else(PoisonError::into_inner);
    for process in processes.iter_mut() {
        if let Some(mut child) = process.child.take() {
            // A paused process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        kill_all(&self.processes);
        if std::thread::panicking() {
            if let Some(root) = self.root.take() {
                eprintln!("test cluster logs and data kept in {}", root.keep().display());
            }
        }
    }
}

/// A 3-replica cluster for tests that neither kill, pause nor restart a
/// replica and only add to the table (each under its own provider id, so
/// they do not compete for units), with a leader elected. Tests running at
/// the same time share one; it stops when the last of them drops its handle,
/// so no process outlives the tests (a `static` holding the cluster itself
/// would never be dropped).
pub async fn shared_cluster() -> Arc<TestCluster> {
    static SHARED: Mutex<Weak<TestCluster>> = Mutex::new(Weak::new());
    let cluster = {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        match shared.upgrade() {
            Some(cluster) => cluster,
            None => {
                let cluster = Arc::new(TestCluster::start(3));
                *shared = Arc::downgrade(&cluster);
                cluster
            }
        }
    };
    cluster.wait_for_leader().await;
    cluster
}

/// One of [`CLUSTERS_AT_ONCE_MAX`] places for a running cluster, given back on drop.
struct ClusterSlot;

static CLUSTERS_RUNNING: Mutex<usize> = Mutex::new(0);
static CLUSTER_STOPPED: Condvar = Condvar::new();

impl ClusterSlot {
    fn acquire() -> ClusterSlot {
        let running = CLUSTERS_RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut running, waited) = CLUSTER_STOPPED
            .wait_timeout_while(running, CLUSTER_SLOT_WAIT_MAX, |running| *running >= CLUSTERS_AT_ONCE_MAX)
            .unwrap_or_else(PoisonError::into_inner);
        assert!(
            !waited.timed_out(),
            "no cluster slot within {CLUSTER_SLOT_WAIT_MAX:?}: {CLUSTERS_AT_ONCE_MAX} clusters still run"
        );
        *running += 1;
        ClusterSlot
    }
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        *CLUSTERS_RUNNING.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        CLUSTER_STOPPED.notify_one();
    }
}

/// A provider with `cpus` exclusive CPU cores, `cpu_1` to `cpu_<cpus>`.
pub fn registration(provider_id: &str, cpus: u32) -> ProviderRegistration {
    let resources: Vec<_> = (1..=cpus)
        .map(|n| json!({"resource_id": format!("cpu_{n}"), "kind": "cpu_cores", "capacity": 1}))
        .collect();
    serde_json::from_value(json!({"provider_id": provider_id, "resources": resources})).unwrap()
}

/// `cpus` cores for `agent_123`, priority 1, with a fresh request id.
pub fn request(cpus: i64) -> ResourceRequest {
    let mut request: ResourceRequest =
        serde_json::from_value(json!({"requester_id": "agent_123", "resource_requirements": {"cpu_cores": cpus}, "priority": 1})).unwrap();
    request.request_id = Some(Uuid::new_v4().to_string());
    request
}

/// [`request`], placed only on `provider_id`: tests sharing a cluster each
/// use their own provider, and so never compete for units.
pub fn request_on(provider_id: &str, cpus: i64) -> ResourceRequest {
    let mut request = request(cpus);
    request.constraints = Some(serde_json::from_value(json!({"provider_id": provider_id})).unwrap());
    request
}
