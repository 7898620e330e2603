//! [`Client`]: every call of the public API, with leader discovery, redirects
//! and failover.
//!
//! Each call runs `ClientInner::call`, which sends and sleeps as the call's
//! `CallPlan` (`call_plan.rs`) decides: try the believed leader (else the
//! first replica); on a NotLeader answer go straight to the replica it names;
//! on a timeout, an unavailable replica or a connection error, back off and
//! try the next replica that has not failed yet in this call, at most
//! `retries_max` times. A NotLeader answer that names no leader, or names
//! one that already failed (followers name a dead leader until they elect
//! another), means an election is under way: wait 0-[`LEADER_WAIT_MS_MAX`] ms and ask
//! the next replica, at most [`LEADER_WAITS_MAX`] times. All within `request_timeout_ms`. Every attempt sends the same message, so a retried
//! allocation carries the same `request_id` and the table answers it with
//! the first attempt's record instead of allocating again.

use std::cell::Cell;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use qm_state_machine::{ProviderRegistration, ResourceRequest};
use tokio::time::Instant;
use uuid::Uuid;

use crate::call_plan::{CallKind, CallPlan, Step};
use crate::config::{ClientConfig, ConfigError};
pub use crate::consistency::Consistency;
use crate::convert::{registration_to_proto, request_to_proto, state_name, status_name};
use crate::error::Error;
use crate::failure::Failure;
use crate::leader_check;
use crate::membership::{self, MembershipChange, MembershipError};
use crate::proto::api;
use crate::proto::api::pipelined_call::Call as PipelinedRequest;
use crate::replicas::{KnownReplica, Replica, ReplicaSet};

pub use crate::call_plan::{LEADER_WAITS_MAX, LEADER_WAIT_MS_MAX, REDIRECTS_MAX};

/// Longest pause between two polls of a queued request in `allocate_and_wait`.
pub const WAIT_POLL_MS_MAX: u64 = 1_000;

/// Log entries one `ReleaseMatching` call of [`Client::release_matching`]
/// asks for (at most 1,024 releases each): a few dozen commits, well inside
/// the default attempt timeout of 2 s, so a million releases are some thirty
/// calls that each finish, rather than one that a timeout cuts short.
pub const RELEASE_MATCHING_ENTRIES_PER_CALL: u32 = 32;
/// Calls [`Client::release_matching`] makes at most: each moves strictly
/// forward in request-id order, so this is only a backstop against a
/// namespace that keeps filling as fast as it is emptied (some four billion
/// releases).
pub const RELEASE_MATCHING_CALLS_MAX: usize = 131_072;
/// Times [`Client::release_matching`] asks again, from where the last
/// answered call stopped, after a call whose outcome is unknown (cut off by
/// a timeout or a failover): a repeat releases only what is left, so asking
/// again is safe. Counted over the whole release.
pub const RELEASE_MATCHING_UNKNOWN_RETRIES_MAX: u32 = 16;

/// Which confirmation a provider's agent sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// The protocol's AllocationConfirmed: the units are handed over.
    Allocation,
    /// The protocol's DeallocationConfirmed: the units are taken back.
    Deallocation,
}

/// A handle on the cluster. Cheap to clone; clones share connections and the
/// believed leader. Create it inside a Tokio runtime.
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

/// What clones of a [`Client`] and its background tasks share.
#[derive(Debug)]
pub(crate) struct ClientInner {
    pub(crate) config: ClientConfig,
    pub(crate) replicas: ReplicaSet,
    /// Who leads, asked of the replicas while an attempt goes unanswered
    /// (`leader_check.rs`), shared by the client's calls.
    pub(crate) leader_checks: leader_check::LeaderChecks,
    /// The membership refresh task (`membership.rs`), stopped with the client.
    refresh_task: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        if let Some(task) = self.refresh_task.get() {
            task.abort();
        }
    }
}

tokio::task_local! {
    /// Attempts of the calls made inside [`counting_attempts`].
    static CALL_ATTEMPTS: Cell<u32>;
}

/// Runs `calls` and counts the attempts its calls sent to replicas (a
/// redirect to the named leader is an attempt too). A history checker
/// reads one attempt as "the answer describes the moment the call took
/// effect"; more may mean a retry answered from a later state.
pub async fn counting_attempts<F: Future>(calls: F) -> (F::Output, u32) {
    CALL_ATTEMPTS
        .scope(Cell::new(0), async {
            let output = calls.await;
            (output, CALL_ATTEMPTS.with(Cell::get))
        })
        .await
}

impl Client {
    /// A client for `config`'s replicas; connects lazily, on the first call.
    /// Starts the membership refresh, which reads the members at once and
    /// then every `membership_refresh_interval_ms`.
    pub fn new(config: ClientConfig) -> Result<Client, ConfigError> {
        config.validate()?;
        let replicas = ReplicaSet::new(&config)?;
        let inner = Arc::new(ClientInner {
            config,
            replicas,
            leader_checks: leader_check::LeaderChecks::default(),
            refresh_task: OnceLock::new(),
        });
        if inner.config.follow_membership {
            let task = membership::spawn(&inner);
            inner.refresh_task.set(task).expect("set once, here");
        }
        Ok(Client { inner })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The replica the client last saw acting as leader, if any.
    pub fn leader_addr(&self) -> Option<String> {
        self.inner.replicas.leader_addr()
    }

    /// The replicas this client knows, in the order its calls try them:
    /// its seeds (the configured endpoints) and the members it has read.
    pub fn known_replicas(&self) -> Vec<KnownReplica> {
        self.inner.replicas.known()
    }

    /// Reads the cluster's membership now and follows it (the refresh task
    /// does this on its own; this is for a caller that wants it done first).
    /// Done even when `follow_membership` is off: asked for, it is done.
    pub async fn refresh_membership(&self) -> Result<MembershipChange, MembershipError> {
        membership::refresh(&self.inner).await
    }

    // --- requesters

    /// Asks for resources. A request without `request_id` gets a fresh uuid
    /// (v4). The request is validated here first, so bad input fails fast
    /// with the field named, as the server would name it. A request the table
    /// rejects is not an error: the reply's status is `rejected`.
    pub async fn allocate(&self, mut request: ResourceRequest) -> Result<api::AllocationReply, Error> {
        let request_id = request.request_id.get_or_insert_with(|| Uuid::new_v4().to_string()).clone();
        request.validate()?;
        let message = PipelinedRequest::Allocate(api::AllocateRequest {
            request: Some(request_to_proto(&request)),
        });
        let reply = self
            .inner
            .call("allocate", CallKind::Write, message, |replica, request| async move {
                replica.write(request).await
            })
            .await;
        reply.map_err(|error| match error {
            Error::Unknown { last_cause, .. } => Error::Unknown {
                request_id: Some(request_id),
                last_cause,
            },
            other => other,
        })
    }

    /// Allocates and, if the request is queued, waits up to `wait` for it to
    /// be granted (polling `get` with a growing pause). Returns the granted
    /// reply; [`Error::Rejected`] if it is rejected or cancelled meanwhile;
    /// [`Error::StillQueued`] when `wait` runs out first (it stays queued).
    pub async fn allocate_and_wait(&self, request: ResourceRequest, wait: Duration) -> Result<api::AllocationReply, Error> {
        let started = Instant::now();
        let mut reply = self.allocate(request).await?;
        // Polls need no jitter to stay apart, only a bound on how often they come.
        let mut pause_ms = self.inner.config.backoff_base_ms.min(WAIT_POLL_MS_MAX);
        loop {
            match (reply.status(), reply.state()) {
                (api::AllocationStatus::Allocated, _) => return Ok(reply),
                (api::AllocationStatus::Queued, api::RequestState::Queued) => {}
                _ => {
                    let reason = if reply.reason.is_empty() {
                        format!("it is {} ({})", state_name(&reply), status_name(&reply))
                    } else {
                        reply.reason
                    };
                    return Err(Error::Rejected {
                        request_id: reply.request_id,
                        reason,
                    });
                }
            }
            let remaining = wait.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(Error::StillQueued {
                    request_id: reply.request_id,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(pause_ms).min(remaining)).await;
            pause_ms = (pause_ms * 2).min(WAIT_POLL_MS_MAX);
            match self.get(&reply.request_id, Consistency::Linearizable).await {
                Ok(newer) => reply = newer,
                // A failover while waiting: the request is still where it was.
                Err(Error::Unavailable { .. }) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Releases an allocation (or cancels a queued request) by allocation id
    /// or request id. Releasing again answers the same record.
    pub async fn release(&self, id: &str) -> Result<api::AllocationReply, Error> {
        let message = PipelinedRequest::Release(api::ReleaseRequest { id: checked_id("id", id)? });
        self.inner
            .call("release", CallKind::Write, message, |replica, request| async move {
                replica.write(request).await
            })
            .await
    }

    /// Releases every active allocation and cancels every queued request
    /// matching all the non-empty fields (a requester needs its namespace),
    /// in calls of [`RELEASE_MATCHING_ENTRIES_PER_CALL`] log entries, each
    /// continuing where the last stopped, until none is left. Safe to retry:
    /// a repeat releases what is left, so a call whose outcome is unknown is
    /// asked again (at most [`RELEASE_MATCHING_UNKNOWN_RETRIES_MAX`] times).
    /// Answers the totals (a call cut off after some of its entries
    /// committed leaves their releases out of them).
    pub async fn release_matching(
        &self,
        namespace: &str,
        requester_id: &str,
        provider_id: &str,
    ) -> Result<api::ReleaseMatchingReply, Error> {
        let mut total = api::ReleaseMatchingReply::default();
        let mut after = String::new();
        let mut unknown_retries = 0;
        for _ in 0..RELEASE_MATCHING_CALLS_MAX {
            let message = api::ReleaseMatchingRequest {
                namespace: namespace.to_owned(),
                requester_id: requester_id.to_owned(),
                provider_id: provider_id.to_owned(),
                after: after.clone(),
                entries_max: RELEASE_MATCHING_ENTRIES_PER_CALL,
            };
            let reply = match self
                .inner
                .call("release_matching", CallKind::Write, message, |replica, request| async move {
                    replica.client().release_matching(request).await
                })
                .await
            {
                Err(error) if error.is_unknown() && unknown_retries < RELEASE_MATCHING_UNKNOWN_RETRIES_MAX => {
                    unknown_retries += 1;
                    tracing::warn!(%error, unknown_retries, "bulk release: outcome of a call unknown; asking again from where the last one stopped");
                    continue;
                }
                outcome => outcome?,
            };
            total.released += reply.released;
            total.cancelled += reply.cancelled;
            total.entries += reply.entries;
            if reply.next.is_empty() {
                break;
            }
            after = reply.next;
        }
        Ok(total)
    }

    /// Extends an allocation's lease by its TTL from now.
    pub async fn renew_lease(&self, id: &str) -> Result<api::AllocationReply, Error> {
        let message = PipelinedRequest::RenewLease(api::RenewLeaseRequest { id: checked_id("id", id)? });
        self.inner
            .call("renew_lease", CallKind::Write, message, |replica, request| async move {
                replica.write(request).await
            })
            .await
    }

    /// A request's record, by request id or allocation id.
    pub async fn get(&self, id: &str, consistency: Consistency) -> Result<api::AllocationReply, Error> {
        let message = api::GetRequest {
            id: checked_id("id", id)?,
            stale: consistency.is_stale(),
        };
        self.inner
            .call("get", CallKind::Read(consistency), message, |replica, request| async move {
                replica.client().get(request).await
            })
            .await
    }

    /// Requests matching `filter` (empty fields match everything), sorted by
    /// request id, at most `filter.limit` (0: the server's maximum); page
    /// with `filter.after`.
    pub async fn list(&self, filter: api::ListRequest) -> Result<Vec<api::AllocationReply>, Error> {
        let consistency = if filter.stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        let reply = self
            .inner
            .call("list", CallKind::Read(consistency), filter, |replica, request| async move {
                replica.client().list(request).await
            })
            .await?;
        Ok(reply.records)
    }

    /// Every request matching `filter`, paging with its continuation token
    /// (`filter.limit` records a page, 0: the server's maximum) from
    /// `filter.after`. Each record comes once, in request id order; a
    /// linearizable read is linearizable per page, not across pages.
    pub async fn list_all(&self, mut filter: api::ListRequest) -> Result<Vec<api::AllocationReply>, Error> {
        let consistency = if filter.stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        let mut records = Vec::new();
        for _ in 0..LIST_PAGES_MAX {
            let reply = self
                .inner
                .call("list", CallKind::Read(consistency), filter.clone(), |replica, request| async move {
                    replica.client().list(request).await
                })
                .await?;
            records.extend(reply.records);
            if reply.next_after.is_empty() {
                return Ok(records);
            }
            filter.after = reply.next_after;
        }
        Err(too_many_pages())
    }

    // --- providers

    /// Registers a provider, or updates one already registered. Validated here
    /// first, so bad input fails fast with the field named.
    pub async fn register_provider(&self, registration: &ProviderRegistration) -> Result<api::ProviderReply, Error> {
        registration.clone().validate()?;
        let message = registration_to_proto(registration);
        self.inner
            .call("register_provider", CallKind::Write, message, |replica, request| async move {
                replica.client().register_provider(request).await
            })
            .await
    }

    /// Tells the leader the provider is alive, with optional usage metrics.
    pub async fn heartbeat(&self, provider_id: &str, resources: Vec<api::ResourceMetrics>) -> Result<api::HeartbeatReply, Error> {
        let message = api::HeartbeatRequest {
            provider_id: provider_id.to_owned(),
            resources,
        };
        self.inner
            .call("heartbeat", CallKind::Write, message, |replica, request| async move {
                replica.client().heartbeat(request).await
            })
            .await
    }

    /// Removes a provider; its allocations are moved elsewhere or queued.
    pub async fn deregister_provider(&self, provider_id: &str) -> Result<api::ProviderReply, Error> {
        let message = api::DeregisterProviderRequest {
            provider_id: provider_id.to_owned(),
        };
        self.inner
            .call("deregister_provider", CallKind::Write, message, |replica, request| async move {
                replica.client().deregister_provider(request).await
            })
            .await
    }

    /// Cordons a provider (`cordon`: no new placements, what it holds
    /// stays) or opens it again; an admin's call under TLS.
    pub async fn set_provider_scheduling(&self, provider_id: &str, cordon: bool) -> Result<api::ProviderSchedulingReply, Error> {
        let message = api::SetProviderSchedulingRequest {
            provider_id: provider_id.to_owned(),
            scheduling: if cordon { "cordoned" } else { "open" }.to_owned(),
            drain_deadline_ms: 0,
        };
        self.inner
            .call("set_provider_scheduling", CallKind::Write, message, |replica, request| async move {
                replica.client().set_provider_scheduling(request).await
            })
            .await
    }

    /// Drains a provider: no new placements, its movable allocations move
    /// elsewhere make-before-break, and after `deadline_ms` the rest move
    /// as if it left. The answer says what cannot move now, and why.
    pub async fn drain_provider(&self, provider_id: &str, deadline_ms: u64) -> Result<api::ProviderSchedulingReply, Error> {
        let message = api::SetProviderSchedulingRequest {
            provider_id: provider_id.to_owned(),
            scheduling: "draining".to_owned(),
            drain_deadline_ms: deadline_ms,
        };
        self.inner
            .call("set_provider_scheduling", CallKind::Write, message, |replica, request| async move {
                replica.client().set_provider_scheduling(request).await
            })
            .await
    }

    /// An optimization plan: begun (through the log), or with `dry_run`
    /// only computed; an admin's call under TLS.
    pub async fn optimize(&self, dry_run: bool) -> Result<api::OptimizeReply, Error> {
        let message = api::OptimizeRequest { dry_run, stale: false };
        let kind = if dry_run {
            CallKind::Read(Consistency::Linearizable)
        } else {
            CallKind::Write
        };
        self.inner
            .call("optimize", kind, message, |replica, request| async move {
                replica.client().optimize(request).await
            })
            .await
    }

    /// Every provider, in provider id order, read a page
    /// ([`qm_api::wire::PROVIDERS_PAGE_MAX`]) at a time.
    pub async fn list_providers(&self, consistency: Consistency) -> Result<Vec<api::ProviderInfo>, Error> {
        let mut providers = Vec::new();
        let mut after = String::new();
        for _ in 0..LIST_PAGES_MAX {
            let message = api::ListProvidersRequest {
                stale: consistency.is_stale(),
                after: after.clone(),
                limit: 0,
            };
            let reply = self
                .inner
                .call(
                    "list_providers",
                    CallKind::Read(consistency),
                    message,
                    |replica, request| async move { replica.client().list_providers(request).await },
                )
                .await?;
            providers.extend(reply.providers);
            if reply.next_after.is_empty() {
                return Ok(providers);
            }
            after = reply.next_after;
        }
        Err(too_many_pages())
    }

    /// A provider's agent confirms it handed over (or took back) the units of
    /// an allocation placed on it.
    pub async fn confirm(&self, allocation_id: &str, provider_id: &str, confirmation: Confirmation) -> Result<api::AllocationReply, Error> {
        let message = api::ConfirmRequest {
            allocation_id: checked_id("allocation_id", allocation_id)?,
            provider_id: provider_id.to_owned(),
            deallocation: confirmation == Confirmation::Deallocation,
        };
        self.inner
            .call("confirm", CallKind::Write, message, |replica, request| async move {
                replica.client().confirm(request).await
            })
            .await
    }

    // --- the monitor and operators

    /// Capacity, use and free amount per kind and per provider: every page
    /// of provider rows (the server sends at most 10,000 a page), at most
    /// [`LIST_PAGES_MAX`] pages. The rest of the reply is the first page's;
    /// a linearizable read is linearizable per page, not across pages.
    pub async fn system_state(&self, consistency: Consistency) -> Result<api::SystemStateReply, Error> {
        let mut message = api::SystemStateRequest {
            stale: consistency.is_stale(),
            ..Default::default()
        };
        let mut whole: Option<api::SystemStateReply> = None;
        for _ in 0..LIST_PAGES_MAX {
            let page = self
                .inner
                .call(
                    "system_state",
                    CallKind::Read(consistency),
                    message.clone(),
                    |replica, request| async move { replica.client().system_state(request).await },
                )
                .await?;
            let next = page.providers_next_after.clone();
            match &mut whole {
                None => whole = Some(page),
                Some(whole) => whole.providers.extend(page.providers),
            }
            if next.is_empty() {
                let mut whole = whole.expect("a page was read");
                whole.providers_next_after.clear();
                return Ok(whole);
            }
            message.providers_after = next;
        }
        Err(too_many_pages())
    }

    /// Raft's view: leader, term, indexes, members. Also teaches the client
    /// where the leader is.
    pub async fn cluster_status(&self) -> Result<api::ClusterStatusReply, Error> {
        // Read as stale so that an answer from a follower does not make it the
        // believed leader; the reply itself names the leader.
        let status = self
            .inner
            .call(
                "cluster_status",
                CallKind::Read(Consistency::Stale),
                api::ClusterStatusRequest {},
                |replica, request| async move { replica.client().cluster_status(request).await },
            )
            .await?;
        self.inner.learn_leader(&status);
        Ok(status)
    }

    /// Adds a replica at `addr` as node `id`: as a learner, then a voter
    /// unless `learner_only`.
    pub async fn add_replica(&self, id: u64, addr: &str, learner_only: bool) -> Result<api::ClusterStatusReply, Error> {
        let message = api::AddReplicaRequest {
            id,
            addr: addr.to_owned(),
            learner_only,
        };
        let status = self
            .inner
            .call("add_replica", CallKind::Write, message, |replica, request| async move {
                replica.client().add_replica(request).await
            })
            .await?;
        self.inner.learn_leader(&status);
        Ok(status)
    }

    pub async fn remove_replica(&self, id: u64) -> Result<api::ClusterStatusReply, Error> {
        let message = api::RemoveReplicaRequest { id };
        let status = self
            .inner
            .call("remove_replica", CallKind::Write, message, |replica, request| async move {
                replica.client().remove_replica(request).await
            })
            .await?;
        self.inner.learn_leader(&status);
        Ok(status)
    }

    /// A backup of the whole table from the leader (`SnapshotSave`, admin
    /// only under TLS): the bytes of one backup file, not yet checked (read
    /// them with [`qm_api::backup::decode`]). The call finds the leader with
    /// the usual redirects; the stream itself is not retried: a backup
    /// broken off is an error, and saving again is safe.
    pub async fn snapshot_save(&self) -> Result<Vec<u8>, Error> {
        let mut stream = self
            .inner
            .call(
                "snapshot_save",
                CallKind::Read(Consistency::Linearizable),
                api::SnapshotSaveRequest {},
                |replica, request| async move { replica.client().snapshot_save(request).await },
            )
            .await?;
        let mut file = Vec::new();
        let broken = |received: usize, status: tonic::Status| Error::Transport {
            message: format!("the backup stream broke off after {received} bytes: {}", status.message()),
        };
        loop {
            let chunk = match stream.message().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(status) => return Err(broken(file.len(), status)),
            };
            if chunk.total_bytes > qm_api::backup::BACKUP_FILE_BYTES_MAX {
                return Err(Error::Transport {
                    message: format!(
                        "the leader offers a backup of {} bytes, at most {}",
                        chunk.total_bytes,
                        qm_api::backup::BACKUP_FILE_BYTES_MAX
                    ),
                });
            }
            if file.is_empty() {
                file.reserve_exact(chunk.total_bytes as usize);
            }
            file.extend_from_slice(&chunk.data);
        }
        Ok(file)
    }

    // --- consumers of the event history

    /// Takes or keeps the named cursor for `holder` for `hold` and moves it
    /// up to `revision` (never down); `held_by_caller` in the answer says
    /// whether `holder` holds it now. Safe to retry: a repeat changes
    /// nothing more.
    pub async fn advance_cursor(&self, name: &str, holder: &str, revision: u64, hold: Duration) -> Result<api::CursorReply, Error> {
        let message = api::AdvanceCursorRequest {
            name: name.to_owned(),
            holder: holder.to_owned(),
            revision,
            hold_ms: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
        };
        self.inner
            .call("advance_cursor", CallKind::Write, message, |replica, request| async move {
                replica.client().advance_cursor(request).await
            })
            .await
    }
}

/// The most pages [`Client::list_all`] and [`Client::list_providers`] read:
/// at the servers' maximum page size, a billion records.
pub const LIST_PAGES_MAX: usize = 100_000;

fn too_many_pages() -> Error {
    Error::Server {
        code: tonic::Code::OutOfRange,
        message: format!("more than {LIST_PAGES_MAX} pages"),
    }
}

impl ClientInner {
    /// Runs one call with redirects, failover and retries; see the module docs.
    /// `send` gets the replica to try (a stub on its channel: `replica.client()`;
    /// writes may use its pipeline) and the request.
    pub(crate) async fn call<Message, Reply, Send, Answer>(
        &self,
        name: &'static str,
        kind: CallKind,
        message: Message,
        send: Send,
    ) -> Result<Reply, Error>
    where
        Message: Clone,
        Send: Fn(Replica, tonic::Request<Message>) -> Answer,
        Answer: Future<Output = Result<tonic::Response<Reply>, tonic::Status>>,
    {
        let mut plan = CallPlan::new(name, kind, &self.config, self.replicas.first_target(), Instant::now());
        let result = self.run_plan(&mut plan, message, send).await;
        let _ = CALL_ATTEMPTS.try_with(|attempts| attempts.set(attempts.get() + plan.attempts()));
        result
    }

    /// Sends and sleeps as `plan` decides until the call is over.
    async fn run_plan<Message, Reply, Send, Answer>(&self, plan: &mut CallPlan, message: Message, send: Send) -> Result<Reply, Error>
    where
        Message: Clone,
        Send: Fn(Replica, tonic::Request<Message>) -> Answer,
        Answer: Future<Output = Result<tonic::Response<Reply>, tonic::Status>>,
    {
        let name = plan.name();
        let mut step = plan.start(Instant::now());
        loop {
            let target = match step {
                Step::Done(error) => return Err(error),
                Step::Wait(delay, next) => {
                    tracing::trace!(call = name, next = %self.replicas.get(next).addr, delay_ms = delay.as_millis() as u64, "waiting");
                    tokio::time::sleep(delay).await;
                    step = plan.resume(Instant::now());
                    continue;
                }
                Step::Send(target) => target,
            };
            let attempt_timeout = plan.attempt_timeout(Instant::now());
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(attempt_timeout);
            let attempt = tokio::time::timeout(attempt_timeout, send(self.replicas.get(target), request));
            // Only where the leader must answer: a stale read is served by anyone.
            let check = async {
                match plan.needs_leader() {
                    true => leader_check::another_leader(self, target).await,
                    false => std::future::pending().await,
                }
            };
            let failure = tokio::select! {
                answer = attempt => match answer {
                    Ok(Ok(response)) => {
                        plan.succeeded(&self.replicas);
                        return Ok(response.into_inner());
                    }
                    Ok(Err(status)) => Failure::from_status(&status),
                    Err(_elapsed) => Failure::Retryable {
                        maybe_applied: true,
                        unreachable: true,
                        cause: format!("no answer within {} ms", attempt_timeout.as_millis()),
                    },
                },
                (leader_addr, leader_id) = check => {
                    tracing::debug!(call = name, waited_on = %self.replicas.get(target).addr, leader = %leader_addr, "another replica names a new leader; leaving the unanswered attempt");
                    Failure::NotLeader {
                        leader_addr: Some(leader_addr),
                        leader_id: leader_id.map(|id| id.to_string()),
                        // The attempt left unanswered may still apply.
                        maybe_applied: true,
                    }
                }
            };
            step = plan.next(failure, Instant::now(), &mut rand::thread_rng(), &self.replicas);
        }
    }

    /// Believes the leader a cluster status names, and follows its
    /// membership (a status is a membership read like any other).
    fn learn_leader(&self, status: &api::ClusterStatusReply) {
        if self.config.follow_membership {
            let _ = membership::apply(self, status, "a cluster status reply");
        }
        if status.leader_id.is_some() && !status.leader_addr.is_empty() {
            if let Some(index) = self.replicas.index_of_or_add(&status.leader_addr) {
                self.replicas.set_leader(index);
            }
        }
    }
}

/// Ids are uuids; checked here so a typo fails fast with the field named.
fn checked_id(field: &str, id: &str) -> Result<String, Error> {
    Uuid::parse_str(id).map_err(|_| Error::invalid(field, format!("{id:?} is not a uuid")))?;
    Ok(id.to_owned())
}
