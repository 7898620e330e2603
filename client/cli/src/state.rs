//! `qm state`: the monitor's view (the protocol's SystemState).

use std::io::Write;

use super::error::CliError;
use super::output::{print_json, OutputFormat};
use super::table::Table;
use qm_client::convert::usage_from_proto;
use qm_client::proto::api;
use qm_client::Error;
use qm_client::{Client, Consistency};

pub async fn run(client: &Client, stale: bool, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let consistency = if stale { Consistency::Stale } else { Consistency::Linearizable };
    let state = client.system_state(consistency).await?;
    match format {
        OutputFormat::Json => print_json(&usage_from_proto(&state).map_err(Error::from)?, out),
        OutputFormat::Table => print_table(&state, out),
    }
}

fn print_table(state: &api::SystemStateReply, out: &mut dyn Write) -> Result<(), CliError> {
    let mut kinds = Table::new(["KIND", "CAPACITY", "USED", "FREE", "FAILED_CAPACITY"]);
    for kind in &state.by_kind {
        kinds.row([
            &kind.kind,
            &kind.capacity.to_string(),
            &kind.used.to_string(),
            &kind.free.to_string(),
            &kind.failed_capacity.to_string(),
        ]);
    }
    kinds.write(out)?;
    writeln!(out)?;
    let mut providers = Table::new(["PROVIDER", "STATUS", "ALLOCATIONS", "USED/CAPACITY"]);
    for provider in &state.providers {
        let usage = provider
            .kinds
            .iter()
            .map(|kind| format!("{} {}/{}", kind.kind, kind.used, kind.capacity))
            .collect::<Vec<_>>()
            .join(", ");
        providers.row([&provider.provider_id, &provider.status, &provider.allocations.to_string(), &usage]);
    }
    providers.write(out)?;
    writeln!(out)?;
    let mut summary = Table::new(["FIELD", "VALUE"]);
    summary.row(["active_allocations", &state.active_allocations.to_string()]);
    summary.row(["queue_len", &state.queue_len.to_string()]);
    summary.row([
        "failed_providers",
        &if state.failed_providers.is_empty() {
            "-".to_owned()
        } else {
            state.failed_providers.join(", ")
        },
    ]);
    summary.row(["revision", &state.revision.to_string()]);
    summary.write(out)
}
