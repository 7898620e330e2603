//! Capability policies: [`Client`] calls to set, bind, unbind, read and delete them
//! (admin only under TLS). The wire conversions (`qm_api::policy`) are
//! re-exported here.

use qm_state_machine::policy::{Binding, CapabilityPolicy, PolicySpec};

use crate::call_plan::CallKind;
use crate::client::{Client, Consistency};
use crate::error::Error;
use crate::proto::api;
pub use qm_api::policy::{binding_from_proto, binding_to_proto, policy_from_proto, policy_to_proto, spec_from_proto};

impl Client {
    /// Sets (creates or replaces) a policy; answers it with its new
    /// revision. Retrying sets it again (a later revision, the same policy).
    pub async fn set_policy(&self, spec: &PolicySpec) -> Result<api::PolicyReply, Error> {
        spec.check()?;
        let policy = CapabilityPolicy {
            name: spec.name.clone(),
            revision: 0,
            capability: spec.capability.clone(),
            bindings: spec.bindings.clone(),
        };
        let message = api::SetPolicyRequest {
            policy: Some(policy_to_proto(&policy)),
        };
        self.inner
            .call("set_policy", CallKind::Write, message, |replica, request| async move {
                replica.client().set_policy(request).await
            })
            .await
    }

    /// One policy by name (`Error::NotFound` if there is none).
    pub async fn get_policy(&self, name: &str, consistency: Consistency) -> Result<api::PolicyReply, Error> {
        let message = api::GetPolicyRequest {
            name: name.to_owned(),
            stale: consistency.is_stale(),
        };
        self.inner
            .call("get_policy", CallKind::Read(consistency), message, |replica, request| async move {
                replica.client().get_policy(request).await
            })
            .await
    }

    /// Every policy, in name order.
    pub async fn list_policies(&self, consistency: Consistency) -> Result<api::ListPoliciesReply, Error> {
        let message = api::ListPoliciesRequest {
            stale: consistency.is_stale(),
        };
        self.inner
            .call(
                "list_policies",
                CallKind::Read(consistency),
                message,
                |replica, request| async move { replica.client().list_policies(request).await },
            )
            .await
    }

    /// Binds one identity to the policy `name`, in one log entry; safe to
    /// retry (binding what it holds already changes nothing).
    pub async fn bind_policy(&self, name: &str, binding: &Binding) -> Result<api::PolicyReply, Error> {
        let message = binding_request(name, binding);
        self.inner
            .call("bind_policy", CallKind::Write, message, |replica, request| async move {
                replica.client().bind_policy(request).await
            })
            .await
    }

    /// Unbinds one identity from the policy `name`, in one log entry; safe
    /// to retry (unbinding what it does not hold changes nothing).
    pub async fn unbind_policy(&self, name: &str, binding: &Binding) -> Result<api::PolicyReply, Error> {
        let message = binding_request(name, binding);
        self.inner
            .call("unbind_policy", CallKind::Write, message, |replica, request| async move {
                replica.client().unbind_policy(request).await
            })
            .await
    }

    /// Deletes a policy; safe to retry (`existed` tells whether there was one).
    pub async fn delete_policy(&self, name: &str) -> Result<api::DeletePolicyReply, Error> {
        let message = api::DeletePolicyRequest { name: name.to_owned() };
        self.inner
            .call("delete_policy", CallKind::Write, message, |replica, request| async move {
                replica.client().delete_policy(request).await
            })
            .await
    }
}

fn binding_request(name: &str, binding: &Binding) -> api::PolicyBindingRequest {
    api::PolicyBindingRequest {
        name: name.to_owned(),
        binding: Some(binding_to_proto(binding)),
    }
}
