//! Revocation and certificate reload on real replicas, while the cluster
//! runs: a certificate revoked with `qm certs revoke`'s code is refused once
//! the replicas have reloaded the CRL (new handshakes and calls on
//! connections opened before), and the replicas' certificate rotated under
//! load fails no call beyond the client's own retries.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_client::proto::api::*;
use qm_client::tls::{Identity, Role};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::pki::{as_holder, connect, path_arg, start_tls_cluster, Pki, CALL_TIMEOUT};
use support::{provider, request, TEST_TIMEOUT};
use tonic::Code;

/// The replicas look at their TLS files this often in these tests.
const RELOAD_INTERVAL_MS: &str = "200";
/// How long a test waits for every replica to have reloaded.
const RELOAD_WAIT: Duration = Duration::from_secs(20);

fn crl_args(pki: &Pki) -> Vec<String> {
    vec![
        "--tls-crl".into(),
        path_arg(&pki.path("ca.crl")),
        "--tls-reload-interval-ms".into(),
        RELOAD_INTERVAL_MS.into(),
    ]
}

/// Revokes the certificate `<stem>.crt` in the test's `ca.crl`.
fn revoke(pki: &Pki, stem: &str) {
    let pem = std::fs::read_to_string(pki.path(&format!("{stem}.crt"))).expect("certificate");
    pki.authority().revoke(&pki.path("ca.crl"), &[pem]).expect("revoke");
}

/// Whether a new connection presenting `<stem>.crt` gets a call served.
async fn served_on_a_new_connection(addr: &str, pki: &Pki, stem: &str) -> bool {
    let Ok(mut client) = connect(addr, &pki.client(stem)).await else {
        return false;
    };
    matches!(
        tokio::time::timeout(CALL_TIMEOUT, client.cluster_status(ClusterStatusRequest {})).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_once_the_crl_is_reloaded_while_the_cluster_runs() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        revoke_nothing(&pki);
        // Each replica's metrics port on its own loopback address: the flags are shared.
        let metrics_port = qm_testkit::local_cluster::free_loopback_addr().expect("a port");
        let metrics_port = metrics_port.rsplit_once(':').expect("host:port").1.to_owned();
        let mut args = crl_args(&pki);
        args.extend(["--metrics-listen".to_owned(), format!("127.0.{{id}}.1:{metrics_port}")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (cluster, leader) = start_tls_cluster(&pki, &args).await;
        let metrics = format!("127.0.1.1:{metrics_port}");

        // --- the metrics port speaks the same mutual TLS: any role scrapes, plain HTTP gets nothing
        let scraped = scrape(&metrics, &pki, "team-a").await.expect("a consumer scrapes");
        assert!(scraped.starts_with("HTTP/1.0 200") && scraped.contains("raft_term"), "{scraped}");
        let plain = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tokio::net::TcpStream::connect(&metrics).await.ok()?;
            tcp.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
            let mut answer = String::new();
            tokio::time::timeout(CALL_TIMEOUT, tcp.read_to_string(&mut answer))
                .await
                .ok()?
                .ok()?;
            Some(answer)
        };
        let plain = plain.await.unwrap_or_default();
        assert!(!plain.contains("raft_term"), "metrics served over plain HTTP: {plain}");

        // --- before: team-a allocates on a connection it keeps open
        let mut node_a = as_holder(&leader, &pki, "node_a").await;
        node_a.register_provider(provider("node_a", 4)).await.expect("registers");
        let mut team_a = as_holder(&leader, &pki, "team-a").await;
        team_a
            .allocate(AllocateRequest {
                request: Some(request("agent_1", 1)),
            })
            .await
            .expect("allocates before the revocation");

        // --- team-a's certificate is revoked; every replica refuses a new handshake with it
        revoke(&pki, "team-a");
        let deadline = Instant::now() + RELOAD_WAIT;
        for addr in cluster.endpoints() {
            while served_on_a_new_connection(&addr, &pki, "team-a").await {
                assert!(
                    Instant::now() < deadline,
                    "{addr} still serves a revoked certificate:\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        assert_eq!(None, scrape(&metrics, &pki, "team-a").await, "the metrics port refuses it too");
        assert!(scrape(&metrics, &pki, "team-b").await.is_some());

        // --- the connection opened before the revocation carries no more calls, and nothing reaches the log
        let mut admin = as_holder(&leader, &pki, "admin").await;
        let applied = |status: ClusterStatusReply| status.applied_index;
        let before = applied(admin.cluster_status(ClusterStatusRequest {}).await.expect("status").into_inner());
        let refused = team_a
            .allocate(AllocateRequest {
                request: Some(request("agent_1", 1)),
            })
            .await
            .expect_err("a revoked certificate's call");
        assert_eq!(Code::Unauthenticated, refused.code(), "{refused:?}");
        assert!(refused.message().contains("revoked"), "{refused:?}");
        let after = applied(admin.cluster_status(ClusterStatusRequest {}).await.expect("status").into_inner());
        assert_eq!(before, after, "a refused call wrote to the log");

        // --- the others are untouched, and the replicas said why
        let mut team_b = as_holder(&leader, &pki, "team-b").await;
        team_b
            .allocate(AllocateRequest {
                request: Some(request("agent_2", 1)),
            })
            .await
            .expect("another consumer still allocates");
        assert!(
            cluster.logs().contains("TLS certificate, key, CA and CRL reloaded"),
            "{}",
            cluster.logs()
        );
    })
    .await
    .expect("test timed out");
}

/// An empty CRL to start from, as `qm certs init` writes.
fn revoke_nothing(pki: &Pki) {
    pki.authority().revoke(&pki.path("ca.crl"), &[]).expect("empty CRL");
}

/// A TLS connection to `addr` presenting `<stem>.crt`, if the handshake
/// goes through (TLS 1.3: a refusal of the client's certificate may only
/// show at the first read, which the callers make).
async fn tls_stream(addr: &str, pki: &Pki, stem: &str) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.path("ca.crt")).ok()? {
        roots.add(ca.ok()?).ok()?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path(&format!("{stem}.crt")))
        .ok()?
        .collect::<Result<_, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{stem}.key"))).ok()?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = ServerName::try_from("127.0.0.1").ok()?.to_owned();
    tokio::time::timeout(CALL_TIMEOUT, connector.connect(name, tcp)).await.ok()?.ok()
}

/// The answer to `GET /metrics` on `addr` over mutual TLS presenting
/// `<stem>.crt`; `None` if the connection is refused.
async fn scrape(addr: &str, pki: &Pki, stem: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tls_stream(addr, pki, stem).await?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
    let mut answer = String::new();
    tokio::time::timeout(CALL_TIMEOUT, stream.read_to_string(&mut answer))
        .await
        .ok()?
        .ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// The serial number of the certificate `addr` serves, from a handshake
/// presenting the admin's certificate.
async fn served_serial(addr: &str, pki: &Pki) -> Option<Vec<u8>> {
    let stream = tls_stream(addr, pki, "admin").await?;
    let leaf = stream.get_ref().1.peer_certificates()?.first()?.clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(parsed.raw_serial().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_certificate_rotated_under_load_fails_no_call() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        revoke_nothing(&pki);
        let args = crl_args(&pki);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (cluster, leader) = start_tls_cluster(&pki, &args).await;
        let mut node_a = as_holder(&leader, &pki, "node_a").await;
        node_a.register_provider(provider("node_a", 4)).await.expect("registers");
        let old_serial = served_serial(&leader, &pki).await.expect("a handshake");

        // --- a light load through the client library: allocate, release, one pair at a time
        let client = qm_client::Client::new(qm_client::config::ClientConfig {
            tls: Some(pki.client("team-a")),
            ..qm_client::config::ClientConfig::with_endpoints(cluster.endpoints())
        })
        .expect("client");
        let (stop, done, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let load = {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let pair = async {
                        let document = qm_state_machine::ResourceRequest::from_json(
                            r#"{"requester_id": "agent_1", "resource_requirements": {"cpu_cores": 1}, "priority": 1}"#,
                        )
                        .expect("a resource_request");
                        let granted = client.allocate(document).await?;
                        client.release(&granted.allocation_id).await
                    };
                    match pair.await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        // The first failure ends the load: the test fails with it.
                        Err(error) => {
                            failures.push(error.to_string());
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    };
                }
                failures
            })
        };
        let wait_for_pairs = |count: u64| {
            let (done, failed) = (done.clone(), failed.clone());
            async move {
                let target = done.load(Ordering::Relaxed) + count;
                let deadline = Instant::now() + Duration::from_secs(30);
                // A failure ends the load; the test reports it at the end.
                while done.load(Ordering::Relaxed) < target && failed.load(Ordering::Relaxed) == 0 {
                    assert!(Instant::now() < deadline, "the load stalled");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        wait_for_pairs(20).await;

        // --- the replicas' certificate and key are replaced; each replica serves the new one
        pki.issue("replica", Identity::new(Role::ResourceManager, "replica", None).unwrap());
        let deadline = Instant::now() + RELOAD_WAIT;
        for addr in cluster.endpoints() {
            loop {
                match served_serial(&addr, &pki).await {
                    Some(serial) if serial != old_serial => break,
                    _ => {}
                }
                assert!(
                    Instant::now() < deadline,
                    "{addr} still serves the old certificate:\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        wait_for_pairs(20).await;

        // --- the old certificate is revoked: the replicas dial each other with the new one, so Raft goes on
        let old = qm_ca::read_revocation_list(&std::fs::read_to_string(pki.path("ca.crl")).unwrap()).unwrap();
        assert!(old.is_empty());
        revoke_serial(&pki, &old_serial);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        wait_for_pairs(20).await;

        stop.store(true, Ordering::Relaxed);
        let failures = load.await.expect("load task");
        assert!(failures.is_empty(), "calls failed beyond the client's retries: {failures:?}");
        assert_eq!(0, failed.load(Ordering::Relaxed));
        eprintln!("allocate+release pairs during the rotation test: {}", done.load(Ordering::Relaxed));
    })
    .await
    .expect("test timed out");
}

/// Revokes the certificate with `serial` (the replicas' old one, whose file
/// the rotation replaced).
fn revoke_serial(pki: &Pki, serial: &[u8]) {
    let revoked = [qm_ca::RevokedCert {
        serial: serial.to_vec(),
        revoked_at_secs: 0,
    }];
    let pem = pki.authority().revocation_list(&revoked, 2).expect("CRL");
    let staging = pki.path("ca.crl.new");
    std::fs::write(&staging, pem).expect("write");
    std::fs::rename(&staging, pki.path("ca.crl")).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_at_once_when_polling_is_off() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        let (cluster, _) = start_tls_cluster(&pki, &["--tls-reload-interval-ms", "0"]).await;
        let addr = cluster.addr(1).to_owned();
        let old_serial = served_serial(&addr, &pki).await.expect("a handshake");

        // --- new files alone change nothing without polling
        pki.issue("replica", Identity::new(Role::ResourceManager, "replica", None).unwrap());
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(
            Some(old_serial.clone()),
            served_serial(&addr, &pki).await,
            "reloaded without being asked"
        );

        // --- SIGHUP: the replica serves the new certificate
        let pid = cluster.pid(1).expect("replica 1 runs");
        // SAFETY: a plain kill(2) of the replica this test started.
        assert_eq!(0, unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) });
        let deadline = Instant::now() + RELOAD_WAIT;
        while served_serial(&addr, &pki).await == Some(old_serial.clone()) {
            assert!(Instant::now() < deadline, "SIGHUP did not reload:\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            served_on_a_new_connection(&addr, &pki, "admin").await,
            "the replica still serves calls after SIGHUP"
        );
    })
    .await
    .expect("test timed out");
}

/// Cores of the provider the revoked-replica test allocates from, one per write.
const CORES_FOR_WRITES: u32 = 64;
/// Writes per phase of that test.
const WRITES_PER_PHASE: usize = 10;

/// Replica `id`'s applied index, asked with the admin's certificate.
async fn applied_index(cluster: &qm_testkit::LocalCluster, pki: &Pki, id: u64) -> Option<u64> {
    let mut client = connect(cluster.addr(id), &pki.client("admin")).await.ok()?;
    let status = tokio::time::timeout(CALL_TIMEOUT, client.cluster_status(ClusterStatusRequest {}))
        .await
        .ok()?
        .ok()?;
    Some(status.into_inner().applied_index)
}

/// The address of the leader replicas 1 and 2 agree on, one of them.
async fn leader_of_one_and_two(cluster: &qm_testkit::LocalCluster, pki: &Pki) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for id in [1, 2] {
            let status = match connect(cluster.addr(id), &pki.client("admin")).await {
                Ok(mut client) => client.cluster_status(ClusterStatusRequest {}).await.ok().map(|r| r.into_inner()),
                Err(_) => None,
            };
            views.push(status.and_then(|status| status.leader_id.filter(|leader| *leader != 3)));
        }
        if let [Some(first), Some(second)] = views[..] {
            if first == second {
                return cluster.addr(first).to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "replicas 1 and 2 agree on no leader:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes `count` allocations as team-b through the leader of 1 and 2 (found
/// again if it changes), then waits until 1 and 2 have applied all of
/// them; returns the leader's applied index after the last one.
async fn write_through_one_and_two(cluster: &qm_testkit::LocalCluster, pki: &Pki, count: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut written = 0;
    while written < count {
        let leader = leader_of_one_and_two(cluster, pki).await;
        let Ok(mut team_b) = connect(&leader, &pki.client("team-b")).await else {
            continue;
        };
        let allocate = team_b.allocate(AllocateRequest {
            request: Some(request("agent_2", 1)),
        });
        match tokio::time::timeout(CALL_TIMEOUT, allocate).await {
            Ok(Ok(_)) => written += 1,
            _ => assert!(Instant::now() < deadline, "writes through 1 and 2 fail:\n{}", cluster.logs()),
        }
    }
    let leader = leader_of_one_and_two(cluster, pki).await;
    let leader_id: u64 = cluster
        .endpoints()
        .iter()
        .position(|addr| *addr == leader)
        .map(|at| at as u64 + 1)
        .expect("a replica's address");
    let committed = applied_index(cluster, pki, leader_id).await.expect("the leader answers");
    for id in [1, 2] {
        while applied_index(cluster, pki, id).await.is_none_or(|applied| applied < committed) {
            assert!(
                Instant::now() < deadline,
                "replica {id} did not apply {committed}:\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_replica_gets_no_more_of_the_log_while_the_others_commit() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // --- each replica has its own certificate, so revoking one leaves the others trusted
        let pki = Pki::generate();
        for id in 1..=3 {
            pki.issue(
                &format!("replica-{id}"),
                Identity::new(Role::ResourceManager, format!("replica-{id}"), None).unwrap(),
            );
        }
        revoke_nothing(&pki);
        let mut args: Vec<String> = support::QUIET_PROVIDERS.iter().map(|arg| arg.to_string()).collect();
        for (flag, file) in [
            ("--tls-cert", "replica-{id}.crt"),
            ("--tls-key", "replica-{id}.key"),
            ("--tls-ca", "ca.crt"),
        ] {
            args.extend([flag.to_owned(), path_arg(&pki.path(file))]);
        }
        args.extend(crl_args(&pki));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cluster = qm_testkit::LocalCluster::configure(support::node_binary(), 3, &args).expect("layout");
        cluster.kill_after(Duration::from_secs(600));
        for id in 1..=3 {
            cluster.start_replica(id).expect("start");
        }
        let leader = support::pki::wait_for_leader(&cluster, &pki).await;
        let mut node_a = as_holder(&leader, &pki, "node_a").await;
        node_a
            .register_provider(provider("node_a", CORES_FOR_WRITES))
            .await
            .expect("registers");

        // --- before: replica 3 follows the log
        let committed = write_through_one_and_two(&cluster, &pki, WRITES_PER_PHASE).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while applied_index(&cluster, &pki, 3).await.is_none_or(|applied| applied < committed) {
            assert!(Instant::now() < deadline, "replica 3 did not follow:\n{}", cluster.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // --- qm certs revoke replica-3.crt; every replica reloads the CRL (each refuses it as a client)
        let output = std::process::Command::new(qm_testkit::cli_binary())
            .args(["certs", "revoke", "--dir"])
            .arg(pki.dir.path())
            .arg(pki.path("replica-3.crt"))
            .output()
            .expect("qm runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let deadline = Instant::now() + RELOAD_WAIT;
        for addr in cluster.endpoints() {
            while served_on_a_new_connection(&addr, &pki, "replica-3").await {
                assert!(Instant::now() < deadline, "{addr} did not reload the CRL:\n{}", cluster.logs());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        // --- 1 and 2 commit writes; the leader refuses 3's certificate when it dials, so 3 gets none of them
        let first_after = write_through_one_and_two(&cluster, &pki, WRITES_PER_PHASE).await;
        let later = write_through_one_and_two(&cluster, &pki, WRITES_PER_PHASE).await;
        assert!(later > first_after, "1 and 2 committed nothing: {first_after} then {later}");
        let applied_by_3 = applied_index(&cluster, &pki, 3).await.expect("replica 3 still answers the admin");
        assert!(
            applied_by_3 < first_after,
            "replica 3 applied {applied_by_3}, past the writes made after its revocation (up to {first_after}, then {later}): \
             it was still sent the log\n{}",
            cluster.logs()
        );
    })
    .await
    .expect("test timed out");
}
