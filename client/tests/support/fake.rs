//! In-process fake replicas that answer the way `qm-node` does, for testing
//! the client's failover without Raft.
//!
//! The replicas of a [`FakeCluster`] share one real [`AllocationTable`]
//! (perfect replication), so idempotency and event revisions are the table's
//! own. Each replica runs on its own Tokio runtime: [`FakeCluster::kill`]
//! shuts that runtime down, which closes the listener and every connection
//! at once, like `kill -9`; [`FakeCluster::restart`] serves the same port
//! again. A replica's [`Role`] decides how it answers: as the leader, as a
//! follower redirecting to a leader (or to none), or not at all (a paused
//! process).

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use qm_client::convert::{event_to_proto, registration_from_proto, reply_from_record, request_from_proto, usage_to_proto};
use qm_client::proto::api;
use qm_client::proto::api::quartermaster_server::{Quartermaster, QuartermasterServer};
use qm_client::{FIELD_HEADER, LEADER_ADDR_HEADER, LEADER_ID_HEADER};
use qm_state_machine::{AllocationTable, Command, CommandError, CommandResponse, Event, StampedCommand};
use tokio::sync::{broadcast, mpsc};
use tonic::metadata::MetadataValue;
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
    /// Accepts connections and never answers: a SIGSTOPped process.
    Paused,
}

/// What the replicas share: the table, and a feed of its events.
struct Shared {
    table: Mutex<AllocationTable>,
    events: broadcast::Sender<Event>,
    addrs: Vec<String>,
}

/// One replica's knobs and counters.
struct Control {
    id: usize,
    role: Mutex<Role>,
    /// Calls this replica received.
    calls: AtomicU64,
    /// Writes still to apply and then answer `UNAVAILABLE` (commit outcome
    /// unknown), as a leader that lost its quorum's acknowledgement would.
    answers_to_lose: AtomicU32,
    /// Watches start this many revisions early: a sloppy replica that
    /// replays, so the client must drop duplicates.
    watch_replay: AtomicU64,
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
                    id,
                    role: Mutex::new(role),
                    calls: AtomicU64::new(0),
                    answers_to_lose: AtomicU32::new(0),
                    watch_replay: AtomicU64::new(0),
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

    pub fn set_role(&self, index: usize, role: Role) {
        *self.controls[index].role.lock().unwrap() = role;
    }

    pub fn calls(&self, index: usize) -> u64 {
        self.controls[index].calls.load(Ordering::SeqCst)
    }

    pub fn lose_answers(&self, index: usize, writes: u32) {
        self.controls[index].answers_to_lose.store(writes, Ordering::SeqCst);
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

    /// Serves the replica's port again.
    pub fn restart(&mut self, index: usize) {
        assert!(self.runtimes[index].is_none(), "replica {index} is running");
        let listener = std::net::TcpListener::bind(self.shared.addrs[index].as_str()).unwrap();
        self.serve(index, listener);
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

/// The server's error conventions.
fn status_of(error: CommandError) -> Status {
    match error {
        CommandError::InvalidArgument(invalid) => invalid_argument(&invalid),
        CommandError::NotFound { .. } | CommandError::UnknownProvider { .. } => Status::not_found(error.to_string()),
        CommandError::RequestIdReused { .. } => Status::already_exists(error.to_string()),
        _ => Status::failed_precondition(error.to_string()),
    }
}

fn invalid_argument(invalid: &qm_state_machine::InvalidArgument) -> Status {
    let mut status = Status::invalid_argument(invalid.to_string());
    status
        .metadata_mut()
        .insert(FIELD_HEADER, MetadataValue::try_from(invalid.field.as_str()).unwrap());
    status
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
    /// Counts the call and answers as the role says: `Ok` to go on, a
    /// redirect, or never (paused).
    async fn admit(&self, stale: bool) -> Result<(), Status> {
        self.control.calls.fetch_add(1, Ordering::SeqCst);
        let role = self.control.role.lock().unwrap().clone();
        match role {
            Role::Leader => Ok(()),
            Role::Follower { .. } if stale => Ok(()),
            Role::Follower { leader: Some(leader) } => {
                let mut status = Status::unavailable(format!("not the leader; the leader is node {leader}"));
                status.metadata_mut().insert(
                    LEADER_ADDR_HEADER,
                    MetadataValue::try_from(self.shared.addrs[leader].as_str()).unwrap(),
                );
                status.metadata_mut().insert(LEADER_ID_HEADER, MetadataValue::from(leader as u64));
                Err(status)
            }
            Role::Follower { leader: None } => Err(Status::unavailable(
                "no leader is known right now (election in progress or no quorum); retry shortly",
            )),
            Role::Paused => std::future::pending().await,
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
            return Err(Status::unavailable("commit outcome unknown: no quorum acknowledgement in time"));
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

    async fn release(&self, request: Request<api::ReleaseRequest>) -> Result<Response<api::AllocationReply>, Status> {
        self.admit(false).await?;
        let id = parse_id(&request.into_inner().id)?;
        Ok(Response::new(record_reply(self.write(Command::Release { id })?)))
    }

    async fn renew_lease(&self, request: Request<api::RenewLeaseRequest>) -> Result<Response<api::AllocationReply>, Status> {
        self.admit(false).await?;
        let id = parse_id(&request.into_inner().id)?;
        Ok(Response::new(record_reply(self.write(Command::RenewLease { id })?)))
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

    async fn list(&self, request: Request<api::ListRequest>) -> Result<Response<api::ListReply>, Status> {
        self.admit(request.get_ref().stale).await?;
        let table = self.shared.table.lock().unwrap();
        let records = table
            .list(&qm_state_machine::ListFilter::default())
            .into_iter()
            .map(reply_from_record)
            .collect();
        Ok(Response::new(api::ListReply { records }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<api::WatchRequest>) -> Result<Response<EventStream>, Status> {
        self.control.calls.fetch_add(1, Ordering::SeqCst);
        if *self.control.role.lock().unwrap() == Role::Paused {
            std::future::pending::<()>().await;
        }
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

    async fn register_provider(&self, request: Request<api::RegisterProviderRequest>) -> Result<Response<api::ProviderReply>, Status> {
        self.admit(false).await?;
        let registration = registration_from_proto(request.get_ref())
            .and_then(|r| r.validate())
            .map_err(|invalid| invalid_argument(&invalid))?;
        match self.write(Command::RegisterProvider(registration))? {
            CommandResponse::Provider {
                provider_id,
                status,
                resources,
            } => Ok(Response::new(api::ProviderReply {
                provider_id,
                status: qm_client::convert::provider_status_name(status).into(),
                resources,
            })),
            other => Err(Status::internal(format!("unexpected {other:?}"))),
        }
    }

    async fn heartbeat(&self, request: Request<api::HeartbeatRequest>) -> Result<Response<api::HeartbeatReply>, Status> {
        self.admit(false).await?;
        let table = self.shared.table.lock().unwrap();
        let provider = table.provider(&request.get_ref().provider_id);
        let status = provider
            .map(|p| qm_client::convert::provider_status_name(p.status).to_owned())
            .unwrap_or_default();
        Ok(Response::new(api::HeartbeatReply {
            known: provider.is_some(),
            status,
            revision: table.revision(),
        }))
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

    async fn system_state(&self, request: Request<api::SystemStateRequest>) -> Result<Response<api::SystemStateReply>, Status> {
        self.admit(request.get_ref().stale).await?;
        Ok(Response::new(usage_to_proto(&self.shared.table.lock().unwrap().usage())))
    }

    async fn cluster_status(&self, _: Request<api::ClusterStatusRequest>) -> Result<Response<api::ClusterStatusReply>, Status> {
        self.admit(true).await?;
        let leader = match &*self.control.role.lock().unwrap() {
            Role::Leader => Some(self.control.id),
            Role::Follower { leader } => *leader,
            Role::Paused => None,
        };
        Ok(Response::new(api::ClusterStatusReply {
            node_id: self.control.id as u64,
            leader_id: leader.map(|id| id as u64),
            leader_addr: leader.map(|id| self.shared.addrs[id].clone()).unwrap_or_default(),
            ..Default::default()
        }))
    }

    async fn add_replica(&self, _: Request<api::AddReplicaRequest>) -> Result<Response<api::ClusterStatusReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn remove_replica(&self, _: Request<api::RemoveReplicaRequest>) -> Result<Response<api::ClusterStatusReply>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

/// Waits until `condition` holds, polling; panics after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
