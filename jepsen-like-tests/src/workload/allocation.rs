//! The allocation workload: free-form requests (cores, memory, GPUs) placed
//! by the table on any of a few providers, released later, sometimes sent
//! again unchanged (an idempotent retry on purpose), and linearizable reads
//! of every active allocation.
//!
//! About half the requests are `movable` ([`MOVABLE_SHARE`]): the table may
//! move them live (the `optimize` nemesis asks for plans and drains), and
//! the checkers hold them to their units only where they saw them.
//!
//! The namespace has a quota of [`QUOTA_CPU_CORES`] cores, below the
//! providers' total, set at setup ([`set_quota`]).
//!
//! With `--preemption` ([`PreemptionMix`]), preemption is on in the
//! namespace from priority [`PREEMPTOR_PRIORITY`]: a share of fresh
//! requests ([`PREEMPTOR_SHARE`]) are high-priority ones that may take the
//! units of lower-priority allocations when nothing fits (a provider's
//! both GPUs, most of its memory, or most of its cores), about half of the
//! ordinary requests say `on_preemption: release` and the rest are
//! requeued when preempted, each worker keeps its first ordinary request
//! and never releases it (so that some victims are unreleased at the
//! final read, where [`crate::checker::lost_allocation`] judges them), and
//! an admin process ([`run_quota_admin`])
//! sets the namespace's quota to one of [`QUOTA_CHANGE_LIMITS`] every
//! [`QUOTA_CHANGE_MEAN_MS`] or so: raised past the providers' cores, and
//! lowered, often below what the namespace holds (which must only hold new
//! grants back). The table's events are watched ([`crate::events`]) and
//! judged by [`crate::checker::quota_log`] and [`crate::checker::preemption`].
//!
//! Judged by [`crate::checker::double_allocation`], [`crate::checker::capacity`],
//! [`crate::checker::quota`],
//! [`crate::checker::lost_allocation`], [`crate::checker::idempotency`] and
//! [`crate::checker::stale_read`] (every read against the writes
//! acknowledged before it began).

use std::collections::BTreeMap;

use qm_client::convert::state_name;
use qm_client::proto::api::ListRequest;
use qm_client::{counting_attempts, Client, Error};
use qm_state_machine::quota::OnPreemption;
use qm_state_machine::{PreemptionSetting, ProviderRegistration, ResourceRequest, ResourceSpec, Sharing};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::Number;
use uuid::Uuid;

use super::providers::ProviderClients;
use super::{record_final_read, with_final_retries, write_failure, WorkerContext};
use crate::error::JepsenError;
use crate::history::{
    AllocateValue, HistoryRecorder, OpType, Payload, Process, QuotaValue, ReadValue, RecordView, ReleaseValue, RELEASE_NOT_FOUND,
};
use crate::workload::register::release_outcome;

/// Providers registered for this workload.
pub const PROVIDERS: usize = 3;
/// Exclusive CPU cores per provider.
pub const CORES_PER_PROVIDER: usize = 8;
/// Exclusive GPUs per provider.
pub const GPUS_PER_PROVIDER: usize = 2;
/// GB of divisible memory per provider.
pub const MEMORY_GB_PER_PROVIDER: i64 = 64;
/// Live (not known finished) requests a worker keeps at most; past this it releases.
pub const LIVE_REQUESTS_PER_WORKER_MAX: usize = 4;
/// Requests a worker remembers for resends; the oldest are forgotten first.
pub const REMEMBERED_REQUESTS_MAX: usize = 32;
/// The namespace the workers allocate in (their certificates' on a TLS run).
pub const QUOTA_NAMESPACE: &str = "default";
/// The kind the namespace's quota bounds.
pub const QUOTA_KIND: &str = "cpu_cores";
/// The namespace's quota of [`QUOTA_KIND`], set by the admin at setup: two
/// thirds of the providers' cores, so the quota (not capacity) is what
/// binds first under load, and [`crate::checker::quota`] checks it holds.
pub const QUOTA_CPU_CORES: u64 = (PROVIDERS * CORES_PER_PROVIDER) as u64 * 2 / 3;
/// Share of fresh requests that allow live moves (`movable`), drawn from
/// the worker's seeded generator: about half, so that optimization plans
/// and drains have allocations to move and pinned ones to leave alone.
pub const MOVABLE_SHARE: f64 = 0.5;
/// `--preemption`: requests of at least this priority may preempt in
/// [`QUOTA_NAMESPACE`] (its setting, made by the admin at setup). Ordinary
/// requests have priority 0 to 2, so every preemptor outranks every
/// ordinary allocation and no preemptor is ever a victim.
pub const PREEMPTOR_PRIORITY: i64 = 10;
/// `--preemption`: share of fresh requests that are preemptors.
pub const PREEMPTOR_SHARE: f64 = 0.15;
/// `--preemption`: share of ordinary requests that ask to be released for
/// good when preempted (`on_preemption: release`); the rest are requeued.
pub const RELEASE_ON_PREEMPTION_SHARE: f64 = 0.5;
/// `--preemption`: the quotas of [`QUOTA_KIND`] the admin switches between:
/// from a sixth of the providers' cores (below what the namespace usually
/// holds) to all of them (so that capacity, not the quota, binds and cores
/// get preempted too).
pub const QUOTA_CHANGE_LIMITS: [u64; 5] = [4, 8, QUOTA_CPU_CORES, 20, (PROVIDERS * CORES_PER_PROVIDER) as u64];
/// `--preemption`: mean time between two quota changes.
pub const QUOTA_CHANGE_MEAN_MS: u64 = 2_500;
/// The admin's process id in the history (plus one for each of its
/// operations that ended in `info`): far from the workers' and the final read's.
pub const ADMIN_PROCESS: u64 = 500_000_000;
/// Records per page of the final read.
pub const FINAL_READ_PAGE: u32 = 1_000;
/// Pages of the final read at most (bounds it at 100,000 records).
pub const FINAL_READ_PAGES_MAX: usize = 100;

/// One unit as registered, for the checkers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpec {
    pub provider_id: String,
    pub resource_id: String,
    pub kind: String,
    pub capacity: u64,
    pub exclusive: bool,
}

/// The providers this workload registers.
pub fn registrations() -> Vec<ProviderRegistration> {
    (0..PROVIDERS)
        .map(|provider| {
            let exclusive = |resource_id: String, kind: &str| ResourceSpec {
                resource_id,
                kind: kind.to_owned(),
                capacity: 1,
                labels: BTreeMap::new(),
                sharing: Some(Sharing::Exclusive),
            };
            let mut resources: Vec<ResourceSpec> = (0..CORES_PER_PROVIDER)
                .map(|core| exclusive(format!("cpu-{core}"), "cpu_cores"))
                .collect();
            resources.extend((0..GPUS_PER_PROVIDER).map(|gpu| exclusive(format!("gpu-{gpu}"), "gpu")));
            resources.push(ResourceSpec {
                resource_id: "mem".to_owned(),
                kind: "memory_gb".to_owned(),
                capacity: MEMORY_GB_PER_PROVIDER,
                labels: BTreeMap::new(),
                sharing: Some(Sharing::Divisible),
            });
            ProviderRegistration {
                provider_id: format!("jepsen-p{provider}"),
                labels: BTreeMap::new(),
                resources,
                confirms_allocations: false,
                address: None,
                port: None,
            }
        })
        .collect()
}

/// Every unit of [`registrations`].
pub fn unit_specs() -> Vec<UnitSpec> {
    registrations()
        .iter()
        .flat_map(|registration| {
            registration.resources.iter().map(|resource| UnitSpec {
                provider_id: registration.provider_id.clone(),
                resource_id: resource.resource_id.clone(),
                kind: resource.kind.clone(),
                capacity: resource.capacity as u64,
                exclusive: resource.sharing == Some(Sharing::Exclusive),
            })
        })
        .collect()
}

/// A request this worker sent.
struct OwnRequest {
    request: ResourceRequest,
    value: AllocateValue,
    /// Not known to be finished: acknowledged allocated or queued, or of unknown outcome.
    live: bool,
    /// `--preemption`: never released by the worker (a long-running job), so
    /// that preempted victims are still unreleased at the final read and
    /// the lost-allocation checks judge them as their requests asked.
    kept: bool,
}

/// Whether the worker mixes in preemptors (`--preemption`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreemptionMix {
    Off,
    On,
}

/// A preemptor's requirements: what only a whole provider (nearly) has,
/// so that under load it finds no room and takes lower-priority units.
fn preemptor_requirements(ctx: &mut WorkerContext) -> BTreeMap<String, u64> {
    match ctx.rng.gen_range(0..3) {
        0 => BTreeMap::from([("gpu".to_owned(), GPUS_PER_PROVIDER as u64)]),
        1 => BTreeMap::from([("memory_gb".to_owned(), ctx.rng.gen_range(40..=MEMORY_GB_PER_PROVIDER as u64))]),
        _ => BTreeMap::from([("cpu_cores".to_owned(), ctx.rng.gen_range(5..=CORES_PER_PROVIDER as u64))]),
    }
}

fn random_request(ctx: &mut WorkerContext, mix: PreemptionMix) -> (ResourceRequest, AllocateValue) {
    if mix == PreemptionMix::On && ctx.rng.gen_bool(PREEMPTOR_SHARE) {
        let requirements = preemptor_requirements(ctx);
        return build_request(ctx, requirements, PREEMPTOR_PRIORITY, false);
    }
    let mut requirements = BTreeMap::new();
    if ctx.rng.gen_bool(0.7) {
        requirements.insert("cpu_cores".to_owned(), ctx.rng.gen_range(1..=4u64));
    }
    if ctx.rng.gen_bool(0.5) {
        requirements.insert("memory_gb".to_owned(), ctx.rng.gen_range(1..=24u64));
    }
    if requirements.is_empty() || ctx.rng.gen_bool(0.1) {
        requirements.insert("gpu".to_owned(), 1);
    }
    let priority = ctx.rng.gen_range(0..=2i64);
    let release_on_preemption = mix == PreemptionMix::On && ctx.rng.gen_bool(RELEASE_ON_PREEMPTION_SHARE);
    build_request(ctx, requirements, priority, release_on_preemption)
}

fn build_request(
    ctx: &mut WorkerContext,
    requirements: BTreeMap<String, u64>,
    priority: i64,
    release_on_preemption: bool,
) -> (ResourceRequest, AllocateValue) {
    let movable = ctx.rng.gen_bool(MOVABLE_SHARE);
    let request_id = Uuid::new_v4().to_string();
    let request = ResourceRequest {
        request_id: Some(request_id.clone()),
        requester_id: Some(format!("jepsen-worker-{}", ctx.worker)),
        resource_requirements: Some(
            requirements
                .iter()
                .map(|(kind, quantity)| (kind.clone(), Number::from(*quantity)))
                .collect(),
        ),
        priority: Some(Number::from(priority)),
        movable: movable.then_some(true),
        on_preemption: release_on_preemption.then_some(OnPreemption::Release),
        ..Default::default()
    };
    let value = AllocateValue {
        request_id,
        requirements,
        priority,
        resend: false,
        movable,
        release_on_preemption,
        record: None,
        attempts: None,
    };
    (request, value)
}

/// Runs one worker until the time limit.
pub async fn run_worker(mut ctx: WorkerContext, mix: PreemptionMix) {
    let mut own: Vec<OwnRequest> = Vec::new();
    let mut kept_chosen = false;
    while !ctx.done() {
        let live: Vec<usize> = (0..own.len()).filter(|index| own[*index].live && !own[*index].kept).collect();
        let roll: f64 = ctx.rng.gen();
        if live.len() >= LIVE_REQUESTS_PER_WORKER_MAX || (roll < 0.3 && !live.is_empty()) {
            let index = *live.choose(&mut ctx.rng).expect("live requests");
            release(&mut ctx, &mut own[index]).await;
        } else if roll < 0.4 && !own.is_empty() {
            let index = ctx.rng.gen_range(0..own.len());
            allocate(&mut ctx, &mut own[index], true).await;
        } else if roll < 0.75 {
            let (request, value) = random_request(&mut ctx, mix);
            // The worker's first ordinary request of a preemption run is kept.
            let kept = mix == PreemptionMix::On && !kept_chosen && value.priority < PREEMPTOR_PRIORITY;
            kept_chosen |= kept;
            let mut fresh = OwnRequest {
                request,
                value,
                live: false,
                kept,
            };
            allocate(&mut ctx, &mut fresh, false).await;
            own.push(fresh);
            if own.len() > REMEMBERED_REQUESTS_MAX {
                // Forget the oldest finished request; live ones are kept to be released.
                if let Some(oldest) = own.iter().position(|request| !request.live) {
                    own.remove(oldest);
                }
            }
        } else {
            read(&mut ctx).await;
        }
        ctx.pace().await;
    }
}

async fn allocate(ctx: &mut WorkerContext, own: &mut OwnRequest, resend: bool) {
    let mut value = AllocateValue {
        resend,
        ..own.value.clone()
    };
    ctx.invoke(Payload::Allocate(value.clone()));
    let (answer, attempts) = counting_attempts(ctx.writer.allocate(own.request.clone())).await;
    value.attempts = Some(attempts);
    match answer {
        Ok(reply) => {
            let record = RecordView::from_reply(&reply);
            own.live = record.is_live();
            value.record = Some(record);
            ctx.complete(OpType::Ok, Payload::Allocate(value), None);
        }
        Err(error) => {
            let kind = write_failure(&error);
            // Maybe allocated: release it later to be sure.
            own.live |= kind == OpType::Info;
            ctx.complete(kind, Payload::Allocate(value), Some(error.to_string()));
        }
    }
}

async fn release(ctx: &mut WorkerContext, own: &mut OwnRequest) {
    let mut value = ReleaseValue {
        request_id: own.value.request_id.clone(),
        ..Default::default()
    };
    ctx.invoke(Payload::Release(value.clone()));
    let (answer, attempts) = counting_attempts(ctx.writer.release(&own.value.request_id)).await;
    value.attempts = Some(attempts);
    let (kind, error) = match answer {
        Ok(reply) => {
            value.outcome = Some(release_outcome(state_name(&reply), &reply.reason));
            value.record = Some(RecordView::from_reply(&reply));
            (OpType::Ok, None)
        }
        Err(Error::NotFound { message }) => {
            value.outcome = Some(RELEASE_NOT_FOUND.to_owned());
            (OpType::Ok, Some(message))
        }
        Err(error) => (write_failure(&error), Some(error.to_string())),
    };
    if kind == OpType::Ok {
        own.live = false;
    }
    ctx.complete(kind, Payload::Release(value), error);
}

async fn read(ctx: &mut WorkerContext) {
    ctx.invoke(Payload::Read(ReadValue::default()));
    let listed = ctx
        .reader
        .list(ListRequest {
            state: qm_client::proto::api::RequestState::Monitoring as i32,
            ..Default::default()
        })
        .await;
    match listed {
        Ok(records) => ctx.complete(
            OpType::Ok,
            Payload::Read(ReadValue {
                records: Some(records.iter().map(RecordView::from_reply).collect()),
                ..Default::default()
            }),
            None,
        ),
        Err(error) => ctx.complete(OpType::Fail, Payload::Read(ReadValue::default()), Some(error.to_string())),
    }
}

/// Every record the table remembers, page by page.
async fn read_everything(client: &Client) -> Result<Vec<RecordView>, Error> {
    let mut records: Vec<RecordView> = Vec::new();
    for _ in 0..FINAL_READ_PAGES_MAX {
        let page = client
            .list(ListRequest {
                after: records.last().map(|record| record.request_id.clone()).unwrap_or_default(),
                limit: FINAL_READ_PAGE,
                ..Default::default()
            })
            .await?;
        let complete = (page.len() as u32) < FINAL_READ_PAGE;
        records.extend(page.iter().map(RecordView::from_reply));
        if complete {
            return Ok(records);
        }
    }
    Err(Error::Unavailable {
        attempts: FINAL_READ_PAGES_MAX as u32,
        last_cause: format!("more than {} records", FINAL_READ_PAGES_MAX as u32 * FINAL_READ_PAGE),
    })
}

/// After the final heal: every record, read through `client`.
pub async fn final_read(client: &Client, history: &HistoryRecorder) -> bool {
    record_final_read(
        history,
        || read_everything(client),
        |invoked, records| ReadValue {
            records: Some(records),
            ..invoked
        },
    )
    .await
}

/// Sets the workers' namespace's quota ([`QUOTA_CPU_CORES`]) through the
/// admin's client (an admin's call on a TLS run), retrying while the
/// cluster settles.
pub async fn set_quota(admin: &Client) -> Result<(), JepsenError> {
    let limits = BTreeMap::from([(QUOTA_KIND.to_owned(), QUOTA_CPU_CORES)]);
    with_final_retries(|| admin.set_quota(QUOTA_NAMESPACE, &limits))
        .await
        .map_err(|error| JepsenError::Setup {
            reason: format!("setting the quota of {QUOTA_NAMESPACE}: {error}"),
        })?;
    Ok(())
}

/// `--preemption`: lets requests of [`PREEMPTOR_PRIORITY`] and above
/// preempt in the workers' namespace (the namespace's own setting, which
/// a consumer's watch of it sees too), through the admin's client.
pub async fn set_preemption(admin: &Client) -> Result<(), JepsenError> {
    let setting = PreemptionSetting::FromPriority(PREEMPTOR_PRIORITY);
    with_final_retries(|| admin.set_preemption(Some(QUOTA_NAMESPACE), Some(setting), false))
        .await
        .map_err(|error| JepsenError::Setup {
            reason: format!("turning preemption on in {QUOTA_NAMESPACE}: {error}"),
        })?;
    Ok(())
}

/// `--preemption`: the admin's process until `end`: every
/// [`QUOTA_CHANGE_MEAN_MS`] or so, sets the namespace's quota to another of
/// [`QUOTA_CHANGE_LIMITS`], recorded as a `set-quota` operation (`info`
/// when it may have taken effect, retiring the process id as a worker's).
pub async fn run_quota_admin(admin: Client, history: std::sync::Arc<HistoryRecorder>, seed: u64, end: tokio::time::Instant) {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x51f1_5eed_0000_0019);
    let mut process = ADMIN_PROCESS;
    let mut current = QUOTA_CPU_CORES;
    loop {
        let gap = std::time::Duration::from_millis(rng.gen_range(0..=2 * QUOTA_CHANGE_MEAN_MS));
        tokio::time::sleep_until((tokio::time::Instant::now() + gap).min(end)).await;
        if tokio::time::Instant::now() >= end {
            return;
        }
        let others: Vec<u64> = QUOTA_CHANGE_LIMITS.into_iter().filter(|limit| *limit != current).collect();
        let limit = *others.choose(&mut rng).expect("several limits");
        let mut value = QuotaValue {
            namespace: QUOTA_NAMESPACE.to_owned(),
            kind: QUOTA_KIND.to_owned(),
            limit,
            attempts: None,
        };
        history.invoke(Process::Client(process), Payload::SetQuota(value.clone()));
        let limits = BTreeMap::from([(QUOTA_KIND.to_owned(), limit)]);
        let (answer, attempts) = counting_attempts(admin.set_quota(QUOTA_NAMESPACE, &limits)).await;
        value.attempts = Some(attempts);
        let (kind, error) = match answer {
            Ok(_) => (OpType::Ok, None),
            Err(error) => (write_failure(&error), Some(error.to_string())),
        };
        history.record(kind, Process::Client(process), Payload::SetQuota(value), error);
        match kind {
            OpType::Ok => current = limit,
            OpType::Info => process += 1,
            _ => {}
        }
    }
}

/// Registers the providers, each through its own client: on a TLS run a
/// provider's certificate lets it register only itself (retrying while the
/// cluster settles).
pub async fn setup(providers: &ProviderClients) -> Result<(), JepsenError> {
    for registration in registrations() {
        let client = providers.client(&registration.provider_id);
        with_final_retries(|| client.register_provider(&registration))
            .await
            .map_err(|error| JepsenError::Setup {
                reason: format!("registering {}: {error}", registration.provider_id),
            })?;
    }
    Ok(())
}
