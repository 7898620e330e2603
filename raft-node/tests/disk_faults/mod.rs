//! What the disk-fault tests share: a 3-replica cluster whose data dirs are
//! each on a tmpfs of their own (so one replica's disk can be filled or
//! failed alone), a steady allocation load that records what was
//! acknowledged, and the checks after the fault.
//!
//! Mounting needs root (the tests run as root in CI and on the dev box);
//! every mount is undone by path when [`Mounts`] drops, also when the test
//! fails. The replicas are killed (by pid) before the mounts are undone.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_client::{Client, ClientConfig, Consistency};
use qm_testkit::local_cluster::LocalCluster;
use qm_testkit::test_cluster::{registration, request, QUIET_PROVIDERS};

/// Each replica's tmpfs: room for a short test's log and snapshots.
pub const TMPFS_BYTES: u64 = 64 * 1024 * 1024;
/// Left free when a disk is "filled": less than one sled segment, so the
/// next writes fail with ENOSPC at once.
pub const FULL_SLACK_BYTES: u64 = 64 * 1024;
/// Cores of the one provider: every acknowledged allocation keeps one.
pub const PROVIDER_CORES: u32 = 2_000;
/// How long a phase may wait for the cluster to get somewhere (a fault seen,
/// a recovery); a bound, not a timed assertion.
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(45);
/// The whole test's bound.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(200);

/// tmpfs mounts, undone by path (lazily if busy) when dropped.
pub struct Mounts {
    paths: Vec<PathBuf>,
}

impl Mounts {
    pub fn new() -> Mounts {
        Mounts { paths: Vec::new() }
    }

    /// Mounts a tmpfs of [`TMPFS_BYTES`] on `path` (created if needed).
    pub fn mount_tmpfs(&mut self, path: &Path) {
        std::fs::create_dir_all(path).expect("the mount point");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}"), "tmpfs"])
            .arg(path));
        self.paths.push(path.to_path_buf());
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for path in self.paths.iter().rev() {
            let unmounted = Command::new("umount").arg(path).status().is_ok_and(|status| status.success());
            if !unmounted {
                let _ = Command::new("umount").arg("-l").arg(path).status();
            }
        }
    }
}

fn run(command: &mut Command) {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed (these tests mount tmpfs and need root): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Bytes used on the file system at `path`.
pub fn used_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path");
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs struct to write into.
    assert_eq!(
        0,
        unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) },
        "statvfs {}",
        path.display()
    );
    (stat.f_blocks - stat.f_bfree) as u64 * stat.f_frsize as u64
}

/// Shrinks the tmpfs at `path` to what it holds plus [`FULL_SLACK_BYTES`]:
/// the replica's next writes find no space. Retries while the replica's
/// writes outgrow each attempt (a tmpfs refuses to shrink below its use).
pub fn fill(path: &Path) {
    for _ in 0..20 {
        let size = used_bytes(path) + FULL_SLACK_BYTES;
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(path)
            .status()
            .expect("mount runs");
        if status.success() {
            return;
        }
    }
    panic!("could not shrink the tmpfs at {}", path.display());
}

/// Gives the tmpfs at `path` its [`TMPFS_BYTES`] back.
pub fn free_space(path: &Path) {
    run(Command::new("mount").args(["-o", &format!("remount,size={TMPFS_BYTES}")]).arg(path));
}

/// How often the replicas snapshot in a disk-fault test.
#[derive(Clone, Copy, Debug)]
pub enum Snapshots {
    Often,
    Never,
}

/// A 3-replica cluster, each data dir on its own tmpfs, with one provider.
pub struct DiskCluster {
    // Dropped in this order: the replicas (killed by pid), then the mounts.
    pub cluster: LocalCluster,
    pub mounts: Mounts,
    pub client: Client,
}

impl DiskCluster {
    /// `snapshots`: [`Snapshots::Often`] makes a snapshot write the first to
    /// meet the full disk; [`Snapshots::Never`] leaves that to the log's
    /// appends.
    pub async fn start(snapshots: Snapshots) -> DiskCluster {
        let every = match snapshots {
            Snapshots::Often => "200",
            Snapshots::Never => "1000000",
        };
        let args: Vec<&str> = QUIET_PROVIDERS
            .iter()
            .copied()
            .chain(["--snapshot-every-entries", every, "--snapshot-every-commands", every])
            .collect();
        let cluster = LocalCluster::configure(Path::new(env!("CARGO_BIN_EXE_qm-node")), 3, &args).expect("laid out");
        cluster.kill_after(TEST_TIMEOUT);
        let mut mounts = Mounts::new();
        for replica in cluster.replicas.values() {
            mounts.mount_tmpfs(&replica.data_dir);
        }
        for id in 1..=3 {
            cluster.start_replica(id).expect("a replica starts");
        }
        cluster.wait_for_leader(PHASE_TIMEOUT).await.expect("a leader");
        let client = Client::new(ClientConfig {
            request_timeout_ms: 10_000,
            attempt_timeout_ms: 1_000,
            connect_timeout_ms: 300,
            ..ClientConfig::with_endpoints(cluster.endpoints())
        })
        .expect("a client");
        client
            .register_provider(&registration("node_1", PROVIDER_CORES))
            .await
            .expect("the provider registers");
        DiskCluster { cluster, mounts, client }
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.cluster.replicas[&id].data_dir.clone()
    }

    /// The replica's gRPC health (`""`, the whole server).
    pub async fn serving(&self, id: u64) -> Option<bool> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.cluster.addr(id)))
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_millis(1_000))
            .connect()
            .await
            .ok()?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .ok()?;
        Some(reply.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    }

    /// An allocate sent straight to the stopped replica `id`: refused with
    /// UNAVAILABLE, its message naming `dir` and containing `saying`.
    pub async fn assert_refuses_naming(&self, id: u64, dir: &Path, saying: &str) {
        let mut direct =
            qm_client::proto::api::quartermaster_client::QuartermasterClient::connect(format!("http://{}", self.cluster.addr(id)))
                .await
                .expect("the stopped replica still answers");
        let refused = direct
            .allocate(qm_client::proto::api::AllocateRequest {
                request: Some(proto_request()),
            })
            .await
            .expect_err("a replica whose disk fails acknowledges nothing");
        assert_eq!(tonic::Code::Unavailable, refused.code(), "{refused:?}");
        assert!(
            refused.message().contains(&dir.display().to_string()) && refused.message().contains(saying),
            "the error does not name the disk ({saying:?}): {}",
            refused.message()
        );
    }

    /// Waits (bounded) until replica `id`'s health is `serving`.
    pub async fn wait_until_serving(&self, id: u64, serving: bool) {
        let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
        while self.serving(id).await != Some(serving) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {id} did not become serving={serving}; logs:\n{}",
                self.cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until the replicas other than `stopped` agree on a
    /// leader (the stopped one answers, but knows no leader); returns it.
    pub async fn wait_for_leader_without(&self, stopped: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
        loop {
            let mut views = BTreeSet::new();
            for id in self.cluster.replicas.keys().filter(|id| **id != stopped) {
                let view = self
                    .cluster
                    .status_of(*id)
                    .await
                    .ok()
                    .and_then(|status| status.leader_id.map(|leader| (leader, status.term)));
                views.insert(view);
            }
            // Until they notice the stopped leader's silence, they may still name it.
            match views.into_iter().collect::<Vec<_>>()[..] {
                [Some((leader, _))] if leader != stopped => return leader,
                _ => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the replicas other than {stopped} agree on no leader; logs:\n{}",
                self.cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until replica `id` has applied what the leader has.
    pub async fn wait_until_caught_up(&self, id: u64) {
        let leader = self.cluster.wait_for_leader(PHASE_TIMEOUT).await.expect("a leader");
        let target = self.cluster.status_of(leader).await.expect("the leader's status").applied_index;
        self.cluster
            .wait_for_applied(id, target, PHASE_TIMEOUT)
            .await
            .unwrap_or_else(|error| panic!("replica {id} did not catch up to {target}: {error}; logs:\n{}", self.cluster.logs()));
    }

    /// Replica `id` came back by itself, in the same process (`pid` before
    /// the fault), and its log says it opened its data dir again.
    pub fn assert_resumed_in_process(&self, id: u64, pid: Option<u32>) {
        assert_eq!(pid, self.cluster.pid(id), "replica {id} was not restarted: it resumed by itself");
        let log = std::fs::read_to_string(self.cluster.log_path(id)).expect("the replica's log");
        assert!(
            log.contains("the disk takes writes again: opening the data dir again"),
            "replica {id}'s log does not show it resuming:\n{log}"
        );
        for line in log
            .lines()
            .filter(|line| line.contains("storage failed") || line.contains("opening the data dir again"))
        {
            eprintln!("replica {id}: {line}");
        }
    }

    /// Every acknowledged allocation is active in the table (a linearizable
    /// read through the leader), once: one record per request id.
    pub async fn assert_all_present(&self, acknowledged: &BTreeSet<String>) {
        for request_id in acknowledged {
            let record = self
                .client
                .get(request_id, Consistency::Linearizable)
                .await
                .unwrap_or_else(|error| panic!("acknowledged allocation {request_id} is not there: {error}"));
            assert_eq!(
                qm_client::proto::api::AllocationStatus::Allocated,
                record.status(),
                "acknowledged allocation {request_id} is {:?}",
                record.status()
            );
        }
        let active = self
            .client
            .list_all(qm_client::proto::api::ListRequest::default())
            .await
            .expect("a list of the table");
        let mut seen = BTreeSet::new();
        for record in &active {
            assert!(
                seen.insert(record.request_id.clone()),
                "request {} is listed twice",
                record.request_id
            );
        }
        assert!(acknowledged.is_subset(&seen), "an acknowledged allocation is missing from the list");
    }
}

/// One core for `agent_123`, as the wire's request (for calls made on a
/// raw gRPC client to one replica).
pub fn proto_request() -> qm_client::proto::api::ResourceRequest {
    qm_client::proto::api::ResourceRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        requester_id: "agent_123".into(),
        resource_requirements: std::collections::HashMap::from([("cpu_cores".to_owned(), 1)]),
        priority: 1,
        ..Default::default()
    }
}

/// A steady allocation load: allocate one core, keep it, again. What was
/// acknowledged, and how many answers were unknown or refused.
pub struct Load {
    pub acknowledged: Arc<Mutex<BTreeSet<String>>>,
    pub failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Pause between two allocations: a steady trickle, not a benchmark.
pub const LOAD_PAUSE_MS: u64 = 20;

impl Load {
    pub fn start(client: Client) -> Load {
        let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (acknowledged, failed, stop) = (acknowledged.clone(), failed.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) && acknowledged.lock().unwrap().len() < PROVIDER_CORES as usize - 10 {
                    match client.allocate(request(1)).await {
                        Ok(reply) if reply.status() == qm_client::proto::api::AllocationStatus::Allocated => {
                            acknowledged.lock().unwrap().insert(reply.request_id);
                        }
                        Ok(_) | Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(LOAD_PAUSE_MS)).await;
                }
            }
        });
        Load {
            acknowledged,
            failed,
            stop,
            task,
        }
    }

    pub fn acknowledged_count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits (bounded) until `more` allocations beyond now were acknowledged.
    pub async fn wait_for_more(&self, more: usize, what: &str) {
        let target = self.acknowledged_count() + more;
        let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
        while self.acknowledged_count() < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: only {} of {target} allocations acknowledged",
                self.acknowledged_count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the load task");
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        acknowledged
    }
}
