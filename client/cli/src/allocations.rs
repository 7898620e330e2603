//! `qm release`, `qm renew`, `qm get`, `qm list`.

use std::io::Write;

use clap::{Args, ValueEnum};

use super::error::CliError;
use super::output::{print_allocation, print_allocations, print_json, OutputFormat};
use qm_client::proto::api;
use qm_client::{Client, Consistency};

/// Which requests `qm list` shows; every filter given must match.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only this requester (requester ids are per namespace: give --namespace too).
    #[arg(long, requires = "namespace")]
    pub requester: Option<String>,
    /// Only allocations placed on this provider now.
    #[arg(long, value_name = "PROVIDER_ID")]
    pub provider: Option<String>,
    /// Only requests in this protocol state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// One page of at most this many (0: every page, each of the server's maximum).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Start after this request id (paging).
    #[arg(long, value_name = "REQUEST_ID")]
    pub after: Option<String>,
    /// Answer from any replica's local state, which may lag the leader.
    #[arg(long)]
    pub stale: bool,
}

/// The protocol's request states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum StateArg {
    Queued,
    Allocation,
    Monitoring,
    Deallocation,
    Idle,
    Error,
}

impl StateArg {
    fn to_wire(self) -> api::RequestState {
        match self {
            StateArg::Queued => api::RequestState::Queued,
            StateArg::Allocation => api::RequestState::Allocation,
            StateArg::Monitoring => api::RequestState::Monitoring,
            StateArg::Deallocation => api::RequestState::Deallocation,
            StateArg::Idle => api::RequestState::Idle,
            StateArg::Error => api::RequestState::Error,
        }
    }
}

impl ListArgs {
    pub fn to_request(&self) -> api::ListRequest {
        api::ListRequest {
            namespace: self.namespace.clone().unwrap_or_default(),
            requester_id: self.requester.clone().unwrap_or_default(),
            provider_id: self.provider.clone().unwrap_or_default(),
            state: self.state.map_or(api::RequestState::Unspecified, StateArg::to_wire) as i32,
            after: self.after.clone().unwrap_or_default(),
            limit: self.limit,
            stale: self.stale,
        }
    }
}

/// `qm release ID`, or `qm release --namespace/--requester/--provider`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Allocation id or request id.
    #[arg(required_unless_present_any = ["namespace", "provider"], conflicts_with_all = ["namespace", "requester", "provider"])]
    pub id: Option<String>,
    /// Release everything of this namespace (with TLS, a consumer's own is used).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Release everything of this requester (needs --namespace).
    #[arg(long, requires = "namespace")]
    pub requester: Option<String>,
    /// Release every allocation placed on this provider.
    #[arg(long)]
    pub provider: Option<String>,
}

pub async fn release(client: &Client, args: ReleaseArgs, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    if let Some(id) = &args.id {
        return print_allocation(&client.release(id).await?, format, out);
    }
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let reply = client
        .release_matching(&text(&args.namespace), &text(&args.requester), &text(&args.provider))
        .await?;
    print_bulk_release(&reply, format, out)
}

/// What a bulk release did: `{"released": N, "cancelled": N, "entries": N}`
/// or one line.
pub fn print_bulk_release(reply: &api::ReleaseMatchingReply, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => print_json(
            &serde_json::json!({"released": reply.released, "cancelled": reply.cancelled, "entries": reply.entries}),
            out,
        ),
        OutputFormat::Table => {
            writeln!(
                out,
                "released {} allocations, cancelled {} queued requests ({} log entries)",
                reply.released, reply.cancelled, reply.entries
            )?;
            Ok(())
        }
    }
}

pub async fn renew(client: &Client, id: &str, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    print_allocation(&client.renew_lease(id).await?, format, out)
}

pub async fn get(client: &Client, id: &str, stale: bool, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let consistency = if stale { Consistency::Stale } else { Consistency::Linearizable };
    print_allocation(&client.get(id, consistency).await?, format, out)
}

/// One page with `--limit` or `--after`; else every page.
pub async fn list(client: &Client, args: ListArgs, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let records = if args.limit == 0 && args.after.is_none() {
        client.list_all(args.to_request()).await?
    } else {
        client.list(args.to_request()).await?
    };
    print_allocations(&records, format, out)
}
