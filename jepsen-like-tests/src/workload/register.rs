//! The register workload: one provider with `--units` exclusive units; every
//! request pins one unit (`constraints.resource_ids`), so each unit is an
//! independent lock-like register.
//!
//! * `acquire(u)`: allocate a fresh request pinned to `u`. Granted if `u` is
//!   free, queued behind its holder otherwise.
//! * `release(r)`: release request `r` (the holder lets go, and the unit goes
//!   to the first request queued for it) or cancel it while queued.
//! * `read`: a linearizable `list` of the active allocations: who holds each unit.
//!
//! A worker cancels its queued requests right away and keeps releasing any
//! request whose outcome it does not know, so the table's queue stays far
//! below the 64 entries it re-examines when a unit frees (see
//! [`crate::config::CONCURRENCY_MAX`]).

use std::collections::BTreeMap;

use qm_client::convert::state_name;
use qm_client::proto::api::ListRequest;
use qm_client::{counting_attempts, Client, Error};
use qm_state_machine::protocol::ConstraintsDocument;
use qm_state_machine::{ProviderRegistration, ResourceRequest, ResourceSpec, Sharing};
use rand::Rng;
use serde_json::Number;
use uuid::Uuid;

use super::providers::ProviderClients;
use super::{record_final_read, with_final_retries, write_failure, WorkerContext};
use crate::error::JepsenError;
use crate::history::{AcquireValue, HistoryRecorder, OpType, Payload, ReadValue, ReleaseValue, RELEASE_NOT_FOUND};

/// The provider whose units are the registers.
pub const PROVIDER_ID: &str = "jepsen-registers";
/// The kind of every unit.
pub const UNIT_KIND: &str = "lock";
/// Requests a worker may leave unresolved (queued, or of unknown outcome)
/// before it does nothing but release them.
pub const UNRESOLVED_PER_WORKER_MAX: usize = 3;
/// Releases of one unresolved request tried before the worker gives up on it.
pub const RELEASE_ATTEMPTS_MAX: u32 = 20;
/// Chance that a worker holding the unit it picked releases it (else reads).
pub const RELEASE_WHEN_HOLDING: f64 = 0.5;
/// Chance that a worker not holding the unit it picked acquires it (else reads).
pub const ACQUIRE_WHEN_FREE: f64 = 0.6;
/// Chance that a worker resends one of its acknowledged requests instead,
/// through its read client half the time (a client with another view of
/// who leads, as a requester retrying elsewhere would have).
pub const RESEND: f64 = 0.1;
/// Acknowledged requests a worker remembers for resends.
pub const REMEMBERED_REQUESTS_MAX: usize = 16;

pub fn unit_name(index: usize) -> String {
    format!("unit-{index}")
}

/// The provider registration: `units` exclusive units of capacity 1.
pub fn registration(units: usize) -> ProviderRegistration {
    ProviderRegistration {
        provider_id: PROVIDER_ID.to_owned(),
        labels: BTreeMap::new(),
        resources: (0..units)
            .map(|index| ResourceSpec {
                resource_id: unit_name(index),
                kind: UNIT_KIND.to_owned(),
                capacity: 1,
                labels: BTreeMap::new(),
                sharing: Some(Sharing::Exclusive),
            })
            .collect(),
        confirms_allocations: false,
        address: None,
        port: None,
    }
}

/// A request for one unit, pinned.
fn acquire_request(worker: usize, unit: &str, request_id: &str) -> ResourceRequest {
    ResourceRequest {
        request_id: Some(request_id.to_owned()),
        requester_id: Some(format!("jepsen-worker-{worker}")),
        resource_requirements: Some(BTreeMap::from([(UNIT_KIND.to_owned(), Number::from(1))])),
        priority: Some(Number::from(0)),
        constraints: Some(ConstraintsDocument {
            provider_id: Some(PROVIDER_ID.to_owned()),
            labels: BTreeMap::new(),
            resource_ids: vec![unit.to_owned()],
        }),
        ..Default::default()
    }
}

/// A request the worker must still release: queued, or of unknown outcome.
struct Unresolved {
    unit: String,
    request_id: String,
    attempts: u32,
}

/// One worker's view of its own requests.
#[derive(Default)]
struct Holdings {
    /// Unit → the worker's request holding it (acknowledged).
    held: BTreeMap<String, String>,
    unresolved: Vec<Unresolved>,
    /// Acknowledged requests, (unit, request id), the newest last.
    acknowledged: Vec<(String, String)>,
}

/// Runs one worker until the time limit.
pub async fn run_worker(mut ctx: WorkerContext, units: usize) {
    let mut holdings = Holdings::default();
    while !ctx.done() {
        if let Some(pending) = holdings.unresolved.first() {
            let (unit, request_id) = (pending.unit.clone(), pending.request_id.clone());
            release(&mut ctx, &mut holdings, &unit, &request_id).await;
        } else if !holdings.acknowledged.is_empty() && ctx.rng.gen_bool(RESEND) {
            let (unit, request_id) = holdings.acknowledged[ctx.rng.gen_range(0..holdings.acknowledged.len())].clone();
            resend(&mut ctx, &unit, &request_id).await;
        } else {
            let unit = unit_name(ctx.rng.gen_range(0..units));
            match holdings.held.get(&unit).cloned() {
                Some(request_id) if ctx.rng.gen_bool(RELEASE_WHEN_HOLDING) => release(&mut ctx, &mut holdings, &unit, &request_id).await,
                None if holdings.unresolved.len() < UNRESOLVED_PER_WORKER_MAX && ctx.rng.gen_bool(ACQUIRE_WHEN_FREE) => {
                    acquire(&mut ctx, &mut holdings, &unit).await
                }
                _ => read(&mut ctx, units).await,
            }
        }
        ctx.pace().await;
    }
}

async fn acquire(ctx: &mut WorkerContext, holdings: &mut Holdings, unit: &str) {
    let request_id = Uuid::new_v4().to_string();
    let mut value = AcquireValue {
        unit: unit.to_owned(),
        request_id: request_id.clone(),
        resend: false,
        status: None,
        attempts: None,
    };
    ctx.invoke(Payload::Acquire(value.clone()));
    let (answer, attempts) = counting_attempts(ctx.writer.allocate(acquire_request(ctx.worker, unit, &request_id))).await;
    value.attempts = Some(attempts);
    match answer {
        Ok(reply) => {
            let status = request_status(state_name(&reply), &reply.reason);
            match status.as_str() {
                "allocated" => {
                    holdings.held.insert(unit.to_owned(), request_id.clone());
                }
                // Cancel it right away: a lock is not waited for here.
                "queued" => holdings.unresolved.push(Unresolved {
                    unit: unit.to_owned(),
                    request_id: request_id.clone(),
                    attempts: 0,
                }),
                _ => {}
            }
            holdings.acknowledged.push((unit.to_owned(), request_id.clone()));
            if holdings.acknowledged.len() > REMEMBERED_REQUESTS_MAX {
                holdings.acknowledged.remove(0);
            }
            value.status = Some(status);
            ctx.complete(OpType::Ok, Payload::Acquire(value), None);
        }
        Err(error) => {
            let kind = write_failure(&error);
            if kind == OpType::Info {
                holdings.unresolved.push(Unresolved {
                    unit: unit.to_owned(),
                    request_id,
                    attempts: 0,
                });
            }
            ctx.complete(kind, Payload::Acquire(value), Some(error.to_string()));
        }
    }
}

async fn release(ctx: &mut WorkerContext, holdings: &mut Holdings, unit: &str, request_id: &str) {
    let mut value = ReleaseValue {
        request_id: request_id.to_owned(),
        unit: Some(unit.to_owned()),
        outcome: None,
        record: None,
        attempts: None,
    };
    ctx.invoke(Payload::Release(value.clone()));
    let (answer, attempts) = counting_attempts(ctx.writer.release(request_id)).await;
    value.attempts = Some(attempts);
    let (kind, error) = match answer {
        Ok(reply) => {
            value.outcome = Some(release_outcome(state_name(&reply), &reply.reason));
            (OpType::Ok, None)
        }
        Err(Error::NotFound { message }) => {
            value.outcome = Some(RELEASE_NOT_FOUND.to_owned());
            (OpType::Ok, Some(message))
        }
        Err(error) => (write_failure(&error), Some(error.to_string())),
    };
    ctx.complete(kind, Payload::Release(value), error);
    let resolved = kind == OpType::Ok;
    if resolved && holdings.held.get(unit).is_some_and(|held| held == request_id) {
        holdings.held.remove(unit);
    }
    holdings.unresolved.retain_mut(|pending| {
        if pending.request_id != request_id {
            return true;
        }
        pending.attempts += 1;
        !resolved && pending.attempts < RELEASE_ATTEMPTS_MAX
    });
    // A release of unknown outcome of a held unit: keep releasing it.
    if !resolved && holdings.held.get(unit).is_some_and(|held| held == request_id) {
        holdings.held.remove(unit);
        holdings.unresolved.push(Unresolved {
            unit: unit.to_owned(),
            request_id: request_id.to_owned(),
            attempts: 1,
        });
    }
}

/// Sends an acknowledged request again, unchanged, and records the status
/// the answer shows. It changes nothing: the table knows the request.
async fn resend(ctx: &mut WorkerContext, unit: &str, request_id: &str) {
    let mut value = AcquireValue {
        unit: unit.to_owned(),
        request_id: request_id.to_owned(),
        resend: true,
        status: None,
        attempts: None,
    };
    ctx.invoke(Payload::Acquire(value.clone()));
    let request = acquire_request(ctx.worker, unit, request_id);
    let client = match ctx.rng.gen_bool(0.5) {
        true => &ctx.reader,
        false => &ctx.writer,
    };
    let (answer, attempts) = counting_attempts(client.allocate(request)).await;
    value.attempts = Some(attempts);
    match answer {
        Ok(reply) => {
            value.status = Some(request_status(state_name(&reply), &reply.reason));
            ctx.complete(OpType::Ok, Payload::Acquire(value), None);
        }
        Err(error) => ctx.complete(write_failure(&error), Payload::Acquire(value), Some(error.to_string())),
    }
}

/// A request's status as the register model names it: `allocated` (active),
/// `queued`, `released`, `cancelled`, or the state itself.
pub fn request_status(state: &str, reason: &str) -> String {
    match state {
        "allocation" | "monitoring" => "allocated".to_owned(),
        "queued" => "queued".to_owned(),
        _ => release_outcome(state, reason),
    }
}

/// `released` (it held the unit), `cancelled` (it was queued), or the state
/// the record was found in.
pub fn release_outcome(state: &str, reason: &str) -> String {
    match (state, reason) {
        ("idle", "released") | ("deallocation", _) => "released".to_owned(),
        ("idle", "cancelled") => "cancelled".to_owned(),
        (state, _) => state.to_owned(),
    }
}

/// Who holds each unit, from a list of the active allocations.
async fn read_holders(client: &Client, units: usize) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let records = client
        .list(ListRequest {
            provider_id: PROVIDER_ID.to_owned(),
            state: qm_client::proto::api::RequestState::Monitoring as i32,
            ..Default::default()
        })
        .await?;
    let mut holders: BTreeMap<String, Vec<String>> = (0..units).map(|index| (unit_name(index), Vec::new())).collect();
    for record in records {
        for grant in &record.grants {
            holders
                .entry(grant.resource_id.clone())
                .or_default()
                .push(record.request_id.clone());
        }
    }
    for holding in holders.values_mut() {
        holding.sort();
    }
    Ok(holders)
}

async fn read(ctx: &mut WorkerContext, units: usize) {
    ctx.invoke(Payload::Read(ReadValue::default()));
    let (answer, attempts) = counting_attempts(read_holders(&ctx.reader, units)).await;
    match answer {
        Ok(holders) => ctx.complete(
            OpType::Ok,
            Payload::Read(ReadValue {
                holders: Some(holders),
                attempts: Some(attempts),
                ..Default::default()
            }),
            None,
        ),
        // A read changes nothing: if it did not answer, it did not happen.
        Err(error) => ctx.complete(OpType::Fail, Payload::Read(ReadValue::default()), Some(error.to_string())),
    }
}

/// After the final heal: who holds each unit, read through `client`.
pub async fn final_read(client: &Client, history: &HistoryRecorder, units: usize) -> bool {
    record_final_read(
        history,
        || read_holders(client, units),
        |invoked, holders| ReadValue {
            holders: Some(holders),
            ..invoked
        },
    )
    .await
}

/// Registers the provider through its own client (retrying while the cluster settles).
pub async fn setup(providers: &ProviderClients, units: usize) -> Result<(), JepsenError> {
    let registration = registration(units);
    let client = providers.client(PROVIDER_ID);
    with_final_retries(|| client.register_provider(&registration))
        .await
        .map(|_| ())
        .map_err(|error| JepsenError::Setup {
            reason: format!("registering {PROVIDER_ID}: {error}"),
        })
}
