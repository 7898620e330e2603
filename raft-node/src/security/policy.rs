//! [`Call`]: every RPC a replica serves, and which roles may make it — the
//! security model's table, as code (`SECURITY.md` shows the same table).
//!
//! A role being allowed a call is only the first check: a provider acts
//! only as the provider its certificate names, a consumer only inside its
//! namespace (see [`Caller`](super::Caller)).

use qm_api::tls::Role;

use super::audit::AuditClass;

/// One RPC, as the authorization table names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Call {
    // Raft, replica to replica.
    AppendEntries,
    Vote,
    InstallSnapshot,
    // A provider's calls, for itself only.
    RegisterProvider,
    Heartbeat,
    DeregisterProvider,
    Confirm,
    // A consumer's writes, in its namespace only (and an admin's release, in any).
    Allocate,
    Release,
    RenewLease,
    /// The stream that multiplexes Allocate, Release and RenewLease; each
    /// call on it is checked again as itself.
    Pipeline,
    // Reads of requests and allocations: scoped for consumers and providers.
    Get,
    List,
    Watch,
    // Read-only views of the cluster and the providers: any authenticated role.
    ClusterStatus,
    SystemState,
    ListProviders,
    Health,
    Reflection,
    // Membership: admin only.
    AddReplica,
    RemoveReplica,
    /// A bridge's cursor into the event history: consumers (in their
    /// namespace) and admins.
    AdvanceCursor,
    /// Bulk release by filter: consumers (in their namespace only) and
    /// admins (anywhere). Not providers: a provider that wants its
    /// allocations gone deregisters, which moves them elsewhere instead of
    /// ending them.
    ReleaseMatching,
    /// A backup of the whole table (every namespace): admin only.
    SnapshotSave,
    /// Setting and lifting namespace quotas, and who may preempt: admin
    /// only (a tenant must not raise its own limits).
    SetQuota,
    DeleteQuota,
    SetPreemption,
    /// Use against quota: consumers (their namespace only) and admins.
    ListQuotas,
    /// The dry run of an allocate (what it would preempt): consumers (in
    /// their namespace) and admins, who may preview for any namespace.
    PreviewAllocate,
    /// Cordon or uncordon a provider: admin only (an operator's decision
    /// about the whole cluster, not a provider's about itself).
    SetProviderScheduling,
    /// An optimization plan, or its dry run: admin only.
    Optimize,
    /// Capability policies: admin only (a tenant must not widen its own).
    SetPolicy,
    GetPolicy,
    ListPolicies,
    DeletePolicy,
    /// Binding and unbinding one identity, atomically: admin only, as a set.
    BindPolicy,
    UnbindPolicy,
}

const EVERY_ROLE: &[Role] = &Role::ALL;

impl Call {
    pub const ALL: [Call; 37] = [
        Call::AppendEntries,
        Call::Vote,
        Call::InstallSnapshot,
        Call::RegisterProvider,
        Call::Heartbeat,
        Call::DeregisterProvider,
        Call::Confirm,
        Call::Allocate,
        Call::Release,
        Call::RenewLease,
        Call::Pipeline,
        Call::Get,
        Call::List,
        Call::Watch,
        Call::ClusterStatus,
        Call::SystemState,
        Call::ListProviders,
        Call::Health,
        Call::Reflection,
        Call::AddReplica,
        Call::RemoveReplica,
        Call::AdvanceCursor,
        Call::ReleaseMatching,
        Call::SnapshotSave,
        Call::SetQuota,
        Call::DeleteQuota,
        Call::SetPreemption,
        Call::ListQuotas,
        Call::PreviewAllocate,
        Call::SetProviderScheduling,
        Call::Optimize,
        Call::SetPolicy,
        Call::GetPolicy,
        Call::ListPolicies,
        Call::DeletePolicy,
        Call::BindPolicy,
        Call::UnbindPolicy,
    ];

    /// The roles that may make this call at all.
    pub fn allowed_roles(self) -> &'static [Role] {
        match self {
            Call::AppendEntries | Call::Vote | Call::InstallSnapshot => &[Role::ResourceManager],
            Call::RegisterProvider | Call::Heartbeat | Call::DeregisterProvider | Call::Confirm => &[Role::ResourceProvider],
            Call::Allocate | Call::RenewLease | Call::Pipeline => &[Role::ResourceConsumer],
            // An operator frees what a stuck or departed holder keeps (the
            // web UI's release action), in any namespace; it still neither
            // allocates nor renews.
            Call::Release => &[Role::ResourceConsumer, Role::Admin],
            // A provider's agent reads the allocations placed on it (to
            // confirm them); an admin reads everything, to operate the cluster.
            Call::Get | Call::List | Call::Watch => &[Role::ResourceConsumer, Role::ResourceProvider, Role::Admin],
            Call::ClusterStatus | Call::SystemState | Call::ListProviders | Call::Health | Call::Reflection => EVERY_ROLE,
            Call::AddReplica | Call::RemoveReplica | Call::SnapshotSave | Call::SetProviderScheduling | Call::Optimize => &[Role::Admin],
            Call::AdvanceCursor => &[Role::ResourceConsumer, Role::Admin],
            Call::ReleaseMatching => &[Role::ResourceConsumer, Role::Admin],
            Call::SetQuota | Call::DeleteQuota | Call::SetPreemption => &[Role::Admin],
            Call::ListQuotas | Call::PreviewAllocate => &[Role::ResourceConsumer, Role::Admin],
            Call::SetPolicy | Call::GetPolicy | Call::ListPolicies | Call::DeletePolicy => &[Role::Admin],
            Call::BindPolicy | Call::UnbindPolicy => &[Role::Admin],
        }
    }

    /// What the audit trail records of this call ([`AuditRecord::wanted`](super::audit::AuditRecord::wanted)).
    pub fn audit_class(self) -> AuditClass {
        match self {
            Call::RegisterProvider
            | Call::DeregisterProvider
            | Call::Confirm
            | Call::Allocate
            | Call::Release
            | Call::RenewLease
            | Call::AddReplica
            | Call::RemoveReplica
            | Call::AdvanceCursor
            | Call::ReleaseMatching
            | Call::SetQuota
            | Call::DeleteQuota
            | Call::SetPreemption
            | Call::SetProviderScheduling
            // A dry run included: an admin's plan of moves is worth a record.
            | Call::Optimize
            | Call::SetPolicy
            | Call::DeletePolicy
            | Call::BindPolicy
            | Call::UnbindPolicy => AuditClass::Write,
            // Who may do what is worth a record of every admin who looked.
            Call::Get | Call::List | Call::Watch | Call::SnapshotSave | Call::GetPolicy | Call::ListPolicies => AuditClass::RecordRead,
            // The stream itself is not a write: each call on it is recorded as itself.
            Call::Pipeline
            | Call::AppendEntries
            | Call::Vote
            | Call::InstallSnapshot
            | Call::Heartbeat
            | Call::ClusterStatus
            | Call::SystemState
            | Call::ListProviders
            | Call::Health
            | Call::Reflection
            | Call::ListQuotas
            | Call::PreviewAllocate => AuditClass::RefusalsOnly,
        }
    }

    pub fn allows(self, role: Role) -> bool {
        self.allowed_roles().contains(&role)
    }

    /// The RPC's name, for messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            Call::AppendEntries => "AppendEntries",
            Call::Vote => "Vote",
            Call::InstallSnapshot => "InstallSnapshot",
            Call::RegisterProvider => "RegisterProvider",
            Call::Heartbeat => "Heartbeat",
            Call::DeregisterProvider => "DeregisterProvider",
            Call::Confirm => "Confirm",
            Call::Allocate => "Allocate",
            Call::Release => "Release",
            Call::RenewLease => "RenewLease",
            Call::Pipeline => "Pipeline",
            Call::Get => "Get",
            Call::List => "List",
            Call::Watch => "Watch",
            Call::ClusterStatus => "ClusterStatus",
            Call::SystemState => "SystemState",
            Call::ListProviders => "ListProviders",
            Call::Health => "grpc.health.v1",
            Call::Reflection => "grpc.reflection",
            Call::AddReplica => "AddReplica",
            Call::RemoveReplica => "RemoveReplica",
            Call::AdvanceCursor => "AdvanceCursor",
            Call::ReleaseMatching => "ReleaseMatching",
            Call::SnapshotSave => "SnapshotSave",
            Call::SetQuota => "SetQuota",
            Call::DeleteQuota => "DeleteQuota",
            Call::SetPreemption => "SetPreemption",
            Call::ListQuotas => "ListQuotas",
            Call::PreviewAllocate => "PreviewAllocate",
            Call::SetProviderScheduling => "SetProviderScheduling",
            Call::Optimize => "Optimize",
            Call::SetPolicy => "SetPolicy",
            Call::GetPolicy => "GetPolicy",
            Call::ListPolicies => "ListPolicies",
            Call::DeletePolicy => "DeletePolicy",
            Call::BindPolicy => "BindPolicy",
            Call::UnbindPolicy => "UnbindPolicy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of SECURITY.md, row by row: the calls each role may make.
    #[test]
    fn each_role_makes_exactly_its_calls() {
        use Call::*;
        let allowed = |role: Role| Call::ALL.into_iter().filter(|call| call.allows(role)).collect::<Vec<_>>();
        let read_only = [ClusterStatus, SystemState, ListProviders, Health, Reflection];
        let with = |calls: &[Call]| {
            let mut all: Vec<Call> = calls.iter().chain(&read_only).copied().collect();
            all.sort();
            all
        };
        assert_eq!(with(&[AppendEntries, Vote, InstallSnapshot]), allowed(Role::ResourceManager));
        assert_eq!(
            with(&[RegisterProvider, Heartbeat, DeregisterProvider, Confirm, Get, List, Watch]),
            allowed(Role::ResourceProvider)
        );
        assert_eq!(
            with(&[
                Allocate,
                Release,
                RenewLease,
                Pipeline,
                Get,
                List,
                Watch,
                AdvanceCursor,
                ReleaseMatching,
                ListQuotas,
                PreviewAllocate
            ]),
            allowed(Role::ResourceConsumer)
        );
        assert_eq!(
            with(&[
                Release,
                Get,
                List,
                Watch,
                AddReplica,
                RemoveReplica,
                AdvanceCursor,
                ReleaseMatching,
                SnapshotSave,
                SetQuota,
                DeleteQuota,
                SetPreemption,
                ListQuotas,
                PreviewAllocate,
                SetProviderScheduling,
                Optimize,
                SetPolicy,
                GetPolicy,
                ListPolicies,
                DeletePolicy,
                BindPolicy,
                UnbindPolicy
            ]),
            allowed(Role::Admin)
        );
    }
}
