//! Capability policies over HTTP (`/v1/policies`), on a cluster without
//! TLS: set, bind, unbind, read, list and delete answer as the gRPC calls do, and — the
//! documented default without TLS — no policy restricts anyone: every
//! caller is `anyone`, whom no certificate binds.

mod http_support;

use http_support::{curl, get, post, protocol_example, HttpCluster, DEMO_PROVIDER};
use qm_testkit::test_cluster::bounded;

fn put(url: &str, body: &str) -> http_support::Answer {
    curl(&["-X", "PUT", "-H", "Content-Type: application/json", "--data-binary", body, url])
}

#[tokio::test]
async fn policies_are_set_read_and_deleted_over_http_and_restrict_nobody_without_tls() {
    bounded(async {
        let cluster = HttpCluster::start(3, &[]).await;
        let leader = cluster.leader().await;
        assert_eq!(200, post(&cluster.url(leader, "/v1/providers"), DEMO_PROVIDER).status);

        // --- set: a new revision each time
        let body = r#"{"kinds": ["gpu"], "max_per_request": {"gpu": 1}, "priority_max": 0, "may_preempt": false,
                       "bindings": [{"cert_name": "alice"}, {"role": {"role": "resource_consumer", "namespace": null}}]}"#;
        let url = cluster.url(leader, "/v1/policies/team-a");
        let first = put(&url, body);
        assert_eq!(200, first.status, "{}", first.body);
        let second = put(&url, body).json();
        assert_eq!(first.json()["revision"].as_u64().unwrap() + 1, second["revision"].as_u64().unwrap());
        assert_eq!(serde_json::json!(["gpu"]), second["capability"]["kinds"]);

        // --- a bad body is 400 naming the field; a binding held by another policy too
        let bad = put(&cluster.url(leader, "/v1/policies/other"), r#"{"colour": "red"}"#);
        assert_eq!(
            (400, "policy"),
            (bad.status, bad.json()["field"].as_str().unwrap_or_default()),
            "{}",
            bad.body
        );
        let taken = put(
            &cluster.url(leader, "/v1/policies/other"),
            r#"{"bindings": [{"cert_name": "alice"}]}"#,
        );
        assert_eq!(400, taken.status, "{}", taken.body);
        assert!(taken.body.contains("already bound to policy"), "{}", taken.body);

        // --- read back, one and all
        let one = get(&url);
        assert_eq!(200, one.status);
        assert_eq!(2, one.json()["bindings"].as_array().unwrap().len());
        let all = get(&cluster.url(leader, "/v1/policies")).json();
        assert_eq!(1, all.as_array().unwrap().len(), "{all}");

        // --- bind and unbind one binding (one log entry each): a new revision; again, nothing changes
        let revision = |answer: &serde_json::Value| answer["revision"].as_u64().unwrap();
        let bound = post(&cluster.url(leader, "/v1/policies/team-a/bind"), r#"{"cert_name": "bob"}"#);
        assert_eq!(200, bound.status, "{}", bound.body);
        let bound = bound.json();
        assert_eq!(
            (revision(&second) + 1, 3),
            (revision(&bound), bound["bindings"].as_array().unwrap().len())
        );
        let again = post(&cluster.url(leader, "/v1/policies/team-a/bind"), r#"{"cert_name": "bob"}"#).json();
        assert_eq!(bound, again);
        let unbound = post(&cluster.url(leader, "/v1/policies/team-a/unbind"), r#"{"cert_name": "alice"}"#).json();
        assert_eq!(
            (
                revision(&bound) + 1,
                serde_json::json!([{"cert_name": "bob"}, {"role": {"role": "resource_consumer", "namespace": null}}])
            ),
            (revision(&unbound), unbound["bindings"].clone())
        );
        post(&cluster.url(leader, "/v1/policies/team-a/bind"), r#"{"cert_name": "alice"}"#);
        let unknown = post(&cluster.url(leader, "/v1/policies/nobody/bind"), r#"{"cert_name": "carol"}"#);
        assert_eq!(404, unknown.status, "{}", unknown.body);
        let bad = post(&cluster.url(leader, "/v1/policies/team-a/bind"), r#"{"colour": "red"}"#);
        assert_eq!(
            (400, "binding"),
            (bad.status, bad.json()["field"].as_str().unwrap_or_default()),
            "{}",
            bad.body
        );

        // --- each change is on the HTTP event stream (curl ends it after 2 s; the leader has applied them all)
        let streamed = curl(&["-N", "--max-time", "2", &cluster.url(leader, "/v1/events?from=1")]);
        let policy_events: Vec<&str> = streamed
            .body
            .lines()
            .filter_map(|line| line.strip_prefix("event: "))
            .filter(|event| event.starts_with("policy_"))
            .collect();
        assert_eq!(
            vec!["policy_set", "policy_set", "policy_bound", "policy_unbound", "policy_bound"],
            policy_events,
            "{}",
            streamed.body
        );

        // --- without TLS nobody is bound: a request the policy would refuse is granted
        assert_eq!(201, post(&cluster.url(leader, "/v1/allocate"), &protocol_example()).status);

        // --- delete, then it is gone
        let deleted = curl(&["-X", "DELETE", &url]).json();
        assert_eq!(serde_json::json!({"name": "team-a", "existed": true}), deleted);
        assert_eq!(404, get(&url).status);
    })
    .await;
}
