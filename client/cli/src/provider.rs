//! `qm provider register|list|deregister|cordon|uncordon`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use qm_state_machine::{InvalidArgument, ProviderRegistration};
use serde::Serialize;

use super::error::CliError;
use super::input::read_document;
use super::output::{print_json, OutputFormat};
use super::summary::{rows_left_out, PROVIDER_LIST_ROWS_SHOWN_MAX};
use super::table::Table;
use qm_client::proto::api;
use qm_client::{Client, Consistency};

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Register a provider (or update it) from its registration document:
    /// {"provider_id": "node_1", "labels": {...}, "resources": [{"resource_id": "cpu_1", "kind": "cpu_cores", "capacity": 1}]}
    Register {
        /// The registration JSON; `-` reads it from stdin.
        #[arg(long, short, value_name = "FILE")]
        file: PathBuf,
    },
    /// Every provider, its status and how much of each unit is used.
    List {
        /// Answer from any replica's local state, which may lag the leader.
        #[arg(long)]
        stale: bool,
        /// Every provider; without it the table shows the first 50 (failed
        /// ones first) and says how many more there are. JSON is always complete.
        #[arg(long)]
        all: bool,
    },
    /// Remove a provider; its allocations are moved elsewhere or queued.
    Deregister {
        /// The provider's id.
        provider_id: String,
    },
    /// Stop new placements on a provider; what it holds stays (admin).
    Cordon {
        /// The provider's id.
        provider_id: String,
    },
    /// Drain a provider: no new placements, its movable allocations move
    /// elsewhere make-before-break, and at the deadline the rest move as if
    /// it left (admin). Says at once what cannot move now, and why.
    Drain {
        /// The provider's id.
        provider_id: String,
        /// How long movable allocations have to move before the rest are
        /// moved as if the provider left: 500ms, 30s, 10m, 1h.
        #[arg(long, default_value = "10m", value_parser = parse_duration_ms)]
        deadline: u64,
    },
    /// Open a cordoned (or draining) provider to new placements again (admin).
    Uncordon {
        /// The provider's id.
        provider_id: String,
    },
}

/// `qm provider cordon|uncordon --output json`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct SchedulingReplyJson {
    pub provider_id: String,
    pub scheduling: String,
    /// A drain's moves under way: allocation id → target provider.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moving: Vec<(String, String)>,
    /// A drain: `ALLOCATION_ID: reason` for what cannot move now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cannot_move: Vec<String>,
}

/// `500ms`, `30s`, `10m`, `1h` (or a bare number of ms) in milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 30s or 10m"))?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too long"))
}

/// `qm provider register|deregister --output json`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct ProviderReplyJson {
    pub provider_id: String,
    pub status: String,
    pub resources: u64,
}

/// One provider in `qm provider list --output json`.
#[derive(Debug, PartialEq, Serialize)]
pub struct ProviderJson {
    pub provider_id: String,
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub confirms_allocations: bool,
    pub allocations: u64,
    /// `open`, `cordoned` or `draining`.
    pub scheduling: String,
    /// Deregistered, its allocations still moving off (status `failed`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms: Option<u64>,
    /// Where the provider is reached, as it registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    pub resources: Vec<ResourceJson>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct ResourceJson {
    pub resource_id: String,
    pub kind: String,
    pub capacity: u64,
    pub used: u64,
    pub sharing: String,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

impl From<&api::ProviderInfo> for ProviderJson {
    fn from(info: &api::ProviderInfo) -> Self {
        ProviderJson {
            provider_id: info.provider_id.clone(),
            status: info.status.clone(),
            labels: sorted(&info.labels),
            confirms_allocations: info.confirms_allocations,
            allocations: info.allocations,
            scheduling: scheduling_name(info).to_owned(),
            leaving: info.leaving,
            last_heartbeat_ms: info.last_heartbeat_ms,
            address: Some(info.address.clone()).filter(|address| !address.is_empty()),
            port: Some(info.port).filter(|port| *port != 0),
            resources: info
                .resources
                .iter()
                .map(|resource| ResourceJson {
                    resource_id: resource.resource_id.clone(),
                    kind: resource.kind.clone(),
                    capacity: resource.capacity,
                    used: resource.used,
                    sharing: resource.sharing.clone(),
                    labels: sorted(&resource.labels),
                    metrics: resource.metrics.iter().map(|(name, value)| (name.clone(), *value)).collect(),
                })
                .collect(),
        }
    }
}

/// Parses a registration document, naming what is wrong with it.
pub fn parse_registration(text: &str) -> Result<ProviderRegistration, InvalidArgument> {
    serde_json::from_str(text).map_err(|error| InvalidArgument::new("registration", error.to_string()))
}

pub async fn run(client: &Client, command: ProviderCommand, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        ProviderCommand::Register { file } => {
            let registration = parse_registration(&read_document(&file, &mut std::io::stdin())?)?;
            print_reply(&client.register_provider(&registration).await?, format, out)
        }
        ProviderCommand::Deregister { provider_id } => print_reply(&client.deregister_provider(&provider_id).await?, format, out),
        ProviderCommand::Cordon { provider_id } => {
            print_scheduling(&client.set_provider_scheduling(&provider_id, true).await?, format, out)
        }
        ProviderCommand::Drain { provider_id, deadline } => {
            print_scheduling(&client.drain_provider(&provider_id, deadline).await?, format, out)
        }
        ProviderCommand::Uncordon { provider_id } => {
            print_scheduling(&client.set_provider_scheduling(&provider_id, false).await?, format, out)
        }
        ProviderCommand::List { stale, all } => {
            let consistency = if stale { Consistency::Stale } else { Consistency::Linearizable };
            let rows_max = if all { usize::MAX } else { PROVIDER_LIST_ROWS_SHOWN_MAX };
            print_providers(&client.list_providers(consistency).await?, rows_max, format, out)
        }
    }
}

fn print_reply(reply: &api::ProviderReply, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => print_json(
            &ProviderReplyJson {
                provider_id: reply.provider_id.clone(),
                status: reply.status.clone(),
                resources: reply.resources,
            },
            out,
        ),
        OutputFormat::Table => {
            let mut table = Table::new(["PROVIDER", "STATUS", "RESOURCES"]);
            table.row([&reply.provider_id, &reply.status, &reply.resources.to_string()]);
            table.write(out)
        }
    }
}

fn print_scheduling(reply: &api::ProviderSchedulingReply, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => print_json(
            &SchedulingReplyJson {
                provider_id: reply.provider_id.clone(),
                scheduling: reply.scheduling.clone(),
                moving: reply
                    .moving
                    .iter()
                    .map(|planned| (planned.allocation_id.clone(), planned.to_provider.clone()))
                    .collect(),
                cannot_move: reply.cannot_move.clone(),
            },
            out,
        ),
        OutputFormat::Table => {
            let mut table = Table::new(["PROVIDER", "SCHEDULING"]);
            table.row([&reply.provider_id, &reply.scheduling]);
            table.write(out)?;
            for planned in &reply.moving {
                writeln!(out, "moving {} to {}", planned.allocation_id, planned.to_provider)?;
            }
            for line in &reply.cannot_move {
                writeln!(out, "cannot move {line}")?;
            }
            Ok(())
        }
    }
}

/// A provider's scheduling; a replica of an older build sends none: open.
fn scheduling_name(info: &api::ProviderInfo) -> &str {
    if info.scheduling.is_empty() {
        "open"
    } else {
        &info.scheduling
    }
}

/// The STATUS column: the status, `leaving` for a deregistered provider
/// still emptying, and the scheduling unless it is open (`active, cordoned`).
pub(crate) fn status_cell(info: &api::ProviderInfo) -> String {
    let mut cell = info.status.clone();
    if info.leaving {
        cell.push_str(", leaving");
    }
    match scheduling_name(info) {
        "open" => cell,
        scheduling => format!("{cell}, {scheduling}"),
    }
}

/// The table shows at most `rows_max` providers, failed ones first; JSON all.
pub(crate) fn print_providers(
    providers: &[api::ProviderInfo],
    rows_max: usize,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return print_json(&providers.iter().map(ProviderJson::from).collect::<Vec<_>>(), out);
    }
    let mut shown: Vec<&api::ProviderInfo> = providers.iter().collect();
    shown.sort_by_key(|provider| provider.status != "failed");
    shown.truncate(rows_max);
    let mut table = Table::new(["PROVIDER", "STATUS", "ALLOCATIONS", "USED/CAPACITY", "LABELS"]);
    for provider in shown.iter().copied() {
        let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for resource in &provider.resources {
            let (used, capacity) = by_kind.entry(&resource.kind).or_default();
            *used += resource.used;
            *capacity += resource.capacity;
        }
        let usage = by_kind
            .iter()
            .map(|(kind, (used, capacity))| format!("{kind} {used}/{capacity}"))
            .collect::<Vec<_>>()
            .join(", ");
        let labels = sorted(&provider.labels)
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(",");
        table.row([
            &provider.provider_id,
            &status_cell(provider),
            &provider.allocations.to_string(),
            &usage,
            if labels.is_empty() { "-" } else { &labels },
        ]);
    }
    table.write(out)?;
    if let Some(line) = rows_left_out(
        shown.len(),
        providers.len(),
        "providers",
        "qm provider list --all, or --output json",
    ) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn sorted(labels: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(key, value)| (key.clone(), value.clone())).collect()
}
