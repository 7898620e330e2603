//! `qm agent`: run a provider agent (see [`crate::agent`]) until SIGTERM or
//! Ctrl-C, printing what it holds and does, one line per notice: a sentence
//! with a timestamp, or (`--output json`) a JSON object with `event` and
//! `timestamp`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{ArgGroup, Args};
use qm_state_machine::time::format_rfc3339;
use tokio::signal::unix::{signal, SignalKind};

use super::error::CliError;
use super::output::OutputFormat;
use qm_agent::{Agent, AgentConfig, AgentError, HostInventoryOptions, Inventory, InventoryError, Notice};
use qm_client::Client;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("offer").required(true).args(["inventory", "from_host"])))]
pub struct AgentArgs {
    /// This provider's id in the cluster.
    #[arg(long, env = "QM_PROVIDER_ID")]
    pub provider_id: String,
    /// Offer the units of this registration document (JSON, as `qm provider
    /// register` takes it; its provider_id may be left out).
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Offer this host: one cpu_cores unit per CPU, memory_gb in blocks,
    /// storage_gb per disk path (from /proc and statvfs).
    #[arg(long)]
    pub from_host: bool,
    /// With --from-host: a file system to offer as a storage_gb volume, its
    /// available space at start. Repeatable; default `/`.
    #[arg(long = "disk-path", value_name = "PATH", conflicts_with = "inventory")]
    pub disk_paths: Vec<PathBuf>,
    /// With --from-host: GiB per memory block.
    #[arg(long, default_value_t = 1, conflicts_with = "inventory")]
    pub memory_block_gb: u64,
    /// With --from-host: GiB of memory kept back for the host, not offered.
    #[arg(long, default_value_t = 0, conflicts_with = "inventory")]
    pub memory_reserve_gb: u64,
    /// With --from-host: a provider label, KEY=VALUE. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, conflicts_with = "inventory")]
    pub labels: Vec<(String, String)>,
    /// Where this provider's host is reached, listed in the cluster's service
    /// catalog (`resource_providers`); default: the host name with
    /// --from-host, the inventory's `address` otherwise.
    #[arg(long, env = "QM_PROVIDER_ADDRESS", value_name = "HOST")]
    pub address: Option<String>,
    /// The port listed with the address (1-65535).
    #[arg(long, env = "QM_PROVIDER_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Between two heartbeats; keep it well under the cluster's failure window.
    #[arg(long, env = "QM_AGENT_HEARTBEAT_INTERVAL_MS", default_value_t = AgentConfig::default().heartbeat_interval_ms)]
    pub heartbeat_interval_ms: u64,
    /// Between two attempts at a confirmation no replica took.
    #[arg(long, default_value_t = AgentConfig::default().confirm_retry_interval_ms)]
    pub confirm_retry_interval_ms: u64,
    /// How long to wait for the cluster to take the first registration.
    #[arg(long, default_value_t = AgentConfig::default().register_wait_ms)]
    pub register_wait_ms: u64,
}

impl AgentArgs {
    fn config(&self) -> AgentConfig {
        AgentConfig {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            confirm_retry_interval_ms: self.confirm_retry_interval_ms,
            register_wait_ms: self.register_wait_ms,
        }
    }

    fn inventory(&self) -> Result<Inventory, InventoryError> {
        self.offered()?.with_endpoint(self.address.clone(), self.port)
    }

    fn offered(&self) -> Result<Inventory, InventoryError> {
        match &self.inventory {
            Some(path) => Inventory::from_file(&self.provider_id, path),
            None => {
                let defaults = HostInventoryOptions::default();
                Inventory::from_host(
                    &self.provider_id,
                    &HostInventoryOptions {
                        disk_paths: if self.disk_paths.is_empty() {
                            defaults.disk_paths.clone()
                        } else {
                            self.disk_paths.clone()
                        },
                        memory_block_gb: self.memory_block_gb,
                        memory_reserve_gb: self.memory_reserve_gb,
                        labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                        ..defaults
                    },
                )
            }
        }
    }
}

/// Runs the agent until SIGTERM or Ctrl-C, then deregisters it.
pub async fn run(client: &Client, args: AgentArgs, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let inventory = args.inventory().map_err(|error| cli_error(AgentError::Inventory(error)))?;
    let shutdown = shutdown_requested();
    tokio::pin!(shutdown);
    let mut agent = tokio::select! {
        started = Agent::start(client.clone(), inventory, args.config()) => started.map_err(cli_error)?,
        // Stopped before the registration went through: nothing to undo.
        _ = &mut shutdown => return Ok(()),
    };
    loop {
        tokio::select! {
            notice = agent.next_notice() => match notice {
                Some(notice) => print_notice(&notice, format, out)?,
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    let deregistered = agent.stop().await.map_err(cli_error)?;
    print_notice(&deregistered, format, out)
}

/// One notice, one line, flushed (a reader of a pipe sees it at once).
fn print_notice(notice: &Notice, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let timestamp = format_rfc3339(now_ms());
    match format {
        OutputFormat::Table => writeln!(out, "{timestamp} {notice}")?,
        OutputFormat::Json => {
            let mut json = serde_json::to_value(notice).map_err(std::io::Error::from)?;
            if let Some(object) = json.as_object_mut() {
                object.insert("timestamp".to_owned(), timestamp.into());
            }
            writeln!(out, "{json}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Resolves at the first SIGTERM or SIGINT.
pub(crate) async fn shutdown_requested() {
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // No SIGTERM handler could be installed: SIGTERM then ends the
        // process without deregistering, and Ctrl-C still stops cleanly.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn cli_error(error: AgentError) -> CliError {
    match error {
        AgentError::Config(invalid) => CliError::Client(invalid.into()),
        AgentError::Inventory(InventoryError::Invalid(invalid)) => CliError::Client(invalid.into()),
        AgentError::Inventory(InventoryError::Unreadable { path, reason }) => CliError::Input { path, reason },
        AgentError::Register { source, .. } | AgentError::Deregister { source, .. } => CliError::Client(source),
    }
}

/// The wall clock, for the timestamps of printed notices only.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<AgentArgs, clap::Error> {
        let cli = Cli::try_parse_from(["qm", "agent"].iter().chain(args))?;
        match cli.command {
            Command::Agent(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn an_agent_offers_a_file_or_this_host_never_both_nor_neither() {
        assert!(parse(&["--provider-id", "a", "--from-host"]).is_ok());
        assert!(parse(&["--provider-id", "a", "--inventory", "x.json"]).is_ok());
        assert!(parse(&["--provider-id", "a"]).is_err());
        assert!(parse(&["--provider-id", "a", "--from-host", "--inventory", "x.json"]).is_err());
        assert!(
            parse(&["--provider-id", "a", "--inventory", "x.json", "--disk-path", "/"]).is_err(),
            "host options do not go with --inventory"
        );
    }

    #[test]
    fn labels_are_key_value() {
        let args = parse(&["--provider-id", "a", "--from-host", "--label", "zone=eu-1", "--label", "rack="]).unwrap();

        assert_eq!(
            vec![("zone".to_owned(), "eu-1".to_owned()), ("rack".to_owned(), String::new())],
            args.labels
        );
        assert!(parse(&["--provider-id", "a", "--from-host", "--label", "zone"]).is_err());
    }

    #[test]
    fn an_unreadable_inventory_is_bad_input() {
        let args = parse(&["--provider-id", "a", "--inventory", "/no/such/inventory.json"]).unwrap();

        let error = args
            .inventory()
            .map_err(|error| cli_error(AgentError::Inventory(error)))
            .unwrap_err();

        assert_eq!(super::super::error::EXIT_BAD_INPUT, error.exit_code());
        assert!(error.to_string().starts_with("cannot read /no/such/inventory.json"), "{error}");
    }

    #[test]
    fn a_json_notice_carries_its_event_and_a_timestamp() {
        let mut out = Vec::new();

        print_notice(
            &Notice::Deregistered {
                provider_id: "a".to_owned(),
            },
            OutputFormat::Json,
            &mut out,
        )
        .unwrap();

        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!("deregistered", json["event"]);
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
