//! [`Guard`]: the one place a call is authenticated (who is it?) and
//! authorized (may that role make this call?), before any handler runs and
//! long before anything could be proposed to the log.

use std::sync::Arc;

use qm_api::tls::Identity;
use tonic::{Request, Status};
use tracing::warn;

use super::caller::Caller;
use super::policy::Call;
use super::revocation::Revocations;

/// Checks every call of a replica's services.
#[derive(Clone, Debug)]
pub struct Guard {
    /// With mutual TLS every call must come with a certificate our CA
    /// signed (the handshake saw to that) stating a role allowed the call.
    /// Without it (development) every call is let through, as `Caller::Anyone`.
    mutual_tls: bool,
    /// The certificates the CRL in force revokes: refused per call, so that
    /// a connection opened before the revocation carries no more calls.
    revocations: Option<Arc<Revocations>>,
}

impl Guard {
    /// Lets everything through: a replica started without TLS.
    pub fn open() -> Guard {
        Guard {
            mutual_tls: false,
            revocations: None,
        }
    }

    /// Requires a certificate stating a role allowed each call, and not revoked.
    pub fn mutual_tls(revocations: Arc<Revocations>) -> Guard {
        Guard {
            mutual_tls: true,
            revocations: Some(revocations),
        }
    }

    /// Whether the DER certificate `leaf` is on the CRL in force.
    pub fn is_revoked(&self, leaf: &[u8]) -> bool {
        self.revocations.as_ref().is_some_and(|revocations| revocations.is_revoked(leaf))
    }

    pub fn is_open(&self) -> bool {
        !self.mutual_tls
    }

    /// Who is making `call`, if they may make it at all: `UNAUTHENTICATED`
    /// without a certificate stating an identity, `PERMISSION_DENIED` for a
    /// role the call is not for.
    pub fn admit<T>(&self, request: &Request<T>, call: Call) -> Result<Caller, Status> {
        if !self.mutual_tls {
            return Ok(Caller::Anyone);
        }
        let identity = identify(request)
            .and_then(|identity| match request.peer_certs().and_then(|chain| chain.first().cloned()) {
                Some(leaf) if self.is_revoked(leaf.as_ref()) => Err(Status::unauthenticated(format!(
                    "the certificate of {identity} is revoked (the cluster's CRL lists it)"
                ))),
                _ => Ok(identity),
            })
            .inspect_err(|status| {
                warn!(
                    operation_type = call.name(),
                    status = "unauthenticated",
                    reason = status.message(),
                    "call refused"
                );
            })?;
        let caller = Caller::Authenticated(identity);
        self.authorize(&caller, call)?;
        Ok(caller)
    }

    /// Whether an admitted caller's role may make `call`: for the calls
    /// multiplexed on a stream admitted as a whole (`Pipeline`), checked one
    /// by one. `PERMISSION_DENIED` if not.
    pub fn authorize(&self, caller: &Caller, call: Call) -> Result<(), Status> {
        let Caller::Authenticated(identity) = caller else {
            return Ok(());
        };
        if !call.allows(identity.role) {
            warn!(operation_type = call.name(), status = "permission_denied", caller = %identity, "call refused");
            let allowed: Vec<&str> = call.allowed_roles().iter().map(|role| role.as_str()).collect();
            return Err(Status::permission_denied(format!(
                "{identity} may not call {}: it is for {}",
                call.name(),
                allowed.join(", ")
            )));
        }
        Ok(())
    }

    /// [`Guard::admit`] as a tonic interceptor, for services whose handlers
    /// are not ours (health, reflection).
    pub fn interceptor(self, call: Call) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |request: Request<()>| self.admit(&request, call).map(|_| request)
    }
}

/// The identity the peer's leaf certificate states.
pub fn identify<T>(request: &Request<T>) -> Result<Identity, Status> {
    let certificates = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("no client certificate: this cluster requires mutual TLS (give --tls-cert, --tls-key, --tls-ca)")
    })?;
    let leaf = certificates
        .first()
        .ok_or_else(|| Status::unauthenticated("the client presented an empty certificate chain"))?;
    Identity::from_certificate_der(leaf.as_ref()).map_err(|error| Status::unauthenticated(format!("client certificate refused: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_guard_lets_anyone_make_any_call() {
        for call in Call::ALL {
            assert!(matches!(Guard::open().admit(&Request::new(()), call), Ok(Caller::Anyone)));
        }
    }

    #[test]
    fn with_tls_a_call_without_a_certificate_is_unauthenticated() {
        let refused = Guard::mutual_tls(Arc::default())
            .admit(&Request::new(()), Call::ClusterStatus)
            .unwrap_err();
        assert_eq!(tonic::Code::Unauthenticated, refused.code());
    }
}
