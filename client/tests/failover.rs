//! The client against fake replicas: redirects, failover, retries that never
//! allocate twice, unknown outcomes, and a watch that resumes without gaps.

mod support;

use std::time::Duration;

use futures::StreamExt;
use qm_client::{Client, ClientConfig, Consistency, Error};
use qm_state_machine::{Command, ProviderRegistration, RequestState, ResourceRequest};
use serde_json::json;
use support::fake::{eventually, FakeCluster, Role};
use uuid::Uuid;

fn client(cluster: &FakeCluster) -> Client {
    let config = ClientConfig {
        request_timeout_ms: 3_000,
        attempt_timeout_ms: 300,
        connect_timeout_ms: 200,
        backoff_base_ms: 10,
        backoff_max_ms: 50,
        ..ClientConfig::with_endpoints(cluster.addrs())
    };
    Client::new(config).unwrap()
}

fn registration(cpus: u32) -> ProviderRegistration {
    let resources: Vec<_> = (1..=cpus)
        .map(|n| json!({"resource_id": format!("cpu_{n}"), "kind": "cpu_cores", "capacity": 1}))
        .collect();
    serde_json::from_value(json!({"provider_id": "node_1", "resources": resources})).unwrap()
}

fn request(cpus: u32) -> ResourceRequest {
    serde_json::from_value(json!({"requester_id": "agent_123", "resource_requirements": {"cpu_cores": cpus}, "priority": 1})).unwrap()
}

fn with_provider(cpus: u32) -> FakeCluster {
    let cluster = FakeCluster::start(3);
    cluster.apply(Command::RegisterProvider(registration(cpus).validate().unwrap()));
    cluster
}

#[tokio::test]
async fn a_follower_redirects_to_the_leader_which_is_then_remembered() {
    let cluster = with_provider(4);
    cluster.elect(2);
    let client = client(&cluster);

    // --- the first call starts at replica 0 and is redirected
    let reply = client.allocate(request(1)).await.unwrap();

    assert_eq!("allocated", reply.status);
    assert_eq!((1, 0, 1), (cluster.calls(0), cluster.calls(1), cluster.calls(2)));
    assert_eq!(Some(cluster.addr(2)), client.leader_addr());

    // --- the next call goes straight to the leader
    client.get(&reply.request_id, Consistency::Linearizable).await.unwrap();

    assert_eq!((1, 0, 2), (cluster.calls(0), cluster.calls(1), cluster.calls(2)));
}

#[tokio::test]
async fn a_killed_leader_is_failed_over_and_the_new_one_found() {
    let mut cluster = with_provider(4);
    let client = client(&cluster);
    client.allocate(request(1)).await.unwrap();
    assert_eq!(Some(cluster.addr(0)), client.leader_addr());

    // --- kill the leader; replica 1 takes over
    cluster.kill(0);
    cluster.elect(1);

    let reply = client.allocate(request(1)).await.unwrap();

    assert_eq!("allocated", reply.status);
    assert_eq!(Some(cluster.addr(1)), client.leader_addr());
    assert_eq!(2, cluster.with_table(|table| table.active_allocations()));
}

#[tokio::test]
async fn a_call_waits_out_an_election_while_followers_still_name_the_dead_leader() {
    let mut cluster = with_provider(4);
    // The default backoff: waits long enough for an election (the tests'
    // quick one gives up on leaders in about 400 ms).
    let config = ClientConfig {
        request_timeout_ms: 3_000,
        attempt_timeout_ms: 300,
        ..ClientConfig::with_endpoints(cluster.addrs())
    };
    let client = Client::new(config).unwrap();
    client.allocate(request(1)).await.unwrap();

    // --- kill the leader; for 600 ms the followers still name it, then 1 is elected
    cluster.kill(0);
    let elected = tokio::time::Instant::now() + Duration::from_millis(600);
    let allocation = tokio::spawn({
        let client = client.clone();
        async move { client.allocate(request(1)).await }
    });
    tokio::time::sleep_until(elected).await;
    cluster.elect(1);

    let reply = allocation.await.unwrap().unwrap();
    assert_eq!("allocated", reply.status);
    assert_eq!(Some(cluster.addr(1)), client.leader_addr());
    assert!(cluster.calls(2) >= 1, "the followers were asked while electing");
}

#[tokio::test]
async fn a_paused_replica_costs_one_attempt_not_the_whole_call() {
    let cluster = with_provider(4);
    cluster.elect(1);
    cluster.set_role(0, Role::Paused);
    let client = client(&cluster);
    let started = tokio::time::Instant::now();

    let reply = client.allocate(request(1)).await.unwrap();

    assert_eq!("allocated", reply.status);
    assert!(started.elapsed() < Duration::from_millis(1_500), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_retry_after_a_lost_answer_allocates_once() {
    let cluster = with_provider(4);
    let client = client(&cluster);
    let mut wanted = request(2);
    wanted.request_id = Some("550e8400-e29b-41d4-a716-446655440000".into());

    // --- the leader applies the allocation but the answer is lost, twice
    cluster.lose_answers(0, 2);
    let reply = client.allocate(wanted).await.unwrap();

    assert_eq!(
        ("550e8400-e29b-41d4-a716-446655440000", "allocated"),
        (reply.request_id.as_str(), reply.status.as_str())
    );
    assert_eq!(3, cluster.calls(0), "two lost answers, then the retry's");
    assert_eq!(
        1,
        cluster.with_table(|table| table.active_allocations()),
        "one allocation, not three"
    );
    assert_eq!(2, cluster.with_table(|table| table.usage().by_kind["cpu_cores"].used));
}

#[tokio::test]
async fn a_write_whose_answers_are_all_lost_is_unknown_not_failed() {
    let cluster = with_provider(4);
    let client = client(&cluster);
    cluster.lose_answers(0, u32::MAX);

    let error = client.allocate(request(1)).await.unwrap_err();

    let Error::Unknown {
        request_id: Some(request_id),
        ..
    } = &error
    else {
        panic!("expected Unknown with the generated request id, got {error:?}")
    };
    assert_eq!(4, cluster.calls(0), "1 attempt + retries_max (3) retries");
    // --- the caller resolves it by reading the request back
    cluster.lose_answers(0, 0);
    let record = client.get(request_id, Consistency::Linearizable).await.unwrap();
    assert_eq!("allocated", record.status, "it had taken effect, once");
    assert_eq!(1, cluster.with_table(|table| table.active_allocations()));
}

#[tokio::test]
async fn a_refusal_caused_by_a_lost_earlier_attempt_is_unknown_not_failed() {
    let cluster = with_provider(1);
    let client = client(&cluster);

    // --- the deregistration applies, its answer is lost, the retry finds no provider
    cluster.lose_answers(0, 1);
    let error = client.deregister_provider("node_1").await.unwrap_err();

    assert!(
        matches!(&error, Error::Unknown { last_cause, .. } if last_cause.starts_with("unknown provider node_1")),
        "{error:?}"
    );
    assert!(cluster.with_table(|table| table.provider("node_1").is_none()));
    // --- without a lost attempt, the same refusal is plain
    let error = client.deregister_provider("node_1").await.unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
}

#[tokio::test]
async fn nothing_listening_is_unavailable_with_every_attempt_counted() {
    let mut cluster = FakeCluster::start(3);
    for index in 0..3 {
        cluster.kill(index);
    }
    let client = client(&cluster);

    let error = client.allocate(request(1)).await.unwrap_err();

    assert!(matches!(error, Error::Unavailable { attempts: 4, .. }), "{error:?}");
}

#[tokio::test]
async fn no_leader_anywhere_is_unavailable_not_unknown() {
    let cluster = FakeCluster::start(3);
    for index in 0..3 {
        cluster.set_role(index, Role::Follower { leader: None });
    }
    let client = client(&cluster);

    let error = client.allocate(request(1)).await.unwrap_err();

    let waits = qm_client::client::LEADER_WAITS_MAX;
    assert!(
        matches!(error, Error::Unavailable { attempts, .. } if attempts == waits + 1),
        "{error:?}"
    );
    // --- a stale read works without a leader
    client.system_state(Consistency::Stale).await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_not_retried() {
    let cluster = with_provider(4);
    let client = client(&cluster);

    // --- caught by the client: nothing sent
    let error = client.allocate(request(0)).await.unwrap_err();
    assert_eq!(
        "invalid resource_requirements.cpu_cores: must be positive, got 0",
        error.to_string()
    );
    assert_eq!(0, cluster.calls(0));

    // --- caught by the server (it knows the providers): sent once
    let mut unknown_provider = request(1);
    unknown_provider.constraints = Some(serde_json::from_value(json!({"provider_id": "node_9"})).unwrap());
    let error = client.allocate(unknown_provider).await.unwrap_err();
    let Error::InvalidArgument { field, reason } = error else {
        panic!("{error:?}")
    };
    assert_eq!(
        ("constraints.provider_id", "unknown provider node_9"),
        (field.as_str(), reason.as_str())
    );
    assert_eq!(1, cluster.calls(0));
}

#[tokio::test]
async fn refusals_are_typed() {
    let cluster = with_provider(4);
    let client = client(&cluster);
    let mut first = request(1);
    first.request_id = Some(Uuid::new_v4().to_string());
    let granted = client.allocate(first.clone()).await.unwrap();

    let missing = client
        .get(&Uuid::new_v4().to_string(), Consistency::Linearizable)
        .await
        .unwrap_err();
    let mut reused = request(2);
    reused.request_id = first.request_id.clone();
    let conflict = client.allocate(reused).await.unwrap_err();
    let no_lease = client.renew_lease(&granted.allocation_id).await.unwrap_err();

    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
    assert!(
        matches!(
            conflict,
            Error::Conflict {
                kind: qm_client::ConflictKind::AlreadyExists,
                ..
            }
        ),
        "{conflict:?}"
    );
    assert!(
        matches!(
            no_lease,
            Error::Conflict {
                kind: qm_client::ConflictKind::FailedPrecondition,
                ..
            }
        ),
        "{no_lease:?}"
    );
}

#[tokio::test]
async fn allocate_and_wait_returns_once_capacity_frees() {
    let cluster = with_provider(2);
    let client = client(&cluster);
    let holder = client.allocate(request(2)).await.unwrap();

    // --- a second request queues, and waits
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.allocate_and_wait(request(1), Duration::from_secs(10)).await }
    });
    eventually(Duration::from_secs(5), "the second request to queue", || {
        cluster.with_table(|table| table.queue_len() == 1)
    })
    .await;

    // --- release the first: the second is granted
    client.release(&holder.allocation_id).await.unwrap();

    let granted = waiting.await.unwrap().unwrap();
    assert_eq!(("allocated", "monitoring"), (granted.status.as_str(), granted.state.as_str()));
}

#[tokio::test]
async fn allocate_and_wait_reports_a_cancelled_or_still_queued_request() {
    let cluster = with_provider(1);
    let client = client(&cluster);
    client.allocate(request(1)).await.unwrap();

    // --- nothing frees within the wait
    let error = client.allocate_and_wait(request(1), Duration::from_millis(200)).await.unwrap_err();
    let Error::StillQueued { request_id, .. } = error else {
        panic!("{error:?}")
    };

    // --- cancelled while waiting
    let waiting = tokio::spawn({
        let client = client.clone();
        let mut again = request(1);
        again.request_id = Some(request_id.clone());
        async move { client.allocate_and_wait(again, Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.release(&request_id).await.unwrap();

    let error = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(&error, Error::Rejected { reason, .. } if reason == "cancelled"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_lease_keeper_renews_until_the_allocation_is_released() {
    let cluster = with_provider(2);
    let client = client(&cluster);
    let mut leased = request(1);
    leased.lease_ttl_ms = Some(1_000);
    let granted = client.allocate(leased).await.unwrap();
    let granted_until = granted.lease_expires_at_ms.unwrap();

    let keeper = client.keep_lease_alive(&granted.allocation_id, Duration::from_millis(100));
    eventually(Duration::from_secs(5), "a renewal", || {
        keeper.expires_at_ms().is_some_and(|at| at > granted_until)
    })
    .await;

    // --- released: the next renewal is refused and the keeper stops, saying why
    client.release(&granted.allocation_id).await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(5), keeper.stopped()).await.unwrap();
    assert!(matches!(why, Error::Conflict { .. }), "{why:?}");
}

#[tokio::test]
async fn a_heartbeat_loop_reports_whether_the_provider_is_known() {
    let cluster = with_provider(1);
    let client = client(&cluster);

    let known = client.heartbeat_loop("node_1", Duration::from_millis(50));
    let unknown = client.heartbeat_loop("node_9", Duration::from_millis(50));
    eventually(Duration::from_secs(5), "both heartbeats answered", || {
        known.last_reply().is_some() && unknown.last_reply().is_some()
    })
    .await;

    assert_eq!(
        (true, "active"),
        (known.last_reply().unwrap().known, known.last_reply().unwrap().status.as_str())
    );
    assert!(!unknown.last_reply().unwrap().known);
}

#[tokio::test]
async fn a_watch_resumes_on_another_replica_without_gaps_or_duplicates() {
    let mut cluster = with_provider(8);
    let client = client(&cluster);
    for _ in 0..3 {
        client.allocate(request(1)).await.unwrap();
    }
    let newest = cluster.with_table(|table| table.revision());

    // --- watch from the beginning, served by replica 0
    let mut events = client.watch(1, None);
    let mut revisions = Vec::new();
    while revisions.last() != Some(&newest) {
        revisions.push(events.next().await.unwrap().unwrap().revision);
    }

    // --- kill replica 0; the others replay a little (the client must drop those)
    cluster.kill(0);
    cluster.elect(1);
    cluster.replay_watches(1, 3);
    cluster.replay_watches(2, 3);
    for _ in 0..3 {
        client.allocate(request(1)).await.unwrap();
    }
    let newest = cluster.with_table(|table| table.revision());
    while revisions.last() != Some(&newest) {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("the watch resumed")
            .unwrap()
            .unwrap();
        revisions.push(event.revision);
    }

    assert_eq!((1..=newest).collect::<Vec<_>>(), revisions, "every revision once, in order");
}

#[tokio::test]
async fn a_watch_from_now_sees_only_new_events_even_across_a_failover() {
    let mut cluster = with_provider(8);
    let client = client(&cluster);
    client.allocate(request(1)).await.unwrap();
    let before = cluster.with_table(|table| table.revision());

    let mut events = client.watch(0, None);
    // Give the watch time to resolve "now" and open before anything happens.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.kill(0);
    cluster.elect(1);
    client.allocate(request(1)).await.unwrap();

    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(before + 1, first.revision, "the first event after the watch started, none before");
}

#[tokio::test]
async fn a_watch_gives_up_after_its_retries_with_an_error() {
    let mut cluster = FakeCluster::start(3);
    for index in 0..3 {
        cluster.kill(index);
    }
    let client = client(&cluster);

    let ended = tokio::time::timeout(Duration::from_secs(5), client.watch(1, None).next())
        .await
        .unwrap();

    assert!(matches!(ended, Some(Err(Error::Unavailable { .. }))), "{ended:?}");
}

#[tokio::test]
async fn restarted_replicas_are_reachable_again() {
    let mut cluster = with_provider(4);
    let client = client(&cluster);
    cluster.kill(0);
    cluster.elect(1);
    client.allocate(request(1)).await.unwrap();

    // --- bring 0 back as the leader: the client follows the hint there
    cluster.restart(0);
    cluster.elect(0);
    client.allocate(request(1)).await.unwrap();

    assert_eq!(Some(cluster.addr(0)), client.leader_addr());
    assert!(cluster.with_table(|table| table
        .list(&Default::default())
        .iter()
        .all(|record| record.state == RequestState::Monitoring)));
}
