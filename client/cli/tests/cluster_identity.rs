//! Cluster ids and format versions on real replicas: every replica of a
//! cluster reports the id fixed when it was initialised, through restarts
//! and into its backups; a restore gets a new id; a replica of another
//! cluster (or restored from another backup) is refused with a one-line
//! reason, and so is a replica whose build claims formats two versions
//! away, while one version apart joins.

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use qm_client::proto::api;
use qm_client::{Client, ClientConfig};
use qm_testkit::{node_binary, LocalCluster};
use serde_json::Value;

/// The whole-test bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// How long replicas may take to agree on something they learn from a leader.
const AGREE_TIMEOUT: Duration = Duration::from_secs(30);
/// Providers here do not heartbeat.
const QUIET_PROVIDERS: [&str; 2] = ["--provider-failure-window-ms", "600000"];

fn qm(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(args)
        .env_remove("QM_ENDPOINTS")
        .env_remove("QM_OUTPUT")
        .output()
        .expect("qm runs")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "qm failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

fn stderr_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(1, stderr.lines().count(), "one line: {stderr:?}");
    stderr
}

fn restore(file: &Path, cluster: &LocalCluster, id: u64) -> Output {
    let output = std::process::Command::new(node_binary())
        .arg("restore")
        .arg("--from")
        .arg(file)
        .arg("--data-dir")
        .arg(&cluster.replicas[&id].data_dir)
        .args(["--id", &id.to_string(), "--peers", &cluster.peers()])
        .output()
        .expect("qm-node restore runs");
    assert!(output.status.success(), "restore {id}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Waits until every listed replica reports the same non-empty cluster id; returns it.
async fn agreed_cluster_id(cluster: &LocalCluster, ids: &[u64]) -> String {
    let deadline = tokio::time::Instant::now() + AGREE_TIMEOUT;
    loop {
        let mut seen = Vec::new();
        for id in ids {
            seen.push(cluster.status_of(*id).await.map(|status| status.cluster_id).unwrap_or_default());
        }
        if !seen[0].is_empty() && seen.iter().all(|id| *id == seen[0]) {
            return seen[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas {ids:?} never agreed on a cluster id: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the listed replicas agree on a leader among them (the
/// others are refused, and know none).
async fn leader_among(cluster: &LocalCluster, ids: &[u64]) -> u64 {
    let deadline = tokio::time::Instant::now() + AGREE_TIMEOUT;
    loop {
        let mut seen = Vec::new();
        for id in ids {
            seen.push(cluster.status_of(*id).await.ok().and_then(|status| status.leader_id));
        }
        if let Some(Some(leader)) = seen.first().copied() {
            if seen.iter().all(|view| *view == Some(leader)) && ids.contains(&leader) {
                return leader;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas {ids:?} never agreed on a leader: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until replica `id` reports a refusal of peer `peer` containing `reason`.
async fn refusal_of(cluster: &LocalCluster, id: u64, peer: u64, reason: &str) -> String {
    let deadline = tokio::time::Instant::now() + AGREE_TIMEOUT;
    loop {
        let status = cluster.status_of(id).await.unwrap_or_default();
        if let Some(record) = status
            .peers
            .iter()
            .find(|record| record.id == peer && record.refused.contains(reason))
        {
            return record.refused.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica {id} never reported refusing {peer} ({reason}): {:?}",
            status.peers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn one_provider() -> qm_state_machine::ProviderRegistration {
    qm_client::convert::registration_from_proto(&api::RegisterProviderRequest {
        provider_id: "node_1".into(),
        resources: vec![api::ResourceSpec {
            resource_id: "cpu_1".into(),
            kind: "cpu_cores".into(),
            capacity: 1,
            ..Default::default()
        }],
        ..Default::default()
    })
    .expect("a valid registration")
}

fn one_core(requester: &str) -> qm_state_machine::ResourceRequest {
    qm_client::convert::request_from_proto(&api::ResourceRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        requester_id: requester.into(),
        resource_requirements: HashMap::from([("cpu_cores".to_owned(), 1)]),
        priority: 1,
        ..Default::default()
    })
    .expect("a valid request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_keeps_its_id_its_backups_carry_it_and_restores_get_their_own() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = LocalCluster::start(&node_binary(), 3, &QUIET_PROVIDERS)
            .await
            .expect("cluster starts");
        source.kill_after(TEST_TIMEOUT);
        let endpoints = source.endpoints().join(",");

        // --- every replica has the id fixed at initialisation, shown by qm cluster status
        let cluster_id = agreed_cluster_id(&source, &[1, 2, 3]).await;
        let status = json_of(&qm(&["--endpoints", &endpoints, "--output", "json", "cluster", "status"]));
        assert_eq!(Some(cluster_id.as_str()), status["cluster_id"].as_str());
        let text = qm(&["--endpoints", &endpoints, "cluster", "status"]);
        assert!(String::from_utf8_lossy(&text.stdout).contains(&cluster_id), "{text:?}");

        // --- it survives restarting every replica
        for id in 1..=3 {
            source.kill(id).expect("kill");
        }
        for id in 1..=3 {
            source.start_replica(id).expect("start");
        }
        source.wait_for_leader(AGREE_TIMEOUT).await.expect("a leader again");
        assert_eq!(cluster_id, agreed_cluster_id(&source, &[1, 2, 3]).await);

        // --- a backup carries it
        let client = Client::new(ClientConfig::with_endpoints(source.endpoints())).expect("client");
        client.register_provider(&one_provider()).await.expect("register");
        let first = dir.path().join("first.backup");
        json_of(&qm(&[
            "--endpoints",
            &endpoints,
            "--output",
            "json",
            "snapshot",
            "save",
            first.to_str().unwrap(),
        ]));
        client.allocate(one_core("between_backups")).await.expect("allocate");
        let second = dir.path().join("second.backup");
        json_of(&qm(&[
            "--endpoints",
            &endpoints,
            "--output",
            "json",
            "snapshot",
            "save",
            second.to_str().unwrap(),
        ]));
        let inspected = json_of(&qm(&["--output", "json", "snapshot", "inspect", first.to_str().unwrap()]));
        assert_eq!(Some(cluster_id.as_str()), inspected["cluster_id"].as_str());
        let inspected_text = qm(&["snapshot", "inspect", first.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&inspected_text.stdout).contains(&cluster_id));

        // --- a restore gets a new id, the same on every replica restored from the file;
        // --- a replica restored from another backup is refused, in one line, both ways
        let target = LocalCluster::configure(&node_binary(), 3, &QUIET_PROVIDERS).expect("lay out");
        target.kill_after(TEST_TIMEOUT);
        let restored_line = String::from_utf8_lossy(&restore(&first, &target, 1).stdout).into_owned();
        restore(&first, &target, 2);
        restore(&second, &target, 3);
        assert!(restored_line.contains(&cluster_id), "names the backup's id: {restored_line}");
        for id in 1..=3 {
            target.start_replica(id).expect("start");
        }
        let leader = leader_among(&target, &[1, 2]).await;
        let restored_id = agreed_cluster_id(&target, &[1, 2]).await;
        assert_ne!(cluster_id, restored_id, "a restore is a new cluster");
        assert!(restored_line.contains(&restored_id), "names the new id: {restored_line}");
        let odd_one = target.status_of(3).await.expect("status").cluster_id;
        assert!(!odd_one.is_empty() && odd_one != restored_id, "{odd_one}");
        // Both directions are refused, and a replica keeps the latest of
        // them per peer: wait for the one where replica 3 is the refuser.
        let refused = refusal_of(&target, 3, leader, "refused by this replica: cluster id mismatch").await;
        assert_eq!(1, refused.lines().count());
        assert!(refused.starts_with("refused by this replica: "), "{refused}");
        refusal_of(&target, leader, 3, "refused this replica: cluster id mismatch").await;
        let restored_client = Client::new(ClientConfig::with_endpoints(target.endpoints())).expect("client");
        restored_client
            .allocate(one_core("after_restore"))
            .await
            .expect("the restored cluster serves");

        // --- a replica of another cluster is refused when asked to join
        let other = LocalCluster::start(&node_binary(), 1, &QUIET_PROVIDERS)
            .await
            .expect("another cluster");
        other.kill_after(TEST_TIMEOUT);
        let other_id = agreed_cluster_id(&other, &[1]).await;
        assert_ne!(cluster_id, other_id);
        let refused = qm(&["--endpoints", &endpoints, "cluster", "add", "--id", "4", "--addr", other.addr(1)]);
        assert_eq!(Some(1), refused.status.code());
        let line = stderr_line(&refused);
        assert!(line.contains("cannot join") && line.contains("cluster id mismatch"), "{line}");
        let members = json_of(&qm(&["--endpoints", &endpoints, "--output", "json", "cluster", "status"]))["members"]
            .as_array()
            .map(Vec::len);
        assert_eq!(Some(3), members, "the membership did not change");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_two_format_versions_apart_refuse_each_other_one_apart_join() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // --- replica 3 claims a build two format versions newer (a test-only flag)
        let mut cluster = LocalCluster::configure(&node_binary(), 3, &QUIET_PROVIDERS).expect("lay out");
        cluster.kill_after(TEST_TIMEOUT);
        cluster.start_replica(1).expect("start");
        cluster.start_replica(2).expect("start");
        cluster
            .start_replica_with(3, &["--test-format-version-offset", "2"])
            .expect("start");
        let leader = leader_among(&cluster, &[1, 2]).await;
        let endpoints = cluster.endpoints().join(",");

        // --- both sides report the refusal in ClusterStatus, in one line
        let refused = refusal_of(&cluster, 3, leader, "format versions too far apart").await;
        assert_eq!(1, refused.lines().count());
        refusal_of(&cluster, leader, 3, "refused this replica: format versions too far apart").await;
        let own = cluster.status_of(leader).await.expect("status");
        let claimed = cluster.status_of(3).await.expect("status");
        assert_eq!(own.log_format_version + 2, claimed.log_format_version);
        assert_eq!(own.table_format_version + 2, claimed.table_format_version);
        assert!(
            claimed.cluster_id.is_empty(),
            "it never took the leader's id: {}",
            claimed.cluster_id
        );
        let text = String::from_utf8_lossy(&qm(&["--endpoints", cluster.addr(leader), "cluster", "status"]).stdout).into_owned();
        assert!(text.contains("format versions too far apart"), "{text}");

        // --- the two that agree serve writes
        let client = Client::new(ClientConfig::with_endpoints(cluster.endpoints())).expect("client");
        client.register_provider(&one_provider()).await.expect("a majority serves");

        // --- a blank replica two versions older is refused when asked to join, in one line
        let older = cluster
            .add_blank_replica_with(5, &["--test-format-version-offset", "-2"])
            .expect("start 5");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let refused = qm(&["--endpoints", &endpoints, "cluster", "add", "--id", "5", "--addr", &older]);
        assert_eq!(Some(1), refused.status.code());
        let line = stderr_line(&refused);
        assert!(
            line.contains("cannot join") && line.contains("format versions too far apart"),
            "{line}"
        );

        // --- one version newer joins and catches up
        let newer = cluster
            .add_blank_replica_with(4, &["--test-format-version-offset", "1"])
            .expect("start 4");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let added = qm(&["--endpoints", &endpoints, "cluster", "add", "--id", "4", "--addr", &newer]);
        assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
        let cluster_id = agreed_cluster_id(&cluster, &[1, 2, 4]).await;
        let joined = cluster.status_of(4).await.expect("status");
        assert_eq!(cluster_id, joined.cluster_id);
        assert_eq!(own.log_format_version + 1, joined.log_format_version);
    })
    .await
    .expect("the test finished in time");
}
