//! `/v1/openapi.json` against the real server: every documented path and
//! method answers (no `no_route`, no 405), with one of the statuses the
//! document lists for it. (That every route the server has is documented is
//! the unit test in `src/http/openapi.rs`, which reads the route table.)

mod http_support;

use http_support::{curl, get, post, protocol_example, HttpCluster, DEMO_PROVIDER};
use qm_testkit::test_cluster::bounded;
use serde_json::Value;

#[tokio::test]
async fn every_documented_path_answers_as_documented() {
    bounded(async {
        let cluster = HttpCluster::start(3, &[]).await;
        let leader = cluster.leader().await;
        assert_eq!(200, post(&cluster.url(leader, "/v1/providers"), DEMO_PROVIDER).status);
        assert_eq!(201, post(&cluster.url(leader, "/v1/allocate"), &protocol_example()).status);

        let document = get(&cluster.url(leader, "/v1/openapi.json"));
        assert_eq!(Some("application/json"), document.header("content-type"));
        let document = document.json();
        let paths = document["paths"].as_object().expect("paths");
        assert!(paths.len() >= 15, "{paths:?}");
        let mut called = 0;
        for (path, methods) in paths {
            let concrete = path
                .replace("{id}", "550e8400-e29b-41d4-a716-446655440000")
                .replace("{name}", "resource_providers")
                .replace("{namespace}", "team-a");
            let url = cluster.url(leader, &concrete);
            for (method, operation) in methods.as_object().expect("methods") {
                let answer = match method.as_str() {
                    "get" if concrete == "/v1/events" => curl(&["--max-time", "1", &url]),
                    "get" => get(&url),
                    // A body the document's schema does not allow: the route answers 400.
                    "post" => post(&url, "{}"),
                    "put" => curl(&["-X", "PUT", "-H", "Content-Type: application/json", "--data-binary", "{}", &url]),
                    "delete" => curl(&["-X", "DELETE", &url]),
                    other => panic!("{path}: an undocumented method {other}"),
                };
                let documented: Vec<&String> = operation["responses"].as_object().expect("responses").keys().collect();
                assert!(
                    documented.iter().any(|code| **code == answer.status.to_string()),
                    "{method} {path} answered {} (documented: {documented:?}): {}",
                    answer.status,
                    answer.body
                );
                if answer.header("content-type") == Some("application/json") {
                    let body: Value = answer.json();
                    assert_ne!(Some("no_route"), body["error"].as_str(), "{method} {path}");
                }
                called += 1;
            }
        }
        assert_eq!(
            called,
            paths.values().map(|methods| methods.as_object().unwrap().len()).sum::<usize>()
        );

        // --- a method no route has is refused (405), a path no route has is 404 no_route
        let refused = curl(&["-X", "DELETE", &cluster.url(leader, "/v1/allocate")]);
        assert_eq!(405, refused.status);
        let missing = get(&cluster.url(leader, "/v2/allocate"));
        assert_eq!((404, "no_route"), (missing.status, missing.json()["error"].as_str().unwrap()));
    })
    .await;
}
