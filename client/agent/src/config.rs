//! [`AgentConfig`]: how often an agent heartbeats and retries, and how long
//! it waits for the cluster when it starts.

use std::time::Duration;

use qm_state_machine::InvalidArgument;

/// Longest interval accepted for heartbeats and retries: one minute. A
/// provider heartbeating less often than that would need a failure window
/// of minutes to stay alive.
pub const AGENT_INTERVAL_MS_MAX: u64 = 60_000;
/// Longest wait for a first registration: one hour.
pub const REGISTER_WAIT_MS_MAX: u64 = 3_600_000;

/// Timings of an agent. The defaults suit the node's default failure window
/// (5 s): five heartbeats fit in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Between two heartbeats (each carries fresh usage metrics). Keep it well
    /// under the cluster's `--provider-failure-window-ms`: a heartbeat may
    /// need a failover before it arrives.
    pub heartbeat_interval_ms: u64,
    /// Between two attempts at confirmations the cluster did not take
    /// (no leader at the time).
    pub confirm_retry_interval_ms: u64,
    /// How long to keep trying the first registration while no replica
    /// answers (the agent may start before the cluster).
    pub register_wait_ms: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            heartbeat_interval_ms: 1_000,
            confirm_retry_interval_ms: 500,
            register_wait_ms: 60_000,
        }
    }
}

impl AgentConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), InvalidArgument> {
        for (field, value, max) in [
            ("heartbeat_interval_ms", self.heartbeat_interval_ms, AGENT_INTERVAL_MS_MAX),
            ("confirm_retry_interval_ms", self.confirm_retry_interval_ms, AGENT_INTERVAL_MS_MAX),
            ("register_wait_ms", self.register_wait_ms, REGISTER_WAIT_MS_MAX),
        ] {
            if value == 0 || value > max {
                return Err(InvalidArgument::new(field, format!("is {value}, must be between 1 and {max}")));
            }
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn confirm_retry_interval(&self) -> Duration {
        Duration::from_millis(self.confirm_retry_interval_ms)
    }

    pub fn register_wait(&self) -> Duration {
        Duration::from_millis(self.register_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_or_huge_intervals_are_refused_with_the_field() {
        let zero = AgentConfig {
            heartbeat_interval_ms: 0,
            ..AgentConfig::default()
        };
        let huge = AgentConfig {
            register_wait_ms: REGISTER_WAIT_MS_MAX + 1,
            ..AgentConfig::default()
        };

        assert_eq!(Ok(()), AgentConfig::default().validate());
        assert_eq!("heartbeat_interval_ms", zero.validate().unwrap_err().field);
        assert_eq!("register_wait_ms", huge.validate().unwrap_err().field);
    }
}
