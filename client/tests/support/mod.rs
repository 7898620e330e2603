//! Test support: real `qm-node` clusters ([`TestCluster`]) and in-process
//! fake replicas ([`fake::FakeCluster`]).
//!
//! [`TestCluster`] builds nothing: it runs the `qm-node` binary that
//! `cargo build -p qm-raft-node` left in the workspace's target directory
//! (`CARGO_BIN_EXE_qm-node` exists only for raft-node's own tests). Each
//! cluster picks its own free loopback ports, keeps its data in a temporary
//! directory, kills exactly the processes it started (by their pid, through
//! their `Child` handles) when dropped, and is killed by a watchdog if a test
//! hangs past [`CLUSTER_LIFETIME_MAX`].

// Each test file uses a different part of this module.
#![allow(dead_code)]

pub mod fake;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_client::{Client, ClientConfig};

/// Environment variable naming the `qm-node` binary to test, overriding the search.
pub const NODE_BINARY_ENV: &str = "QM_NODE_BIN";
/// A test cluster's processes are killed after this long, whatever the test is doing.
pub const CLUSTER_LIFETIME_MAX: Duration = Duration::from_secs(300);
/// How long a fresh cluster may take to elect its first leader.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(20);

/// The `qm-node` binary: `$QM_NODE_BIN`, else `qm-node` next to this test's
/// profile directory (`<target>/debug/deps/<test>` → `<target>/debug/qm-node`),
/// else under `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(NODE_BINARY_ENV) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{NODE_BINARY_ENV}={} is not a file", path.display());
        return path;
    }
    let name = format!("qm-node{}", std::env::consts::EXE_SUFFIX);
    let beside_tests = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(&name)));
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("client/ is inside the workspace")
            .join("target")
    });
    let candidates: Vec<PathBuf> = beside_tests.into_iter().chain([target_dir.join("debug").join(&name)]).collect();
    candidates.iter().find(|path| path.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "qm-node not found (looked at {}); run `cargo build -p qm-raft-node` first, or set {NODE_BINARY_ENV}",
            candidates
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// `count` distinct free loopback ports. All are held until all are picked,
/// so they differ; a port could still be taken between here and the node's
/// bind, which the node then reports clearly.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners.iter().map(|listener| listener.local_addr().unwrap().port()).collect()
}

/// One replica process.
pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
}

/// A real cluster of `qm-node` processes on loopback.
pub struct TestCluster {
    binary: PathBuf,
    nodes: Vec<TestNode>,
    /// `children[i]` is node `i`'s process while it runs; shared with the watchdog.
    children: Arc<Mutex<Vec<Option<Child>>>>,
    root: Option<tempfile::TempDir>,
}

impl TestCluster {
    /// Starts `size` replicas (ids 1..=size) that form a fresh cluster.
    pub fn start(size: usize) -> TestCluster {
        let binary = node_binary();
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
        let children = Arc::new(Mutex::new((0..size).map(|_| None).collect()));
        let cluster = TestCluster {
            binary,
            nodes,
            children,
            root: Some(root),
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

    /// A client for every replica, with timeouts short enough for tests.
    pub fn client(&self) -> Client {
        let config = ClientConfig {
            request_timeout_ms: 5_000,
            attempt_timeout_ms: 1_000,
            connect_timeout_ms: 300,
            ..ClientConfig::with_endpoints(self.endpoints())
        };
        Client::new(config).expect("a valid client config")
    }

    /// Waits for a leader every replica agrees on; returns its id.
    pub async fn wait_for_leader(&self) -> u64 {
        let client = self.client();
        let deadline = tokio::time::Instant::now() + ELECTION_TIMEOUT_MAX;
        loop {
            if let Ok(status) = client.cluster_status().await {
                if let Some(leader) = status.leader_id {
                    return leader;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader within {ELECTION_TIMEOUT_MAX:?}; logs in {}",
                self.root_path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, through the node's own `Child` handle.
    pub fn kill(&self, id: u64) {
        if let Some(mut child) = self.children.lock().unwrap()[(id - 1) as usize].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on the same port and data directory.
    pub fn restart(&self, id: u64) {
        assert!(self.children.lock().unwrap()[(id - 1) as usize].is_none(), "node {id} is running");
        self.spawn(id);
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&self, id: u64) {
        self.signal(id, "-STOP");
    }

    /// SIGCONT after [`TestCluster::pause`].
    pub fn resume(&self, id: u64) {
        self.signal(id, "-CONT");
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.lock().unwrap()[(id - 1) as usize].as_ref().map(Child::id)
    }

    fn root_path(&self) -> &Path {
        self.root.as_ref().expect("held until drop").path()
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
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        self.children.lock().unwrap()[(id - 1) as usize] = Some(child);
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
        let children = Arc::downgrade(&self.children);
        std::thread::spawn(move || {
            std::thread::sleep(CLUSTER_LIFETIME_MAX);
            if let Some(children) = children.upgrade() {
                eprintln!("test cluster outlived {CLUSTER_LIFETIME_MAX:?}; killing its replicas");
                kill_all(&children);
            }
        });
    }
}

fn kill_all(children: &Mutex<Vec<Option<Child>>>) {
    let mut children = children.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for child in children.iter_mut().filter_map(Option::take) {
        let mut child = child;
        // A paused process dies of SIGKILL too.
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        kill_all(&self.children);
        if std::thread::panicking() {
            if let Some(root) = self.root.take() {
                eprintln!("test cluster logs and data kept in {}", root.keep().display());
            }
        }
    }
}
