//! `SystemState` pages its per-provider rows on a real replica: a page at a
//! time in provider id order with a continuation token, the per-kind totals
//! and counts whole on every page; `Client::system_state` and `qm state`
//! read every page.

use std::time::Duration;

use qm_client::convert::registration_from_proto;
use qm_client::proto::api::quartermaster_client::QuartermasterClient;
use qm_client::proto::api::{self, SystemStateRequest};
use qm_client::{Client, ClientConfig, Consistency};
use qm_testkit::{node_binary, LocalCluster};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const PROVIDERS: usize = 25;
const PAGE: u32 = 10;

fn provider(n: usize) -> qm_state_machine::ProviderRegistration {
    registration_from_proto(&api::RegisterProviderRequest {
        provider_id: format!("node_{n:03}"),
        resources: vec![api::ResourceSpec {
            resource_id: "cpu_1".into(),
            kind: "cpu_cores".into(),
            capacity: 1,
            ..Default::default()
        }],
        ..Default::default()
    })
    .expect("registration")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_state_pages_provider_rows_and_clients_read_every_page() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = LocalCluster::start(&node_binary(), 1, &["--provider-failure-window-ms", "600000"])
            .await
            .expect("cluster");
        cluster.kill_after(TEST_TIMEOUT);
        let client = Client::new(ClientConfig::with_endpoints(cluster.endpoints())).expect("client");
        for n in 0..PROVIDERS {
            client.register_provider(&provider(n)).await.expect("register");
        }
        let expected: Vec<String> = (0..PROVIDERS).map(|n| format!("node_{n:03}")).collect();

        // --- by hand: pages of 10, 10 and 5, each with the whole totals
        let mut api = QuartermasterClient::connect(format!("http://{}", cluster.addr(1)))
            .await
            .expect("connect");
        let (mut seen, mut after, mut sizes, mut totals) = (Vec::new(), String::new(), Vec::new(), Vec::new());
        loop {
            let page = api
                .system_state(SystemStateRequest {
                    providers_after: after.clone(),
                    providers_limit: PAGE,
                    ..Default::default()
                })
                .await
                .expect("page")
                .into_inner();
            sizes.push(page.providers.len());
            totals.push(page.by_kind.clone());
            seen.extend(page.providers.into_iter().map(|row| row.provider_id));
            if page.providers_next_after.is_empty() {
                break;
            }
            assert_eq!(seen.last(), Some(&page.providers_next_after));
            after = page.providers_next_after;
        }
        assert_eq!(vec![10, 10, 5], sizes);
        assert_eq!(expected, seen, "each provider once, in id order");
        assert!(totals.windows(2).all(|pair| pair[0] == pair[1]), "totals whole on every page");
        assert_eq!(Some(PROVIDERS as u64), totals[0].first().map(|kind| kind.capacity));

        // --- the client and qm state read every page
        let whole = client.system_state(Consistency::Linearizable).await.expect("state");
        assert_eq!(
            expected,
            whole.providers.iter().map(|row| row.provider_id.clone()).collect::<Vec<_>>()
        );
        assert!(whole.providers_next_after.is_empty());
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_qm"))
            .args(["--endpoints", &cluster.endpoints().join(","), "--output", "json", "state"])
            .env_remove("QM_OUTPUT")
            .output()
            .expect("qm runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let state: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        assert_eq!(Some(PROVIDERS), state["providers"].as_array().map(Vec::len), "{state:.300}");
    })
    .await
    .expect("the test finished in time");
}
