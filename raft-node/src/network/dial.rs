//! Dialling another replica: [`PeerConnector`] opens the connection and runs
//! the TLS handshake with rustls itself, so that the peer's certificate is
//! checked against the CRL in force as well as the CA.
//!
//! tonic's `ClientTlsConfig` takes no CRL: with it alone, a replica whose
//! certificate was revoked could no longer call in (the answering side
//! checks every client certificate), but the others still dialled it and
//! sent it the log. Here the channel's URI stays `http://host:port` (tonic
//! would otherwise wrap the connection in its own TLS) and the connector
//! makes it TLS:
//!
//! ```text
//!  peer_channel(addr, tls) ─▶ Endpoint::connect_with_connector_lazy(PeerConnector)
//!  each (re)connect: TCP from the replica's own address (TCP_NODELAY), within the connect timeout
//!                  ─▶ rustls handshake with MutualTls::peer: this replica's certificate presented,
//!                     the peer's checked against the CA and the CRL (revoked: refused), ALPN h2
//! ```
//!
//! A reload of the TLS files builds a new [`MutualTls::peer`]; callers dial
//! again when [`ReloadableTls::generation`](crate::security::reload::ReloadableTls::generation)
//! moves on, dropping the channel dialled before, so a peer revoked meanwhile
//! is cut off while the cluster runs.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::security::{MutualTls, TLS_HANDSHAKE_TIMEOUT_MS};

/// The ALPN protocol a peer must agree to: gRPC runs on HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// A lazily connected channel to the replica at `addr` (`host:port`): over
/// mutual TLS with `tls` (the peer's certificate checked against the CA and
/// the CRL), over plain HTTP/2 without. Connections come from `local_ip`
/// when given, and must be open within `connect_timeout`.
pub fn peer_channel(addr: &str, tls: Option<&MutualTls>, local_ip: Option<IpAddr>, connect_timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|error| format!("{addr:?}: {error}"))?;
    Ok(match tls {
        None => endpoint
            .connect_timeout(connect_timeout)
            .local_address(local_ip)
            .tcp_nodelay(true)
            .connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(PeerConnector {
            config: tls.peer.clone(),
            local_ip,
            connect_timeout,
        }),
    })
}

/// Dials one peer: TCP, then TLS with the CRL-checking configuration.
#[derive(Clone)]
pub struct PeerConnector {
    /// This replica's certificate and the CA and CRL the peer's is checked against.
    pub config: Arc<rustls::ClientConfig>,
    /// The address connections come from (see `PeerNetwork`), if any.
    pub local_ip: Option<IpAddr>,
    /// The TCP connection must be open within this.
    pub connect_timeout: Duration,
}

/// A connection to a peer, as hyper reads and writes it.
pub type PeerStream = TokioIo<TlsStream<TcpStream>>;

type Connecting = Pin<Box<dyn Future<Output = io::Result<PeerStream>> + Send>>;

impl tower::Service<Uri> for PeerConnector {
    type Response = PeerStream;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let connector = self.clone();
        Box::pin(async move { connector.connect(&uri).await })
    }
}

impl PeerConnector {
    async fn connect(&self, uri: &Uri) -> io::Result<PeerStream> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
        // An IPv6 host comes bracketed in a URI, not in a server name.
        let host = uri
            .host()
            .ok_or_else(|| invalid("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
        let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address")))?;
        let tcp = tokio::time::timeout(self.connect_timeout, self.open_tcp(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{addr}: not connected within {:?}", self.connect_timeout),
                )
            })??;
        let name = ServerName::try_from(host).map_err(|error| invalid(&error.to_string()))?;
        let handshake = tokio_rustls::TlsConnector::from(self.config.clone()).connect(name, tcp);
        let tls = tokio::time::timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS), handshake)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{addr}: no TLS handshake within {TLS_HANDSHAKE_TIMEOUT_MS} ms"),
                )
            })??;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{addr}: the peer did not agree to HTTP/2 (ALPN h2)"),
            ));
        }
        Ok(TokioIo::new(tls))
    }

    async fn open_tcp(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = self.local_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use qm_api::tls::{Identity, Role};
    use qm_ca::{CertAuthority, CertSpec, Validity};
    use tower::Service;

    use super::*;
    use crate::config::TlsFiles;
    use crate::security::rustls_server_config;

    /// `<stem>.crt/.key` for replica `name` (serving 127.0.0.1), the CA and CRL of `dir`.
    fn replica_files(dir: &Path, authority: &CertAuthority, stem: &str) -> TlsFiles {
        let spec = CertSpec::new(Identity::new(Role::ResourceManager, stem, None).unwrap()).with_hosts(["127.0.0.1"]);
        let (cert, key) = authority.issue(&spec).unwrap().save(dir, stem).unwrap();
        TlsFiles {
            cert,
            key,
            ca: dir.join("ca.crt"),
            crl: Some(dir.join("ca.crl")),
        }
    }

    /// Serves TLS handshakes with `files`' certificate on a loopback port, for ever.
    async fn serve(files: &TlsFiles) -> SocketAddr {
        let config = rustls_server_config(files, &[], b"h2").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _handshake = acceptor.accept(tcp).await;
                });
            }
        });
        addr
    }

    async fn dial(dialler: &TlsFiles, addr: SocketAddr) -> io::Result<PeerStream> {
        let tls = MutualTls::load(dialler).unwrap();
        let mut connector = PeerConnector {
            config: tls.peer.clone(),
            local_ip: None,
            connect_timeout: Duration::from_secs(5),
        };
        connector.call(format!("http://{addr}").parse().unwrap()).await
    }

    #[tokio::test]
    async fn a_peer_whose_certificate_the_crl_lists_is_refused_at_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let authority = CertAuthority::generate("test CA", Validity::days_from_now(1)).unwrap();
        authority.save(dir.path()).unwrap();
        authority.revoke(&dir.path().join("ca.crl"), &[]).unwrap();
        let dialler = replica_files(dir.path(), &authority, "replica-1");
        let peer = replica_files(dir.path(), &authority, "replica-2");
        let addr = serve(&peer).await;

        // --- trusted: the handshake goes through and agrees on HTTP/2
        let stream = dial(&dialler, addr).await.expect("a trusted peer");
        assert_eq!(Some(ALPN_H2), stream.inner().get_ref().1.alpn_protocol());

        // --- the peer's certificate revoked: the dialler refuses it
        let peer_pem = std::fs::read_to_string(&peer.cert).unwrap();
        authority.revoke(&dir.path().join("ca.crl"), &[peer_pem]).unwrap();
        let refused = dial(&dialler, addr).await.expect_err("a revoked peer");
        assert!(refused.to_string().contains("Revoked"), "{refused}");
    }
}
