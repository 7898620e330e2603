//! Read-only questions: get by either id, list with filters and paging, the
//! queue, when the next tick is due.

mod common;

use common::*;
use qm_state_machine::record::allocation_id_for;
use qm_state_machine::{AllocationRequest, Command, ListFilter, RequestState};
use uuid::Uuid;

/// Requests 1–3 from agent_1 and 4 from agent_2 in `team_a`, 5 from agent_1 in the
/// default namespace; 1, 2, 4, 5 placed (1 and 2 on node_1), 3 queued.
fn listed_table() -> Table {
    let mut t = Table::with_providers(vec![provider("node_1", cores("a", 2)), provider("node_2", cores("b", 2))]);
    let in_team = |n: u128, requester: &str| AllocationRequest {
        namespace: "team_a".into(),
        requester_id: requester.into(),
        ..request(n, &[("cpu_cores", 1)])
    };
    for request in [
        in_team(1, "agent_1"),
        in_team(2, "agent_1"),
        in_team(4, "agent_2"),
        request(5, &[("cpu_cores", 1)]),
    ] {
        t.allocate(&request);
    }
    t.allocate(&AllocationRequest {
        deadline_ms: Some(T0 + 9_000).into(),
        ..in_team(3, "agent_1")
    });
    t
}

fn ids(records: Vec<&qm_state_machine::RequestRecord>) -> Vec<Uuid> {
    records.into_iter().map(|record| record.request.request_id).collect()
}

#[test]
fn get_accepts_either_id() {
    let t = listed_table();
    assert_eq!(Some(id(4)), t.table.get(id(4)).map(|record| record.request.request_id));
    assert_eq!(
        Some(id(4)),
        t.table.get(allocation_id_for(id(4))).map(|record| record.request.request_id)
    );
    assert_eq!(None, t.table.get(id(42)));
}

#[test]
fn list_filters_by_namespace_requester_provider_and_state() {
    let t = listed_table();
    let list = |filter: ListFilter| ids(t.table.list(&filter));

    assert_eq!(vec![id(1), id(2), id(3), id(4), id(5)], list(ListFilter::default()));
    assert_eq!(
        vec![id(1), id(2), id(3), id(4)],
        list(ListFilter {
            namespace: Some("team_a".into()),
            ..Default::default()
        })
    );
    let team_agent_1 = ListFilter {
        namespace: Some("team_a".into()),
        requester_id: Some("agent_1".into()),
        ..Default::default()
    };
    assert_eq!(vec![id(1), id(2), id(3)], list(team_agent_1.clone()));
    assert_eq!(
        vec![id(3)],
        list(ListFilter {
            state: Some(RequestState::Queued),
            ..team_agent_1
        })
    );
    assert_eq!(
        vec![id(1), id(2)],
        list(ListFilter {
            provider_id: Some("node_1".into()),
            ..Default::default()
        })
    );
    assert_eq!(
        Vec::<Uuid>::new(),
        list(ListFilter {
            namespace: Some("nobody".into()),
            ..Default::default()
        })
    );
}

#[test]
fn list_pages_with_after_and_limit() {
    let t = listed_table();
    let page = |after: Option<Uuid>| {
        ids(t.table.list(&ListFilter {
            after,
            limit: 2,
            ..Default::default()
        }))
    };

    // --- three pages of two, the last one short
    assert_eq!(vec![id(1), id(2)], page(None));
    assert_eq!(vec![id(3), id(4)], page(Some(id(2))));
    assert_eq!(vec![id(5)], page(Some(id(4))));
}

#[test]
fn the_queue_and_the_next_due_time_are_visible() {
    let mut t = listed_table();
    assert_eq!((vec![id(3)], 1), (t.table.queue().collect::<Vec<_>>(), t.table.queue_len()));
    assert_eq!(Some(T0 + 9_000), t.table.next_due_ms());

    // --- a lease due sooner comes first
    t.register(provider("node_3", cores("c", 1)));
    assert_eq!(
        RequestState::Monitoring,
        t.record(id(3)).state,
        "the new core went to the queued request"
    );
    t.register(provider("node_4", cores("d", 1)));
    t.allocate(&AllocationRequest {
        lease_ttl_ms: Some(2_000).into(),
        ..request(6, &[("cpu_cores", 1)])
    });
    assert_eq!(Some(T0 + 2_000), t.table.next_due_ms());

    // --- nothing due once it has expired
    t.tick_at(T0 + 2_000);
    assert_eq!(None, t.table.next_due_ms());
    assert_eq!(5, t.table.active_allocations());
    assert!(t.apply(Command::Tick).result.is_ok());
}
