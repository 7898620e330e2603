//! No namespace ever holds more than its quota: the allocation workload's
//! namespace has a quota of [`QUOTA_CPU_CORES`] cores (set by the admin at
//! setup, fewer than the providers have), and every read (one moment of the
//! table) must show its active allocations holding at most that many. Cores
//! are exclusive units of capacity 1, so what is held is what was asked.
//!
//! With `--preemption` the admin changes the quota during the run, and
//! lowering it below what is held evicts nothing; so a read is held to the
//! largest quota that may have been in force up to its completion: the
//! setup's, or any `set-quota` invoked before then (`ok` or `info`). That
//! one instant cannot say more; [`super::quota_log`] judges each grant
//! against the quota in force when the log applied it.

use serde::Serialize;

use super::holds::reads;
use super::{AllocationHistory, CheckerResult, Violation};
use crate::history::{OpType, Payload};
use crate::workload::allocation::{QUOTA_CPU_CORES, QUOTA_KIND};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum QuotaViolation {
    /// One read showed the namespace's active allocations holding more than its quota.
    OverQuotaInRead {
        resource_kind: String,
        quota: u64,
        held: u64,
        request_ids: Vec<String>,
        read: Vec<u64>,
    },
}

impl Violation for QuotaViolation {
    fn describe(&self) -> String {
        match self {
            QuotaViolation::OverQuotaInRead {
                resource_kind: kind,
                quota,
                held,
                request_ids,
                ..
            } => format!(
                "one read shows the namespace holding {held} {kind}, over its quota of {quota} ({})",
                request_ids.join(", ")
            ),
        }
    }

    fn ops(&self) -> Vec<u64> {
        match self {
            QuotaViolation::OverQuotaInRead { read, .. } => read.clone(),
        }
    }
}

/// The largest quota of [`QUOTA_KIND`] that may have been in force by
/// `until_ns`: the setup's, or one a `set-quota` invoked earlier asked for.
fn largest_quota_by(history: &AllocationHistory, until_ns: u64) -> u64 {
    history
        .operations
        .iter()
        .filter(|operation| operation.kind() != OpType::Fail && operation.invoke_ns() < until_ns)
        .filter_map(|operation| match &operation.invoke.payload {
            Payload::SetQuota(value) if value.kind == QUOTA_KIND => Some(value.limit),
            _ => None,
        })
        .fold(QUOTA_CPU_CORES, u64::max)
}

pub fn check(history: &AllocationHistory) -> CheckerResult {
    let mut violations = Vec::new();
    let all_reads = reads(history.operations);
    for (operation, records, _) in &all_reads {
        let quota = largest_quota_by(history, operation.complete_ns().unwrap_or(u64::MAX));
        let holders: Vec<(&str, u64)> = records
            .iter()
            .filter(|record| record.is_active())
            .map(|record| {
                let held = record
                    .grants
                    .iter()
                    .filter(|grant| grant.kind == QUOTA_KIND)
                    .map(|grant| grant.amount)
                    .sum();
                (record.request_id.as_str(), held)
            })
            .filter(|(_, held)| *held > 0)
            .collect();
        let held: u64 = holders.iter().map(|(_, held)| held).sum();
        if held > quota {
            violations.push(QuotaViolation::OverQuotaInRead {
                resource_kind: QUOTA_KIND.to_owned(),
                quota,
                held,
                request_ids: holders.iter().map(|(id, _)| id.to_string()).collect(),
                read: operation.indexes(),
            });
        }
    }
    let notes = vec![format!(
        "{} reads checked against a quota of {QUOTA_CPU_CORES} {QUOTA_KIND} (or the largest set before the read)",
        all_reads.len()
    )];
    CheckerResult::from_violations("quota", &violations, notes, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;
    use crate::checker::Validity;

    fn cores(request: &str, count: u64) -> crate::history::RecordView {
        let grants: Vec<(String, &str, u64)> = (0..count).map(|core| (format!("cpu-{core}"), "cpu_cores", 1)).collect();
        let grants: Vec<(&str, &str, u64)> = grants.iter().map(|(id, kind, amount)| (id.as_str(), *kind, *amount)).collect();
        record(request, "monitoring", "jepsen-p0", &grants)
    }

    #[test]
    fn a_read_at_the_quota_is_fine() {
        let mut history = HistoryBuilder::default();
        let a = cores("a", QUOTA_CPU_CORES - 1);
        let b = cores("b", 1);
        let queued = record("c", "queued", "", &[]);
        history.ok(2, 20, 30, read_records(vec![a, b, queued], false));
        assert_eq!(Validity::VALID, allocation_verdict(&mut history, check).valid);
    }

    #[test]
    fn a_read_is_held_to_the_largest_quota_set_before_it_completed() {
        let raise = |limit| {
            Payload::SetQuota(crate::history::QuotaValue {
                namespace: "default".into(),
                kind: QUOTA_KIND.into(),
                limit,
                attempts: None,
            })
        };
        let over = || read_records(vec![cores("a", QUOTA_CPU_CORES), cores("b", 2)], false);
        let mut history = HistoryBuilder::default();
        // Raised (info: it may have taken effect) before the read: fine.
        history.info(7, 10, 15, raise(QUOTA_CPU_CORES + 2)).ok(2, 20, 30, over());
        assert_eq!(Validity::VALID, allocation_verdict(&mut history, check).valid);
        // Raised only after the read completed, or by a failed call: caught.
        let mut history = HistoryBuilder::default();
        history
            .fail(7, 10, 15, raise(QUOTA_CPU_CORES + 2))
            .ok(2, 20, 30, over())
            .ok(7, 40, 50, raise(QUOTA_CPU_CORES + 2));
        assert_eq!(Validity::INVALID, allocation_verdict(&mut history, check).valid);
    }

    #[test]
    fn a_read_over_the_quota_is_caught() {
        let mut history = HistoryBuilder::default();
        history.ok(2, 20, 30, read_records(vec![cores("a", QUOTA_CPU_CORES), cores("b", 1)], true));
        let result = allocation_verdict(&mut history, check);
        assert_eq!(Validity::INVALID, result.valid);
        assert!(
            result.anomalies[0]
                .description
                .contains(&format!("holding {} cpu_cores", QUOTA_CPU_CORES + 1)),
            "{:#?}",
            result.anomalies
        );
    }
}
