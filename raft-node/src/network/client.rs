//! The sending side of Raft traffic.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::proto::raft_client::RaftClient;
use crate::proto::RaftMessage;
use openraft::error::{InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::codec;
use crate::consensus::announce::{Announcement, FormatVersions, PeerBook, HEADER_REFUSED};
use crate::network::dial;
use crate::security::reload::ReloadableTls;
use crate::storage::ClusterIdentity;
use crate::types::{NodeId, TypeConfig};
use tracing::warn;

/// How long a peer connection attempt may take before the peer counts as unreachable.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;

/// Builds one [`PeerClient`] per target; openraft calls it when replication starts.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    /// The address peer connections originate from: this replica's listen
    /// IP. On a host with one address per replica (127.0.0.N in the
    /// fault-injection suite) a peer can then tell which replica a
    /// connection comes from, which is what lets a proxy cut single links.
    local_ip: Option<IpAddr>,
    /// With mutual TLS: this replica's certificate, presented to peers, and
    /// the CA and CRL their certificates are checked against, as last
    /// (re)loaded. Peers are then dialled over TLS (`network::dial`).
    tls: Option<Arc<ReloadableTls>>,
    /// What this replica announces on every RPC, and where it records what
    /// peers answer (`consensus::announce`); `None`: nothing announced.
    announcing: Option<Arc<Announcing>>,
}

/// This replica's side of the announcement.
pub struct Announcing {
    own_id: NodeId,
    identity: ClusterIdentity,
    formats: FormatVersions,
    peers: Arc<PeerBook>,
}

impl Announcing {
    fn announcement(&self) -> Announcement {
        Announcement {
            replica_id: Some(self.own_id),
            cluster_id: self.identity.get(),
            formats: Some(self.formats),
        }
    }
}

impl PeerNetwork {
    pub fn new(listen: SocketAddr, tls: Option<Arc<ReloadableTls>>) -> Self {
        PeerNetwork {
            local_ip: (!listen.ip().is_unspecified()).then_some(listen.ip()),
            tls,
            announcing: None,
        }
    }

    /// Announces `own_id`'s cluster id and `formats` to peers and records
    /// their answers and refusals in `peers`.
    pub fn announcing(mut self, own_id: NodeId, identity: ClusterIdentity, formats: FormatVersions, peers: Arc<PeerBook>) -> Self {
        self.announcing = Some(Arc::new(Announcing {
            own_id,
            identity,
            formats,
            peers,
        }));
        self
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            local_ip: self.local_ip,
            tls: self.tls.clone(),
            channel: None,
            generation: 0,
            announcing: self.announcing.clone(),
        }
    }
}

/// A lazily connected gRPC client for one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    local_ip: Option<IpAddr>,
    tls: Option<Arc<ReloadableTls>>,
    channel: Option<RaftClient<Channel>>,
    /// The TLS generation `channel` was dialled with: after a reload the
    /// peer is dialled again with the new certificate, so that one revoked
    /// or expired after a rotation is not presented for ever, and checked
    /// against the new CRL, so that a peer revoked meanwhile gets no more
    /// of the log.
    generation: u64,
    announcing: Option<Arc<Announcing>>,
}

/// Which RPC of the Raft service to call.
#[derive(Clone, Copy)]
enum RaftCall {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl PeerClient {
    /// The channel to the peer, dialled again when the TLS material was
    /// reloaded: the new CRL then decides whether the peer is still trusted,
    /// and the channel dialled before (with the connections it holds) is dropped.
    fn client(&mut self) -> Result<RaftClient<Channel>, Unreachable> {
        let generation = self.tls.as_ref().map_or(0, |tls| tls.generation());
        if let Some(client) = self.channel.as_ref().filter(|_| generation == self.generation) {
            return Ok(client.clone());
        }
        self.channel = None;
        let tls = self.tls.as_ref().map(|tls| tls.current());
        self.generation = generation;
        let channel = dial::peer_channel(
            &self.addr,
            tls.as_deref(),
            self.local_ip,
            Duration::from_millis(PEER_CONNECT_TIMEOUT_MS),
        )
        .map_err(|e| Unreachable::new(&std::io::Error::other(e)))?;
        let client = RaftClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        self.channel = Some(client.clone());
        Ok(client)
    }

    /// Sends one request and decodes openraft's `Result` from the reply.
    async fn call<Req, Resp, E>(
        &mut self,
        call: RaftCall,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self.client().map_err(RPCError::Unreachable)?;
        let mut message = tonic::Request::new(RaftMessage {
            payload: codec::encode(request),
        });
        if let Some(announcing) = &self.announcing {
            announcing.announcement().to_metadata(message.metadata_mut());
        }
        let sent = async {
            match call {
                RaftCall::AppendEntries => client.append_entries(message).await,
                RaftCall::Vote => client.vote(message).await,
                RaftCall::InstallSnapshot => client.install_snapshot(message).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), sent).await {
            Err(elapsed) => return Err(RPCError::Network(NetworkError::new(&elapsed))),
            Ok(Err(status)) if status.metadata().contains_key(HEADER_REFUSED) => {
                // The peer refused this replica (another cluster, or a
                // build too far apart): recorded and logged once; openraft
                // backs off from an unreachable peer and tries again later.
                if let Some(announcing) = &self.announcing {
                    let said = Announcement::from_metadata(status.metadata());
                    let refusal = format!("refused this replica: {}", status.message());
                    if announcing.peers.refused(self.target, &said, refusal) {
                        warn!(
                            peer = self.target,
                            reason = status.message(),
                            "a peer refuses this replica's Raft traffic"
                        );
                    }
                }
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Err(status)) => {
                // A broken connection is re-established on the next call.
                self.channel = None;
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => RPCError::Unreachable(Unreachable::new(&status)),
                    _ => RPCError::Network(NetworkError::new(&status)),
                });
            }
            Ok(Ok(reply)) => {
                if let Some(announcing) = &self.announcing {
                    announcing
                        .peers
                        .accepted(self.target, &Announcement::from_metadata(reply.metadata()));
                }
                reply.into_inner()
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = request.entries.len() as u64;
        if entries <= 1 {
            return self.call(RaftCall::AppendEntries, &request, &option).await;
        }
        // openraft drops an AppendEntries at its deadline (the heartbeat
        // interval) and sends the same batch again. A follower that needs
        // longer for a batch (up to REPLICATION_BATCH_BYTES_MAX: a busy
        // core, a slow disk, a profiler) then never catches up: one under
        // heaptrack stayed at the same index for minutes while its leader
        // timed out 13,000 times. At the soft deadline, ask for half the
        // batch instead; openraft retries at once with that many entries
        // for its next ten batches, then tries full ones again.
        match tokio::time::timeout(option.soft_ttl(), self.call(RaftCall::AppendEntries, &request, &option)).await {
            Ok(result) => result,
            Err(_) => Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2))),
        }
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>> {
        self.call(RaftCall::InstallSnapshot, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftCall::Vote, &request, &option).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, Vote};
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::proto::raft_server::{Raft as RaftService, RaftServer};
    use crate::types::{Entry, LogId};

    /// A peer that takes `PER_ENTRY` per entry of an AppendEntries, as a
    /// follower on a slow core or disk does, then accepts it.
    struct SlowPeer;

    const PER_ENTRY: Duration = Duration::from_millis(50);

    #[tonic::async_trait]
    impl RaftService for SlowPeer {
        async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            let append: AppendEntriesRequest<TypeConfig> = codec::decode(&request.into_inner().payload).unwrap();
            tokio::time::sleep(PER_ENTRY * append.entries.len() as u32).await;
            let accepted: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = Ok(AppendEntriesResponse::Success);
            Ok(Response::new(RaftMessage {
                payload: codec::encode(&accepted),
            }))
        }

        async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    fn append(entries: u64) -> AppendEntriesRequest<TypeConfig> {
        let log_id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: (1..=entries)
                .map(|index| Entry {
                    log_id: log_id(index),
                    payload: EntryPayload::Blank,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_batch_that_outlasts_the_soft_deadline_is_asked_again_in_half() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(SlowPeer))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let mut client = PeerNetwork::new("127.0.0.1:0".parse().unwrap(), None)
            .new_client(2, &BasicNode::new(addr.to_string()))
            .await;
        // openraft's deadline for an AppendEntries is the heartbeat interval;
        // its soft part is three quarters of it (300 ms here).
        let option = || RPCOption::new(Duration::from_millis(400));

        // --- 10 entries take 500 ms: half of them are asked for instead
        match client.append_entries(append(10), option()).await {
            Err(RPCError::PayloadTooLarge(too_large)) => assert_eq!(5, too_large.entries_hint()),
            other => panic!("expected a smaller batch to be asked for, got {other:?}"),
        }
        // --- 2 entries take 100 ms: accepted
        let accepted = client
            .append_entries(append(2), option())
            .await
            .expect("a batch inside the deadline");
        assert!(matches!(accepted, AppendEntriesResponse::Success));
        // --- one entry cannot be split: past the deadline it fails as
        // before (openraft sends it again later)
        let late = client.append_entries(append(1), RPCOption::new(Duration::from_millis(20))).await;
        assert!(matches!(late, Err(RPCError::Network(_))), "{late:?}");
    }
}
