//! `qm quota`, `qm preemption` and `qm allocate --dry-run` end to end: the
//! `qm` binary against a real `qm-node` cluster of its own (quotas are
//! cluster-wide state, so not the cluster the other CLI tests share).

use std::collections::BTreeMap;
use std::process::Output;

use qm_client::{Client, ClientConfig};
use qm_state_machine::{ProviderRegistration, ResourceSpec};
use qm_testkit::test_cluster::{bounded, QUIET_PROVIDERS};
use qm_testkit::{node_binary, LocalCluster};
use serde_json::Value;

fn qm(endpoints: &str, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qm"))
        .args(["--endpoints", endpoints, "--output", "json"])
        .args(args)
        .env_remove("QM_ENDPOINTS")
        .env_remove("QM_OUTPUT")
        .output()
        .expect("qm runs")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "qm failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON")
}

fn allocate(endpoints: &str, namespace: &str, priority: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "allocate",
        "--requester",
        "worker",
        "--namespace",
        namespace,
        "--cpu-cores",
        "1",
        "--priority",
        priority,
    ];
    args.extend_from_slice(extra);
    json_of(&qm(endpoints, &args))
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_preemption_and_the_dry_run_from_the_command_line() {
    bounded(async {
        let cluster = LocalCluster::start(&node_binary(), 1, &QUIET_PROVIDERS)
            .await
            .expect("cluster starts");
        let endpoints = cluster.endpoints().join(",");
        let client = Client::new(ClientConfig {
            endpoints: cluster.endpoints(),
            ..ClientConfig::default()
        })
        .expect("client");
        let registration = ProviderRegistration {
            provider_id: "node_1".to_owned(),
            labels: BTreeMap::new(),
            resources: (1..=4)
                .map(|core| ResourceSpec {
                    resource_id: format!("cpu_{core}"),
                    kind: "cpu_cores".to_owned(),
                    capacity: 1,
                    labels: BTreeMap::new(),
                    sharing: None,
                })
                .collect(),
            confirms_allocations: false,
            address: None,
            port: None,
        };
        client.register_provider(&registration).await.expect("registers");

        // --- qm quota set: team-a may hold 2 cores
        let set = json_of(&qm(&endpoints, &["quota", "set", "team-a", "cpu_cores=2"]));
        assert_eq!(2, set["namespaces"][0]["quota"]["cpu_cores"], "{set}");

        // --- two allocations fit, the third waits for the quota
        for _ in 0..2 {
            assert_eq!("allocated", allocate(&endpoints, "team-a", "0", &[])["status"]);
        }
        let third = allocate(&endpoints, "team-a", "0", &[]);
        assert_eq!("queued", third["status"], "{third}");

        // --- qm quota get: use against quota
        let got = json_of(&qm(&endpoints, &["quota", "get", "team-a"]));
        let line = &got["namespaces"][0];
        assert_eq!(
            (2, 2, 1),
            (
                line["held"]["cpu_cores"].as_u64().unwrap(),
                line["quota"]["cpu_cores"].as_u64().unwrap(),
                line["queued"].as_u64().unwrap()
            ),
            "{got}"
        );

        // --- team-b fills the rest; preemption on from priority 5
        for _ in 0..2 {
            assert_eq!("allocated", allocate(&endpoints, "team-b", "0", &[])["status"]);
        }
        let preemption = json_of(&qm(&endpoints, &["preemption", "set", "--from-priority", "5"]));
        assert_eq!(5, preemption["cluster_preemption"]["from_priority"], "{preemption}");

        // --- the dry run names one victim (the newest of the lowest priority) and allocates nothing
        let preview = allocate(&endpoints, "ops", "5", &["--dry-run"]);
        assert_eq!("allocated", preview["status"], "{preview}");
        let victims = preview["would_preempt"].as_array().expect("victims");
        assert_eq!(1, victims.len(), "{preview}");
        assert_eq!(
            ("team-b", 0),
            (victims[0]["namespace"].as_str().unwrap(), victims[0]["priority"].as_i64().unwrap())
        );
        let list = json_of(&qm(&endpoints, &["quota", "list"]));
        assert!(
            list["namespaces"].as_array().unwrap().iter().all(|line| line["namespace"] != "ops"),
            "{list}"
        );

        // --- a bad limit is bad input (exit 2), naming the field; delete lifts the quota
        let bad = qm(&endpoints, &["quota", "set", "team-a", "cpu_cores=lots"]);
        assert_eq!(Some(2), bad.status.code());
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("limits.cpu_cores"),
            "{}",
            String::from_utf8_lossy(&bad.stderr)
        );
        let deleted = json_of(&qm(&endpoints, &["quota", "delete", "team-a"]));
        assert_eq!(
            Some(true),
            deleted["namespaces"][0]["quota"].as_object().map(|quota| quota.is_empty()),
            "{deleted}"
        );
    })
    .await
}
