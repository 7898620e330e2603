//! [`TestCluster`]: the replicas under test, each behind its proxy, and what
//! the nemesis can do to them. Built on `qm_testkit::local_cluster`, which
//! starts real `qm-node` processes, signals only the pids it started and
//! kills them all when dropped. On a TLS run every replica gets the same
//! `resource_manager` certificate (`LocalCluster` probes them with it too),
//! and membership changes present the admin certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use qm_client::{Client, ClientConfig};
use qm_testkit::local_cluster::{free_addr_on, LocalCluster, ReplicaAddrs};

use crate::config::{RunConfig, REPLICA_ID_MAX};
use crate::credentials::Credentials;
use crate::error::JepsenError;
use crate::proxy::{replica_ip, LinkState, NetProxy};

/// How long a fresh cluster may take to elect its first leader.
pub const FIRST_LEADER_TIMEOUT_MS: u64 = 30_000;
/// Deadline of one membership call: adding a replica waits for it to catch up.
pub const MEMBERSHIP_CALL_TIMEOUT_MS: u64 = 20_000;
/// How long one status probe of a replica may take.
pub const STATUS_PROBE_TIMEOUT_MS: u64 = 1_000;

/// The cluster under test and the faults currently applied to it.
pub struct TestCluster {
    local: LocalCluster,
    proxy: NetProxy,
    /// The voters, as the last membership change left them.
    members: BTreeSet<u64>,
    /// Replicas the nemesis killed and has not restarted.
    killed: BTreeSet<u64>,
    /// Replicas the nemesis paused and has not resumed.
    paused: BTreeSet<u64>,
    /// Membership calls go through this client, with a long deadline (and
    /// the admin certificate on a TLS run: only admin may change membership).
    admin: Client,
    next_id: u64,
}

fn cluster_error(context: &str) -> impl FnOnce(anyhow::Error) -> JepsenError + '_ {
    move |error| JepsenError::cluster(format!("{context}: {error:#}"))
}

impl TestCluster {
    /// Starts `config.nodes` replicas behind proxies, with the replica
    /// certificate of `credentials` if it has one, and waits for a leader.
    pub async fn start(config: &RunConfig, credentials: &Credentials) -> Result<TestCluster, JepsenError> {
        let proxy = NetProxy::new();
        let mut layout = BTreeMap::new();
        for id in 1..=config.nodes {
            layout.insert(id, laid_out(&proxy, id).await?);
        }
        let mut flags = config.node_flags();
        flags.extend(credentials.node_flags());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let local = LocalCluster::configure_with(&config.node_binary, layout, &flags).map_err(cluster_error("laying out"))?;
        for id in 1..=config.nodes {
            local.start_replica(id).map_err(cluster_error("starting a replica"))?;
        }
        local
            .wait_for_leader(Duration::from_millis(FIRST_LEADER_TIMEOUT_MS))
            .await
            .map_err(cluster_error("first election"))?;
        let endpoints: Vec<String> = local.endpoints();
        let admin = Client::new(ClientConfig {
            request_timeout_ms: MEMBERSHIP_CALL_TIMEOUT_MS,
            attempt_timeout_ms: MEMBERSHIP_CALL_TIMEOUT_MS,
            tls: credentials.admin(),
            ..ClientConfig::with_endpoints(endpoints)
        })
        .map_err(JepsenError::cluster)?;
        Ok(TestCluster {
            local,
            proxy,
            members: (1..=config.nodes).collect(),
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
            admin,
            next_id: config.nodes + 1,
        })
    }

    /// The admin's client (long deadline; the admin certificate on a TLS
    /// run): membership changes, and the optimize nemesis's plans, drains
    /// and uncordons, which are admin calls too.
    pub fn admin(&self) -> &Client {
        &self.admin
    }

    /// The voters' advertised (proxy) addresses, for clients.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|id| self.local.addr(*id).to_owned()).collect()
    }

    pub fn members(&self) -> &BTreeSet<u64> {
        &self.members
    }

    /// Members that are running and not paused.
    pub fn healthy_members(&self) -> Vec<u64> {
        self.members
            .iter()
            .copied()
            .filter(|id| !self.killed.contains(id) && !self.paused.contains(id))
            .collect()
    }

    pub fn addr(&self, id: u64) -> &str {
        self.local.addr(id)
    }

    /// The leader named with the highest term by the members that answer.
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.healthy_members() {
            let probe = tokio::time::timeout(Duration::from_millis(STATUS_PROBE_TIMEOUT_MS), self.local.status_of(id));
            if let Ok(Ok(status)) = probe.await {
                if let Some(leader) = status.leader_id {
                    if best.is_none_or(|(term, _)| status.term > term) {
                        best = Some((status.term, leader));
                    }
                }
            }
        }
        best.map(|(_, leader)| leader).filter(|leader| self.members.contains(leader))
    }

    /// Waits until the healthy members agree on a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, JepsenError> {
        self.local
            .wait_for_leader(timeout)
            .await
            .map_err(cluster_error("waiting for a leader"))
    }

    // --- process faults

    /// kill -9.
    pub fn kill(&mut self, id: u64) -> Result<(), JepsenError> {
        self.local.kill(id).map_err(cluster_error("kill"))?;
        self.proxy.close(id);
        self.paused.remove(&id);
        self.killed.insert(id);
        Ok(())
    }

    /// Restarts a killed replica with its data dir.
    pub async fn restart(&mut self, id: u64) -> Result<(), JepsenError> {
        self.proxy
            .reopen(id)
            .await
            .map_err(|error| JepsenError::cluster(format!("reopening the proxy of replica {id}: {error}")))?;
        self.local.start_replica(id).map_err(cluster_error("restart"))?;
        self.killed.remove(&id);
        Ok(())
    }

    pub fn pause(&mut self, id: u64) -> Result<(), JepsenError> {
        self.local.pause(id).map_err(cluster_error("pause"))?;
        self.paused.insert(id);
        Ok(())
    }

    pub fn resume(&mut self, id: u64) -> Result<(), JepsenError> {
        self.local.resume(id).map_err(cluster_error("resume"))?;
        self.paused.remove(&id);
        Ok(())
    }

    pub fn killed(&self) -> Vec<u64> {
        self.killed.iter().copied().collect()
    }

    pub fn paused(&self) -> Vec<u64> {
        self.paused.iter().copied().collect()
    }

    // --- network faults

    pub fn set_links(&self, state: LinkState) {
        self.proxy.set(state);
    }

    pub fn links(&self) -> LinkState {
        self.proxy.state()
    }

    pub fn heal_network(&self) {
        self.proxy.heal();
    }

    // --- membership

    /// Starts a blank replica behind a new proxy and adds it as a voter.
    /// Returns its id; on failure the new replica is stopped again.
    pub async fn add_replica(&mut self) -> Result<u64, (u64, String)> {
        let id = self.next_id;
        if id > REPLICA_ID_MAX {
            return Err((id, format!("replica ids are exhausted (at most {REPLICA_ID_MAX})")));
        }
        self.next_id += 1;
        let addrs = laid_out(&self.proxy, id).await.map_err(|error| (id, error.to_string()))?;
        let advertised = addrs.advertised.clone();
        self.local
            .add_blank_replica_at(id, addrs)
            .map_err(|error| (id, format!("starting replica {id}: {error:#}")))?;
        let added = self.admin.add_replica(id, &advertised, false).await;
        self.learn_membership().await;
        match added {
            Ok(_) if self.members.contains(&id) => Ok(id),
            Ok(_) => Err((id, format!("replica {id} was added but is not a voter"))),
            Err(error) => {
                if !self.members.contains(&id) {
                    let _ = self.local.kill(id);
                    self.proxy.close(id);
                }
                Err((id, error.to_string()))
            }
        }
    }

    /// Removes voter `id` and stops its process once it is out.
    pub async fn remove_replica(&mut self, id: u64) -> Result<(), String> {
        let removed = self.admin.remove_replica(id).await;
        self.learn_membership().await;
        if !self.members.contains(&id) {
            // Out of the cluster: it serves nobody any more.
            let _ = self.local.kill(id);
            self.proxy.close(id);
            self.killed.remove(&id);
            self.paused.remove(&id);
        }
        match removed {
            Ok(_) if !self.members.contains(&id) => Ok(()),
            Ok(_) => Err(format!("replica {id} is still a voter after its removal")),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Reads the voters from the cluster (the leader's view), keeping the
    /// harness's idea of the members when no leader answers.
    pub async fn learn_membership(&mut self) {
        if let Ok(status) = self.admin.cluster_status().await {
            let voters: BTreeSet<u64> = status
                .members
                .iter()
                .filter(|member| member.role != "learner")
                .map(|member| member.id)
                .collect();
            if !voters.is_empty() {
                self.members = voters;
            }
        }
    }

    /// Kills every replica (by the pids started), closes the proxies, and
    /// copies every replica's log into `dir`.
    pub fn stop(&mut self, dir: &Path) -> Result<(), JepsenError> {
        let ids: Vec<u64> = self.local.replicas.keys().copied().collect();
        for id in &ids {
            // SIGKILL ends a paused replica too.
            let _ = self.local.kill(*id);
        }
        self.proxy.shutdown();
        std::fs::create_dir_all(dir).map_err(JepsenError::io(dir))?;
        for id in ids {
            // A replica that never started has no log.
            let _ = std::fs::copy(self.local.log_path(id), dir.join(format!("replica-{id}.log")));
        }
        Ok(())
    }
}

/// Replica `id` listens on its own loopback address; a proxy fronts it.
async fn laid_out(proxy: &NetProxy, id: u64) -> Result<ReplicaAddrs, JepsenError> {
    let listen = free_addr_on(replica_ip(id)).map_err(|error| JepsenError::cluster(format!("no port on {}: {error}", replica_ip(id))))?;
    let upstream: SocketAddr = listen.parse().expect("a bound address parses");
    let front = proxy
        .front(id, upstream)
        .await
        .map_err(|error| JepsenError::cluster(format!("proxy for replica {id}: {error}")))?;
    Ok(ReplicaAddrs {
        listen,
        advertised: front.to_string(),
    })
}
