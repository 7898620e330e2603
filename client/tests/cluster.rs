//! The client against real `qm-node` replicas that are killed, paused and
//! restarted: leader failover, elections waited out, typed outcomes when no
//! leader or no quorum is left, and a stream of allocations from several
//! tasks surviving a leader kill with nothing lost and nothing held twice.
//! The binary comes from `cargo build --workspace --bins`.

use qm_client::convert::{state_name, status_name};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qm_client::proto::api::{self, AllocationReply};
use qm_client::{Client, ClientConfig, Consistency, Error};
use qm_state_machine::ResourceRequest;
use qm_testkit::test_cluster::{bounded, client_for, dead_endpoints, registration, request, TestCluster};

#[tokio::test]
async fn an_acknowledged_allocation_survives_killing_the_leader_and_the_next_call_waits_out_the_election() {
    bounded(async {
        let cluster = TestCluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let client = cluster.client();
        client.register_provider(&registration("node_1", 4)).await.unwrap();
        let granted = client.allocate(request(2)).await.unwrap();
        assert_eq!("allocated", status_name(&granted));
        assert_eq!(Some(cluster.node(leader).addr.clone()), client.leader_addr());

        // --- kill -9 the leader; at once, while the followers still name it, allocate
        cluster.kill(leader);
        let killed = Instant::now();
        let second = client.allocate(request(2)).await.unwrap();
        println!("the first allocation after the kill took {:?}", killed.elapsed());

        // --- the new leader has both, and the client found it
        assert_eq!("allocated", status_name(&second));
        let new_leader = client.leader_addr().expect("a leader was found");
        assert_ne!(cluster.node(leader).addr, new_leader);
        let read = client.get(&granted.request_id, Consistency::Linearizable).await.unwrap();
        assert_eq!(
            (granted.allocation_id.as_str(), "allocated", &granted.grants),
            (read.allocation_id.as_str(), status_name(&read), &read.grants)
        );
        assert_eq!(2, client.system_state(Consistency::Linearizable).await.unwrap().active_allocations);
    })
    .await
}

#[tokio::test]
async fn a_follower_redirects_to_the_leader_which_the_client_did_not_know() {
    bounded(async {
        let cluster = TestCluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let follower = cluster.ids().find(|id| *id != leader).unwrap();
        // Only the follower's address: the call succeeds only by following its hint.
        let client = cluster.node_client(follower);

        let reply = client.register_provider(&registration("node_1", 4)).await.unwrap();

        assert_eq!("active", reply.status);
        assert_eq!(Some(cluster.node(leader).addr.clone()), client.leader_addr());
        // --- the next call goes straight to the remembered leader
        let granted = client.allocate(request(1)).await.unwrap();
        assert_eq!("allocated", status_name(&granted));
    })
    .await
}

#[tokio::test]
async fn a_paused_leader_is_failed_over() {
    bounded(async {
        let cluster = TestCluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let client = cluster.client();
        client.register_provider(&registration("node_1", 4)).await.unwrap();

        // --- SIGSTOP the leader: it keeps its sockets but answers nothing
        cluster.pause(leader);
        let paused = Instant::now();
        let reply = allocate_until_answered(&client, request(1)).await;
        println!("allocating past the paused leader took {:?}", paused.elapsed());

        assert_eq!("allocated", status_name(&reply));
        assert_ne!(Some(cluster.node(leader).addr.clone()), client.leader_addr());
        // --- resumed, the old leader steps down and follows the new one
        cluster.resume(leader);
        let new_leader = cluster.wait_for_leader().await;
        assert_ne!(leader, new_leader);
    })
    .await
}

#[tokio::test]
async fn a_paused_follower_costs_one_attempt_not_the_whole_call() {
    bounded(async {
        let cluster = TestCluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let follower = cluster.ids().find(|id| *id != leader).unwrap();
        cluster.client().register_provider(&registration("node_1", 4)).await.unwrap();
        // A fresh client starts at its first endpoint: the follower, paused.
        let endpoints = std::iter::once(follower)
            .chain(cluster.ids().filter(|id| *id != follower))
            .map(|id| cluster.node(id).addr.clone())
            .collect();
        let client = client_for(endpoints);
        cluster.pause(follower);

        let started = Instant::now();
        let reply = client.allocate(request(1)).await.unwrap();
        let took = started.elapsed();
        cluster.resume(follower);

        println!("allocating past a paused follower took {took:?}");
        assert_eq!("allocated", status_name(&reply));
        // One attempt timeout (1 s) and a backoff, not the call's 5 s deadline.
        let attempt = Duration::from_millis(client.config().attempt_timeout_ms);
        assert!(took < attempt * 3, "took {took:?}");
    })
    .await
}

#[tokio::test]
async fn no_leader_anywhere_is_unavailable_not_unknown_and_stale_reads_still_work() {
    bounded(async {
        let cluster = TestCluster::start(3);
        let leader = cluster.wait_for_leader().await;
        cluster.client().register_provider(&registration("node_1", 4)).await.unwrap();

        // --- kill the leader and one follower: the last replica can never be elected
        let survivor = cluster.ids().find(|id| *id != leader).unwrap();
        cluster.wait_until_caught_up(survivor).await;
        for id in cluster.ids().filter(|id| *id != survivor).collect::<Vec<_>>() {
            cluster.kill(id);
        }
        // A fresh client: no connection that was open to a killed replica
        // (a write sent on one might have arrived: unknown, not unavailable).
        let client = cluster.client();
        let started = Instant::now();
        let error = client.allocate(request(1)).await.unwrap_err();

        println!("no leader: {error} (after {:?})", started.elapsed());
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
        // --- a stale read is served by the survivor without a leader
        let state = client.system_state(Consistency::Stale).await.unwrap();
        assert_eq!(1, state.providers.len());
    })
    .await
}

#[tokio::test]
async fn a_write_the_leader_cannot_commit_is_unknown_and_a_retry_with_its_id_settles_it_once() {
    bounded(async {
        let mut args = qm_testkit::test_cluster::QUIET_PROVIDERS.to_vec();
        args.extend(["--request-timeout-ms", "1000"]);
        let cluster = TestCluster::start_with(3, &args);
        let leader = cluster.wait_for_leader().await;
        let client = cluster.client();
        client.register_provider(&registration("node_1", 4)).await.unwrap();

        // --- pause both followers: the leader takes the write but cannot commit it
        let followers: Vec<u64> = cluster.ids().filter(|id| *id != leader).collect();
        for id in &followers {
            cluster.pause(*id);
        }
        let wanted = request(1);
        let error = client.allocate(wanted.clone()).await.unwrap_err();

        println!("no quorum: {error}");
        let Error::Unknown {
            request_id: Some(request_id),
            ..
        } = &error
        else {
            panic!("expected Unknown naming the request, got {error:?}")
        };
        assert_eq!(wanted.request_id.as_ref(), Some(request_id));

        // --- quorum back: the same request again is allocated, and only once
        for id in &followers {
            cluster.resume(*id);
        }
        cluster.wait_for_leader().await;
        let settled = allocate_until_answered(&client, wanted).await;
        assert_eq!("allocated", status_name(&settled));
        let state = client.system_state(Consistency::Linearizable).await.unwrap();
        assert_eq!((1, 1), (state.active_allocations, used(&state, "cpu_cores")));
    })
    .await
}

#[tokio::test]
async fn a_restarted_replica_is_reachable_again_through_the_same_client() {
    bounded(async {
        let cluster = TestCluster::start(3);
        let leader = cluster.wait_for_leader().await;
        cluster.client().register_provider(&registration("node_1", 4)).await.unwrap();
        let restarted = cluster.ids().find(|id| *id != leader).unwrap();
        cluster.wait_until_caught_up(restarted).await;
        // Knows only this replica, and stale reads teach it no other: every
        // answer below comes from it.
        let client = cluster.node_client(restarted);
        let state = client.system_state(Consistency::Stale).await.unwrap();
        assert_eq!(1, state.providers.len());

        // --- the only replica the client knows is killed: its connection breaks
        cluster.kill(restarted);
        let error = client.system_state(Consistency::Stale).await.unwrap_err();
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");

        // --- back on its data dir: the same client reaches it, and through it the leader
        cluster.restart(restarted);
        let leader = cluster.wait_for_leader().await;
        cluster.wait_until_caught_up(restarted).await;
        let state = client.system_state(Consistency::Stale).await.unwrap();
        assert_eq!(1, state.providers.len(), "it has the table again");
        let reply = client.allocate(request(1)).await.unwrap();
        assert_eq!("allocated", status_name(&reply));
        assert_eq!(Some(cluster.node(leader).addr.clone()), client.leader_addr());
    })
    .await
}

#[tokio::test]
async fn a_dead_address_list_is_unavailable_within_a_bounded_time() {
    bounded(async {
        // Ports nobody listens on: every connection is refused.
        let dead = dead_endpoints(3);
        let client = Client::new(ClientConfig::with_endpoints(dead.endpoints.clone())).unwrap();

        let started = Instant::now();
        let error = client.allocate(request(1)).await.unwrap_err();
        let took = started.elapsed();

        println!("dead addresses, default config: {error} after {took:?}");
        assert!(matches!(error, Error::Unavailable { attempts: 4, .. }), "{error:?}");
        // A liveness bound, not a performance target: it must not hang.
        assert!(took < Duration::from_secs(30), "took {took:?}");
    })
    .await
}

// --- a stream of allocations across a leader kill

/// Tasks allocating at the same time, through clones of one client.
const WRITERS: usize = 4;
/// Allocations each writer makes.
const ALLOCATIONS_PER_WRITER: usize = 40;
/// A writer releases its oldest allocation when it holds more, so units are
/// taken, freed and taken again all through the failover.
const HELD_PER_WRITER_MAX: usize = 5;
/// Enough cores that every request fits: each reply must be `allocated`.
const STREAM_CPUS: u32 = 32;
/// Acknowledged allocations before the leader is killed.
const ACKNOWLEDGED_BEFORE_KILL: usize = 20;
/// Tries to settle one allocation or release whose outcome was unknown.
const SETTLE_TRIES_MAX: usize = 10;

/// What one writer was told.
#[derive(Debug, Default)]
struct Ledger {
    /// Every allocation answered `allocated`, first or after settling an unknown outcome.
    acknowledged: Vec<AllocationReply>,
    /// Allocation ids whose release was acknowledged.
    released: BTreeSet<String>,
    /// Request ids answered `Unavailable`: they must not be in the table.
    unavailable: Vec<String>,
    /// Calls that ended `Unknown` and were settled by sending them again.
    unknown_settled: usize,
}

#[tokio::test]
async fn allocations_from_several_tasks_survive_a_leader_kill_without_loss_or_double_grants() {
    bounded(async {
        let cluster = TestCluster::start(3);
        let leader = cluster.wait_for_leader().await;
        let client = cluster.client();
        client.register_provider(&registration("node_1", STREAM_CPUS)).await.unwrap();

        // --- writers allocate and release in a loop
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| tokio::spawn(write_allocations(client.clone(), acknowledged.clone())))
            .collect();

        // --- kill -9 the leader in the middle of the stream
        qm_testkit::test_cluster::eventually(Duration::from_secs(30), "allocations before the kill", || {
            acknowledged.load(Ordering::SeqCst) >= ACKNOWLEDGED_BEFORE_KILL
        })
        .await;
        cluster.kill(leader);
        let at_kill = acknowledged.load(Ordering::SeqCst);
        let killed = Instant::now();
        let mut ledgers = Vec::new();
        for writer in writers {
            ledgers.push(writer.await.unwrap());
        }
        let total: usize = ledgers.iter().map(|ledger| ledger.acknowledged.len()).sum();
        let unknown: usize = ledgers.iter().map(|ledger| ledger.unknown_settled).sum();
        let unavailable: usize = ledgers.iter().map(|ledger| ledger.unavailable.len()).sum();
        println!(
            "{total} allocations acknowledged, {at_kill} before the kill; the rest took {:?}; \
             {unknown} unknown outcomes settled, {unavailable} unavailable",
            killed.elapsed()
        );
        assert!(total > at_kill, "the stream went on after the kill");

        // --- the table, read linearizably from the new leader, has exactly what was acknowledged
        let records: BTreeMap<String, AllocationReply> = client
            .list(api::ListRequest::default())
            .await
            .unwrap()
            .into_iter()
            .map(|record| (record.request_id.clone(), record))
            .collect();
        check_ledgers(&ledgers, &records);
        let active: Vec<&AllocationReply> = records.values().filter(|record| is_active(record)).collect();
        let mut held = BTreeSet::new();
        for record in &active {
            for grant in &record.grants {
                assert!(
                    held.insert((record.provider_id.clone(), grant.resource_id.clone())),
                    "unit {} of {} is held twice",
                    grant.resource_id,
                    record.provider_id
                );
            }
        }
        let state = client.system_state(Consistency::Linearizable).await.unwrap();
        assert_eq!(
            (active.len() as u64, active.len() as u64),
            (state.active_allocations, used(&state, "cpu_cores"))
        );

        // --- the surviving follower, caught up, holds the very same records
        let new_leader = cluster.wait_for_leader().await;
        let follower = cluster.ids().find(|id| *id != leader && *id != new_leader).unwrap();
        cluster.wait_until_caught_up(follower).await;
        let stale = api::ListRequest {
            stale: true,
            ..Default::default()
        };
        let on_follower = cluster.node_client(follower).list(stale).await.unwrap();
        assert_eq!(records.values().cloned().collect::<Vec<_>>(), on_follower);
    })
    .await
}

/// One writer: allocates one core at a time, releasing its oldest allocation
/// past [`HELD_PER_WRITER_MAX`]; an unknown outcome is settled by sending the
/// same call again, as the client's docs tell a caller to.
async fn write_allocations(client: Client, acknowledged: Arc<AtomicUsize>) -> Ledger {
    let mut ledger = Ledger::default();
    let mut held = VecDeque::new();
    for _ in 0..ALLOCATIONS_PER_WRITER {
        let wanted = request(1);
        match settle_allocation(&client, &wanted, &mut ledger).await {
            Some(reply) => {
                assert_eq!("allocated", status_name(&reply), "{reply:?}");
                held.push_back(reply.allocation_id.clone());
                ledger.acknowledged.push(reply);
                acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            None => ledger.unavailable.push(wanted.request_id.clone().unwrap()),
        }
        if held.len() > HELD_PER_WRITER_MAX {
            let oldest = held.pop_front().unwrap();
            settle_release(&client, &oldest, &mut ledger).await;
            ledger.released.insert(oldest);
        }
    }
    ledger
}

/// The allocation's reply, or `None` if it was `Unavailable` before any
/// attempt could have taken effect.
async fn settle_allocation(client: &Client, wanted: &ResourceRequest, ledger: &mut Ledger) -> Option<AllocationReply> {
    let mut was_unknown = false;
    for _ in 0..SETTLE_TRIES_MAX {
        match client.allocate(wanted.clone()).await {
            Ok(reply) => return Some(reply),
            Err(Error::Unknown { .. }) => {
                if !was_unknown {
                    ledger.unknown_settled += 1;
                }
                was_unknown = true;
            }
            // Nothing happened on this call; an earlier one may have.
            Err(Error::Unavailable { .. }) if was_unknown => {}
            Err(Error::Unavailable { .. }) => return None,
            Err(other) => panic!("allocate failed: {other:?}"),
        }
    }
    panic!("allocation {:?} not settled in {SETTLE_TRIES_MAX} tries", wanted.request_id)
}

async fn settle_release(client: &Client, allocation_id: &str, ledger: &mut Ledger) {
    for _ in 0..SETTLE_TRIES_MAX {
        match client.release(allocation_id).await {
            Ok(reply) => {
                assert_eq!("idle", state_name(&reply), "{reply:?}");
                return;
            }
            Err(Error::Unknown { .. }) => ledger.unknown_settled += 1,
            Err(Error::Unavailable { .. }) => {}
            Err(other) => panic!("release of {allocation_id} failed: {other:?}"),
        }
    }
    panic!("release of {allocation_id} not settled in {SETTLE_TRIES_MAX} tries")
}

/// Every acknowledged allocation is in the table as acknowledged (active
/// with the same units, or idle once its release was acknowledged); no
/// request answered `Unavailable` is; nothing else is.
fn check_ledgers(ledgers: &[Ledger], records: &BTreeMap<String, AllocationReply>) {
    let mut expected = BTreeSet::new();
    for ledger in ledgers {
        for reply in &ledger.acknowledged {
            let record = records
                .get(&reply.request_id)
                .unwrap_or_else(|| panic!("acknowledged allocation {} is lost", reply.request_id));
            assert_eq!(reply.allocation_id, record.allocation_id);
            if ledger.released.contains(&reply.allocation_id) {
                assert_eq!("idle", state_name(record), "released {} is {record:?}", reply.request_id);
            } else {
                assert!(is_active(record), "held {} is {record:?}", reply.request_id);
                assert_eq!(
                    (&reply.provider_id, &reply.grants),
                    (&record.provider_id, &record.grants),
                    "{} moved",
                    reply.request_id
                );
            }
            expected.insert(reply.request_id.clone());
        }
        for request_id in &ledger.unavailable {
            assert!(
                !records.contains_key(request_id),
                "{request_id} was answered Unavailable (nothing happened) but is in the table"
            );
        }
    }
    let unexpected: Vec<&String> = records.keys().filter(|id| !expected.contains(*id)).collect();
    assert!(unexpected.is_empty(), "requests nobody acknowledged: {unexpected:?}");
}

fn is_active(record: &AllocationReply) -> bool {
    matches!(state_name(record), "allocation" | "monitoring")
}

fn used(state: &api::SystemStateReply, kind: &str) -> u64 {
    state.by_kind.iter().find(|usage| usage.kind == kind).map_or(0, |usage| usage.used)
}

/// A write that must go through eventually: sent again (same request id)
/// while the cluster elects.
async fn allocate_until_answered(client: &Client, wanted: ResourceRequest) -> AllocationReply {
    for _ in 0..SETTLE_TRIES_MAX {
        match client.allocate(wanted.clone()).await {
            Ok(reply) => return reply,
            Err(Error::Unavailable { .. } | Error::Unknown { .. }) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(other) => panic!("allocate failed: {other}"),
        }
    }
    panic!("no answer to the allocation after {SETTLE_TRIES_MAX} tries")
}
