//! [`ReplicaHealth`]: whether each replica knows a leader, the health check
//! of the catalog's `resource_manager` and `system_monitor` entries, and
//! each replica's own term and indexes as it last told them (the web UI's
//! replica table, through `GET /v1/cluster`).
//!
//! A replica knows its own state; the others' it learns by asking each one
//! its gRPC `ClusterStatus` every [`REPLICA_PROBE_INTERVAL_MS`] (with its own
//! certificate when TLS is on, as the bootstrap probe does). A replica that
//! does not answer within [`REPLICA_PROBE_TIMEOUT_MS`] is critical.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_api::proto::api::quartermaster_client::QuartermasterClient;
use qm_api::proto::api::ClusterStatusRequest;
use tonic::transport::Channel;

use crate::network::dial;
use crate::security::reload::ReloadableTls;
use crate::security::MutualTls;

use crate::consensus::Node;
use crate::types::NodeId;

/// How often the other replicas are asked whether they know a leader.
pub const REPLICA_PROBE_INTERVAL_MS: u64 = 1_000;
/// How long one probe may take.
pub const REPLICA_PROBE_TIMEOUT_MS: u64 = 500;

/// What a replica said of itself at its last probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// The last probe's answer per replica: `None` if it did not answer in time.
#[derive(Clone, Debug, Default)]
pub struct ReplicaHealth(Arc<Mutex<BTreeMap<NodeId, Option<ReplicaView>>>>);

impl ReplicaHealth {
    /// Whether replica `id` knows a leader (this replica: right now; another:
    /// at its last probe; one never probed: no).
    pub fn knows_leader(&self, node: &Node, id: NodeId) -> bool {
        if id == node.id {
            return node.leader().is_some();
        }
        self.view(id).is_some_and(|view| view.leader_id.is_some())
    }

    /// Replica `id`'s answer to the last probe; `None` if it did not answer
    /// or was never probed. This replica is not probed: its own metrics are
    /// current.
    pub fn view(&self, id: NodeId) -> Option<ReplicaView> {
        self.0.lock().expect("replica health").get(&id).copied().flatten()
    }

    /// Probes the members (other than this replica) forever.
    pub async fn probe_forever(self, node: Arc<Node>, reloadable: Option<Arc<ReloadableTls>>) {
        let mut clients: BTreeMap<String, QuartermasterClient<Channel>> = BTreeMap::new();
        let mut generation = None;
        let mut tls: Option<Arc<MutualTls>> = None;
        loop {
            // After a reload, dial with the new certificate and CRL.
            let now = reloadable.as_ref().map(|reloadable| reloadable.generation());
            if now != generation {
                generation = now;
                tls = reloadable.as_ref().map(|reloadable| reloadable.current());
                clients.clear();
            }
            let members: Vec<(NodeId, String)> = {
                let metrics = node.raft.metrics().borrow().clone();
                let membership = metrics.membership_config.membership();
                membership
                    .nodes()
                    .filter(|(id, _)| **id != node.id)
                    .map(|(id, member)| (*id, member.addr.clone()))
                    .collect()
            };
            let mut answers = BTreeMap::new();
            for (id, addr) in members {
                let client = match clients.get(&addr) {
                    Some(client) => Some(client.clone()),
                    None => dial::peer_channel(&addr, tls.as_deref(), None, Duration::from_millis(REPLICA_PROBE_TIMEOUT_MS))
                        .ok()
                        .map(|channel| {
                            let client = QuartermasterClient::new(channel);
                            clients.insert(addr.clone(), client.clone());
                            client
                        }),
                };
                let view = match client {
                    None => None,
                    Some(mut client) => {
                        let probe = client.cluster_status(ClusterStatusRequest {});
                        match tokio::time::timeout(Duration::from_millis(REPLICA_PROBE_TIMEOUT_MS), probe).await {
                            Ok(Ok(reply)) => {
                                let reply = reply.into_inner();
                                Some(ReplicaView {
                                    leader_id: reply.leader_id,
                                    term: reply.term,
                                    commit_index: reply.commit_index,
                                    applied_index: reply.applied_index,
                                })
                            }
                            _ => None,
                        }
                    }
                };
                answers.insert(id, view);
            }
            *self.0.lock().expect("replica health") = answers;
            tokio::time::sleep(Duration::from_millis(REPLICA_PROBE_INTERVAL_MS)).await;
        }
    }
}
