//! The Consul-compatible catalog, read by py-consul (PyPI's Consul client,
//! which no one here wrote): the protocol's three services, a blocking
//! query that wakes when a provider fails, and blocking queries while the
//! leader is killed; then a cluster without a quorum answers 503.

mod http_support;

use std::process::Command;
use std::time::Duration;

use http_support::{curl, get, post, python, HttpCluster, CURL, DEMO_PROVIDER};
use qm_testkit::test_cluster::bounded;
use serde_json::{json, Value};

/// Lists the services, reads the providers' health, then blocks (5 minutes
/// at most, far past the test's own bound) until the provider named in
/// argv[3] is critical. One JSON line per step.
const CATALOG_SCRIPT: &str = r#"
import json, sys
import consul
host, port, provider = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = consul.Consul(host=host, port=port)
index, services = c.catalog.services()
print(json.dumps({"step": "services", "index": index, "services": services}), flush=True)
index, managers = c.health.service("resource_manager", passing=True)
print(json.dumps({"step": "managers", "index": index, "entries": managers}), flush=True)
index, monitors = c.catalog.service("system_monitor")
print(json.dumps({"step": "monitors", "index": index, "entries": monitors}), flush=True)
index, providers = c.health.service("resource_providers", tag="zone=a")
print(json.dumps({"step": "providers", "index": index, "entries": providers}), flush=True)
first = index
while True:
    index, providers = c.health.service("resource_providers", index=index, wait="300s")
    status = {e["Service"]["ID"]: e["Checks"][0]["Status"] for e in providers}
    if status.get(provider) == "critical":
        break
print(json.dumps({"step": "woke", "first": first, "index": index, "entries": providers}), flush=True)
"#;

fn ids(entries: &Value) -> Vec<String> {
    entries
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| {
            entry["Service"]["ID"]
                .as_str()
                .or(entry["ServiceID"].as_str())
                .expect("an id")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn py_consul_lists_the_three_services_and_wakes_when_a_provider_fails() {
    bounded(async {
        // A provider that never heartbeats is declared failed 8 s after it registers.
        let cluster = HttpCluster::start_exactly(3, &["--provider-failure-window-ms", "8000", "--tick-interval-ms", "100"]).await;
        let leader = cluster.leader().await;
        let follower = cluster.follower(leader);
        // Registered with where it is reached, which the catalog lists.
        let mut registration: Value = serde_json::from_str(DEMO_PROVIDER).unwrap();
        registration["address"] = json!("127.0.0.1");
        registration["port"] = json!(9100);
        assert_eq!(200, post(&cluster.url(leader, "/v1/providers"), &registration.to_string()).status);
        // The replicas probe each other every second; wait until all three pass.
        for _ in 0..100 {
            let passing = get(&cluster.url(leader, "/v1/health/service/resource_manager?passing")).json();
            if passing.as_array().map_or(0, Vec::len) == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // --- py-consul against a follower: it follows the 307 to the leader
        let (host, port) = cluster.http[&follower].rsplit_once(':').unwrap();
        let steps = python(CATALOG_SCRIPT, &[host, port, "node_1"], Duration::from_secs(60)).await;
        let step = |name: &str| {
            steps
                .iter()
                .find(|step| step["step"] == name)
                .unwrap_or_else(|| panic!("no {name}: {steps:?}"))
        };

        let services = &step("services")["services"];
        assert_eq!(
            vec!["resource_manager", "resource_providers", "system_monitor"],
            services.as_object().unwrap().keys().collect::<Vec<_>>()
        );
        assert_eq!(json!(["zone=a"]), services["resource_providers"]);
        let managers = &step("managers")["entries"];
        assert_eq!(
            vec!["resource_manager-1", "resource_manager-2", "resource_manager-3"],
            ids(managers)
        );
        let leader_entry = managers
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["Service"]["Tags"] == json!(["leader"]))
            .unwrap();
        assert_eq!(
            cluster.cluster.node(leader).addr,
            format!(
                "{}:{}",
                leader_entry["Service"]["Address"].as_str().unwrap(),
                leader_entry["Service"]["Port"]
            )
        );
        let monitors = &step("monitors")["entries"];
        assert_eq!(3, monitors.as_array().unwrap().len());
        for monitor in monitors.as_array().unwrap() {
            let id: u64 = monitor["ServiceMeta"]["replica_id"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                cluster.http[&id],
                format!("{}:{}", monitor["ServiceAddress"].as_str().unwrap(), monitor["ServicePort"])
            );
            assert_eq!("/metrics", monitor["ServiceMeta"]["metrics_path"]);
        }
        let providers = &step("providers")["entries"];
        assert_eq!(vec!["node_1"], ids(providers));
        assert_eq!("passing", providers[0]["Checks"][0]["Status"], "{providers}");
        assert_eq!("a", providers[0]["Service"]["Meta"]["zone"]);
        assert_eq!(
            ("127.0.0.1", 9100),
            (
                providers[0]["Service"]["Address"].as_str().unwrap(),
                providers[0]["Service"]["Port"].as_u64().unwrap()
            )
        );

        // --- the blocking query woke when the provider failed
        let woke = step("woke");
        // py-consul hands the index back as the header's text.
        let index_of = |value: &Value| value.as_str().and_then(|text| text.parse::<u64>().ok()).expect("an index");
        assert!(index_of(&woke["index"]) > index_of(&woke["first"]), "{woke}");
        assert_eq!("critical", woke["entries"][0]["Checks"][0]["Status"]);
        let passing = get(&cluster.url(leader, "/v1/health/service/resource_providers?passing"));
        assert_eq!(json!([]), passing.json());
        assert_eq!(Some("true"), passing.header("x-consul-knownleader"));
        assert_eq!(woke["index"].as_str(), passing.header("x-consul-index"));
    })
    .await;
}

/// Blocks on the `resource_manager` catalog at a follower with `?stale`
/// (py-consul's `consistency="stale"`; `wait` 2 s a round) until replica
/// argv[3] no longer carries the `leader` tag and another one does.
const FAILOVER_SCRIPT: &str = r#"
import json, sys
import consul
host, port, killed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = consul.Consul(host=host, port=port, consistency="stale")
index, entries = c.catalog.service("resource_manager")
rounds = 0
while True:
    index, entries = c.catalog.service("resource_manager", index=index, wait="2s")
    rounds += 1
    leaders = [e["ServiceMeta"]["replica_id"] for e in entries if "leader" in e["ServiceTags"]]
    if leaders and killed not in leaders:
        break
print(json.dumps({"rounds": rounds, "index": index, "leaders": leaders}), flush=True)
"#;

#[tokio::test]
async fn blocking_queries_survive_a_leader_kill_and_no_quorum_is_503() {
    bounded(async {
        let cluster = HttpCluster::start(3, &[]).await;
        let leader = cluster.leader().await;
        let follower = cluster.follower(leader);
        assert_eq!(200, post(&cluster.url(leader, "/v1/providers"), DEMO_PROVIDER).status);
        let index = get(&cluster.url(leader, "/v1/health/service/resource_providers"))
            .header("x-consul-index")
            .expect("an index")
            .to_owned();

        // --- a blocking query on the leader itself, and py-consul blocking on a follower
        let on_leader = Command::new(CURL)
            .args(["-sS", "--max-time", "60"])
            .arg(cluster.url(leader, &format!("/v1/health/service/resource_providers?index={index}&wait=60s")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (host, port) = cluster.http[&follower].rsplit_once(':').unwrap();
        let killed = leader.to_string();
        let script_args = [host, port, killed.as_str()];
        let watching = python(FAILOVER_SCRIPT, &script_args, Duration::from_secs(60));
        let kill = async {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            // --- kill the leader
            cluster.cluster.kill(leader);
        };
        let (steps, ()) = tokio::join!(watching, kill);

        // The follower's blocking queries went on through the election and
        // saw the leader tag move to another replica.
        let leaders = &steps[0]["leaders"];
        assert_eq!(1, leaders.as_array().map_or(0, Vec::len), "{steps:?}");
        assert_ne!(json!(leader.to_string()), leaders[0]);
        // The query blocked on the killed leader ended (its connection closed) rather than hanging.
        let ended = tokio::task::spawn_blocking(move || {
            let mut on_leader = on_leader;
            on_leader.wait()
        })
        .await
        .unwrap()
        .unwrap();
        assert!(!ended.success(), "a query on a killed replica cannot succeed");

        // --- a linearizable catalog read on the follower follows the new leader
        let new_leader = cluster.leader().await;
        assert_ne!(leader, new_leader);
        let answer = curl(&["-L", &cluster.url(follower, "/v1/health/service/resource_manager")]);
        assert_eq!(200, answer.status, "{answer:?}");
        assert_eq!(Some("true"), answer.header("x-consul-knownleader"));
        // The survivors probe each other every second: the killed replica turns critical.
        let mut health = answer.json();
        for _ in 0..50 {
            let statuses: Vec<Value> = health
                .as_array()
                .unwrap()
                .iter()
                .map(|entry| entry["Checks"][0]["Status"].clone())
                .collect();
            if statuses.iter().filter(|status| **status == "critical").count() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            health = curl(&["-L", &cluster.url(follower, "/v1/health/service/resource_manager")]).json();
        }
        let killed_entry = health
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["Service"]["ID"] == json!(format!("resource_manager-{leader}")))
            .expect("the killed replica is still a member");
        assert_eq!("critical", killed_entry["Checks"][0]["Status"], "{health}");
        let leader_now = get(&cluster.url(follower, "/v1/status/leader")).json();
        assert_eq!(json!(cluster.cluster.node(new_leader).addr), leader_now);

        // --- kill the new leader too: no quorum, no leader: 503 with Retry-After
        cluster.cluster.kill(new_leader);
        let survivor = cluster.http.keys().copied().find(|id| *id != leader && *id != new_leader).unwrap();
        let mut answer = get(&cluster.url(survivor, "/v1/state"));
        for _ in 0..100 {
            if answer.status == 503 && answer.json()["error"] == "no_leader" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = get(&cluster.url(survivor, "/v1/state"));
        }
        assert_eq!(503, answer.status, "{answer:?}");
        assert_eq!(Some("1"), answer.header("retry-after"));
        let stale = get(&cluster.url(survivor, "/v1/catalog/services?stale"));
        assert_eq!((200, Some("false")), (stale.status, stale.header("x-consul-knownleader")));
    })
    .await;
}
