//! Quotas and preemption: setting a namespace's quota and who may preempt
//! (log entries), reading use against quota, and the dry run of an
//! allocate. Setting is admin only under TLS ([`Call::SetQuota`],
//! [`Call::DeleteQuota`], [`Call::SetPreemption`]); a consumer reads and
//! previews in its own namespace only.
//!
//! [`Call::SetQuota`]: crate::security::Call::SetQuota
//! [`Call::DeleteQuota`]: crate::security::Call::DeleteQuota
//! [`Call::SetPreemption`]: crate::security::Call::SetPreemption

use qm_api::proto::api::{
    AllocateRequest, DeleteQuotaRequest, ListQuotasReply, ListQuotasRequest, NamespacePolicyReply, PreviewReply, SetPreemptionRequest,
    SetQuotaRequest,
};
use qm_api::{convert, quota};
use qm_state_machine::{AllocationTable, Command, CommandResponse, InvalidArgument};
use tonic::Status;
use tracing::info;

use super::status::invalid_argument;
use crate::consensus::Node;
use crate::security::{capability, Caller};

pub async fn set_quota(node: &Node, caller: &Caller, call: SetQuotaRequest) -> Result<NamespacePolicyReply, Status> {
    let limits = quota::limits_from_proto(&call.limits);
    qm_state_machine::quota::check_quota(&call.namespace, &limits).map_err(|invalid| invalid_argument(&invalid))?;
    node.require_leader()?;
    let command = Command::SetQuota {
        namespace: call.namespace.clone(),
        limits,
    };
    let reply = policy_reply(node, node.propose(command).await?).await?;
    info!(operation_type = "set_quota", caller = %caller.describe(), namespace = %call.namespace, limits = ?call.limits, "quota set");
    Ok(reply)
}

pub async fn delete_quota(node: &Node, caller: &Caller, call: DeleteQuotaRequest) -> Result<NamespacePolicyReply, Status> {
    qm_state_machine::request::check_id("namespace", &call.namespace).map_err(|invalid| invalid_argument(&invalid))?;
    node.require_leader()?;
    let command = Command::DeleteQuota {
        namespace: call.namespace.clone(),
    };
    let reply = policy_reply(node, node.propose(command).await?).await?;
    info!(operation_type = "delete_quota", caller = %caller.describe(), namespace = %call.namespace, "quota deleted");
    Ok(reply)
}

pub async fn set_preemption(node: &Node, caller: &Caller, call: SetPreemptionRequest) -> Result<NamespacePolicyReply, Status> {
    let namespace = (!call.namespace.is_empty()).then(|| call.namespace.clone());
    let setting = call.setting.as_ref().map(quota::setting_from_proto);
    if namespace.is_none() && setting.is_none() {
        return Err(invalid_argument(&InvalidArgument::new(
            "setting",
            "the cluster's setting is required (enabled with from_priority, or not enabled)",
        )));
    }
    node.require_leader()?;
    let command = Command::SetPreemption {
        namespace: namespace.clone(),
        setting,
        preemptible: !call.never_preempted,
    };
    let reply = policy_reply(node, node.propose(command).await?).await?;
    info!(operation_type = "set_preemption", caller = %caller.describe(), ?namespace, ?setting, never_preempted = call.never_preempted, "preemption set");
    Ok(reply)
}

pub async fn list_quotas(node: &Node, caller: &Caller, call: ListQuotasRequest) -> Result<ListQuotasReply, Status> {
    let wanted = match caller.namespace() {
        Some(_) => Some(caller.namespace_for(&call.namespace)?),
        None => (!call.namespace.is_empty()).then(|| call.namespace.clone()),
    };
    node.read_barrier(call.stale).await?;
    Ok(node.with_table(|table| list_reply(table, wanted.as_deref())).await)
}

pub async fn preview_allocate(node: &Node, caller: &Caller, call: AllocateRequest) -> Result<PreviewReply, Status> {
    let mut wire = call
        .request
        .ok_or_else(|| invalid_argument(&InvalidArgument::new("request", "is required")))?;
    wire.namespace = caller.namespace_for(&wire.namespace)?;
    let mut request = convert::request_from_proto(&wire)
        .and_then(|request| request.validate())
        .map_err(|invalid| invalid_argument(&invalid))?;
    node.require_leader()?;
    node.read_barrier(false).await?;
    // A dry run is held to the caller's capability as the allocate would be.
    node.with_table(|table| {
        capability::check_preview(table, caller, &mut request)?;
        table
            .preview(&request)
            .map(|preview| quota::preview_to_proto(&preview))
            .map_err(|invalid| invalid_argument(&invalid))
    })
    .await
}

/// Every namespace's use against its quota (or only `wanted`'s).
fn list_reply(table: &AllocationTable, wanted: Option<&str>) -> ListQuotasReply {
    let namespaces = match wanted {
        Some(namespace) => vec![namespace_usage(table, namespace)],
        None => table.namespace_usage(),
    };
    ListQuotasReply {
        namespaces: namespaces.iter().map(quota::usage_to_proto).collect(),
        cluster_preemption: Some(quota::setting_to_proto(table.cluster_preemption())),
    }
}

/// One namespace's line, present even when it holds, waits for and sets nothing.
fn namespace_usage(table: &AllocationTable, namespace: &str) -> qm_state_machine::NamespaceUsage {
    table
        .namespace_usage()
        .into_iter()
        .find(|usage| usage.namespace == namespace)
        .unwrap_or_else(|| quota::usage_of_policy(namespace, table.policy(namespace)))
}

/// The answer to a quota or preemption command, with the namespace's use.
async fn policy_reply(node: &Node, response: CommandResponse) -> Result<NamespacePolicyReply, Status> {
    let CommandResponse::Policy {
        namespace,
        cluster_preemption,
        ..
    } = response
    else {
        return Err(Status::internal(format!("the table answered a quota command with {response:?}")));
    };
    let usage = match namespace {
        Some(namespace) => Some(node.with_table(|table| namespace_usage(table, &namespace)).await),
        None => None,
    };
    Ok(quota::policy_reply(usage, cluster_preemption))
}
