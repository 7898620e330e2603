//! [`Prometheus`]: Debian's `prometheus` binary, started by a test on a free
//! loopback port with its own temporary config and data directory, and
//! killed through its own `Child` handle (on drop, or by a watchdog after
//! [`PROMETHEUS_LIFETIME_MAX`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::local_cluster::free_loopback_addr;
use crate::services::ensure_installed;

/// The binary `scripts/install-services.sh` installs.
pub const PROMETHEUS_BINARY: &str = "prometheus";
/// A Prometheus started by a test is killed after this long, whatever the test is doing.
pub const PROMETHEUS_LIFETIME_MAX: Duration = Duration::from_secs(300);
/// How long one HTTP request to it may take.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;

/// A running Prometheus.
pub struct Prometheus {
    child: Arc<Mutex<Option<Child>>>,
    /// Where its HTTP API listens (`host:port`).
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (its YAML) and waits until it is ready.
    pub fn start(config: &str, ready_within: Duration) -> anyhow::Result<Prometheus> {
        ensure_installed();
        let dir = tempfile::Builder::new().prefix("qm-prometheus-").tempdir()?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr = free_loopback_addr()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS_BINARY)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|error| anyhow::anyhow!("cannot start {PROMETHEUS_BINARY}: {error}"))?;
        let prometheus = Prometheus {
            child: Arc::new(Mutex::new(Some(child))),
            addr,
            dir,
        };
        prometheus.kill_after(PROMETHEUS_LIFETIME_MAX);
        let deadline = Instant::now() + ready_within;
        while !prometheus.get("/-/ready").is_ok_and(|(status, _)| status == 200) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "prometheus not ready within {ready_within:?}: {}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(prometheus)
    }

    /// `GET path` on its HTTP API: (status, body). HTTP/1.0 over a plain
    /// socket, so the harness needs no HTTP client of its own.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let mut stream = TcpStream::connect_timeout(&self.addr.parse()?, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {head}"))?;
        Ok((status, body.to_owned()))
    }

    /// What it logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    fn kill_after(&self, lifetime: Duration) {
        let child = Arc::downgrade(&self.child);
        std::thread::spawn(move || {
            std::thread::sleep(lifetime);
            if let Some(child) = child.upgrade() {
                eprintln!("a test's prometheus outlived {lifetime:?}; killing it");
                kill(&child);
            }
        });
    }
}

fn kill(child: &Mutex<Option<Child>>) {
    if let Some(mut child) = child.lock().unwrap_or_else(PoisonError::into_inner).take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        kill(&self.child);
        if std::thread::panicking() {
            eprintln!("prometheus log:\n{}", self.log());
        }
    }
}
