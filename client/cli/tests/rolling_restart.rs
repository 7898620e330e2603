//! `scripts/cluster.sh rolling-restart` under load: every replica restarted
//! one at a time (the leader last) while a client keeps allocating and
//! releasing; no call fails beyond the retries the client makes itself.
//!
//! The cluster is the script's own (its data and pids in a temporary
//! `QM_CLUSTER_DIR`, on ports checked free), stopped by `cluster.sh down`,
//! which signals only the pids it recorded.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qm_client::convert::{registration_from_proto, request_from_proto};
use qm_client::proto::api;
use qm_client::{Client, ClientConfig};
use qm_testkit::binaries::workspace_dir;
use qm_testkit::node_binary;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// Port offsets from the base: replica i at base+i, metrics at base+10+i, HTTP at base+100+10i.
const METRICS_OFFSET: u16 = 10;
const HTTP_OFFSET: u16 = 100;

/// The script's cluster; `down` on drop, whatever the test did.
struct ScriptCluster {
    dir: tempfile::TempDir,
    base: u16,
}

/// Runs `scripts/cluster.sh args` on the cluster in `dir` at ports from `base`.
fn script(dir: &Path, base: u16, args: &[&str]) -> Output {
    Command::new(workspace_dir().join("scripts/cluster.sh"))
        .args(args)
        .env("QM_CLUSTER_DIR", dir)
        .env("QM_BASE_PORT", base.to_string())
        .env("QM_METRICS_BASE_PORT", (base + METRICS_OFFSET).to_string())
        .env("QM_HTTP_BASE_PORT", (base + HTTP_OFFSET).to_string())
        .env("QM_NODE_BIN", node_binary())
        .env("QM_BIN", env!("CARGO_BIN_EXE_qm"))
        .output()
        .expect("cluster.sh runs")
}

impl ScriptCluster {
    fn run(&self, args: &[&str]) -> Output {
        script(self.dir.path(), self.base, args)
    }

    fn endpoints(&self) -> Vec<String> {
        (1..=3).map(|i| format!("127.0.0.1:{}", self.base + i)).collect()
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// A base port whose replica, metrics and HTTP ports (for 3 replicas) are all free now.
fn free_base() -> u16 {
    for _ in 0..50 {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = probe.local_addr().expect("addr").port();
        drop(probe);
        if base > 60_000 {
            continue;
        }
        let ports: Vec<u16> = (1..=3)
            .flat_map(|i| [base + i, base + METRICS_OFFSET + i, base + HTTP_OFFSET + 10 * i])
            .collect();
        if ports.iter().all(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range found");
}

fn ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn one_core() -> qm_state_machine::ResourceRequest {
    request_from_proto(&api::ResourceRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        requester_id: "loader".into(),
        resource_requirements: HashMap::from([("cpu_cores".to_owned(), 1)]),
        priority: 1,
        ..Default::default()
    })
    .expect("a valid request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_write() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = ScriptCluster {
            dir: tempfile::tempdir().expect("temp dir"),
            base: free_base(),
        };
        ok(&cluster.run(&["up", "--", "--provider-failure-window-ms", "600000"]), "up");
        let client = Client::new(ClientConfig::with_endpoints(cluster.endpoints())).expect("client");
        let registration = registration_from_proto(&api::RegisterProviderRequest {
            provider_id: "node_1".into(),
            resources: (1..=16)
                .map(|core| api::ResourceSpec {
                    resource_id: format!("cpu_{core}"),
                    kind: "cpu_cores".into(),
                    capacity: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .expect("registration");
        client.register_provider(&registration).await.expect("register");

        // --- a client allocates and releases without pause
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let load = tokio::spawn({
            let (stop, done) = (stop.clone(), done.clone());
            async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match client.allocate(one_core()).await {
                        Ok(reply) => match client.release(&reply.allocation_id).await {
                            Ok(_) => {
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(error) => failures.push(format!("release: {error}")),
                        },
                        Err(error) => failures.push(format!("allocate: {error}")),
                    }
                }
                failures
            }
        });

        // --- restart every replica, one at a time, while it runs
        let restarted = tokio::task::spawn_blocking({
            let (dir, base) = (cluster.dir.path().to_owned(), cluster.base);
            move || script(&dir, base, &["rolling-restart"])
        })
        .await
        .expect("ran");
        let before = done.load(Ordering::SeqCst);
        while done.load(Ordering::SeqCst) < before + 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::SeqCst);
        let failures = load.await.expect("load ran");
        ok(&restarted, "rolling-restart");
        let log = String::from_utf8_lossy(&restarted.stderr);
        assert_eq!(3, log.matches("and caught up").count(), "{log}");

        // --- no write failed; the load went on throughout
        assert!(failures.is_empty(), "{} calls failed: {failures:?}", failures.len());
        assert!(done.load(Ordering::SeqCst) > 20);
    })
    .await
    .expect("the test finished in time");
}
