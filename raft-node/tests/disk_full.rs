//! A replica whose data dir runs out of space (a tmpfs shrunk to what it
//! holds: real ENOSPC) stops acknowledging and says so (NOT_SERVING, an
//! UNAVAILABLE that names the data dir), the other two go on, and when space
//! returns it serves again by itself and catches up; every allocation
//! acknowledged before, during and after is in the table, once. Once with a
//! follower's disk, once with the leader's.

mod disk_faults;

use disk_faults::{fill, free_space, DiskCluster, Load, Snapshots, TEST_TIMEOUT};

/// Allocations acknowledged in each phase, at least.
const PER_PHASE: usize = 20;

#[derive(Clone, Copy, Debug)]
enum Target {
    Follower,
    Leader,
}

async fn disk_full_then_space_returns(target: Target) {
    // The follower's disk fills under a snapshot write, the leader's under
    // the log's appends: both paths stop the replica.
    let snapshots = match target {
        Target::Follower => Snapshots::Often,
        Target::Leader => Snapshots::Never,
    };
    let disk = DiskCluster::start(snapshots).await;
    let leader = disk.cluster.wait_for_leader(disk_faults::PHASE_TIMEOUT).await.expect("a leader");
    let full = match target {
        Target::Leader => leader,
        Target::Follower => *disk.cluster.replicas.keys().find(|id| **id != leader).expect("a follower"),
    };
    let full_dir = disk.data_dir(full);
    let pid = disk.cluster.pid(full);

    // --- a steady load, acknowledged while every disk has room
    let load = Load::start(disk.client.clone());
    load.wait_for_more(PER_PHASE, "before the fault").await;

    // --- replica `full`'s disk fills up: it stops and says why
    fill(&full_dir);
    disk.wait_until_serving(full, false).await;
    let log = std::fs::read_to_string(disk.cluster.log_path(full)).expect("the replica's log");
    assert!(
        log.contains("storage failed") && log.contains(&full_dir.display().to_string()) && log.contains("is full"),
        "replica {full}'s log does not say its disk is full:\n{log}"
    );
    if let Target::Leader = target {
        // Its own clients are told, naming the disk, not left to time out.
        disk.assert_refuses_naming(full, &full_dir, "is full").await;
    }

    // --- the other two go on (a new leader if the leader's disk filled)
    load.wait_for_more(PER_PHASE, "while one disk is full").await;
    if let Target::Leader = target {
        let new_leader = disk.wait_for_leader_without(full).await;
        assert_ne!(full, new_leader, "the replica with a full disk cannot lead");
    }
    assert_eq!(Some(false), disk.serving(full).await, "still stopped while the disk is full");

    // --- space returns: it serves again by itself and catches up
    free_space(&full_dir);
    disk.wait_until_serving(full, true).await;
    disk.assert_resumed_in_process(full, pid);
    load.wait_for_more(PER_PHASE, "after space returned").await;
    let acknowledged = load.stop().await;
    disk.wait_until_caught_up(full).await;

    // --- nothing acknowledged is missing or doubled
    disk.assert_all_present(&acknowledged).await;
    eprintln!(
        "{target:?}: {} allocations acknowledged; replica {full}'s disk was full and recovered",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_stops_acknowledging_and_resumes_when_space_returns() {
    tokio::time::timeout(TEST_TIMEOUT, disk_full_then_space_returns(Target::Follower))
        .await
        .expect("the test finishes within its bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_full_disk_stops_acknowledging_a_new_leader_goes_on_and_it_resumes() {
    tokio::time::timeout(TEST_TIMEOUT, disk_full_then_space_returns(Target::Leader))
        .await
        .expect("the test finishes within its bound");
}
