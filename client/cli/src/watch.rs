//! `qm watch`: events as JSON lines, flushed one by one.

use std::io::Write;

use clap::Args;
use futures::StreamExt;
use serde_json::json;

use super::error::CliError;
use qm_client::proto::api;
use qm_client::Client;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Start at this revision (replaying what the replicas still keep); 0: only new events.
    #[arg(long = "from", value_name = "REV", default_value_t = 0)]
    pub from_revision: u64,
    /// Only this namespace's allocation events (provider events always show).
    #[arg(long)]
    pub namespace: Option<String>,
}

/// Prints until interrupted, or until the watch cannot go on.
pub async fn run(client: &Client, args: WatchArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut events = client.watch(args.from_revision, args.namespace.as_deref());
    while let Some(event) = events.next().await {
        writeln!(out, "{}", event_line(&event?))?;
        out.flush()?;
    }
    Ok(())
}

/// The event's own JSON, which the server fills; its envelope otherwise.
fn event_line(event: &api::EventMessage) -> String {
    if event.json.is_empty() {
        json!({"type": event.r#type, "revision": event.revision, "event_id": event.event_id, "at_ms": event.at_ms}).to_string()
    } else {
        event.json.clone()
    }
}
