//! Preemption with a real `qm agent` confirming: the agent lets go of the
//! preempted allocations, confirms their release, and only then is the
//! preemptor's grant confirmed (state `monitoring`). Real `qm-node` and
//! `qm agent` processes on 127.0.0.1 (`qm_testkit::agent_cluster`).

use std::collections::BTreeMap;
use std::time::Duration;

use qm_client::convert::{state_name, status_name};
use qm_client::Consistency;
use qm_state_machine::{PreemptionSetting, ResourceRequest};
use qm_testkit::agent_cluster::{bounded, Cluster};
use serde_json::Number;

const TEST_TIME_MAX: Duration = Duration::from_secs(120);
/// How long an agent may take to see an event and confirm (it retries every 200 ms).
const WAIT_MAX: Duration = Duration::from_secs(20);

fn cores(namespace: &str, cpus: i64, priority: i64) -> ResourceRequest {
    ResourceRequest {
        requester_id: Some(format!("worker-{namespace}")),
        namespace: Some(namespace.to_owned()),
        resource_requirements: Some(BTreeMap::from([("cpu_cores".to_owned(), Number::from(cpus))])),
        priority: Some(Number::from(priority)),
        ..ResourceRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_confirms_the_victims_release_then_the_preemptors_grant() {
    bounded(TEST_TIME_MAX, async {
        // --- one replica, one agent with two cores, both held by batch work
        let cluster = Cluster::start(1);
        cluster.wait_for_leader().await;
        let client = cluster.client();
        let agent = cluster.start_agent("agent-a", &cluster.inventory("agent-a", 2));
        agent.wait_for("registration", WAIT_MAX, |line| line["event"] == "registered").await;
        let mut batch = Vec::new();
        for _ in 0..2 {
            let granted = client.allocate(cores("batch", 1, 0)).await.expect("allocates");
            assert_eq!("allocated", status_name(&granted));
            let allocation_id = granted.allocation_id.clone();
            agent
                .wait_for("the batch grant's confirmation", WAIT_MAX, |line| {
                    line["event"] == "confirmed" && line["allocation_id"] == allocation_id.as_str()
                })
                .await;
            batch.push(allocation_id);
        }

        // --- preemption on; an urgent request takes both cores
        client
            .set_preemption(None, Some(PreemptionSetting::FromPriority(10)), false)
            .await
            .expect("sets");
        let urgent = client.allocate(cores("ops", 2, 10)).await.expect("allocates");
        assert_eq!(("allocated", "agent-a"), (status_name(&urgent), urgent.provider_id.as_str()));

        // --- the agent confirms the victims' release, then the urgent grant
        for allocation_id in &batch {
            agent
                .wait_for("a victim's release confirmation", WAIT_MAX, |line| {
                    line["event"] == "release_confirmed" && line["allocation_id"] == allocation_id.as_str()
                })
                .await;
        }
        let urgent_id = urgent.allocation_id.clone();
        agent
            .wait_for("the preemptor's confirmation", WAIT_MAX, |line| {
                line["event"] == "confirmed" && line["allocation_id"] == urgent_id.as_str()
            })
            .await;
        let record = client.get(&urgent_id, Consistency::Linearizable).await.expect("reads");
        assert_eq!("monitoring", state_name(&record));
        // The victims wait in the queue for capacity, holding nothing.
        for allocation_id in &batch {
            let victim = client.get(allocation_id, Consistency::Linearizable).await.expect("reads");
            assert_eq!("queued", state_name(&victim), "{victim:?}");
        }
    })
    .await
}
