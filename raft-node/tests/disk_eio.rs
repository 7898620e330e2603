//! A replica whose disk fails writes with EIO (an LD_PRELOAD shim,
//! `tests/disk_faults/eio_shim.c`, built here with `cc`, that fails write,
//! pwrite, fsync, fdatasync and sync_file_range on files under one data dir
//! while a trigger file names it) stops acknowledging and says so, the other
//! two go on, and when the disk works again it serves again by itself and
//! catches up; every acknowledged allocation is in the table, once. The
//! leader's disk fails: the hardest case, a failover and a recovery.
//!
//! One test in its own binary: the shim is loaded through the environment
//! every replica inherits from this process, set before any replica starts.

mod disk_faults;

use std::path::{Path, PathBuf};
use std::process::Command;

use disk_faults::{DiskCluster, Load, Snapshots, PHASE_TIMEOUT, TEST_TIMEOUT};

/// Allocations acknowledged in each phase, at least.
const PER_PHASE: usize = 20;

/// Builds the shim into `dir`; returns the library's path.
fn build_shim(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/disk_faults/eio_shim.c");
    let library = dir.join("eio_shim.so");
    let output = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("cc runs");
    assert!(
        output.status.success(),
        "building the EIO shim failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    library
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fails_with_eio_stops_acknowledging_and_resumes_when_it_works() {
    tokio::time::timeout(TEST_TIMEOUT, eio_on_the_leader())
        .await
        .expect("the test finishes within its bound");
}

async fn eio_on_the_leader() {
    // --- the shim, armed by a trigger file no replica's disk is named in yet
    let scratch = tempfile::tempdir().expect("a scratch dir");
    let library = build_shim(scratch.path());
    let trigger = scratch.path().join("eio-trigger");
    std::env::set_var("LD_PRELOAD", &library);
    std::env::set_var("QM_EIO_SHIM_TRIGGER", &trigger);
    let disk = DiskCluster::start(Snapshots::Often).await;
    let failing = disk.cluster.wait_for_leader(PHASE_TIMEOUT).await.expect("a leader");
    let failing_dir = disk.data_dir(failing);
    let pid = disk.cluster.pid(failing);

    // --- a steady load while every disk works
    let load = Load::start(disk.client.clone());
    load.wait_for_more(PER_PHASE, "before the fault").await;

    // --- the leader's disk fails every write: it stops and says why
    std::fs::write(&trigger, failing_dir.display().to_string()).expect("arm the shim");
    disk.wait_until_serving(failing, false).await;
    let log = std::fs::read_to_string(disk.cluster.log_path(failing)).expect("the replica's log");
    assert!(
        log.contains("storage failed") && log.contains(&failing_dir.display().to_string()),
        "replica {failing}'s log does not name its failed disk:\n{log}"
    );
    disk.assert_refuses_naming(failing, &failing_dir, "").await;

    // --- the other two elect a leader and go on
    load.wait_for_more(PER_PHASE, "while the old leader's disk fails").await;
    let new_leader = disk.wait_for_leader_without(failing).await;
    assert_ne!(failing, new_leader, "a replica whose disk fails cannot lead");

    // --- the disk works again: it serves again by itself and catches up
    std::fs::remove_file(&trigger).expect("disarm the shim");
    disk.wait_until_serving(failing, true).await;
    disk.assert_resumed_in_process(failing, pid);
    load.wait_for_more(PER_PHASE, "after the disk recovered").await;
    let acknowledged = load.stop().await;
    disk.wait_until_caught_up(failing).await;

    // --- nothing acknowledged is missing or doubled
    disk.assert_all_present(&acknowledged).await;
    eprintln!(
        "{} allocations acknowledged; replica {failing}'s disk failed with EIO and recovered",
        acknowledged.len()
    );
}
