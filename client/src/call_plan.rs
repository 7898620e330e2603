//! [`CallPlan`]: the retry decision of one call, as a pure step.
//!
//! ```text
//!  CallPlan::start(now) ──▶ Send(replica)
//!  answer failed ──▶ Failure::from_status ──▶ plan.next(failure, now, rng, replicas)
//!        ├─ Send(hinted)          a NotLeader hint to a replica not yet failed: at once
//!        ├─ Wait(delay, replica)  backoff (full jitter), then plan.resume(now) ──▶ Send | Done
//!        └─ Done(error)           a final answer, or retries, leader waits or the deadline used up
//! ```
//!
//! The plan holds everything the call loop used to keep in mutable locals
//! (deadline, the two backoffs, replicas that failed, attempts, redirects,
//! whether a write may have applied, the last cause) and takes time and
//! randomness as arguments, so its decisions are tested without a network
//! or a runtime. `ClientInner::call` only sends, sleeps and asks it.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tracing::debug;

use crate::config::ClientConfig;
use crate::consistency::Consistency;
use crate::error::Error;
use crate::failure::Failure;
use crate::retry::Backoff;

/// NotLeader hints followed in one call. Two replicas that name each other
/// (during an election) would otherwise bounce a call until its deadline.
pub const REDIRECTS_MAX: u32 = 8;
/// NotLeader answers without a usable hint waited on in one call. They mean
/// an election is under way, which takes longer than `retries_max` quick
/// retries would wait, so they do not use up retries; the call's deadline
/// bounds them too (64 waits of 0-100 ms: about 3 s).
pub const LEADER_WAITS_MAX: u32 = 64;
/// The longest wait (full jitter below it, not doubling) before asking the
/// next replica while none knows a leader. Followers learn a new leader
/// from its first AppendEntries, so asking every 0-100 ms finds it within
/// 100 ms of its election, where a doubling backoff slept up to 800 ms past
/// it (a third of a failover, measured by `scripts/failover.sh`). A refusal
/// costs a follower microseconds.
pub const LEADER_WAIT_MS_MAX: u64 = 100;

/// What hyper reports when a client speaking plain HTTP/2 meets a TLS
/// replica: it reads the replica's TLS alert as a frame header, or finds
/// that the replica has already hung up on it (which, depends on timing).
const PLAINTEXT_AGAINST_TLS_SYMPTOMS: [&str; 4] = ["frame with invalid size", "connection closed", "connection reset", "broken pipe"];
/// Appended to the cause then, since the symptom alone does not say why.
const PLAINTEXT_AGAINST_TLS_HINT: &str =
    " (this client has no certificate: if the cluster runs mutual TLS, give --tls-cert/--tls-key/--tls-ca or QM_TLS_CERT/QM_TLS_KEY/QM_TLS_CA)";

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
    pub(crate) fn proves_leader(self) -> bool {
        self != CallKind::Read(Consistency::Stale)
    }
}

/// What the call does next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send the message to the replica at this index now.
    Send(usize),
    /// Sleep this long, then [`CallPlan::resume`]; the replica it will be sent to.
    Wait(Duration, usize),
    /// The call is over.
    Done(Error),
}

/// The replicas as the plan sees them: the client's `ReplicaSet`, or a plain
/// list in tests.
pub(crate) trait ReplicaView {
    /// `host:port` of the replica at `index`, for causes and logs.
    fn addr(&self, index: usize) -> String;
    /// The index of the replica at `addr`, added if new (a leader hint may
    /// name a replica the client was not given); `None` when none can be added.
    fn index_of_or_add(&self, addr: &str) -> Option<usize>;
    /// The replica after `index` that is not in `avoid` (all of them, once
    /// every replica failed).
    fn next_avoiding(&self, index: usize, avoid: &[usize]) -> usize;
    fn set_leader(&self, index: usize);
    /// Forgets `index` as the believed leader, if it is.
    fn forget_leader(&self, index: usize);
    /// The attempt at `index` found nobody there: a replica that left the
    /// membership is dropped, and the membership is read again.
    fn unreachable(&self, index: usize);
    /// The replica at `index` answered something.
    fn answered(&self, index: usize);
    /// A replica said it is not the leader: the membership may have
    /// changed, so it is read again (whether or not a leader was named).
    fn redirected(&self);
}

/// One call's retry state; a new call makes a new plan.
#[derive(Debug)]
pub(crate) struct CallPlan {
    name: &'static str,
    kind: CallKind,
    deadline: Instant,
    attempt_timeout: Duration,
    /// Retries after a failed attempt (timeouts, unreachable replicas).
    failures: Backoff,
    /// Waits for an election (NotLeader without a usable hint).
    leader_waits: Backoff,
    /// Replicas that could not be reached during this call: not tried again,
    /// and not followed when a follower still names one as its leader
    /// (until every replica has failed).
    failed: Vec<usize>,
    target: usize,
    attempts: u32,
    redirects: u32,
    /// Some attempt of this write may have taken effect.
    maybe_applied: bool,
    /// Set while re-trying a failed replica a follower names as leader: if
    /// it fails again, that is part of waiting for the election, not a retry
    /// of its own.
    retrying_hinted: bool,
    last_cause: String,
    /// Whether the client dials with TLS (the plaintext hint is for those that do not).
    tls: bool,
}

impl CallPlan {
    pub(crate) fn new(name: &'static str, kind: CallKind, config: &ClientConfig, first_target: usize, now: Instant) -> CallPlan {
        CallPlan {
            name,
            kind,
            deadline: now + config.request_timeout(),
            attempt_timeout: config.attempt_timeout(),
            failures: Backoff::from_config(config),
            leader_waits: {
                let ceiling_ms = LEADER_WAIT_MS_MAX.min(config.backoff_max_ms);
                Backoff::new(ceiling_ms, ceiling_ms, LEADER_WAITS_MAX)
            },
            failed: Vec::new(),
            target: first_target,
            attempts: 0,
            redirects: 0,
            maybe_applied: false,
            retrying_hinted: false,
            last_cause: String::from("the deadline passed before the first attempt"),
            tls: config.tls.is_some(),
        }
    }

    /// The first step: send to the first target, unless the deadline passed.
    pub(crate) fn start(&mut self, now: Instant) -> Step {
        self.resume(now)
    }

    /// After a [`Step::Wait`]: send to the planned replica, or give up when
    /// the deadline has passed.
    pub(crate) fn resume(&mut self, now: Instant) -> Step {
        if now >= self.deadline {
            return Step::Done(self.give_up());
        }
        self.attempts += 1;
        Step::Send(self.target)
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Only the leader may answer this call (a write or a linearizable
    /// read): a leader elsewhere means the attempt's replica is not it.
    pub(crate) fn needs_leader(&self) -> bool {
        self.kind.proves_leader()
    }

    /// Attempts sent so far (a redirect to the named leader is an attempt too).
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long the attempt starting `now` may take.
    pub(crate) fn attempt_timeout(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now).min(self.attempt_timeout)
    }

    /// The attempt at `target` was answered.
    pub(crate) fn succeeded(&self, replicas: &impl ReplicaView) {
        replicas.answered(self.target);
        if self.kind.proves_leader() {
            replicas.set_leader(self.target);
        }
    }

    /// The step after a failed attempt.
    pub(crate) fn next(&mut self, failure: Failure, now: Instant, rng: &mut impl Rng, replicas: &impl ReplicaView) -> Step {
        // A final answer (bad input, not found, a conflict) says nothing
        // about who leads, so the believed leader stays; any other failure
        // means this replica did not serve the call as leader.
        if !matches!(failure, Failure::Final(_)) {
            replicas.forget_leader(self.target);
        }
        match &failure {
            Failure::Retryable { unreachable: true, .. } => replicas.unreachable(self.target),
            Failure::NotLeader { .. } => {
                replicas.answered(self.target);
                replicas.redirected();
            }
            _ => replicas.answered(self.target),
        }
        let hinted_retry = std::mem::take(&mut self.retrying_hinted);
        let delay = match failure {
            Failure::Final(error) => return Step::Done(self.final_error(error)),
            Failure::NotLeader {
                leader_addr,
                leader_id,
                maybe_applied,
            } => {
                self.maybe_applied |= maybe_applied;
                match self.after_not_leader(leader_addr, leader_id, now, rng, replicas) {
                    Ok(step) => return step,
                    Err(delay) => delay,
                }
            }
            Failure::Retryable {
                maybe_applied,
                unreachable,
                cause,
            } => {
                self.maybe_applied |= maybe_applied;
                self.last_cause = format!("{}: {cause}", replicas.addr(self.target));
                if unreachable && !self.failed.contains(&self.target) {
                    self.failed.push(self.target);
                }
                match hinted_retry {
                    true => self.leader_waits.next_delay(rng),
                    false => self.failures.next_delay(rng),
                }
            }
        };
        let Some(delay) = delay else {
            return Step::Done(self.give_up());
        };
        let next = replicas.next_avoiding(self.target, &self.failed);
        debug!(call = self.name, attempt = self.attempts, cause = %self.last_cause, next = %replicas.addr(next), delay_ms = delay.as_millis() as u64, "failing over");
        self.target = next;
        Step::Wait(self.bounded(delay, now), next)
    }

    /// A NotLeader answer: a step of its own (follow the hint, or wait for
    /// the hinted replica that failed before), or the delay before asking
    /// the next replica (`None`: no more waiting).
    fn after_not_leader(
        &mut self,
        leader_addr: Option<String>,
        leader_id: Option<String>,
        now: Instant,
        rng: &mut impl Rng,
        replicas: &impl ReplicaView,
    ) -> Result<Step, Option<Duration>> {
        let from = replicas.addr(self.target);
        let hinted = leader_addr.as_deref().and_then(|addr| replicas.index_of_or_add(addr));
        match hinted.filter(|hinted| *hinted != self.target) {
            Some(hinted) if !self.failed.contains(&hinted) && self.redirects < REDIRECTS_MAX => {
                self.redirects += 1;
                debug!(call = self.name, from = %from, to = ?leader_addr, leader_id = ?leader_id, "following the leader hint");
                replicas.set_leader(hinted);
                self.target = hinted;
                Ok(self.resume(now))
            }
            // A follower names a replica that failed us earlier in this call:
            // either the followers have not noticed yet, or it came back and
            // won the election. Give the election time, then that replica
            // one more attempt.
            Some(hinted) if self.failed.contains(&hinted) => {
                self.last_cause = format!("{from} names {}, which failed earlier in this call", replicas.addr(hinted));
                let Some(delay) = self.leader_waits.next_delay(rng) else {
                    return Ok(Step::Done(self.give_up()));
                };
                self.failed.retain(|replica| *replica != hinted);
                self.target = hinted;
                self.retrying_hinted = true;
                Ok(Step::Wait(self.bounded(delay, now), hinted))
            }
            // No leader yet, or one that already failed us: an election is
            // under way; give it time.
            _ => {
                self.last_cause = match &leader_addr {
                    Some(addr) => format!("{from} is not the leader and names {addr}, which failed"),
                    None => format!("{from} is not the leader and knows none"),
                };
                Err(self.leader_waits.next_delay(rng))
            }
        }
    }

    /// A wait never runs past the call's deadline.
    fn bounded(&self, delay: Duration, now: Instant) -> Duration {
        delay.min(self.deadline.saturating_duration_since(now))
    }

    /// A definite refusal, unless an earlier attempt of the same write may
    /// have taken effect: then "not found" or "conflict" may be that
    /// attempt's own doing (a deregistration retried after its answer was
    /// lost finds the provider gone), so the outcome is unknown, not failed.
    fn final_error(&self, error: Error) -> Error {
        match error {
            Error::NotFound { .. } | Error::Conflict { .. } if self.kind == CallKind::Write && self.maybe_applied => Error::Unknown {
                request_id: None,
                last_cause: format!("{error}, after an earlier attempt that may have taken effect"),
            },
            error => error,
        }
    }

    /// Every attempt has failed: unknown if a write may have applied, else
    /// unavailable.
    fn give_up(&mut self) -> Error {
        debug!(call = self.name, attempts = self.attempts, maybe_applied = self.maybe_applied, cause = %self.last_cause, "giving up");
        let mut last_cause = std::mem::take(&mut self.last_cause);
        // On a plaintext cluster a replica that dies mid-call, with others
        // answering, never brings us here.
        if !self.tls && PLAINTEXT_AGAINST_TLS_SYMPTOMS.iter().any(|symptom| last_cause.contains(symptom)) {
            last_cause.push_str(PLAINTEXT_AGAINST_TLS_HINT);
        }
        match self.kind {
            CallKind::Write if self.maybe_applied => Error::Unknown {
                request_id: None,
                last_cause,
            },
            _ => Error::Unavailable {
                attempts: self.attempts,
                last_cause,
            },
        }
    }
}

#[cfg(test)]
#[path = "call_plan_test.rs"]
mod tests;
