//! `qm state`: the monitor's view (the protocol's SystemState).

use std::collections::BTreeMap;
use std::io::Write;

use super::error::CliError;
use super::output::{print_json, OutputFormat};
use super::summary::{list_cell, rows_left_out, PROVIDER_ROWS_SHOWN_MAX};
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
        OutputFormat::Table => {
            print_table(&state, out)?;
            // Use against quota, for the namespaces that have one (`qm quota list` shows all).
            let quotas = crate::quota::limited_namespaces(client, consistency).await?;
            if !quotas.is_empty() {
                writeln!(out)?;
                crate::quota::print_quota_table(&quotas, out)?;
            }
            Ok(())
        }
    }
}

/// Where the whole state is, when the table shows part of it.
const SEE_ALL: &str = "qm --output json state";

/// At most [`PROVIDER_ROWS_SHOWN_MAX`] provider rows (failed ones first, as
/// they are what an operator looks for) and [`crate::summary::LIST_SHOWN_MAX`]
/// failed provider ids; the JSON output has everything.
pub(crate) fn print_table(state: &api::SystemStateReply, out: &mut dyn Write) -> Result<(), CliError> {
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
    let mut shown: Vec<&api::ProviderUsage> = state.providers.iter().collect();
    shown.sort_by_key(|provider| provider.status != "failed");
    shown.truncate(PROVIDER_ROWS_SHOWN_MAX);
    for provider in &shown {
        let usage = provider
            .kinds
            .iter()
            .map(|kind| format!("{} {}/{}", kind.kind, kind.used, kind.capacity))
            .collect::<Vec<_>>()
            .join(", ");
        providers.row([&provider.provider_id, &provider.status, &provider.allocations.to_string(), &usage]);
    }
    providers.write(out)?;
    if let Some(line) = rows_left_out(shown.len(), state.providers.len(), "providers", SEE_ALL) {
        writeln!(out, "{line}")?;
    }
    writeln!(out)?;
    let mut summary = Table::new(["FIELD", "VALUE"]);
    summary.row(["active_allocations", &state.active_allocations.to_string()]);
    summary.row(["queue_len", &state.queue_len.to_string()]);
    summary.row(["failed_providers", &list_cell(&state.failed_providers, SEE_ALL)]);
    summary.row(["cordoned_providers", &list_cell(&state.cordoned_providers, SEE_ALL)]);
    summary.row(["evacuations_pending", &state.evacuations_pending.to_string()]);
    let fragmentation: BTreeMap<&String, &u64> = state.fragmentation_permille.iter().collect();
    let fragmentation = fragmentation
        .iter()
        .map(|(kind, permille)| format!("{kind} {:.3}", **permille as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(", ");
    summary.row(["fragmentation", if fragmentation.is_empty() { "-" } else { &fragmentation }]);
    summary.row(["emptiable_providers", &list_cell(&state.emptiable_providers, SEE_ALL)]);
    summary.row([
        "moves",
        &format!(
            "{} started, {} completed, {} rolled back",
            state.moves_started, state.moves_completed, state.moves_rolled_back
        ),
    ]);
    summary.row(["revision", &state.revision.to_string()]);
    summary.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 500 failed providers of 2,000 units each, as a mass failure leaves them.
    fn mass_failure() -> api::SystemStateReply {
        let ids: Vec<String> = (0..500).map(|n| format!("qm-bench-3f9a2c1d-{n}")).collect();
        api::SystemStateReply {
            providers: ids
                .iter()
                .map(|id| api::ProviderUsage {
                    provider_id: id.clone(),
                    status: "failed".to_owned(),
                    ..Default::default()
                })
                .collect(),
            failed_providers: ids,
            queue_len: 239_306,
            ..Default::default()
        }
    }

    #[test]
    fn five_hundred_failed_providers_print_bounded_lines_that_say_how_to_see_all() {
        let mut out = Vec::new();
        print_table(&mass_failure(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let longest = text.lines().map(str::len).max().unwrap_or_default();
        assert!(longest <= 200, "a line of {longest} characters:\n{text}");
        assert!(text.lines().count() <= 40, "{} lines:\n{text}", text.lines().count());
        let failed = text
            .lines()
            .find(|line| line.starts_with("failed_providers"))
            .expect("the failed line");
        assert!(
            failed.contains("500: qm-bench-3f9a2c1d-0, ") && failed.contains("and 495 more (see all: qm --output json state)"),
            "{failed}"
        );
        assert!(
            text.contains("... and 480 more providers (see all: qm --output json state)"),
            "{text}"
        );
    }
}
