//! `qm cluster status|add|remove`.

use std::io::Write;

use clap::Subcommand;
use serde::Serialize;

use super::error::CliError;
use super::output::{or_dash, print_json, OutputFormat};
use super::table::Table;
use qm_client::proto::api;
use qm_client::{Client, KnownReplica};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, commit and apply indexes, and the members with their roles.
    Status {
        /// Also show this client's view: the replicas it knows (its seeds,
        /// the configured endpoints, and the members it read), in the order
        /// it tries them, and which it believes leads.
        #[arg(long)]
        verbose: bool,
    },
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
    /// The cluster's id; null while the answering replica has none.
    pub cluster_id: Option<String>,
    /// The format versions the answering replica's build writes.
    pub log_format_version: u32,
    pub table_format_version: u32,
    /// What the answering replica last heard from each peer.
    pub peers: Vec<PeerJson>,
    /// With `--verbose`: the replicas this client knows, in the order it tries them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Vec<KnownReplicaJson>>,
}

/// One replica as the client knows it (`qm cluster status --verbose`).
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct KnownReplicaJson {
    pub addr: String,
    /// A configured endpoint (`--endpoints`): kept whatever the membership says.
    pub seed: bool,
    /// In the membership the client read last.
    pub member: bool,
    /// The replica the client believes leads.
    pub leader: bool,
    /// Its last attempt found nobody there.
    pub unreachable: bool,
}

impl From<&KnownReplica> for KnownReplicaJson {
    fn from(known: &KnownReplica) -> Self {
        KnownReplicaJson {
            addr: known.addr.clone(),
            seed: known.seed,
            member: known.member,
            leader: known.leader,
            unreachable: known.unreachable,
        }
    }
}

/// A peer as the answering replica last heard from it.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct PeerJson {
    pub id: u64,
    /// Null when it announced none.
    pub cluster_id: Option<String>,
    /// Both 0 when it announced none (a build from before announcements).
    pub log_format_version: u32,
    pub table_format_version: u32,
    /// Why traffic with it is refused; null when it is not.
    pub refused: Option<String>,
}

impl From<&api::PeerAnnouncement> for PeerJson {
    fn from(peer: &api::PeerAnnouncement) -> Self {
        PeerJson {
            id: peer.id,
            cluster_id: non_empty(&peer.cluster_id),
            log_format_version: peer.log_format_version,
            table_format_version: peer.table_format_version,
            refused: non_empty(&peer.refused),
        }
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
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
            cluster_id: non_empty(&status.cluster_id),
            log_format_version: status.log_format_version,
            table_format_version: status.table_format_version,
            peers: status.peers.iter().map(PeerJson::from).collect(),
            client: None,
        }
    }
}

pub async fn run(client: &Client, command: ClusterCommand, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let (status, verbose) = match command {
        ClusterCommand::Status { verbose } => (client.cluster_status().await?, verbose),
        ClusterCommand::Add { id, addr, learner_only } => (client.add_replica(id, &addr, learner_only).await?, false),
        ClusterCommand::Remove { id } => (client.remove_replica(id).await?, false),
    };
    // The status just read is a membership read: the view already follows it.
    let view = verbose.then(|| client.known_replicas());
    print_status(&status, view.as_deref(), format, out)
}

fn print_status(
    status: &api::ClusterStatusReply,
    view: Option<&[KnownReplica]>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if format == OutputFormat::Json {
        let mut json = ClusterStatusJson::from(status);
        json.client = view.map(|view| view.iter().map(KnownReplicaJson::from).collect());
        return print_json(&json, out);
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
    summary.row(["cluster_id", or_dash(&status.cluster_id)]);
    summary.row([
        "formats",
        &format!("log={},table={}", status.log_format_version, status.table_format_version),
    ]);
    summary.write(out)?;
    writeln!(out)?;
    let mut members = Table::new(["ID", "ADDR", "ROLE"]);
    for member in &status.members {
        members.row([&member.id.to_string(), &member.addr, &member.role]);
    }
    members.write(out)?;
    if !status.peers.is_empty() {
        writeln!(out)?;
        writeln!(out, "peers, as this replica last heard from them:")?;
        let mut peers = Table::new(["ID", "CLUSTER_ID", "FORMATS", "REFUSED"]);
        for peer in &status.peers {
            let formats = match peer.table_format_version {
                0 => "-".to_owned(),
                table => format!("log={},table={table}", peer.log_format_version),
            };
            peers.row([&peer.id.to_string(), or_dash(&peer.cluster_id), &formats, or_dash(&peer.refused)]);
        }
        peers.write(out)?;
    }
    if let Some(view) = view {
        writeln!(out)?;
        writeln!(out, "this client's replicas, in the order it tries them:")?;
        let mut known = Table::new(["ADDR", "SEED", "MEMBER", "LEADER", "REACHABLE"]);
        let yes_no = |flag: bool| if flag { "yes" } else { "no" };
        for replica in view {
            known.row([
                replica.addr.as_str(),
                yes_no(replica.seed),
                yes_no(replica.member),
                yes_no(replica.leader),
                yes_no(!replica.unreachable),
            ]);
        }
        known.write(out)?;
    }
    Ok(())
}
