//! `qm optimize [--dry-run]`: an optimization plan, begun or only shown.

use std::io::Write;

use qm_client::proto::api;
use qm_client::Client;
use serde::Serialize;

use super::error::CliError;
use super::output::{print_json, OutputFormat};
use super::table::Table;

/// `qm optimize --output json`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct PlanJson {
    pub dry_run: bool,
    pub moves: Vec<MoveJson>,
}

/// One move of the plan.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct MoveJson {
    pub request_id: String,
    pub allocation_id: String,
    pub namespace: String,
    pub from_provider: String,
    pub to_provider: String,
    /// The units it gets on `to_provider`.
    pub resource_ids: Vec<String>,
}

pub async fn run(client: &Client, dry_run: bool, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    print_plan(&client.optimize(dry_run).await?, format, out)
}

fn print_plan(reply: &api::OptimizeReply, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let moves: Vec<MoveJson> = reply
        .moves
        .iter()
        .map(|planned| MoveJson {
            request_id: planned.request_id.clone(),
            allocation_id: planned.allocation_id.clone(),
            namespace: planned.namespace.clone(),
            from_provider: planned.from_provider.clone(),
            to_provider: planned.to_provider.clone(),
            resource_ids: planned.grants.iter().map(|grant| grant.resource_id.clone()).collect(),
        })
        .collect();
    if format == OutputFormat::Json {
        return print_json(
            &PlanJson {
                dry_run: reply.dry_run,
                moves,
            },
            out,
        );
    }
    let mut table = Table::new(["ALLOCATION", "FROM", "TO", "UNITS"]);
    for planned in &moves {
        table.row([
            &planned.allocation_id,
            &planned.from_provider,
            &planned.to_provider,
            &planned.resource_ids.join(","),
        ]);
    }
    table.write(out)?;
    let verb = if reply.dry_run { "would begin" } else { "began" };
    writeln!(out, "the plan {verb} {} moves", moves.len())?;
    Ok(())
}
