//! Backups end to end on real replicas: `qm snapshot save` while clients
//! keep writing, `qm snapshot inspect`, damaged files refused, and
//! `qm-node restore` into a fresh 3-replica cluster on other ports whose
//! tables then equal the backup's (every allocation, provider, queue entry
//! and the revision) on every replica.

use qm_testkit::table_view::{expected_from, served_by};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_client::convert::request_from_proto;
use qm_client::proto::api;
use qm_client::{Client, ClientConfig};
use qm_state_machine::AllocationTable;
use qm_testkit::{node_binary, LocalCluster};
use serde_json::Value;

/// The whole-test bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// Providers here do not heartbeat.
const QUIET_PROVIDERS: [&str; 2] = ["--provider-failure-window-ms", "600000"];
/// Cores of the one provider: the load fills them, then queues.
const CORES: u32 = 8;

fn qm(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(args)
        .env_remove("QM_ENDPOINTS")
        .env_remove("QM_OUTPUT")
        .output()
        .expect("qm runs")
}

fn restore(file: &Path, cluster: &LocalCluster, id: u64) -> Output {
    let data_dir = &cluster.replicas[&id].data_dir;
    std::process::Command::new(node_binary())
        .arg("restore")
        .arg("--from")
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--id", &id.to_string(), "--peers", &cluster.peers()])
        .output()
        .expect("qm-node restore runs")
}

fn client_of(cluster: &LocalCluster) -> Client {
    Client::new(ClientConfig::with_endpoints(cluster.endpoints())).expect("client")
}

fn registration() -> qm_state_machine::ProviderRegistration {
    let resources = (1..=CORES)
        .map(|core| api::ResourceSpec {
            resource_id: format!("cpu_{core}"),
            kind: "cpu_cores".into(),
            capacity: 1,
            ..Default::default()
        })
        .collect();
    qm_client::convert::registration_from_proto(&api::RegisterProviderRequest {
        provider_id: "node_1".into(),
        resources,
        ..Default::default()
    })
    .expect("a valid registration")
}

fn one_core(requester: &str) -> qm_state_machine::ResourceRequest {
    request_from_proto(&api::ResourceRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        requester_id: requester.into(),
        resource_requirements: HashMap::from([("cpu_cores".to_owned(), 1)]),
        priority: 1,
        ..Default::default()
    })
    .expect("a valid request")
}

/// Allocates one core after another, releasing every third one's
/// predecessor, until told to stop: the table fills, then queues. Returns
/// the request ids acknowledged, in order.
fn start_load(client: Client, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut previous: Option<String> = None;
        let mut round = 0u64;
        while !stop.load(Ordering::SeqCst) {
            round += 1;
            let reply = client.allocate(one_core("loader")).await.expect("allocate under load");
            acked.lock().unwrap().push(reply.request_id.clone());
            if round % 3 == 0 {
                if let Some(previous) = previous.take() {
                    client.release(&previous).await.expect("release under load");
                }
            }
            previous = Some(reply.request_id);
        }
    })
}

/// The table a backup file holds.
fn table_of(file: &Path) -> AllocationTable {
    let backup = qm_client::backup::decode(&std::fs::read(file).expect("read")).expect("a whole backup");
    AllocationTable::from_snapshot_bytes(&backup.table).expect("its table decodes")
}

fn stderr_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(1, stderr.lines().count(), "one line: {stderr:?}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_a_fresh_cluster() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("qm.backup");
        let file_arg = file.to_str().expect("utf-8 path");
        let source = LocalCluster::start(&node_binary(), 3, &QUIET_PROVIDERS)
            .await
            .expect("cluster starts");
        source.kill_after(TEST_TIMEOUT);
        let endpoints = source.endpoints().join(",");
        let client = client_of(&source);
        client.register_provider(&registration()).await.expect("register");

        // --- clients keep writing; some writes are acknowledged
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let load = start_load(client_of(&source), stop.clone(), acked.clone());
        while acked.lock().unwrap().len() < 30 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // --- save a backup while they write
        let acked_before_save = acked.lock().unwrap().clone();
        let saved = tokio::task::spawn_blocking({
            let endpoints = endpoints.clone();
            let file_arg = file_arg.to_owned();
            move || qm(&["--endpoints", &endpoints, "--output", "json", "snapshot", "save", &file_arg])
        })
        .await
        .expect("qm ran");
        assert!(saved.status.success(), "save failed: {}", String::from_utf8_lossy(&saved.stderr));
        let acked_after_save = acked.lock().unwrap().len();
        while acked.lock().unwrap().len() < acked_after_save + 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::SeqCst);
        load.await.expect("load ran");
        let summary: Value = serde_json::from_slice(&saved.stdout).expect("json");

        // --- linearizable: every write acknowledged before the save began is in it
        let table = table_of(&file);
        for request_id in &acked_before_save {
            let id = request_id.parse().expect("uuid");
            assert!(table.get(id).is_some(), "acknowledged {request_id} is not in the backup");
        }
        assert!(table.queue_len() > 0, "the load queued nothing: {summary}");
        assert_eq!(summary["revision"].as_u64(), Some(table.revision()));

        // --- inspect prints what it holds and verifies the checksum
        let inspected = qm(&["--output", "json", "snapshot", "inspect", file_arg]);
        assert!(inspected.status.success(), "{}", String::from_utf8_lossy(&inspected.stderr));
        let inspected: Value = serde_json::from_slice(&inspected.stdout).expect("json");
        assert_eq!(summary, inspected);
        assert_eq!(inspected["active_allocations"].as_u64(), Some(table.active_allocations() as u64));
        assert_eq!(inspected["queued"].as_u64(), Some(table.queue_len() as u64));
        assert_eq!(inspected["providers"].as_u64(), Some(1));
        assert_eq!(inspected["members"].as_array().map(Vec::len), Some(3));

        // --- a truncated and a bit-flipped file are refused, in one line each
        let bytes = std::fs::read(&file).expect("read");
        let truncated = dir.path().join("truncated.backup");
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
        let mut flipped_bytes = bytes.clone();
        flipped_bytes[bytes.len() / 3] ^= 0x10;
        let flipped = dir.path().join("flipped.backup");
        std::fs::write(&flipped, &flipped_bytes).expect("write");
        for damaged in [&truncated, &flipped] {
            let output = qm(&["snapshot", "inspect", damaged.to_str().unwrap()]);
            assert_eq!(Some(1), output.status.code());
            assert!(stderr_line(&output).contains("checksum mismatch"), "{output:?}");
        }

        // --- restore refuses the damaged files, a foreign one, and a used data dir
        let target = LocalCluster::configure(&node_binary(), 3, &QUIET_PROVIDERS).expect("lay out");
        target.kill_after(TEST_TIMEOUT);
        let foreign = dir.path().join("foreign.backup");
        std::fs::write(&foreign, b"SQLite format 3\0 and so on").expect("write");
        for refused in [&truncated, &flipped, &foreign] {
            let output = restore(refused, &target, 1);
            assert_eq!(Some(1), output.status.code());
            let line = stderr_line(&output);
            assert!(
                line.contains("checksum mismatch") || line.contains("not a Quartermaster backup"),
                "{line}"
            );
            assert!(!target.replicas[&1].data_dir.exists(), "a refused restore wrote {line}");
        }

        // --- restore into a fresh 3-replica cluster on other ports
        for id in 1..=3 {
            let output = restore(&file, &target, id);
            assert!(output.status.success(), "restore {id}: {}", String::from_utf8_lossy(&output.stderr));
        }
        let again = restore(&file, &target, 1);
        assert!(stderr_line(&again).contains("is not empty"), "{again:?}");
        for id in 1..=3 {
            target.start_replica(id).expect("start");
        }
        let leader = target.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
        let leader_status = target.status_of(leader).await.expect("status");
        for id in 1..=3 {
            target
                .wait_for_applied(id, leader_status.commit_index, Duration::from_secs(30))
                .await
                .expect("applied");
        }

        // --- every replica serves exactly the backup's table
        let expected = expected_from(&table);
        for id in 1..=3 {
            let served = served_by(target.addr(id)).await;
            assert_eq!(expected.0.len(), served.0.len(), "replica {id}: records");
            let by_id = |records: &[api::AllocationReply]| -> BTreeMap<String, api::AllocationReply> {
                records.iter().map(|record| (record.request_id.clone(), record.clone())).collect()
            };
            assert_eq!(by_id(&expected.0), by_id(&served.0), "replica {id}: records");
            assert_eq!(expected.1, served.1, "replica {id}: providers");
            assert_eq!(expected.2, served.2, "replica {id}: state (queue, revision)");
        }

        // --- and the restored cluster takes writes
        let restored_client = client_of(&target);
        let reply = restored_client.allocate(one_core("after_restore")).await.expect("allocate");
        assert!(!reply.request_id.is_empty());
    })
    .await
    .expect("the test finished in time");
}
