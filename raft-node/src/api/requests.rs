//! The requester's calls: allocate, release, renew, get, list.
//!
//! With TLS a consumer's calls are held to its namespace: an allocation
//! lands in it whatever the request says (naming another is refused), and
//! another namespace's records answer `NOT_FOUND`. A provider reads the
//! records placed on it.

use std::sync::Arc;
use std::time::Instant;

use qm_api::convert;
use qm_api::proto::api::{AllocateRequest, AllocationReply, GetRequest, ListReply, ListRequest, ReleaseRequest, RenewLeaseRequest};
use qm_api::wire::LIST_LIMIT_MAX;
use qm_state_machine::{
    AllocateOptions, AllocationRequest, Command, CommandError, CommandResponse, InvalidArgument, ListFilter, RequestRecord,
};
use tonic::Status;
use tracing::debug;

use super::access::require_visible;
use super::status::{invalid_argument, parse_uuid};
use crate::consensus::{Node, ProposeError};
use crate::security::{capability, Caller};

/// What the table answers for `request` without proposing it, if anything:
/// the record of a known request, or the refusal of an unknown provider.
async fn answer_from_table(node: &Node, request: &AllocationRequest, options: AllocateOptions) -> Option<Result<AllocationReply, Status>> {
    node.with_table(|table| {
        if let Some(provider_id) = &request.constraints.provider_id {
            if table.provider(provider_id).is_none() {
                return Some(Err(invalid_argument(&InvalidArgument::new(
                    "constraints.provider_id",
                    format!("unknown provider {provider_id}"),
                ))));
            }
        }
        table
            .get(request.request_id)
            // A different request (or options) under a known id is left to
            // the table, which refuses it (`RequestIdReused`).
            .filter(|record| {
                record.request == *request && record.movable == options.movable && record.on_preemption == options.on_preemption
            })
            .map(|record| Ok(convert::reply_from_record(record)))
    })
    .await
}

pub async fn allocate(node: &Node, caller: &Caller, call: AllocateRequest) -> Result<AllocationReply, Status> {
    let started = Instant::now();
    let mut wire = call
        .request
        .ok_or_else(|| invalid_argument(&InvalidArgument::new("request", "is required")))?;
    wire.namespace = caller.namespace_for(&wire.namespace)?;
    let (mut request, options) = convert::request_from_proto(&wire)
        .and_then(|request| Ok((request.validate()?, request.options())))
        .map_err(|invalid| invalid_argument(&invalid))?;
    node.require_leader()?;
    // The caller's capability first: a refusal proposes nothing. The
    // request's constraints come back narrowed to the providers allowed.
    let grant = node
        .with_table(|table| capability::check_allocate(table, caller, &mut request))
        .await?;
    // Answered from the table without a log entry: a retry of a known request
    // (its current record) and a constraint naming an unknown provider (the
    // refusal). Both are decided on this replica's applied table, which only
    // a read barrier makes current: a leader cut off from the majority still
    // believes it leads, and without the barrier it would answer a retry with
    // an allocation the majority has since released (found by qm-jepsen,
    // jepsen-like-tests/tests/stale_resend.rs). A new request that names a
    // known provider is the common case and needs no barrier: the table
    // checks it again when the entry is applied.
    if answer_from_table(node, &request, options).await.is_some() {
        node.read_barrier(false).await?;
        if let Some(answer) = answer_from_table(node, &request, options).await {
            return answer;
        }
    }
    let kinds: Vec<String> = request.requirements.iter().map(|r| r.kind.to_string()).collect();
    let (priority, requester_id, request_id) = (request.priority, request.requester_id.clone(), request.request_id);
    let command = match grant {
        Some(grant) => Command::AllocateUnderPolicy {
            request,
            on_preemption: options.on_preemption,
            movable: options.movable,
            grant,
        },
        None => Command::allocate(request, options),
    };
    let record = expect_record(node.propose(command).await.map_err(capability_refusal)?)?;
    let status = record.status.as_str();
    let reply = convert::reply_from_record(&record);
    node.metrics
        .observe_allocation(&kinds, priority, &requester_id, status, started.elapsed().as_secs_f64());
    // Debug, not info: one line per call on the hot path cost ~5% of the
    // leader's CPU at full load (BENCHMARKS.md); `QM_LOG=debug` shows them.
    debug!(correlation_id = %request_id, resource_id = %reply.provider_id, operation_type = "allocate", status, "allocate answered");
    Ok(reply)
}

pub async fn release(node: &Node, caller: &Caller, call: ReleaseRequest) -> Result<AllocationReply, Status> {
    let id = parse_uuid("id", &call.id)?;
    node.require_leader()?;
    require_visible(node, caller, id).await?;
    let record = expect_record(node.propose(Command::Release { id }).await?)?;
    debug!(correlation_id = %record.request.request_id, operation_type = "release", status = record.state.as_str(), "release answered");
    Ok(convert::reply_from_record(&record))
}

pub async fn renew_lease(node: &Node, caller: &Caller, call: RenewLeaseRequest) -> Result<AllocationReply, Status> {
    let id = parse_uuid("id", &call.id)?;
    node.require_leader()?;
    require_visible(node, caller, id).await?;
    let record = expect_record(node.propose(Command::RenewLease { id }).await?)?;
    Ok(convert::reply_from_record(&record))
}

pub async fn get(node: &Node, caller: &Caller, call: GetRequest) -> Result<AllocationReply, Status> {
    let id = parse_uuid("id", &call.id)?;
    node.read_barrier(call.stale).await?;
    node.with_table(|table| table.get(id).filter(|record| caller.sees(record)).map(convert::reply_from_record))
        .await
        .ok_or_else(|| Status::not_found(format!("no request or allocation with id {id}")))
}

pub async fn list(node: &Node, caller: &Caller, mut call: ListRequest) -> Result<ListReply, Status> {
    call.namespace = caller.namespace_for(&call.namespace)?;
    if !call.provider_id.is_empty() {
        caller.act_as_provider(&call.provider_id)?;
    }
    let filter = list_filter(&call)?;
    node.read_barrier(call.stale).await?;
    let records: Vec<AllocationReply> = node
        .with_table(|table| {
            // A consumer's namespace is in the filter already.
            if caller.provider().is_none() {
                return table.list(&filter).into_iter().map(convert::reply_from_record).collect();
            }
            // The limit applies to what the provider may see: the table's own
            // filter cannot express "placed on this provider, in any state".
            let unlimited = ListFilter {
                limit: 0,
                ..filter.clone()
            };
            table
                .list(&unlimited)
                .into_iter()
                .filter(|record| caller.sees(record))
                .take(filter.limit)
                .map(convert::reply_from_record)
                .collect()
        })
        .await;
    let next_after = match records.last() {
        Some(last) if records.len() == filter.limit => last.request_id.clone(),
        _ => String::new(),
    };
    Ok(ListReply { records, next_after })
}

fn list_filter(call: &ListRequest) -> Result<ListFilter, Status> {
    let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    let state = convert::state_from_wire("state", call.state).map_err(|_| {
        invalid_argument(&InvalidArgument::new(
            "state",
            format!(
                "{} is not a RequestState (0 for any state, 1-6 for queued, allocation, monitoring, deallocation, idle, error)",
                call.state
            ),
        ))
    })?;
    let after = match call.after.as_str() {
        "" => None,
        text => Some(parse_uuid("after", text)?),
    };
    if !call.requester_id.is_empty() && call.namespace.is_empty() {
        return Err(invalid_argument(&InvalidArgument::new(
            "requester_id",
            "needs namespace: requester ids are scoped by namespace",
        )));
    }
    let limit = match call.limit as usize {
        0 => LIST_LIMIT_MAX,
        limit => limit.min(LIST_LIMIT_MAX),
    };
    Ok(ListFilter {
        namespace: non_empty(&call.namespace),
        requester_id: non_empty(&call.requester_id),
        provider_id: non_empty(&call.provider_id),
        state,
        after,
        limit,
    })
}

/// A capability the table refused at apply (the holder's total) is a
/// `PERMISSION_DENIED` like the API's own refusals; everything else keeps
/// its usual form.
fn capability_refusal(error: ProposeError) -> Status {
    match error {
        ProposeError::Rejected(CommandError::CapabilityDenied { capability, detail }) => {
            Status::permission_denied(format!("capability {capability}: {detail} (checked when applied)"))
        }
        other => other.into(),
    }
}

/// The record a request-level command answers with (shared with the table
/// until the reply is built; not a copy).
fn expect_record(response: CommandResponse) -> Result<Arc<RequestRecord>, Status> {
    match response {
        CommandResponse::Request(record) => Ok(record),
        other => Err(Status::internal(format!("the table answered a request command with {other:?}"))),
    }
}
