//! Paging at scale on real replicas: 100,000 allocations, loaded through
//! the pipelined client by many writers at once, then listed page by page
//! with `List` (the largest page and an odd one, following the continuation
//! token by hand) and with `qm list`: each comes back exactly once, in
//! request id order, and the pages are bounded.
//!
//! The allocations are spread over 100 providers of 10 memory units each,
//! at most 100 allocations a unit: what is measured is paging, not one
//! unit's holder list growing to 100,000.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use qm_client::proto::api::quartermaster_client::QuartermasterClient;
use qm_client::proto::api::{self, ListRequest};
use qm_client::{Client, ClientConfig};
use qm_testkit::{node_binary, LocalCluster};
use support::{memory_provider, one_gb};

/// The whole-test bound (a debug build on two shared cores).
const TEST_TIMEOUT: Duration = Duration::from_secs(900);
const ALLOCATIONS: usize = 100_000;
const PROVIDERS: usize = 100;
const UNITS_PER_PROVIDER: usize = 10;
/// Each unit's capacity: PROVIDERS × UNITS × this = ALLOCATIONS of 1 GB.
const UNIT_CAPACITY_GB: i64 = 100;
/// Writers allocating at once, each one call after another; their calls
/// share the client's pipeline to the leader.
const WRITERS: usize = 256;
/// A page size that divides nothing evenly.
const ODD_PAGE: u32 = 7_777;
/// The server's largest page (`qm_api::wire::LIST_LIMIT_MAX`).
const LARGEST_PAGE: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_over_100_000_allocations_returns_each_exactly_once_in_order() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = LocalCluster::start(
            &node_binary(),
            3,
            &["--provider-failure-window-ms", "600000", "--worker-threads", "1"],
        )
        .await
        .expect("cluster");
        cluster.kill_after(TEST_TIMEOUT);
        let client = Client::new(ClientConfig::with_endpoints(cluster.endpoints())).expect("client");
        for n in 0..PROVIDERS {
            client
                .register_provider(&memory_provider(n, UNITS_PER_PROVIDER, UNIT_CAPACITY_GB))
                .await
                .expect("register");
        }

        // --- 100,000 allocations from many writers at once, pipelined
        let started = Instant::now();
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let client = client.clone();
                let count = ALLOCATIONS / WRITERS + usize::from(writer < ALLOCATIONS % WRITERS);
                tokio::spawn(async move {
                    let mut ids = Vec::with_capacity(count);
                    for _ in 0..count {
                        let reply = client.allocate(one_gb()).await.expect("allocate");
                        assert_eq!(api::AllocationStatus::Allocated, reply.status(), "{reply:?}");
                        ids.push(reply.request_id);
                    }
                    ids
                })
            })
            .collect();
        let mut written = BTreeSet::new();
        for writer in writers {
            written.extend(writer.await.expect("writer"));
        }
        assert_eq!(ALLOCATIONS, written.len());
        eprintln!("loaded {ALLOCATIONS} allocations in {:?}", started.elapsed());
        let written: Vec<String> = written.into_iter().collect();

        // --- the largest pages, through the client: each once, in request id order
        let started = Instant::now();
        let paged = client.list_all(ListRequest::default()).await.expect("list_all");
        let ids: Vec<String> = paged.into_iter().map(|record| record.request_id).collect();
        assert_eq!(written, ids, "every allocation once, in request id order");
        eprintln!("listed them in pages of {LARGEST_PAGE} in {:?}", started.elapsed());

        // --- an odd page size, by hand: bounded pages, a token after each full one
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("leader");
        let mut api = QuartermasterClient::connect(format!("http://{}", cluster.addr(leader)))
            .await
            .expect("connect")
            .max_decoding_message_size(usize::MAX);
        let (mut seen, mut after, mut pages) = (Vec::with_capacity(ALLOCATIONS), String::new(), 0);
        loop {
            let reply = api
                .list(ListRequest {
                    after: after.clone(),
                    limit: ODD_PAGE,
                    ..Default::default()
                })
                .await
                .expect("page")
                .into_inner();
            pages += 1;
            assert!(reply.records.len() <= ODD_PAGE as usize, "page {pages} has {}", reply.records.len());
            assert!(pages <= ALLOCATIONS / ODD_PAGE as usize + 1, "{pages} pages");
            seen.extend(reply.records.into_iter().map(|record| record.request_id));
            if reply.next_after.is_empty() {
                break;
            }
            assert_eq!(seen.last(), Some(&reply.next_after), "the token is the page's last id");
            after = reply.next_after;
        }
        assert_eq!(written, seen);
        assert_eq!(ALLOCATIONS.div_ceil(ODD_PAGE as usize), pages);

        // --- `qm list` pages through all of them
        let started = Instant::now();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_qm"))
            .args(["--endpoints", &cluster.endpoints().join(","), "--output", "json", "list"])
            .env_remove("QM_OUTPUT")
            .output()
            .expect("qm runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("json");
        let listed: Vec<String> = listed
            .iter()
            .map(|record| record["request_id"].as_str().expect("request_id").to_owned())
            .collect();
        assert_eq!(written, listed, "qm list: every allocation once, in request id order");
        eprintln!("qm list printed them in {:?}", started.elapsed());
    })
    .await
    .expect("the test finished in time");
}
