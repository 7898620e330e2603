//! Paged lists on real replicas: every allocation and every provider comes
//! exactly once, in id order, following the continuation tokens; `qm list`
//! pages through all of them.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use qm_client::proto::api::quartermaster_client::QuartermasterClient;
use qm_client::proto::api::{self, ListRequest};
use qm_client::{Client, ClientConfig, Consistency};
use qm_testkit::{node_binary, LocalCluster};
use support::{memory_provider, one_gb};

const TEST_TIMEOUT: Duration = Duration::from_secs(180);
const PROVIDERS: usize = 23;
const ALLOCATIONS: usize = 1_000;
const WRITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_allocation_and_provider_exactly_once() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = LocalCluster::start(&node_binary(), 3, &["--provider-failure-window-ms", "600000"])
            .await
            .expect("cluster");
        cluster.kill_after(TEST_TIMEOUT);
        let client = Client::new(ClientConfig::with_endpoints(cluster.endpoints())).expect("client");
        for n in 0..PROVIDERS {
            client.register_provider(&memory_provider(n, 1, 1_000)).await.expect("register");
        }

        // --- many allocations, from several writers at once
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..ALLOCATIONS / WRITERS {
                        ids.push(client.allocate(one_gb()).await.expect("allocate").request_id);
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

        // --- small pages: each record once, in request id order
        let paged = client
            .list_all(ListRequest {
                limit: 37,
                ..Default::default()
            })
            .await
            .expect("list_all");
        let ids: Vec<String> = paged.iter().map(|record| record.request_id.clone()).collect();
        assert_eq!(written.iter().cloned().collect::<Vec<_>>(), ids);

        // --- providers, by hand, 5 a page, following the token
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("leader");
        let mut api = QuartermasterClient::connect(format!("http://{}", cluster.addr(leader)))
            .await
            .expect("connect");
        let (mut seen, mut after, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let reply = api
                .list_providers(api::ListProvidersRequest {
                    stale: false,
                    after: after.clone(),
                    limit: 5,
                })
                .await
                .expect("page")
                .into_inner();
            pages += 1;
            assert!(reply.providers.len() <= 5 && pages <= PROVIDERS, "{pages} pages");
            seen.extend(reply.providers.into_iter().map(|provider| provider.provider_id));
            if reply.next_after.is_empty() {
                break;
            }
            after = reply.next_after;
        }
        let expected: Vec<String> = (0..PROVIDERS).map(|n| format!("node_{n:03}")).collect();
        assert_eq!(expected, seen);
        assert_eq!(
            PROVIDERS,
            client.list_providers(Consistency::Linearizable).await.expect("all").len()
        );

        // --- `qm list` pages through everything
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_qm"))
            .args(["--endpoints", &cluster.endpoints().join(","), "--output", "json", "list"])
            .env_remove("QM_OUTPUT")
            .output()
            .expect("qm runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let listed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        assert_eq!(Some(ALLOCATIONS), listed.as_array().map(Vec::len), "{listed:.200}");
    })
    .await
    .expect("the test finished in time");
}
