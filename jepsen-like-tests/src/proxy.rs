//! [`NetProxy`]: network partitions without root. A TCP proxy in front of
//! every replica; replicas reach each other only through these proxies (the
//! membership holds the proxies' addresses), so the proxy can cut or delay
//! any directed link.
//!
//! ```text
//!  replica 2 (listens on 127.0.0.3, dials from 127.0.0.3)
//!      │ connect to replica 1's proxy (127.0.0.1:P1)
//!      ▼
//!  proxy of replica 1: source IP 127.0.0.3 → replica 2, so this connection is link 2→1
//!      │ bytes 2→1 pass unless (2,1) is cut, after (2,1)'s delay
//!      │ bytes 1→2 (the replies) pass unless (1,2) is cut
//!      ▼
//!  replica 1 (listens on 127.0.0.2)
//! ```
//!
//! Replica N listens on, and dials from, 127.0.0.(N+1) (see
//! `raft-node/src/network/client.rs`), so the proxy knows which replica a
//! connection comes from by its source address. Connections from anywhere
//! else (clients, on 127.0.0.1) are never cut or delayed.
//!
//! A cut link holds bytes back rather than dropping connections, like
//! Jepsen's `iptables -j DROP`: the sender sees a silent peer, and whatever
//! was in flight arrives when the link heals (TCP would retransmit it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Bytes read from a socket at once.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks one direction of a connection holds back (cut or delayed) before
/// it stops reading, which pushes back on the sender through TCP.
pub const CHUNKS_IN_FLIGHT_MAX: usize = 64;
/// Connections one proxy carries at once; more are refused (closed).
pub const CONNECTIONS_PER_PROXY_MAX: usize = 1_024;
/// Time to reach the replica behind a proxy; a dead replica's proxy closes
/// the incoming connection, as the replica's own closed port would.
pub const UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// A directed link: bytes `from` sends `to`.
pub type Link = (u64, u64);

/// Which links are cut and which are slow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Bytes on these links are held back until the link heals.
    pub cut: BTreeSet<Link>,
    /// Bytes on these links arrive this many milliseconds late.
    pub delay_ms: BTreeMap<Link, u64>,
}

impl LinkState {
    pub fn is_healthy(&self) -> bool {
        self.cut.is_empty() && self.delay_ms.is_empty()
    }
}

/// The proxies of one cluster and the link state they share.
pub struct NetProxy {
    links: watch::Sender<LinkState>,
    /// One proxy per replica: where it listens, what it forwards to, and its
    /// accept loop (absent while closed). The loop owns its connections, so
    /// aborting it closes them all.
    proxies: Mutex<BTreeMap<u64, Proxy>>,
}

struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    accept_loop: Option<JoinHandle<()>>,
}

impl Default for NetProxy {
    fn default() -> Self {
        NetProxy::new()
    }
}

impl NetProxy {
    pub fn new() -> NetProxy {
        NetProxy {
            links: watch::Sender::new(LinkState::default()),
            proxies: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts a proxy for replica `id`, whose process listens on `upstream`;
    /// returns the proxy's address (on 127.0.0.1), what the others dial.
    pub async fn front(&self, id: u64, upstream: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let accept_loop = Some(tokio::spawn(accept_loop(listener, id, upstream, self.links.subscribe())));
        if let Some(previous) = self.lock().insert(
            id,
            Proxy {
                addr,
                upstream,
                accept_loop,
            },
        ) {
            previous.accept_loop.inspect(JoinHandle::abort);
        }
        Ok(addr)
    }

    /// Stops listening for replica `id` and drops its connections, so that
    /// dialling a dead replica is refused, as its own closed port would be.
    pub fn close(&self, id: u64) {
        if let Some(task) = self.lock().get_mut(&id).and_then(|proxy| proxy.accept_loop.take()) {
            task.abort();
        }
    }

    /// Listens again, at the same address, after [`NetProxy::close`].
    pub async fn reopen(&self, id: u64) -> std::io::Result<()> {
        let Some((addr, upstream)) = self
            .lock()
            .get(&id)
            .filter(|proxy| proxy.accept_loop.is_none())
            .map(|proxy| (proxy.addr, proxy.upstream))
        else {
            return Ok(());
        };
        let listener = TcpListener::bind(addr).await?;
        let task = tokio::spawn(accept_loop(listener, id, upstream, self.links.subscribe()));
        if let Some(proxy) = self.lock().get_mut(&id) {
            proxy.accept_loop = Some(task);
        }
        Ok(())
    }

    /// Replaces the link state: exactly these links are cut or slow.
    pub fn set(&self, state: LinkState) {
        self.links.send_replace(state);
    }

    /// Every link passes again, at full speed.
    pub fn heal(&self) {
        self.set(LinkState::default());
    }

    pub fn state(&self) -> LinkState {
        self.links.borrow().clone()
    }

    /// Stops every proxy and closes every connection through them.
    pub fn shutdown(&self) {
        for (_, proxy) in std::mem::take(&mut *self.lock()) {
            proxy.accept_loop.inspect(JoinHandle::abort);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Proxy>> {
        self.proxies.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for NetProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The loopback address replica `id` listens on and dials from: 127.0.0.(id+1).
pub fn replica_ip(id: u64) -> IpAddr {
    assert!(
        (1..=crate::config::REPLICA_ID_MAX).contains(&id),
        "replica id {id} has no loopback address"
    );
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, id as u8 + 1))
}

/// The replica a connection from `ip` comes from; `None` for a client.
pub fn replica_of(ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] >= 2 => Some(v4.octets()[3] as u64 - 1),
        _ => None,
    }
}

async fn accept_loop(listener: TcpListener, target: u64, upstream: SocketAddr, links: watch::Receiver<LinkState>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((downstream, peer)) = listener.accept().await else {
            // Out of file descriptors, most likely: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= CONNECTIONS_PER_PROXY_MAX {
            drop(downstream);
            continue;
        }
        let source = replica_of(peer.ip());
        connections.spawn(carry(downstream, source, target, upstream, links.clone()));
    }
}

/// Carries one connection both ways until either side closes it.
async fn carry(downstream: TcpStream, source: Option<u64>, target: u64, upstream: SocketAddr, links: watch::Receiver<LinkState>) {
    let connect = TcpStream::connect(upstream);
    let Ok(Ok(upstream)) = tokio::time::timeout(Duration::from_millis(UPSTREAM_CONNECT_TIMEOUT_MS), connect).await else {
        return;
    };
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (down_read, down_write) = downstream.into_split();
    let (up_read, up_write) = upstream.into_split();
    // Requests travel source → target; replies on the same connection travel target → source.
    let forward = source.map(|source| (source, target));
    let backward = source.map(|source| (target, source));
    tokio::select! {
        _ = pump(down_read, up_write, forward, links.clone()) => {}
        _ = pump(up_read, down_write, backward, links) => {}
    }
}

/// One direction of a connection: read chunks as they come, write each once
/// its link passes and its delay is over. Reading goes on while writing
/// waits, so a delay does not add up chunk after chunk.
async fn pump(mut reader: OwnedReadHalf, mut writer: OwnedWriteHalf, link: Option<Link>, mut links: watch::Receiver<LinkState>) {
    let (chunks, mut pending) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT_MAX);
    let read = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    if chunks.send((Instant::now(), buffer[..read].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((read_at, bytes)) = pending.recv().await {
            if let Some(link) = link {
                let Some(delay_ms) = wait_until_passes(link, &mut links).await else {
                    return;
                };
                tokio::time::sleep_until(read_at + Duration::from_millis(delay_ms)).await;
            }
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Waits while `link` is cut; returns its delay, or `None` if the proxy is gone.
async fn wait_until_passes(link: Link, links: &mut watch::Receiver<LinkState>) -> Option<u64> {
    loop {
        {
            let state = links.borrow_and_update();
            if !state.cut.contains(&link) {
                return Some(state.delay_ms.get(&link).copied().unwrap_or(0));
            }
        }
        links.changed().await.ok()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_told_apart_by_source_address() {
        assert_eq!(None, replica_of("127.0.0.1".parse().unwrap()));
        assert_eq!(Some(1), replica_of(replica_ip(1)));
        assert_eq!(Some(7), replica_of(replica_ip(7)));
        assert_eq!(None, replica_of("10.0.0.2".parse().unwrap()));
    }

    /// An echo server behind a proxy, dialled from replica 2's address.
    async fn echo_through_proxy(proxy: &NetProxy) -> TcpStream {
        let server = TcpListener::bind((replica_ip(1), 0)).await.expect("bind echo");
        let upstream = server.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = server.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(read) = socket.read(&mut buffer).await {
                        if read == 0 || socket.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let front = proxy.front(1, upstream).await.expect("proxy");
        dial_from_replica_2(front).await
    }

    async fn dial_from_replica_2(front: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(replica_ip(2), 0)).expect("bind source");
        socket.connect(front).await.expect("connect")
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> bool {
        stream.write_all(b"ping").await.expect("write");
        let mut answer = [0u8; 4];
        tokio::time::timeout(within, stream.read_exact(&mut answer)).await.is_ok()
    }

    #[tokio::test]
    async fn a_cut_link_holds_bytes_until_it_heals_and_a_delay_delays() {
        let proxy = NetProxy::new();
        let mut stream = echo_through_proxy(&proxy).await;
        assert!(
            round_trip(&mut stream, Duration::from_secs(5)).await,
            "a healthy link carries bytes"
        );

        // --- cut the replies only (1→2): the request arrives, the answer is held
        proxy.set(LinkState {
            cut: BTreeSet::from([(1, 2)]),
            ..Default::default()
        });
        assert!(!round_trip(&mut stream, Duration::from_millis(300)).await, "held back while cut");
        proxy.heal();
        let mut answer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
            .await
            .expect("arrives after the heal")
            .expect("read");
        assert_eq!(b"ping", &answer);

        // --- a closed proxy refuses, a reopened one carries again
        proxy.close(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let front = proxy.lock()[&1].addr;
        assert!(TcpStream::connect(front).await.is_err(), "refused while closed");
        proxy.reopen(1).await.expect("reopens");
        let mut stream = dial_from_replica_2(front).await;
        assert!(round_trip(&mut stream, Duration::from_secs(5)).await, "accepted and carried again");

        // --- delay 2→1 by 200 ms
        proxy.set(LinkState {
            delay_ms: BTreeMap::from([((2, 1), 200)]),
            ..Default::default()
        });
        let started = std::time::Instant::now();
        assert!(round_trip(&mut stream, Duration::from_secs(5)).await);
        assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    }
}
