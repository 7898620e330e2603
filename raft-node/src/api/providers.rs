//! The provider's and the monitor's calls.
//!
//! With TLS a provider acts only as the provider its certificate names, and
//! confirms only allocations placed on it.

use std::collections::BTreeMap;

use qm_api::convert;
use qm_api::proto::api::{
    AllocationReply, ConfirmRequest, DeregisterProviderRequest, HeartbeatReply, HeartbeatRequest, ListProvidersReply, ListProvidersRequest,
    OptimizeReply, OptimizeRequest, ProviderReply, ProviderSchedulingReply, RegisterProviderRequest, SetProviderSchedulingRequest,
    SystemStateReply, SystemStateRequest,
};
use qm_api::wire::PROVIDERS_PAGE_MAX;
use qm_state_machine::limits::DRAIN_DEADLINE_MS_MAX;
use qm_state_machine::{AllocationTable, Command, CommandError, CommandResponse, InvalidArgument, RequestState};
use tonic::Status;
use tracing::info;
use uuid::Uuid;

use super::access::require_visible;
use super::status::{self, invalid_argument, parse_uuid, require_id};
use crate::clock::now_ms;
use crate::consensus::{Node, ReportedMetrics};
use crate::security::Caller;

/// Resources a heartbeat may report metrics for; more is refused.
pub const HEARTBEAT_RESOURCES_MAX: usize = qm_state_machine::limits::RESOURCES_PER_PROVIDER_MAX;
/// Metrics per resource in one heartbeat.
pub const HEARTBEAT_METRICS_PER_RESOURCE_MAX: usize = 16;

pub async fn register(node: &Node, caller: &Caller, call: RegisterProviderRequest) -> Result<ProviderReply, Status> {
    caller.act_as_provider(&call.provider_id)?;
    let registration = convert::registration_from_proto(&call)
        .and_then(|registration| registration.validate())
        .map_err(|invalid| invalid_argument(&invalid))?;
    node.require_leader()?;
    let provider_id = registration.provider_id.clone();
    let response = node.propose(Command::RegisterProvider(registration)).await?;
    // Registering counts as being heard from.
    node.heartbeats
        .lock()
        .expect("heartbeat book")
        .record(&provider_id, now_ms(), ReportedMetrics::new());
    info!(resource_id = %provider_id, operation_type = "register_provider", status = "ok", "provider registered");
    provider_reply(response)
}

pub async fn heartbeat(node: &Node, caller: &Caller, call: HeartbeatRequest) -> Result<HeartbeatReply, Status> {
    caller.act_as_provider(&call.provider_id)?;
    require_id("provider_id", &call.provider_id)?;
    if call.resources.len() > HEARTBEAT_RESOURCES_MAX {
        return Err(invalid_argument(&InvalidArgument::new(
            "resources",
            format!("at most {HEARTBEAT_RESOURCES_MAX} resources per heartbeat"),
        )));
    }
    let mut metrics = ReportedMetrics::new();
    for (position, resource) in call.resources.into_iter().enumerate() {
        if resource.metrics.len() > HEARTBEAT_METRICS_PER_RESOURCE_MAX {
            return Err(invalid_argument(&InvalidArgument::new(
                format!("resources[{position}].metrics"),
                format!("at most {HEARTBEAT_METRICS_PER_RESOURCE_MAX} metrics per resource"),
            )));
        }
        if let Some((name, _)) = resource.metrics.iter().find(|(_, value)| !value.is_finite()) {
            return Err(invalid_argument(&InvalidArgument::new(
                format!("resources[{position}].metrics.{name}"),
                "must be a finite number",
            )));
        }
        metrics.insert(resource.resource_id, resource.metrics.into_iter().collect::<BTreeMap<_, _>>());
    }
    // Heartbeats live in the leader's memory only: a follower redirects.
    node.require_leader()?;
    let (status, revision) = node
        .with_table(|table| (table.provider(&call.provider_id).map(|provider| provider.status), table.revision()))
        .await;
    let Some(status) = status else {
        return Ok(HeartbeatReply {
            known: false,
            status: String::new(),
            revision,
        });
    };
    // A failed provider that heartbeats again is proposed as recovered by the leader's duties.
    node.heartbeats
        .lock()
        .expect("heartbeat book")
        .record(&call.provider_id, now_ms(), metrics);
    Ok(HeartbeatReply {
        known: true,
        status: convert::provider_status_name(status).to_owned(),
        revision,
    })
}

pub async fn deregister(node: &Node, caller: &Caller, call: DeregisterProviderRequest) -> Result<ProviderReply, Status> {
    caller.act_as_provider(&call.provider_id)?;
    require_id("provider_id", &call.provider_id)?;
    node.require_leader()?;
    let response = node
        .propose(Command::DeregisterProvider {
            provider_id: call.provider_id.clone(),
        })
        .await?;
    node.heartbeats.lock().expect("heartbeat book").forget(&call.provider_id);
    info!(resource_id = %call.provider_id, operation_type = "deregister_provider", status = "ok", "provider deregistered");
    provider_reply(response)
}

/// Cordons or opens a provider through the log.
pub async fn set_scheduling(node: &Node, call: SetProviderSchedulingRequest) -> Result<ProviderSchedulingReply, Status> {
    require_id("provider_id", &call.provider_id)?;
    let provider_id = call.provider_id.clone();
    let command = match call.scheduling.as_str() {
        "cordoned" | "open" => Command::CordonProvider {
            provider_id,
            cordon: call.scheduling == "cordoned",
        },
        "draining" => {
            if call.drain_deadline_ms == 0 || call.drain_deadline_ms > DRAIN_DEADLINE_MS_MAX {
                return Err(invalid_argument(&InvalidArgument::new(
                    "drain_deadline_ms",
                    format!("must be 1..={DRAIN_DEADLINE_MS_MAX} ms"),
                )));
            }
            Command::DrainProvider {
                provider_id,
                deadline_after_ms: call.drain_deadline_ms,
            }
        }
        other => {
            return Err(invalid_argument(&InvalidArgument::new(
                "scheduling",
                format!("must be cordoned, draining or open, not {}", qm_state_machine::error::quoted(other)),
            )))
        }
    };
    node.require_leader()?;
    let reply = match node.propose(command).await? {
        CommandResponse::Scheduling { provider_id, scheduling } => ProviderSchedulingReply {
            provider_id,
            scheduling: scheduling.as_str().to_owned(),
            ..ProviderSchedulingReply::default()
        },
        CommandResponse::Drain {
            provider_id,
            moving,
            cannot_move,
            ..
        } => ProviderSchedulingReply {
            provider_id,
            scheduling: "draining".to_owned(),
            moving: moving.iter().map(convert::planned_move_to_proto).collect(),
            cannot_move: cannot_move
                .iter()
                .map(|unmovable| format!("{}: {}", unmovable.allocation_id, unmovable.reason))
                .collect(),
        },
        other => return Err(Status::internal(format!("the table answered a cordon with {other:?}"))),
    };
    info!(resource_id = %reply.provider_id, operation_type = reply.scheduling.as_str(), status = "ok", "provider scheduling set");
    Ok(reply)
}

/// An optimization plan through the log, or (`dry_run`) computed on this
/// replica's table without a log entry.
pub async fn optimize(node: &Node, call: OptimizeRequest) -> Result<OptimizeReply, Status> {
    let moves = if call.dry_run {
        node.read_barrier(call.stale).await?;
        node.with_table(|table| table.optimization_plan_preview()).await
    } else {
        node.require_leader()?;
        match node.propose(Command::Optimize).await? {
            CommandResponse::Plan(moves) => moves,
            other => return Err(Status::internal(format!("the table answered a plan with {other:?}"))),
        }
    };
    info!(
        operation_type = "optimize",
        dry_run = call.dry_run,
        moves = moves.len(),
        status = "ok",
        "optimization plan"
    );
    Ok(OptimizeReply {
        moves: moves.iter().map(convert::planned_move_to_proto).collect(),
        dry_run: call.dry_run,
    })
}

pub async fn list(node: &Node, call: ListProvidersRequest) -> Result<ListProvidersReply, Status> {
    let limit = match call.limit as usize {
        0 => PROVIDERS_PAGE_MAX,
        limit => limit.min(PROVIDERS_PAGE_MAX),
    };
    node.read_barrier(call.stale).await?;
    let providers: Vec<qm_api::proto::api::ProviderInfo> = node
        .with_table(|table| {
            let book = node.heartbeats.lock().expect("heartbeat book");
            table
                .providers()
                .filter(|provider| call.after.is_empty() || provider.provider_id.as_str() > call.after.as_str())
                .take(limit)
                .map(|provider| {
                    let mut info = convert::provider_to_proto(provider);
                    info.allocations = table
                        .list(&qm_state_machine::ListFilter {
                            provider_id: Some(provider.provider_id.to_string()),
                            ..Default::default()
                        })
                        .len() as u64;
                    info.last_heartbeat_ms = book.last_seen_ms(&provider.provider_id);
                    info.leaving = table.deregistering(&provider.provider_id);
                    if let Some(reported) = book.metrics(&provider.provider_id) {
                        for resource in &mut info.resources {
                            if let Some(metrics) = reported.get(&resource.resource_id) {
                                resource.metrics = metrics.iter().map(|(name, value)| (name.clone(), *value)).collect();
                            }
                        }
                    }
                    info
                })
                .collect()
        })
        .await;
    let next_after = match providers.last() {
        Some(last) if providers.len() == limit => last.provider_id.clone(),
        _ => String::new(),
    };
    Ok(ListProvidersReply { providers, next_after })
}

pub async fn confirm(node: &Node, caller: &Caller, call: ConfirmRequest) -> Result<AllocationReply, Status> {
    caller.act_as_provider(&call.provider_id)?;
    let allocation_id = parse_uuid("allocation_id", &call.allocation_id)?;
    require_id("provider_id", &call.provider_id)?;
    node.require_leader()?;
    // A preempted allocation's release is confirmed by the provider it was
    // taken from, though it is queued or placed elsewhere by now: its
    // preemptor waits for exactly this (the table checks it again).
    let preempted_here = call.deallocation && node.with_table(|table| table.is_awaited(allocation_id, &call.provider_id)).await;
    if !preempted_here {
        // Another provider's allocation is answered as unknown, not as placed
        // elsewhere: a provider does not learn what it does not host.
        require_visible(node, caller, allocation_id).await?;
        // Answered without a log entry when the table already shows the outcome:
        // an agent retrying a confirmation, or probing records that may be
        // another provider's, costs the log nothing.
        if let Some(answer) = confirm_answered(node, allocation_id, &call).await {
            return answer;
        }
    }
    let command = match call.deallocation {
        false => Command::ConfirmAllocation {
            allocation_id,
            provider_id: call.provider_id,
        },
        true => Command::ConfirmDeallocation {
            allocation_id,
            provider_id: call.provider_id,
        },
    };
    match node.propose(command).await? {
        CommandResponse::Request(record) => Ok(convert::reply_from_record(&record)),
        other => Err(Status::internal(format!("the table answered a confirmation with {other:?}"))),
    }
}

/// The answer to a confirmation if the table already gives it: the record
/// when it is in the confirmed state, the refusal when the allocation is
/// unknown or placed on another provider; `None` when it must be proposed.
/// A refusal is only given after a read barrier, so that an allocation moved
/// to this provider by an entry the leader has committed but not applied yet
/// is not refused.
async fn confirm_answered(node: &Node, allocation_id: Uuid, call: &ConfirmRequest) -> Option<Result<AllocationReply, Status>> {
    match node.with_table(|table| confirm_outcome(table, allocation_id, call)).await? {
        Ok(reply) => return Some(Ok(reply)),
        Err(_) => {
            if let Err(error) = node.read_barrier(false).await {
                return Some(Err(error.into()));
            }
        }
    }
    match node.with_table(|table| confirm_outcome(table, allocation_id, call)).await? {
        Ok(reply) => Some(Ok(reply)),
        Err(refusal) => Some(Err(status::command_error(&refusal))),
    }
}

/// What the table would answer a confirmation without changing, if anything;
/// the same checks, in the same order, as the table's own.
fn confirm_outcome(table: &AllocationTable, allocation_id: Uuid, call: &ConfirmRequest) -> Option<Result<AllocationReply, CommandError>> {
    let Some(record) = table.get(allocation_id) else {
        return Some(Err(CommandError::NotFound { id: allocation_id }));
    };
    // A move's confirmations come from its target and its source, not only
    // from where it is placed: the table decides them.
    if record.state == RequestState::Optimization {
        return None;
    }
    let placed_on = record.placement.as_ref().map(|placement| placement.provider_id.as_str());
    if placed_on != Some(call.provider_id.as_str()) {
        return Some(Err(CommandError::WrongProvider {
            allocation_id: record.allocation_id(),
            claimed: call.provider_id.clone(),
            actual: placed_on.unwrap_or("no provider").to_owned(),
        }));
    }
    let confirmed_state = if call.deallocation {
        RequestState::Idle
    } else {
        RequestState::Monitoring
    };
    (record.state == confirmed_state).then(|| Ok(convert::reply_from_record(record)))
}

/// The monitor's view, its provider rows a page at a time (at most
/// [`PROVIDERS_PAGE_MAX`]); see [`page_provider_rows`].
pub async fn system_state(node: &Node, call: SystemStateRequest) -> Result<SystemStateReply, Status> {
    node.read_barrier(call.stale).await?;
    let mut reply = node.with_table(|table| convert::usage_to_proto(&table.usage())).await;
    page_provider_rows(&mut reply, &call.providers_after, call.providers_limit as usize);
    Ok(reply)
}

/// Every provider row at once, for the HTTP view.
pub async fn system_state_whole(node: &Node, stale: bool) -> Result<SystemStateReply, Status> {
    node.read_barrier(stale).await?;
    Ok(node.with_table(|table| convert::usage_to_proto(&table.usage())).await)
}

/// Keeps the provider rows after `after` (rows are in provider id order),
/// at most `limit` of them (0, or past [`PROVIDERS_PAGE_MAX`]: that many),
/// and sets the token when more follow.
pub fn page_provider_rows(reply: &mut SystemStateReply, after: &str, limit: usize) {
    let limit = match limit {
        0 => PROVIDERS_PAGE_MAX,
        limit => limit.min(PROVIDERS_PAGE_MAX),
    };
    debug_assert!(reply.providers.windows(2).all(|pair| pair[0].provider_id < pair[1].provider_id));
    let first = reply
        .providers
        .partition_point(|row| !after.is_empty() && row.provider_id.as_str() <= after);
    let rest = reply.providers.len() - first;
    reply.providers.drain(..first);
    reply.providers.truncate(limit);
    reply.providers_next_after = match reply.providers.last() {
        Some(last) if rest > limit => last.provider_id.clone(),
        _ => String::new(),
    };
}

fn provider_reply(response: CommandResponse) -> Result<ProviderReply, Status> {
    match response {
        CommandResponse::Provider {
            provider_id,
            status,
            resources,
        } => Ok(ProviderReply {
            provider_id,
            status: convert::provider_status_name(status).to_owned(),
            resources,
        }),
        CommandResponse::ProviderRemoved { provider_id } => Ok(ProviderReply {
            provider_id,
            status: "removed".to_owned(),
            resources: 0,
        }),
        other => Err(Status::internal(format!("the table answered a provider command with {other:?}"))),
    }
}

#[cfg(test)]
mod system_state_paging_tests {
    use super::*;
    use qm_api::proto::api::ProviderUsage;

    fn reply_with(ids: &[&str]) -> SystemStateReply {
        SystemStateReply {
            providers: ids
                .iter()
                .map(|id| ProviderUsage {
                    provider_id: (*id).to_owned(),
                    ..Default::default()
                })
                .collect(),
            queue_len: 7,
            ..Default::default()
        }
    }

    fn page(after: &str, limit: usize) -> (Vec<String>, String) {
        let mut reply = reply_with(&["a", "b", "c", "d", "e"]);
        page_provider_rows(&mut reply, after, limit);
        assert_eq!(7, reply.queue_len, "the rest of the reply is whole");
        let ids = reply.providers.into_iter().map(|row| row.provider_id).collect();
        (ids, reply.providers_next_after)
    }

    #[test]
    fn provider_rows_come_a_page_at_a_time_with_a_token_while_more_follow() {
        assert_eq!((vec!["a".to_owned(), "b".to_owned()], "b".to_owned()), page("", 2));
        assert_eq!((vec!["c".to_owned(), "d".to_owned()], "d".to_owned()), page("b", 2));
        assert_eq!((vec!["e".to_owned()], String::new()), page("d", 2));
        assert_eq!(
            (vec!["d".to_owned(), "e".to_owned()], String::new()),
            page("c", 2),
            "an exact last page has no token"
        );
        assert_eq!((Vec::<String>::new(), String::new()), page("e", 2));
        assert_eq!(
            (vec!["c".to_owned(), "d".to_owned(), "e".to_owned()], String::new()),
            page("bb", 0),
            "after an id that is gone"
        );
    }

    #[test]
    fn no_page_is_larger_than_the_maximum() {
        let ids: Vec<String> = (0..PROVIDERS_PAGE_MAX + 3).map(|n| format!("p{n:06}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        for limit in [0, PROVIDERS_PAGE_MAX + 1, usize::MAX] {
            let mut reply = reply_with(&refs);
            page_provider_rows(&mut reply, "", limit);
            assert_eq!(PROVIDERS_PAGE_MAX, reply.providers.len());
            assert_eq!(ids[PROVIDERS_PAGE_MAX - 1], reply.providers_next_after);
        }
    }
}
