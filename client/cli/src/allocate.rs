//! `qm allocate`: from the protocol's resource_request JSON or from flags.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, ValueEnum};
use qm_state_machine::protocol::ConstraintsDocument;
use qm_state_machine::{InvalidArgument, OnPreemption, PlacementPolicy, ResourceRequest};
use serde_json::Number;

use super::error::CliError;
use super::input::read_document;
use super::output::{print_allocation, OutputFormat};
use qm_client::Client;

/// Ask for resources. Prints the decision (allocated, queued or rejected) and
/// exits 0 whatever it is; with --wait, exits 1 unless the request is granted.
#[derive(Debug, Args)]
#[command(
    allow_negative_numbers = true,
    group(ArgGroup::new("flags").multiple(true).args([
        "requester", "cpu_cores", "memory_gb", "storage_gb", "gpu", "kinds", "priority",
        "deadline", "lease_ttl", "namespace", "provider", "labels", "placement", "request_id",
    ])),
)]
pub struct AllocateArgs {
    /// The protocol's resource_request JSON document; `-` reads it from stdin.
    #[arg(long, short, value_name = "FILE", conflicts_with = "flags", required_unless_present = "requester")]
    pub file: Option<PathBuf>,

    /// Who asks (the protocol's requester_id).
    #[arg(long)]
    pub requester: Option<String>,

    /// CPU cores (kind cpu_cores).
    #[arg(long, value_name = "N")]
    pub cpu_cores: Option<i64>,

    /// Memory in GB (kind memory_gb).
    #[arg(long, value_name = "N")]
    pub memory_gb: Option<i64>,

    /// Storage in GB (kind storage_gb).
    #[arg(long, value_name = "N")]
    pub storage_gb: Option<i64>,

    /// GPUs (kind gpu).
    #[arg(long, value_name = "N")]
    pub gpu: Option<i64>,

    /// Any kind, as KIND=N; repeat for several kinds.
    #[arg(long = "kind", value_name = "KIND=N", value_parser = parse_quantity)]
    pub kinds: Vec<(String, i64)>,

    /// Higher is more urgent. [default: 0]
    #[arg(long)]
    pub priority: Option<i64>,

    /// RFC 3339 datetime; a request still queued then is rejected.
    #[arg(long, value_name = "DATETIME")]
    pub deadline: Option<String>,

    /// Lease TTL in ms: the allocation expires unless renewed (`qm renew`) in time.
    #[arg(long, value_name = "MS")]
    pub lease_ttl: Option<u64>,

    /// Consumer namespace. [default: default]
    #[arg(long)]
    pub namespace: Option<String>,

    /// Place it on this provider only.
    #[arg(long, value_name = "PROVIDER_ID")]
    pub provider: Option<String>,

    /// Only providers with this label, as KEY=VALUE; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// How to choose among providers that fit. [default: best-fit]
    #[arg(long, value_enum)]
    pub placement: Option<PlacementArg>,

    /// The idempotency key (a uuid); a fresh one is generated when absent.
    #[arg(long, value_name = "UUID")]
    pub request_id: Option<String>,

    /// Wait for a queued request to be granted (or rejected).
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits (ms).
    #[arg(long, value_name = "MS", default_value_t = 60_000, requires = "wait")]
    pub wait_ms: u64,

    /// Show what the request would get now (allocated, queued or rejected,
    /// where, and which allocations it would preempt) without allocating.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Let the allocation be moved to another provider make-before-break
    /// (`qm optimize`); without it the allocation stays where it is placed.
    #[arg(long)]
    pub movable: bool,
    /// What happens to the allocation if a request of higher priority
    /// preempts it: back into the queue (the default) or released for good.
    #[arg(long, value_enum)]
    pub on_preemption: Option<OnPreemptionArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnPreemptionArg {
    /// Back into the queue, placed again when capacity frees.
    Requeue,
    /// Released for good: cheaper to resubmit than to wait.
    Release,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlacementArg {
    /// The provider with the least free capacity that still fits.
    BestFit,
    /// The provider with the most free capacity.
    Spread,
}

impl AllocateArgs {
    /// The request this command line describes, not validated yet (the
    /// client validates it, naming any bad field).
    pub fn to_request(&self, stdin: &mut dyn Read) -> Result<ResourceRequest, CliError> {
        if let Some(path) = &self.file {
            return Ok(ResourceRequest::from_json(&read_document(path, stdin)?)?);
        }
        let named = [
            ("cpu_cores", self.cpu_cores),
            ("memory_gb", self.memory_gb),
            ("storage_gb", self.storage_gb),
            ("gpu", self.gpu),
        ];
        let mut requirements = BTreeMap::new();
        let given = named
            .into_iter()
            .filter_map(|(kind, quantity)| Some((kind.to_owned(), quantity?)))
            .chain(self.kinds.iter().cloned());
        for (kind, quantity) in given {
            if requirements.insert(kind.clone(), Number::from(quantity)).is_some() {
                return Err(InvalidArgument::new(format!("resource_requirements.{kind}"), "is given twice").into());
            }
        }
        let has_constraints = self.provider.is_some() || !self.labels.is_empty();
        Ok(ResourceRequest {
            request_id: self.request_id.clone(),
            requester_id: self.requester.clone(),
            resource_requirements: Some(requirements),
            priority: Some(Number::from(self.priority.unwrap_or(0))),
            deadline: self.deadline.clone(),
            namespace: self.namespace.clone(),
            lease_ttl_ms: self.lease_ttl,
            constraints: has_constraints.then(|| ConstraintsDocument {
                provider_id: self.provider.clone(),
                labels: self.labels.iter().cloned().collect(),
                resource_ids: Vec::new(),
            }),
            placement: self.placement.map(|placement| match placement {
                PlacementArg::BestFit => PlacementPolicy::BestFit,
                PlacementArg::Spread => PlacementPolicy::Spread,
            }),
            movable: self.movable.then_some(true),
            on_preemption: self.on_preemption.map(|choice| match choice {
                OnPreemptionArg::Requeue => OnPreemption::Requeue,
                OnPreemptionArg::Release => OnPreemption::Release,
            }),
        })
    }
}

pub async fn run(client: &Client, args: AllocateArgs, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    let request = args.to_request(&mut std::io::stdin())?;
    if args.dry_run {
        let preview = client.preview_allocate(request).await?;
        return super::quota::print_preview(&preview, format, out);
    }
    let reply = if args.wait {
        client.allocate_and_wait(request, Duration::from_millis(args.wait_ms)).await?
    } else {
        client.allocate(request).await?
    };
    print_allocation(&reply, format, out)
}

fn parse_quantity(text: &str) -> Result<(String, i64), String> {
    let (kind, quantity) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KIND=N"))?;
    let quantity = quantity
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("{quantity:?} is not a whole number"))?;
    Ok((kind.trim().to_owned(), quantity))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.trim().to_owned(), value.to_owned()))
}
