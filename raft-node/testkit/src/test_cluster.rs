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

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::Duration;

use qm_client::proto::api;
use qm_client::{Client, ClientConfig};
use qm_state_machine::{ProviderRegistration, ResourceRequest};
use serde_json::json;
use uuid::Uuid;

use crate::binaries::node_binary;
use crate::local_cluster::{LocalCluster, LocalReplica};

/// A test cluster's processes are killed after this long, whatever the test is doing.
pub const CLUSTER_LIFETIME_MAX: Duration = Duration::from_secs(300);
/// How long a cluster may take to agree on a leader (first election, or after a failure).
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(20);
/// Clusters running at once in one test binary (three processes each); a
/// test starting another waits for a slot.
pub const CLUSTERS_AT_ONCE_MAX: usize = 4;
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

/// A real cluster of `qm-node` processes on loopback, for client tests: a
/// [`LocalCluster`] that holds one of [`CLUSTERS_AT_ONCE_MAX`] slots, is
/// killed by a watchdog after [`CLUSTER_LIFETIME_MAX`], and panics (with
/// where its logs are) instead of returning errors.
pub struct TestCluster {
    local: LocalCluster,
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
        let slot = ClusterSlot::acquire();
        let local = LocalCluster::configure(&node_binary(), size as u64, extra_args).expect("a cluster laid out");
        local.kill_after(CLUSTER_LIFETIME_MAX);
        for id in 1..=size as u64 {
            local.start_replica(id).expect("a replica starts");
        }
        TestCluster { local, _slot: slot }
    }

    /// The process layer underneath, for what this wrapper does not offer.
    pub fn local(&self) -> &LocalCluster {
        &self.local
    }

    pub fn node(&self, id: u64) -> &LocalReplica {
        &self.local.replicas[&id]
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.local.replicas.keys().copied()
    }

    /// The id of the replica at `addr`.
    pub fn id_of(&self, addr: &str) -> u64 {
        self.local
            .replicas
            .values()
            .find(|replica| replica.addr == addr)
            .unwrap_or_else(|| panic!("no replica at {addr}"))
            .id
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.local.endpoints()
    }

    /// `1=127.0.0.1:p1,2=127.0.0.1:p2,...`
    pub fn peers(&self) -> String {
        self.local.peers()
    }

    /// A client for every replica ([`client_for`]).
    pub fn client(&self) -> Client {
        client_for(self.endpoints())
    }

    /// A client that knows only replica `id` (and leaders it is told of):
    /// it does not follow the membership, so every answer it gets comes
    /// from that replica or a leader named to it.
    pub fn node_client(&self, id: u64) -> Client {
        let config = ClientConfig {
            follow_membership: false,
            ..client_for(vec![self.node(id).addr.clone()]).config().clone()
        };
        Client::new(config).expect("a valid client config")
    }

    /// Waits until every running, unpaused replica names the same leader and
    /// that leader is one of them; returns its id.
    pub async fn wait_for_leader(&self) -> u64 {
        self.local
            .wait_for_leader(ELECTION_TIMEOUT_MAX)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Replica `id`'s own cluster status: one plain gRPC call to it, without
    /// the client library (whose `cluster_status` moves on to the leader),
    /// bounded by the probe's own timeout (`STATUS_PROBE_TIMEOUT_MS`).
    pub async fn ask_status(&self, id: u64) -> Option<api::ClusterStatusReply> {
        self.local.status_of(id).await.ok()
    }

    /// Waits until replica `id` has applied everything the leader had
    /// committed when this was called: its stale reads then see every write
    /// acknowledged before.
    pub async fn wait_until_caught_up(&self, id: u64) {
        let leader = self.wait_for_leader().await;
        let deadline = tokio::time::Instant::now() + ELECTION_TIMEOUT_MAX;
        let committed = loop {
            if let Some(status) = self.ask_status(leader).await {
                break status.commit_index;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "leader {leader} did not tell its commit index within {ELECTION_TIMEOUT_MAX:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.local
            .wait_for_applied(id, committed, remaining)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// Running and not paused.
    pub fn is_answering(&self, id: u64) -> bool {
        self.local.is_answering(id)
    }

    /// SIGKILL, through the node's own `Child` handle.
    pub fn kill(&self, id: u64) {
        self.local.kill(id).unwrap_or_else(|error| panic!("kill {id}: {error}"));
    }

    /// Starts a killed node again on the same port and data directory.
    pub fn restart(&self, id: u64) {
        self.local.start_replica(id).unwrap_or_else(|error| panic!("restart {id}: {error}"));
    }

    /// SIGSTOP: the process keeps its sockets (the kernel still accepts
    /// connections on them) but answers nothing.
    pub fn pause(&self, id: u64) {
        self.local.pause(id).unwrap_or_else(|error| panic!("pause {id}: {error}"));
    }

    /// SIGCONT after [`TestCluster::pause`].
    pub fn resume(&self, id: u64) {
        self.local.resume(id).unwrap_or_else(|error| panic!("resume {id}: {error}"));
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.local.pid(id)
    }

    pub fn root_path(&self) -> &Path {
        self.local.dir()
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
