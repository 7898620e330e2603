//! Shared helpers for tests that run real `qm-node` processes.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod commands;
pub mod pki;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use qm_client::proto::api::quartermaster_client::QuartermasterClient;
use qm_client::proto::api::*;
use qm_testkit::LocalCluster;
use tonic::transport::Channel;
use tonic::Code;

/// The whole-test bound: a test that has not finished by then fails.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

pub fn node_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_qm-node"))
}

/// Providers in these tests do not heartbeat; without a long failure window
/// the leader would (rightly) declare them failed after 5 s.
pub const QUIET_PROVIDERS: [&str; 2] = ["--provider-failure-window-ms", "600000"];

/// Starts `count` replicas with `extra_args` after [`QUIET_PROVIDERS`].
pub async fn start_cluster(count: u64, extra_args: &[&str]) -> LocalCluster {
    let args: Vec<&str> = QUIET_PROVIDERS.iter().chain(extra_args).copied().collect();
    LocalCluster::start(node_binary(), count, &args).await.expect("cluster starts")
}

pub async fn client(addr: &str) -> QuartermasterClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match QuartermasterClient::connect(format!("http://{addr}")).await {
            Ok(client) => return client,
            Err(error) if Instant::now() > deadline => panic!("cannot connect to {addr}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub async fn leader_client(cluster: &LocalCluster) -> (u64, QuartermasterClient<Channel>) {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    (leader, client(cluster.addr(leader)).await)
}

/// A provider with `cores` exclusive CPU cores and 64 GB of divisible memory.
pub fn provider(provider_id: &str, cores: u32) -> RegisterProviderRequest {
    let mut resources: Vec<ResourceSpec> = (1..=cores)
        .map(|core| ResourceSpec {
            resource_id: format!("cpu_{core}"),
            kind: "cpu_cores".into(),
            capacity: 1,
            ..Default::default()
        })
        .collect();
    resources.push(ResourceSpec {
        resource_id: "mem".into(),
        kind: "memory_gb".into(),
        capacity: 64,
        ..Default::default()
    });
    RegisterProviderRequest {
        provider_id: provider_id.into(),
        resources,
        ..Default::default()
    }
}

pub fn request(requester: &str, cores: i64) -> ResourceRequest {
    ResourceRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        requester_id: requester.into(),
        resource_requirements: HashMap::from([("cpu_cores".to_owned(), cores)]),
        priority: 1,
        ..Default::default()
    }
}

/// Sends `call` to whichever replica leads, following redirects and
/// retrying through elections, until `deadline`. The same request (same
/// request_id) is resent each time, so retries are idempotent.
pub async fn allocate_anywhere(
    cluster: &LocalCluster,
    request: &ResourceRequest,
    deadline: Duration,
) -> Result<AllocationReply, tonic::Status> {
    let until = Instant::now() + deadline;
    let mut last = tonic::Status::unavailable("not tried");
    while Instant::now() < until {
        for addr in cluster.endpoints() {
            let Ok(Ok(mut client)) =
                tokio::time::timeout(Duration::from_millis(500), QuartermasterClient::connect(format!("http://{addr}"))).await
            else {
                continue;
            };
            let call = client.allocate(AllocateRequest {
                request: Some(request.clone()),
            });
            match tokio::time::timeout(Duration::from_secs(3), call).await {
                Ok(Ok(reply)) => return Ok(reply.into_inner()),
                Ok(Err(status)) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) => last = status,
                Ok(Err(status)) => return Err(status),
                Err(_) => last = tonic::Status::deadline_exceeded("client timeout"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// The request ids of `records` that hold units now (state `monitoring`).
pub fn held(records: &[AllocationReply]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.state() == RequestState::Monitoring)
        .map(|r| r.request_id.clone())
        .collect()
}

/// Every record the leader has (linearizable list).
pub async fn list_all(cluster: &LocalCluster) -> Vec<AllocationReply> {
    let (_, mut client) = leader_client(cluster).await;
    client.list(ListRequest::default()).await.expect("list").into_inner().records
}
