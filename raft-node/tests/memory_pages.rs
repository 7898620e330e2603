//! What a replica asks of its host's memory: 4 KiB pages only, unless
//! `--transparent-huge-pages` (a huge page is resident whole once one byte
//! of it is used; BENCHMARKS.md, "Session 15"). Read from the kernel's own
//! account of each `qm-node` process (`THP_enabled` in /proc/PID/status).

mod support;

use support::{start_cluster, TEST_TIMEOUT};

/// `THP_enabled` of process `pid`: whether the kernel may back its memory
/// with transparent huge pages.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled line for {pid}: {status}"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_to_small_pages_unless_told_otherwise() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let small = start_cluster(1, &[]).await;
        let pid = small.pid(1).expect("replica 1 runs");
        assert_eq!("0", thp_enabled(pid), "by default the replica turns transparent huge pages off");

        // With the flag it leaves the host's setting as this test process has it.
        let huge = start_cluster(1, &["--transparent-huge-pages"]).await;
        let pid = huge.pid(1).expect("replica 1 runs");
        assert_eq!(thp_enabled(std::process::id()), thp_enabled(pid));
    })
    .await
    .expect("test finished in time");
}
