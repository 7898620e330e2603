//! The client's calls and helpers against real `qm-node` replicas that stay
//! up: typed errors naming the field, `allocate_and_wait`, the lease keeper
//! and the heartbeat loop. Tests that only add to the table share one
//! cluster ([`shared_cluster`]), each under its own provider id.

use qm_client::convert::{state_name, status_name};
use std::time::Duration;

use qm_client::{ConflictKind, Consistency, Error};
use qm_testkit::test_cluster::{
    bounded, client_for, dead_endpoints, eventually, registration, request, request_on, shared_cluster, TestCluster,
};
use uuid::Uuid;

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named() {
    bounded(async {
        // --- caught by the client: refused before any replica is asked
        // (nobody listens on these ports, so asking would be Unavailable)
        let nobody = dead_endpoints(3);
        let dead = client_for(nobody.endpoints.clone());
        let error = dead.allocate(request(0)).await.unwrap_err();
        assert_eq!(
            "invalid resource_requirements.cpu_cores: must be positive, got 0",
            error.to_string()
        );
        let error = dead.release("not-a-uuid").await.unwrap_err();
        assert!(matches!(&error, Error::InvalidArgument { field, .. } if field == "id"), "{error:?}");

        // --- caught by the server, which knows the providers
        let cluster = shared_cluster().await;
        let client = cluster.client();
        let unknown_provider = request_on("node_nowhere", 1);
        let error = client.allocate(unknown_provider).await.unwrap_err();
        let Error::InvalidArgument { field, reason } = error else {
            panic!("{error:?}")
        };
        assert_eq!(
            ("constraints.provider_id", "unknown provider node_nowhere"),
            (field.as_str(), reason.as_str())
        );
    })
    .await
}

#[tokio::test]
async fn refusals_are_typed() {
    bounded(async {
        let cluster = shared_cluster().await;
        let client = cluster.client();
        client.register_provider(&registration("node_refusals", 4)).await.unwrap();
        let first = request_on("node_refusals", 1);
        let granted = client.allocate(first.clone()).await.unwrap();

        let missing = client
            .get(&Uuid::new_v4().to_string(), Consistency::Linearizable)
            .await
            .unwrap_err();
        let mut reused = request_on("node_refusals", 2);
        reused.request_id = first.request_id.clone();
        let conflict = client.allocate(reused).await.unwrap_err();
        let no_lease = client.renew_lease(&granted.allocation_id).await.unwrap_err();
        let no_provider = client.deregister_provider("node_never_registered").await.unwrap_err();

        assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
        assert!(
            matches!(
                conflict,
                Error::Conflict {
                    kind: ConflictKind::AlreadyExists,
                    ..
                }
            ),
            "{conflict:?}"
        );
        assert!(
            matches!(
                no_lease,
                Error::Conflict {
                    kind: ConflictKind::FailedPrecondition,
                    ..
                }
            ),
            "{no_lease:?}"
        );
        assert!(matches!(no_provider, Error::NotFound { .. }), "{no_provider:?}");
        // --- a refused call changed nothing: the first request still holds one core
        let record = client.get(&granted.request_id, Consistency::Linearizable).await.unwrap();
        assert_eq!((granted.grants.len(), "monitoring"), (record.grants.len(), state_name(&record)));
    })
    .await
}

#[tokio::test]
async fn allocate_and_wait_returns_once_capacity_frees() {
    bounded(async {
        let cluster = shared_cluster().await;
        let client = cluster.client();
        client.register_provider(&registration("node_wait", 2)).await.unwrap();
        let holder = client.allocate(request_on("node_wait", 2)).await.unwrap();
        assert_eq!("allocated", status_name(&holder));

        // --- a second request queues, and waits
        let second = request_on("node_wait", 1);
        let second_id = second.request_id.clone().unwrap();
        let waiting = tokio::spawn({
            let client = client.clone();
            async move { client.allocate_and_wait(second, Duration::from_secs(20)).await }
        });
        wait_for_state(&client, &second_id, "queued").await;

        // --- release the first: the second is granted
        client.release(&holder.allocation_id).await.unwrap();

        let granted = waiting.await.unwrap().unwrap();
        assert_eq!(
            (second_id.as_str(), "allocated", "monitoring"),
            (granted.request_id.as_str(), status_name(&granted), state_name(&granted))
        );
    })
    .await
}

#[tokio::test]
async fn allocate_and_wait_reports_a_still_queued_or_cancelled_request() {
    bounded(async {
        let cluster = shared_cluster().await;
        let client = cluster.client();
        client.register_provider(&registration("node_cancel", 1)).await.unwrap();
        client.allocate(request_on("node_cancel", 1)).await.unwrap();

        // --- nothing frees within the wait
        let queued = request_on("node_cancel", 1);
        let error = client
            .allocate_and_wait(queued.clone(), Duration::from_millis(300))
            .await
            .unwrap_err();
        let Error::StillQueued { request_id, .. } = error else {
            panic!("{error:?}")
        };
        assert_eq!(queued.request_id.as_ref(), Some(&request_id));

        // --- waiting on it again (the same request), then cancelled meanwhile
        let waiting = tokio::spawn({
            let client = client.clone();
            async move { client.allocate_and_wait(queued, Duration::from_secs(20)).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.release(&request_id).await.unwrap();

        let error = waiting.await.unwrap().unwrap_err();
        assert!(
            matches!(&error, Error::Rejected { reason, .. } if reason == "cancelled"),
            "{error:?}"
        );
    })
    .await
}

#[tokio::test]
async fn a_lease_keeper_renews_until_the_allocation_is_released() {
    bounded(async {
        let cluster = shared_cluster().await;
        let client = cluster.client();
        client.register_provider(&registration("node_lease", 2)).await.unwrap();
        let mut leased = request_on("node_lease", 1);
        leased.lease_ttl_ms = Some(1_000);
        let granted = client.allocate(leased).await.unwrap();
        let granted_until = granted.lease_expires_at_ms.unwrap();

        // --- renewed every 200 ms, the 1 s lease outlives several TTLs
        let keeper = client.keep_lease_alive(&granted.allocation_id, Duration::from_millis(200));
        eventually(Duration::from_secs(10), "renewals past two TTLs", || {
            keeper.expires_at_ms().is_some_and(|at| at > granted_until + 2_000)
        })
        .await;
        let record = client.get(&granted.request_id, Consistency::Linearizable).await.unwrap();
        assert_eq!("monitoring", state_name(&record), "the lease never lapsed: {record:?}");

        // --- released: the next renewal is refused and the keeper stops, saying why
        client.release(&granted.allocation_id).await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(10), keeper.stopped()).await.unwrap();
        assert!(matches!(why, Error::Conflict { .. }), "{why:?}");
    })
    .await
}

#[tokio::test]
async fn an_unrenewed_lease_expires() {
    bounded(async {
        let cluster = shared_cluster().await;
        let client = cluster.client();
        client.register_provider(&registration("node_expiry", 1)).await.unwrap();
        let mut leased = request_on("node_expiry", 1);
        leased.lease_ttl_ms = Some(1_000);
        let granted = client.allocate(leased).await.unwrap();

        // --- no keeper: the leader expires it, which the keeper test's renewals prevented
        wait_for_state(&client, &granted.request_id, "idle").await;
    })
    .await
}

/// Providers heartbeat through [`qm_client::HeartbeatLoop`]; this cluster
/// declares a provider failed after 1.5 s of silence.
#[tokio::test]
async fn a_heartbeat_loop_keeps_its_provider_alive_and_reports_unknown_ones() {
    bounded(async {
        let cluster = TestCluster::start_with(3, &["--provider-failure-window-ms", "1500"]);
        cluster.wait_for_leader().await;
        let client = cluster.client();
        client.register_provider(&registration("node_beating", 1)).await.unwrap();
        client.register_provider(&registration("node_silent", 1)).await.unwrap();

        // --- one provider heartbeats every 200 ms, the other says nothing
        let known = client.heartbeat_loop("node_beating", Duration::from_millis(200));
        let unknown = client.heartbeat_loop("node_never_registered", Duration::from_millis(200));
        let state = wait_for_failed(&client, "node_silent").await;

        assert_eq!(vec!["node_silent".to_owned()], state.failed_providers, "{state:?}");
        let reply = known.last_reply().expect("a heartbeat was answered");
        assert_eq!((true, "active"), (reply.known, reply.status.as_str()));
        assert!(!unknown.last_reply().expect("a heartbeat was answered").known);
    })
    .await
}

async fn wait_for_failed(client: &qm_client::Client, provider_id: &str) -> qm_client::proto::api::SystemStateReply {
    for _ in 0..100 {
        let state = client.system_state(Consistency::Linearizable).await.unwrap();
        if state.failed_providers.iter().any(|failed| failed == provider_id) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{provider_id} was not declared failed within 10 s")
}

/// Polls the request until it reaches `state` (10 s at most).
async fn wait_for_state(client: &qm_client::Client, request_id: &str, state: &str) {
    let mut last = None;
    for _ in 0..100 {
        match client.get(request_id, Consistency::Linearizable).await {
            Ok(record) if state_name(&record) == state => return,
            Ok(record) => last = Some(record),
            // Asked before the request was sent.
            Err(Error::NotFound { .. }) => {}
            Err(error) => panic!("{error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{request_id} did not become {state} within 10 s: {last:?}")
}

#[tokio::test]
async fn a_reply_larger_than_grpcs_default_limit_is_received() {
    use prost::Message;

    bounded(async {
        // 60 providers of 2,000 units: ListProviders answers with 120,000
        // units in one message, past the 4 MiB tonic refuses by default.
        let cluster = TestCluster::start(1);
        cluster.wait_for_leader().await;
        let client = cluster.client();
        for provider in 0..60 {
            let registration = registration(&format!("bulk_{provider:02}"), 2_000);
            client.register_provider(&registration).await.expect("registered");
        }
        let providers = client
            .list_providers(Consistency::Linearizable)
            .await
            .expect("the whole list in one reply");
        let units: usize = providers.iter().map(|provider| provider.resources.len()).sum();
        assert_eq!(120_000, units);
        let encoded = qm_client::proto::api::ListProvidersReply {
            providers,
            next_after: String::new(),
        }
        .encoded_len();
        assert!(
            encoded > 4 * 1024 * 1024,
            "the reply is {encoded} bytes: not past the default limit"
        );
    })
    .await;
}

/// Writes on the `Pipeline` stream (the default) and as unary calls get the
/// same answers and the same typed refusals, server-side field names
/// included; a pipelined write sent to a follower follows its leader hint.
#[tokio::test]
async fn pipelined_and_unary_writes_answer_alike() {
    bounded(async {
        let cluster = shared_cluster().await;
        let leader = cluster.wait_for_leader().await;
        let follower = cluster.ids().find(|id| *id != leader).expect("a follower");
        // Each knows only a follower, so every write starts with a redirect.
        let pipelined = cluster.node_client(follower);
        assert!(pipelined.config().pipeline_writes, "pipelining is the default");
        let unary = qm_client::Client::new(qm_client::ClientConfig {
            pipeline_writes: false,
            ..pipelined.config().clone()
        })
        .unwrap();
        pipelined.register_provider(&registration("node_pipeline", 2)).await.unwrap();
        let kind = |error: Error| match error {
            Error::InvalidArgument { field, .. } => format!("invalid {field}"),
            Error::NotFound { .. } => "not found".to_owned(),
            Error::Conflict { kind, .. } => format!("{kind:?}"),
            other => format!("unexpected {other:?}"),
        };

        let mut answers = Vec::new();
        for client in [&pipelined, &unary] {
            let first = request_on("node_pipeline", 1);
            let granted = client.allocate(first.clone()).await.unwrap();
            let retried = client.allocate(first).await.unwrap();
            let no_lease = client.renew_lease(&granted.allocation_id).await.unwrap_err();
            let nowhere = client.allocate(request_on("node_nowhere", 1)).await.unwrap_err();
            let released = client.release(&granted.allocation_id).await.unwrap();
            let released_again = client.release(&granted.request_id).await.unwrap();
            let unknown = client.release(&Uuid::new_v4().to_string()).await.unwrap_err();
            // Refusals say nothing about who leads: the leader is still known.
            let found_leader = client.leader_addr() == Some(cluster.node(leader).addr.clone());
            answers.push((
                status_name(&granted),
                retried.allocation_id == granted.allocation_id,
                kind(no_lease),
                kind(nowhere),
                state_name(&released),
                released_again.state == released.state,
                kind(unknown),
                found_leader,
            ));
        }

        assert_eq!(answers[0], answers[1], "pipelined, then unary");
        let (status, same_allocation, no_lease, nowhere, _, same_release, unknown, found_leader) = answers.remove(0);
        assert_eq!(
            (
                "allocated",
                true,
                "FailedPrecondition",
                "invalid constraints.provider_id",
                true,
                "not found",
                true
            ),
            (
                status,
                same_allocation,
                no_lease.as_str(),
                nowhere.as_str(),
                same_release,
                unknown.as_str(),
                found_leader
            )
        );
    })
    .await
}
