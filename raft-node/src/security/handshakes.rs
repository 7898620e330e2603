//! The gRPC listener's TLS handshakes, done here rather than inside tonic so
//! that a refused one is logged with the peer's address.
//!
//! A client without a certificate, or with one of another CA, fails the
//! handshake; its TLS library then reports something like
//! `CERTIFICATE_REQUIRED` or `TSI_DATA_CORRUPTED` and the replica, left to
//! tonic, would say nothing. Here each refusal is a `warn!` naming the
//! remote address and rustls' reason (e.g. "peer sent no certificates"), at
//! most [`REFUSED_HANDSHAKE_WARNINGS_PER_WINDOW`] per
//! [`REFUSED_HANDSHAKE_WINDOW`], then one line counting those left out, so
//! that a client retrying in a loop cannot flood the log.
//!
//! ```text
//!  TcpIncoming ─▶ one task per connection: TlsAcceptor::accept (≤ TLS_HANDSHAKE_TIMEOUT_MS)
//!      ok ─▶ channel ─▶ tonic (peer certificates in TlsConnectInfo, read by Guard)
//!      refused / timed out ─▶ RefusedHandshakes::record ─▶ warn! (rate-limited)
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tracing::warn;

use super::reload::ReloadableTls;
use super::TLS_HANDSHAKE_TIMEOUT_MS;

/// Refused handshakes logged one by one per window; the rest are counted.
pub const REFUSED_HANDSHAKE_WARNINGS_PER_WINDOW: u32 = 10;
/// The window of [`REFUSED_HANDSHAKE_WARNINGS_PER_WINDOW`].
pub const REFUSED_HANDSHAKE_WINDOW: Duration = Duration::from_secs(60);
/// Handshaken connections waiting for tonic to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The connections of `incoming` that completed a mutual TLS handshake
/// with the material `tls` has in force, as tonic's `serve_with_incoming` takes them.
pub fn tls_incoming(mut incoming: TcpIncoming, tls: Arc<ReloadableTls>) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (accepted, stream) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
    let refused = Arc::new(RefusedHandshakes::new("gRPC"));
    tokio::spawn(async move {
        while let Some(connection) = incoming.next().await {
            let tcp = match connection {
                Ok(tcp) => tcp,
                // An accept error (out of descriptors, say) goes to tonic,
                // which logs it and goes on.
                Err(error) => {
                    if accepted.send(Err(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            // The material in force now: a reload applies from the next handshake.
            let acceptor = TlsAcceptor::from(tls.current().server.clone());
            let (accepted, refused) = (accepted.clone(), refused.clone());
            tokio::spawn(async move {
                let remote = tcp.peer_addr().ok();
                let handshake = tokio::time::timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS), acceptor.accept(tcp)).await;
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => refused.record(remote, &error.to_string(), Instant::now()),
                    Err(_) => refused.record(remote, "timed out", Instant::now()),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}

/// Rate-limited warnings for refused handshakes on one listener (the HTTP
/// port uses it too).
#[derive(Debug)]
pub struct RefusedHandshakes {
    listener: &'static str,
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl RefusedHandshakes {
    /// For the listener named `listener` in the warnings (`gRPC`, `HTTP`).
    pub fn new(listener: &'static str) -> RefusedHandshakes {
        RefusedHandshakes {
            listener,
            window: Mutex::default(),
        }
    }

    /// A handshake from `remote` failed for `reason`.
    pub fn record(&self, remote: Option<SocketAddr>, reason: &str, now: Instant) {
        let listener = self.listener;
        let remote = remote.map_or_else(|| "unknown".to_owned(), |addr| addr.to_string());
        match self.admit(now) {
            Admit::Log { left_out_before } => {
                if left_out_before > 0 {
                    warn!(
                        listener,
                        count = left_out_before,
                        "{left_out_before} more refused TLS handshakes in the last window were not logged one by one"
                    );
                }
                warn!(listener, %remote, reason, "TLS handshake refused: a client needs TLS and a certificate of this cluster's CA (SECURITY.md)");
            }
            Admit::Count => {}
        }
    }

    fn admit(&self, now: Instant) -> Admit {
        let mut window = self.window.lock().expect("refused handshakes lock");
        let mut left_out_before = 0;
        if window
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= REFUSED_HANDSHAKE_WINDOW)
        {
            left_out_before = window.left_out;
            *window = Window {
                started: Some(now),
                logged: 0,
                left_out: 0,
            };
        }
        if window.logged < REFUSED_HANDSHAKE_WARNINGS_PER_WINDOW {
            window.logged += 1;
            Admit::Log { left_out_before }
        } else {
            window.left_out += 1;
            Admit::Count
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Log this one (after a line for those left out of the last window).
    Log { left_out_before: u64 },
    /// Only count it.
    Count,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_up_to_the_limit_per_window_then_counted() {
        let refused = RefusedHandshakes::new("test");
        let start = Instant::now();
        for _ in 0..REFUSED_HANDSHAKE_WARNINGS_PER_WINDOW {
            assert_eq!(Admit::Log { left_out_before: 0 }, refused.admit(start));
        }
        assert_eq!(Admit::Count, refused.admit(start + Duration::from_secs(1)));
        assert_eq!(Admit::Count, refused.admit(start + Duration::from_secs(2)));
        // The next window logs again, first saying how many were left out.
        assert_eq!(Admit::Log { left_out_before: 2 }, refused.admit(start + REFUSED_HANDSHAKE_WINDOW));
        assert_eq!(Admit::Log { left_out_before: 0 }, refused.admit(start + REFUSED_HANDSHAKE_WINDOW));
    }
}
