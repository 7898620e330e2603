//! Capability policies on real replicas (TLS): identities × capabilities ×
//! calls. Each refusal is PERMISSION_DENIED naming the capability, leaves
//! the applied index where it was and is in the audit trail; each allowed
//! call succeeds (and is in the audit trail too). One cluster for the
//! whole matrix; and `qm policy bind`/`unbind`, each one log entry, on
//! another.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use qm_client::proto::api::quartermaster_client::QuartermasterClient;
use qm_client::proto::api::*;
use qm_client::tls::{Identity, Role};
use serde_json::Value;
use support::pki::{as_holder, start_tls_cluster, Pki};
use support::TEST_TIMEOUT;
use tonic::transport::Channel;
use tonic::Code;

type Client = QuartermasterClient<Channel>;

fn provider(provider_id: &str, zone: &str, cores: u32) -> RegisterProviderRequest {
    RegisterProviderRequest {
        labels: HashMap::from([("zone".to_owned(), zone.to_owned())]),
        ..support::provider(provider_id, cores)
    }
}

fn ask(kinds: &[(&str, i64)], priority: i64, on: Option<&str>) -> AllocateRequest {
    AllocateRequest {
        request: Some(ResourceRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            requester_id: "worker".into(),
            resource_requirements: kinds.iter().map(|(kind, n)| (kind.to_string(), *n)).collect(),
            priority,
            constraints: on.map(|provider_id| Constraints {
                provider_id: provider_id.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn binding_cert(name: &str) -> PolicyBinding {
    PolicyBinding {
        cert_name: name.into(),
        ..Default::default()
    }
}

fn binding_role(role: &str, namespace: &str) -> PolicyBinding {
    PolicyBinding {
        role: role.into(),
        namespace: namespace.into(),
        ..Default::default()
    }
}

fn limits(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
    pairs.iter().map(|(kind, n)| (kind.to_string(), *n)).collect()
}

async fn applied_index(admin: &mut Client) -> u64 {
    admin
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .applied_index
}

/// `call` is refused with PERMISSION_DENIED whose message is `expected`,
/// and nothing reached the log.
async fn refused(admin: &mut Client, client: &mut Client, call: AllocateRequest, expected: &str) {
    let before = applied_index(admin).await;
    let status = client.allocate(call).await.expect_err("refused");
    assert_eq!((Code::PermissionDenied, expected), (status.code(), status.message()), "{status:?}");
    assert_eq!(before, applied_index(admin).await, "a refused allocate reached the log: {expected}");
}

/// `call` is granted; the provider it landed on.
async fn granted(client: &mut Client, call: AllocateRequest) -> String {
    let reply = client.allocate(call).await.expect("allowed").into_inner();
    assert_eq!(AllocationStatus::Allocated as i32, reply.status, "{reply:?}");
    reply.provider_id
}

async fn audit_records(file: &Path, count: usize) -> Vec<Value> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capability_refuses_by_name_and_allows_within_it() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        let consumer = |name: &str| Identity::new(Role::ResourceConsumer, name, Some("team-a".into())).unwrap();
        pki.issue("node_b", Identity::new(Role::ResourceProvider, "node_b", None).unwrap());
        pki.issue("alice", consumer("alice"));
        pki.issue("dave", consumer("dave"));
        pki.issue(
            "carol",
            consumer("carol").with_capability("qm-capability:kinds=cpu_cores;max_per_request=cpu_cores:1"),
        );
        let logs = tempfile::tempdir().expect("tempdir");
        let audit_log = format!("{}/audit-{{id}}.log", logs.path().display());
        let (cluster, leader) = start_tls_cluster(&pki, &["--audit-log", &audit_log]).await;
        let mut admin = as_holder(&leader, &pki, "admin").await;
        let leader_id = admin.cluster_status(ClusterStatusRequest {}).await.expect("status").into_inner().leader_id.expect("leader");

        // --- two providers in two zones; preemption on from priority 5
        as_holder(&leader, &pki, "node_a").await.register_provider(provider("node_a", "a", 4)).await.expect("node_a");
        as_holder(&leader, &pki, "node_b").await.register_provider(provider("node_b", "b", 4)).await.expect("node_b");
        admin
            .set_preemption(SetPreemptionRequest {
                namespace: String::new(),
                setting: Some(PreemptionSetting {
                    enabled: true,
                    from_priority: 5,
                }),
                never_preempted: false,
            })
            .await
            .expect("preemption on");

        // --- policies: alice by certificate name, team-a's consumers by role, dave by name
        let alice_policy = CapabilityPolicy {
            name: "alice".into(),
            kinds_limited: true,
            kinds: vec!["cpu_cores".into()],
            provider_labels: HashMap::from([("zone".to_owned(), "a".to_owned())]),
            max_per_request: limits(&[("cpu_cores", 2)]),
            max_held: limits(&[("cpu_cores", 3)]),
            priority_max: Some(4),
            may_preempt: false,
            bindings: vec![binding_cert("alice")],
            ..Default::default()
        };
        let team_policy = CapabilityPolicy {
            name: "team-a".into(),
            kinds_limited: true,
            kinds: vec!["cpu_cores".into(), "memory_gb".into()],
            providers_limited: true,
            provider_ids: vec!["node_b".into()],
            may_preempt: true,
            bindings: vec![binding_role("resource_consumer", "team-a")],
            ..Default::default()
        };
        let dave_policy = CapabilityPolicy {
            name: "dave".into(),
            may_preempt: false,
            bindings: vec![binding_cert("dave")],
            ..Default::default()
        };
        for policy in [alice_policy, team_policy, dave_policy] {
            let set = admin.set_policy(SetPolicyRequest { policy: Some(policy) }).await.expect("set").into_inner();
            assert!(set.policy.expect("answered").revision > 0);
        }
        let listed = admin.list_policies(ListPoliciesRequest { stale: false }).await.expect("list").into_inner();
        let names: Vec<&str> = listed.policies.iter().map(|policy| policy.name.as_str()).collect();
        assert_eq!(vec!["alice", "dave", "team-a"], names);

        // --- a consumer may not set policies (its role), and nothing is logged
        let mut team_a = as_holder(&leader, &pki, "team-a").await;
        let before = applied_index(&mut admin).await;
        let widened = team_a.set_policy(SetPolicyRequest {
            policy: Some(CapabilityPolicy {
                name: "mine".into(),
                may_preempt: true,
                ..Default::default()
            }),
        });
        assert_eq!(Code::PermissionDenied, widened.await.unwrap_err().code());
        assert_eq!(before, applied_index(&mut admin).await);

        // --- alice (bound by certificate name): each capability refused by name
        let mut alice = as_holder(&leader, &pki, "alice").await;
        let by_alice = "by policy \"alice\"";
        refused(&mut admin, &mut alice, ask(&[("memory_gb", 1)], 0, None), &format!("capability kinds: memory_gb not allowed {by_alice} (allowed: cpu_cores)")).await;
        refused(&mut admin, &mut alice, ask(&[("cpu_cores", 1)], 0, Some("node_b")), &format!("capability providers: provider node_b not allowed {by_alice} (the selector is zone=a)")).await;
        refused(&mut admin, &mut alice, ask(&[("cpu_cores", 3)], 0, None), &format!("capability max_per_request: 3 cpu_cores in one request not allowed {by_alice} (at most 2)")).await;
        refused(&mut admin, &mut alice, ask(&[("cpu_cores", 1)], 5, None), &format!("capability priority_max: priority 5 not allowed {by_alice} (at most 4)")).await;

        // --- alice within her capability: placed in zone a only, up to her total
        assert_eq!("node_a", granted(&mut alice, ask(&[("cpu_cores", 2)], 0, None)).await);
        refused(&mut admin, &mut alice, ask(&[("cpu_cores", 2)], 0, None), &format!("capability max_held: alice holding 4 cpu_cores not allowed {by_alice} (at most 3; it holds 2 and asks for 2 more)")).await;
        assert_eq!("node_a", granted(&mut alice, ask(&[("cpu_cores", 1)], 0, None)).await);

        // --- team-a's consumers (bound by role and namespace): only node_b
        let by_team = "by policy \"team-a\"";
        refused(&mut admin, &mut team_a, ask(&[("cpu_cores", 1)], 0, Some("node_a")), &format!("capability providers: provider node_a not allowed {by_team} (allowed: node_b)")).await;
        assert_eq!("node_b", granted(&mut team_a, ask(&[("memory_gb", 8)], 0, None)).await);

        // --- carol: team-a's policy narrowed by her certificate's URI (one core, no memory)
        let mut carol = as_holder(&leader, &pki, "carol").await;
        let by_carol = "by policy \"team-a\" narrowed by the certificate's capability URI";
        refused(&mut admin, &mut carol, ask(&[("memory_gb", 1)], 0, None), &format!("capability kinds: memory_gb not allowed {by_carol} (allowed: cpu_cores)")).await;
        refused(&mut admin, &mut carol, ask(&[("cpu_cores", 2)], 0, None), &format!("capability max_per_request: 2 cpu_cores in one request not allowed {by_carol} (at most 1)")).await;
        assert_eq!("node_b", granted(&mut carol, ask(&[("cpu_cores", 1)], 0, None)).await);

        // --- dave may not preempt: node_a is full (alice's 3 and one more), priority 9 would preempt
        let mut team_b = as_holder(&leader, &pki, "team-b").await;
        assert_eq!("node_a", granted(&mut team_b, ask(&[("cpu_cores", 1)], 0, Some("node_a"))).await, "no policy: the role's rules");
        let mut dave = as_holder(&leader, &pki, "dave").await;
        refused(&mut admin, &mut dave, ask(&[("cpu_cores", 1)], 9, Some("node_a")), "capability preempt: preempting 1 allocation(s) not allowed by policy \"dave\" (priority 9 would preempt; this identity may not)").await;
        // ... and its dry run says the same
        let preview = dave.preview_allocate(ask(&[("cpu_cores", 1)], 9, Some("node_a"))).await.unwrap_err();
        assert_eq!(Code::PermissionDenied, preview.code());
        // ... while a request that preempts nothing is allowed
        assert_eq!("node_b", granted(&mut dave, ask(&[("cpu_cores", 1)], 9, Some("node_b"))).await);

        // --- the policy read back, and deleted: alice falls back to the next binding, team-a's by role
        let alice_read = admin.get_policy(GetPolicyRequest { name: "alice".into(), stale: false }).await.expect("get").into_inner();
        assert_eq!(vec!["cpu_cores".to_owned()], alice_read.policy.expect("policy").kinds);
        let deleted = admin.delete_policy(DeletePolicyRequest { name: "alice".into() }).await.expect("delete").into_inner();
        assert!(deleted.existed);
        assert_eq!("node_b", granted(&mut alice, ask(&[("memory_gb", 1)], 0, None)).await);

        // --- the audit trail: a line for every call above, the refusals naming the capability
        let records = audit_records(&audit_file(logs.path(), leader_id), 30).await;
        let allocates: Vec<(&str, &str, &str)> = records
            .iter()
            .filter(|record| record["call"] == "Allocate")
            .map(|record| {
                (
                    record["caller"]["name"].as_str().unwrap(),
                    record["outcome"].as_str().unwrap(),
                    record["message"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let summary: Vec<(&str, &str, Option<&str>)> = allocates
            .iter()
            .map(|(name, outcome, message)| (*name, *outcome, message.split(':').next().filter(|_| *outcome != "ok")))
            .collect();
        assert_eq!(
            vec![
                ("alice", "denied", Some("capability kinds")),
                ("alice", "denied", Some("capability providers")),
                ("alice", "denied", Some("capability max_per_request")),
                ("alice", "denied", Some("capability priority_max")),
                ("alice", "ok", None),
                ("alice", "denied", Some("capability max_held")),
                ("alice", "ok", None),
                ("agent-team-a", "denied", Some("capability providers")),
                ("agent-team-a", "ok", None),
                ("carol", "denied", Some("capability kinds")),
                ("carol", "denied", Some("capability max_per_request")),
                ("carol", "ok", None),
                ("agent-team-b", "ok", None),
                ("dave", "denied", Some("capability preempt")),
                ("dave", "ok", None),
                ("alice", "ok", None),
            ],
            summary,
            "{records:#?}"
        );
        let policy_calls: Vec<(&str, &str)> = records
            .iter()
            .filter(|record| record["call"].as_str().unwrap().contains("Polic"))
            .map(|record| (record["call"].as_str().unwrap(), record["outcome"].as_str().unwrap()))
            .collect();
        assert_eq!(
            vec![
                ("SetPolicy", "ok"),
                ("SetPolicy", "ok"),
                ("SetPolicy", "ok"),
                ("ListPolicies", "ok"),
                ("SetPolicy", "denied"),
                ("GetPolicy", "ok"),
                ("DeletePolicy", "ok"),
            ],
            policy_calls
        );
        drop(cluster);
    })
    .await
    .expect("test timed out");
}

fn audit_file(dir: &Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("audit-{id}.log"))
}

/// `qm <args>` (the real CLI) against `cluster` as `<stem>.crt`, started.
fn spawn_qm_as(cluster: &qm_testkit::LocalCluster, pki: &Pki, stem: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(qm_testkit::cli_binary())
        .arg("--endpoints")
        .arg(cluster.endpoints().join(","))
        .arg("--tls-cert")
        .arg(pki.path(&format!("{stem}.crt")))
        .arg("--tls-key")
        .arg(pki.path(&format!("{stem}.key")))
        .arg("--tls-ca")
        .arg(pki.path("ca.crt"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("qm starts")
}

/// `qm <args>` against `cluster` as `<stem>.crt`, to its end.
fn qm_as(cluster: &qm_testkit::LocalCluster, pki: &Pki, stem: &str, args: &[&str]) -> std::process::Output {
    spawn_qm_as(cluster, pki, stem, args).wait_with_output().expect("qm runs")
}

/// The policy events of a watch, as (type, binding or bindings count), until `count` arrived.
async fn policy_events(stream: &mut tonic::Streaming<EventMessage>, count: usize) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = stream.message().await.expect("the watch goes on").expect("an event");
        if event.r#type.starts_with("policy_") {
            let json: Value = serde_json::from_str(&event.json).expect("JSON");
            let detail = match event.r#type.as_str() {
                "policy_set" => format!("bindings={}", json["bindings"]),
                "policy_deleted" => String::new(),
                _ => json["binding"].to_string(),
            };
            seen.push((event.r#type, detail));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qm_policy_bind_and_unbind_change_one_binding_each_even_at_once_and_are_events() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        let consumer = |name: &str| Identity::new(Role::ResourceConsumer, name, Some("team-a".into())).unwrap();
        pki.issue("alice", consumer("alice"));
        pki.issue("bob", consumer("bob"));
        let logs = tempfile::tempdir().expect("tempdir");
        let audit_log = format!("{}/audit-{{id}}.log", logs.path().display());
        let (cluster, leader) = start_tls_cluster(&pki, &["--audit-log", &audit_log]).await;
        let mut admin = as_holder(&leader, &pki, "admin").await;
        as_holder(&leader, &pki, "node_a")
            .await
            .register_provider(provider("node_a", "a", 4))
            .await
            .expect("node_a");
        let mut watching = admin
            .watch(WatchRequest {
                from_revision: 1,
                ..Default::default()
            })
            .await
            .expect("an admin watches")
            .into_inner();

        // --- a policy with no binding yet: CPU only
        let team_a = CapabilityPolicy {
            name: "team-a".into(),
            kinds_limited: true,
            kinds: vec!["cpu_cores".into()],
            may_preempt: true,
            ..Default::default()
        };
        admin.set_policy(SetPolicyRequest { policy: Some(team_a) }).await.expect("set");

        // --- two admins bind at once, with qm: both bindings land
        let binding_alice = spawn_qm_as(&cluster, &pki, "admin", &["policy", "bind", "team-a", "--cert-name", "alice"]);
        let binding_bob = spawn_qm_as(&cluster, &pki, "admin", &["policy", "bind", "team-a", "--cert-name", "bob"]);
        for binding in [binding_alice, binding_bob] {
            let output = binding.wait_with_output().expect("qm runs");
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        }
        let read = qm_as(&cluster, &pki, "admin", &["policy", "get", "team-a", "--output", "json"]);
        let read: Value = serde_json::from_slice(&read.stdout).expect("JSON");
        assert_eq!(
            (
                serde_json::json!([{"cert_name": "alice"}, {"cert_name": "bob"}]),
                serde_json::json!(3)
            ),
            (read[0]["bindings"].clone(), read[0]["revision"].clone()),
            "{read}"
        );

        // --- bound, alice may not ask for memory; unbound, she may
        let mut alice = as_holder(&leader, &pki, "alice").await;
        refused(
            &mut admin,
            &mut alice,
            ask(&[("memory_gb", 1)], 0, None),
            "capability kinds: memory_gb not allowed by policy \"team-a\" (allowed: cpu_cores)",
        )
        .await;
        let unbound = qm_as(&cluster, &pki, "admin", &["policy", "unbind", "team-a", "--cert-name", "alice"]);
        assert!(unbound.status.success(), "{}", String::from_utf8_lossy(&unbound.stderr));
        let table = String::from_utf8_lossy(&unbound.stdout);
        assert!(table.contains("cert-name bob") && !table.contains("cert-name alice"), "{table}");
        granted(&mut alice, ask(&[("memory_gb", 1)], 0, None)).await;

        // --- refusals: no such policy; not an admin (and nothing reaches the log)
        let unknown = qm_as(&cluster, &pki, "admin", &["policy", "bind", "nobody", "--cert-name", "alice"]);
        assert!(!unknown.status.success());
        assert!(
            String::from_utf8_lossy(&unknown.stderr).contains("no capability policy \"nobody\""),
            "{unknown:?}"
        );
        let before = applied_index(&mut admin).await;
        let mut bob = as_holder(&leader, &pki, "bob").await;
        let denied = bob
            .bind_policy(PolicyBindingRequest {
                name: "team-a".into(),
                binding: Some(binding_cert("bob-2")),
            })
            .await
            .expect_err("a consumer may not bind");
        assert_eq!(Code::PermissionDenied, denied.code(), "{denied:?}");
        assert_eq!(before, applied_index(&mut admin).await);

        // --- the admin's watch saw every change, in order; a consumer's sees none of them
        let mut seen = policy_events(&mut watching, 4).await;
        seen[1..3].sort();
        assert_eq!(
            vec![
                ("policy_set".to_owned(), "bindings=0".to_owned()),
                ("policy_bound".to_owned(), r#"{"cert_name":"alice"}"#.to_owned()),
                ("policy_bound".to_owned(), r#"{"cert_name":"bob"}"#.to_owned()),
                ("policy_unbound".to_owned(), r#"{"cert_name":"alice"}"#.to_owned()),
            ],
            seen
        );
        let mut bobs_watch = bob
            .watch(WatchRequest {
                from_revision: 1,
                ..Default::default()
            })
            .await
            .expect("a consumer watches")
            .into_inner();
        loop {
            let event = bobs_watch.message().await.expect("the watch goes on").expect("an event");
            assert!(!event.r#type.starts_with("policy_"), "a consumer saw {event:?}");
            // alice's grant (bob's namespace too) came after every policy change: reaching it, bob's watch passed them all
            if event.r#type == "allocation_granted" {
                break;
            }
        }

        // --- the audit trail (of whichever replica qm reached; a follower's NotLeader left out):
        // each bind and unbind with its binding, the refusals too
        let binding_records = || {
            let mut records: Vec<Value> = Vec::new();
            for id in 1..=3 {
                let text = std::fs::read_to_string(audit_file(logs.path(), id)).unwrap_or_default();
                records.extend(text.lines().map(|line| serde_json::from_str::<Value>(line).expect("a JSON line")));
            }
            let mut bindings: Vec<(String, String, String)> = records
                .iter()
                .filter(|record| {
                    ["BindPolicy", "UnbindPolicy"].contains(&record["call"].as_str().unwrap()) && record["code"] != "unavailable"
                })
                .map(|record| {
                    let text = |value: &Value| value.as_str().unwrap_or("").to_owned();
                    (text(&record["call"]), text(&record["outcome"]), text(&record["ids"]["cert_name"]))
                })
                .collect();
            bindings.sort();
            (bindings, records)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (bindings, records) = loop {
            let (bindings, records) = binding_records();
            if bindings.len() >= 5 || Instant::now() > deadline {
                break (bindings, records);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let expected: Vec<(String, String, String)> = [
            ("BindPolicy", "denied", "bob-2"),
            ("BindPolicy", "error", "alice"),
            ("BindPolicy", "ok", "alice"),
            ("BindPolicy", "ok", "bob"),
            ("UnbindPolicy", "ok", "alice"),
        ]
        .iter()
        .map(|(call, outcome, name)| (call.to_string(), outcome.to_string(), name.to_string()))
        .collect();
        assert_eq!(expected, bindings, "{records:#?}");
        drop(cluster);
    })
    .await
    .expect("test timed out");
}
