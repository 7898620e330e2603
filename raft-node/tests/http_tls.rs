//! The HTTP port with mutual TLS: the same handshake and the same role and
//! namespace rules as gRPC. Strangers (no certificate, another CA) never get
//! past the handshake; each role makes exactly its calls; a consumer sees
//! only its namespace; a provider acts only as itself; refusals change nothing.

mod http_support;

use std::path::PathBuf;
use std::process::Command;

use http_support::{HttpCluster, CURL, CURL_TIME_MAX_S};
use qm_ca::{CertAuthority, CertSpec, Validity};
use qm_client::tls::{Identity, Role};
use qm_testkit::test_cluster::bounded;
use serde_json::{json, Value};
use uuid::Uuid;

/// The cluster's CA and one certificate per role, plus a stranger's.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn generate() -> Pki {
        let dir = tempfile::Builder::new().prefix("qm-http-pki-").tempdir().unwrap();
        let ca = CertAuthority::generate("test cluster CA", Validity::days_from_now(1)).unwrap();
        ca.save(dir.path()).unwrap();
        let issue = |authority: &CertAuthority, stem: &str, spec: CertSpec| {
            authority.issue(&spec).unwrap().save(dir.path(), stem).unwrap();
        };
        let replica = Identity::new(Role::ResourceManager, "replica", None).unwrap();
        issue(&ca, "replica", CertSpec::new(replica).with_hosts(["127.0.0.1", "localhost"]));
        issue(&ca, "admin", CertSpec::new(Identity::new(Role::Admin, "admin", None).unwrap()));
        issue(
            &ca,
            "node_a",
            CertSpec::new(Identity::new(Role::ResourceProvider, "node_a", None).unwrap()),
        );
        for namespace in ["team-a", "team-b"] {
            let consumer = Identity::new(Role::ResourceConsumer, format!("agent-{namespace}"), Some(namespace.into())).unwrap();
            issue(&ca, namespace, CertSpec::new(consumer));
        }
        let stranger_ca = CertAuthority::generate("another CA", Validity::days_from_now(1)).unwrap();
        let stranger = Identity::new(Role::Admin, "admin", None).unwrap();
        issue(&stranger_ca, "stranger", CertSpec::new(stranger));
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    fn replica_flags(&self) -> Vec<String> {
        [
            "--tls-cert",
            &self.path("replica.crt"),
            "--tls-key",
            &self.path("replica.key"),
            "--tls-ca",
            &self.path("ca.crt"),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// curl over mutual TLS as `who` (a certificate stem, or none): (status, body);
/// status 0 when the handshake failed.
fn call(pki: &Pki, who: Option<&str>, method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let out: PathBuf = pki.dir.path().join(format!("answer-{}", Uuid::new_v4()));
    let mut command = Command::new(CURL);
    command
        .args([
            "-sS",
            "--max-time",
            &CURL_TIME_MAX_S.to_string(),
            "-w",
            "%{http_code}",
            "-X",
            method,
        ])
        .args(["--cacert", &pki.path("ca.crt")])
        .arg("-o")
        .arg(&out);
    if let Some(who) = who {
        command.args([
            "--cert",
            &pki.path(&format!("{who}.crt")),
            "--key",
            &pki.path(&format!("{who}.key")),
        ]);
    }
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "--data-binary", body]);
    }
    let output = command.arg(url).output().expect("curl runs");
    let status = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0);
    if status == 0 {
        eprintln!("curl {method} {url} as {who:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn registration(provider_id: &str) -> String {
    json!({"provider_id": provider_id, "resources": [
        {"resource_id": "cpu_1", "kind": "cpu_cores", "capacity": 1},
        {"resource_id": "cpu_2", "kind": "cpu_cores", "capacity": 1},
    ]})
    .to_string()
}

fn request() -> String {
    json!({"request_id": Uuid::new_v4().to_string(), "requester_id": "agent-team-a", "resource_requirements": {"cpu_cores": 1}, "priority": 1})
        .to_string()
}

#[tokio::test]
async fn each_role_makes_exactly_its_http_calls_and_strangers_never_get_in() {
    bounded(async {
        let pki = Pki::generate();
        let flags = pki.replica_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let cluster = HttpCluster::start(3, &flags).await;
        let leader = cluster.leader().await;
        let url = |path: &str| format!("https://{}{path}", cluster.http[&leader]);
        let revision = |pki: &Pki| call(pki, Some("admin"), "GET", &url("/v1/state"), None).1["revision"].clone();

        // --- strangers: no certificate, another CA: the handshake fails
        assert_eq!(0, call(&pki, None, "GET", &url("/v1/cluster"), None).0);
        assert_eq!(0, call(&pki, Some("stranger"), "GET", &url("/v1/cluster"), None).0);

        // --- a provider registers itself, and only itself; it may not allocate
        assert_eq!(
            200,
            call(&pki, Some("node_a"), "POST", &url("/v1/providers"), Some(&registration("node_a"))).0
        );
        let before = revision(&pki);
        let (status, body) = call(&pki, Some("node_a"), "POST", &url("/v1/providers"), Some(&registration("node_b")));
        assert_eq!((403, json!("permission_denied")), (status, body["error"].clone()));
        assert_eq!(403, call(&pki, Some("node_a"), "POST", &url("/v1/allocate"), Some(&request())).0);
        assert_eq!(
            403,
            call(&pki, Some("team-a"), "POST", &url("/v1/providers"), Some(&registration("node_a"))).0
        );
        assert_eq!(403, call(&pki, Some("admin"), "POST", &url("/v1/allocate"), Some(&request())).0);
        assert_eq!(403, call(&pki, Some("replica"), "POST", &url("/v1/allocate"), Some(&request())).0);
        assert_eq!(before, revision(&pki), "a refused call changed the table");

        // --- a consumer allocates in its own namespace
        let (status, granted) = call(&pki, Some("team-a"), "POST", &url("/v1/allocate"), Some(&request()));
        assert_eq!(201, status, "{granted}");
        assert_eq!("allocated", granted["status"]);
        let id = granted["request_id"].as_str().unwrap().to_owned();
        let (status, record) = call(&pki, Some("team-a"), "GET", &url(&format!("/v1/requests/{id}")), None);
        assert_eq!((200, json!("monitoring")), (status, record["state"].clone()));
        let mine = call(&pki, Some("team-a"), "GET", &url("/v1/requests"), None).1;
        assert_eq!(1, mine["requests"].as_array().unwrap().len(), "{mine}");

        // --- another namespace's consumer: as if it did not exist
        assert_eq!(404, call(&pki, Some("team-b"), "GET", &url(&format!("/v1/requests/{id}")), None).0);
        let release = json!({"request_id": id}).to_string();
        assert_eq!(404, call(&pki, Some("team-b"), "POST", &url("/v1/release"), Some(&release)).0);
        assert_eq!(
            403,
            call(&pki, Some("team-b"), "GET", &url("/v1/requests?namespace=team-a"), None).0
        );
        let theirs = call(&pki, Some("team-b"), "GET", &url("/v1/requests"), None).1;
        assert_eq!(json!([]), theirs["requests"]);

        // --- reads: admin sees everything, the provider what is placed on it
        assert_eq!(200, call(&pki, Some("admin"), "GET", &url(&format!("/v1/requests/{id}")), None).0);
        assert_eq!(200, call(&pki, Some("node_a"), "GET", &url(&format!("/v1/requests/{id}")), None).0);
        for who in ["admin", "node_a", "team-a", "replica"] {
            for path in [
                "/v1/cluster",
                "/v1/state",
                "/v1/providers",
                "/v1/catalog/services",
                "/metrics",
                "/v1/openapi.json",
            ] {
                assert_eq!(200, call(&pki, Some(who), "GET", &url(path), None).0, "{who} {path}");
            }
        }

        // --- the consumer releases its own
        assert_eq!(200, call(&pki, Some("team-a"), "POST", &url("/v1/release"), Some(&release)).0);

        // --- a follower redirects to the leader's https URL
        let follower = cluster.follower(leader);
        let follower_url = format!("https://{}/v1/state", cluster.http[&follower]);
        let (status, body) = call(&pki, Some("admin"), "GET", &follower_url, None);
        assert_eq!(307, status);
        assert_eq!(json!(url("/v1/state")), body["leader_url"]);
    })
    .await;
}

#[tokio::test]
async fn http_calls_are_audited_as_grpc_calls_are() {
    bounded(async {
        let pki = Pki::generate();
        let audit_log = format!("{}/audit-{{id}}.log", pki.dir.path().display());
        let mut flags = pki.replica_flags();
        flags.extend(["--audit-log".to_owned(), audit_log]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let cluster = HttpCluster::start(3, &flags).await;
        let leader = cluster.leader().await;
        let url = |path: &str| format!("https://{}{path}", cluster.http[&leader]);

        // --- an accepted registration and allocation, a refused registration, an admin's list
        assert_eq!(
            200,
            call(&pki, Some("node_a"), "POST", &url("/v1/providers"), Some(&registration("node_a"))).0
        );
        let allocation = request();
        let request_id = serde_json::from_str::<Value>(&allocation).unwrap()["request_id"].clone();
        assert_eq!(201, call(&pki, Some("team-a"), "POST", &url("/v1/allocate"), Some(&allocation)).0);
        assert_eq!(
            403,
            call(&pki, Some("team-a"), "POST", &url("/v1/providers"), Some(&registration("node_b"))).0
        );
        assert_eq!(200, call(&pki, Some("admin"), "GET", &url("/v1/requests"), None).0);
        // Cluster views are not recorded.
        assert_eq!(200, call(&pki, Some("team-a"), "GET", &url("/v1/cluster"), None).0);

        // --- the leader's trail: four records, transport http
        let file = pki.dir.path().join(format!("audit-{leader}.log"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let records: Vec<Value> = loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let records: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
            if records.len() >= 4 || std::time::Instant::now() > deadline {
                break records;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let calls: Vec<(&str, &str, &str)> = records
            .iter()
            .map(|record| {
                (
                    record["call"].as_str().unwrap(),
                    record["outcome"].as_str().unwrap(),
                    record["caller"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            vec![
                ("RegisterProvider", "ok", "node_a"),
                ("Allocate", "ok", "agent-team-a"),
                ("RegisterProvider", "denied", "agent-team-a"),
                ("List", "ok", "admin"),
            ],
            calls
        );
        assert!(records.iter().all(|record| record["transport"] == "http"), "{records:#?}");
        assert_eq!(request_id, records[1]["correlation_id"]);
        assert_eq!("node_a", records[1]["ids"]["provider_id"]);
    })
    .await;
}
