//! Accepting HTTP connections, plain or with mutual TLS, and handing each
//! request to the router with the client's certificate on it.
//!
//! With TLS the listener uses the replica's own certificate and requires a
//! client certificate chaining to `--tls-ca`, exactly as the gRPC listener
//! does; a client without one never gets past the handshake. Over TLS only
//! HTTP/1.1 is offered (ALPN): with HTTP/2, an answer sent before the
//! request's body was read (a refused role, a body over the limit) ended
//! the stream with a reset that curl reports as a framing error instead of
//! the answer. Plain connections speak HTTP/1.1 (and HTTP/2 with prior
//! knowledge).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, warn};

use super::access::PeerCertificate;
use crate::security::handshakes::RefusedHandshakes;
use crate::security::reload::ReloadableTls;
use crate::security::TLS_HANDSHAKE_TIMEOUT_MS;

/// After a failed `accept` (out of file descriptors, say), wait this long
/// before the next, so the loop does not spin.
pub const ACCEPT_RETRY_DELAY_MS: u64 = 50;

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, router: Router, tls: Option<Arc<ReloadableTls>>) {
    let refused = Arc::new(RefusedHandshakes::new("HTTP"));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_DELAY_MS)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The material in force now: a reload applies from the next handshake.
        let acceptor = tls.as_ref().map(|tls| TlsAcceptor::from(tls.current().http_server.clone()));
        let (router, refused) = (router.clone(), refused.clone());
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return serve_connection(stream, router, PeerCertificate(None)).await;
            };
            let handshake = tokio::time::timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS), acceptor.accept(stream)).await;
            match handshake {
                Ok(Ok(stream)) => {
                    let leaf = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| Arc::new(leaf.as_ref().to_vec()));
                    serve_connection(stream, router, PeerCertificate(leaf)).await
                }
                Ok(Err(error)) => refused.record(Some(remote), &error.to_string(), Instant::now()),
                Err(_) => refused.record(Some(remote), "timed out", Instant::now()),
            }
        });
    }
}

async fn serve_connection<S>(stream: S, router: Router, peer: PeerCertificate)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(peer.clone());
        router.clone().oneshot(request)
    });
    let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        debug!(%error, "HTTP connection ended with an error");
    }
}
