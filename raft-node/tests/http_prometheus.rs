//! Debian's Prometheus finds the cluster through the replicas' catalog: its
//! targets list the replicas' metrics endpoints and the providers, and its
//! scrapes of the replicas' `/metrics` (prometheus-client's OpenMetrics
//! text) succeed.
//!
//! Debian builds Prometheus without Consul discovery ("Disable Consul SD
//! until its Debian package is back in shape", its changelog; 2.42 here), so
//! `consul_sd_configs` is refused by it (the first test shows it) and the
//! test points `http_sd_configs` at `/v1/sd/prometheus`, which serves the
//! same catalog entries with Consul SD's labels. The Consul endpoints
//! themselves are tested with py-consul (`http_consul.rs`).

mod http_support;

use std::time::Duration;

use http_support::{post, HttpCluster, DEMO_PROVIDER};
use qm_testkit::prometheus::Prometheus;
use qm_testkit::test_cluster::bounded;
use serde_json::Value;

/// The README's `http_sd_configs` snippet, pointed at `server`, with short intervals for a test.
fn config(server: &str) -> String {
    format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: quartermaster
    http_sd_configs:
      - url: "http://{server}/v1/sd/prometheus?service=system_monitor"
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_consul_service_metadata_replica_id]
        target_label: replica
  - job_name: providers
    http_sd_configs:
      - url: "http://{server}/v1/sd/prometheus?service=resource_providers"
        refresh_interval: 1s
"#
    )
}

/// The README's `consul_sd_configs` snippet (for Prometheus builds with Consul discovery).
fn consul_config(server: &str) -> String {
    format!(
        r#"scrape_configs:
  - job_name: quartermaster
    consul_sd_configs:
      - server: "{server}"
        services: [system_monitor]
"#
    )
}

#[tokio::test]
async fn debians_prometheus_has_no_consul_discovery() {
    bounded(async {
        let refused = tokio::task::spawn_blocking(|| Prometheus::start(&consul_config("127.0.0.1:1"), Duration::from_secs(5)))
            .await
            .unwrap();
        let error = refused.err().expect("Debian's prometheus refuses consul_sd_configs").to_string();
        assert!(error.contains("field consul_sd_configs not found"), "{error}");
    })
    .await;
}

fn targets(prometheus: &Prometheus) -> Vec<Value> {
    let (status, body) = prometheus.get("/api/v1/targets").expect("targets");
    assert_eq!(200, status, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    answer["data"]["activeTargets"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn prometheus_discovers_replicas_and_providers_through_http_sd_and_scrapes_metrics() {
    bounded(async {
        let cluster = HttpCluster::start(3, &[]).await;
        let leader = cluster.leader().await;
        let mut registration: serde_json::Value = serde_json::from_str(DEMO_PROVIDER).unwrap();
        registration["address"] = "127.0.0.1".into();
        registration["port"] = 9100.into();
        assert_eq!(200, post(&cluster.url(leader, "/v1/providers"), &registration.to_string()).status);
        let follower = cluster.follower(leader);

        // --- Prometheus with http_sd_configs pointed at a follower
        let server = cluster.http[&follower].clone();
        let prometheus = tokio::task::spawn_blocking(move || Prometheus::start(&config(&server), Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("prometheus starts");

        // --- its targets: three replicas, up, and the provider
        let mut active = Vec::new();
        for _ in 0..300 {
            active = targets(&prometheus);
            let replicas_up = active
                .iter()
                .filter(|target| target["labels"]["job"] == "quartermaster" && target["health"] == "up")
                .count();
            let providers = active.iter().filter(|target| target["labels"]["job"] == "providers").count();
            if replicas_up == 3 && providers == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let replicas: Vec<&Value> = active.iter().filter(|target| target["labels"]["job"] == "quartermaster").collect();
        assert_eq!(3, replicas.len(), "{active:#?}\n{}", prometheus.log());
        for target in &replicas {
            assert_eq!("up", target["health"], "{target:#}");
            let replica: u64 = target["labels"]["replica"].as_str().unwrap().parse().unwrap();
            assert_eq!(cluster.http[&replica], target["labels"]["instance"], "{target:#}");
            assert_eq!("system_monitor", target["discoveredLabels"]["__meta_consul_service"]);
        }
        let provider = active
            .iter()
            .find(|target| target["labels"]["job"] == "providers")
            .unwrap_or_else(|| panic!("no provider target: {active:#?}"));
        assert_eq!("node_1", provider["discoveredLabels"]["__meta_consul_service_id"]);
        assert_eq!("127.0.0.1:9100", provider["discoveredLabels"]["__address__"], "{provider:#}");
        assert_eq!(",zone=a,", provider["discoveredLabels"]["__meta_consul_tags"]);

        // --- and what it scraped: every replica's raft_term, the protocol's metrics
        let mut answer = Value::Null;
        for _ in 0..100 {
            let (_, body) = prometheus.get("/api/v1/query?query=raft_term").expect("query");
            answer = serde_json::from_str(&body).expect("JSON");
            if answer["data"]["result"].as_array().map_or(0, Vec::len) == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(3, answer["data"]["result"].as_array().map_or(0, Vec::len), "{answer}");
        let (_, body) = prometheus.get("/api/v1/query?query=raft_is_leader%3D%3D1").expect("query");
        let leaders: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(leader.to_string(), leaders["data"]["result"][0]["metric"]["node_id"], "{leaders}");
    })
    .await;
}
