//! Printing answers: tables for people, JSON for programs.

use std::collections::BTreeMap;
use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;

use super::error::CliError;
use super::table::Table;
use qm_client::convert::{response_from_reply, state_name, status_name};
use qm_client::proto::api;
use qm_client::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// JSON: the protocol's shapes (allocation_response, ...).
    Json,
}

/// `value` as pretty JSON and a newline.
pub fn print_json(value: &impl Serialize, out: &mut dyn Write) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// One request's record: the protocol's `allocation_response` in JSON.
pub fn print_allocation(reply: &api::AllocationReply, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => print_json(&response_from_reply(reply).map_err(Error::from)?, out),
        OutputFormat::Table => {
            let mut table = Table::new(["FIELD", "VALUE"]);
            table.row(["request_id", &reply.request_id]);
            table.row(["allocation_id", &reply.allocation_id]);
            table.row(["status", status_name(reply)]);
            table.row(["state", state_name(reply)]);
            table.row(["provider", or_dash(&reply.provider_id)]);
            table.row(["resources", &units_by_kind(&reply.grants)]);
            table.row(["reason", or_dash(&reply.reason)]);
            if let Some(expires_at_ms) = reply.lease_expires_at_ms {
                table.row(["lease_expires_at", &qm_state_machine::time::format_rfc3339(expires_at_ms)]);
            }
            table.write(out)
        }
    }
}

/// Several records: a JSON array of `allocation_response`s, or one row each.
pub fn print_allocations(replies: &[api::AllocationReply], format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => {
            let responses = replies
                .iter()
                .map(response_from_reply)
                .collect::<Result<Vec<_>, _>>()
                .map_err(Error::from)?;
            print_json(&responses, out)
        }
        OutputFormat::Table => {
            let mut table = Table::new(["REQUEST_ID", "REQUESTER", "STATUS", "STATE", "PROVIDER", "RESOURCES", "REASON"]);
            for reply in replies {
                let requester = reply
                    .request
                    .as_ref()
                    .map(|request| request.requester_id.as_str())
                    .unwrap_or_default();
                let resources = units_by_kind(&reply.grants);
                table.row([
                    &reply.request_id,
                    or_dash(requester),
                    status_name(reply),
                    state_name(reply),
                    or_dash(&reply.provider_id),
                    &resources,
                    or_dash(&reply.reason),
                ]);
            }
            table.write(out)
        }
    }
}

/// `cpu_cores: cpu_1 cpu_2; storage_gb: vol_1(100)`, kinds sorted; the
/// amount is shown when it is not 1.
pub fn units_by_kind(grants: &[api::UnitGrant]) -> String {
    let mut kinds: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for grant in grants {
        let unit = if grant.amount == 1 {
            grant.resource_id.clone()
        } else {
            format!("{}({})", grant.resource_id, grant.amount)
        };
        kinds.entry(&grant.kind).or_default().push(unit);
    }
    if kinds.is_empty() {
        return "-".to_owned();
    }
    kinds
        .iter()
        .map(|(kind, units)| format!("{kind}: {}", units.join(" ")))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}
