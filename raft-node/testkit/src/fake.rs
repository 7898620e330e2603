//! In-process fake replicas that answer the way `qm-node` does, kept only
//! for what a real replica cannot be made to do on demand. Every other client
//! test runs against real `qm-node` processes ([`crate::TestCluster`]).
//!
//! Why each remaining fake test (`client/tests/fake_replicas.rs`) needs a fake:
//!
//! * `a_retry_after_a_lost_answer_allocates_once`: the leader must apply the
//!   write and then lose the answer, exactly twice, so that the client's
//!   third attempt (same `request_id`) finds the record. A real replica loses
//!   an answer after applying only by accident of timing (a crash or a cut
//!   link between commit and reply), which no test can place.
//! * `a_write_that_applied_but_whose_answers_are_all_lost_is_unknown_not_failed`:
//!   the write must *certainly* have applied while every answer is lost. A
//!   real cluster shows a write whose outcome is unknown (a leader that
//!   cannot commit: `cluster.rs`), but cannot promise it applied.
//! * `a_refusal_caused_by_a_lost_earlier_attempt_is_unknown_not_failed`: the
//!   deregistration must apply, its answer be lost, and the retry reach a
//!   leader that applied it, so the retry is refused with NotFound; with real
//!   replicas whether the first attempt commits is a race.
//! * `a_bulk_release_whose_answers_are_lost_is_asked_again_and_releases_once`:
//!   bulk-release entries must apply and their answers be lost, more times
//!   than the call plan's own retries, so that `release_matching` has to
//!   ask again itself; as for the first test, a real replica loses an
//!   answer after applying only by accident of timing. The fake applies one
//!   `ReleaseMatching` entry per call (a real replica up to `entries_max`).
//! * `a_watch_drops_events_a_replica_replays_after_a_failover`: `qm-node`
//!   always resumes a watch exactly at the asked revision, so only a fake
//!   can replay older revisions to show the client drops them.
//! * `a_replica_that_failed_gets_another_attempt_once_followers_name_it_leader`:
//!   the replica that failed the client's attempt must be the one the
//!   followers then name as leader. With real replicas, which one wins the
//!   election after a pause or a restart is up to randomized timeouts.
//!
//! The replicas of a [`FakeCluster`] share one real [`AllocationTable`]
//! (perfect replication), so idempotency and event revisions are the table's
//! own. Each replica runs on its own Tokio runtime: [`FakeCluster::kill`]
//! shuts that runtime down, which closes the listener and every connection
//! at once, like `kill -9`. A replica's [`Role`] decides how it answers: as
//! the leader, or as a follower redirecting to the leader. Only the calls
//! those tests make are faked; the others answer `UNIMPLEMENTED`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use qm_client::convert::{event_to_proto, reply_from_record, request_from_proto};
use qm_client::proto::api;
use qm_client::proto::api::quartermaster_server::{Quartermaster, QuartermasterServer};
use qm_client::wire::{Leader, WireError};
use qm_state_machine::{AllocationTable, Command, CommandError, CommandResponse, Event, ReleaseFilter, StampedCommand};
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// How a fake replica answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    /// Redirects writes and linearizable reads to the leader it names, if any.
    Follower {
        leader: Option<usize>,
    },
}

/// What the replicas share: the table, and a feed of its events.
struct Shared {
    table: Mutex<AllocationTable>,
    events: broadcast::Sender<Event>,
    addrs: Vec<String>,
}

/// One replica's knobs and counters.
struct Control {
    role: Mutex<Role>,
    /// Calls this replica received.
    calls: AtomicU64,
    /// Writes still to apply and then answer `DEADLINE_EXCEEDED` (commit
    /// outcome unknown), as a leader that lost its quorum's acknowledgement would.
    answers_to_lose: AtomicU32,
    /// Watches start this many revisions early: a sloppy replica that
    /// replays, so the client must drop duplicates.
    watch_replay: AtomicU64,
    /// Calls still to leave unanswered, doing nothing, until the client gives
    /// up on them, as a paused (SIGSTOP) replica would.
    calls_to_stall: AtomicU32,
}

pub struct FakeCluster {
    shared: Arc<Shared>,
    controls: Vec<Arc<Control>>,
    runtimes: Vec<Option<tokio::runtime::Runtime>>,
}

impl FakeCluster {
    /// `size` replicas on free loopback ports; replica 0 leads, the others
    /// follow it.
    pub fn start(size: usize) -> FakeCluster {
        let listeners: Vec<std::net::TcpListener> = (0..size).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let addrs = listeners
            .iter()
            .map(|listener| listener.local_addr().unwrap().to_string())
            .collect();
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            table: Mutex::new(AllocationTable::default()),
            events,
            addrs,
        });
        let controls: Vec<Arc<Control>> = (0..size)
            .map(|id| {
                let role = if id == 0 {
                    Role::Leader
                } else {
                    Role::Follower { leader: Some(0) }
                };
                Arc::new(Control {
                    role: Mutex::new(role),
                    calls: AtomicU64::new(0),
                    answers_to_lose: AtomicU32::new(0),
                    watch_replay: AtomicU64::new(0),
                    calls_to_stall: AtomicU32::new(0),
                })
            })
            .collect();
        let mut cluster = FakeCluster {
            shared,
            controls,
            runtimes: (0..size).map(|_| None).collect(),
        };
        for (index, listener) in listeners.into_iter().enumerate() {
            cluster.serve(index, listener);
        }
        cluster
    }

    pub fn addrs(&self) -> Vec<String> {
        self.shared.addrs.clone()
    }

    pub fn addr(&self, index: usize) -> String {
        self.shared.addrs[index].clone()
    }

    /// Makes `leader` the leader and every other live replica its follower.
    pub fn elect(&self, leader: usize) {
        for (index, control) in self.controls.iter().enumerate() {
            *control.role.lock().unwrap() = if index == leader {
                Role::Leader
            } else {
                Role::Follower { leader: Some(leader) }
            };
        }
    }

    pub fn calls(&self, index: usize) -> u64 {
        self.controls[index].calls.load(Ordering::SeqCst)
    }

    pub fn lose_answers(&self, index: usize, writes: u32) {
        self.controls[index].answers_to_lose.store(writes, Ordering::SeqCst);
    }

    /// The next `calls` calls to replica `index` get no answer before the
    /// client's attempt timeout, and change nothing.
    pub fn stall_calls(&self, index: usize, calls: u32) {
        self.controls[index].calls_to_stall.store(calls, Ordering::SeqCst);
    }

    pub fn replay_watches(&self, index: usize, revisions: u64) {
        self.controls[index].watch_replay.store(revisions, Ordering::SeqCst);
    }

    /// Closes the replica's listener and every connection, like `kill -9`,
    /// and returns once its port refuses connections.
    pub fn kill(&mut self, index: usize) {
        let Some(runtime) = self.runtimes[index].take() else { return };
        runtime.shutdown_background();
        let addr = self.shared.addrs[index].parse().unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("replica {index} at {addr} still accepts connections after being killed");
    }

    /// Reads the shared table.
    pub fn with_table<T>(&self, read: impl FnOnce(&AllocationTable) -> T) -> T {
        read(&self.shared.table.lock().unwrap())
    }

    /// Applies a command directly, as if the leader had.
    pub fn apply(&self, command: Command) -> CommandResponse {
        apply(&self.shared, command).expect("the command applies")
    }

    fn serve(&mut self, index: usize, listener: std::net::TcpListener) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let service = FakeReplica {
            shared: self.shared.clone(),
            control: self.controls[index].clone(),
        };
        listener.set_nonblocking(true).unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tonic::transport::Server::builder()
                .add_service(QuartermasterServer::new(service))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        self.runtimes[index] = Some(runtime);
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        for index in 0..self.runtimes.len() {
            self.kill(index);
        }
    }
}

/// The longest a stalled call is held.
const STALL_MAX: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn apply(shared: &Shared, command: Command) -> Result<CommandResponse, Status> {
    let mut table = shared.table.lock().unwrap();
    let applied = table.apply(&StampedCommand::new(now_ms(), command));
    for event in applied.events {
        let _ = shared.events.send(event);
    }
    applied.result.map_err(status_of)
}

/// The server's error conventions, from the one place that defines them.
fn status_of(error: CommandError) -> Status {
    WireError::from(&error).to_status()
}

fn invalid_argument(invalid: &qm_state_machine::InvalidArgument) -> Status {
    WireError::from(invalid.clone()).to_status()
}

fn parse_id(id: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(id).map_err(|_| invalid_argument(&qm_state_machine::InvalidArgument::new("id", format!("{id:?} is not a uuid"))))
}

fn record_reply(response: CommandResponse) -> api::AllocationReply {
    reply_from_record(response.request().expect("a request's record"))
}

#[derive(Clone)]
struct FakeReplica {
    shared: Arc<Shared>,
    control: Arc<Control>,
}

impl FakeReplica {
    /// Counts the call and answers as the role says: `Ok` to go on, or a
    /// redirect.
    async fn admit(&self, stale: bool) -> Result<(), Status> {
        self.control.calls.fetch_add(1, Ordering::SeqCst);
        let stall = self
            .control
            .calls_to_stall
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok();
        if stall {
            // The client's timeout cancels the call, which drops this future
            // before it gets past here; the sleep only bounds a client that
            // never gives up.
            tokio::time::sleep(STALL_MAX).await;
            return Err(Status::unavailable("stalled"));
        }
        let role = self.control.role.lock().unwrap().clone();
        match role {
            Role::Leader => Ok(()),
            Role::Follower { .. } if stale => Ok(()),
            Role::Follower { leader: Some(leader) } => Err(WireError::NotLeader {
                leader: Some(Leader {
                    id: leader as u64,
                    addr: self.shared.addrs[leader].clone(),
                }),
            }
            .to_status()),
            Role::Follower { leader: None } => Err(WireError::NotLeader { leader: None }.to_status()),
        }
    }

    /// Applies a write; then, if told to, loses the answer.
    fn write(&self, command: Command) -> Result<CommandResponse, Status> {
        let response = apply(&self.shared, command)?;
        let lose = self
            .control
            .answers_to_lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
            .is_ok();
        if lose {
            // What qm-node answers when a write was not seen committed in time.
            return Err(Status::deadline_exceeded(
                "the write was not committed in time; its outcome is unknown (retry with the same request_id)",
            ));
        }
        Ok(response)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<api::EventMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Quartermaster for FakeReplica {
    async fn allocate(&self, request: Request<api::AllocateRequest>) -> Result<Response<api::AllocationReply>, Status> {
        self.admit(false).await?;
        let wire = request.into_inner().request.unwrap_or_default();
        let request = request_from_proto(&wire)
            .and_then(|request| request.validate())
            .map_err(|invalid| invalid_argument(&invalid))?;
        Ok(Response::new(record_reply(self.write(Command::Allocate(request))?)))
    }

    async fn release(&self, _: Request<api::ReleaseRequest>) -> Result<Response<api::AllocationReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn renew_lease(&self, _: Request<api::RenewLeaseRequest>) -> Result<Response<api::AllocationReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get(&self, request: Request<api::GetRequest>) -> Result<Response<api::AllocationReply>, Status> {
        let request = request.into_inner();
        self.admit(request.stale).await?;
        let id = parse_id(&request.id)?;
        let table = self.shared.table.lock().unwrap();
        let record = table
            .get(id)
            .ok_or_else(|| Status::not_found(format!("no request or allocation with id {id}")))?;
        Ok(Response::new(reply_from_record(record)))
    }

    async fn list(&self, _: Request<api::ListRequest>) -> Result<Response<api::ListReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type PipelineStream = Pin<Box<dyn Stream<Item = Result<api::PipelinedReply, Status>> + Send>>;

    /// Answered as a replica from before `Pipeline` would: the client then
    /// sends its writes as unary calls, which these tests fake.
    async fn pipeline(&self, _: Request<tonic::Streaming<api::PipelinedCall>>) -> Result<Response<Self::PipelineStream>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<api::WatchRequest>) -> Result<Response<EventStream>, Status> {
        self.control.calls.fetch_add(1, Ordering::SeqCst);
        let from = request
            .into_inner()
            .from_revision
            .saturating_sub(self.control.watch_replay.load(Ordering::SeqCst))
            .max(1);
        // Subscribe before reading the history, so nothing falls between them.
        let mut live = self.shared.events.subscribe();
        let history: Vec<Event> = {
            let table = self.shared.table.lock().unwrap();
            let history = table
                .events_from(from)
                .map_err(|error| Status::out_of_range(error.to_string()))?
                .cloned()
                .collect();
            history
        };
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut next = from;
            for event in history {
                next = event.revision + 1;
                if sender.send(Ok(event_to_proto(&event))).await.is_err() {
                    return;
                }
            }
            while let Ok(event) = live.recv().await {
                if event.revision >= next {
                    next = event.revision + 1;
                    if sender.send(Ok(event_to_proto(&event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn register_provider(&self, _: Request<api::RegisterProviderRequest>) -> Result<Response<api::ProviderReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn heartbeat(&self, _: Request<api::HeartbeatRequest>) -> Result<Response<api::HeartbeatReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn deregister_provider(&self, request: Request<api::DeregisterProviderRequest>) -> Result<Response<api::ProviderReply>, Status> {
        self.admit(false).await?;
        let provider_id = request.into_inner().provider_id;
        self.write(Command::DeregisterProvider {
            provider_id: provider_id.clone(),
        })?;
        Ok(Response::new(api::ProviderReply {
            provider_id,
            status: "removed".into(),
            resources: 0,
        }))
    }

    async fn list_providers(&self, _: Request<api::ListProvidersRequest>) -> Result<Response<api::ListProvidersReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn confirm(&self, _: Request<api::ConfirmRequest>) -> Result<Response<api::AllocationReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn system_state(&self, _: Request<api::SystemStateRequest>) -> Result<Response<api::SystemStateReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn cluster_status(&self, _: Request<api::ClusterStatusRequest>) -> Result<Response<api::ClusterStatusReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn add_replica(&self, _: Request<api::AddReplicaRequest>) -> Result<Response<api::ClusterStatusReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn remove_replica(&self, _: Request<api::RemoveReplicaRequest>) -> Result<Response<api::ClusterStatusReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn advance_cursor(&self, _: Request<api::AdvanceCursorRequest>) -> Result<Response<api::CursorReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn release_matching(&self, request: Request<api::ReleaseMatchingRequest>) -> Result<Response<api::ReleaseMatchingReply>, Status> {
        self.admit(false).await?;
        let call = request.into_inner();
        let non_empty = |text: String| (!text.is_empty()).then_some(text);
        let after = match call.after.as_str() {
            "" => None,
            text => Some(parse_id(text)?),
        };
        let command = Command::ReleaseMatching {
            filter: ReleaseFilter {
                namespace: non_empty(call.namespace),
                requester_id: non_empty(call.requester_id),
                provider_id: non_empty(call.provider_id),
            },
            after,
        };
        match self.write(command)? {
            CommandResponse::ReleasedMatching { released, cancelled, next } => Ok(Response::new(api::ReleaseMatchingReply {
                released,
                cancelled,
                entries: 1,
                next: next.map(|id| id.to_string()).unwrap_or_default(),
            })),
            other => Err(Status::internal(format!("the table answered a bulk release with {other:?}"))),
        }
    }

    async fn set_quota(&self, _: Request<api::SetQuotaRequest>) -> Result<Response<api::NamespacePolicyReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn delete_quota(&self, _: Request<api::DeleteQuotaRequest>) -> Result<Response<api::NamespacePolicyReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_quotas(&self, _: Request<api::ListQuotasRequest>) -> Result<Response<api::ListQuotasReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn set_preemption(&self, _: Request<api::SetPreemptionRequest>) -> Result<Response<api::NamespacePolicyReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn preview_allocate(&self, _: Request<api::AllocateRequest>) -> Result<Response<api::PreviewReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn optimize(&self, _: Request<api::OptimizeRequest>) -> Result<Response<api::OptimizeReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn set_provider_scheduling(
        &self,
        _: Request<api::SetProviderSchedulingRequest>,
    ) -> Result<Response<api::ProviderSchedulingReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn set_policy(&self, _: Request<api::SetPolicyRequest>) -> Result<Response<api::PolicyReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get_policy(&self, _: Request<api::GetPolicyRequest>) -> Result<Response<api::PolicyReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_policies(&self, _: Request<api::ListPoliciesRequest>) -> Result<Response<api::ListPoliciesReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn delete_policy(&self, _: Request<api::DeletePolicyRequest>) -> Result<Response<api::DeletePolicyReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn bind_policy(&self, _: Request<api::PolicyBindingRequest>) -> Result<Response<api::PolicyReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn unbind_policy(&self, _: Request<api::PolicyBindingRequest>) -> Result<Response<api::PolicyReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type SnapshotSaveStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<api::SnapshotChunk, Status>> + Send>>;

    async fn snapshot_save(&self, _: Request<api::SnapshotSaveRequest>) -> Result<Response<Self::SnapshotSaveStream>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}
