//! `qm agent --from-host` as a real process: it offers this host's CPUs,
//! memory blocks and disk space, heartbeats measured utilization (and no
//! temperature or power the host does not expose), and deregisters on SIGTERM.

use std::time::{Duration, Instant};

use qm_agent::{HostInventoryOptions, HostPaths, Inventory};
use qm_client::Consistency;
use qm_testkit::agent_cluster::{bounded, Cluster, AGENT_HEARTBEAT_MS};

const WAIT_MAX: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_agent_offers_and_measures_this_host_and_leaves_on_sigterm() {
    bounded(Duration::from_secs(120), async {
        let cluster = Cluster::start(3);
        cluster.wait_for_leader().await;
        let client = cluster.client();
        // What the agent should offer, read the same way in this process.
        let expected = Inventory::from_host("host-1", &HostInventoryOptions::default()).unwrap();

        // --- start the agent on this host
        let agent = cluster.start_host_agent("host-1");
        let registered = agent.wait_for("registration", WAIT_MAX, |line| line["event"] == "registered").await;
        assert_eq!("host", registered["origin"]);
        let providers = client.list_providers(Consistency::Linearizable).await.unwrap();
        let provider = providers.iter().find(|provider| provider.provider_id == "host-1").unwrap();
        assert!(provider.confirms_allocations);
        let cpus = provider.resources.iter().filter(|unit| unit.kind == "cpu_cores").count();
        assert_eq!(expected.capacity_by_kind()["cpu_cores"], cpus as u64);
        assert!(cpus >= 1 && provider.resources.iter().any(|unit| unit.kind == "memory_gb"));

        // --- after a few heartbeats every CPU reports its measured utilization
        let deadline = Instant::now() + WAIT_MAX;
        let measured = loop {
            let providers = client.list_providers(Consistency::Linearizable).await.unwrap();
            let provider = providers.into_iter().find(|provider| provider.provider_id == "host-1").unwrap();
            let cpu_utilization: Vec<f64> = provider
                .resources
                .iter()
                .filter(|unit| unit.kind == "cpu_cores")
                .filter_map(|unit| unit.metrics.get("utilization").copied())
                .collect();
            if cpu_utilization.len() == cpus {
                break provider;
            }
            assert!(Instant::now() < deadline, "no CPU utilization reported: {provider:?}");
            tokio::time::sleep(Duration::from_millis(AGENT_HEARTBEAT_MS)).await;
        };
        for unit in &measured.resources {
            let utilization = unit.metrics["utilization"];
            assert!((0.0..=1.0).contains(&utilization), "{unit:?}");
        }
        // Temperature only where the host exposes one: never invented.
        let host_temperature = HostPaths::default().temperature_celsius();
        let reported_temperature = measured.resources.iter().any(|unit| unit.metrics.contains_key("temperature"));
        assert_eq!(host_temperature.is_some(), reported_temperature);

        // --- qm top shows the measurements
        let top = cluster.qm(&["top", "--once"]);
        assert!(top.contains("host-1") && top.contains("cpu_cores "), "{top}");

        // --- SIGTERM: it deregisters and exits 0
        let exit = cluster.reaper.terminate("agent-host-1", Duration::from_secs(10));
        assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
        let providers = client.list_providers(Consistency::Linearizable).await.unwrap();
        assert!(providers.is_empty(), "{providers:?}");
    })
    .await
}
