//! `Client::watch` against real `qm-node` replicas: the stream resumes on
//! another replica when the one serving it is killed or paused, with every
//! revision once and in order, the same events the table's history holds.

use qm_client::convert::status_name;
use std::time::{Duration, Instant};

use futures::StreamExt;
use qm_client::proto::api::EventMessage;
use qm_client::{Client, ClientConfig, Consistency, Error, WatchStream};
use qm_state_machine::ResourceRequest;
use qm_testkit::test_cluster::{bounded, dead_endpoints, registration, request, TestCluster};

/// How long a watch may go without its next event while it fails over:
/// keepalive notices a paused replica within about 1 s + attempt_timeout_ms,
/// an election takes about a second.
const NEXT_EVENT_WAIT_MAX: Duration = Duration::from_secs(15);
/// Allocations a writer makes while the watched replica is killed.
const ALLOCATIONS_DURING_FAILOVER: usize = 30;
/// Events watched before the watched replica is killed.
const EVENTS_BEFORE_KILL: usize = 8;

#[tokio::test]
async fn a_watch_resumes_across_a_leader_kill_with_the_tables_history_exactly() {
    bounded(async {
        let cluster = TestCluster::start(3);
        cluster.wait_for_leader().await;
        let client = cluster.client();
        client.register_provider(&registration("node_1", 64)).await.unwrap();
        client.allocate(request(1)).await.unwrap();
        let start = client.system_state(Consistency::Linearizable).await.unwrap().revision;

        // --- watch from the newest revision; the stream starts on the leader
        let watched_on = client.leader_addr().expect("a leader was found");
        let mut events = client.watch(start, None);
        let writer = tokio::spawn(allocate_many(client.clone(), ALLOCATIONS_DURING_FAILOVER));
        let mut watched = Vec::new();
        while watched.len() < EVENTS_BEFORE_KILL {
            watched.push(next_event(&mut events).await);
        }

        // --- kill -9 the watched replica (the leader) while events flow
        let killed = cluster.id_of(&watched_on);
        cluster.kill(killed);
        writer.await.unwrap();
        let newest = client.system_state(Consistency::Linearizable).await.unwrap().revision;
        while watched.last().map(|event| event.revision) != Some(newest) {
            watched.push(next_event(&mut events).await);
        }

        // --- every revision once, in order, and the same events a survivor's history holds
        let revisions: Vec<u64> = watched.iter().map(|event| event.revision).collect();
        assert_eq!((start..=newest).collect::<Vec<_>>(), revisions, "every revision once, in order");
        let survivor = cluster.ids().find(|id| *id != killed).unwrap();
        let mut history = cluster.node_client(survivor).watch(start, None);
        let mut expected = Vec::new();
        while expected.len() < watched.len() {
            expected.push(next_event(&mut history).await);
        }
        assert_eq!(expected, watched, "the watched events are the table's history");
    })
    .await
}

#[tokio::test]
async fn a_watch_moves_off_a_paused_replica() {
    bounded(async {
        let cluster = TestCluster::start(3);
        cluster.wait_for_leader().await;
        let client = cluster.client();
        client.register_provider(&registration("node_1", 8)).await.unwrap();
        let watched_on = client.leader_addr().expect("a leader was found");
        let mut events = client.watch(1, None);
        let mut revisions = vec![next_event(&mut events).await.revision];

        // --- SIGSTOP the watched replica: its sockets stay open, it answers nothing
        let paused = cluster.id_of(&watched_on);
        cluster.pause(paused);
        allocate_many(client.clone(), 3).await;
        let newest = client.system_state(Consistency::Linearizable).await.unwrap().revision;
        while revisions.last() != Some(&newest) {
            revisions.push(next_event(&mut events).await.revision);
        }
        cluster.resume(paused);

        assert_eq!((1..=newest).collect::<Vec<_>>(), revisions, "every revision once, in order");
    })
    .await
}

#[tokio::test]
async fn a_watch_from_now_sees_only_new_events_even_across_a_failover() {
    bounded(async {
        let cluster = TestCluster::start(3);
        cluster.wait_for_leader().await;
        let client = cluster.client();
        client.register_provider(&registration("node_1", 8)).await.unwrap();
        client.allocate(request(1)).await.unwrap();
        let before = client.system_state(Consistency::Linearizable).await.unwrap().revision;
        let watched_on = client.leader_addr().expect("a leader was found");

        // --- watch "from now" on the leader; give it time to resolve now and open
        let mut events = client.watch(0, None);
        tokio::time::sleep(Duration::from_millis(300)).await;

        // --- kill it, then write
        cluster.kill(cluster.id_of(&watched_on));
        allocate_many(client.clone(), 1).await;

        let first = next_event(&mut events).await;
        assert_eq!(before + 1, first.revision, "the first event after the watch started, none before");
    })
    .await
}

#[tokio::test]
async fn a_watch_on_dead_addresses_ends_with_unavailable() {
    bounded(async {
        let dead = dead_endpoints(3);
        let client = Client::new(ClientConfig::with_endpoints(dead.endpoints.clone())).unwrap();
        let started = Instant::now();

        let ended = tokio::time::timeout(Duration::from_secs(30), client.watch(1, None).next())
            .await
            .expect("the watch gave up within 30 s");

        println!("the watch gave up after {:?}: {ended:?}", started.elapsed());
        assert!(matches!(ended, Some(Err(Error::Unavailable { .. }))), "{ended:?}");
    })
    .await
}

async fn next_event(events: &mut WatchStream) -> EventMessage {
    tokio::time::timeout(NEXT_EVENT_WAIT_MAX, events.next())
        .await
        .unwrap_or_else(|_| panic!("no event within {NEXT_EVENT_WAIT_MAX:?}"))
        .expect("the stream goes on")
        .expect("an event")
}

/// `count` one-core allocations, each sent again (same request id) until
/// answered, through failovers.
async fn allocate_many(client: Client, count: usize) {
    for _ in 0..count {
        let wanted = request(1);
        allocate_until_answered(&client, &wanted).await;
    }
}

async fn allocate_until_answered(client: &Client, wanted: &ResourceRequest) {
    for _ in 0..10 {
        match client.allocate(wanted.clone()).await {
            Ok(reply) => return assert_eq!("allocated", status_name(&reply), "{reply:?}"),
            Err(Error::Unavailable { .. } | Error::Unknown { .. }) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(other) => panic!("allocate failed: {other}"),
        }
    }
    panic!("no answer to the allocation after 10 tries")
}
