//! Data written by earlier versions still opens: the fixtures under
//! `tests/fixtures/v<N>/` (a backup file and a replica's data dir, written
//! by the build whose formats they name) are opened by this build, and
//! data of a newer version is refused with a message that says so.
//!
//! When a format version changes, add a new `v<N>` directory with
//! `regenerate_fixtures` (ignored; run it by name) and keep the old ones:
//! every later build must still open them (README, *Compatibility*).

mod support;

use qm_testkit::table_view::{expected_from, served_by};
use std::path::{Path, PathBuf};
use std::time::Duration;

use qm_client::proto::api;
use qm_raft_node::restore::read_backup;
use qm_raft_node::storage::{self, StorageError};
use qm_state_machine::{AllocationTable, TableConfig};
use qm_testkit::LocalCluster;
use support::*;

/// Every fixture kept, oldest first: `v1` has backup 1, storage layout 1,
/// snapshot 5 (written again in place when snapshot 4 became 5, before any
/// release); `v2` snapshot 6 (quotas, preemption, cordons and live moves),
/// with a quota set and a cordoned provider; `v3` snapshot 7 (capability
/// policies), with a policy bound by certificate name and by role; `v4`
/// snapshot 8 (policy events in the history) and log format 2, the role
/// binding added by a `BindPolicy` entry. Every build must open all of them.
const FIXTURE_VERSIONS: &[&str] = &["v1", "v2", "v3", "v4"];
/// The one `regenerate_fixtures` writes: this build's formats.
const NEWEST_FIXTURE: &str = "v4";
/// The first fixture whose table holds capability policies.
const FIRST_WITH_POLICIES: &str = "v3";
/// The first fixture whose history holds policy events.
const FIRST_WITH_POLICY_EVENTS: &str = "v4";

fn fixtures(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(version)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn the_backup_fixture_of_every_version_opens() {
    for version in FIXTURE_VERSIONS {
        let backup = read_backup(&fixtures(version).join("backup.qmb")).expect("the fixture backup opens");
        let table = AllocationTable::from_snapshot_bytes(&backup.table).expect("its table decodes");
        assert!(
            table.active_allocations() > 0 && table.queue_len() > 0,
            "the fixture {version} holds allocations and a queue"
        );
        assert_eq!(backup.header.revision, table.revision(), "{version}");
        if *version >= FIRST_WITH_POLICIES {
            let policy = table.capability_policy("fixture-policy").expect("the fixture's policy");
            assert_eq!(2, policy.bindings.len(), "{version}: {policy:?}");
        }
        let oldest_kept = match table.events_from(1) {
            Ok(_) => 1,
            Err(qm_state_machine::EventsError::Compacted { oldest, .. }) => oldest,
        };
        let policy_events: Vec<&str> = table
            .events_from(oldest_kept)
            .expect("the history from its oldest event")
            .map(|event| event.type_name())
            .filter(|name| name.starts_with("policy_"))
            .collect();
        let expected: &[&str] = match *version >= FIRST_WITH_POLICY_EVENTS {
            true => &["policy_set", "policy_bound"],
            false => &[],
        };
        assert_eq!(expected, policy_events, "{version}");
    }
}

/// The backup of every version restores (`qm-node restore`) into a new
/// data dir that opens with the backup's table: a backup of format 6,
/// taken before capability policies, restores with no policies.
#[tokio::test]
async fn the_backup_fixture_of_every_version_restores() {
    for version in FIXTURE_VERSIONS {
        let dir = tempfile::tempdir().expect("temp dir");
        let from = fixtures(version).join("backup.qmb");
        let args = qm_raft_node::restore::RestoreArgs {
            from: from.clone(),
            data_dir: dir.path().join("data"),
            id: 1,
            peers: "1=127.0.0.1:1".to_owned(),
        };
        qm_raft_node::restore::restore(&args).await.expect("restores");
        let (_, state_machine) = storage::open(&args.data_dir, TableConfig::default()).await.expect("opens");
        let backup = read_backup(&from).expect("backup");
        let expected = AllocationTable::from_snapshot_bytes(&backup.table).expect("table");
        let opened = state_machine.reader().read().await.table().clone();
        assert_eq!(expected, opened, "{version}");
        assert_eq!(*version >= FIRST_WITH_POLICIES, opened.policies().next().is_some(), "{version}");
    }
}

/// The fixture data dir (one replica, a snapshot and log entries after
/// it) opens in a real replica, which serves the same table as the backup
/// taken from it when it was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_fixture_of_every_version_opens() {
    for version in FIXTURE_VERSIONS {
        tokio::time::timeout(TEST_TIMEOUT, async {
            let backup = read_backup(&fixtures(version).join("backup.qmb")).expect("backup");
            let table = AllocationTable::from_snapshot_bytes(&backup.table).expect("table");
            let cluster = LocalCluster::configure(node_binary(), 1, &QUIET_PROVIDERS).expect("lay out");
            cluster.kill_after(TEST_TIMEOUT);
            copy_dir(&fixtures(version).join("data-dir"), &cluster.replicas[&1].data_dir);
            cluster.start_replica(1).expect("start");
            cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
            let status = cluster.status_of(1).await.expect("status");
            cluster
                .wait_for_applied(1, status.commit_index, Duration::from_secs(30))
                .await
                .expect("applied");
            let expected = expected_from(&table);
            let served = served_by(cluster.addr(1)).await;
            assert_eq!(expected, served, "the data dir of {version}");
        })
        .await
        .expect("the test finished in time");
    }
}

/// A data dir, a snapshot or a backup of a newer version is refused with a
/// message that says so, never misread.
#[tokio::test]
async fn data_of_a_newer_version_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");

    // --- a data dir stamped with a newer storage layout
    let data_dir = dir.path().join("data");
    copy_dir(&fixtures(NEWEST_FIXTURE).join("data-dir"), &data_dir);
    {
        let db = sled::open(&data_dir).expect("sled opens");
        let meta = db.open_tree("raft_meta").expect("meta tree");
        let newer = bincode::serde::encode_to_vec(storage::STORAGE_LAYOUT_VERSION + 1, bincode::config::standard()).expect("encode");
        meta.insert("layout_version", newer).expect("insert");
        db.flush().expect("flush");
    }
    let error = storage::open(&data_dir, TableConfig::default()).await.expect_err("a newer layout");
    assert!(matches!(error, StorageError::NewerLayoutVersion { .. }), "{error}");
    assert!(error.to_string().contains("newer than this build reads"), "{error}");

    // --- a backup of a newer format
    let mut bytes = std::fs::read(fixtures(NEWEST_FIXTURE).join("backup.qmb")).expect("read");
    bytes[8] = bytes[8].wrapping_add(1);
    let newer = dir.path().join("newer.qmb");
    std::fs::write(&newer, &bytes).expect("write");
    let error = read_backup(&newer).expect_err("a newer backup").to_string();
    assert!(error.contains("newer than this build reads"), "{error}");
}

/// Writes `tests/fixtures/v<N>/` from a one-replica cluster of this build:
/// `cargo test -p qm-raft-node --test format_fixtures -- --ignored regenerate_fixtures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the fixtures; run by hand when a format version changes"]
async fn regenerate_fixtures() {
    let out = fixtures(NEWEST_FIXTURE);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("mkdir");
    let cluster = start_cluster(1, &["--snapshot-every-entries", "20", "--log-kept-behind-snapshot-entries", "5"]).await;
    let (_, mut api) = leader_client(&cluster).await;
    api.register_provider(provider("node_1", 4)).await.expect("register");
    // State that format 7 added: a capability policy with two bindings,
    // early, so that the data dir's snapshot holds it; the second is bound
    // by a `BindPolicy` entry (log format 2), which format 8's history
    // records as `policy_bound`, after the set's `policy_set`.
    let policy = api::CapabilityPolicy {
        name: "fixture-policy".into(),
        kinds_limited: true,
        kinds: vec!["cpu_cores".into()],
        max_per_request: [("cpu_cores".to_owned(), 2)].into_iter().collect(),
        max_held: [("cpu_cores".to_owned(), 8)].into_iter().collect(),
        priority_max: Some(10),
        may_preempt: false,
        bindings: vec![api::PolicyBinding {
            cert_name: "fixture-holder".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    api.set_policy(api::SetPolicyRequest { policy: Some(policy) })
        .await
        .expect("policy");
    api.bind_policy(api::PolicyBindingRequest {
        name: "fixture-policy".into(),
        binding: Some(api::PolicyBinding {
            role: "resource_consumer".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
    })
    .await
    .expect("bind");
    let mut previous = None;
    for round in 0..30 {
        let reply = api
            .allocate(api::AllocateRequest {
                request: Some(request("fixture", 1)),
            })
            .await
            .expect("allocate")
            .into_inner();
        if round % 3 == 2 {
            if let Some(id) = previous.take() {
                api.release(api::ReleaseRequest { id }).await.expect("release");
            }
        }
        previous = Some(reply.allocation_id);
    }
    let client = qm_client::Client::new(qm_client::ClientConfig::with_endpoints(cluster.endpoints())).expect("client");
    // State that format 6 added: a namespace's quota, a cordoned provider.
    let quota = [("cpu_cores".to_owned(), 64)].into_iter().collect();
    client.set_quota("default", &quota).await.expect("quota");
    api.register_provider(provider("node_2", 2)).await.expect("register");
    client.set_provider_scheduling("node_2", true).await.expect("cordon");
    let backup = client.snapshot_save().await.expect("backup");
    std::fs::write(out.join("backup.qmb"), backup).expect("write backup");
    let status = cluster.status_of(1).await.expect("status");
    assert!(
        status.snapshot_index > 0 && status.last_log_index > status.snapshot_index,
        "{status:?}"
    );
    cluster.kill(1).expect("kill");
    copy_dir(&cluster.replicas[&1].data_dir, &out.join("data-dir"));
}
