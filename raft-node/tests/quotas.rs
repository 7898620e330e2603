//! Quotas and preemption on a real TLS cluster of three `qm-node`s: only an
//! admin sets quotas; two namespaces allocate concurrently and one reaches
//! its quota without passing it (checked from the table afterwards); a
//! high-priority request previews, then preempts, and its grant is
//! confirmed only once the provider confirmed the victims' release.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use qm_ca::{CertAuthority, CertSpec, Validity};
use qm_client::convert::{state_name, status_name};
use qm_client::proto::api;
use qm_client::tls::{Identity, Role, TlsConfig};
use qm_client::{Client, ClientConfig, Confirmation, ConflictKind, Consistency, Error};
use qm_state_machine::{PreemptionSetting, ProviderRegistration, ResourceRequest, ResourceSpec};
use qm_testkit::LocalCluster;
use serde_json::Number;
use support::{node_binary, QUIET_PROVIDERS, TEST_TIMEOUT};

/// The provider's cores: room for team-a's quota and team-b's load at once.
const CORES: u32 = 12;
/// team-a's quota of cpu_cores.
const TEAM_A_QUOTA: u64 = 5;
/// team-a's concurrent one-core requests: more than its quota.
const TEAM_A_REQUESTS: usize = 12;
/// team-b's concurrent one-core requests (it has no quota): with team-a's
/// five, they fill the provider.
const TEAM_B_REQUESTS: usize = 7;

/// A CA, the replicas' shared certificate, an admin, the provider `node_a`
/// and consumers of `team-a` and `team-b`.
fn generate_pki(dir: &Path) {
    let ca = CertAuthority::generate("quota test CA", Validity::days_from_now(1)).expect("CA");
    ca.save(dir).expect("save CA");
    let issue = |stem: &str, spec: CertSpec| ca.issue(&spec).expect("issue").save(dir, stem).expect("save");
    let replica = Identity::new(Role::ResourceManager, "replica", None).unwrap();
    issue("replica", CertSpec::new(replica).with_hosts(["127.0.0.1", "localhost"]));
    issue("admin", CertSpec::new(Identity::new(Role::Admin, "admin", None).unwrap()));
    issue(
        "node_a",
        CertSpec::new(Identity::new(Role::ResourceProvider, "node_a", None).unwrap()),
    );
    for namespace in ["team-a", "team-b"] {
        let consumer = Identity::new(Role::ResourceConsumer, format!("agent-{namespace}"), Some(namespace.into())).unwrap();
        issue(namespace, CertSpec::new(consumer));
    }
}

fn client_of(cluster: &LocalCluster, dir: &Path, stem: &str) -> Client {
    Client::new(ClientConfig {
        endpoints: cluster.endpoints(),
        tls: Some(TlsConfig::in_dir(dir, stem)),
        ..ClientConfig::default()
    })
    .expect("client")
}

fn one_core(namespace: &str, priority: i64) -> ResourceRequest {
    ResourceRequest {
        requester_id: Some(format!("worker-{namespace}")),
        namespace: Some(namespace.to_owned()),
        resource_requirements: Some(BTreeMap::from([("cpu_cores".to_owned(), Number::from(1))])),
        priority: Some(Number::from(priority)),
        ..ResourceRequest::default()
    }
}

/// Waits until the admin can read through a leader.
async fn wait_until_served(admin: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.list_quotas("", Consistency::Linearizable).await.is_err() {
        assert!(Instant::now() < deadline, "no leader served a read within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn namespace_line<'a>(reply: &'a api::ListQuotasReply, namespace: &str) -> &'a api::NamespaceQuota {
    reply
        .namespaces
        .iter()
        .find(|line| line.namespace == namespace)
        .unwrap_or_else(|| panic!("{namespace} missing from {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_holds_under_concurrent_load_and_preemption_waits_for_the_release() {
    tokio::time::timeout(TEST_TIMEOUT, scenario())
        .await
        .expect("within the test's time");
}

async fn scenario() {
    // --- a TLS cluster of three, certificates for every role
    let pki = tempfile::Builder::new().prefix("qm-quota-pki-").tempdir().expect("tempdir");
    generate_pki(pki.path());
    let mut args: Vec<String> = QUIET_PROVIDERS.iter().map(|arg| arg.to_string()).collect();
    for (flag, file) in [("--tls-cert", "replica.crt"), ("--tls-key", "replica.key"), ("--tls-ca", "ca.crt")] {
        args.push(flag.to_owned());
        args.push(pki.path().join(file).to_str().expect("utf-8").to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = LocalCluster::configure(node_binary(), 3, &args).expect("layout");
    cluster.kill_after(TEST_TIMEOUT);
    for id in 1..=3 {
        cluster.start_replica(id).expect("start");
    }
    let admin = client_of(&cluster, pki.path(), "admin");
    let provider = client_of(&cluster, pki.path(), "node_a");
    let team_a = client_of(&cluster, pki.path(), "team-a");
    let team_b = client_of(&cluster, pki.path(), "team-b");
    wait_until_served(&admin).await;

    // --- a provider whose agent confirms grants and releases
    let registration = ProviderRegistration {
        provider_id: "node_a".to_owned(),
        labels: BTreeMap::new(),
        resources: (1..=CORES)
            .map(|core| ResourceSpec {
                resource_id: format!("cpu_{core}"),
                kind: "cpu_cores".to_owned(),
                capacity: 1,
                labels: BTreeMap::new(),
                sharing: None,
            })
            .collect(),
        confirms_allocations: true,
        address: None,
        port: None,
    };
    provider.register_provider(&registration).await.expect("registers");

    // --- a consumer may not set its own quota; the admin may
    let limits = BTreeMap::from([("cpu_cores".to_owned(), TEAM_A_QUOTA)]);
    match team_a.set_quota("team-a", &limits).await {
        Err(Error::Server {
            code: tonic::Code::PermissionDenied,
            ..
        }) => {}
        other => panic!("a consumer set a quota: {other:?}"),
    }
    let reply = admin.set_quota("team-a", &limits).await.expect("the admin sets it");
    assert_eq!(Some(&TEAM_A_QUOTA), reply.namespace.expect("the namespace").quota.get("cpu_cores"));

    // --- both namespaces allocate at once: team-a asks for more than its quota
    let mut tasks = Vec::new();
    for (client, namespace, count) in [(&team_a, "team-a", TEAM_A_REQUESTS), (&team_b, "team-b", TEAM_B_REQUESTS)] {
        for _ in 0..count {
            let client = client.clone();
            tasks.push(tokio::spawn(async move { client.allocate(one_core(namespace, 0)).await }));
        }
    }
    for task in tasks {
        task.await.expect("joins").expect("every allocate is answered");
    }

    // --- afterwards, from the table: team-a at its quota exactly, the rest waiting for it
    let quotas = admin.list_quotas("", Consistency::Linearizable).await.expect("reads");
    let line = namespace_line(&quotas, "team-a");
    assert_eq!(Some(&TEAM_A_QUOTA), line.held.get("cpu_cores"), "{line:?}");
    assert_eq!((TEAM_A_REQUESTS as u64) - TEAM_A_QUOTA, line.queued);
    assert_eq!(
        Some(&(TEAM_B_REQUESTS as u64)),
        namespace_line(&quotas, "team-b").held.get("cpu_cores")
    );
    let team_a_records = admin
        .list(api::ListRequest {
            namespace: "team-a".to_owned(),
            ..Default::default()
        })
        .await
        .expect("lists");
    let holding = team_a_records
        .iter()
        .filter(|record| !record.grants.is_empty() && record.reason.is_empty())
        .count();
    assert_eq!(TEAM_A_QUOTA as usize, holding, "{team_a_records:?}");
    assert!(team_a_records
        .iter()
        .filter(|record| record.grants.is_empty())
        .all(|record| record.reason.starts_with("quota_exceeded")));
    // A consumer reads its own namespace only.
    match team_b.list_quotas("team-a", Consistency::Linearizable).await {
        Err(Error::Server {
            code: tonic::Code::PermissionDenied,
            ..
        }) => {}
        other => panic!("team-b read team-a's quota: {other:?}"),
    }
    // The provider confirms every grant so far.
    for record in admin.list(api::ListRequest::default()).await.expect("lists") {
        if !record.grants.is_empty() {
            provider
                .confirm(&record.allocation_id, "node_a", Confirmation::Allocation)
                .await
                .expect("confirms");
        }
    }

    // --- preemption on from priority 10; team-b's urgent request previews two victims
    admin
        .set_preemption(None, Some(PreemptionSetting::FromPriority(10)), false)
        .await
        .expect("sets");
    let mut urgent = one_core("team-b", 10);
    urgent.resource_requirements = Some(BTreeMap::from([("cpu_cores".to_owned(), Number::from(2))]));
    let preview = team_b.preview_allocate(urgent.clone()).await.expect("previews");
    assert_eq!(api::AllocationStatus::Allocated as i32, preview.status, "{preview:?}");
    assert_eq!(2, preview.victims.len(), "{preview:?}");
    assert!(preview.victims.iter().all(|victim| victim.priority == 0));

    // --- it preempts; its grant waits for the provider to confirm the victims' release
    let granted = team_b.allocate(urgent).await.expect("allocates");
    assert_eq!("allocated", status_name(&granted));
    match provider.confirm(&granted.allocation_id, "node_a", Confirmation::Allocation).await {
        Err(Error::Conflict {
            kind: ConflictKind::FailedPrecondition,
            ..
        }) => {}
        other => panic!("the preemptor was confirmed before its victims' release: {other:?}"),
    }
    for victim in &preview.victims {
        provider
            .confirm(&victim.allocation_id, "node_a", Confirmation::Deallocation)
            .await
            .expect("the release is confirmed");
    }
    let confirmed = provider
        .confirm(&granted.allocation_id, "node_a", Confirmation::Allocation)
        .await
        .expect("confirmed after the victims");
    assert_eq!("monitoring", state_name(&confirmed));

    // --- and team-a is still within its quota
    let quotas = admin.list_quotas("team-a", Consistency::Linearizable).await.expect("reads");
    assert!(namespace_line(&quotas, "team-a").held.get("cpu_cores").copied().unwrap_or(0) <= TEAM_A_QUOTA);
}
