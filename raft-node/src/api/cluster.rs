//! Cluster status and membership: add a learner, promote it, remove a replica.
//! Replacing a dead replica is remove, then add with a fresh data dir.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use qm_api::proto::api::quartermaster_client::QuartermasterClient;
use qm_api::proto::api::{AddReplicaRequest, ClusterStatusReply, ClusterStatusRequest, Member, PeerAnnouncement, RemoveReplicaRequest};
use qm_state_machine::InvalidArgument;
use tonic::Status;
use tracing::info;

use super::status::{invalid_argument, not_leader};
use crate::consensus::announce::{judge, Announcement, FormatVersions, Verdict};
use crate::consensus::{Leader, Node};

/// How long adding a replica may wait for the learner to catch up.
pub const LEARNER_CATCH_UP_TIMEOUT_MS: u64 = 60_000;
/// How long the leader waits for a replica being added to say which
/// cluster it belongs to and which formats it writes.
pub const JOINER_PROBE_TIMEOUT_MS: u64 = 2_000;

pub async fn status(node: &Node) -> Result<ClusterStatusReply, Status> {
    let metrics = node.raft.metrics().borrow().clone();
    let commit_index = node.commit_index().await;
    // Only a leader this replica has heard from lately (Node::leader).
    let leader_id = node.leader().map(|leader| leader.id);
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, member)| {
            let role = match (Some(*id) == leader_id, voters.contains(id)) {
                (true, _) => "leader",
                (false, true) => "follower",
                (false, false) => "learner",
            };
            Member {
                id: *id,
                addr: member.addr.clone(),
                role: role.to_owned(),
            }
        })
        .collect();
    let leader_addr = leader_id
        .and_then(|leader| membership.get_node(&leader))
        .map(|node| node.addr.clone())
        .unwrap_or_default();
    Ok(ClusterStatusReply {
        node_id: node.id,
        leader_id,
        leader_addr,
        term: metrics.current_term,
        commit_index,
        applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
        members,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        snapshot_index: metrics.snapshot.map_or(0, |log_id| log_id.index),
        cluster_id: node.identity.get().unwrap_or_default(),
        log_format_version: node.formats.log,
        table_format_version: node.formats.table,
        peers: node
            .peers
            .list()
            .into_iter()
            .map(|(id, record)| PeerAnnouncement {
                id,
                cluster_id: record.cluster_id.unwrap_or_default(),
                log_format_version: record.formats.map_or(0, |formats| formats.log),
                table_format_version: record.formats.map_or(0, |formats| formats.table),
                refused: record.refused.unwrap_or_default(),
            })
            .collect(),
    })
}

pub async fn add_replica(node: &Node, call: AddReplicaRequest) -> Result<ClusterStatusReply, Status> {
    if call.id == 0 {
        return Err(invalid_argument(&InvalidArgument::new("id", "must be a positive integer")));
    }
    crate::config::parse_peers(&format!("{}={}", call.id, call.addr))
        .map_err(|e| invalid_argument(&InvalidArgument::new("addr", e.to_string())))?;
    node.require_leader()?;
    check_joiner(node, &call).await?;
    info!(operation_type = "add_replica", replica = call.id, addr = %call.addr, "adding a learner");
    let add = node.raft.add_learner(call.id, BasicNode { addr: call.addr.clone() }, true);
    match tokio::time::timeout(Duration::from_millis(LEARNER_CATCH_UP_TIMEOUT_MS), add).await {
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "replica {} did not catch up within {LEARNER_CATCH_UP_TIMEOUT_MS} ms; it stays a learner",
                call.id
            )))
        }
        Ok(result) => result.map_err(membership_error)?,
    };
    if !call.learner_only {
        info!(operation_type = "add_replica", replica = call.id, "promoting the learner to voter");
        node.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([call.id])), false)
            .await
            .map_err(membership_error)?;
    }
    status(node).await
}

pub async fn remove_replica(node: &Node, call: RemoveReplicaRequest) -> Result<ClusterStatusReply, Status> {
    node.require_leader()?;
    let metrics = node.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    if membership.get_node(&call.id).is_none() {
        return Err(Status::not_found(format!("replica {} is not a member", call.id)));
    }
    let is_voter = membership.voter_ids().any(|id| id == call.id);
    info!(operation_type = "remove_replica", replica = call.id, "removing a replica");
    let change = match is_voter {
        true => ChangeMembers::RemoveVoters(BTreeSet::from([call.id])),
        false => ChangeMembers::RemoveNodes(BTreeSet::from([call.id])),
    };
    node.raft.change_membership(change, false).await.map_err(membership_error)?;
    if is_voter {
        // Voters removed are demoted to learners; drop the learner too.
        let _ = node
            .raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([call.id])), false)
            .await;
    }
    status(node).await
}

/// Asks the replica to be added for its status and refuses, in one line, one
/// that belongs to another cluster or whose build is too far from this
/// one's. A replica that does not answer yet is added as before (a leader
/// reaching it later is judged on its Raft traffic, `consensus::announce`).
async fn check_joiner(node: &Node, call: &AddReplicaRequest) -> Result<(), Status> {
    let tls = node.tls.as_ref().map(|tls| tls.current());
    let timeout = Duration::from_millis(JOINER_PROBE_TIMEOUT_MS);
    let probe = async {
        let channel = crate::network::dial::peer_channel(&call.addr, tls.as_deref(), None, timeout).ok()?;
        QuartermasterClient::new(channel)
            .cluster_status(ClusterStatusRequest {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    };
    let Ok(Some(joiner)) = tokio::time::timeout(Duration::from_millis(JOINER_PROBE_TIMEOUT_MS), probe).await else {
        return Ok(());
    };
    let said = Announcement {
        replica_id: Some(call.id),
        cluster_id: Some(joiner.cluster_id).filter(|id| !id.is_empty()),
        // A table format is never 0: both 0 is a build that announces none.
        formats: (joiner.table_format_version > 0).then_some(FormatVersions {
            log: joiner.log_format_version,
            table: joiner.table_format_version,
        }),
    };
    match judge(node.identity.get().as_deref(), &node.formats, &said, false) {
        Verdict::Refuse(refusal) => Err(Status::failed_precondition(format!(
            "replica {} at {} cannot join: {refusal}",
            call.id, call.addr
        ))),
        Verdict::Accept | Verdict::Adopt(_) => Ok(()),
    }
}

fn membership_error(error: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => not_leader(
            forward
                .leader_id
                .zip(forward.leader_node)
                .map(|(id, node)| Leader { id, addr: node.addr }),
        ),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(change)) => Status::failed_precondition(change.to_string()),
        RaftError::Fatal(fatal) => Status::unavailable(fatal.to_string()),
    }
}
