//! The protocol's JSON API over HTTP, driven by curl against real replicas:
//! allocate (the protocol's example), idempotent retries, bad input that
//! changes nothing, a 10 MB body, unknown ids, paging, `?wait`, release,
//! bulk release,
//! a follower's redirect, and the event stream as Server-Sent Events.

mod http_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use http_support::{curl, get, post, protocol_example, HttpCluster, CURL, DEMO_PROVIDER};
use qm_testkit::test_cluster::bounded;
use serde_json::{json, Value};
use uuid::Uuid;

fn small_request(cpus: i64, provider: &str) -> String {
    json!({
        "request_id": Uuid::new_v4().to_string(),
        "requester_id": "agent_7",
        "resource_requirements": {"cpu_cores": cpus},
        "priority": 1,
        "constraints": {"provider_id": provider},
    })
    .to_string()
}

fn cpus_provider(provider_id: &str, cpus: u32) -> String {
    let resources: Vec<Value> = (1..=cpus)
        .map(|n| json!({"resource_id": format!("cpu_{n}"), "kind": "cpu_cores", "capacity": 1}))
        .collect();
    json!({"provider_id": provider_id, "labels": {"zone": "b"}, "resources": resources}).to_string()
}

#[tokio::test]
async fn curl_allocates_the_protocol_example_and_bad_input_changes_nothing() {
    bounded(async {
        let cluster = HttpCluster::start(3, &[]).await;
        let leader = cluster.leader().await;
        let url = |path: &str| cluster.url(leader, path);

        // --- register the demo provider, then post the protocol's example
        let registered = post(&url("/v1/providers"), DEMO_PROVIDER);
        assert_eq!(200, registered.status, "{registered:?}");
        assert_eq!("active", registered.json()["status"]);
        let dir = tempfile::tempdir().unwrap();
        let example = dir.path().join("resource_request.json");
        std::fs::write(&example, protocol_example()).unwrap();
        let file_arg = format!("@{}", example.display());
        let created = curl(&["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &file_arg, &url("/v1/allocate")]);
        assert_eq!(201, created.status, "{created:?}");
        let response = created.json();
        assert_eq!("allocated", response["status"], "{response}");
        assert_eq!("550e8400-e29b-41d4-a716-446655440000", response["request_id"]);
        assert_eq!(json!(["cpu_1", "cpu_2"]), response["allocated_resources"]["cpu_cores"]);

        // --- the same request again: 200 and the same answer
        let again = curl(&["-X", "POST", "--data-binary", &file_arg, &url("/v1/allocate")]);
        assert_eq!(200, again.status, "{again:?}");
        assert_eq!(response["response_id"], again.json()["response_id"]);
        let fetched = get(&url("/v1/requests/550e8400-e29b-41d4-a716-446655440000"));
        assert_eq!(200, fetched.status);
        assert_eq!("monitoring", fetched.json()["state"]);

        // --- bad input: 400 naming the field, nothing changed
        let before = get(&url("/v1/state")).json();
        for (body, field) in [
            (r#"{"request_id": "#.to_owned(), "resource_request"),
            (r#"{"request_id": "not-a-uuid"}"#.to_owned(), "request_id"),
            (protocol_example().replace("\"priority\": 1", "\"priority\": \"high\""), "resource_request"),
            (protocol_example().replace("\"priority\": 1,", ""), "priority"),
            (protocol_example().replace("\"cpu_cores\": 2", "\"cpu_cores\": -2"), "resource_requirements.cpu_cores"),
            (json!({"request_id": Uuid::new_v4().to_string(), "requester_id": "a", "resource_requirements": {"cpu_cores": 1}, "priority": 1, "surprise": 1}).to_string(), "resource_request"),
        ] {
            let refused = post(&url("/v1/allocate"), &body);
            assert_eq!(400, refused.status, "{body}: {refused:?}");
            assert_eq!("invalid_argument", refused.json()["error"], "{refused:?}");
            assert_eq!(field, refused.json()["field"], "{body}: {refused:?}");
        }
        let refused = post(&url("/v1/release"), r#"{"request_id": "x", "allocation_id": "y"}"#);
        assert_eq!((400, json!("allocation_id")), (refused.status, refused.json()["field"].clone()));
        let refused = curl(&[&url("/v1/requests?state=sleeping")]);
        assert_eq!((400, json!("state")), (refused.status, refused.json()["field"].clone()));
        for (change, field) in [(json!({"port": 9100}), "port"), (json!({"address": "a b", "port": 1}), "address")] {
            let mut registration: Value = serde_json::from_str(DEMO_PROVIDER).unwrap();
            registration.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
            let refused = post(&url("/v1/providers"), &registration.to_string());
            assert_eq!((400, json!(field)), (refused.status, refused.json()["field"].clone()), "{registration}");
        }

        // --- a 10 MB body is refused before it is read whole
        let big = dir.path().join("big.json");
        std::fs::write(&big, format!("{{\"requester_id\": \"{}\"}}", "a".repeat(10 * 1024 * 1024))).unwrap();
        let too_large = curl(&["-X", "POST", "--data-binary", &format!("@{}", big.display()), &url("/v1/allocate")]);
        assert_eq!(413, too_large.status, "{:?}", too_large.headers);
        assert_eq!("payload_too_large", too_large.json()["error"]);
        // Without a Content-Length (chunked), it is cut off at the limit.
        let chunked = curl(&[
            "-X", "POST", "-H", "Transfer-Encoding: chunked", "--data-binary", &format!("@{}", big.display()), &url("/v1/allocate"),
        ]);
        assert_eq!(413, chunked.status, "{:?}", chunked.headers);
        assert_eq!(before, get(&url("/v1/state")).json(), "refused calls changed the table");

        // --- unknown ids: 404
        let unknown = get(&url(&format!("/v1/requests/{}", Uuid::new_v4())));
        assert_eq!((404, json!("not_found")), (unknown.status, unknown.json()["error"].clone()));
        let unknown = post(&url("/v1/release"), &json!({"allocation_id": Uuid::new_v4().to_string()}).to_string());
        assert_eq!(404, unknown.status, "{unknown:?}");
        let no_route = get(&url("/v1/nothing"));
        assert_eq!((404, json!("no_route")), (no_route.status, no_route.json()["error"].clone()));

        // --- paging through requests
        assert_eq!(200, post(&url("/v1/providers"), &cpus_provider("node_b", 8)).status);
        for _ in 0..5 {
            assert_eq!(201, post(&url("/v1/allocate"), &small_request(1, "node_b")).status);
        }
        let mut seen = Vec::new();
        let mut next: Option<String> = None;
        for _page in 0..10 {
            let path = match &next {
                None => "/v1/requests?namespace=default&requester=agent_7&limit=2".to_owned(),
                Some(after) => format!("/v1/requests?namespace=default&requester=agent_7&limit=2&next={after}"),
            };
            let page = get(&url(&path)).json();
            seen.extend(page["requests"].as_array().unwrap().iter().map(|r| r["request_id"].clone()));
            match page["next"].as_str() {
                Some(after) => next = Some(after.to_owned()),
                None => break,
            }
        }
        assert_eq!(5, seen.len(), "{seen:?}");
        let providers = get(&url("/v1/providers?limit=1")).json();
        assert_eq!(1, providers["providers"].as_array().unwrap().len());
        assert_eq!("node_1", providers["next"]);
        let rest = get(&url("/v1/providers?limit=1&next=node_1")).json();
        assert_eq!("node_b", rest["providers"][0]["provider_id"]);

        // --- a queued request, answered when it leaves the queue (?wait)
        let held = post(&url("/v1/allocate"), &small_request(3, "node_b")).json();
        assert_eq!("allocated", held["status"], "{held}");
        let queued_body = small_request(3, "node_b");
        let queued = post(&url("/v1/allocate"), &queued_body).json();
        assert_eq!("queued", queued["status"], "{queued}");
        let waiting = Command::new(CURL)
            .args(["-sS", "--max-time", "30", "-X", "POST", "--data-binary", &queued_body])
            .arg(url("/v1/allocate?wait=25s"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let released = post(&url("/v1/release"), &json!({"allocation_id": held["allocation_id"]}).to_string());
        assert_eq!(200, released.status, "{released:?}");
        let waited = waiting.wait_with_output().unwrap();
        let waited: Value = serde_json::from_slice(&waited.stdout).expect("the waiting call answers JSON");
        assert_eq!("monitoring", waited["state"], "{waited}");
        assert_eq!(queued["request_id"], waited["request_id"]);

        // --- bulk release: an empty filter is a 400 naming it; agent_7's, then nothing left
        for (body, field) in [("{}", "filter"), (r#"{"requester_id": "agent_7"}"#, "requester_id")] {
            let refused = post(&url("/v1/release/matching"), body);
            assert_eq!((400, json!(field)), (refused.status, refused.json()["field"].clone()), "{body}");
        }
        let bulk = r#"{"namespace": "default", "requester_id": "agent_7"}"#;
        let released = post(&url("/v1/release/matching"), bulk);
        assert_eq!(200, released.status, "{released:?}");
        let answer = released.json();
        assert!(answer["released"].as_u64().unwrap_or_default() >= 1, "{answer}");
        assert_eq!(Value::Null, answer["next"], "{answer}");
        let again = post(&url("/v1/release/matching"), bulk).json();
        assert_eq!((json!(0), json!(0)), (again["released"].clone(), again["cancelled"].clone()), "{again}");
        let after = get(&url(&format!("/v1/requests/{}", waited["request_id"].as_str().unwrap()))).json();
        assert_eq!("idle", after["state"], "{after}");
    })
    .await;
}

#[tokio::test]
async fn a_follower_redirects_to_the_leader_and_answers_stale_reads_itself() {
    bounded(async {
        let cluster = HttpCluster::start(3, &[]).await;
        let leader = cluster.leader().await;
        let follower = cluster.follower(leader);

        // --- a write on a follower: 307 to the same path on the leader
        let redirected = post(&cluster.url(follower, "/v1/providers"), DEMO_PROVIDER);
        assert_eq!(307, redirected.status, "{redirected:?}");
        assert_eq!(Some(cluster.url(leader, "/v1/providers").as_str()), redirected.header("location"));
        assert_eq!("not_leader", redirected.json()["error"]);
        // curl -L follows it with the body (307 keeps method and body).
        let followed = curl(&[
            "-L",
            "-X",
            "POST",
            "--data-binary",
            DEMO_PROVIDER,
            &cluster.url(follower, "/v1/providers"),
        ]);
        assert_eq!(200, followed.status, "{followed:?}");
        let followed = curl(&[
            "-L",
            "-X",
            "POST",
            "--data-binary",
            &protocol_example(),
            &cluster.url(follower, "/v1/allocate"),
        ]);
        assert_eq!(201, followed.status, "{followed:?}");
        assert_eq!("allocated", followed.json()["status"]);

        // --- a linearizable read on a follower redirects; a stale one is answered there
        let read = get(&cluster.url(follower, "/v1/state"));
        assert_eq!(307, read.status);
        let id = "/v1/requests/550e8400-e29b-41d4-a716-446655440000?stale";
        let mut stale = get(&cluster.url(follower, id));
        for _ in 0..50 {
            if stale.status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            stale = get(&cluster.url(follower, id));
        }
        assert_eq!(200, stale.status, "{stale:?}");
        assert_eq!("allocated", stale.json()["status"]);
        let status = get(&cluster.url(follower, "/v1/cluster")).json();
        assert_eq!(json!(leader), status["leader_id"]);
        assert_eq!(json!(cluster.http[&leader]), status["leader_http_addr"]);
    })
    .await;
}

/// The SSE messages in `text`: (id, event, data).
fn sse_messages(text: &str) -> Vec<(u64, String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| block.lines().find_map(|line| line.strip_prefix(name).map(str::trim));
            Some((
                field("id:")?.parse().ok()?,
                field("event:")?.to_owned(),
                serde_json::from_str(field("data:")?).ok()?,
            ))
        })
        .collect()
}

#[tokio::test]
async fn events_stream_as_server_sent_events_and_resume_after_the_last_event_id() {
    bounded(async {
        let cluster = HttpCluster::start(3, &[]).await;
        let leader = cluster.leader().await;
        assert_eq!(200, post(&cluster.url(leader, "/v1/providers"), DEMO_PROVIDER).status);
        assert_eq!(201, post(&cluster.url(leader, "/v1/allocate"), &protocol_example()).status);

        // --- from the first revision, on any replica (curl ends the stream after 2 s)
        let follower = cluster.follower(leader);
        let stream = |extra: &[&str]| {
            let mut args = vec!["-N", "-sS", "--max-time", "2"];
            args.extend(extra);
            let output = Command::new(CURL).args(&args).output().unwrap();
            sse_messages(&String::from_utf8_lossy(&output.stdout))
        };
        let events_url = cluster.url(follower, "/v1/events?from=1");
        let mut all = stream(&[&events_url]);
        for _ in 0..20 {
            if all.iter().any(|(_, event, _)| event == "allocation_granted") {
                break;
            }
            all = stream(&[&events_url]);
        }
        assert_eq!("provider_registered", all[0].1, "{all:?}");
        assert_eq!(1, all[0].0);
        let granted = all
            .iter()
            .find(|(_, event, _)| event == "allocation_granted")
            .expect("a grant event");
        assert_eq!("550e8400-e29b-41d4-a716-446655440000", granted.2["request_id"]);
        assert!(all.windows(2).all(|pair| pair[0].0 < pair[1].0), "revisions grow");
        assert!(all.iter().all(|(id, _, data)| data["revision"] == json!(id)));

        // --- reconnecting with Last-Event-ID resumes right after it
        let resume_after = all[2].0;
        let header = format!("Last-Event-ID: {resume_after}");
        let resumed = stream(&["-H", &header, &cluster.url(leader, "/v1/events?from=1")]);
        assert_eq!(Some(resume_after + 1), resumed.first().map(|message| message.0), "{resumed:?}");
        assert_eq!(all[3..].len(), resumed.len());
    })
    .await;
}

#[tokio::test]
async fn an_operator_cordons_and_uncordons_a_provider_over_http() {
    bounded(async {
        let cluster = HttpCluster::start(3, &[]).await;
        let leader = cluster.leader().await;
        let url = |path: &str| cluster.url(leader, path);
        assert_eq!(200, post(&url("/v1/providers"), &cpus_provider("node_c", 2)).status);

        // --- cordon: the answer, the provider's view and the state say so
        let cordoned = post(&url("/v1/providers/node_c/cordon"), "");
        assert_eq!(200, cordoned.status, "{cordoned:?}");
        assert_eq!(
            json!({"provider_id": "node_c", "scheduling": "cordoned", "moving": [], "cannot_move": []}),
            cordoned.json()
        );
        assert_eq!("cordoned", get(&url("/v1/providers")).json()["providers"][0]["scheduling"]);
        assert_eq!(json!(["node_c"]), get(&url("/v1/state")).json()["cordoned_providers"]);

        // --- a request for it waits, and is placed once it is uncordoned
        let queued = post(&url("/v1/allocate"), &small_request(1, "node_c"));
        assert_eq!("queued", queued.json()["status"], "{queued:?}");
        let opened = post(&url("/v1/providers/node_c/uncordon"), "");
        assert_eq!("open", opened.json()["scheduling"]);
        let id = queued.json()["request_id"].as_str().unwrap().to_owned();
        assert_eq!("allocated", get(&url(&format!("/v1/requests/{id}"))).json()["status"]);

        // --- a drain with nowhere to go answers at once with what cannot move, and why
        let drained = post(&url("/v1/providers/node_c/drain?deadline_ms=60000"), "");
        assert_eq!(200, drained.status, "{drained:?}");
        let drained = drained.json();
        assert_eq!("draining", drained["scheduling"]);
        let cannot = drained["cannot_move"].as_array().unwrap();
        assert_eq!(1, cannot.len(), "{drained}");
        assert!(
            cannot[0]
                .as_str()
                .unwrap()
                .ends_with("pinned: moves only when the drain deadline passes"),
            "{drained}"
        );
        assert_eq!(400, post(&url("/v1/providers/node_c/drain?deadline_ms=0"), "").status);

        // --- an unknown provider is 404; a follower redirects to the leader
        assert_eq!(404, post(&url("/v1/providers/node_none/cordon"), "").status);
        let follower = cluster.follower(leader);
        assert_eq!(307, post(&cluster.url(follower, "/v1/providers/node_c/cordon"), "").status);
    })
    .await
}
