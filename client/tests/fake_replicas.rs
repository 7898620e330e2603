//! What only a fake replica can do on demand, so these few tests run against
//! the in-process fakes of `support/fake.rs` (its opening comment says why
//! each one needs a fake): a leader that applies a write and then loses the
//! answer, and a replica that replays events the watcher already has.
//! Everything else the client does is tested against real `qm-node`
//! replicas in `cluster.rs`, `calls.rs`, `watch.rs` and `cli.rs`.

use qm_client::convert::status_name;
use std::time::Duration;

use futures::StreamExt;
use qm_client::{Client, ClientConfig, Consistency, Error};
use qm_state_machine::{Command, EventKind};
use qm_testkit::fake::FakeCluster;
use qm_testkit::test_cluster::{bounded, registration, request};

/// Quick backoff; attempt timeouts long enough that a loaded machine never
/// turns a slow answer into a failover, which would change the call counts.
/// Unary writes: the fakes serve the unary calls only (the retry decisions
/// are the same for both; the real-replica tests cover the pipeline).
fn client(cluster: &FakeCluster) -> Client {
    let config = ClientConfig {
        pipeline_writes: false,
        request_timeout_ms: 10_000,
        attempt_timeout_ms: 3_000,
        connect_timeout_ms: 1_000,
        backoff_base_ms: 10,
        backoff_max_ms: 50,
        ..ClientConfig::with_endpoints(cluster.addrs())
    };
    Client::new(config).unwrap()
}

fn with_provider(cpus: u32) -> FakeCluster {
    let cluster = FakeCluster::start(3);
    cluster.apply(Command::RegisterProvider(registration("node_1", cpus).validate().unwrap()));
    cluster
}

#[tokio::test]
async fn a_retry_after_a_lost_answer_allocates_once() {
    bounded(async {
        let cluster = with_provider(4);
        let client = client(&cluster);
        let mut wanted = request(2);
        wanted.request_id = Some("550e8400-e29b-41d4-a716-446655440000".into());

        // --- the leader applies the allocation but the answer is lost, twice
        cluster.lose_answers(0, 2);
        let reply = client.allocate(wanted).await.unwrap();

        assert_eq!(
            ("550e8400-e29b-41d4-a716-446655440000", "allocated"),
            (reply.request_id.as_str(), status_name(&reply))
        );
        assert_eq!(3, cluster.calls(0), "two lost answers, then the retry's");
        assert_eq!(
            1,
            cluster.with_table(|table| table.active_allocations()),
            "one allocation, not three"
        );
        assert_eq!(2, cluster.with_table(|table| table.usage().by_kind["cpu_cores"].used));
    })
    .await
}

/// A bulk release is safe to repeat (a repeat releases what is left), so
/// `release_matching` asks again when a call's outcome is unknown, which
/// a call whose answers are lost more often than the call plan retries
/// ends in. More allocations than one entry releases, so that the entries
/// that applied unanswered did part of the work each.
#[tokio::test]
async fn a_bulk_release_whose_answers_are_lost_is_asked_again_and_releases_once() {
    bounded(async {
        const ALLOCATIONS: usize = 1_500;
        let cluster = with_provider(ALLOCATIONS as u32);
        let client = client(&cluster);
        for _ in 0..ALLOCATIONS {
            cluster.apply(Command::Allocate(request(1).validate().unwrap()));
        }
        assert_eq!(ALLOCATIONS, cluster.with_table(|table| table.active_allocations()));

        // --- five answers lost: the call plan's attempt and its 3 retries
        // (outcome unknown), then release_matching's own first retry
        cluster.lose_answers(0, 5);
        let reply = client.release_matching("default", "", "").await.unwrap();

        assert_eq!(6, cluster.calls(0), "five lost answers, then the one that came back");
        assert_eq!(0, cluster.with_table(|table| table.active_allocations()));
        // Each allocation released once: the entries that applied unanswered
        // released 1,024 and then the other 476; the answered one found none.
        let released = cluster.with_table(|table| {
            // Every event since revision 1: 1,500 grants and releases fit the
            // history's 10,000.
            (table.events_from(1).expect("nothing compacted"))
                .filter(|event| matches!(event.kind, EventKind::AllocationReleased { .. }))
                .count()
        });
        assert_eq!(ALLOCATIONS, released);
        assert_eq!(
            (0, 1, ""),
            (reply.released, reply.entries, reply.next.as_str()),
            "the totals of the answered call"
        );
    })
    .await
}

#[tokio::test]
async fn a_write_that_applied_but_whose_answers_are_all_lost_is_unknown_not_failed() {
    bounded(async {
        let cluster = with_provider(4);
        let client = client(&cluster);
        cluster.lose_answers(0, u32::MAX);

        let error = client.allocate(request(1)).await.unwrap_err();

        let Error::Unknown {
            request_id: Some(request_id),
            ..
        } = &error
        else {
            panic!("expected Unknown with the request id, got {error:?}")
        };
        assert_eq!(4, cluster.calls(0), "1 attempt + retries_max (3) retries");
        // --- the caller resolves it by reading the request back
        cluster.lose_answers(0, 0);
        let record = client.get(request_id, Consistency::Linearizable).await.unwrap();
        assert_eq!("allocated", status_name(&record), "it had taken effect, once");
        assert_eq!(1, cluster.with_table(|table| table.active_allocations()));
    })
    .await
}

#[tokio::test]
async fn a_refusal_caused_by_a_lost_earlier_attempt_is_unknown_not_failed() {
    bounded(async {
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
    })
    .await
}

#[tokio::test]
async fn a_watch_drops_events_a_replica_replays_after_a_failover() {
    bounded(async {
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

        // --- kill replica 0; the others replay 3 revisions the watcher already has
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
    })
    .await
}

/// Regression: a replica that failed an attempt was never tried again in
/// that call, even once the followers named it leader (it was only slow, or
/// it came back and won the election), so the call bounced between
/// followers until its deadline. It must get another attempt.
#[tokio::test]
async fn a_replica_that_failed_gets_another_attempt_once_followers_name_it_leader() {
    bounded(async {
        let cluster = with_provider(4);
        let config = ClientConfig {
            request_timeout_ms: 10_000,
            // Short, so the stalled attempt fails fast; the other attempts
            // are answered at once by in-process replicas.
            attempt_timeout_ms: 500,
            connect_timeout_ms: 1_000,
            pipeline_writes: false,
            backoff_base_ms: 10,
            backoff_max_ms: 50,
            ..ClientConfig::with_endpoints(cluster.addrs())
        };
        let client = Client::new(config).unwrap();

        // --- the leader (tried first) stalls once; the followers name it
        cluster.stall_calls(0, 1);
        let reply = client.allocate(request(1)).await.expect("the leader answers its second attempt");

        assert_eq!("allocated", status_name(&reply));
        assert!(cluster.calls(0) >= 2, "the stalled attempt, then another: {}", cluster.calls(0));
        assert!(
            cluster.calls(1) + cluster.calls(2) >= 1,
            "a follower was asked and named the leader"
        );
        assert_eq!(1, cluster.with_table(|table| table.active_allocations()));
    })
    .await
}
