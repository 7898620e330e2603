//! The audit trail on real replicas (`--audit-log`): the replica that
//! received a call writes one JSON line for each accepted or refused write,
//! each read of request records by an admin, and each refusal, naming the
//! caller's certificate identity, the call, its ids, its outcome and its
//! correlation id; nothing of a certificate or a key. `qm audit tail`
//! reads it back.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qm_client::proto::api::*;
use serde_json::Value;
use support::pki::{as_holder, start_tls_cluster, Pki};
use support::{provider, request, TEST_TIMEOUT};
use tonic::Code;

/// A tiny rotation limit would split the lines of one test over files; the
/// test reads the current file only, so the limit is the smallest allowed
/// and the test writes far less.
const AUDIT_FILES_KEPT: &str = "2";

fn audit_file(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("audit-{id}.log"))
}

/// The records in `file` once it holds at least `count` (the writer thread
/// flushes a moment after each call).
async fn records(file: &Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let records: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
        if records.len() >= count || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one record of `call` with `outcome` (panics if there is not exactly one).
fn the_record<'a>(records: &'a [Value], call: &str, outcome: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|record| record["call"] == call && record["outcome"] == outcome)
        .collect();
    assert_eq!(1, found.len(), "{call} {outcome}: {records:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_and_refused_calls_are_audited_by_the_replica_that_received_them() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        let logs = tempfile::tempdir().expect("tempdir");
        let audit_log = format!("{}/audit-{{id}}.log", logs.path().display());
        let (cluster, leader) = start_tls_cluster(&pki, &["--audit-log", &audit_log, "--audit-log-files-kept", AUDIT_FILES_KEPT]).await;
        let mut admin = as_holder(&leader, &pki, "admin").await;
        let leader_id = admin
            .cluster_status(ClusterStatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .leader_id
            .expect("a leader");

        // --- accepted writes: a provider registers, a consumer allocates with its own correlation id
        let mut node_a = as_holder(&leader, &pki, "node_a").await;
        node_a.register_provider(provider("node_a", 2)).await.expect("registers");
        let mut team_a = as_holder(&leader, &pki, "team-a").await;
        let mut allocate = tonic::Request::new(AllocateRequest {
            request: Some(request("agent_1", 1)),
        });
        allocate
            .metadata_mut()
            .insert(qm_client::wire::CORRELATION_ID_HEADER, "trace-42".parse().unwrap());
        let granted = team_a.allocate(allocate).await.expect("allocates").into_inner();

        // --- refused: the wrong role (the guard), another namespace (the handler), an unknown id
        let refused = team_a
            .add_replica(AddReplicaRequest {
                id: 9,
                addr: "127.0.0.1:1".into(),
                learner_only: true,
            })
            .await;
        assert_eq!(Code::PermissionDenied, refused.unwrap_err().code());
        let refused = team_a
            .list(ListRequest {
                namespace: "team-b".into(),
                ..Default::default()
            })
            .await;
        assert_eq!(Code::PermissionDenied, refused.unwrap_err().code());
        let mut team_b = as_holder(&leader, &pki, "team-b").await;
        let hidden = team_b
            .release(ReleaseRequest {
                id: granted.allocation_id.clone(),
            })
            .await;
        assert_eq!(Code::NotFound, hidden.unwrap_err().code());

        // --- reads: an admin's list is recorded, a consumer's own is not
        admin.list(ListRequest::default()).await.expect("admin lists");
        team_a.list(ListRequest::default()).await.expect("consumer lists");

        // --- the leader's file holds exactly these, in the order they were answered
        let file = audit_file(logs.path(), leader_id);
        let records = records(&file, 6).await;
        let calls: Vec<(&str, &str)> = records
            .iter()
            .map(|record| (record["call"].as_str().unwrap(), record["outcome"].as_str().unwrap()))
            .collect();
        assert_eq!(
            vec![
                ("RegisterProvider", "ok"),
                ("Allocate", "ok"),
                ("AddReplica", "denied"),
                ("List", "denied"),
                ("Release", "error"),
                ("List", "ok"),
            ],
            calls
        );
        for record in &records {
            assert_eq!(leader_id, record["replica"], "{record}");
            assert_eq!("grpc", record["transport"], "{record}");
            assert_eq!(true, record["caller"]["tls"], "{record}");
        }

        let allocated = the_record(&records, "Allocate", "ok");
        assert_eq!("trace-42", allocated["correlation_id"]);
        assert_eq!(
            serde_json::json!({"name": "agent-team-a", "role": "resource_consumer", "namespace": "team-a", "tls": true}),
            allocated["caller"]
        );
        assert_eq!(granted.request_id, allocated["ids"]["request_id"]);
        assert_eq!(granted.allocation_id, allocated["ids"]["allocation_id"]);
        assert_eq!("node_a", allocated["ids"]["provider_id"]);
        assert_eq!("agent_1", allocated["ids"]["requester_id"]);

        let denied = the_record(&records, "AddReplica", "denied");
        assert_eq!("permission_denied", denied["code"]);
        assert_eq!("9", denied["ids"]["replica_id"]);
        assert_eq!("agent-team-a", denied["caller"]["name"]);
        assert!(denied["message"].as_str().unwrap().contains("admin"), "{denied}");

        let hidden = the_record(&records, "Release", "error");
        assert_eq!("not_found", hidden["code"]);
        assert_eq!("team-b", hidden["caller"]["namespace"]);
        assert_eq!(
            granted.allocation_id, hidden["correlation_id"],
            "without a header, the id the call is about"
        );

        let admin_read = the_record(&records, "List", "ok");
        assert_eq!("admin", admin_read["caller"]["role"]);

        // --- nothing of a certificate or a key, and nothing on the replicas that did not receive the calls
        let text = std::fs::read_to_string(&file).expect("audit file");
        for secret in ["BEGIN", "PRIVATE", "CERTIFICATE"] {
            assert!(!text.contains(secret), "{secret} in the audit trail:\n{text}");
        }
        for id in (1..=3).filter(|id| *id != leader_id) {
            let other = std::fs::read_to_string(audit_file(logs.path(), id)).unwrap_or_default();
            assert!(other.is_empty(), "replica {id} recorded calls it did not receive:\n{other}");
        }

        // --- qm audit tail reads it back: the last lines, filtered, as JSON or one line each
        let tail = |args: &[&str]| {
            let output = std::process::Command::new(qm_testkit::cli_binary())
                .args(["audit", "tail"])
                .arg(&file)
                .args(args)
                .output()
                .expect("qm runs");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).expect("utf-8")
        };
        let denied_lines = tail(&["--outcome", "denied", "--output", "json"]);
        assert_eq!(2, denied_lines.lines().count(), "{denied_lines}");
        let last = tail(&["-n", "1"]);
        assert!(
            last.trim_end().ends_with("List ok admin/admin records=1") && last.contains(&format!(" r{leader_id} grpc ")),
            "{last}"
        );
        let refused_line = tail(&["--call", "AddReplica"]);
        assert!(
            refused_line
                .contains("AddReplica denied(permission_denied) resource_consumer/agent-team-a ns=team-a addr=127.0.0.1:1 replica_id=9"),
            "{refused_line}"
        );
        drop(cluster);
    })
    .await
    .expect("test timed out");
}
