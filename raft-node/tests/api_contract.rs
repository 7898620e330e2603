//! The public API's contract: the protocol's example request gets an
//! allocation_response of the protocol's shape; bad input gets
//! INVALID_ARGUMENT naming the field and writes nothing to the log.

mod support;

use qm_api::convert::status_name;
use std::collections::HashMap;

use qm_client::proto::api::*;
use qm_state_machine::protocol::ResourceRequest as ProtocolRequest;
use support::*;
use tonic::Code;

/// The protocol's `resource_request` example, verbatim.
const PROTOCOL_EXAMPLE: &str = include_str!("../../state-machine/tests/fixtures/resource_request.json");

fn sample_provider() -> RegisterProviderRequest {
    let mut provider = provider("node_1", 4);
    provider.resources.push(ResourceSpec {
        resource_id: "vol_1".into(),
        kind: "storage_gb".into(),
        capacity: 500,
        ..Default::default()
    });
    provider
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_example_gets_a_protocol_response() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = start_cluster(3, &[]).await;
        let (_, mut api) = leader_client(&cluster).await;
        api.register_provider(sample_provider()).await.expect("register");

        // --- the example, parsed as the protocol's JSON and sent as is
        // Its 2024 deadline has passed (it would be rejected); only that moves.
        let example: ProtocolRequest =
            serde_json::from_str(&PROTOCOL_EXAMPLE.replace("2024-03-21", "2099-03-21")).expect("the example parses");
        let wire = qm_client::convert::request_to_proto(&example);
        let reply = api
            .allocate(AllocateRequest {
                request: Some(wire.clone()),
            })
            .await
            .expect("allocate")
            .into_inner();

        // --- the protocol's allocation_response
        let response = qm_client::convert::response_from_reply(&reply).expect("converts");
        let json = serde_json::to_value(&response).expect("json");
        assert_eq!(json["request_id"], "550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(json["status"], "allocated");
        assert!(uuid::Uuid::parse_str(json["response_id"].as_str().expect("response_id")).is_ok());
        assert_eq!(json["allocated_resources"]["cpu_cores"].as_array().expect("cores").len(), 2);
        assert_eq!(json["allocated_resources"]["storage_gb"], serde_json::json!(["vol_1"]));
        assert_eq!(json["allocated_resources"]["memory_gb"], serde_json::json!(["mem"]));

        // --- sending it again is the same response, not a second allocation
        let again = api
            .allocate(AllocateRequest { request: Some(wire) })
            .await
            .expect("retry")
            .into_inner();
        assert_eq!(again, reply);
        assert_eq!(list_all(&cluster).await.len(), 1);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_writes_nothing() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = start_cluster(3, &[]).await;
        let (leader, mut api) = leader_client(&cluster).await;
        api.register_provider(sample_provider()).await.expect("register");
        let before = cluster.status_of(leader).await.expect("status");

        let mut missing_requester = request("x", 1);
        missing_requester.requester_id.clear();
        let mut negative = request("agent", 1);
        negative.resource_requirements = HashMap::from([("cpu_cores".to_owned(), -2)]);
        let mut unknown_provider = request("agent", 1);
        unknown_provider.constraints = Some(Constraints {
            provider_id: "nowhere".into(),
            ..Default::default()
        });
        let mut bad_id = request("agent", 1);
        bad_id.request_id = "not-a-uuid".into();
        let mut bad_deadline = request("agent", 1);
        bad_deadline.deadline = Some("tomorrow".into());
        let mut huge = request("agent", 1);
        huge.resource_requirements = (0..1_000).map(|i| (format!("kind_{i:08}"), 1)).collect();
        let cases = [
            (missing_requester, "requester_id"),
            (negative, "resource_requirements.cpu_cores"),
            (unknown_provider, "constraints.provider_id"),
            (bad_id, "request_id"),
            (bad_deadline, "deadline"),
            (huge, "resource_requirements"),
        ];
        for (bad, field) in cases {
            let status = api.allocate(AllocateRequest { request: Some(bad) }).await.expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert_eq!(
                status.metadata().get("x-qm-field").and_then(|v| v.to_str().ok()),
                Some(field),
                "{status:?}"
            );
            assert!(status.message().contains(field), "{status:?}");
        }

        // --- a message over the size limit is refused before decoding
        let mut oversize = request("agent", 1);
        oversize.requester_id = "a".repeat(5 * 1024 * 1024);
        let status = api
            .allocate(AllocateRequest { request: Some(oversize) })
            .await
            .expect_err("refused");
        assert!(
            matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument),
            "{status:?}"
        );

        // --- bad provider documents too
        let mut bad_provider = sample_provider();
        bad_provider.resources[0].capacity = -1;
        let status = api.register_provider(bad_provider).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("capacity"), "{status:?}");

        // --- a list filter with a state number the wire does not define
        let status = api
            .list(ListRequest {
                state: 9,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(
            (Code::InvalidArgument, Some("state")),
            (status.code(), status.metadata().get("x-qm-field").and_then(|v| v.to_str().ok())),
            "{status:?}"
        );

        // --- nothing reached the log
        let after = cluster.status_of(leader).await.expect("status");
        assert_eq!(
            before.term, after.term,
            "a leader change (it appends an entry) spoils this check; rerun"
        );
        assert_eq!(before.last_log_index, after.last_log_index, "refused calls were logged");
        assert!(list_all(&cluster).await.is_empty());
    })
    .await
    .expect("test finished in time");
}

/// The `Pipeline` stream answers each call with exactly what its unary twin
/// answers, matched by `call_id`: a grant, a refusal with its code, message
/// and field, a release; a call without a body is refused naming `call`; a
/// follower redirects with the leader hint; closing the request side ends
/// the stream once everything is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_answers_each_call_as_its_unary_twin() {
    use qm_client::proto::api::pipelined_call::Call as Pipelined;
    use qm_client::proto::api::pipelined_reply::Outcome;
    use tokio_stream::wrappers::ReceiverStream;

    tokio::time::timeout(TEST_TIMEOUT, async {
        let cluster = start_cluster(3, &[]).await;
        let (leader, mut api) = leader_client(&cluster).await;
        api.register_provider(sample_provider()).await.expect("register");
        let (calls, queued) = tokio::sync::mpsc::channel(16);
        let mut replies = api
            .pipeline(ReceiverStream::new(queued))
            .await
            .expect("the stream opens")
            .into_inner();
        let mut next_reply = async || {
            let reply = replies.message().await.expect("a reply").expect("the stream is open");
            (reply.call_id, reply.outcome.expect("an outcome"))
        };

        // --- a grant, then its release, each as the unary call answers it
        let granted_request = request("agent", 1);
        let allocate = Pipelined::Allocate(AllocateRequest {
            request: Some(granted_request.clone()),
        });
        calls
            .send(PipelinedCall {
                call_id: 7,
                call: Some(allocate),
            })
            .await
            .unwrap();
        let (call_id, Outcome::Reply(granted)) = next_reply().await else {
            panic!("allocate was refused")
        };
        assert_eq!((7, "allocated"), (call_id, status_name(&granted)));
        let unary = api
            .get(GetRequest {
                id: granted.request_id.clone(),
                stale: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((unary.allocation_id, unary.state), (granted.allocation_id.clone(), granted.state));
        let release = Pipelined::Release(ReleaseRequest {
            id: granted.allocation_id.clone(),
        });
        calls
            .send(PipelinedCall {
                call_id: 8,
                call: Some(release),
            })
            .await
            .unwrap();
        let (call_id, Outcome::Reply(released)) = next_reply().await else {
            panic!("release was refused")
        };
        let unary = api
            .get(GetRequest {
                id: granted.request_id,
                stale: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((8, unary.state), (call_id, released.state));

        // --- refusals, several in flight at once, each under its own call_id
        let mut negative = request("agent", 1);
        negative.resource_requirements = HashMap::from([("cpu_cores".to_owned(), -2)]);
        let unknown = uuid::Uuid::new_v4().to_string();
        let unary_negative = api
            .allocate(AllocateRequest {
                request: Some(negative.clone()),
            })
            .await
            .expect_err("refused");
        let unary_unknown = api.release(ReleaseRequest { id: unknown.clone() }).await.expect_err("refused");
        let refused_calls = [
            (10, Some(Pipelined::Allocate(AllocateRequest { request: Some(negative) }))),
            (11, Some(Pipelined::Release(ReleaseRequest { id: unknown }))),
            (12, None),
        ];
        for (call_id, call) in refused_calls {
            calls.send(PipelinedCall { call_id, call }).await.unwrap();
        }
        let mut refusals = HashMap::new();
        for _ in 0..3 {
            let (call_id, Outcome::Status(status)) = next_reply().await else {
                panic!("a bad call was answered")
            };
            refusals.insert(call_id, status);
        }
        for (call_id, unary) in [(10, &unary_negative), (11, &unary_unknown)] {
            let sent = &refusals[&call_id];
            assert_eq!(
                (unary.code() as i32, unary.message()),
                (sent.code, sent.message.as_str()),
                "call {call_id}"
            );
        }
        assert_eq!(
            Some("resource_requirements.cpu_cores"),
            refusals[&10].metadata.get("x-qm-field").map(String::as_str)
        );
        assert_eq!(
            (Code::InvalidArgument as i32, Some("call")),
            (refusals[&12].code, refusals[&12].metadata.get("x-qm-field").map(String::as_str))
        );

        // --- closing our side: the stream ends after the last answer
        drop(calls);
        assert!(replies.message().await.expect("a clean end").is_none());

        // --- a follower's stream redirects every write to the leader
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        let (calls, queued) = tokio::sync::mpsc::channel(1);
        let mut follower_api = client(cluster.addr(follower)).await;
        let mut replies = follower_api
            .pipeline(ReceiverStream::new(queued))
            .await
            .expect("opens")
            .into_inner();
        let allocate = Pipelined::Allocate(AllocateRequest {
            request: Some(request("agent", 1)),
        });
        calls
            .send(PipelinedCall {
                call_id: 1,
                call: Some(allocate),
            })
            .await
            .unwrap();
        let reply = replies.message().await.expect("a reply").expect("open");
        let Some(Outcome::Status(redirect)) = reply.outcome else {
            panic!("a follower granted a write: {reply:?}")
        };
        assert_eq!(
            (Code::Unavailable as i32, Some(cluster.addr(leader))),
            (redirect.code, redirect.metadata.get("x-qm-leader-addr").map(String::as_str))
        );
    })
    .await
    .expect("test finished in time");
}
