//! `qm top`: the monitor's view, live. Every interval it asks the cluster
//! for its SystemState (capacity, used, free per kind and per provider,
//! queue, failed providers) and the providers' latest measurements (from the
//! leader's memory), and redraws the terminal; Ctrl-C ends it. `--once`
//! prints a single frame without clearing the screen, for scripts; with
//! `--output json` each frame is one JSON line.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use qm_state_machine::time::format_rfc3339;
use serde::Serialize;

use super::error::CliError;
use super::output::OutputFormat;
use super::summary::{list_cell, rows_left_out, PROVIDER_ROWS_SHOWN_MAX};
use super::table::Table;
use qm_agent::metrics::{METRIC_POWER, METRIC_TEMPERATURE, METRIC_UTILIZATION};
use qm_client::convert::usage_from_proto;
use qm_client::proto::api;
use qm_client::Error;
use qm_client::{Client, Consistency};

/// ANSI: cursor home, then clear the screen.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";
/// Width of a kind's usage bar, in characters.
const BAR_WIDTH: usize = 20;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
    /// Between two frames (ms).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub interval_ms: u64,
}

/// What one frame shows.
#[derive(Debug)]
pub struct Frame {
    /// `None` when no replica told us the leader.
    pub cluster: Option<api::ClusterStatusReply>,
    pub state: api::SystemStateReply,
    pub providers: Vec<api::ProviderInfo>,
    /// Each namespace's use against its quota; empty when none has one (or
    /// the caller's certificate may not read them).
    pub quotas: Vec<api::NamespaceQuota>,
    /// This machine's clock when the frame was read.
    pub now_ms: u64,
}

/// A provider's latest measurements, summed up for one row.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Measured {
    /// Mean measured `utilization` per kind, over the units that report one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub utilization: BTreeMap<String, f64>,
    /// Highest `temperature` reported (°C).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Highest `power_usage` reported (W): agents report the host's figure on every CPU unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_usage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms: Option<u64>,
}

pub async fn run(client: &Client, args: TopArgs, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    if args.once {
        let frame = read_frame(client).await?;
        out.write_all(render(&frame, format)?.as_bytes())?;
        return Ok(out.flush()?);
    }
    let interval = Duration::from_millis(args.interval_ms);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let text = match read_frame(client).await {
            Ok(frame) => render(&frame, format)?,
            // Live, an unavailable cluster is something to show, not to exit on.
            Err(error) => format!("{} qm top: {error}\n", format_rfc3339(now_ms())),
        };
        if format == OutputFormat::Table {
            out.write_all(CLEAR_SCREEN.as_bytes())?;
        }
        out.write_all(text.as_bytes())?;
        out.flush()?;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut interrupted => return Ok(()),
        }
    }
}

/// Reads what a frame shows: the state and providers through the leader
/// (linearizable), the leader from whichever replica answers.
pub async fn read_frame(client: &Client) -> Result<Frame, Error> {
    let state = client.system_state(Consistency::Linearizable).await?;
    let providers = client.list_providers(Consistency::Linearizable).await?;
    let cluster = client.cluster_status().await.ok();
    let quotas = crate::quota::limited_namespaces(client, Consistency::Linearizable).await?;
    Ok(Frame {
        cluster,
        state,
        providers,
        quotas,
        now_ms: now_ms(),
    })
}

/// One frame as text (tables) or as one JSON line.
pub fn render(frame: &Frame, format: OutputFormat) -> Result<String, CliError> {
    match format {
        OutputFormat::Table => render_table(frame),
        OutputFormat::Json => render_json(frame),
    }
}

/// Where every provider is, when a frame shows part of them.
const TOP_SEE_ALL: &str = "qm --output json top --once";

/// At most [`PROVIDER_ROWS_SHOWN_MAX`] provider rows (failed ones first) and
/// a few failed provider ids; the JSON frame has everything.
fn render_table(frame: &Frame) -> Result<String, CliError> {
    let mut out: Vec<u8> = Vec::new();
    let state = &frame.state;
    let leader = match &frame.cluster {
        Some(api::ClusterStatusReply {
            leader_id: Some(leader_id),
            leader_addr,
            term,
            ..
        }) => format!("leader {leader_id} ({leader_addr}), term {term}"),
        _ => "leader unknown".to_owned(),
    };
    writeln!(
        out,
        "qm top · {leader} · revision {} · {}",
        state.revision,
        format_rfc3339(frame.now_ms)
    )?;
    writeln!(out)?;

    let mut kinds = Table::new(["KIND", "CAPACITY", "USED", "FREE", "FAILED", "USE"]);
    for kind in &state.by_kind {
        kinds.row([
            &kind.kind,
            &kind.capacity.to_string(),
            &kind.used.to_string(),
            &kind.free.to_string(),
            &kind.failed_capacity.to_string(),
            &bar(kind.used, kind.capacity),
        ]);
    }
    kinds.write(&mut out)?;
    writeln!(out)?;

    let measured = measurements(&frame.providers);
    let mut providers = Table::new([
        "PROVIDER",
        "STATUS",
        "ALLOCS",
        "HEARTBEAT",
        "TEMP",
        "POWER",
        "USED/CAPACITY",
        "MEASURED",
    ]);
    let mut shown: Vec<&api::ProviderUsage> = state.providers.iter().collect();
    shown.sort_by_key(|provider| provider.status != "failed");
    shown.truncate(PROVIDER_ROWS_SHOWN_MAX);
    for provider in shown.iter().copied() {
        let seen = measured.get(provider.provider_id.as_str()).cloned().unwrap_or_default();
        // A failed provider's units count as failed capacity, not capacity.
        let usage = provider
            .kinds
            .iter()
            .map(|kind| match kind.failed_capacity {
                0 => format!("{} {}/{}", kind.kind, kind.used, kind.capacity),
                failed => format!("{} {}/{} failed", kind.kind, kind.used, kind.capacity + failed),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let utilization = seen
            .utilization
            .iter()
            .map(|(kind, share)| format!("{kind} {:.0}%", share * 100.0))
            .collect::<Vec<_>>()
            .join(", ");
        providers.row([
            &provider.provider_id,
            &provider.status,
            &provider.allocations.to_string(),
            &seen.last_heartbeat_ms.map_or("-".to_owned(), |at| {
                format!("{:.1}s ago", frame.now_ms.saturating_sub(at) as f64 / 1000.0)
            }),
            &seen.temperature.map_or("-".to_owned(), |celsius| format!("{celsius:.0}°C")),
            &seen.power_usage.map_or("-".to_owned(), |watts| format!("{watts:.1}W")),
            &usage,
            if utilization.is_empty() { "-" } else { &utilization },
        ]);
    }
    providers.write(&mut out)?;
    if let Some(line) = rows_left_out(shown.len(), state.providers.len(), "providers", TOP_SEE_ALL) {
        writeln!(out, "{line}")?;
    }
    writeln!(out)?;
    if !frame.quotas.is_empty() {
        crate::quota::print_quota_table(&frame.quotas, &mut out)?;
        writeln!(out)?;
    }
    let failed = list_cell(&state.failed_providers, TOP_SEE_ALL);
    writeln!(
        out,
        "queue {} · active allocations {} · failed providers: {failed}{}",
        state.queue_len,
        state.active_allocations,
        match state.evacuations_pending {
            0 => String::new(),
            pending => format!(" · {pending} allocations still to move"),
        }
    )?;
    let mut fragmentation: Vec<String> = state
        .fragmentation_permille
        .iter()
        .map(|(kind, permille)| format!("{kind} {:.3}", *permille as f64 / 1000.0))
        .collect();
    fragmentation.sort();
    writeln!(
        out,
        "fragmentation: {} · moves {} started, {} completed, {} rolled back",
        if fragmentation.is_empty() {
            "-".to_owned()
        } else {
            fragmentation.join(", ")
        },
        state.moves_started,
        state.moves_completed,
        state.moves_rolled_back
    )?;
    Ok(String::from_utf8(out).expect("written from strings"))
}

/// One frame as one JSON object: `timestamp`, `leader_id`, `term`, `state`
/// (as `qm state --output json`) and `providers` (their measurements).
fn render_json(frame: &Frame) -> Result<String, CliError> {
    #[derive(Serialize)]
    struct ProviderJson<'a> {
        provider_id: &'a str,
        status: &'a str,
        #[serde(flatten)]
        measured: Measured,
    }
    let usage = usage_from_proto(&frame.state).map_err(Error::from)?;
    let measured = measurements(&frame.providers);
    let providers: Vec<ProviderJson> = frame
        .providers
        .iter()
        .map(|provider| ProviderJson {
            provider_id: &provider.provider_id,
            status: &provider.status,
            measured: measured.get(provider.provider_id.as_str()).cloned().unwrap_or_default(),
        })
        .collect();
    let leader = frame.cluster.as_ref().and_then(|cluster| cluster.leader_id);
    let json = serde_json::json!({
        "timestamp": format_rfc3339(frame.now_ms),
        "leader_id": leader,
        "term": frame.cluster.as_ref().map(|cluster| cluster.term),
        "state": usage,
        "providers": providers,
        "quotas": frame.quotas.iter().map(qm_client::quota::usage_from_proto).collect::<Vec<_>>(),
    });
    Ok(format!("{json}\n"))
}

/// Each provider's measurements, by provider id.
pub fn measurements(providers: &[api::ProviderInfo]) -> BTreeMap<&str, Measured> {
    providers
        .iter()
        .map(|provider| {
            let values = |name: &str| -> Vec<f64> {
                provider
                    .resources
                    .iter()
                    .filter_map(|resource| resource.metrics.get(name).copied())
                    .filter(|value| value.is_finite())
                    .collect()
            };
            let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
            for resource in &provider.resources {
                if let Some(value) = resource.metrics.get(METRIC_UTILIZATION).filter(|value| value.is_finite()) {
                    let sum = sums.entry(resource.kind.clone()).or_default();
                    *sum = (sum.0 + value, sum.1 + 1);
                }
            }
            let measured = Measured {
                utilization: sums.into_iter().map(|(kind, (sum, count))| (kind, sum / count as f64)).collect(),
                temperature: values(METRIC_TEMPERATURE).into_iter().reduce(f64::max),
                power_usage: values(METRIC_POWER).into_iter().reduce(f64::max),
                last_heartbeat_ms: provider.last_heartbeat_ms,
            };
            (provider.provider_id.as_str(), measured)
        })
        .collect()
}

/// `25% [#####...............]`
fn bar(used: u64, capacity: u64) -> String {
    if capacity == 0 {
        return "-".to_owned();
    }
    let share = used.min(capacity) as f64 / capacity as f64;
    let filled = (share * BAR_WIDTH as f64).round() as usize;
    format!("{:>3.0}% [{}{}]", share * 100.0, "#".repeat(filled), ".".repeat(BAR_WIDTH - filled))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn frame() -> Frame {
        let kind = |kind: &str, capacity, used, failed| api::KindUsage {
            kind: kind.to_owned(),
            capacity,
            used,
            free: capacity - used,
            failed_capacity: failed,
        };
        let resource = |resource_id: &str, metrics: &[(&str, f64)]| api::ResourceInfo {
            resource_id: resource_id.to_owned(),
            kind: "cpu_cores".to_owned(),
            metrics: metrics
                .iter()
                .map(|(name, value)| (name.to_string(), *value))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        };
        Frame {
            cluster: Some(api::ClusterStatusReply {
                leader_id: Some(2),
                leader_addr: "127.0.0.1:7102".to_owned(),
                term: 3,
                ..Default::default()
            }),
            state: api::SystemStateReply {
                by_kind: vec![kind("cpu_cores", 4, 1, 2)],
                providers: vec![
                    api::ProviderUsage {
                        provider_id: "agent-a".to_owned(),
                        status: "failed".to_owned(),
                        allocations: 0,
                        kinds: vec![kind("cpu_cores", 0, 0, 2)],
                    },
                    api::ProviderUsage {
                        provider_id: "agent-b".to_owned(),
                        status: "active".to_owned(),
                        allocations: 1,
                        kinds: vec![kind("cpu_cores", 2, 1, 0)],
                    },
                ],
                queue_len: 0,
                active_allocations: 1,
                failed_providers: vec!["agent-a".to_owned()],
                revision: 42,
                evacuations_pending: 0,
                cordoned_providers: vec![],
                fragmentation_permille: [("cpu_cores".to_owned(), 500)].into(),
                moves_started: 3,
                moves_completed: 2,
                moves_rolled_back: 1,
                ..Default::default()
            },
            providers: vec![api::ProviderInfo {
                provider_id: "agent-b".to_owned(),
                status: "active".to_owned(),
                resources: vec![
                    resource("cpu_0", &[("utilization", 0.5), ("temperature", 61.0)]),
                    resource("cpu_1", &[("utilization", 0.25), ("temperature", 64.0)]),
                ],
                last_heartbeat_ms: Some(1_000),
                ..Default::default()
            }],
            quotas: vec![api::NamespaceQuota {
                namespace: "team-a".to_owned(),
                quota: [("cpu_cores".to_owned(), 4)].into(),
                held: [("cpu_cores".to_owned(), 1)].into(),
                queued: 2,
                ..Default::default()
            }],
            now_ms: 1_500,
        }
    }

    #[test]
    fn a_frame_shows_kinds_providers_measurements_and_the_queue() {
        let text = render(&frame(), OutputFormat::Table).unwrap();
        // Use against quota, for each namespace with one.
        let quota_row = text.lines().find(|line| line.starts_with("team-a")).expect("a quota row");
        assert_eq!(
            vec!["team-a", "cpu_cores", "1", "4", "2", "cluster's", "yes"],
            quota_row.split_whitespace().collect::<Vec<_>>()
        );

        assert!(
            text.starts_with("qm top · leader 2 (127.0.0.1:7102), term 3 · revision 42 · "),
            "{text}"
        );
        assert!(
            text.contains("cpu_cores  4         1     3     2        25% [#####...............]"),
            "{text}"
        );
        assert!(
            text.contains("agent-b   active  1       0.5s ago   64°C  -      cpu_cores 1/2         cpu_cores 38%"),
            "{text}"
        );
        assert!(
            text.contains("agent-a   failed  0       -          -     -      cpu_cores 0/2 failed  -"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "queue 0 · active allocations 1 · failed providers: agent-a\n\
                 fragmentation: cpu_cores 0.500 · moves 3 started, 2 completed, 1 rolled back\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_json_frame_is_one_line_with_the_state_and_measurements() {
        let text = render(&frame(), OutputFormat::Json).unwrap();

        assert_eq!(1, text.lines().count());
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(2, json["leader_id"]);
        assert_eq!(vec!["agent-a"], json["state"]["failed_providers"].as_array().unwrap().clone());
        assert_eq!(0.375, json["providers"][0]["utilization"]["cpu_cores"]);
        assert!(json["providers"][0].get("power_usage").is_none(), "absent, not invented");
    }
}
