//! Where the binaries under test are: the `qm-node` and `qm` that
//! `cargo build --workspace --bins` left in the workspace's target directory.
//! Tests build nothing themselves (scripts/verify.sh builds first), and a
//! missing binary fails the test with a message saying how to build it.

use std::path::{Path, PathBuf};

/// Environment variable naming the `qm-node` binary to test, overriding the search.
pub const NODE_BINARY_ENV: &str = "QM_NODE_BIN";
/// Environment variable naming the `qm` binary to test, overriding the search.
pub const CLI_BINARY_ENV: &str = "QM_BIN";

/// The `qm-node` binary: `$QM_NODE_BIN`, else the one the workspace built.
pub fn node_binary() -> PathBuf {
    binary("qm-node", NODE_BINARY_ENV)
}

/// The `qm` binary: `$QM_BIN`, else the one the workspace built.
pub fn cli_binary() -> PathBuf {
    binary("qm", CLI_BINARY_ENV)
}

/// `$env` if set, else `name` next to this test's profile directory
/// (`<target>/debug/deps/<test>` → `<target>/debug/<name>`), else under
/// `$CARGO_TARGET_DIR` or `<workspace>/target`.
fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env}={} is not a file", path.display());
        return path;
    }
    let file_name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let beside_tests = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(&file_name)));
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    let candidates: Vec<PathBuf> = beside_tests
        .into_iter()
        .chain([target_dir.join("debug").join(&file_name)])
        .collect();
    candidates.iter().find(|path| path.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "{name} not found (looked at {}); build it first with `cargo build --workspace --bins` \
             (scripts/verify.sh does), or set {env}",
            candidates
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The workspace's root: this crate is `raft-node/testkit/` in it.
pub fn workspace_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("testkit sits two levels below the workspace root")
}
