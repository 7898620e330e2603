//! `qm policy` (set, bind, unbind, get, list, delete): capability policies, admin
//! only under TLS (SECURITY.md, *Capability policies*).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use clap::{ArgGroup, Args, Subcommand};
use qm_client::policy::policy_from_proto;
use qm_client::proto::api;
use qm_client::{Client, Consistency};
use qm_state_machine::policy::{Binding, Capability, CapabilityPolicy, PolicySpec, ProviderScope};
use qm_state_machine::InvalidArgument;

use super::error::CliError;
use super::output::{print_json, OutputFormat};
use super::table::Table;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Set (create or replace) a policy, e.g. `qm policy set team-a --kinds
    /// cpu_cores,memory_gb --max-per-request cpu_cores=4 --max-held
    /// cpu_cores=16 --priority-max 5 --preempt no --bind-role
    /// resource_consumer:team-a`. A limit not given allows everything.
    Set(PolicySetArgs),
    /// Bind an existing policy to one more identity (a new revision), in
    /// one log entry: two admins binding at once both land.
    Bind(PolicyBindArgs),
    /// Unbind one identity from a policy (a new revision); it falls back
    /// to its next binding, else to its role's rules.
    Unbind(PolicyBindArgs),
    /// One policy.
    Get {
        name: String,
        /// Answer from any replica's local state, which may lag the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Every policy.
    List {
        /// Answer from any replica's local state, which may lag the leader.
        #[arg(long)]
        stale: bool,
    },
    /// Delete a policy: its identities fall back to their role's rules.
    Delete { name: String },
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct PolicySetArgs {
    pub name: String,
    /// The kinds it may ask for, comma-separated (default: any).
    #[arg(long, value_delimiter = ',', value_name = "KIND,...")]
    pub kinds: Option<Vec<String>>,
    /// The providers it may be placed on, by id, comma-separated (default: any).
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    pub providers: Option<Vec<String>>,
    /// A label the provider must carry (a selector; repeat for more).
    #[arg(long = "provider-label", value_name = "KEY=VALUE")]
    pub provider_labels: Vec<String>,
    /// The most one request may ask for of a kind (repeat per kind).
    #[arg(long = "max-per-request", value_name = "KIND=N")]
    pub max_per_request: Vec<String>,
    /// The most its queued and active requests may ask for of a kind, in total.
    #[arg(long = "max-held", value_name = "KIND=N")]
    pub max_held: Vec<String>,
    /// The highest priority its requests may carry.
    #[arg(long, value_name = "N")]
    pub priority_max: Option<i64>,
    /// Whether its requests may preempt others.
    #[arg(long, value_parser = ["yes", "no"], default_value = "yes")]
    pub preempt: String,
    /// Bind to the certificate with this name (repeat for more).
    #[arg(long = "bind-cert", value_name = "NAME")]
    pub bind_cert: Vec<String>,
    /// Bind to a role, or to consumers of one namespace (`resource_consumer:team-a`).
    #[arg(long = "bind-role", value_name = "ROLE[:NAMESPACE]")]
    pub bind_role: Vec<String>,
}

#[derive(Clone, Debug, Args)]
#[command(group(ArgGroup::new("whom").required(true).args(["cert_name", "role"])))]
pub struct PolicyBindArgs {
    pub name: String,
    /// The certificate name to bind.
    #[arg(long)]
    pub cert_name: Option<String>,
    /// The role to bind (with --namespace for consumers of one namespace).
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long, requires = "role")]
    pub namespace: Option<String>,
}

pub async fn run(client: &Client, command: PolicyCommand, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        PolicyCommand::Set(args) => {
            let reply = client.set_policy(&spec_from_args(&args)?).await?;
            print_policies(reply.policy.as_slice(), format, out)
        }
        PolicyCommand::Bind(args) => {
            let reply = client.bind_policy(&args.name, &binding_from_args(args.clone())).await?;
            print_policies(reply.policy.as_slice(), format, out)
        }
        PolicyCommand::Unbind(args) => {
            let reply = client.unbind_policy(&args.name, &binding_from_args(args.clone())).await?;
            print_policies(reply.policy.as_slice(), format, out)
        }
        PolicyCommand::Get { name, stale } => {
            let reply = client.get_policy(&name, consistency(stale)).await?;
            print_policies(reply.policy.as_slice(), format, out)
        }
        PolicyCommand::List { stale } => {
            let reply = client.list_policies(consistency(stale)).await?;
            print_policies(&reply.policies, format, out)
        }
        PolicyCommand::Delete { name } => {
            let reply = client.delete_policy(&name).await?;
            match format {
                OutputFormat::Json => print_json(&serde_json::json!({"name": reply.name, "existed": reply.existed}), out),
                _ => {
                    let what = if reply.existed { "deleted" } else { "did not exist" };
                    writeln!(out, "policy {}: {what}", reply.name)?;
                    Ok(())
                }
            }
        }
    }
}

/// The binding `qm policy bind` or `unbind` names.
fn binding_from_args(args: PolicyBindArgs) -> Binding {
    match (args.cert_name, args.role) {
        (Some(name), _) => Binding::CertName(name),
        (None, Some(role)) => Binding::Role {
            role,
            namespace: args.namespace,
        },
        (None, None) => unreachable!("clap requires one"),
    }
}

/// The policy `qm policy set` describes.
pub fn spec_from_args(args: &PolicySetArgs) -> Result<PolicySpec, InvalidArgument> {
    let mut bindings: BTreeSet<Binding> = args.bind_cert.iter().map(|name| Binding::CertName(name.clone())).collect();
    for role in &args.bind_role {
        let (role, namespace) = match role.split_once(':') {
            Some((role, namespace)) => (role.to_owned(), Some(namespace.to_owned())),
            None => (role.clone(), None),
        };
        bindings.insert(Binding::Role { role, namespace });
    }
    let labels = pairs("provider-label", &args.provider_labels)?;
    let spec = PolicySpec {
        name: args.name.clone(),
        capability: Capability {
            kinds: args.kinds.as_ref().map(|kinds| kinds.iter().cloned().collect()),
            providers: ProviderScope {
                ids: args.providers.as_ref().map(|ids| ids.iter().cloned().collect()),
                labels,
            },
            max_per_request: numbers("max-per-request", &args.max_per_request)?,
            max_held: numbers("max-held", &args.max_held)?,
            priority_max: args.priority_max,
            may_preempt: args.preempt == "yes",
        },
        bindings,
    };
    spec.check()?;
    Ok(spec)
}

fn pairs(field: &str, items: &[String]) -> Result<BTreeMap<String, String>, InvalidArgument> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .ok_or_else(|| InvalidArgument::new(field, format!("{item:?} is not KEY=VALUE")))
        })
        .collect()
}

fn numbers(field: &str, items: &[String]) -> Result<BTreeMap<String, u64>, InvalidArgument> {
    pairs(field, items)?
        .into_iter()
        .map(|(kind, n)| {
            n.parse()
                .map(|n| (kind, n))
                .map_err(|_| InvalidArgument::new(field, format!("{n:?} is not a whole number")))
        })
        .collect()
}

fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

fn print_policies(policies: &[api::CapabilityPolicy], format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let policies: Vec<CapabilityPolicy> = policies.iter().map(policy_from_proto).collect::<Result<_, _>>()?;
    if format == OutputFormat::Json {
        return print_json(&policies, out);
    }
    let mut table = Table::new([
        "POLICY",
        "REV",
        "KINDS",
        "PROVIDERS",
        "PER REQUEST",
        "HELD",
        "PRIORITY",
        "PREEMPT",
        "BOUND TO",
    ]);
    for policy in &policies {
        let capability = &policy.capability;
        let list = |items: &Option<BTreeSet<String>>| match items {
            Some(items) => items.iter().cloned().collect::<Vec<_>>().join(","),
            None => "any".to_owned(),
        };
        let limits = |limits: &BTreeMap<String, u64>| match limits.is_empty() {
            true => "-".to_owned(),
            false => limits.iter().map(|(kind, n)| format!("{kind}={n}")).collect::<Vec<_>>().join(","),
        };
        let mut providers = list(&capability.providers.ids);
        for (key, value) in &capability.providers.labels {
            providers.push_str(&format!(" {key}={value}"));
        }
        let bound: Vec<String> = policy.bindings.iter().map(ToString::to_string).collect();
        table.row([
            &policy.name,
            &policy.revision.to_string(),
            &list(&capability.kinds),
            &providers,
            &limits(&capability.max_per_request),
            &limits(&capability.max_held),
            &capability.priority_max.map_or("any".to_owned(), |n| n.to_string()),
            if capability.may_preempt { "yes" } else { "no" },
            &bound.join("; "),
        ]);
    }
    table.write(out)
}
