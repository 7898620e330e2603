//! Snapshots restore an equal table, and `usage()` reports the right figures.

mod common;

use std::collections::BTreeMap;

use common::*;
use qm_state_machine::table::SNAPSHOT_FORMAT_VERSION;
use qm_state_machine::{
    AllocationRequest, AllocationTable, Command, KindUsage, ProviderStatus, ProviderUsage, SnapshotError, StampedCommand, TableConfig,
    Usage,
};

/// Every kind of state at once: active and failed providers, a confirming
/// provider, leases, a queue with deadlines, finished requests, history.
fn rich_table() -> Table {
    let mut t = Table::with_config(TableConfig {
        event_history_max: 50,
        ..Default::default()
    });
    let mut confirming = provider(
        "node_1",
        vec![
            unit("cpu_1", "cpu_cores", 1),
            unit("cpu_2", "cpu_cores", 1),
            unit("mem_1", "memory_gb", 16),
        ],
    );
    confirming.confirms_allocations = true;
    confirming.labels = labels(&[("zone", "a")]);
    t.register(confirming);
    t.register(provider(
        "node_2",
        vec![unit("cpu_1", "cpu_cores", 1), unit("vol_1", "storage_gb", 100)],
    ));
    t.allocate(&AllocationRequest {
        lease_ttl_ms: Some(60_000).into(),
        ..request(1, &[("cpu_cores", 1), ("memory_gb", 4)])
    });
    t.allocate(&request(2, &[("storage_gb", 30)]));
    t.allocate(&AllocationRequest {
        deadline_ms: Some(T0 + 30_000).into(),
        priority: 2,
        ..request(3, &[("cpu_cores", 2)])
    });
    t.allocate(&request(4, &[("gpu", 1)]));
    t.now_ms += 500;
    t.allocate(&request(5, &[("cpu_cores", 1)]));
    t.release(id(5));
    t.apply(Command::ProviderFailed {
        provider_id: "node_2".into(),
    });
    t
}

#[test]
fn a_snapshot_restores_an_equal_table() {
    let t = rich_table();

    // --- to bytes and back: equal, down to the bytes
    let bytes = t.table.to_snapshot_bytes();
    let restored = AllocationTable::from_snapshot_bytes(&bytes).unwrap();
    assert_eq!(t.table, restored);
    assert_eq!(bytes, restored.to_snapshot_bytes());
    restored.assert_invariants();

    // --- and it behaves the same from there on
    let mut original = t.table.clone();
    let mut copy = restored;
    for (now_ms, command) in [
        (
            T0 + 1_000,
            Command::ProviderRecovered {
                provider_id: "node_2".into(),
            },
        ),
        (T0 + 2_000, Command::Allocate(request(6, &[("cpu_cores", 1)]))),
        (T0 + 31_000, Command::Tick),
        (T0 + 61_000, Command::Tick),
    ] {
        let entry = StampedCommand::new(now_ms, command);
        assert_eq!(original.apply(&entry), copy.apply(&entry));
        assert_eq!(original, copy);
    }
}

#[test]
fn a_restored_table_shares_its_names_as_a_built_one_does() {
    let t = rich_table();
    let restored = AllocationTable::from_snapshot_bytes(&t.table.to_snapshot_bytes()).unwrap();
    for table in [&t.table, &restored] {
        let node_1 = table.providers().find(|provider| provider.provider_id == "node_1").unwrap();
        let first = table.get(id(1)).unwrap();
        let placement = first.placement.as_ref().expect("request 1 is placed");
        assert!(placement.provider_id.shares_with(&node_1.provider_id));
        for grant in &placement.grants {
            let unit = &node_1.resources[grant.resource_id.as_str()];
            assert!(grant.resource_id.shares_with(&unit.resource_id) && grant.kind.shares_with(&unit.kind));
            let asked = first
                .request
                .requirements
                .iter()
                .find(|requirement| requirement.kind == grant.kind)
                .unwrap();
            assert!(asked.kind.shares_with(&grant.kind), "{} is the grant's copy", asked.kind);
        }
        // Every request of one owner holds the same copy of its names.
        let second = table.get(id(2)).unwrap();
        assert!(first.request.requester_id.shares_with(&second.request.requester_id));
        assert!(first.request.namespace.shares_with(&second.request.namespace));
    }
}

/// Providers that name their units alike hold one copy of each name, as
/// the restored table does (its decode shares every equal name).
#[test]
fn providers_registered_alike_share_their_units_names() {
    let t = rich_table();
    let restored = AllocationTable::from_snapshot_bytes(&t.table.to_snapshot_bytes()).unwrap();
    for table in [&t.table, &restored] {
        let node = |id: &str| table.providers().find(|provider| provider.provider_id == id).unwrap();
        let (node_1, node_2) = (node("node_1"), node("node_2"));
        let (cpu_1, other_cpu_1) = (&node_1.resources["cpu_1"], &node_2.resources["cpu_1"]);
        assert!(cpu_1.resource_id.shares_with(&other_cpu_1.resource_id));
        assert!(cpu_1.kind.shares_with(&other_cpu_1.kind));
    }
    // A registration again (an update) keeps the names it had.
    let mut t = t;
    let before = t
        .table
        .providers()
        .find(|provider| provider.provider_id == "node_2")
        .unwrap()
        .resources["vol_1"]
        .resource_id
        .clone();
    t.register(provider(
        "node_2",
        vec![unit("cpu_1", "cpu_cores", 1), unit("vol_1", "storage_gb", 200)],
    ));
    let node_2 = t.table.providers().find(|provider| provider.provider_id == "node_2").unwrap();
    assert_eq!(200, node_2.resources["vol_1"].capacity);
    assert!(node_2.resources["vol_1"].resource_id.shares_with(&before));
}

#[test]
fn the_config_travels_inside_the_snapshot() {
    let config = TableConfig {
        dedupe_window_ms: 5,
        queue_len_max: 7,
        ..Default::default()
    };
    let restored = AllocationTable::from_snapshot_bytes(&AllocationTable::new(config.clone()).to_snapshot_bytes()).unwrap();
    assert_eq!(&config, restored.config());
}

#[test]
fn a_damaged_snapshot_is_refused_with_the_reason() {
    let bytes = rich_table().table.to_snapshot_bytes();

    // --- another format version
    let mut other_version = bytes.clone();
    assert_eq!(
        SNAPSHOT_FORMAT_VERSION as u8, other_version[0],
        "the version is the first byte while it is small"
    );
    other_version[0] += 1;
    let error = AllocationTable::from_snapshot_bytes(&other_version).unwrap_err();
    assert!(
        matches!(error, SnapshotError::NewerVersion { found, expected } if found == SNAPSHOT_FORMAT_VERSION + 1 && expected == SNAPSHOT_FORMAT_VERSION),
        "{error}"
    );

    // --- cut short, or with bytes after the end
    assert!(matches!(
        AllocationTable::from_snapshot_bytes(&bytes[..bytes.len() / 2]),
        Err(SnapshotError::Decode(_))
    ));
    assert!(matches!(AllocationTable::from_snapshot_bytes(&[]), Err(SnapshotError::Decode(_))));
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0, 0, 0]);
    assert!(matches!(
        AllocationTable::from_snapshot_bytes(&longer),
        Err(SnapshotError::Trailing { trailing: 3 })
    ));
}

#[test]
fn usage_reports_capacity_use_and_failed_capacity() {
    let t = rich_table();
    let kind = |capacity, used, free, failed_capacity| KindUsage {
        capacity,
        used,
        free,
        failed_capacity,
    };

    // node_1 (active): cpu_1 held by request 1, cpu_2 free, 4 of mem_1's 16 held.
    // node_2 (failed): its storage allocation was queued; its capacity counts as failed.
    let node_1 = ProviderUsage {
        provider_id: "node_1".into(),
        status: ProviderStatus::Active,
        allocations: 1,
        kinds: BTreeMap::from([("cpu_cores".into(), kind(2, 1, 1, 0)), ("memory_gb".into(), kind(16, 4, 12, 0))]),
    };
    let node_2 = ProviderUsage {
        provider_id: "node_2".into(),
        status: ProviderStatus::Failed,
        allocations: 0,
        kinds: BTreeMap::from([("cpu_cores".into(), kind(0, 0, 0, 1)), ("storage_gb".into(), kind(0, 0, 0, 100))]),
    };
    let expected = Usage {
        by_kind: BTreeMap::from([
            ("cpu_cores".into(), kind(2, 1, 1, 1)),
            ("memory_gb".into(), kind(16, 4, 12, 0)),
            ("storage_gb".into(), kind(0, 0, 0, 100)),
        ]),
        providers: vec![node_1, node_2],
        queue_len: 2,
        active_allocations: 1,
        failed_providers: vec!["node_2".into()],
        revision: t.table.revision(),
        evacuations_pending: 0,
        cordoned_providers: vec![],
        fragmentation_permille: t.table.fragmentation_permille(),
        emptiable_providers: vec![],
        moves_started: 0,
        moves_completed: 0,
        moves_rolled_back: 0,
    };
    assert_eq!(expected, t.table.usage());
}

#[test]
fn a_snapshot_claiming_a_string_past_the_limit_is_refused_not_allocated() {
    use qm_state_machine::table::SNAPSHOT_DECODED_BYTES_MAX;
    let mut t = Table::new();
    t.register(provider("node_with_a_long_name", cores("cpu", 2)));
    let bytes = t.table.to_snapshot_bytes();
    // The provider id as encoded (its length, then its bytes), and the
    // same place claiming 2^60 bytes instead (bincode's varint: 0xFD, u64).
    let id = b"node_with_a_long_name";
    let mut encoded_id = vec![id.len() as u8];
    encoded_id.extend_from_slice(id);
    let at = bytes
        .windows(encoded_id.len())
        .position(|window| window == encoded_id)
        .expect("the id is in the snapshot");
    let mut corrupt = bytes[..at].to_vec();
    corrupt.push(0xFD);
    corrupt.extend_from_slice(&(1u64 << 60).to_le_bytes());
    corrupt.extend_from_slice(&bytes[at + 1..]);
    const _: () = assert!((1usize << 60) > SNAPSHOT_DECODED_BYTES_MAX);

    // Without the limit the allocation aborts the process.
    assert!(matches!(
        AllocationTable::from_snapshot_bytes(&corrupt),
        Err(SnapshotError::Decode(_))
    ));
}

/// Found by the `snapshot` fuzz target (session 11): a decodable snapshot
/// whose policy holders name a request the table does not hold. The index
/// rebuild looked the request up and panicked; it is refused now.
#[test]
fn a_snapshot_charging_a_policy_holder_for_an_unknown_request_is_refused() {
    let bytes = include_bytes!("../../fuzz/corpus/snapshot/policy_holder_of_an_unknown_request");
    match AllocationTable::from_snapshot_bytes(bytes) {
        Err(SnapshotError::Inconsistent { reason }) => assert!(reason.contains("does not hold"), "{reason}"),
        other => panic!("expected an inconsistent snapshot, got {:?}", other.map(|_| "a table")),
    }
}
