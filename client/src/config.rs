//! [`ClientConfig`]: where the replicas are and how long and how often to try
//! them. One set of defaults, shared by the library and the `qm` CLI.

use std::time::Duration;

use crate::tls::TlsConfig;

/// The replicas of a local three-replica cluster (`scripts/cluster.sh`),
/// comma-separated as `qm --endpoints` and `QM_ENDPOINTS` take them.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// Replicas a client knows at most: the configured endpoints (its seeds),
/// the members its membership refreshes read and leaders named by NotLeader
/// hints. Five replicas is a large cluster; this leaves room for a rolling
/// replacement of every member without letting the list grow forever
/// (replicas that left the membership and stopped answering are dropped).
pub const REPLICAS_MAX: usize = 16;
/// The same bound under the name the membership refresh uses for it.
pub const ENDPOINTS_MAX: usize = REPLICAS_MAX;
/// How often a client reads the cluster's membership (`ClusterStatus`) when
/// nothing else made it do so: the longest a client may go without
/// learning of a replica added since. A rolling replacement that keeps each
/// old replica up for longer than this never strands an idle client. It
/// also refreshes at once on start, after every redirect and whenever a
/// replica stops answering.
pub const MEMBERSHIP_REFRESH_INTERVAL_MS: u64 = 5_000;
/// Smallest `membership_refresh_interval_ms` accepted, and the least time
/// between two refreshes however many redirects ask for one: a storm of
/// redirects during an election costs at most this many status reads.
pub const MEMBERSHIP_REFRESH_INTERVAL_MS_MIN: u64 = 100;
/// Largest `retries_max`: past this a caller wants a longer deadline, not more tries.
pub const RETRIES_LIMIT: u32 = 16;
/// Largest timeout or backoff accepted: one hour.
pub const DURATION_MS_LIMIT: u64 = 3_600_000;

/// How a [`Client`](crate::Client) reaches the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Replica addresses as `host:port`. Any one is enough to find the leader;
    /// listing all of them lets the client fail over when one is down.
    pub endpoints: Vec<String>,
    /// Time to open a TCP connection to one replica: a dead host is given up
    /// quickly so the next replica is tried within the call's deadline.
    pub connect_timeout_ms: u64,
    /// Deadline of one call, across every attempt, redirect and backoff. A
    /// write still without an answer then has an unknown outcome.
    pub request_timeout_ms: u64,
    /// Deadline of one attempt on one replica. Shorter than the call's
    /// deadline so that a paused or cut-off replica, which accepts the
    /// connection but never answers, costs one attempt and not the whole call.
    pub attempt_timeout_ms: u64,
    /// Retries after a timeout, an unavailable replica or a connection error
    /// (the protocol's `retry_count`: 3). Following a leader hint is not a retry.
    pub retries_max: u32,
    /// Ceiling of the first retry's delay; it doubles each retry (full jitter:
    /// the delay is uniform between zero and the ceiling).
    pub backoff_base_ms: u64,
    /// The ceiling stops doubling here.
    pub backoff_max_ms: u64,
    /// Mutual TLS: the CA the replicas' certificates must chain to, this
    /// client's certificate and key. With it replicas are dialled over
    /// `https` and decide from the certificate what this client may do;
    /// without it, plain `http` (a cluster started without TLS).
    pub tls: Option<TlsConfig>,
    /// Send allocate, release and renew on one long-lived `Pipeline` stream
    /// per replica rather than as a gRPC call each: the same answers for a
    /// fraction of the CPU at high load. Off, or against a replica without
    /// `Pipeline`, each is its own call.
    pub pipeline_writes: bool,
    /// How often the client reads the membership to follow replicas added
    /// and removed since it started ([`MEMBERSHIP_REFRESH_INTERVAL_MS`] by
    /// default, at least [`MEMBERSHIP_REFRESH_INTERVAL_MS_MIN`]). The
    /// configured endpoints stay known whatever the membership says: they
    /// are the seeds a client falls back to.
    pub membership_refresh_interval_ms: u64,
    /// Follow the cluster's membership (on by default). Off, the client
    /// knows only its endpoints and the leaders NotLeader hints name, and
    /// reads no membership: for a client pinned to one replica on purpose
    /// (a diagnostic stale read of that replica, a test of one replica).
    pub follow_membership: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoints: DEFAULT_ENDPOINTS.split(',').map(str::to_owned).collect(),
            connect_timeout_ms: 1_000,
            request_timeout_ms: 5_000,
            attempt_timeout_ms: 2_000,
            retries_max: 3,
            backoff_base_ms: 50,
            backoff_max_ms: 1_000,
            tls: None,
            pipeline_writes: true,
            membership_refresh_interval_ms: MEMBERSHIP_REFRESH_INTERVAL_MS,
            follow_membership: true,
        }
    }
}

/// A [`ClientConfig`] that cannot work: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl From<crate::tls::TlsConfigError> for ConfigError {
    fn from(error: crate::tls::TlsConfigError) -> Self {
        ConfigError::new(error.field, error.reason)
    }
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl ClientConfig {
    /// A config for these endpoints with every other setting at its default.
    pub fn with_endpoints(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..ClientConfig::default()
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::new("endpoints", "must list at least one replica"));
        }
        if self.endpoints.len() > REPLICAS_MAX {
            return Err(ConfigError::new(
                "endpoints",
                format!("lists {} replicas, at most {REPLICAS_MAX} are allowed", self.endpoints.len()),
            ));
        }
        for (position, endpoint) in self.endpoints.iter().enumerate() {
            check_endpoint(endpoint).map_err(|reason| ConfigError::new(format!("endpoints[{position}]"), reason))?;
        }
        check_duration("connect_timeout_ms", self.connect_timeout_ms)?;
        check_duration("request_timeout_ms", self.request_timeout_ms)?;
        check_duration("attempt_timeout_ms", self.attempt_timeout_ms)?;
        if self.attempt_timeout_ms > self.request_timeout_ms {
            return Err(ConfigError::new(
                "attempt_timeout_ms",
                format!(
                    "is {} ms, more than request_timeout_ms ({} ms)",
                    self.attempt_timeout_ms, self.request_timeout_ms
                ),
            ));
        }
        if self.retries_max > RETRIES_LIMIT {
            return Err(ConfigError::new(
                "retries_max",
                format!("is {}, at most {RETRIES_LIMIT} is allowed", self.retries_max),
            ));
        }
        check_duration("backoff_base_ms", self.backoff_base_ms)?;
        check_duration("backoff_max_ms", self.backoff_max_ms)?;
        if self.backoff_base_ms > self.backoff_max_ms {
            return Err(ConfigError::new(
                "backoff_base_ms",
                format!(
                    "is {} ms, more than backoff_max_ms ({} ms)",
                    self.backoff_base_ms, self.backoff_max_ms
                ),
            ));
        }
        check_duration("membership_refresh_interval_ms", self.membership_refresh_interval_ms)?;
        if self.membership_refresh_interval_ms < MEMBERSHIP_REFRESH_INTERVAL_MS_MIN {
            return Err(ConfigError::new(
                "membership_refresh_interval_ms",
                format!(
                    "is {} ms, at least {MEMBERSHIP_REFRESH_INTERVAL_MS_MIN} ms is required",
                    self.membership_refresh_interval_ms
                ),
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }

    pub fn membership_refresh_interval(&self) -> Duration {
        Duration::from_millis(self.membership_refresh_interval_ms)
    }
}

/// `host:port`, with a host name, an IPv4 address or a bracketed IPv6 address.
/// The scheme is not part of an endpoint: the TLS settings decide it.
pub(crate) fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.contains("://") {
        return Err(format!("{endpoint:?} must be host:port, without a scheme"));
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(format!("{endpoint:?} must be host:port"));
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{endpoint:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!("{endpoint:?} has no valid port (1-65535)")),
    }
}

fn check_duration(field: &str, value_ms: u64) -> Result<(), ConfigError> {
    if value_ms == 0 {
        return Err(ConfigError::new(field, "must be positive"));
    }
    if value_ms > DURATION_MS_LIMIT {
        return Err(ConfigError::new(
            field,
            format!("is {value_ms} ms, at most {DURATION_MS_LIMIT} ms is allowed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid() {
        assert_eq!(Ok(()), ClientConfig::default().validate());
        assert_eq!(3, ClientConfig::default().retries_max, "the protocol's retry_count");
    }

    #[test]
    fn endpoints_must_be_host_and_port() {
        for good in ["127.0.0.1:7101", "localhost:1", "[::1]:7101", "qm-1.example.com:65535"] {
            assert_eq!(Ok(()), check_endpoint(good), "{good}");
        }
        for bad in [
            "127.0.0.1",
            "http://127.0.0.1:7101",
            ":7101",
            "host:0",
            "host:70000",
            "host:port",
            "a b:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_field_is_named() {
        let cases = [
            (
                ClientConfig {
                    endpoints: vec![],
                    ..ClientConfig::default()
                },
                "endpoints",
            ),
            (ClientConfig::with_endpoints(["127.0.0.1:1", "nope"]), "endpoints[1]"),
            (
                ClientConfig {
                    request_timeout_ms: 0,
                    ..ClientConfig::default()
                },
                "request_timeout_ms",
            ),
            (
                ClientConfig {
                    attempt_timeout_ms: 6_000,
                    ..ClientConfig::default()
                },
                "attempt_timeout_ms",
            ),
            (
                ClientConfig {
                    retries_max: RETRIES_LIMIT + 1,
                    ..ClientConfig::default()
                },
                "retries_max",
            ),
            (
                ClientConfig {
                    backoff_base_ms: 2_000,
                    ..ClientConfig::default()
                },
                "backoff_base_ms",
            ),
            (
                ClientConfig {
                    membership_refresh_interval_ms: MEMBERSHIP_REFRESH_INTERVAL_MS_MIN - 1,
                    ..ClientConfig::default()
                },
                "membership_refresh_interval_ms",
            ),
            (
                ClientConfig {
                    connect_timeout_ms: DURATION_MS_LIMIT + 1,
                    ..ClientConfig::default()
                },
                "connect_timeout_ms",
            ),
            (
                ClientConfig {
                    tls: Some(TlsConfig {
                        key: Default::default(),
                        ..TlsConfig::in_dir(std::path::Path::new("certs"), "admin")
                    }),
                    ..ClientConfig::default()
                },
                "tls.key",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(field, config.validate().unwrap_err().field);
        }
    }

    #[test]
    fn too_many_endpoints_are_refused() {
        let config = ClientConfig::with_endpoints((1..=REPLICAS_MAX as u16 + 1).map(|port| format!("127.0.0.1:{port}")));

        assert_eq!(
            ConfigError::new("endpoints", "lists 17 replicas, at most 16 are allowed"),
            config.validate().unwrap_err()
        );
    }
}
