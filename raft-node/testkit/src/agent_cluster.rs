//! Real processes for the agent tests: a `qm-node` cluster with a short
//! provider failure window ([`Cluster`], on [`LocalCluster`]), and `qm agent`
//! and `qm watch` processes, each reading its stdout into [`Lines`].
//!
//! Every process is started here and killed here, by its own pid (through
//! its `Child` handle or `kill <pid>`), when the test drops it or when a
//! watchdog finds the test still running after [`PROCESS_LIFETIME_MAX`].
//! Traffic stays on 127.0.0.1.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qm_client::{Client, ClientConfig};
use serde_json::Value;

use crate::binaries::{cli_binary, node_binary};
use crate::local_cluster::LocalCluster;

/// The failure window the test cluster runs with.
pub const FAILURE_WINDOW_MS: u64 = 2_000;
/// How often the leader checks for silent providers.
pub const TICK_INTERVAL_MS: u64 = 100;
/// The agents' heartbeat interval: several fit in the failure window.
pub const AGENT_HEARTBEAT_MS: u64 = 300;
/// Processes still running this long after they started are killed.
pub const PROCESS_LIFETIME_MAX: Duration = Duration::from_secs(240);
/// How long a fresh cluster may take to elect its first leader.
pub const ELECTION_WAIT_MAX: Duration = Duration::from_secs(20);
/// The membership refresh interval of the `qm` processes and clients
/// started here: short, so that a test replacing replicas need not wait
/// the default interval for each of them to learn the new ones.
pub const MEMBERSHIP_REFRESH_MS: u64 = 500;

/// Processes shared with the watchdog: killed on drop or when the test hangs.
#[derive(Clone, Default)]
pub struct Reaper {
    children: Arc<Mutex<Vec<(String, Child)>>>,
}

impl Reaper {
    pub fn new() -> Reaper {
        let reaper = Reaper::default();
        let children = Arc::downgrade(&reaper.children);
        std::thread::spawn(move || {
            std::thread::sleep(PROCESS_LIFETIME_MAX);
            if let Some(children) = children.upgrade() {
                eprintln!("test processes outlived {PROCESS_LIFETIME_MAX:?}; killing them");
                kill_all(&children);
            }
        });
        reaper
    }

    /// Takes `child` into the reaper's care under `name`.
    pub fn adopt(&self, name: &str, child: Child) {
        self.children.lock().unwrap().push((name.to_owned(), child));
    }

    /// The pid of the running process called `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .lock()
            .unwrap()
            .iter()
            .find(|(named, _)| named == name)
            .map(|(_, child)| child.id())
    }

    /// SIGKILL `name` and reap it.
    pub fn kill(&self, name: &str) {
        let child = self.take(name);
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM `name` (by its pid) and wait for it to exit, at most `wait`.
    pub fn terminate(&self, name: &str, wait: Duration) -> Option<ExitStatus> {
        let pid = self.pid(name)?;
        let sent = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + wait;
        loop {
            {
                let mut children = self.children.lock().unwrap();
                let position = children.iter().position(|(named, _)| named == name)?;
                if let Some(status) = children[position].1.try_wait().unwrap() {
                    children.remove(position);
                    return Some(status);
                }
            }
            if Instant::now() >= deadline {
                self.kill(name);
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn take(&self, name: &str) -> Option<Child> {
        let mut children = self.children.lock().unwrap();
        let position = children.iter().position(|(named, _)| named == name)?;
        Some(children.remove(position).1)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Only the last handle kills: clones live in the cluster and agents.
        if Arc::strong_count(&self.children) == 1 {
            kill_all(&self.children);
        }
    }
}

fn kill_all(children: &Mutex<Vec<(String, Child)>>) {
    let mut children = children.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for (_, mut child) in children.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A cluster of real `qm-node` processes with a short failure window (a
/// [`LocalCluster`]), and the `qm` processes a test starts against it.
pub struct Cluster {
    /// The `qm agent` and `qm watch` processes, by name.
    pub reaper: Reaper,
    /// The replicas the cluster started with: every `qm` process's `--endpoints`.
    seeds: Vec<String>,
    local: LocalCluster,
    /// Inventories and the `qm` processes' logs; kept when the test fails.
    root: Option<tempfile::TempDir>,
}

impl Cluster {
    pub fn start(size: usize) -> Cluster {
        Cluster::start_with(size, &[])
    }

    /// [`Cluster::start`] with `extra` `qm-node` flags (`--http-peers`, say).
    pub fn start_with(size: usize, extra: &[&str]) -> Cluster {
        let failure_window = FAILURE_WINDOW_MS.to_string();
        let tick = TICK_INTERVAL_MS.to_string();
        let mut flags = vec!["--provider-failure-window-ms", &failure_window, "--tick-interval-ms", &tick];
        flags.extend(extra);
        let local = LocalCluster::configure(&node_binary(), size as u64, &flags).expect("a cluster laid out");
        local.kill_after(PROCESS_LIFETIME_MAX);
        for id in 1..=size as u64 {
            local.start_replica(id).expect("a replica starts");
        }
        Cluster {
            reaper: Reaper::new(),
            seeds: local.endpoints(),
            local,
            root: Some(tempfile::Builder::new().prefix("qm-agent-test-").tempdir().unwrap()),
        }
    }

    pub fn root(&self) -> &Path {
        self.root.as_ref().expect("held until drop").path()
    }

    /// `addr,addr,...`, as `--endpoints` takes it: the replicas laid out
    /// when the cluster started.
    pub fn endpoints(&self) -> String {
        self.seeds.join(",")
    }

    /// Starts (or restarts) replica `id` on its address and data directory.
    pub fn start_node(&self, id: u64) {
        self.local.start_replica(id).unwrap_or_else(|error| panic!("start {id}: {error}"));
    }

    pub fn kill_node(&self, id: u64) {
        self.local.kill(id).unwrap_or_else(|error| panic!("kill {id}: {error}"));
    }

    /// Starts a blank replica `id` on a free port, to be added through the
    /// API; returns its address. The `qm` processes started before it do
    /// not have it in their `--endpoints`.
    pub fn start_blank_node(&mut self, id: u64) -> String {
        self.local
            .add_blank_replica(id)
            .unwrap_or_else(|error| panic!("start blank replica {id}: {error}"))
    }

    /// What the `qm` process called `name` logged on stderr so far.
    pub fn qm_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// A client with test-sized timeouts, configured with the replicas the cluster started with.
    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            request_timeout_ms: 5_000,
            attempt_timeout_ms: 1_000,
            connect_timeout_ms: 300,
            membership_refresh_interval_ms: MEMBERSHIP_REFRESH_MS,
            ..ClientConfig::with_endpoints(self.seeds.clone())
        })
        .unwrap()
    }

    /// The leader's id, once there is one.
    pub async fn wait_for_leader(&self) -> u64 {
        let client = self.client();
        let deadline = Instant::now() + ELECTION_WAIT_MAX;
        loop {
            if let Ok(status) = client.cluster_status().await {
                if let Some(leader) = status.leader_id {
                    if client.system_state(qm_client::Consistency::Linearizable).await.is_ok() {
                        return leader;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {ELECTION_WAIT_MAX:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a registration document for `provider_id` with `cpus` CPU units.
    pub fn inventory(&self, provider_id: &str, cpus: u32) -> PathBuf {
        let resources: Vec<Value> = (1..=cpus)
            .map(|cpu| serde_json::json!({"resource_id": format!("cpu_{cpu}"), "kind": "cpu_cores", "capacity": 1}))
            .chain([serde_json::json!({"resource_id": "vol_1", "kind": "storage_gb", "capacity": 100})])
            .collect();
        let document = serde_json::json!({"labels": {"zone": provider_id}, "resources": resources});
        let path = self.root().join(format!("{provider_id}.json"));
        std::fs::write(&path, document.to_string()).unwrap();
        path
    }

    /// Starts `qm agent` for `provider_id` with a declared inventory.
    pub fn start_agent(&self, provider_id: &str, inventory: &Path) -> Lines {
        self.spawn_qm(
            &format!("agent-{provider_id}"),
            &[
                "--output",
                "json",
                "agent",
                "--provider-id",
                provider_id,
                "--inventory",
                &inventory.display().to_string(),
                "--heartbeat-interval-ms",
                &AGENT_HEARTBEAT_MS.to_string(),
                "--confirm-retry-interval-ms",
                "200",
            ],
        )
    }

    /// Starts `qm agent --from-host` for `provider_id`.
    pub fn start_host_agent(&self, provider_id: &str) -> Lines {
        self.spawn_qm(
            &format!("agent-{provider_id}"),
            &[
                "--output",
                "json",
                "agent",
                "--provider-id",
                provider_id,
                "--from-host",
                "--heartbeat-interval-ms",
                &AGENT_HEARTBEAT_MS.to_string(),
            ],
        )
    }

    /// Starts `qm watch --from REV`.
    pub fn start_watch(&self, from_revision: u64) -> Lines {
        self.spawn_qm("watch", &["watch", "--from", &from_revision.to_string()])
    }

    /// Runs `qm ARGS` to completion; returns its stdout.
    pub fn qm(&self, args: &[&str]) -> String {
        let output = self.qm_command(args).output().unwrap();
        assert!(
            output.status.success(),
            "qm {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn qm_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(cli_binary());
        for (name, _) in std::env::vars_os().filter(|(name, _)| name.to_string_lossy().starts_with("QM_")) {
            command.env_remove(name);
        }
        command
            .args(["--endpoints", &self.endpoints(), "--timeout-ms", "5000"])
            .args(["--membership-refresh-interval-ms", &MEMBERSHIP_REFRESH_MS.to_string()])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    fn spawn_qm(&self, name: &str, args: &[&str]) -> Lines {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.root().join(format!("{name}.log")))
            .unwrap();
        let mut child = self
            .qm_command(args)
            .env("QM_LOG", "qm_client=debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let lines = Lines::read(child.stdout.take().unwrap());
        self.reaper.adopt(name, child);
        lines
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The agents first, while the replicas still answer their goodbyes
        // or not: either way, no process outlives the test. The replicas die
        // with `local`.
        kill_all(&self.reaper.children);
        if std::thread::panicking() {
            if let Some(root) = self.root.take() {
                eprintln!("agent test inventories and logs kept in {}", root.keep().display());
            }
        }
    }
}

/// A process's stdout, line by line, read by a thread as it comes.
#[derive(Clone, Default)]
pub struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    fn read(stdout: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => sink.lock().unwrap().push(line),
                    Err(_) => return,
                }
            }
        });
        lines
    }

    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line that is a JSON object.
    pub fn json(&self) -> Vec<Value> {
        self.all().iter().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// Waits until a JSON line matches `wanted`; returns it.
    pub async fn wait_for(&self, what: &str, within: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.json().into_iter().find(|line| wanted(line)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {within:?}; lines so far:\n{}",
                self.all().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `test` with a time bound, so a hung test fails instead of hanging CI.
pub async fn bounded<F: std::future::Future<Output = ()>>(limit: Duration, test: F) {
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {limit:?}"));
}
