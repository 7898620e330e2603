//! Capability policies: setting and deleting them, binding and unbinding
//! one identity (log entries), reading them. Admin only under TLS ([`Call::SetPolicy`] and the others); the
//! policies themselves are enforced by [`crate::security::capability`].
//!
//! [`Call::SetPolicy`]: crate::security::Call::SetPolicy

use qm_api::policy;
use qm_api::proto::api::{
    DeletePolicyReply, DeletePolicyRequest, GetPolicyRequest, ListPoliciesReply, ListPoliciesRequest, PolicyBindingRequest, PolicyReply,
    SetPolicyRequest,
};
use qm_state_machine::{Command, CommandResponse, InvalidArgument};
use tonic::Status;
use tracing::info;

use super::status::invalid_argument;
use crate::consensus::Node;
use crate::security::Caller;

pub async fn set_policy(node: &Node, caller: &Caller, call: SetPolicyRequest) -> Result<PolicyReply, Status> {
    let wire = call
        .policy
        .ok_or_else(|| invalid_argument(&InvalidArgument::new("policy", "is required")))?;
    let spec = policy::spec_from_proto(&wire).map_err(|invalid| invalid_argument(&invalid))?;
    node.require_leader()?;
    let name = spec.name.clone();
    match node.propose(Command::SetPolicy(spec)).await? {
        CommandResponse::CapabilityPolicy(policy) => {
            info!(operation_type = "set_policy", caller = %caller.describe(), policy = %name, revision = policy.revision, "policy set");
            Ok(PolicyReply {
                policy: Some(policy::policy_to_proto(&policy)),
            })
        }
        other => Err(Status::internal(format!("the table answered a policy command with {other:?}"))),
    }
}

pub async fn delete_policy(node: &Node, caller: &Caller, call: DeletePolicyRequest) -> Result<DeletePolicyReply, Status> {
    qm_state_machine::request::check_id("name", &call.name).map_err(|invalid| invalid_argument(&invalid))?;
    node.require_leader()?;
    match node.propose(Command::DeletePolicy { name: call.name.clone() }).await? {
        CommandResponse::PolicyDeleted { name, existed } => {
            info!(operation_type = "delete_policy", caller = %caller.describe(), policy = %name, existed, "policy deleted");
            Ok(DeletePolicyReply { name, existed })
        }
        other => Err(Status::internal(format!("the table answered a policy command with {other:?}"))),
    }
}

/// Binds (`bind`) or unbinds one identity, in one log entry: the table
/// reads and changes the policy's bindings at apply, so binds made at once
/// by two admins both land.
pub async fn change_binding(node: &Node, caller: &Caller, call: PolicyBindingRequest, bind: bool) -> Result<PolicyReply, Status> {
    qm_state_machine::request::check_id("name", &call.name).map_err(|invalid| invalid_argument(&invalid))?;
    let wire = call
        .binding
        .ok_or_else(|| invalid_argument(&InvalidArgument::new("binding", "is required")))?;
    let binding = policy::binding_from_proto(&wire).map_err(|invalid| invalid_argument(&invalid))?;
    binding.check().map_err(|invalid| invalid_argument(&invalid))?;
    node.require_leader()?;
    let (name, shown) = (call.name.clone(), binding.to_string());
    let command = match bind {
        true => Command::BindPolicy { name: call.name, binding },
        false => Command::UnbindPolicy { name: call.name, binding },
    };
    let operation_type = command.operation_type();
    match node.propose(command).await? {
        CommandResponse::CapabilityPolicy(policy) => {
            info!(operation_type, caller = %caller.describe(), policy = %name, binding = %shown, revision = policy.revision, "policy binding changed");
            Ok(PolicyReply {
                policy: Some(policy::policy_to_proto(&policy)),
            })
        }
        other => Err(Status::internal(format!("the table answered a policy command with {other:?}"))),
    }
}

pub async fn get_policy(node: &Node, call: GetPolicyRequest) -> Result<PolicyReply, Status> {
    qm_state_machine::request::check_id("name", &call.name).map_err(|invalid| invalid_argument(&invalid))?;
    node.read_barrier(call.stale).await?;
    node.with_table(|table| table.capability_policy(&call.name).map(policy::policy_to_proto))
        .await
        .map(|policy| PolicyReply { policy: Some(policy) })
        .ok_or_else(|| Status::not_found(format!("no policy named {:?}", call.name)))
}

pub async fn list_policies(node: &Node, call: ListPoliciesRequest) -> Result<ListPoliciesReply, Status> {
    node.read_barrier(call.stale).await?;
    let policies = node
        .with_table(|table| table.policies().map(policy::policy_to_proto).collect())
        .await;
    Ok(ListPoliciesReply { policies })
}
