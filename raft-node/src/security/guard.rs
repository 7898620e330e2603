//! [`Guard`]: the one place a call is authenticated (who is it?) and
//! authorized (may that role make this call?), before any handler runs and
//! long before anything could be proposed to the log.

use qm_api::tls::Identity;
use tonic::{Request, Status};
use tracing::warn;

use super::caller::Caller;
use super::policy::Call;

/// Checks every call of a replica's services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    /// With mutual TLS every call must come with a certificate our CA
    /// signed (the handshake saw to that) stating a role allowed the call.
    /// Without it (development) every call is let through, as `Caller::Anyone`.
    mutual_tls: bool,
}

impl Guard {
    /// Lets everything through: a replica started without TLS.
    pub fn open() -> Guard {
        Guard { mutual_tls: false }
    }

    /// Requires a certificate stating a role allowed each call.
    pub fn mutual_tls() -> Guard {
        Guard { mutual_tls: true }
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
        let identity = identify(request).inspect_err(|status| {
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
        move |request| self.admit(&request, call).map(|_| request)
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
        let refused = Guard::mutual_tls().admit(&Request::new(()), Call::ClusterStatus).unwrap_err();
        assert_eq!(tonic::Code::Unauthenticated, refused.code());
    }
}
