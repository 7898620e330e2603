//! Workloads: what the client processes do, and how each operation is
//! recorded. Each worker runs one operation at a time (a Jepsen process),
//! paced so that all of them together make about `--rate` operations per
//! second, and stops invoking at the time limit.
//!
//! * [`register`]: acquire / release / read of single units (lock-like registers).
//! * [`allocation`]: free-form requests, releases, resends and reads.
//! * [`providers`]: [`providers::ProviderClients`], one client per provider
//!   for its registration and heartbeats.
//!
//! Every worker has two clients. Writes go through one that knows every
//! replica and follows the leader. Reads go through one that starts at the
//! worker's own replica (worker i: replica i mod n): in a healthy cluster that
//! replica answers a linearizable read only if it is the leader (else it
//! redirects), but with `--unsafe-stale-reads` it answers from its own state,
//! which is what lets the planted-bug run catch a stale read. On a TLS run
//! both present the consumer certificate of namespace `default`.

pub mod allocation;
pub mod providers;
pub mod register;

use std::sync::Arc;
use std::time::Duration;

use qm_client::{Client, ClientConfig, Error};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::config::WorkloadKind;
use crate::history::{HistoryRecorder, OpType, Payload, Process, ReadValue};

/// Attempts of the final read before the run gives up on it.
pub const FINAL_READ_ATTEMPTS_MAX: u32 = 20;
/// Pause between two attempts of the final read.
pub const FINAL_READ_RETRY_MS: u64 = 1_000;
/// The final read's process id: far above any worker's.
pub const FINAL_PROCESS: u64 = 1_000_000_000;
/// gRPC status codes (fixed by the gRPC specification) of the refusals a
/// TLS cluster answers. By number because this crate does not depend on
/// tonic, whose `Code` the client's [`Error::Server`] carries.
pub const GRPC_PERMISSION_DENIED: i32 = 7;
pub const GRPC_UNAUTHENTICATED: i32 = 16;

/// The providers `kind` registers, by id: each needs its own certificate on
/// a TLS run, since a provider may register and heartbeat only as itself.
pub fn provider_ids(kind: WorkloadKind) -> Vec<String> {
    match kind {
        WorkloadKind::Register => vec![register::PROVIDER_ID.to_owned()],
        WorkloadKind::Allocation => allocation::registrations()
            .into_iter()
            .map(|registration| registration.provider_id)
            .collect(),
    }
}

/// One worker's clients, clock and process id.
pub struct WorkerContext {
    pub worker: usize,
    concurrency: usize,
    /// The current process id: the worker index, plus `concurrency` for every
    /// operation that ended in `info` (that process may still be running it).
    process: u64,
    pub history: Arc<HistoryRecorder>,
    pub writer: Client,
    pub reader: Client,
    pub rng: StdRng,
    end: Instant,
    mean_gap: Duration,
}

impl WorkerContext {
    /// `clients` names the replicas' addresses and the certificate to present
    /// (the consumer's, on a TLS run); `rate` is the total target.
    pub fn new(
        worker: usize,
        concurrency: usize,
        clients: &ClientConfig,
        history: Arc<HistoryRecorder>,
        seed: u64,
        rate: f64,
        end: Instant,
    ) -> Result<WorkerContext, qm_client::ConfigError> {
        // Start at the worker's own replica, then the others in order.
        let mut rotated = clients.endpoints.clone();
        let first = worker % rotated.len().max(1);
        rotated.rotate_left(first);
        let config = ClientConfig {
            endpoints: rotated,
            ..clients.clone()
        };
        let writer = Client::new(config.clone())?;
        let reader = Client::new(config)?;
        Ok(WorkerContext {
            worker,
            concurrency,
            process: worker as u64,
            history,
            writer,
            reader,
            rng: StdRng::seed_from_u64(seed.wrapping_add(worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            end,
            mean_gap: Duration::from_secs_f64(concurrency as f64 / rate),
        })
    }

    pub fn process(&self) -> Process {
        Process::Client(self.process)
    }

    /// The time limit has passed: invoke nothing more.
    pub fn done(&self) -> bool {
        Instant::now() >= self.end
    }

    /// Waits a random gap (mean `concurrency / rate`) before the next operation.
    pub async fn pace(&mut self) {
        let gap = self.mean_gap.mul_f64(self.rng.gen_range(0.0..2.0));
        tokio::time::sleep_until((Instant::now() + gap).min(self.end)).await;
    }

    pub fn invoke(&self, payload: Payload) {
        self.history.invoke(self.process(), payload);
    }

    /// Records the completion; an `info` retires this process id.
    pub fn complete(&mut self, kind: OpType, payload: Payload, error: Option<String>) {
        assert_ne!(kind, OpType::Invoke, "a completion cannot be an invocation");
        self.history.record(kind, self.process(), payload, error);
        if kind == OpType::Info {
            self.process += self.concurrency as u64;
        }
    }
}

/// How a failed write is recorded: `info` when it may have taken effect,
/// `fail` only when it certainly did not (STYLE.md rule 6).
///
/// A call refused by authentication or authorization (TLS runs) is `fail`
/// even after earlier attempts: every replica decides it from the same
/// certificate before anything reaches the log, so no attempt took effect.
pub fn write_failure(error: &Error) -> OpType {
    match error {
        Error::Server { code, .. } if [GRPC_PERMISSION_DENIED, GRPC_UNAUTHENTICATED].contains(&i32::from(*code)) => OpType::Fail,
        Error::Unknown { .. } | Error::Server { .. } | Error::MalformedReply(_) => OpType::Info,
        Error::InvalidArgument { .. }
        | Error::NotFound { .. }
        | Error::Rejected { .. }
        | Error::StillQueued { .. }
        | Error::Conflict { .. }
        | Error::Unavailable { .. }
        | Error::Transport { .. } => OpType::Fail,
    }
}

/// Runs `read` until it succeeds or [`FINAL_READ_ATTEMPTS_MAX`] attempts failed.
pub async fn with_final_retries<T, F, Fut>(mut read: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt = 1;
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(error) if attempt >= FINAL_READ_ATTEMPTS_MAX => return Err(error),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(FINAL_READ_RETRY_MS)).await;
            }
        }
    }
}

/// The final read after the last heal, recorded as one operation of
/// [`FINAL_PROCESS`]: `read` runs [`with_final_retries`], and `answered` puts
/// what it returned into the invoked value. A read that never answered is
/// `fail`: a read changes nothing. Returns whether it answered.
pub async fn record_final_read<T, F, Fut>(history: &HistoryRecorder, read: F, answered: impl FnOnce(ReadValue, T) -> ReadValue) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let process = Process::Client(FINAL_PROCESS);
    let invoked = ReadValue {
        final_read: true,
        ..Default::default()
    };
    history.invoke(process, Payload::Read(invoked.clone()));
    match with_final_retries(read).await {
        Ok(value) => {
            history.record(OpType::Ok, process, Payload::Read(answered(invoked, value)), None);
            true
        }
        Err(error) => {
            history.record(OpType::Fail, process, Payload::Read(invoked), Some(error.to_string()));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_write_that_may_have_happened_is_info() {
        let server = |code: i32| Error::Server {
            code: code.into(),
            message: String::new(),
        };
        let unknown = Error::Unknown {
            request_id: None,
            last_cause: String::new(),
        };
        let unavailable = Error::Unavailable {
            attempts: 3,
            last_cause: String::new(),
        };
        assert_eq!(OpType::Info, write_failure(&unknown));
        assert_eq!(OpType::Info, write_failure(&server(13 /* INTERNAL: may have happened */)));
        assert_eq!(OpType::Fail, write_failure(&unavailable));
        assert_eq!(OpType::Fail, write_failure(&server(GRPC_PERMISSION_DENIED)));
        assert_eq!(OpType::Fail, write_failure(&server(GRPC_UNAUTHENTICATED)));
    }
}
