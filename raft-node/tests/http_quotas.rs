//! Quotas and preemption over HTTP, driven by curl against real replicas:
//! `PUT /v1/quotas/{namespace}`, `GET /v1/quotas`, a request held at the
//! quota, `POST /v1/preemption`, the dry run `POST /v1/allocate/preview`
//! (which allocates nothing), bad input naming the field, and
//! `DELETE /v1/quotas/{namespace}`.

mod http_support;

use http_support::{curl, get, post, HttpCluster};
use qm_testkit::test_cluster::bounded;
use serde_json::{json, Value};
use uuid::Uuid;

fn one_core(namespace: &str, priority: i64) -> String {
    json!({
        "request_id": Uuid::new_v4().to_string(),
        "requester_id": "worker",
        "namespace": namespace,
        "resource_requirements": {"cpu_cores": 1},
        "priority": priority,
    })
    .to_string()
}

fn put(url: &str, body: &str) -> http_support::Answer {
    curl(&["-X", "PUT", "-H", "Content-Type: application/json", "--data-binary", body, url])
}

#[tokio::test]
async fn curl_sets_a_quota_previews_a_preemption_and_lifts_the_quota() {
    bounded(async {
        let cluster = HttpCluster::start(3, &[]).await;
        let leader = cluster.leader().await;
        let url = |path: &str| cluster.url(leader, path);
        let resources: Vec<Value> = (1..=3)
            .map(|n| json!({"resource_id": format!("cpu_{n}"), "kind": "cpu_cores", "capacity": 1}))
            .collect();
        let registered = post(
            &url("/v1/providers"),
            &json!({"provider_id": "node_q", "resources": resources}).to_string(),
        );
        assert_eq!(200, registered.status, "{registered:?}");

        // --- team-a may hold one core
        let set = put(&url("/v1/quotas/team-a"), r#"{"cpu_cores": 1}"#);
        assert_eq!(200, set.status, "{set:?}");
        assert_eq!(1, set.json()["namespaces"][0]["quota"]["cpu_cores"]);
        let bad = put(&url("/v1/quotas/team-a"), r#"{"cpu_cores": -1}"#);
        assert_eq!(400, bad.status, "{bad:?}");
        assert_eq!("limits", bad.json()["field"], "{}", bad.body);

        // --- the first core is granted, the second waits for the quota
        assert_eq!("allocated", post(&url("/v1/allocate"), &one_core("team-a", 0)).json()["status"]);
        let waiting = post(&url("/v1/allocate"), &one_core("team-a", 0)).json();
        assert_eq!("queued", waiting["status"], "{waiting}");
        let quotas = get(&url("/v1/quotas?namespace=team-a")).json();
        let line = &quotas["namespaces"][0];
        assert_eq!(
            (1, 1),
            (line["held"]["cpu_cores"].as_u64().unwrap(), line["queued"].as_u64().unwrap()),
            "{quotas}"
        );

        // --- team-b fills the rest, its newest asking to be released if preempted; bad choices name the field
        assert_eq!("allocated", post(&url("/v1/allocate"), &one_core("team-b", 0)).json()["status"]);
        let mut releasable: Value = serde_json::from_str(&one_core("team-b", 0)).unwrap();
        releasable["on_preemption"] = json!("evict");
        let bad = post(&url("/v1/allocate"), &releasable.to_string());
        assert_eq!(400, bad.status, "{bad:?}");
        assert!(bad.body.contains("on_preemption") || bad.body.contains("evict"), "{}", bad.body);
        releasable["on_preemption"] = json!("release");
        let victim = post(&url("/v1/allocate"), &releasable.to_string()).json();
        assert_eq!("allocated", victim["status"], "{victim}");

        // --- preemption on from priority 9; the dry run names that victim
        let preemption = post(&url("/v1/preemption"), r#"{"setting": {"from_priority": 9}}"#);
        assert_eq!(200, preemption.status, "{preemption:?}");
        assert_eq!(json!({"from_priority": 9}), preemption.json()["cluster_preemption"]);
        let preview = post(&url("/v1/allocate/preview"), &one_core("ops", 9));
        assert_eq!(200, preview.status, "{preview:?}");
        let preview = preview.json();
        assert_eq!("allocated", preview["status"], "{preview}");
        assert_eq!(1, preview["would_preempt"].as_array().unwrap().len(), "{preview}");
        assert_eq!(releasable["request_id"], preview["would_preempt"][0]["request_id"], "{preview}");
        let after = get(&url("/v1/quotas")).json();
        assert!(
            after["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|line| line["namespace"] != "ops"),
            "the dry run allocated: {after}"
        );

        // --- the real preemption: the victim is released for good, not queued again
        assert_eq!("allocated", post(&url("/v1/allocate"), &one_core("ops", 9)).json()["status"]);
        let victim_id = releasable["request_id"].as_str().unwrap();
        let victim_now = get(&url(&format!("/v1/requests/{victim_id}"))).json();
        assert!(
            ["deallocation", "idle"].contains(&victim_now["state"].as_str().unwrap_or_default()),
            "{victim_now}"
        );

        // --- lifted: the waiting request is examined (no core is free, so it still waits)
        let deleted = curl(&["-X", "DELETE", &url("/v1/quotas/team-a")]);
        assert_eq!(200, deleted.status, "{deleted:?}");
        assert_eq!(json!({}), deleted.json()["namespaces"][0]["quota"]);
    })
    .await
}
