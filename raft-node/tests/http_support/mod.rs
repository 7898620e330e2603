//! Support for the HTTP tests: a [`TestCluster`] whose replicas serve the
//! HTTP API on free ports (`--http-peers`), and `curl` (the real one) as the
//! client that no one on the project wrote.

#![allow(dead_code)] // each test file uses part of it

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use qm_testkit::local_cluster::free_loopback_addr;
use qm_testkit::test_cluster::QUIET_PROVIDERS;
use qm_testkit::TestCluster;
use serde_json::Value;

/// The client: Debian's curl.
pub const CURL: &str = "/usr/bin/curl";
/// One curl call may take this long at most (`--max-time`).
pub const CURL_TIME_MAX_S: u64 = 30;
/// The protocol's `resource_request` example, verbatim but for its deadline
/// (2024, long past, would be rejected).
pub const PROTOCOL_EXAMPLE: &str = include_str!("../../../state-machine/tests/fixtures/resource_request.json");
/// The demo's provider: 2 cores, 4 memory blocks, a 500 GB volume.
pub const DEMO_PROVIDER: &str = include_str!("../../../scripts/demo/provider-node_1.json");

pub fn protocol_example() -> String {
    PROTOCOL_EXAMPLE.replace("2024-03-21", "2099-03-21")
}

/// A cluster with the HTTP API on every replica.
pub struct HttpCluster {
    pub cluster: TestCluster,
    /// Each replica's HTTP address (`host:port`).
    pub http: BTreeMap<u64, String>,
}

impl HttpCluster {
    /// `size` replicas with [`QUIET_PROVIDERS`] and `extra` flags; waits for a leader.
    pub async fn start(size: u64, extra: &[&str]) -> HttpCluster {
        HttpCluster::start_exactly(size, &[&QUIET_PROVIDERS[..], extra].concat()).await
    }

    /// `size` replicas with exactly the `extra` flags (and `--http-peers`).
    pub async fn start_exactly(size: u64, extra: &[&str]) -> HttpCluster {
        let http: BTreeMap<u64, String> = (1..=size).map(|id| (id, free_loopback_addr().expect("a free port"))).collect();
        let peers = http.iter().map(|(id, addr)| format!("{id}={addr}")).collect::<Vec<_>>().join(",");
        let mut args = vec!["--http-peers", peers.as_str()];
        args.extend(extra);
        let cluster = TestCluster::start_with(size as usize, &args);
        cluster.wait_for_leader().await;
        HttpCluster { cluster, http }
    }

    /// `http://<replica id's HTTP address><path>`.
    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{path}", self.http[&id])
    }

    pub async fn leader(&self) -> u64 {
        self.cluster.wait_for_leader().await
    }

    /// A replica other than `leader`.
    pub fn follower(&self, leader: u64) -> u64 {
        *self.http.keys().find(|id| **id != leader).expect("a follower")
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The last response's headers, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("not JSON ({error}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(have, _)| have == &name.to_ascii_lowercase())
            .map(|(_, value)| value.as_str())
    }
}

/// Runs curl with `args` (plus `-sS --max-time`) and reads its answer.
pub fn curl(args: &[&str]) -> Answer {
    let dir = tempfile::tempdir().expect("tempdir");
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let output = Command::new(CURL)
        .args(["-sS", "--max-time", &CURL_TIME_MAX_S.to_string(), "-w", "%{http_code}"])
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(args)
        .output()
        .expect("curl runs");
    let status: u16 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0);
    assert!(
        output.status.success() || status != 0,
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Answer {
        status,
        headers: read_headers(&headers),
        body: std::fs::read_to_string(&body).unwrap_or_default(),
    }
}

/// The last header block curl wrote (after any `100 Continue` or redirect).
fn read_headers(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last_block = text.rsplit("HTTP/").next().unwrap_or_default();
    last_block
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect()
}

/// POSTs `body` as JSON.
pub fn post(url: &str, body: &str) -> Answer {
    curl(&["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", body, url])
}

pub fn get(url: &str) -> Answer {
    curl(&[url])
}

/// Runs `script` with the venv's Python (py-consul importable) and `args`;
/// kills it (by its pid) if it has not finished within `limit`. Returns its
/// stdout's lines parsed as JSON.
pub async fn python(script: &str, args: &[&str], limit: std::time::Duration) -> Vec<Value> {
    let mut child = Command::new(qm_testkit::services::venv_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "python did not finish within {limit:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let output = child.wait_with_output().expect("output");
    assert!(
        output.status.success(),
        "python failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}
