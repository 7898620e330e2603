//! The web UI (`/ui/`) in headless Chromium against real replicas: Debian's
//! `/usr/bin/chromium` driven by Playwright (npm's `playwright-core`),
//! both installed by `scripts/install-services.sh`. The browser side is
//! `tests/ui/browser.js`; this side starts the cluster, the `qm agent`
//! processes and node, does to the cluster what the script asks for
//! (`STEP` lines: allocate, kill an agent, kill the leader, register a
//! thousand providers) and checks what it reports (`RESULT` lines) and its
//! exit status. Screenshots land in `target/ui-screenshots/`.
//!
//! Every process is started here and killed by its own pid (its `Child`),
//! every wait is bounded, and all traffic stays on 127.0.0.1.

mod http_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http_support::{HttpCluster, CURL, CURL_TIME_MAX_S};
use qm_ca::{CertAuthority, CertSpec, Validity};
use qm_client::tls::{Identity, Role};
use qm_client::Consistency;
use qm_testkit::agent_cluster::Cluster;
use qm_testkit::binaries::workspace_dir;
use qm_testkit::local_cluster::free_loopback_addr;
use qm_testkit::services::{self, CHROMIUM};
use qm_testkit::test_cluster::{registration, request_on};
use serde_json::{json, Value};
use uuid::Uuid;

/// The browser script may run this long; then it is killed and the test fails.
const SCRIPT_TIME_MAX: Duration = Duration::from_secs(170);
/// Providers registered for the page-load measurement.
const MANY_PROVIDERS: usize = 1_000;
/// Registrations in flight at once while registering them.
const REGISTRATIONS_IN_FLIGHT: usize = 32;

/// Where the screenshots go (test artifacts; `docs/ui/` holds copies).
fn screenshots_dir() -> PathBuf {
    let dir = workspace_dir().join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshots directory");
    dir
}

/// The browser script's process: its stdout lines on a channel, its stdin
/// for answers. Killed by its pid when dropped.
struct Script {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Script {
    fn start(config: &Value) -> Script {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui/browser.js");
        let mut child = Command::new("node")
            .arg(&script)
            .env("QM_UI_CONFIG", config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Script { child, lines }
    }

    /// The next line, or `None` once the script has closed its stdout.
    /// Panics past `deadline`.
    async fn next_line(&self, deadline: Instant) -> Option<String> {
        loop {
            match self.lines.try_recv() {
                Ok(line) => return Some(line),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "the browser script ran past {SCRIPT_TIME_MAX:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn answer(&mut self, answer: &Value) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{answer}").expect("the script reads its answer");
    }

    /// Runs the script to its end, answering each `STEP` with `act`;
    /// returns its `RESULT`s. Panics if it fails.
    async fn run<F, Fut>(mut self, mut act: F) -> Vec<Value>
    where
        F: FnMut(Value) -> Fut,
        Fut: std::future::Future<Output = Value>,
    {
        let deadline = Instant::now() + SCRIPT_TIME_MAX;
        let mut results = Vec::new();
        while let Some(line) = self.next_line(deadline).await {
            if let Some(step) = line.strip_prefix("STEP ") {
                let step: Value = serde_json::from_str(step).expect("a STEP is JSON");
                eprintln!("ui test: {step}");
                let answer = act(step).await;
                self.answer(&answer);
            } else if let Some(result) = line.strip_prefix("RESULT ") {
                println!("ui test: {result}");
                results.push(serde_json::from_str(result).expect("a RESULT is JSON"));
            } else {
                eprintln!("browser.js: {line}");
            }
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the browser script ran past {SCRIPT_TIME_MAX:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            status.success(),
            "the browser script failed ({status}); see its output above and target/ui-screenshots/"
        );
        results
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn result<'a>(results: &'a [Value], key: &str) -> &'a Value {
    results
        .iter()
        .find_map(|result| result.get(key))
        .unwrap_or_else(|| panic!("no {key} result in {results:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_follows_a_live_cluster_through_agent_and_leader_failures() {
    services::ensure_installed();
    let playwright = services::playwright_core();
    // --- three replicas with HTTP ports, three agents, two allocations
    let http: BTreeMap<u64, String> = (1..=3).map(|id| (id, free_loopback_addr().expect("a free port"))).collect();
    let http_peers = http.iter().map(|(id, addr)| format!("{id}={addr}")).collect::<Vec<_>>().join(",");
    let cluster = Cluster::start_with(3, &["--http-peers", &http_peers]);
    let leader = cluster.wait_for_leader().await;
    for provider in ["node_1", "node_2", "node_3"] {
        cluster.start_agent(provider, &cluster.inventory(provider, 4));
    }
    let client = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .system_state(Consistency::Linearizable)
        .await
        .map_or(true, |state| state.providers.iter().filter(|p| p.status == "active").count() < 3)
    {
        assert!(Instant::now() < deadline, "the three agents did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for provider in ["node_1", "node_3"] {
        client.allocate(request_on(provider, 1)).await.expect("allocated");
    }

    // --- the browser drives the page; this side does what it asks
    let urls: BTreeMap<String, String> = http.iter().map(|(id, addr)| (id.to_string(), format!("http://{addr}"))).collect();
    let config = json!({
        "scenario": "cluster",
        "playwright": playwright,
        "chromium": CHROMIUM,
        "urls": urls,
        "leader": leader,
        "screenshots": screenshots_dir(),
    });
    let script = Script::start(&config);
    let results = script
        .run(|step| {
            let (cluster, client) = (&cluster, &client);
            async move {
                match step["action"].as_str().expect("an action") {
                    "allocate" => {
                        let provider = step["provider"].as_str().expect("a provider");
                        let reply = client.allocate(request_on(provider, 1)).await.expect("allocated");
                        json!({"request_id": reply.request_id})
                    }
                    "kill_agent" => {
                        let provider = step["provider"].as_str().expect("a provider");
                        cluster.reaper.kill(&format!("agent-{provider}"));
                        json!({})
                    }
                    "set_quota" => {
                        let namespace = step["namespace"].as_str().expect("a namespace");
                        let kind = step["kind"].as_str().expect("a kind");
                        let limit = step["limit"].as_u64().expect("a limit");
                        let limits = BTreeMap::from([(kind.to_owned(), limit)]);
                        let reply = client.set_quota(namespace, &limits).await.expect("quota set");
                        let usage = reply.namespace.expect("the namespace's use");
                        json!({"held": usage.held.get(kind).copied().unwrap_or(0)})
                    }
                    "kill_leader" => {
                        let leader = cluster.wait_for_leader().await;
                        cluster.kill_node(leader);
                        json!({"leader": leader})
                    }
                    "register_many" => {
                        register_many(client).await;
                        let providers = client.list_providers(Consistency::Linearizable).await.expect("providers").len();
                        json!({"providers": providers})
                    }
                    other => panic!("unknown step {other}"),
                }
            }
        })
        .await;

    // --- what the script saw
    let drain = result(&results, "drain_answer").as_str().unwrap_or_default();
    assert!(
        drain.contains("node_3 is draining") && drain.contains("pinned"),
        "the drain's answer on the page: {drain}"
    );
    let failover = result(&results, "failover");
    assert_ne!(failover["killed"], failover["new_leader"], "{failover}");
    let load = result(&results, "page_load");
    for measured in load["loads"].as_array().expect("loads") {
        println!(
            "ui test: page load with {} providers, {} view, round {}: {} ms to drawn ({} ms of it in the view's fetch and render; measured, not asserted)",
            load["providers"], measured["view"], measured["round"], measured["ms"], measured["view_ms"]
        );
    }
}

/// Registers [`MANY_PROVIDERS`] providers (no agents: they fail after the
/// window, which the page shows like any other).
async fn register_many(client: &qm_client::Client) {
    use futures::StreamExt;
    futures::stream::iter(0..MANY_PROVIDERS)
        .map(|n| async move {
            let mut document = registration(&format!("bulk_{n:04}"), 4);
            document.labels.insert("rack".into(), format!("r{}", n % 20));
            client.register_provider(&document).await.expect("registered");
        })
        .buffer_unordered(REGISTRATIONS_IN_FLIGHT)
        .collect::<()>()
        .await;
}

/// A CA with certificates for the replica, an admin, a provider and
/// consumers of `team-a` and `team-b`.
fn make_pki(dir: &std::path::Path) {
    let ca = CertAuthority::generate("ui test CA", Validity::days_from_now(1)).unwrap();
    ca.save(dir).unwrap();
    let issue = |stem: &str, spec: CertSpec| ca.issue(&spec).unwrap().save(dir, stem).unwrap();
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

/// curl over mutual TLS as the certificate `stem`: (status, body).
fn tls_call(dir: &std::path::Path, stem: &str, method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let file = |name: &str| dir.join(name).display().to_string();
    let out = file(&format!("answer-{}", Uuid::new_v4()));
    let mut command = Command::new(CURL);
    command
        .args([
            "-sS",
            "--max-time",
            &CURL_TIME_MAX_S.to_string(),
            "-w",
            "%{http_code}",
            "-o",
            &out,
            "-X",
            method,
        ])
        .args([
            "--cacert",
            &file("ca.crt"),
            "--cert",
            &file(&format!("{stem}.crt")),
            "--key",
            &file(&format!("{stem}.key")),
        ]);
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "--data-binary", body]);
    }
    let output = command.arg(url).output().expect("curl runs");
    let status = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0);
    let body = std::fs::read_to_string(&out)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_a_consumers_page_shows_its_namespace_and_an_admin_releases() {
    services::ensure_installed();
    let playwright = services::playwright_core();
    let pki = tempfile::Builder::new().prefix("qm-ui-pki-").tempdir().unwrap();
    make_pki(pki.path());
    let path = |name: &str| pki.path().join(name).display().to_string();
    let flags = [
        "--tls-cert",
        &path("replica.crt"),
        "--tls-key",
        &path("replica.key"),
        "--tls-ca",
        &path("ca.crt"),
    ];
    let cluster = HttpCluster::start(1, &flags).await;
    let leader = cluster.leader().await;
    let url = |p: &str| format!("https://{}{p}", cluster.http[&leader]);

    // --- a provider, and one allocation in each namespace
    let provider = json!({"provider_id": "node_a", "resources": (1..=4).map(|n| json!({"resource_id": format!("cpu_{n}"), "kind": "cpu_cores", "capacity": 1})).collect::<Vec<_>>()});
    let (status, body) = tls_call(pki.path(), "node_a", "POST", &url("/v1/providers"), Some(&provider.to_string()));
    assert_eq!(200, status, "{body}");
    let mut requests = BTreeMap::new();
    for namespace in ["team-a", "team-b"] {
        let request = json!({"request_id": Uuid::new_v4().to_string(), "requester_id": format!("agent-{namespace}"),
            "resource_requirements": {"cpu_cores": 1}, "priority": 1, "namespace": namespace});
        let (status, body) = tls_call(pki.path(), namespace, "POST", &url("/v1/allocate"), Some(&request.to_string()));
        assert_eq!(201, status, "{body}");
        requests.insert(namespace, body["request_id"].as_str().unwrap().to_owned());
    }
    // The same rule through the UI's own API calls, by curl: a consumer's
    // list is its namespace, another namespace's history is not found.
    let (status, listed) = tls_call(pki.path(), "team-a", "GET", &url("/v1/requests?limit=50"), None);
    assert_eq!(200, status);
    assert_eq!(1, listed["requests"].as_array().unwrap().len(), "{listed}");
    let (status, _) = tls_call(
        pki.path(),
        "team-a",
        "GET",
        &url(&format!("/v1/requests/{}/history", requests["team-b"])),
        None,
    );
    assert_eq!(404, status);
    let (status, history) = tls_call(
        pki.path(),
        "team-a",
        "GET",
        &url(&format!("/v1/requests/{}/history", requests["team-a"])),
        None,
    );
    assert_eq!(
        (200, json!(["request_processing", "allocation", "monitoring"])),
        (status, history["steps"][0]["states"].clone()),
        "{history}"
    );
    let (status, identity) = tls_call(pki.path(), "team-a", "GET", &url("/v1/identity"), None);
    assert_eq!(
        (200, json!("team-a"), json!(true)),
        (status, identity["namespace"].clone(), identity["may_release"].clone())
    );

    // --- a write from a page of another origin is refused, and changes nothing
    let release = json!({"request_id": requests["team-b"]}).to_string();
    let file = |name: &str| pki.path().join(name).display().to_string();
    let cross_origin = Command::new(CURL)
        .args([
            "-sS",
            "--max-time",
            &CURL_TIME_MAX_S.to_string(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "--cacert",
            &file("ca.crt"),
            "--cert",
            &file("admin.crt"),
            "--key",
            &file("admin.key"),
        ])
        .args([
            "-H",
            "Origin: https://elsewhere.example",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &release,
        ])
        .arg(url("/v1/release"))
        .output()
        .expect("curl runs");
    assert_eq!("403", String::from_utf8_lossy(&cross_origin.stdout));
    let (_, still) = tls_call(
        pki.path(),
        "team-b",
        "GET",
        &url(&format!("/v1/requests/{}", requests["team-b"])),
        None,
    );
    assert_eq!("monitoring", still["state"], "{still}");

    // --- the browser, with each certificate
    let certs: BTreeMap<&str, Value> = ["team-a", "admin"]
        .into_iter()
        .map(|stem| {
            (
                stem,
                json!({"cert": path(&format!("{stem}.crt")), "key": path(&format!("{stem}.key"))}),
            )
        })
        .collect();
    let config = json!({
        "scenario": "tls",
        "playwright": playwright,
        "chromium": CHROMIUM,
        "urls": {leader.to_string(): format!("https://{}", cluster.http[&leader])},
        "leader": leader,
        "screenshots": screenshots_dir(),
        "certs": certs,
        "requests": requests,
    });
    let results = Script::start(&config)
        .run(|step| async move { panic!("the TLS scenario asks for no step: {step}") })
        .await;

    // --- what each certificate's page showed
    assert_eq!(&json!([requests["team-a"]]), result(&results, "consumer_sees"));
    assert_eq!(&json!(false), result(&results, "consumer_sees_other_request"));
    let admin_sees = result(&results, "admin_sees").as_array().unwrap().clone();
    assert_eq!(2, admin_sees.len(), "{admin_sees:?}");
    let (_, released) = tls_call(
        pki.path(),
        "team-b",
        "GET",
        &url(&format!("/v1/requests/{}", requests["team-b"])),
        None,
    );
    assert!(matches!(released["state"].as_str(), Some("idle" | "deallocation")), "{released}");
}
