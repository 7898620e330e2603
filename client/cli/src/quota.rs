//! `qm quota` (set, get, list, delete), `qm preemption set`, and the
//! preview `qm allocate --dry-run` prints.

use std::io::Write;

use clap::{ArgGroup, Args, Subcommand};
use qm_client::proto::api;
use qm_client::quota::{parse_limits, setting_from_proto, usage_from_proto};
use qm_client::{Client, Consistency};
use qm_state_machine::PreemptionSetting;
use serde::Serialize;

use super::error::CliError;
use super::output::{print_json, OutputFormat};
use super::table::Table;

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a namespace's quota, e.g. `qm quota set team_a cpu_cores=64 gpu=4`
    /// (replaces the whole quota; kinds not named are unbounded). Admin only under TLS.
    Set {
        namespace: String,
        /// KIND=LIMIT, one or more.
        #[arg(required = true, value_name = "KIND=LIMIT")]
        limits: Vec<String>,
    },
    /// One namespace's use against its quota, and its preemption rules.
    Get {
        namespace: String,
        /// Answer from any replica's local state, which may lag the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Every namespace that holds, waits for, or has rules.
    List {
        /// Answer from any replica's local state, which may lag the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Lift every limit of a namespace's quota. Admin only under TLS.
    Delete { namespace: String },
}

#[derive(Debug, Subcommand)]
pub enum PreemptionCommand {
    /// Who may preempt: the cluster (no --namespace) or one namespace's
    /// requests; `--from-priority N` lets requests of priority N or more
    /// take allocations of strictly lower priority, `--off` turns it off,
    /// neither (for a namespace) follows the cluster. Admin only under TLS.
    Set(PreemptionArgs),
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true, group(ArgGroup::new("setting").args(["from_priority", "off"])))]
pub struct PreemptionArgs {
    /// The namespace whose rules to set; without it, the cluster's setting.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Requests of at least this priority may preempt.
    #[arg(long, value_name = "PRIORITY")]
    pub from_priority: Option<i64>,
    /// Nobody preempts.
    #[arg(long)]
    pub off: bool,
    /// (With --namespace) its allocations are never preempted, whatever their priority.
    #[arg(long, requires = "namespace")]
    pub never_preempted: bool,
}

pub async fn run(client: &Client, command: QuotaCommand, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        QuotaCommand::Set { namespace, limits } => {
            let limits = parse_limits(limits.iter().map(String::as_str))?;
            let reply = client.set_quota(&namespace, &limits).await?;
            print_namespaces(reply.namespace.as_slice(), reply.cluster_preemption.as_ref(), format, out)
        }
        QuotaCommand::Delete { namespace } => {
            let reply = client.delete_quota(&namespace).await?;
            print_namespaces(reply.namespace.as_slice(), reply.cluster_preemption.as_ref(), format, out)
        }
        QuotaCommand::Get { namespace, stale } => {
            let reply = client.list_quotas(&namespace, consistency(stale)).await?;
            print_namespaces(&reply.namespaces, reply.cluster_preemption.as_ref(), format, out)
        }
        QuotaCommand::List { stale } => {
            let reply = client.list_quotas("", consistency(stale)).await?;
            print_namespaces(&reply.namespaces, reply.cluster_preemption.as_ref(), format, out)
        }
    }
}

pub async fn run_preemption(
    client: &Client,
    command: PreemptionCommand,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let PreemptionCommand::Set(args) = command;
    let setting = match (args.from_priority, args.off) {
        (Some(priority), _) => Some(PreemptionSetting::FromPriority(priority)),
        (None, true) => Some(PreemptionSetting::Off),
        (None, false) => None,
    };
    let reply = client
        .set_preemption(args.namespace.as_deref(), setting, args.never_preempted)
        .await?;
    print_namespaces(reply.namespace.as_slice(), reply.cluster_preemption.as_ref(), format, out)
}

/// The namespaces with a quota, for `qm state` and `qm top`; none when the
/// caller's certificate may not read them (a provider's).
pub(crate) async fn limited_namespaces(client: &Client, consistency: Consistency) -> Result<Vec<api::NamespaceQuota>, qm_client::Error> {
    match client.list_quotas("", consistency).await {
        Ok(reply) => Ok(reply
            .namespaces
            .into_iter()
            .filter(|namespace| !namespace.quota.is_empty())
            .collect()),
        Err(qm_client::Error::Server {
            code: tonic::Code::PermissionDenied,
            ..
        }) => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

/// `qm quota` in JSON: the namespaces and the cluster's setting.
#[derive(Serialize)]
struct QuotasDocument {
    namespaces: Vec<qm_state_machine::NamespaceUsage>,
    cluster_preemption: PreemptionSetting,
}

fn print_namespaces(
    namespaces: &[api::NamespaceQuota],
    cluster: Option<&api::PreemptionSetting>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let cluster = cluster.map(setting_from_proto).unwrap_or_default();
    if format == OutputFormat::Json {
        let document = QuotasDocument {
            namespaces: namespaces.iter().map(usage_from_proto).collect(),
            cluster_preemption: cluster,
        };
        return print_json(&document, out);
    }
    print_quota_table(namespaces, out)?;
    writeln!(out, "cluster preemption: {}", setting_text(Some(cluster)))?;
    Ok(())
}

/// One row per namespace and kind: what it holds against its quota.
pub(crate) fn print_quota_table(namespaces: &[api::NamespaceQuota], out: &mut dyn Write) -> Result<(), CliError> {
    let mut table = Table::new(["NAMESPACE", "KIND", "HELD", "QUOTA", "QUEUED", "PREEMPTION", "PREEMPTIBLE"]);
    for namespace in namespaces {
        let mut kinds: Vec<&String> = namespace.quota.keys().chain(namespace.held.keys()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let preemption = match &namespace.preemption {
            Some(setting) => setting_text(Some(setting_from_proto(setting))),
            None => "cluster's".to_owned(),
        };
        let preemptible = if namespace.never_preempted { "no" } else { "yes" };
        if kinds.is_empty() {
            table.row([
                &namespace.namespace,
                "-",
                "-",
                "-",
                &namespace.queued.to_string(),
                &preemption,
                preemptible,
            ]);
        }
        for kind in kinds {
            let held = namespace.held.get(kind).copied().unwrap_or(0).to_string();
            let quota = namespace.quota.get(kind).map_or_else(|| "-".to_owned(), u64::to_string);
            table.row([
                &namespace.namespace,
                kind,
                &held,
                &quota,
                &namespace.queued.to_string(),
                &preemption,
                preemptible,
            ]);
        }
    }
    table.write(out)
}

fn setting_text(setting: Option<PreemptionSetting>) -> String {
    match setting {
        None | Some(PreemptionSetting::Off) => "off".to_owned(),
        Some(PreemptionSetting::FromPriority(priority)) => format!("from priority {priority}"),
    }
}

/// `qm allocate --dry-run` in JSON.
#[derive(Serialize)]
struct PreviewDocument<'a> {
    status: &'a str,
    reason: &'a str,
    provider_id: &'a str,
    grants: Vec<(&'a str, &'a str, u64)>,
    would_preempt: Vec<VictimDocument<'a>>,
}

#[derive(Serialize)]
struct VictimDocument<'a> {
    request_id: &'a str,
    allocation_id: &'a str,
    namespace: &'a str,
    priority: i64,
    provider_id: &'a str,
    units: u64,
}

pub fn print_preview(reply: &api::PreviewReply, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let status = api::AllocationStatus::try_from(reply.status)
        .map(|status| status.as_str_name().trim_start_matches("ALLOCATION_STATUS_").to_lowercase())
        .unwrap_or_else(|_| "unknown".to_owned());
    if format == OutputFormat::Json {
        let document = PreviewDocument {
            status: &status,
            reason: &reply.reason,
            provider_id: &reply.provider_id,
            grants: reply
                .grants
                .iter()
                .map(|grant| (grant.resource_id.as_str(), grant.kind.as_str(), grant.amount))
                .collect(),
            would_preempt: reply
                .victims
                .iter()
                .map(|victim| VictimDocument {
                    request_id: &victim.request_id,
                    allocation_id: &victim.allocation_id,
                    namespace: &victim.namespace,
                    priority: victim.priority,
                    provider_id: &victim.provider_id,
                    units: victim.units,
                })
                .collect(),
        };
        return print_json(&document, out);
    }
    let mut summary = Table::new(["FIELD", "VALUE"]);
    summary.row(["dry_run", "nothing was allocated"]);
    summary.row(["status", &status]);
    summary.row(["reason", &reply.reason]);
    summary.row(["provider_id", &reply.provider_id]);
    let units: Vec<String> = reply
        .grants
        .iter()
        .map(|grant| format!("{} ({} {})", grant.resource_id, grant.amount, grant.kind))
        .collect();
    summary.row(["units", &units.join(", ")]);
    summary.write(out)?;
    writeln!(out)?;
    if reply.victims.is_empty() {
        writeln!(out, "would preempt: nothing")?;
        return Ok(());
    }
    writeln!(out, "would preempt, in this order:")?;
    let mut victims = Table::new(["ALLOCATION", "REQUEST", "NAMESPACE", "PRIORITY", "PROVIDER", "UNITS"]);
    for victim in &reply.victims {
        victims.row([
            &victim.allocation_id,
            &victim.request_id,
            &victim.namespace,
            &victim.priority.to_string(),
            &victim.provider_id,
            &victim.units.to_string(),
        ]);
    }
    victims.write(out)
}
