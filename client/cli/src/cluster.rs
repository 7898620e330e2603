//! `qm cluster status|add|remove`.

use std::io::Write;

use clap::Subcommand;
use serde::Serialize;

use super::error::CliError;
use super::output::{or_dash, print_json, OutputFormat};
use super::table::Table;
use qm_client::proto::api;
use qm_client::Client;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, commit and apply indexes, and the members with their roles.
    Status,
    /// Add a replica: it joins as a learner, catches up, then becomes a voter.
    Add {
        /// The new replica's node id.
        #[arg(long)]
        id: u64,
        /// The new replica's address (host:port), as it listens.
        #[arg(long)]
        addr: String,
        /// Stop once it is a learner (it replicates but does not vote).
        #[arg(long)]
        learner_only: bool,
    },
    /// Remove a replica from the membership.
    Remove {
        /// The replica's node id.
        #[arg(long)]
        id: u64,
    },
}

/// `qm cluster status --output json`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct ClusterStatusJson {
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberJson>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct MemberJson {
    pub id: u64,
    pub addr: String,
    pub role: String,
}

impl From<&api::ClusterStatusReply> for ClusterStatusJson {
    fn from(status: &api::ClusterStatusReply) -> Self {
        ClusterStatusJson {
            leader_id: status.leader_id,
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            members: status
                .members
                .iter()
                .map(|member| MemberJson {
                    id: member.id,
                    addr: member.addr.clone(),
                    role: member.role.clone(),
                })
                .collect(),
        }
    }
}

pub async fn run(client: &Client, command: ClusterCommand, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let status = match command {
        ClusterCommand::Status => client.cluster_status().await?,
        ClusterCommand::Add { id, addr, learner_only } => client.add_replica(id, &addr, learner_only).await?,
        ClusterCommand::Remove { id } => client.remove_replica(id).await?,
    };
    print_status(&status, format, out)
}

fn print_status(status: &api::ClusterStatusReply, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        return print_json(&ClusterStatusJson::from(status), out);
    }
    let leader = status
        .leader_id
        .map_or_else(|| "none".to_owned(), |id| format!("{id} ({})", or_dash(&status.leader_addr)));
    let mut summary = Table::new(["FIELD", "VALUE"]);
    summary.row(["answered_by", &status.node_id.to_string()]);
    summary.row(["leader", &leader]);
    summary.row(["term", &status.term.to_string()]);
    summary.row(["commit_index", &status.commit_index.to_string()]);
    summary.row(["applied_index", &status.applied_index.to_string()]);
    summary.row(["last_log_index", &status.last_log_index.to_string()]);
    summary.row(["snapshot_index", &status.snapshot_index.to_string()]);
    summary.write(out)?;
    writeln!(out)?;
    let mut members = Table::new(["ID", "ADDR", "ROLE"]);
    for member in &status.members {
        members.row([&member.id.to_string(), &member.addr, &member.role]);
    }
    members.write(out)
}
