//! Mutual TLS and authorization on real replicas: strangers (no certificate,
//! another CA, an expired certificate) are cut off by the handshake, a
//! certificate of the wrong role is refused per call, consumers are held to
//! their namespace, providers to their own id, and only replicas take part in
//! Raft. Every refusal leaves the log as it was.
//!
//! Certificates are made here with the code behind `qm certs`. The replicas
//! share one resource_manager certificate valid for 127.0.0.1, because
//! `LocalCluster` gives every replica the same flags.

mod support;

use qm_api::convert::{state_name, status_name};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use openraft::raft::AppendEntriesRequest;
use openraft::{CommittedLeaderId, Vote};
use qm_ca::{CertAuthority, CertSpec, Validity};
use qm_client::proto::api::quartermaster_client::QuartermasterClient;
use qm_client::proto::api::*;
use qm_client::tls::{Identity, Role, TlsConfig};
use qm_raft_node::proto::raft_client::RaftClient;
use qm_raft_node::proto::RaftMessage;
use qm_raft_node::types::TypeConfig;
use qm_testkit::LocalCluster;
use support::{node_binary, provider, request, QUIET_PROVIDERS, TEST_TIMEOUT};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

/// One call of a test may take this long (a refused handshake is quick).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The certificates of one test: a CA and its holders, plus impostors.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// The cluster's CA, the replicas' shared certificate, an admin, providers
    /// `node_a` and `node_b`, consumers of `team-a` and `team-b`; and a
    /// consumer of `team-a` signed by another CA and one that has expired.
    fn generate() -> Pki {
        let dir = tempfile::Builder::new().prefix("qm-pki-").tempdir().expect("tempdir");
        let ca = CertAuthority::generate("test cluster CA", Validity::days_from_now(1)).expect("CA");
        ca.save(dir.path()).expect("save CA");
        let issue = |authority: &CertAuthority, stem: &str, spec: CertSpec| {
            authority.issue(&spec).expect("issue").save(dir.path(), stem).expect("save");
        };
        let replica = Identity::new(Role::ResourceManager, "replica", None).unwrap();
        issue(&ca, "replica", CertSpec::new(replica).with_hosts(["127.0.0.1", "localhost"]));
        issue(&ca, "admin", CertSpec::new(Identity::new(Role::Admin, "admin", None).unwrap()));
        for name in ["node_a", "node_b"] {
            issue(&ca, name, CertSpec::new(Identity::new(Role::ResourceProvider, name, None).unwrap()));
        }
        for namespace in ["team-a", "team-b"] {
            let consumer = Identity::new(Role::ResourceConsumer, format!("agent-{namespace}"), Some(namespace.into())).unwrap();
            issue(&ca, namespace, CertSpec::new(consumer));
        }
        let team_a = Identity::new(Role::ResourceConsumer, "agent-team-a", Some("team-a".into())).unwrap();
        let now = SystemTime::now();
        let expired = Validity {
            not_before: now - Duration::from_secs(2 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        };
        issue(&ca, "expired", CertSpec::new(team_a.clone()).with_validity(expired));
        let stranger_ca = CertAuthority::generate("another CA", Validity::days_from_now(1)).expect("CA");
        issue(&stranger_ca, "other-ca", CertSpec::new(team_a));
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `ca.crt`, `<stem>.crt`, `<stem>.key`.
    fn client(&self, stem: &str) -> TlsConfig {
        TlsConfig::in_dir(self.dir.path(), stem)
    }

    fn node_args(&self) -> Vec<String> {
        let mut args: Vec<String> = QUIET_PROVIDERS.iter().map(|arg| arg.to_string()).collect();
        for (flag, file) in [("--tls-cert", "replica.crt"), ("--tls-key", "replica.key"), ("--tls-ca", "ca.crt")] {
            args.push(flag.to_owned());
            args.push(path_arg(&self.path(file)));
        }
        args
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_owned()
}

/// A TLS cluster of three. `LocalCluster::start` probes replicas over plain
/// http, so the replicas are started one by one and the leader found over TLS.
async fn start_tls_cluster(pki: &Pki) -> (LocalCluster, String) {
    let args = pki.node_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = LocalCluster::configure(node_binary(), 3, &args).expect("layout");
    for id in 1..=3 {
        cluster.start_replica(id).expect("start");
    }
    let leader = wait_for_leader(&cluster, pki).await;
    (cluster, leader)
}

/// The leader's address, once every replica agrees on one.
async fn wait_for_leader(cluster: &LocalCluster, pki: &Pki) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for addr in cluster.endpoints() {
            let status = match connect(&addr, Some(&pki.client("admin"))).await {
                Ok(mut client) => client.cluster_status(ClusterStatusRequest {}).await.ok().map(|r| r.into_inner()),
                Err(_) => None,
            };
            views.push(status.filter(|status| status.leader_id.is_some()).map(|status| status.leader_addr));
        }
        if let Some(Some(leader)) = views.first() {
            if views.iter().all(|view| view.as_ref() == Some(leader)) {
                return leader.clone();
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader over TLS; logs:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A channel to `addr`: https with `tls`, plain http without.
async fn channel(addr: &str, tls: Option<&TlsConfig>) -> Result<Channel, String> {
    let tls = tls.map(|tls| tls.load().expect("tls files"));
    let endpoint = qm_client::tls::endpoint(addr, tls.as_ref())?.connect_timeout(CALL_TIMEOUT);
    match tokio::time::timeout(CALL_TIMEOUT, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(format!("{error:?}")),
        Err(_) => Err("connect timed out".into()),
    }
}

async fn connect(addr: &str, tls: Option<&TlsConfig>) -> Result<QuartermasterClient<Channel>, String> {
    channel(addr, tls).await.map(QuartermasterClient::new)
}

/// A client of the leader presenting `<stem>.crt`.
async fn as_holder(leader: &str, pki: &Pki, stem: &str) -> QuartermasterClient<Channel> {
    connect(leader, Some(&pki.client(stem))).await.expect("connects")
}

/// What the leader has applied: unchanged by a refused call.
async fn applied_index(leader: &str, pki: &Pki) -> u64 {
    let mut admin = as_holder(leader, pki, "admin").await;
    admin
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .applied_index
}

fn assert_code<T: std::fmt::Debug>(expected: Code, result: Result<tonic::Response<T>, tonic::Status>, what: &str) -> String {
    match result {
        Ok(reply) => panic!("{what}: expected {expected:?}, got {reply:?}"),
        Err(status) => {
            assert_eq!(expected, status.code(), "{what}: {status:?}");
            status.message().to_owned()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_wrong_roles_are_refused_and_change_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        let (cluster, leader) = start_tls_cluster(&pki).await;
        let before = applied_index(&leader, &pki).await;
        let allocate = || AllocateRequest {
            request: Some(request("agent_1", 1)),
        };

        // --- no certificate: plain http, then https trusting the CA but presenting nothing
        if let Ok(mut plain) = connect(&leader, None).await {
            assert!(plain.allocate(allocate()).await.is_err(), "plain http was served");
        }
        let anonymous = trusting_only(&pki.path("ca.crt"));
        if let Ok(endpoint) = qm_client::tls::endpoint(&leader, Some(&anonymous)) {
            if let Ok(Ok(channel)) = tokio::time::timeout(CALL_TIMEOUT, endpoint.connect()).await {
                let refused = QuartermasterClient::new(channel).allocate(allocate()).await;
                assert!(refused.is_err(), "a client without a certificate was served: {refused:?}");
            }
        }

        // --- a certificate of another CA, and an expired one: the handshake fails, no call is served
        for stem in ["other-ca", "expired"] {
            let Ok(mut client) = connect(&leader, Some(&pki.client(stem))).await else {
                continue;
            };
            // TLS 1.3: the client's half of the handshake can finish before
            // the replica has checked its certificate; the refusal then
            // arrives as an alert, and the call fails on the transport.
            match tokio::time::timeout(CALL_TIMEOUT, client.allocate(allocate())).await {
                Ok(Err(status)) => {
                    use std::error::Error as _;
                    assert!(
                        status.source().is_some(),
                        "{stem}: refused by the transport, not answered: {status:?}"
                    );
                }
                other => panic!("{stem}: the call was not refused: {other:?}"),
            }
        }

        // --- and the replica says so in its log, naming the peer
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cluster.logs().contains("TLS handshake refused") {
            assert!(
                std::time::Instant::now() < deadline,
                "no refused handshake logged: {}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logged = without_colours(&cluster.logs());
        let line = logged
            .lines()
            .find(|line| line.contains("TLS handshake refused"))
            .expect("the line");
        assert!(line.contains("remote=127.0.0.1:") && line.contains("listener=\"gRPC\""), "{line}");

        // --- the wrong role for the call: PERMISSION_DENIED, naming who may
        let mut consumer = as_holder(&leader, &pki, "team-a").await;
        let message = assert_code(
            Code::PermissionDenied,
            consumer.register_provider(provider("node_a", 2)).await,
            "consumer registers a provider",
        );
        assert!(message.contains("resource_provider"), "{message}");
        assert_code(
            Code::PermissionDenied,
            consumer
                .add_replica(AddReplicaRequest {
                    id: 9,
                    addr: "127.0.0.1:1".into(),
                    learner_only: true,
                })
                .await,
            "consumer adds a replica",
        );
        let mut provider_a = as_holder(&leader, &pki, "node_a").await;
        assert_code(Code::PermissionDenied, provider_a.allocate(allocate()).await, "provider allocates");
        let mut admin = as_holder(&leader, &pki, "admin").await;
        assert_code(Code::PermissionDenied, admin.allocate(allocate()).await, "admin allocates");
        let mut replica = as_holder(&leader, &pki, "replica").await;
        assert_code(Code::PermissionDenied, replica.allocate(allocate()).await, "replica allocates");

        // --- a backup holds every namespace: admins only
        for (holder, who) in [
            (&mut consumer, "consumer"),
            (&mut provider_a, "provider"),
            (&mut replica, "replica"),
        ] {
            let message = assert_code(
                Code::PermissionDenied,
                holder.snapshot_save(SnapshotSaveRequest {}).await,
                &format!("{who} saves a backup"),
            );
            assert!(message.contains("admin"), "{message}");
        }
        let mut chunks = admin
            .snapshot_save(SnapshotSaveRequest {})
            .await
            .expect("admin saves a backup")
            .into_inner();
        let mut file = Vec::new();
        while let Some(chunk) = chunks.message().await.expect("the backup streams") {
            file.extend_from_slice(&chunk.data);
        }
        qm_client::backup::decode(&file).expect("a whole backup");

        // --- read-only views are open to every role
        consumer
            .cluster_status(ClusterStatusRequest {})
            .await
            .expect("consumer reads the cluster status");
        provider_a
            .system_state(SystemStateRequest {
                stale: false,
                ..Default::default()
            })
            .await
            .expect("provider reads the system state");

        // --- a consumer certificate cannot join the Raft traffic, even with a winning term
        let status_before = admin.cluster_status(ClusterStatusRequest {}).await.expect("status").into_inner();
        let mut raft = RaftClient::new(channel(&leader, Some(&pki.client("team-a"))).await.expect("connects"));
        let usurper: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
            vote: Vote::new_committed(status_before.term + 100, 99),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: Some(openraft::LogId::new(
                CommittedLeaderId::new(status_before.term + 100, 99),
                1_000_000,
            )),
        };
        let message = assert_code(
            Code::PermissionDenied,
            raft.append_entries(RaftMessage {
                payload: qm_raft_node::codec::encode(&usurper),
            })
            .await,
            "consumer sends AppendEntries",
        );
        assert!(message.contains("resource_manager"), "{message}");
        let status_after = admin.cluster_status(ClusterStatusRequest {}).await.expect("status").into_inner();
        assert_eq!(status_before.term, status_after.term, "the refused term changed nothing");

        // --- none of it reached the log
        assert_eq!(before, applied_index(&leader, &pki).await, "a refused call was logged");
        let records = admin.list(ListRequest::default()).await.expect("admin lists").into_inner().records;
        assert!(records.is_empty(), "{records:?}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_providers_are_isolated() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        let (_cluster, leader) = start_tls_cluster(&pki).await;
        let mut provider_a = as_holder(&leader, &pki, "node_a").await;
        let mut provider_b = as_holder(&leader, &pki, "node_b").await;
        let mut team_a = as_holder(&leader, &pki, "team-a").await;
        let mut team_b = as_holder(&leader, &pki, "team-b").await;
        let mut admin = as_holder(&leader, &pki, "admin").await;

        // --- a provider registers as itself, not as another
        provider_a
            .register_provider(provider("node_a", 4))
            .await
            .expect("node_a registers itself");
        let before = applied_index(&leader, &pki).await;
        let message = assert_code(
            Code::PermissionDenied,
            provider_a.register_provider(provider("node_b", 4)).await,
            "node_a registers as node_b",
        );
        assert!(message.contains("node_b"), "{message}");
        for refused in [
            provider_a
                .heartbeat(HeartbeatRequest {
                    provider_id: "node_b".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            provider_a
                .deregister_provider(DeregisterProviderRequest {
                    provider_id: "node_b".into(),
                })
                .await
                .map(|_| ()),
        ] {
            assert_eq!(Code::PermissionDenied, refused.unwrap_err().code());
        }

        // --- team-a allocates; the request's namespace is the certificate's
        let mut wire = request("agent_1", 1);
        wire.namespace = "team-b".into();
        assert_code(
            Code::PermissionDenied,
            team_a.allocate(AllocateRequest { request: Some(wire) }).await,
            "team-a allocates in team-b",
        );
        assert_eq!(before, applied_index(&leader, &pki).await, "a refused call was logged");
        let granted = team_a
            .allocate(AllocateRequest {
                request: Some(request("agent_1", 1)),
            })
            .await
            .expect("team-a allocates")
            .into_inner();
        assert_eq!("allocated", status_name(&granted));
        assert_eq!("team-a", granted.request.as_ref().expect("request").namespace);
        let id = granted.allocation_id.clone();

        // --- team-b cannot see it, list it, release it or renew it: it does not exist for team-b
        let before = applied_index(&leader, &pki).await;
        let unseen = assert_code(
            Code::NotFound,
            team_b
                .get(GetRequest {
                    id: id.clone(),
                    stale: false,
                })
                .await,
            "team-b gets team-a's allocation",
        );
        let unknown = uuid::Uuid::new_v4().to_string();
        let never_existed = assert_code(
            Code::NotFound,
            team_b
                .get(GetRequest {
                    id: unknown.clone(),
                    stale: false,
                })
                .await,
            "unknown id",
        );
        assert_eq!(
            never_existed.replace(&unknown, &id),
            unseen,
            "the answer does not tell the two apart"
        );
        let released = assert_code(
            Code::NotFound,
            team_b.release(ReleaseRequest { id: id.clone() }).await,
            "team-b releases team-a's allocation",
        );
        let released_unknown = assert_code(
            Code::NotFound,
            team_b.release(ReleaseRequest { id: unknown.clone() }).await,
            "unknown id",
        );
        assert_eq!(released_unknown.replace(&unknown, &id), released);
        assert_code(
            Code::NotFound,
            team_b.renew_lease(RenewLeaseRequest { id: id.clone() }).await,
            "team-b renews team-a's allocation",
        );
        let listed = team_b
            .list(ListRequest::default())
            .await
            .expect("team-b lists")
            .into_inner()
            .records;
        assert!(listed.is_empty(), "team-b sees {listed:?}");
        assert_code(
            Code::PermissionDenied,
            team_b
                .list(ListRequest {
                    namespace: "team-a".into(),
                    ..Default::default()
                })
                .await,
            "team-b lists team-a",
        );
        assert_eq!(before, applied_index(&leader, &pki).await, "a refused call was logged");

        // --- team-a, its provider and the admin do see it
        team_a
            .get(GetRequest {
                id: id.clone(),
                stale: false,
            })
            .await
            .expect("team-a gets it");
        let listed = team_a.list(ListRequest::default()).await.expect("list").into_inner().records;
        assert_eq!(vec![id.clone()], listed.iter().map(|r| r.allocation_id.clone()).collect::<Vec<_>>());
        provider_a
            .get(GetRequest {
                id: id.clone(),
                stale: false,
            })
            .await
            .expect("its provider gets it");
        admin
            .get(GetRequest {
                id: id.clone(),
                stale: false,
            })
            .await
            .expect("the admin gets it");
        assert_code(
            Code::NotFound,
            provider_b
                .get(GetRequest {
                    id: id.clone(),
                    stale: false,
                })
                .await,
            "another provider gets it",
        );

        // --- only the provider it is placed on confirms it
        let confirm = |provider_id: &str| ConfirmRequest {
            allocation_id: id.clone(),
            provider_id: provider_id.into(),
            deallocation: false,
        };
        assert_code(
            Code::PermissionDenied,
            provider_b.confirm(confirm("node_a")).await,
            "node_b confirms as node_a",
        );
        assert_code(
            Code::NotFound,
            provider_b.confirm(confirm("node_b")).await,
            "node_b confirms node_a's allocation",
        );
        let confirmed = provider_a.confirm(confirm("node_a")).await.expect("node_a confirms").into_inner();
        assert_eq!("monitoring", state_name(&confirmed));

        // --- team-b's watch shows its own allocation and provider events, never team-a's
        let own = team_b
            .allocate(AllocateRequest {
                request: Some(request("agent_2", 1)),
            })
            .await
            .expect("team-b allocates")
            .into_inner();
        let seen = watch_until(&mut team_b, &own.request_id).await;
        assert!(seen.iter().any(|json| json.contains("provider_registered")), "{seen:?}");
        assert!(
            seen.iter()
                .all(|json| !json.contains(&granted.request_id) && !json.contains("team-a")),
            "team-b saw team-a's events: {seen:?}"
        );
        let seen = watch_until(&mut team_a, &granted.request_id).await;
        assert!(
            seen.iter().all(|json| !json.contains(&own.request_id)),
            "team-a saw team-b's events: {seen:?}"
        );

        // --- team-a releases its own
        let released = team_a
            .release(ReleaseRequest { id: id.clone() })
            .await
            .expect("team-a releases")
            .into_inner();
        assert!(["deallocation", "idle"].contains(&state_name(&released)), "{released:?}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_release_is_held_to_the_consumers_namespace_and_refused_to_providers() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        let (_cluster, leader) = start_tls_cluster(&pki).await;
        let mut provider_a = as_holder(&leader, &pki, "node_a").await;
        let mut team_a = as_holder(&leader, &pki, "team-a").await;
        let mut team_b = as_holder(&leader, &pki, "team-b").await;
        let mut admin = as_holder(&leader, &pki, "admin").await;
        let matching = |namespace: &str, requester_id: &str, provider_id: &str| ReleaseMatchingRequest {
            namespace: namespace.into(),
            requester_id: requester_id.into(),
            provider_id: provider_id.into(),
            ..Default::default()
        };

        // --- team-a holds three (two of agent_1), team-b two
        provider_a.register_provider(provider("node_a", 8)).await.expect("registers");
        for (namespace, requester) in [
            ("team-a", "agent_1"),
            ("team-a", "agent_1"),
            ("team-a", "agent_2"),
            ("team-b", "agent_1"),
            ("team-b", "agent_1"),
        ] {
            let client = if namespace == "team-a" { &mut team_a } else { &mut team_b };
            let request = Some(request(requester, 1));
            let granted = client.allocate(AllocateRequest { request }).await.expect("allocates").into_inner();
            assert_eq!("allocated", status_name(&granted));
        }

        // --- refused: a provider (even for itself), team-a naming team-b, an empty filter; nothing logged
        let before = applied_index(&leader, &pki).await;
        assert_code(
            Code::PermissionDenied,
            provider_a.release_matching(matching("", "", "node_a")).await,
            "a provider's bulk release",
        );
        assert_code(
            Code::PermissionDenied,
            team_a.release_matching(matching("team-b", "", "")).await,
            "team-a releases team-b",
        );
        let refused = admin.release_matching(matching("", "", "")).await.expect_err("an empty filter");
        assert_eq!(
            (Code::InvalidArgument, Some("filter")),
            (
                refused.code(),
                refused.metadata().get("x-qm-field").and_then(|field| field.to_str().ok())
            )
        );
        assert_eq!(before, applied_index(&leader, &pki).await, "a refused call was logged");

        // --- team-a by requester, then by provider (held to team-a): team-b keeps its two
        let by_requester = team_a
            .release_matching(matching("", "agent_1", ""))
            .await
            .expect("by requester")
            .into_inner();
        assert_eq!(
            (2, 0, ""),
            (by_requester.released, by_requester.cancelled, by_requester.next.as_str())
        );
        let by_provider = team_a
            .release_matching(matching("", "", "node_a"))
            .await
            .expect("by provider")
            .into_inner();
        assert_eq!(1, by_provider.released, "only team-a's last one, though team-b's are on node_a too");

        // --- an admin releases team-b's
        let by_admin = admin
            .release_matching(matching("team-b", "", ""))
            .await
            .expect("admin")
            .into_inner();
        assert_eq!(2, by_admin.released);
        let state = admin.system_state(SystemStateRequest::default()).await.expect("state").into_inner();
        assert_eq!(0, state.active_allocations);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_works_over_tls_and_stops_at_a_refusal() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        let (mut cluster, leader) = start_tls_cluster(&pki).await;
        // The leader last, so that the first attempt meets a follower and follows its redirect.
        let mut endpoints: Vec<String> = cluster.endpoints().into_iter().filter(|addr| *addr != leader).collect();
        endpoints.push(leader.clone());
        let client = |tls: Option<TlsConfig>| {
            qm_client::Client::new(qm_client::ClientConfig {
                tls,
                request_timeout_ms: 5_000,
                attempt_timeout_ms: 1_000,
                connect_timeout_ms: 500,
                ..qm_client::ClientConfig::with_endpoints(endpoints.clone())
            })
            .expect("client")
        };

        // --- a provider and a consumer, each with its own certificate
        let provider = client(Some(pki.client("node_a")));
        let registration = qm_client::convert::registration_from_proto(&support::provider("node_a", 2))
            .and_then(|registration| registration.validate())
            .expect("registration");
        provider.register_provider(&registration).await.expect("node_a registers");
        let consumer = client(Some(pki.client("team-a")));
        let wanted: qm_state_machine::ResourceRequest =
            serde_json::from_str(r#"{"requester_id": "agent_1", "resource_requirements": {"cpu_cores": 1}, "priority": 1}"#)
                .expect("request");
        let granted = consumer.allocate(wanted.clone()).await.expect("team-a allocates");
        assert_eq!("allocated", status_name(&granted));
        assert_eq!(Some(leader.clone()), consumer.leader_addr(), "the client found the leader");

        // --- a refusal is final: not retried, nothing changed
        let refused = provider.allocate(wanted).await.expect_err("a provider may not allocate");
        assert!(
            matches!(
                &refused,
                qm_client::Error::Server {
                    code: Code::PermissionDenied,
                    ..
                }
            ),
            "{refused:?}"
        );

        // --- without a certificate nothing is served: unavailable, not unknown
        let stranger = client(None);
        let refused = stranger.cluster_status().await.expect_err("plain http is not served");
        assert!(matches!(refused, qm_client::Error::Unavailable { .. }), "{refused:?}");
        assert!(
            refused.to_string().contains("--tls-cert"),
            "the error says what is missing: {refused}"
        );
        let admin = client(Some(pki.client("admin")));
        let listed = admin.list(ListRequest::default()).await.expect("the admin lists");
        assert_eq!(1, listed.len(), "{listed:?}");

        // --- the admin adds a replica: the leader reaches it over TLS and it catches up
        let addr = cluster.add_blank_replica(4).expect("a fourth replica");
        let status = admin.add_replica(4, &addr, false).await.expect("the admin adds it");
        assert!(
            status.members.iter().any(|member| member.id == 4 && member.role == "follower"),
            "{status:?}"
        );
    })
    .await
    .expect("test finished in time");
}

/// Watches from the first revision until an event mentions `request_id`;
/// returns every event's JSON up to it.
async fn watch_until(client: &mut QuartermasterClient<Channel>, request_id: &str) -> Vec<String> {
    let mut stream = client
        .watch(WatchRequest {
            from_revision: 1,
            namespace: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(CALL_TIMEOUT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no event about {request_id} after {seen:?}"))
            .expect("stream open")
            .expect("event");
        let found = event.json.contains(request_id);
        seen.push(event.json);
        if found {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_tls_says_it_is_insecure() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = support::start_cluster(1, &[]).await;
        let logs = cluster.logs();
        assert!(logs.contains("INSECURE: TLS is off"), "{logs}");
    })
    .await
    .expect("test finished in time");
}

/// A client TLS configuration that trusts the CA but has no certificate of its own.
fn trusting_only(ca: &Path) -> tonic::transport::ClientTlsConfig {
    let pem = std::fs::read(ca).expect("ca.crt");
    tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem))
}

/// `text` without the terminal colour codes the replicas' log lines carry.
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for code in chars.by_ref() {
                if code == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
