//! [`ReplicaSet`]: one lazily connected channel per replica, and which of them
//! the client believes is the leader.
//!
//! The set starts with the configured endpoints and grows when a NotLeader
//! hint names a leader the configuration did not list (a replica added since),
//! up to [`REPLICAS_MAX`]. Locks are held only to read or change the list,
//! never across an await.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Request, Response, Status};

use crate::call_plan::ReplicaView;
use crate::config::{check_endpoint, ClientConfig, ConfigError, REPLICAS_MAX};
use crate::pipeline::PipelineSlot;
use crate::proto::api::pipelined_call::Call as PipelinedRequest;
use crate::proto::api::quartermaster_client::QuartermasterClient;
use crate::proto::api::AllocationReply;
use crate::tls;

/// One replica: its address, a channel that connects on first use and
/// reconnects after failures, and the pipeline stream on that channel.
#[derive(Clone, Debug)]
pub(crate) struct Replica {
    pub(crate) addr: String,
    channel: Channel,
    /// `None` when the client sends every write as its own call.
    pipeline: Option<Arc<PipelineSlot>>,
}

/// The largest reply the client decodes. tonic's default of 4 MiB is
/// passed by whole-table answers of a large cluster (ListProviders at
/// 120,000 units, SystemState, a long List), which then failed with
/// `OUT_OF_RANGE` however healthy the cluster was. Replicas encode replies
/// without a limit; this still bounds what a client holds for one message.
pub const REPLY_SIZE_MAX_BYTES: usize = 256 * 1024 * 1024;

impl Replica {
    pub(crate) fn client(&self) -> QuartermasterClient<Channel> {
        QuartermasterClient::new(self.channel.clone()).max_decoding_message_size(REPLY_SIZE_MAX_BYTES)
    }

    /// An allocate, release or renew: on the replica's pipeline stream when
    /// this client pipelines (`pipeline_writes`), else as its own
    /// call (with the request's metadata, its deadline among them).
    pub(crate) async fn write(&self, request: Request<PipelinedRequest>) -> Result<Response<AllocationReply>, Status> {
        if let Some(slot) = &self.pipeline {
            let pipeline = slot.get_or_open(|| self.client()).await?;
            return pipeline.call(request.into_inner()).await.map(Response::new);
        }
        let (metadata, extensions, call) = request.into_parts();
        let mut client = self.client();
        match call {
            PipelinedRequest::Allocate(message) => client.allocate(Request::from_parts(metadata, extensions, message)).await,
            PipelinedRequest::Release(message) => client.release(Request::from_parts(metadata, extensions, message)).await,
            PipelinedRequest::RenewLease(message) => client.renew_lease(Request::from_parts(metadata, extensions, message)).await,
        }
    }
}

/// HTTP/2 keepalive ping interval on a connection with calls in flight. A
/// replica that stops answering pings (paused, cut off) has its connection
/// closed after `attempt_timeout_ms` more, which ends a watch stream on it
/// so the watch can move to another replica.
pub const KEEPALIVE_INTERVAL_MS: u64 = 1_000;

#[derive(Debug)]
pub(crate) struct ReplicaSet {
    connect_timeout: Duration,
    keepalive_timeout: Duration,
    /// Whether writes go on each replica's pipeline stream.
    pipeline_writes: bool,
    /// The certificates every channel presents and trusts (read once, at
    /// construction); `None`: plain http/2.
    tls: Option<ClientTlsConfig>,
    replicas: Mutex<Vec<Replica>>,
    /// Index of the believed leader; `NO_LEADER` when unknown.
    leader: AtomicUsize,
}

const NO_LEADER: usize = usize::MAX;

impl ReplicaSet {
    /// Channels for every endpoint. Must run inside a Tokio runtime: each
    /// channel spawns its connection task.
    pub(crate) fn new(config: &ClientConfig) -> Result<ReplicaSet, ConfigError> {
        let mut set = ReplicaSet {
            connect_timeout: config.connect_timeout(),
            keepalive_timeout: config.attempt_timeout(),
            pipeline_writes: config.pipeline_writes,
            tls: config.tls.as_ref().map(tls::TlsConfig::load).transpose()?,
            replicas: Mutex::new(Vec::new()),
            leader: AtomicUsize::new(NO_LEADER),
        };
        let replicas = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(position, addr)| {
                set.connect(addr)
                    .map_err(|reason| ConfigError::new(format!("endpoints[{position}]"), reason))
            })
            .collect::<Result<Vec<_>, _>>()?;
        set.replicas = Mutex::new(replicas);
        Ok(set)
    }

    /// A lazy channel to `addr`: `https` with this client's certificate when
    /// TLS is configured, plain http/2 otherwise.
    fn connect(&self, addr: &str) -> Result<Replica, String> {
        check_endpoint(addr)?;
        let endpoint = tls::endpoint(addr, self.tls.as_ref())?;
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(self.keepalive_timeout)
            .connect_lazy();
        Ok(Replica {
            addr: addr.to_owned(),
            channel,
            pipeline: self.pipeline_writes.then(Arc::default),
        })
    }

    pub(crate) fn get(&self, index: usize) -> Replica {
        self.lock()[index].clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Where a call starts: the believed leader, else the first replica.
    pub(crate) fn first_target(&self) -> usize {
        self.leader_index().unwrap_or(0)
    }

    /// The replica after `index`, wrapping around.
    pub(crate) fn next_after(&self, index: usize) -> usize {
        (index + 1) % self.len()
    }

    /// The next replica after `index` that is not in `avoid`; just the next
    /// one when every replica is to be avoided.
    pub(crate) fn next_avoiding(&self, index: usize, avoid: &[usize]) -> usize {
        next_avoiding(self.len(), index, avoid)
    }

    pub(crate) fn leader_index(&self) -> Option<usize> {
        let leader = self.leader.load(Ordering::Relaxed);
        (leader != NO_LEADER).then_some(leader)
    }

    pub(crate) fn leader_addr(&self) -> Option<String> {
        self.leader_index().map(|index| self.get(index).addr)
    }

    pub(crate) fn set_leader(&self, index: usize) {
        assert!(index < self.len(), "leader index {index} out of {} replicas", self.len());
        self.leader.store(index, Ordering::Relaxed);
    }

    /// Forgets the leader if it is `index` (another call may already have
    /// learned a newer one).
    pub(crate) fn forget_leader(&self, index: usize) {
        let _ = self.leader.compare_exchange(index, NO_LEADER, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The index of the replica at `addr`, adding it if it is new and the set
    /// has room. `None` when the address is malformed or the set is full.
    pub(crate) fn index_of_or_add(&self, addr: &str) -> Option<usize> {
        let mut replicas = self.lock();
        if let Some(index) = replicas.iter().position(|replica| replica.addr == addr) {
            return Some(index);
        }
        if replicas.len() >= REPLICAS_MAX {
            return None;
        }
        let replica = self.connect(addr).ok()?;
        replicas.push(replica);
        Some(replicas.len() - 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Replica>> {
        // A panic while holding this lock cannot leave the list half-changed
        // (it is only pushed to), so a poisoned lock is still consistent.
        self.replicas.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Of `len` replicas, the next after `index` that is not in `avoid`; just
/// the next one when every replica is to be avoided.
pub(crate) fn next_avoiding(len: usize, index: usize, avoid: &[usize]) -> usize {
    (1..=len)
        .map(|step| (index + step) % len)
        .find(|candidate| !avoid.contains(candidate))
        .unwrap_or((index + 1) % len)
}

impl ReplicaView for ReplicaSet {
    fn addr(&self, index: usize) -> String {
        self.get(index).addr
    }

    fn index_of_or_add(&self, addr: &str) -> Option<usize> {
        ReplicaSet::index_of_or_add(self, addr)
    }

    fn next_avoiding(&self, index: usize, avoid: &[usize]) -> usize {
        ReplicaSet::next_avoiding(self, index, avoid)
    }

    fn set_leader(&self, index: usize) {
        ReplicaSet::set_leader(self, index)
    }

    fn forget_leader(&self, index: usize) {
        ReplicaSet::forget_leader(self, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ReplicaSet {
        ReplicaSet::new(&ClientConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn calls_start_at_the_leader_once_known() {
        let replicas = set();
        assert_eq!((0, None), (replicas.first_target(), replicas.leader_addr()));

        replicas.set_leader(2);

        assert_eq!(
            (2, Some("127.0.0.1:7103".to_owned())),
            (replicas.first_target(), replicas.leader_addr())
        );
    }

    #[tokio::test]
    async fn forgetting_another_replica_keeps_the_leader() {
        let replicas = set();
        replicas.set_leader(1);

        replicas.forget_leader(0);
        assert_eq!(Some(1), replicas.leader_index());

        replicas.forget_leader(1);
        assert_eq!(None, replicas.leader_index());
    }

    #[tokio::test]
    async fn failover_goes_round_the_replicas() {
        let replicas = set();

        let order: Vec<usize> = std::iter::successors(Some(0), |index| Some(replicas.next_after(*index)))
            .take(5)
            .collect();

        assert_eq!(vec![0, 1, 2, 0, 1], order);
    }

    #[tokio::test]
    async fn failover_skips_replicas_that_failed_until_all_have() {
        let replicas = set();

        assert_eq!(2, replicas.next_avoiding(0, &[1]));
        assert_eq!(2, replicas.next_avoiding(1, &[0]));
        assert_eq!(1, replicas.next_avoiding(0, &[0, 2]));
        assert_eq!(1, replicas.next_avoiding(0, &[0, 1, 2]), "all failed: plain rotation");
    }

    #[tokio::test]
    async fn a_hinted_leader_is_added_once_and_bounded() {
        let replicas = set();

        assert_eq!(Some(1), replicas.index_of_or_add("127.0.0.1:7102"));
        assert_eq!(Some(3), replicas.index_of_or_add("127.0.0.1:7104"));
        assert_eq!(Some(3), replicas.index_of_or_add("127.0.0.1:7104"));
        assert_eq!(None, replicas.index_of_or_add("not an address"));
        for port in 7105..7200 {
            replicas.index_of_or_add(&format!("127.0.0.1:{port}"));
        }
        assert_eq!(REPLICAS_MAX, replicas.len());
        assert_eq!(None, replicas.index_of_or_add("127.0.0.1:7300"));
    }
}
