//! The real services some tests need besides `qm-node`: RabbitMQ,
//! Prometheus, a Python venv with independent clients (pika, py-consul),
//! and Debian's Chromium with Playwright (npm's `playwright-core`) for the
//! web UI's browser tests. [`ensure_installed`] runs `scripts/install-services.sh` once
//! per test process, so a test on a fresh machine installs what it needs
//! instead of skipping; the script holds a lock, so test binaries running at
//! once install only once.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::binaries::workspace_dir;

/// Environment variable naming the venv (as the script reads it).
pub const VENV_ENV: &str = "QM_VENV";

/// Installs what is missing (apt as root, pip into the venv); panics with
/// the script's exit status if it fails, since no such test can go on.
pub fn ensure_installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let script = workspace_dir().join("scripts/install-services.sh");
        let status = Command::new(&script)
            .status()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
        assert!(status.success(), "{} failed: {status}", script.display());
    });
}

/// Environment variable naming Playwright's directory (as the script reads it).
pub const NODE_MODULES_ENV: &str = "QM_NODE_MODULES";
/// The browser the UI tests drive: Debian's package, not a Playwright download.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The `playwright-core` package directory, for a Node script's `require`.
pub fn playwright_core() -> PathBuf {
    ensure_installed();
    let prefix = std::env::var_os(NODE_MODULES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/qm-node-modules"));
    prefix.join("node_modules/playwright-core")
}

/// The venv's Python, with pika and py-consul importable.
pub fn venv_python() -> PathBuf {
    ensure_installed();
    let venv = std::env::var_os(VENV_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/qm-venv"));
    venv.join("bin/python")
}
