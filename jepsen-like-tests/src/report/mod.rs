//! The report: runs the workload's checkers over a history and writes, in
//! the run's directory:
//!
//! * `test.json`: the run's settings and the units, so `qm-jepsen check` can redo this;
//! * `certs/`: on a `--tls` run, the CA certificate and every certificate and key it issued;
//! * `history.jsonl`: written while the run goes (see [`crate::history`]);
//! * `results.json`: `valid`, each checker's verdict and anomalies, statistics;
//! * `summary.txt`: the same for a person, ending with the verdict line;
//! * `latency.png`, `rate.png`: [`plots`];
//! * `linearizability-<unit>.html`: [`timeline`], for each unit that is not linearizable;
//! * `nodes/replica-N.log`: every replica's log.
//!
//! [`matrix`] sums up a directory of such reports (`qm-jepsen matrix`).

pub mod matrix;
pub mod plots;
pub mod timeline;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checker::linearizability::{self, UnitFailure};
use crate::checker::operations::{client_operations, fault_windows, leader_faults};
use crate::checker::stats::{self, Stats};
use crate::checker::wgl::SearchLimits;
use crate::checker::{
    capacity, double_allocation, idempotency, lost_allocation, preemption, quota, quota_log, stale_read, AllocationHistory, CheckerResult,
    Validity,
};
use crate::config::{RunConfig, WorkloadKind, NEMESIS_FIRINGS_MIN};
use crate::error::JepsenError;
use crate::events::EventLog;
use crate::history::{Op, OpType, Payload};
use crate::workload::allocation::{unit_specs, UnitSpec};

/// Anomaly descriptions printed per checker in `summary.txt`.
pub const SUMMARY_ANOMALIES_MAX: usize = 10;

/// What a run was: enough to check its history again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestDescription {
    pub config: RunConfig,
    /// The units the allocation workload registered (empty for the register workload).
    pub units: Vec<UnitSpec>,
}

impl TestDescription {
    pub fn new(config: RunConfig) -> TestDescription {
        let units = match config.workload {
            WorkloadKind::Allocation => unit_specs(),
            WorkloadKind::Register => Vec::new(),
        };
        TestDescription { config, units }
    }
}

/// `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub valid: Validity,
    pub seed: u64,
    pub reproduce: String,
    pub workload: WorkloadKind,
    pub nemesis: String,
    pub nodes: u64,
    pub unsafe_stale_reads: bool,
    /// Replicas and clients were on mutual TLS (`--tls`). Absent, hence
    /// false, in the results of runs made before the flag existed.
    #[serde(default)]
    pub tls: bool,
    /// Client operations in the history.
    pub operations: usize,
    pub anomalies: usize,
    pub checkers: Vec<CheckerResult>,
    pub stats: Stats,
    /// Things the run or the report wants a reader to know (a failed plot, a missing final read).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Faults injected per nemesis named in the run (`kill`, `pause`,
    /// `partition`, `membership`), each at least
    /// [`crate::config::NEMESIS_FIRINGS_MIN`] in a run long enough.
    #[serde(default)]
    pub nemesis_fired: BTreeMap<String, u64>,
    /// Replicas the run started with that the membership nemesis removed.
    #[serde(default)]
    pub originals_removed: Vec<u64>,
    /// `--preemption` runs: what the new operations did. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preemption: Option<PreemptionCounts>,
}

/// Faults per nemesis, and the original replicas removed, from the history.
fn nemesis_record(history: &[Op], config: &RunConfig) -> (BTreeMap<String, u64>, Vec<u64>) {
    let mut fired: BTreeMap<String, u64> = config.nemeses.iter().map(|kind| (kind.name().to_owned(), 0)).collect();
    let mut removed = Vec::new();
    for op in history.iter().filter(|op| op.process.is_nemesis()) {
        let kind = match &op.payload {
            Payload::Kill(_) => "kill",
            Payload::Pause(_) => "pause",
            Payload::Partition(_) => "partition",
            Payload::AddReplica(_) => "membership",
            Payload::Optimize(_) => "optimize",
            Payload::RemoveReplica(value) if op.kind == OpType::Info && value.detail.is_empty() => {
                removed.extend(value.nodes.iter().copied().filter(|id| *id <= config.nodes));
                continue;
            }
            _ => continue,
        };
        if op.kind == OpType::Invoke {
            *fired.entry(kind.to_owned()).or_default() += 1;
        }
    }
    removed.sort_unstable();
    removed.dedup();
    (fired, removed)
}

/// What a `--preemption` run's preemptors and quota changes did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreemptionCounts {
    /// `allocation_preempted` events the watcher saw.
    pub preemptions: u64,
    /// ... of which the victim went back to the queue.
    pub requeued: u64,
    /// `set-quota` operations acknowledged (`ok`).
    pub quota_changes: u64,
    /// `quota_set` events the watcher saw (the setup's included).
    pub quota_set_events: u64,
    /// Events in the watcher's log, and whether it is whole.
    pub events: u64,
    pub events_complete: bool,
}

impl PreemptionCounts {
    pub fn count(history: &[Op], events: Option<&EventLog>) -> PreemptionCounts {
        let of_type = |kind: &str| events.map_or(0, |log| log.events.iter().filter(|event| event.kind == kind).count() as u64);
        PreemptionCounts {
            preemptions: of_type("allocation_preempted"),
            requeued: events.map_or(0, |log| {
                log.events
                    .iter()
                    .filter(|event| event.kind == "allocation_preempted" && event.requeued == Some(true))
                    .count() as u64
            }),
            quota_changes: history
                .iter()
                .filter(|op| op.kind == OpType::Ok && matches!(op.payload, Payload::SetQuota(_)))
                .count() as u64,
            quota_set_events: of_type("quota_set"),
            events: events.map_or(0, |log| log.events.len() as u64),
            events_complete: events.is_some_and(|log| log.complete),
        }
    }
}

/// The verdict, and what the time-line pages need.
pub struct Checked {
    pub results: Results,
    pub failures: Vec<UnitFailure>,
}

/// Runs the workload's checkers over `history`.
/// `events`: the table's events as the watcher saw them (`--preemption`
/// runs), for the checkers that replay the log.
pub fn check(test: &TestDescription, history: &[Op], events: Option<&EventLog>, notes: Vec<String>) -> Checked {
    let operations = client_operations(history);
    let windows = fault_windows(history);
    let (checkers, failures) = match test.config.workload {
        WorkloadKind::Register => {
            let report = linearizability::check(&operations, SearchLimits::default());
            (vec![report.result], report.failures)
        }
        WorkloadKind::Allocation => {
            let input = AllocationHistory {
                operations: &operations,
                units: &test.units,
                events,
            };
            let mut checkers = vec![
                double_allocation::check(&input),
                capacity::check(&input),
                quota::check(&input),
                lost_allocation::check(&input),
                idempotency::check(&input),
                stale_read::check(&input),
            ];
            if test.config.preemption {
                checkers.push(quota_log::check(&input));
                checkers.push(preemption::check(&input));
            }
            (checkers, Vec::new())
        }
    };
    let valid = checkers.iter().fold(Validity::VALID, |valid, checker| valid.and(checker.valid));
    let config = &test.config;
    let (nemesis_fired, originals_removed) = nemesis_record(history, config);
    let mut notes = notes;
    for (name, fired) in nemesis_fired.iter().filter(|(_, fired)| **fired < NEMESIS_FIRINGS_MIN) {
        notes.push(format!(
            "nemesis {name} fired {fired} times, fewer than {NEMESIS_FIRINGS_MIN}: the faults did not repeat; give a longer --time-limit"
        ));
    }
    let results = Results {
        valid,
        seed: config.seed,
        reproduce: config.reproduce_command(),
        workload: config.workload,
        nemesis: config.nemesis_flag(),
        nodes: config.nodes,
        unsafe_stale_reads: config.unsafe_stale_reads,
        tls: config.tls,
        operations: operations.len(),
        anomalies: checkers.iter().map(|checker| checker.anomaly_count).sum(),
        checkers,
        stats: stats::compute(&operations, &windows, &leader_faults(history)),
        notes,
        nemesis_fired,
        originals_removed,
        preemption: config.preemption.then(|| PreemptionCounts::count(history, events)),
    };
    Checked { results, failures }
}

/// The last line a run prints: the verdict, the seed, and how to reproduce a failure.
pub fn verdict_line(results: &Results) -> String {
    let what = format!(
        "{}, {} nodes{}, nemesis {}, seed {}: {} ops, {} ok, {} info, {} anomalies",
        results.workload.name(),
        results.nodes,
        if results.tls { ", TLS" } else { "" },
        results.nemesis,
        results.seed,
        results.operations,
        results.stats.total.ok,
        results.stats.total.info,
        results.anomalies
    );
    match results.valid {
        Validity::Known(true) => format!("valid: true ({what})"),
        _ => format!("valid: {} ({what}; reproduce: {})", results.valid, results.reproduce),
    }
}

/// `summary.txt`.
pub fn summary(results: &Results) -> String {
    let mut text = String::new();
    let stats = &results.stats;
    let _ = writeln!(
        text,
        "qm-jepsen: {} workload, {} nodes, nemesis {}, seed {}{}",
        results.workload.name(),
        results.nodes,
        results.nemesis,
        results.seed,
        if results.unsafe_stale_reads {
            " (replicas with --unsafe-stale-reads)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        text,
        "transport: {}",
        match results.tls {
            true => "mutual TLS (--tls): replica, admin, consumer and per-provider certificates of a fresh CA",
            false => "plain gRPC (no --tls)",
        }
    );
    let _ = writeln!(text, "reproduce: {}", results.reproduce);
    if let Some(counts) = &results.preemption {
        let _ = writeln!(
            text,
            "preemption: {} preemptions ({} requeued), {} quota changes, {} events watched{}",
            counts.preemptions,
            counts.requeued,
            counts.quota_changes,
            counts.events,
            if counts.events_complete { "" } else { " (log incomplete)" }
        );
    }
    let _ = writeln!(text);
    let _ = writeln!(
        text,
        "operations: {} ({} ok, {} fail, {} info)",
        stats.total.total(),
        stats.total.ok,
        stats.total.fail,
        stats.total.info
    );
    for (name, counts) in &stats.counts {
        let latency = stats
            .latency_ms
            .get(name)
            .map(|spread| {
                format!(
                    "; latency median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    spread.median, spread.p99, spread.max
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            text,
            "  {name:<10} {} ok, {} fail, {} info{latency}",
            counts.ok, counts.fail, counts.info
        );
    }
    let fraction = |counts: &stats::Counts| counts.ok_fraction().map_or("-".to_owned(), |f| format!("{:.1}%", f * 100.0));
    let _ = writeln!(
        text,
        "availability (ok / invoked): {} during faults ({} ops), {} while healthy ({} ops)",
        fraction(&stats.during_faults),
        stats.during_faults.total(),
        fraction(&stats.healthy),
        stats.healthy.total()
    );
    if !results.nemesis_fired.is_empty() {
        let fired: Vec<String> = results
            .nemesis_fired
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        let every = results.nemesis_fired.values().all(|count| *count >= NEMESIS_FIRINGS_MIN);
        let _ = writeln!(
            text,
            "nemesis fired: {} ({})",
            fired.join(", "),
            match every {
                true => format!("each at least {NEMESIS_FIRINGS_MIN} times"),
                false => format!("NOT each {NEMESIS_FIRINGS_MIN} times: see the notes"),
            }
        );
    }
    if results.nemesis_fired.contains_key("membership") {
        let removed: Vec<String> = results.originals_removed.iter().map(u64::to_string).collect();
        let _ = writeln!(
            text,
            "original replicas removed: {} of {}{}",
            removed.len(),
            results.nodes,
            match removed.is_empty() {
                true => String::new(),
                false => format!(" ({})", removed.join(", ")),
            }
        );
    }
    match &stats.failover_ms {
        Some(spread) => {
            let _ = writeln!(
                text,
                "leader failover (leader killed, paused, cut off or removed -> next ok write): {} times, min {:.0} ms, median {:.0} ms, max {:.0} ms",
                stats.failovers.len(),
                spread.min,
                spread.median,
                spread.max
            );
        }
        None => {
            let _ = writeln!(text, "leader failover: no fault hit the leader");
        }
    }
    let _ = writeln!(text);
    for checker in &results.checkers {
        let _ = writeln!(
            text,
            "checker {}: valid {} ({} anomalies)",
            checker.name, checker.valid, checker.anomaly_count
        );
        for note in &checker.notes {
            let _ = writeln!(text, "  {note}");
        }
        for anomaly in checker.anomalies.iter().take(SUMMARY_ANOMALIES_MAX) {
            let _ = writeln!(text, "  ANOMALY {} (history ops {:?})", anomaly.description, anomaly.ops);
        }
    }
    for note in &results.notes {
        let _ = writeln!(text, "note: {note}");
    }
    let _ = writeln!(text);
    let _ = writeln!(text, "{}", verdict_line(results));
    text
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), JepsenError> {
    std::fs::write(path, contents).map_err(JepsenError::io(path))
}

/// Writes `test.json`.
pub fn write_test(dir: &Path, test: &TestDescription) -> Result<(), JepsenError> {
    let json = serde_json::to_vec_pretty(test).expect("the test description serialises");
    write_file(&dir.join("test.json"), &json)
}

/// Reads `test.json` back.
pub fn read_test(dir: &Path) -> Result<TestDescription, JepsenError> {
    let path = dir.join("test.json");
    let text = std::fs::read_to_string(&path).map_err(JepsenError::io(&path))?;
    serde_json::from_str(&text).map_err(|error| JepsenError::Parse {
        path,
        line: error.line(),
        reason: error.to_string(),
    })
}

/// Writes everything but the history (already written) and the replica logs.
/// A plot that cannot be drawn is noted in the results, not fatal.
pub fn write(dir: &Path, history: &[Op], checked: &mut Checked) -> Result<(), JepsenError> {
    let operations = client_operations(history);
    let windows = fault_windows(history);
    let title = format!(
        "{} / {} nodes / nemesis {} / seed {}",
        checked.results.workload.name(),
        checked.results.nodes,
        checked.results.nemesis,
        checked.results.seed
    );
    if let Err(error) = plots::latency(&dir.join("latency.png"), &format!("latency: {title}"), &operations, &windows) {
        checked.results.notes.push(error.to_string());
    }
    if let Err(error) = plots::rate(&dir.join("rate.png"), &format!("rate: {title}"), &operations, &windows) {
        checked.results.notes.push(error.to_string());
    }
    for failure in &checked.failures {
        let page = timeline::render(failure, checked.results.seed, &checked.results.reproduce);
        let name = format!("linearizability-{}.html", failure.history.unit);
        write_file(&dir.join(&name), page.as_bytes())?;
        checked
            .results
            .notes
            .push(format!("{} is not linearizable: see {name}", failure.history.unit));
    }
    let json = serde_json::to_vec_pretty(&checked.results).expect("results serialise");
    write_file(&dir.join("results.json"), &json)?;
    write_file(&dir.join("summary.txt"), summary(&checked.results).as_bytes())
}
