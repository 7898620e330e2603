//! Quotas and preemption: [`Client`] calls to set and read namespace
//! quotas, set who may preempt, and preview an allocate (what it would
//! preempt). Setting is admin only under TLS. The wire conversions
//! (`qm_api::quota`) are re-exported here.

use std::collections::BTreeMap;

use qm_state_machine::{PreemptionSetting, ResourceRequest};
use uuid::Uuid;

use crate::call_plan::CallKind;
use crate::client::{Client, Consistency};
use crate::convert::request_to_proto;
use crate::error::Error;
use crate::proto::api;
pub use qm_api::quota::{
    limits_from_proto, parse_limits, preview_to_proto, setting_from_proto, setting_to_proto, usage_from_proto, usage_to_proto,
};

impl Client {
    /// Sets `namespace`'s quota: kind → the most its active allocations may
    /// ask for. Replaces the whole quota. Safe to retry: setting the same
    /// quota twice leaves it as it was.
    pub async fn set_quota(&self, namespace: &str, limits: &BTreeMap<String, u64>) -> Result<api::NamespacePolicyReply, Error> {
        qm_state_machine::quota::check_quota(namespace, limits)?;
        let message = api::SetQuotaRequest {
            namespace: namespace.to_owned(),
            limits: limits.iter().map(|(kind, limit)| (kind.clone(), *limit)).collect(),
        };
        self.inner
            .call("set_quota", CallKind::Write, message, |replica, request| async move {
                replica.client().set_quota(request).await
            })
            .await
    }

    /// Lifts every limit of `namespace`'s quota.
    pub async fn delete_quota(&self, namespace: &str) -> Result<api::NamespacePolicyReply, Error> {
        let message = api::DeleteQuotaRequest {
            namespace: namespace.to_owned(),
        };
        self.inner
            .call("delete_quota", CallKind::Write, message, |replica, request| async move {
                replica.client().delete_quota(request).await
            })
            .await
    }

    /// Use against quota of every namespace (or of `namespace` alone, when
    /// not empty), with the cluster's preemption setting.
    pub async fn list_quotas(&self, namespace: &str, consistency: Consistency) -> Result<api::ListQuotasReply, Error> {
        let message = api::ListQuotasRequest {
            namespace: namespace.to_owned(),
            stale: consistency.is_stale(),
        };
        self.inner
            .call("list_quotas", CallKind::Read(consistency), message, |replica, request| async move {
                replica.client().list_quotas(request).await
            })
            .await
    }

    /// Who may preempt: the cluster's setting (`namespace` `None`; a
    /// setting is required), or a namespace's override (`None` follows the
    /// cluster's) and whether its own allocations may never be preempted.
    pub async fn set_preemption(
        &self,
        namespace: Option<&str>,
        setting: Option<PreemptionSetting>,
        never_preempted: bool,
    ) -> Result<api::NamespacePolicyReply, Error> {
        let message = api::SetPreemptionRequest {
            namespace: namespace.unwrap_or_default().to_owned(),
            setting: setting.map(setting_to_proto),
            never_preempted,
        };
        self.inner
            .call("set_preemption", CallKind::Write, message, |replica, request| async move {
                replica.client().set_preemption(request).await
            })
            .await
    }

    /// What allocating `request` would do now, without doing it: placed,
    /// queued or rejected, where, and what it would preempt.
    pub async fn preview_allocate(&self, mut request: ResourceRequest) -> Result<api::PreviewReply, Error> {
        request.request_id.get_or_insert_with(|| Uuid::new_v4().to_string());
        request.validate()?;
        let message = api::AllocateRequest {
            request: Some(request_to_proto(&request)),
        };
        // A read: the leader answers from its table after a read barrier.
        self.inner
            .call(
                "preview_allocate",
                CallKind::Read(Consistency::Linearizable),
                message,
                |replica, request| async move { replica.client().preview_allocate(request).await },
            )
            .await
    }
}
