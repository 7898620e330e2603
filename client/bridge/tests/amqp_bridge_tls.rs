//! The bridge on a cluster with mutual TLS, reaching the broker over
//! `amqps://`: it acts with its own consumer certificate, so requests
//! routed to its namespace are allocated and those routed to another
//! namespace are rejected and dead-lettered without reaching the table; its
//! event cursor lives under its namespace.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use qm_ca::{CertAuthority, CertSpec, Validity};
use qm_client::tls::{Identity, Role, TlsConfig};
use qm_client::{Client, ClientConfig, Consistency};
use qm_testkit::agent_cluster::Reaper;
use qm_testkit::rabbitmq::{Broker, BrokerTls};
use qm_testkit::test_cluster::{registration, request_on, QUIET_PROVIDERS};
use qm_testkit::{cli_binary, node_binary, LocalCluster};
use support::*;

/// The CA, the replicas' certificate, an admin, provider `node_1`, and the
/// bridge's consumer certificate for namespace `team-a`.
fn generate_pki(dir: &std::path::Path) {
    let ca = CertAuthority::generate("bridge test CA", Validity::days_from_now(1)).expect("CA");
    ca.save(dir).expect("save CA");
    let issue = |stem: &str, spec: CertSpec| ca.issue(&spec).expect("issue").save(dir, stem).expect("save");
    issue(
        "replica",
        CertSpec::new(Identity::new(Role::ResourceManager, "replica", None).unwrap()).with_hosts(["127.0.0.1", "localhost"]),
    );
    issue(
        "broker",
        CertSpec::new(Identity::new(Role::ResourceManager, "broker", None).unwrap()).with_hosts(["127.0.0.1", "localhost"]),
    );
    issue("admin", CertSpec::new(Identity::new(Role::Admin, "admin", None).unwrap()));
    issue(
        "node_1",
        CertSpec::new(Identity::new(Role::ResourceProvider, "node_1", None).unwrap()),
    );
    issue(
        "team-a",
        CertSpec::new(Identity::new(Role::ResourceConsumer, "bridge-team-a", Some("team-a".into())).unwrap()),
    );
}

fn client_as(endpoints: &[String], dir: &std::path::Path, stem: &str) -> Client {
    Client::new(ClientConfig {
        endpoints: endpoints.to_vec(),
        tls: Some(TlsConfig::in_dir(dir, stem)),
        ..ClientConfig::default()
    })
    .expect("client config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_acts_for_its_certificates_namespace_only() {
    bounded(async {
        let pki = tempfile::tempdir().unwrap();
        generate_pki(pki.path());
        let path = |file: &str| pki.path().join(file).to_str().unwrap().to_owned();
        let mut args: Vec<String> = QUIET_PROVIDERS.iter().map(|arg| arg.to_string()).collect();
        for (flag, file) in [("--tls-cert", "replica.crt"), ("--tls-key", "replica.key"), ("--tls-ca", "ca.crt")] {
            args.extend([flag.to_owned(), path(file)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cluster = LocalCluster::configure(&node_binary(), 3, &args).expect("layout");
        for id in 1..=3 {
            cluster.start_replica(id).expect("replica starts");
        }
        let endpoints = cluster.endpoints();
        let admin = client_as(&endpoints, pki.path(), "admin");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !matches!(admin.cluster_status().await, Ok(status) if status.leader_id.is_some()) {
            assert!(tokio::time::Instant::now() < deadline, "no leader over TLS:\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client_as(&endpoints, pki.path(), "node_1")
            .register_provider(&registration("node_1", 8))
            .await
            .expect("the provider registers itself");

        let broker = Broker::start_with(Some(&BrokerTls {
            ca: pki.path().join("ca.crt"),
            cert: pki.path().join("broker.crt"),
            key: pki.path().join("broker.key"),
        }))
        .expect("rabbitmq starts");
        let reaper = Reaper::new();
        let logs = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(logs.path().join("bridge.log")).unwrap();
        let bridge = Command::new(cli_binary())
            .args(["--endpoints", &endpoints.join(",")])
            .args([
                "--tls-cert",
                &path("team-a.crt"),
                "--tls-key",
                &path("team-a.key"),
                "--tls-ca",
                &path("ca.crt"),
            ])
            .args([
                "bridge",
                "amqp",
                "--amqp-url",
                &broker.tls_url().unwrap(),
                "--amqp-ca",
                &path("ca.crt"),
            ])
            .env("QM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qm bridge starts");
        reaper.adopt("bridge", bridge);

        let connection = Connection::connect(&broker.url(), ConnectionProperties::default()).await.unwrap();
        wait_for_topology(&connection, || logs_in(logs.path())).await;
        let mut requester = Requester::new(&connection).await;
        let body = |namespace: &str| {
            let mut request = request_on("node_1", 1);
            request.namespace = Some(namespace.to_owned());
            serde_json::to_vec(&request).unwrap()
        };

        // --- its own namespace: allocated, in that namespace
        let granted = requester.call("resource_request.team-a", &body("team-a")).await;
        assert_eq!(granted["status"], "allocated", "{granted}\n{}", logs_in(logs.path()));

        // --- another namespace, or none: rejected naming the routing key, dead-lettered, table unchanged
        let before = admin.system_state(Consistency::Linearizable).await.unwrap();
        let other = requester.call("resource_request.team-b", &body("team-b")).await;
        assert_eq!(
            (other["status"].as_str(), other["field"].as_str()),
            (Some("rejected"), Some("routing_key")),
            "{other}"
        );
        assert!(other["reason"].as_str().unwrap().contains("team-a"), "{other}");
        let unnamed = requester.call("resource_request", &request_without_namespace()).await;
        assert_eq!(unnamed["field"], "routing_key", "{unnamed}");
        let mut dead = Vec::new();
        for _ in 0..100 {
            dead.extend(dead_letters(&connection).await);
            if dead.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(dead.len(), 2, "{dead:?}");
        let after = admin.system_state(Consistency::Linearizable).await.unwrap();
        assert_eq!((after.revision, after.active_allocations), (before.revision, 1));

        // --- the consumer certificate may keep a cursor, under its namespace
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !logs_in(logs.path()).contains("holding the cursor") {
            assert!(tokio::time::Instant::now() < deadline, "{}", logs_in(logs.path()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cursor = admin
            .advance_cursor("team-a.amqp-bridge", "admin-probe", 0, Duration::ZERO)
            .await
            .expect("an admin reads the cursor");
        assert!(!cursor.held_by_caller, "held by the bridge: {cursor:?}");
        assert!(cursor.holder.contains('-'), "{cursor:?}");
        drop(broker);
    })
    .await
}

fn request_without_namespace() -> Vec<u8> {
    serde_json::to_vec(&request_on("node_1", 1)).unwrap()
}
