//! Statistics (no verdict): how many operations ended ok, fail or info; how
//! available the cluster was during faults and outside them; how long each
//! fault that hit the leader took to be followed by a successful write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::operations::{FaultWindow, LeaderFault, Operation};
use crate::history::OpType;

/// Operations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

impl Counts {
    fn add(&mut self, kind: OpType) {
        match kind {
            OpType::Ok => self.ok += 1,
            OpType::Fail => self.fail += 1,
            OpType::Info | OpType::Invoke => self.info += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.ok + self.fail + self.info
    }

    /// The fraction that ended ok; `None` without operations.
    pub fn ok_fraction(&self) -> Option<f64> {
        (self.total() > 0).then(|| self.ok as f64 / self.total() as f64)
    }
}

/// Smallest, median and largest of some durations, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let at = |quantile: f64| values[((values.len() - 1) as f64 * quantile).round() as usize];
        Some(Spread {
            min: values[0],
            median: at(0.5),
            p99: at(0.99),
            max: values[values.len() - 1],
        })
    }
}

/// How long after a nemesis action that took the leader out the next write succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    pub fault: String,
    /// When the fault began, seconds since the run started.
    pub at_s: f64,
    /// From the fault to the completion of the first ok write (not a
    /// resend, which the table answers without committing anything) invoked
    /// after it; `None` if no write succeeded before the end.
    pub next_ok_write_ms: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub counts: BTreeMap<String, Counts>,
    pub total: Counts,
    /// Operations invoked while a fault was in force.
    pub during_faults: Counts,
    /// Operations invoked while the cluster was whole.
    pub healthy: Counts,
    pub failovers: Vec<Failover>,
    pub failover_ms: Option<Spread>,
    /// Latency of answered operations (ok and fail) per `f`.
    pub latency_ms: BTreeMap<String, Spread>,
}

pub fn compute(operations: &[Operation], windows: &[FaultWindow], leader_faults: &[LeaderFault]) -> Stats {
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let (mut total, mut during_faults, mut healthy) = (Counts::default(), Counts::default(), Counts::default());
    let mut latencies: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for operation in operations {
        let kind = operation.kind();
        let name = operation.invoke.payload.name().to_owned();
        counts.entry(name.clone()).or_default().add(kind);
        total.add(kind);
        let in_fault = windows
            .iter()
            .any(|window| (window.start_ns..window.end_ns).contains(&operation.invoke_ns()));
        match in_fault {
            true => during_faults.add(kind),
            false => healthy.add(kind),
        }
        if let Some(complete) = operation.complete_ns() {
            latencies
                .entry(name)
                .or_default()
                .push((complete - operation.invoke_ns()) as f64 / 1e6);
        }
    }
    let failovers: Vec<Failover> = leader_faults
        .iter()
        .map(|fault| Failover {
            fault: fault.label.clone(),
            at_s: fault.at_ns as f64 / 1e9,
            next_ok_write_ms: operations
                .iter()
                .filter(|operation| {
                    let payload = &operation.invoke.payload;
                    operation.is_ok() && payload.is_write() && !payload.is_resend() && operation.invoke_ns() >= fault.at_ns
                })
                .filter_map(Operation::complete_ns)
                .min()
                .map(|complete| (complete - fault.at_ns) as f64 / 1e6),
        })
        .collect();
    Stats {
        counts,
        total,
        during_faults,
        healthy,
        failover_ms: Spread::of(failovers.iter().filter_map(|failover| failover.next_ok_write_ms).collect()),
        failovers,
        latency_ms: latencies
            .into_iter()
            .filter_map(|(name, values)| Spread::of(values).map(|spread| (name, spread)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::{acquire, read_units, HistoryBuilder};

    #[test]
    fn failover_is_measured_to_the_next_ok_write_invoked_after_the_fault() {
        let mut history = HistoryBuilder::default();
        history
            .ok(0, 0, 5_000_000, acquire("u", "a", Some("allocated")))
            .info(1, 1_000_000, 9_000_000, acquire("u", "b", None))
            .ok(2, 1_500_000, 1_600_000, read_units(&[("u", &["a"])]))
            .ok(3, 2_000_000, 3_000_000, acquire("u", "c", Some("queued")));
        let windows = vec![FaultWindow {
            start_ns: 1_000_000,
            end_ns: 4_000_000,
            fault: "kill",
            label: "kill [1]".into(),
            hits_leader: true,
        }];
        let leader_faults = vec![LeaderFault {
            at_ns: 1_000_000,
            label: "kill [1]".into(),
        }];
        let stats = compute(&history.operations(), &windows, &leader_faults);
        assert_eq!(Some(2.0), stats.failovers[0].next_ok_write_ms);
        assert_eq!(Counts { ok: 2, fail: 0, info: 1 }, stats.during_faults);
        assert_eq!(Counts { ok: 1, fail: 0, info: 0 }, stats.healthy);
        assert_eq!(Counts { ok: 2, fail: 0, info: 1 }, stats.counts["acquire"]);
    }
}
