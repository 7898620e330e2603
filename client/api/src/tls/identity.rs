//! [`Identity`]: who a certificate says its holder is — a [`Role`], a name
//! and, for a consumer, a namespace — written as SAN URIs and read back.
//!
//! ```text
//!  qm://role/resource_consumer   exactly one: what the holder may call
//!  qm://name/agent_123           exactly one: a provider's provider_id; informational for the others
//!  qm://namespace/team-a         a consumer's namespace, required for consumers, refused for the others
//!  qm-capability:kinds=cpu_cores;max_per_request=cpu_cores:4
//!                                at most one: narrows the holder's capability policy (never widens it);
//!                                read by the replica (`qm_state_machine::policy::Capability::parse_uri`)
//! ```
//!
//! Replicas trust these URIs and nothing else about the caller: not the
//! subject, not a header, not a field of the request. The TLS handshake has
//! already proved that the certificate was signed by the cluster's CA and is
//! within its validity; this module only reads what the CA wrote.

use std::fmt;

/// How every identity URI starts.
pub const URI_PREFIX: &str = "qm://";
/// `qm://role/<role>`.
pub const ROLE_URI_PREFIX: &str = "qm://role/";
/// `qm://name/<name>`.
pub const NAME_URI_PREFIX: &str = "qm://name/";
/// `qm://namespace/<namespace>`.
pub const NAMESPACE_URI_PREFIX: &str = "qm://namespace/";
/// `qm-capability:<fields>`: see `SECURITY.md`, *Capability policies*.
pub const CAPABILITY_URI_PREFIX: &str = qm_state_machine::policy::CAPABILITY_URI_SCHEME;

/// What a certificate's holder may do (see `SECURITY.md` for the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A replica: Raft traffic between replicas.
    ResourceManager,
    /// A provider: registers, heartbeats, confirms, deregisters — as itself only.
    ResourceProvider,
    /// A requester: allocates, releases, renews, reads — in its namespace only.
    ResourceConsumer,
    /// An operator: membership changes, and reads of every namespace.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::ResourceManager, Role::ResourceProvider, Role::ResourceConsumer, Role::Admin];

    /// The protocol's name (`admin` is Quartermaster's own).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ResourceManager => "resource_manager",
            Role::ResourceProvider => "resource_provider",
            Role::ResourceConsumer => "resource_consumer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The holder of a certificate, as the certificate states it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    /// A provider's `provider_id`; for the other roles a label for logs.
    pub name: String,
    /// A consumer's namespace: everything it allocates, sees and releases is
    /// in it. `None` for every other role.
    pub namespace: Option<String>,
    /// The certificate's capability URI, as written (`qm-capability:...`):
    /// it narrows the policy bound to the holder. Parsed where it is
    /// enforced, so that a malformed one refuses calls rather than the
    /// certificate's other uses.
    pub capability: Option<String>,
}

/// Why a certificate does not state a usable identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate does not parse: {reason}")]
    Unparsable { reason: String },
    #[error("the certificate names no role (a {ROLE_URI_PREFIX}<role> SAN URI)")]
    MissingRole,
    #[error("the certificate names no holder (a {NAME_URI_PREFIX}<name> SAN URI)")]
    MissingName,
    #[error("the certificate's role {role:?} is not one of resource_manager, resource_provider, resource_consumer, admin")]
    UnknownRole { role: String },
    #[error("the certificate names more than one {what}")]
    Repeated { what: &'static str },
    #[error("a resource_consumer certificate must name its namespace (a {NAMESPACE_URI_PREFIX}<namespace> SAN URI)")]
    ConsumerWithoutNamespace,
    #[error("only a resource_consumer certificate names a namespace; this one is {role}")]
    NamespaceNotAllowed { role: Role },
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidValue {
        field: &'static str,
        value: String,
        reason: String,
    },
}

impl Identity {
    /// An identity, checked as [`Identity::validate`] does.
    pub fn new(role: Role, name: impl Into<String>, namespace: Option<String>) -> Result<Identity, IdentityError> {
        let identity = Identity {
            role,
            name: name.into(),
            namespace,
            capability: None,
        };
        identity.validate()?;
        Ok(identity)
    }

    /// The same identity carrying a capability URI (`qm-capability:...`).
    pub fn with_capability(self, uri: impl Into<String>) -> Identity {
        Identity {
            capability: Some(uri.into()),
            ..self
        }
    }

    /// A consumer needs a namespace and only a consumer has one; names are
    /// identifiers that fit in a URI path segment unescaped.
    pub fn validate(&self) -> Result<(), IdentityError> {
        check_segment("name", &self.name)?;
        match (self.role, &self.namespace) {
            (Role::ResourceConsumer, None) => Err(IdentityError::ConsumerWithoutNamespace),
            (Role::ResourceConsumer, Some(namespace)) => check_segment("namespace", namespace),
            (role, Some(_)) => Err(IdentityError::NamespaceNotAllowed { role }),
            (_, None) => Ok(()),
        }
    }

    /// The SAN URIs that state this identity in a certificate.
    pub fn san_uris(&self) -> Vec<String> {
        let mut uris = vec![format!("{ROLE_URI_PREFIX}{}", self.role), format!("{NAME_URI_PREFIX}{}", self.name)];
        if let Some(namespace) = &self.namespace {
            uris.push(format!("{NAMESPACE_URI_PREFIX}{namespace}"));
        }
        if let Some(capability) = &self.capability {
            uris.push(capability.clone());
        }
        uris
    }

    /// Reads the identity from SAN URIs; other URIs are ignored, a repeated
    /// role, name or namespace is refused (a certificate must not be read
    /// two ways).
    pub fn from_san_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Result<Identity, IdentityError> {
        let (mut role, mut name, mut namespace, mut capability) = (None, None, None, None);
        for uri in uris {
            let (slot, what, value) = if let Some(value) = uri.strip_prefix(ROLE_URI_PREFIX) {
                (&mut role, "role", value)
            } else if let Some(value) = uri.strip_prefix(NAME_URI_PREFIX) {
                (&mut name, "name", value)
            } else if let Some(value) = uri.strip_prefix(NAMESPACE_URI_PREFIX) {
                (&mut namespace, "namespace", value)
            } else if uri.starts_with(CAPABILITY_URI_PREFIX) {
                (&mut capability, "capability", uri)
            } else {
                continue;
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(IdentityError::Repeated { what });
            }
        }
        let role_text = role.ok_or(IdentityError::MissingRole)?;
        let role = Role::parse(&role_text).ok_or(IdentityError::UnknownRole { role: role_text })?;
        let identity = Identity::new(role, name.ok_or(IdentityError::MissingName)?, namespace)?;
        Ok(match capability {
            Some(uri) => identity.with_capability(uri),
            None => identity,
        })
    }

    /// Reads the identity from a DER certificate (the leaf a peer presented).
    pub fn from_certificate_der(der: &[u8]) -> Result<Identity, IdentityError> {
        let unparsable = |reason: String| IdentityError::Unparsable { reason };
        let (_, certificate) = x509_parser::parse_x509_certificate(der).map_err(|error| unparsable(error.to_string()))?;
        let names = certificate
            .subject_alternative_name()
            .map_err(|error| unparsable(error.to_string()))?;
        let uris = names
            .into_iter()
            .flat_map(|names| names.value.general_names.iter())
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                _ => None,
            });
        Identity::from_san_uris(uris)
    }

    /// Reads the identity from the first certificate of a PEM file's text.
    pub fn from_certificate_pem(pem: &str) -> Result<Identity, IdentityError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|error| IdentityError::Unparsable {
            reason: format!("not a PEM certificate: {error}"),
        })?;
        Identity::from_certificate_der(&block.contents)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)?;
        if let Some(namespace) = &self.namespace {
            write!(f, " of namespace {namespace:?}")?;
        }
        Ok(())
    }
}

/// Letters, digits and `- . _ ~ : @`: what a URI path segment carries
/// unescaped, so that what is written is exactly what is read back.
fn check_segment(field: &'static str, value: &str) -> Result<(), IdentityError> {
    let invalid = |reason: String| IdentityError::InvalidValue {
        field,
        value: value.chars().take(qm_state_machine::limits::ID_LEN_MAX).collect(),
        reason,
    };
    qm_state_machine::request::check_id(field, value).map_err(|invalid_id| invalid(invalid_id.reason))?;
    match value.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~:@".contains(*c))) {
        Some(c) => Err(invalid(format!("{c:?} is not allowed; use letters, digits and - . _ ~ : @"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        let consumer = Identity::new(Role::ResourceConsumer, "agent_123", Some("team-a".into())).unwrap();
        assert_eq!(
            vec!["qm://role/resource_consumer", "qm://name/agent_123", "qm://namespace/team-a"],
            consumer.san_uris()
        );
        let uris = consumer.san_uris();
        assert_eq!(Ok(consumer), Identity::from_san_uris(uris.iter().map(String::as_str)));
    }

    #[test]
    fn other_uris_are_ignored() {
        let uris = ["https://example.com/x", "qm://role/admin", "qm://name/ops", "qm://other/thing"];
        assert_eq!(Ok(Identity::new(Role::Admin, "ops", None).unwrap()), Identity::from_san_uris(uris));
    }

    #[test]
    fn incomplete_or_ambiguous_identities_are_refused() {
        let cases: [(&[&str], IdentityError); 6] = [
            (&["qm://name/x"], IdentityError::MissingRole),
            (&["qm://role/admin"], IdentityError::MissingName),
            (
                &["qm://role/root", "qm://name/x"],
                IdentityError::UnknownRole { role: "root".into() },
            ),
            (
                &["qm://role/admin", "qm://role/resource_consumer", "qm://name/x"],
                IdentityError::Repeated { what: "role" },
            ),
            (
                &["qm://role/resource_consumer", "qm://name/x"],
                IdentityError::ConsumerWithoutNamespace,
            ),
            (
                &["qm://role/resource_provider", "qm://name/x", "qm://namespace/a"],
                IdentityError::NamespaceNotAllowed {
                    role: Role::ResourceProvider,
                },
            ),
        ];
        for (uris, expected) in cases {
            assert_eq!(Err(expected), Identity::from_san_uris(uris.iter().copied()), "{uris:?}");
        }
    }

    #[test]
    fn names_are_plain_identifiers() {
        for bad in ["", "a b", "a/b", "a%2Fb", "é", "a?b"] {
            assert!(Identity::new(Role::ResourceProvider, bad, None).is_err(), "{bad:?}");
        }
        for good in ["node_1", "jepsen-p0", "replica.1", "svc:a@b~c"] {
            assert!(Identity::new(Role::ResourceProvider, good, None).is_ok(), "{good:?}");
        }
    }
}
