//! [`Client`]: every call of the public API, with leader discovery, redirects
//! and failover.
//!
//! Each call runs `ClientInner::call`: try the believed leader (else the
//! first replica); on a NotLeader answer go straight to the replica it names;
//! on a timeout, an unavailable replica or a connection error, back off and
//! try the next replica that has not failed yet in this call, at most
//! `retries_max` times. A NotLeader answer that names no leader, or names
//! one that already failed (followers name a dead leader until they elect
//! another), means an election is under way: back off and ask the next
//! replica, at most [`LEADER_WAITS_MAX`] times. All within `request_timeout_ms`. Every attempt sends the same message, so a retried
//! allocation carries the same `request_id` and the table answers it with
//! the first attempt's record instead of allocating again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qm_state_machine::{ProviderRegistration, ResourceRequest};
use tokio::time::Instant;
use tracing::debug;
use uuid::Uuid;

use crate::config::{ClientConfig, ConfigError};
use crate::convert::{registration_to_proto, request_to_proto, state_name, status_name};
use crate::error::Error;
use crate::failure::Failure;
use crate::heartbeat::HeartbeatLoop;
use crate::lease::LeaseKeeper;
use crate::proto::api;
use crate::proto::api::pipelined_call::Call as PipelinedRequest;
use crate::replicas::{Replica, ReplicaSet};
use crate::retry::Backoff;
use crate::watch::WatchStream;

/// NotLeader hints followed in one call. Two replicas that name each other
/// (during an election) would otherwise bounce a call until its deadline.
pub const REDIRECTS_MAX: u32 = 8;

/// What hyper reports when a client speaking plain HTTP/2 meets a TLS
/// replica: it reads the replica's TLS alert as a frame header, or finds
/// that the replica has already hung up on it (which, depends on timing).
const PLAINTEXT_AGAINST_TLS_SYMPTOMS: [&str; 4] = ["frame with invalid size", "connection closed", "connection reset", "broken pipe"];
/// Appended to the cause then, since the symptom alone does not say why.
const PLAINTEXT_AGAINST_TLS_HINT: &str =
    " (this client has no certificate: if the cluster runs mutual TLS, give --tls-cert/--tls-key/--tls-ca or QM_TLS_CERT/QM_TLS_KEY/QM_TLS_CA)";
/// NotLeader answers without a usable hint waited on in one call (with the
/// same backoff as retries). They mean an election is under way, which
/// takes longer than `retries_max` quick retries would wait, so they do not
/// use up retries; the call's deadline bounds them too.
pub const LEADER_WAITS_MAX: u32 = 16;
/// Longest pause between two polls of a queued request in `allocate_and_wait`.
pub const WAIT_POLL_MS_MAX: u64 = 1_000;

/// Where a read is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Through the leader's read index: sees every write acknowledged before it.
    #[default]
    Linearizable,
    /// From whichever replica answers, possibly behind; works without a leader.
    Stale,
}

impl Consistency {
    fn is_stale(self) -> bool {
        self == Consistency::Stale
    }
}

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
    inner: Arc<ClientInner>,
}

/// What clones of a [`Client`] and its background tasks share.
#[derive(Debug)]
pub(crate) struct ClientInner {
    pub(crate) config: ClientConfig,
    pub(crate) replicas: ReplicaSet,
}

/// How a call's failures are reported once retries run out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// Changes the table: a lost answer makes the outcome unknown.
    Write,
    /// Changes nothing: a lost answer only means "unavailable".
    Read(Consistency),
}

impl CallKind {
    /// A successful answer proves the replica was the leader: followers
    /// redirect writes and linearizable reads.
    fn proves_leader(self) -> bool {
        self != CallKind::Read(Consistency::Stale)
    }
}

impl Client {
    /// A client for `config`'s replicas; connects lazily, on the first call.
    pub fn new(config: ClientConfig) -> Result<Client, ConfigError> {
        config.validate()?;
        let replicas = ReplicaSet::new(&config)?;
        Ok(Client {
            inner: Arc::new(ClientInner { config, replicas }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The replica the client last saw acting as leader, if any.
    pub fn leader_addr(&self) -> Option<String> {
        self.inner.replicas.leader_addr()
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

    /// Extends an allocation's lease by its TTL from now.
    pub async fn renew_lease(&self, id: &str) -> Result<api::AllocationReply, Error> {
        let message = PipelinedRequest::RenewLease(api::RenewLeaseRequest { id: checked_id("id", id)? });
        self.inner
            .call("renew_lease", CallKind::Write, message, |replica, request| async move {
                replica.write(request).await
            })
            .await
    }

    /// Renews the lease of `id` every `interval` in the background until the
    /// returned keeper is dropped, or until the allocation can no longer be
    /// renewed (see [`LeaseKeeper::stopped`]). Pick an interval well under
    /// the TTL: a renewal may need a failover.
    pub fn keep_lease_alive(&self, id: &str, interval: Duration) -> LeaseKeeper {
        LeaseKeeper::start(self.clone(), id.to_owned(), interval)
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

    /// Every event from `from_revision` on (0: only events from now on), then
    /// live ones, from any replica; on failover it resumes on another replica
    /// without gaps or duplicates. `namespace` limits allocation events to one
    /// namespace (provider events are always included).
    pub fn watch(&self, from_revision: u64, namespace: Option<&str>) -> WatchStream {
        WatchStream::start(self.inner.clone(), from_revision, namespace.unwrap_or_default().to_owned())
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

    /// Heartbeats for `provider_id` every `interval` in the background until
    /// the returned handle is dropped.
    pub fn heartbeat_loop(&self, provider_id: &str, interval: Duration) -> HeartbeatLoop {
        HeartbeatLoop::start(self.clone(), provider_id.to_owned(), interval)
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

    pub async fn list_providers(&self, consistency: Consistency) -> Result<Vec<api::ProviderInfo>, Error> {
        let message = api::ListProvidersRequest {
            stale: consistency.is_stale(),
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
        Ok(reply.providers)
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

    /// Capacity, use and free amount per kind and per provider.
    pub async fn system_state(&self, consistency: Consistency) -> Result<api::SystemStateReply, Error> {
        let message = api::SystemStateRequest {
            stale: consistency.is_stale(),
        };
        self.inner
            .call(
                "system_state",
                CallKind::Read(consistency),
                message,
                |replica, request| async move { replica.client().system_state(request).await },
            )
            .await
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
        let deadline = Instant::now() + self.config.request_timeout();
        let mut failures = Backoff::from_config(&self.config);
        let mut leader_waits = Backoff::new(self.config.backoff_base_ms, self.config.backoff_max_ms, LEADER_WAITS_MAX);
        // Replicas that could not be reached during this call: not tried
        // again, and not followed when a follower still names one as its
        // leader (until every replica has failed).
        let mut failed: Vec<usize> = Vec::new();
        let mut target = self.replicas.first_target();
        let (mut attempts, mut redirects) = (0u32, 0u32);
        let mut maybe_applied = false;
        // Set while re-trying a failed replica a follower names as leader:
        // if it fails again, that is part of waiting for the election, not a
        // retry of its own.
        let mut retrying_hinted = false;
        let mut last_cause = String::from("the deadline passed before the first attempt");
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let attempt_timeout = (deadline - now).min(self.config.attempt_timeout());
            let replica = self.replicas.get(target);
            attempts += 1;
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(attempt_timeout);
            let failure = match tokio::time::timeout(attempt_timeout, send(replica.clone(), request)).await {
                Ok(Ok(response)) => {
                    if kind.proves_leader() {
                        self.replicas.set_leader(target);
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => Failure::from_status(&status),
                Err(_elapsed) => Failure::Retryable {
                    maybe_applied: true,
                    unreachable: true,
                    cause: format!("no answer within {} ms", attempt_timeout.as_millis()),
                },
            };
            // A final answer (bad input, not found, a conflict) says nothing
            // about who leads, so the believed leader stays; any other failure
            // means this replica did not serve the call as leader.
            if !matches!(failure, Failure::Final(_)) {
                self.replicas.forget_leader(target);
            }
            let hinted_retry = std::mem::take(&mut retrying_hinted);
            let delay = match failure {
                Failure::Final(error) => return Err(final_error(kind, maybe_applied, error)),
                Failure::NotLeader {
                    leader_addr,
                    leader_id,
                    maybe_applied: maybe,
                } => {
                    maybe_applied |= maybe;
                    let hinted = leader_addr.as_deref().and_then(|addr| self.replicas.index_of_or_add(addr));
                    match hinted.filter(|hinted| *hinted != target) {
                        Some(hinted) if !failed.contains(&hinted) && redirects < REDIRECTS_MAX => {
                            redirects += 1;
                            debug!(call = name, from = %replica.addr, to = ?leader_addr, leader_id = ?leader_id, "following the leader hint");
                            self.replicas.set_leader(hinted);
                            target = hinted;
                            continue;
                        }
                        // A follower names a replica that failed us earlier in
                        // this call: either the followers have not noticed yet,
                        // or it came back and won the election. Give the
                        // election time, then that replica one more attempt.
                        Some(hinted) if failed.contains(&hinted) => {
                            last_cause = format!(
                                "{} names {}, which failed earlier in this call",
                                replica.addr,
                                self.replicas.get(hinted).addr
                            );
                            let Some(delay) = leader_waits.next_delay(&mut rand::thread_rng()) else {
                                break;
                            };
                            tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
                            failed.retain(|replica| *replica != hinted);
                            target = hinted;
                            retrying_hinted = true;
                            continue;
                        }
                        // No leader yet, or one that already failed us: an
                        // election is under way; give it time.
                        _ => {
                            last_cause = match &leader_addr {
                                Some(addr) => format!("{} is not the leader and names {addr}, which failed", replica.addr),
                                None => format!("{} is not the leader and knows none", replica.addr),
                            };
                            leader_waits.next_delay(&mut rand::thread_rng())
                        }
                    }
                }
                Failure::Retryable {
                    maybe_applied: maybe,
                    unreachable,
                    cause,
                } => {
                    maybe_applied |= maybe;
                    last_cause = format!("{}: {cause}", replica.addr);
                    if unreachable && !failed.contains(&target) {
                        failed.push(target);
                    }
                    match hinted_retry {
                        true => leader_waits.next_delay(&mut rand::thread_rng()),
                        false => failures.next_delay(&mut rand::thread_rng()),
                    }
                }
            };
            let Some(delay) = delay else { break };
            let next = self.replicas.next_avoiding(target, &failed);
            debug!(call = name, attempt = attempts, cause = %last_cause, next = %self.replicas.get(next).addr, delay_ms = delay.as_millis() as u64, "failing over");
            tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
            target = next;
        }
        debug!(call = name, attempts, maybe_applied, cause = %last_cause, "giving up");
        // Every attempt has failed by now: on a plaintext cluster a replica
        // that dies mid-call, with others answering, never brings us here.
        if self.config.tls.is_none() && PLAINTEXT_AGAINST_TLS_SYMPTOMS.iter().any(|symptom| last_cause.contains(symptom)) {
            last_cause.push_str(PLAINTEXT_AGAINST_TLS_HINT);
        }
        match kind {
            CallKind::Write if maybe_applied => Err(Error::Unknown {
                request_id: None,
                last_cause,
            }),
            _ => Err(Error::Unavailable { attempts, last_cause }),
        }
    }

    /// Believes the leader a cluster status names.
    fn learn_leader(&self, status: &api::ClusterStatusReply) {
        if status.leader_id.is_some() && !status.leader_addr.is_empty() {
            if let Some(index) = self.replicas.index_of_or_add(&status.leader_addr) {
                self.replicas.set_leader(index);
            }
        }
    }
}

/// A definite refusal, unless an earlier attempt of the same write may have
/// taken effect: then "not found" or "conflict" may be that attempt's own
/// doing (a deregistration retried after its answer was lost finds the
/// provider gone), so the outcome is unknown, not failed.
fn final_error(kind: CallKind, maybe_applied: bool, error: Error) -> Error {
    match error {
        Error::NotFound { .. } | Error::Conflict { .. } if kind == CallKind::Write && maybe_applied => Error::Unknown {
            request_id: None,
            last_cause: format!("{error}, after an earlier attempt that may have taken effect"),
        },
        error => error,
    }
}

/// Ids are uuids; checked here so a typo fails fast with the field named.
fn checked_id(field: &str, id: &str) -> Result<String, Error> {
    Uuid::parse_str(id).map_err(|_| Error::invalid(field, format!("{id:?} is not a uuid")))?;
    Ok(id.to_owned())
}
