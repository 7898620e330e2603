//! Capability policies: what an identity may use, at the level of resources.
//!
//! A role says which calls a certificate may make (`raft-node`'s
//! `security::policy::Call`); a [`CapabilityPolicy`] narrows what an
//! allocate of that identity may ask for: which kinds, on which providers,
//! how much per request and in total, up to which priority, and whether it
//! may preempt. Policies are named, live in the replicated table (set and
//! deleted through the log), and are bound to identities by certificate
//! name or by role and namespace ([`Binding`]). A certificate may carry a
//! capability URI ([`Capability::parse_uri`]) that narrows its policy
//! further: [`Capability::intersect`] never widens.
//!
//! The limits themselves ([`Capability`]) are pure data with pure checks;
//! the table only stores policies and, at apply, re-checks what the API
//! could not check exactly (the total held, and that the policy is still the
//! revision the API checked against: [`PolicyGrant`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidArgument;
use crate::limits::{ID_LEN_MAX, LABELS_MAX, QUOTA_MAX};
use crate::request::{check_id, check_key, check_labels, AllocationRequest};

/// Policies the table keeps. A few per team is the use; bindings are
/// looked up by walking them, so the bound keeps every look-up small.
pub const POLICIES_MAX: usize = 256;
/// Identities one policy may be bound to.
pub const POLICY_BINDINGS_MAX: usize = 64;
/// Kinds one policy (or one capability URI) may name in each of its lists.
pub const POLICY_KINDS_MAX: usize = 64;
/// Provider ids one policy may list.
pub const POLICY_PROVIDERS_MAX: usize = 256;
/// Longest capability URI a certificate may carry.
pub const CAPABILITY_URI_LEN_MAX: usize = 4096;
/// How a capability URI starts (a SAN URI of the certificate).
pub const CAPABILITY_URI_SCHEME: &str = "qm-capability:";

/// The roles a binding may name: the certificate roles of `qm_api::tls`,
/// spelled as certificates spell them.
pub const BINDABLE_ROLES: [&str; 4] = ["resource_manager", "resource_provider", "resource_consumer", "admin"];

/// Which providers an identity may be placed on: all the conditions given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProviderScope {
    /// Only these providers (`None`: any id).
    pub ids: Option<BTreeSet<String>>,
    /// Only providers carrying every one of these labels (a label selector).
    pub labels: BTreeMap<String, String>,
}

impl ProviderScope {
    pub fn is_any(&self) -> bool {
        self.ids.is_none() && self.labels.is_empty()
    }
}

/// What an identity may ask for. Every field's "unset" value allows
/// everything, so [`Capability::unrestricted`] is the default policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capability {
    /// Resource kinds it may ask for (`None`: any kind).
    pub kinds: Option<BTreeSet<String>>,
    pub providers: ProviderScope,
    /// Kind → the most one request may ask for. Kinds not named: unbounded.
    pub max_per_request: BTreeMap<String, u64>,
    /// Kind → the most the identity's live (queued or active) requests
    /// may ask for in total. Checked again at apply, where it is exact.
    pub max_held: BTreeMap<String, u64>,
    /// The highest priority its requests may carry (`None`: any).
    pub priority_max: Option<i64>,
    /// Whether its requests may preempt others (when the cluster's or the
    /// namespace's preemption setting would let them).
    pub may_preempt: bool,
}

/// Whom a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// The certificate whose name (`qm://name/...`) is this. Wins over any
    /// role binding.
    CertName(String),
    /// Every certificate of this role (in this namespace, when given: only
    /// consumers have one). A binding with a namespace wins over one without.
    Role { role: String, namespace: Option<String> },
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Binding::CertName(name) => write!(f, "cert-name {name}"),
            Binding::Role { role, namespace: None } => write!(f, "role {role}"),
            Binding::Role {
                role,
                namespace: Some(namespace),
            } => write!(f, "role {role} in namespace {namespace}"),
        }
    }
}

/// A policy as an admin writes it (`Command::SetPolicy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    pub name: String,
    pub capability: Capability,
    pub bindings: BTreeSet<Binding>,
}

/// A policy as the table keeps it: the spec and its revision, which every
/// set changes (drawn from one counter of the table, so a policy deleted
/// and set again never repeats a revision).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityPolicy {
    pub name: String,
    pub revision: u64,
    pub capability: Capability,
    pub bindings: BTreeSet<Binding>,
}

/// What an allocate checked by the API carries into the log, for apply to
/// check again what only apply can check exactly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyGrant {
    /// The policy and revision the API checked against; apply refuses if
    /// the policy is gone or changed since (`None`: the capability URI alone).
    pub policy: Option<(String, u64)>,
    /// Whose total the request counts toward: the certificate's name.
    pub holder: String,
    /// The effective per-kind totals (policy narrowed by the URI).
    pub max_held: BTreeMap<String, u64>,
    /// Whether this request may preempt: `false` withholds preemption at apply.
    pub may_preempt: bool,
}

/// A capability a request lacks: which, what was asked, and the limit,
/// for the caller's message (`capability kinds: gpu not allowed by policy
/// "team-a"`; the API adds where the limit comes from).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// `kinds`, `providers`, `max_per_request`, `max_held`, `priority_max`, `preempt`.
    pub capability: &'static str,
    /// What the request asked that is not allowed.
    pub asked: String,
    /// The limit it passes, when there is one to name.
    pub limit: Option<String>,
}

impl Missing {
    fn new(capability: &'static str, asked: String, limit: Option<String>) -> Missing {
        Missing { capability, asked, limit }
    }

    /// `capability C: ASKED not allowed by SOURCE (LIMIT)`.
    pub fn message(&self, source: &str) -> String {
        let mut message = format!("capability {}: {} not allowed", self.capability, self.asked);
        if !source.is_empty() {
            message.push(' ');
            message.push_str(source);
        }
        if let Some(limit) = &self.limit {
            message.push_str(&format!(" ({limit})"));
        }
        message
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message(""))
    }
}

impl Capability {
    /// Everything allowed: the default without TLS.
    pub fn unrestricted() -> Capability {
        Capability {
            may_preempt: true,
            ..Capability::default()
        }
    }

    /// The capability allowed by both: never wider than either.
    pub fn intersect(&self, other: &Capability) -> Capability {
        let kinds = match (&self.kinds, &other.kinds) {
            (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
            (Some(one), None) | (None, Some(one)) => Some(one.clone()),
            (None, None) => None,
        };
        let mut ids = match (&self.providers.ids, &other.providers.ids) {
            (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
            (Some(one), None) | (None, Some(one)) => Some(one.clone()),
            (None, None) => None,
        };
        let mut labels = self.providers.labels.clone();
        for (key, value) in &other.providers.labels {
            match labels.get(key) {
                // Two selectors that disagree select no provider at all.
                Some(existing) if existing != value => ids = Some(BTreeSet::new()),
                _ => {
                    labels.insert(key.clone(), value.clone());
                }
            }
        }
        Capability {
            kinds,
            providers: ProviderScope { ids, labels },
            max_per_request: min_per_kind(&self.max_per_request, &other.max_per_request),
            max_held: min_per_kind(&self.max_held, &other.max_held),
            priority_max: match (self.priority_max, other.priority_max) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (one, None) | (None, one) => one,
            },
            may_preempt: self.may_preempt && other.may_preempt,
        }
    }

    /// What of `request` this capability does not allow, looking at the
    /// request alone: kinds, quantity per request, priority. The providers
    /// are [`Capability::scope_request`]'s, the totals the table's.
    pub fn check_request(&self, request: &AllocationRequest) -> Result<(), Missing> {
        for requirement in &request.requirements {
            if let Some(kinds) = &self.kinds {
                if !kinds.contains(&*requirement.kind) {
                    return Err(Missing::new(
                        "kinds",
                        requirement.kind.to_string(),
                        Some(format!("allowed: {}", join(kinds))),
                    ));
                }
            }
            if let Some(&cap) = self.max_per_request.get(&*requirement.kind) {
                if requirement.quantity > cap {
                    return Err(Missing::new(
                        "max_per_request",
                        format!("{} {} in one request", requirement.quantity, requirement.kind),
                        Some(format!("at most {cap}")),
                    ));
                }
            }
        }
        if let Some(ceiling) = self.priority_max {
            if request.priority > ceiling {
                return Err(Missing::new(
                    "priority_max",
                    format!("priority {}", request.priority),
                    Some(format!("at most {ceiling}")),
                ));
            }
        }
        Ok(())
    }

    /// Narrows `request`'s constraints to the providers this capability
    /// allows, so that placement (now, and whenever the queue is examined
    /// again) can only choose among them: the selector's labels are added
    /// to the request's, and an id list pins the request to its one id, or
    /// requires the request to name one of them. Refuses a request that
    /// names a provider outside the scope or a label the selector contradicts.
    pub fn scope_request(&self, request: &mut AllocationRequest) -> Result<(), Missing> {
        let scope = &self.providers;
        if let Some(ids) = &scope.ids {
            match &request.constraints.provider_id {
                Some(named) if !ids.contains(named) => {
                    return Err(Missing::new(
                        "providers",
                        format!("provider {named}"),
                        Some(format!("allowed: {}", join(ids))),
                    ));
                }
                Some(_) => {}
                None if ids.len() == 1 => request.constraints.provider_id = ids.first().cloned(),
                None if ids.is_empty() => {
                    return Err(Missing::new(
                        "providers",
                        "any provider".to_owned(),
                        Some("none is allowed".to_owned()),
                    ));
                }
                None => {
                    return Err(Missing::new(
                        "providers",
                        "a request naming no provider".to_owned(),
                        Some(format!("name one of {} in constraints.provider_id", join(ids))),
                    ));
                }
            }
        }
        for (key, value) in &scope.labels {
            match request.constraints.labels.get(key) {
                Some(asked) if asked != value => {
                    return Err(Missing::new(
                        "providers",
                        format!("label {key}={asked}"),
                        Some(format!("the selector is {key}={value}")),
                    ));
                }
                Some(_) => {}
                None => {
                    request.constraints.labels.insert(key.clone(), value.clone());
                }
            }
        }
        if request.constraints.labels.len() > LABELS_MAX {
            return Err(Missing::new(
                "providers",
                format!("{} labels with the selector's", request.constraints.labels.len()),
                Some(format!("at most {LABELS_MAX}")),
            ));
        }
        Ok(())
    }

    /// Checks every bound, as `SetPolicy` and a capability URI need.
    pub fn check(&self) -> Result<(), InvalidArgument> {
        if let Some(kinds) = &self.kinds {
            check_count("kinds", kinds.len(), POLICY_KINDS_MAX)?;
            for kind in kinds {
                check_key("kinds", kind)?;
            }
        }
        if let Some(ids) = &self.providers.ids {
            check_count("providers", ids.len(), POLICY_PROVIDERS_MAX)?;
            for id in ids {
                check_id("providers", id)?;
            }
        }
        check_labels("provider_labels", &self.providers.labels)?;
        for (field, limits) in [("max_per_request", &self.max_per_request), ("max_held", &self.max_held)] {
            check_count(field, limits.len(), POLICY_KINDS_MAX)?;
            for (kind, limit) in limits {
                let field = check_key(field, kind)?;
                if *limit > QUOTA_MAX {
                    return Err(InvalidArgument::new(field, format!("is {limit}, at most {QUOTA_MAX} is allowed")));
                }
            }
        }
        Ok(())
    }

    /// Reads a capability URI, e.g.
    /// `qm-capability:kinds=cpu_cores,gpu;max_per_request=cpu_cores:4;preempt=no`.
    /// Fields (each at most once, any order, `;`-separated): `kinds`
    /// (`,`-separated), `providers` (ids, `,`-separated), `labels`
    /// (`key:value`, `,`-separated), `max_per_request` and `max_held`
    /// (`kind:N`, `,`-separated), `priority_max` (an integer), `preempt`
    /// (`yes`/`no`). A field not given does not narrow.
    pub fn parse_uri(uri: &str) -> Result<Capability, InvalidArgument> {
        let invalid = |reason: String| InvalidArgument::new("capability_uri", reason);
        if uri.len() > CAPABILITY_URI_LEN_MAX {
            return Err(invalid(format!("is {} bytes, at most {CAPABILITY_URI_LEN_MAX}", uri.len())));
        }
        let body = uri
            .strip_prefix(CAPABILITY_URI_SCHEME)
            .ok_or_else(|| invalid(format!("must start with {CAPABILITY_URI_SCHEME}")))?;
        let mut capability = Capability::unrestricted();
        let mut seen = BTreeSet::new();
        for field in body.split(';').filter(|field| !field.is_empty()) {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| invalid(format!("field {field:?} is not key=value")))?;
            if !seen.insert(key) {
                return Err(invalid(format!("field {key} given twice")));
            }
            let items = || value.split(',').filter(|item| !item.is_empty());
            let pairs = || -> Result<BTreeMap<String, String>, InvalidArgument> {
                items()
                    .map(|item| {
                        item.split_once(':')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .ok_or_else(|| invalid(format!("{key}: {item:?} is not name:value")))
                    })
                    .collect()
            };
            let numbers = || -> Result<BTreeMap<String, u64>, InvalidArgument> {
                pairs()?
                    .into_iter()
                    .map(|(kind, n)| {
                        n.parse()
                            .map(|n| (kind, n))
                            .map_err(|_| invalid(format!("{key}: {n:?} is not a whole number")))
                    })
                    .collect()
            };
            match key {
                "kinds" => capability.kinds = Some(items().map(str::to_owned).collect()),
                "providers" => capability.providers.ids = Some(items().map(str::to_owned).collect()),
                "labels" => capability.providers.labels = pairs()?,
                "max_per_request" => capability.max_per_request = numbers()?,
                "max_held" => capability.max_held = numbers()?,
                "priority_max" => {
                    capability.priority_max = Some(
                        value
                            .parse()
                            .map_err(|_| invalid(format!("priority_max: {value:?} is not an integer")))?,
                    )
                }
                "preempt" => {
                    capability.may_preempt = match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(invalid(format!("preempt: {value:?} is not yes or no"))),
                    }
                }
                _ => return Err(invalid(format!("unknown field {key:?}"))),
            }
        }
        capability.check()?;
        Ok(capability)
    }
}

impl PolicySpec {
    /// Checks the name, the capability and the bindings.
    pub fn check(&self) -> Result<(), InvalidArgument> {
        check_id("name", &self.name)?;
        self.capability.check()?;
        check_count("bindings", self.bindings.len(), POLICY_BINDINGS_MAX)?;
        for binding in &self.bindings {
            binding.check()?;
        }
        Ok(())
    }
}

impl Binding {
    /// Checks a binding's names: a role that may be bound, a namespace
    /// only with the consumer role.
    pub fn check(&self) -> Result<(), InvalidArgument> {
        match self {
            Binding::CertName(name) => check_id("bindings.cert_name", name)?,
            Binding::Role { role, namespace } => {
                if !BINDABLE_ROLES.contains(&role.as_str()) {
                    return Err(InvalidArgument::new(
                        "bindings.role",
                        format!("{role:?} is not one of {}", BINDABLE_ROLES.join(", ")),
                    ));
                }
                if let Some(namespace) = namespace {
                    check_id("bindings.namespace", namespace)?;
                    if role != "resource_consumer" {
                        return Err(InvalidArgument::new(
                            "bindings.namespace",
                            "only resource_consumer certificates have a namespace",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl CapabilityPolicy {
    /// How specifically this policy is bound to the identity, if at all:
    /// 3 by certificate name, 2 by role and namespace, 1 by role alone.
    pub fn binding_rank(&self, cert_name: &str, role: &str, namespace: Option<&str>) -> Option<u8> {
        self.bindings
            .iter()
            .filter_map(|binding| match binding {
                Binding::CertName(name) => (name == cert_name).then_some(3),
                Binding::Role {
                    role: bound_role,
                    namespace: None,
                } => (bound_role == role).then_some(1),
                Binding::Role {
                    role: bound_role,
                    namespace: Some(bound_namespace),
                } => (bound_role == role && Some(bound_namespace.as_str()) == namespace).then_some(2),
            })
            .max()
    }
}

fn min_per_kind(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (kind, limit) in b {
        out.entry(kind.clone())
            .and_modify(|mine| *mine = (*mine).min(*limit))
            .or_insert(*limit);
    }
    out
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), InvalidArgument> {
    match count > max {
        true => Err(InvalidArgument::new(
            field,
            format!("has {count} entries, at most {max} are allowed"),
        )),
        false => Ok(()),
    }
}

fn join(ids: &BTreeSet<String>) -> String {
    ids.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

// `ID_LEN_MAX` bounds every name above through `check_id`; named here so
// that the doc of the URI's fields and the bound stay together.
const _: () = assert!(CAPABILITY_URI_LEN_MAX > ID_LEN_MAX);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::OptionalMillis;

    fn request(kinds: &[(&str, u64)], priority: i64) -> AllocationRequest {
        AllocationRequest {
            request_id: uuid::Uuid::nil(),
            requester_id: "r".into(),
            namespace: "team-a".into(),
            requirements: kinds
                .iter()
                .map(|(kind, quantity)| crate::request::Requirement {
                    kind: (*kind).into(),
                    quantity: *quantity,
                })
                .collect(),
            priority,
            deadline_ms: OptionalMillis::NONE,
            lease_ttl_ms: OptionalMillis::NONE,
            constraints: Default::default(),
            placement: Default::default(),
        }
    }

    #[test]
    fn a_uri_reads_every_field() {
        let capability = Capability::parse_uri(
            "qm-capability:kinds=cpu_cores,gpu;providers=node_1;labels=zone:a;max_per_request=cpu_cores:4;max_held=gpu:2;priority_max=5;preempt=no",
        )
        .unwrap();
        assert_eq!(
            Capability {
                kinds: Some(["cpu_cores".to_owned(), "gpu".to_owned()].into()),
                providers: ProviderScope {
                    ids: Some(["node_1".to_owned()].into()),
                    labels: [("zone".to_owned(), "a".to_owned())].into(),
                },
                max_per_request: [("cpu_cores".to_owned(), 4)].into(),
                max_held: [("gpu".to_owned(), 2)].into(),
                priority_max: Some(5),
                may_preempt: false,
            },
            capability
        );
        for bad in [
            "qm://x",
            "qm-capability:kinds",
            "qm-capability:colour=red",
            "qm-capability:preempt=maybe",
            "qm-capability:max_held=gpu:x",
        ] {
            assert!(Capability::parse_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_intersection_never_widens() {
        let policy = Capability {
            kinds: Some(["cpu_cores".to_owned(), "gpu".to_owned()].into()),
            max_per_request: [("cpu_cores".to_owned(), 8)].into(),
            priority_max: Some(10),
            may_preempt: true,
            ..Capability::default()
        };
        let uri =
            Capability::parse_uri("qm-capability:kinds=cpu_cores,memory_gb;max_per_request=cpu_cores:16,gpu:1;priority_max=20").unwrap();
        let effective = policy.intersect(&uri);
        assert_eq!(Some(["cpu_cores".to_owned()].into()), effective.kinds);
        assert_eq!(
            BTreeMap::from([("cpu_cores".to_owned(), 8), ("gpu".to_owned(), 1)]),
            effective.max_per_request
        );
        assert_eq!(Some(10), effective.priority_max);
        assert_eq!(effective, uri.intersect(&policy), "the same both ways");
        assert_eq!(policy, policy.intersect(&Capability::unrestricted()));
    }

    #[test]
    fn a_request_is_checked_field_by_field() {
        let capability = Capability {
            kinds: Some(["cpu_cores".to_owned()].into()),
            max_per_request: [("cpu_cores".to_owned(), 4)].into(),
            priority_max: Some(5),
            ..Capability::default()
        };
        assert_eq!(Ok(()), capability.check_request(&request(&[("cpu_cores", 4)], 5)));
        let refused = |kinds: &[(&str, u64)], priority| capability.check_request(&request(kinds, priority)).unwrap_err().to_string();
        assert_eq!("capability kinds: gpu not allowed (allowed: cpu_cores)", refused(&[("gpu", 1)], 0));
        assert_eq!(
            "capability max_per_request: 5 cpu_cores in one request not allowed (at most 4)",
            refused(&[("cpu_cores", 5)], 0)
        );
        assert_eq!(
            "capability priority_max: priority 6 not allowed (at most 5)",
            refused(&[("cpu_cores", 1)], 6)
        );
    }

    #[test]
    fn the_provider_scope_narrows_the_constraints() {
        let capability = Capability {
            providers: ProviderScope {
                ids: Some(["node_1".to_owned()].into()),
                labels: [("zone".to_owned(), "a".to_owned())].into(),
            },
            ..Capability::default()
        };
        let mut scoped = request(&[("cpu_cores", 1)], 0);
        capability.scope_request(&mut scoped).unwrap();
        assert_eq!(Some("node_1".to_owned()), scoped.constraints.provider_id);
        assert_eq!(BTreeMap::from([("zone".to_owned(), "a".to_owned())]), scoped.constraints.labels);
        let mut elsewhere = request(&[("cpu_cores", 1)], 0);
        elsewhere.constraints.provider_id = Some("node_2".into());
        assert_eq!(
            "capability providers: provider node_2 not allowed by policy \"p\" (allowed: node_1)",
            capability.scope_request(&mut elsewhere).unwrap_err().message("by policy \"p\"")
        );
    }

    #[test]
    fn the_most_specific_binding_ranks_highest() {
        let policy = CapabilityPolicy {
            name: "p".into(),
            revision: 1,
            capability: Capability::default(),
            bindings: [
                Binding::CertName("alice".into()),
                Binding::Role {
                    role: "resource_consumer".into(),
                    namespace: Some("team-a".into()),
                },
                Binding::Role {
                    role: "admin".into(),
                    namespace: None,
                },
            ]
            .into(),
        };
        assert_eq!(Some(3), policy.binding_rank("alice", "resource_consumer", Some("team-b")));
        assert_eq!(Some(2), policy.binding_rank("bob", "resource_consumer", Some("team-a")));
        assert_eq!(None, policy.binding_rank("bob", "resource_consumer", Some("team-b")));
        assert_eq!(Some(1), policy.binding_rank("ops", "admin", None));
    }
}
