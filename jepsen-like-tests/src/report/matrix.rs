//! `qm-jepsen matrix DIR`: the figures of a whole matrix of runs
//! (`scripts/jepsen.sh` writes one report directory per run under DIR), per
//! nemesis and per transport, for the README's reliability table.
//!
//! Each run's `results.json` and `test.json` are read back; a directory
//! without `results.json` (a run that died before its report) counts as a
//! run that is not valid, so a matrix whose harness failed cannot look
//! clean. Availability is summed over the runs' operations (ok / invoked,
//! during faults and while healthy), and failover times are pooled over
//! every leader fault of the group, so a group's median is the median fault,
//! not the median of run medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{read_test, Results};
use crate::checker::stats::Counts;
use crate::checker::Validity;
use crate::error::JepsenError;

/// Run directories read from one matrix directory: more is not a matrix.
pub const MATRIX_RUNS_MAX: usize = 10_000;

/// What the table needs of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunFigures {
    pub dir: PathBuf,
    /// The workload's name, `+preemption` with `--preemption`.
    pub workload: String,
    pub nodes: u64,
    pub nemesis: String,
    /// `plain`, `tls` or `tls+policy`.
    pub transport: String,
    /// `None`: the run left no report.
    pub valid: Option<Validity>,
    pub operations: usize,
    pub anomalies: usize,
    pub during_faults: Counts,
    pub healthy: Counts,
    /// Each leader fault's time to the next ok write.
    pub failover_ms: Vec<f64>,
    /// Leader faults after which no write succeeded before the run ended.
    pub failovers_without_write: usize,
}

impl RunFigures {
    fn from_results(dir: PathBuf, results: &Results, policy: bool, preemption: bool) -> RunFigures {
        let transport = match (results.tls, policy) {
            (false, _) => "plain",
            (true, false) => "tls",
            (true, true) => "tls+policy",
        };
        let failovers = &results.stats.failovers;
        RunFigures {
            dir,
            workload: workload_name(results.workload.name(), preemption),
            nodes: results.nodes,
            nemesis: results.nemesis.clone(),
            transport: transport.to_owned(),
            valid: Some(results.valid),
            operations: results.operations,
            anomalies: results.anomalies,
            during_faults: results.stats.during_faults,
            healthy: results.stats.healthy,
            failover_ms: failovers.iter().filter_map(|failover| failover.next_ok_write_ms).collect(),
            failovers_without_write: failovers.iter().filter(|failover| failover.next_ok_write_ms.is_none()).count(),
        }
    }

    fn is_valid(&self) -> bool {
        self.valid == Some(Validity::VALID)
    }
}

/// Reads every run directory directly under `matrix_dir`.
pub fn read_runs(matrix_dir: &Path) -> Result<Vec<RunFigures>, JepsenError> {
    let entries = std::fs::read_dir(matrix_dir).map_err(JepsenError::io(matrix_dir))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let path = entry.map_err(JepsenError::io(matrix_dir))?.path();
        // A run directory has its test.json from the start of the run.
        if path.join("test.json").is_file() {
            dirs.push(path);
        }
        if dirs.len() > MATRIX_RUNS_MAX {
            return Err(JepsenError::cluster(format!(
                "{} holds more than {MATRIX_RUNS_MAX} run directories",
                matrix_dir.display()
            )));
        }
    }
    dirs.sort();
    dirs.into_iter().map(read_run).collect()
}

fn read_run(dir: PathBuf) -> Result<RunFigures, JepsenError> {
    let test = read_test(&dir)?;
    let results_path = dir.join("results.json");
    if !results_path.is_file() {
        let config = &test.config;
        let nemeses: Vec<&str> = config.nemeses.iter().map(|kind| kind.name()).collect();
        return Ok(RunFigures {
            dir,
            workload: workload_name(config.workload.name(), config.preemption),
            nodes: config.nodes,
            nemesis: match nemeses.is_empty() {
                true => "none".to_owned(),
                false => nemeses.join(","),
            },
            transport: "unknown".to_owned(),
            valid: None,
            operations: 0,
            anomalies: 0,
            during_faults: Counts::default(),
            healthy: Counts::default(),
            failover_ms: Vec::new(),
            failovers_without_write: 0,
        });
    }
    let text = std::fs::read_to_string(&results_path).map_err(JepsenError::io(&results_path))?;
    let results: Results = serde_json::from_str(&text).map_err(|error| JepsenError::Parse {
        path: results_path.clone(),
        line: error.line(),
        reason: error.to_string(),
    })?;
    Ok(RunFigures::from_results(dir, &results, test.config.policy, test.config.preemption))
}

/// `allocation+preemption` for the allocation workload with `--preemption`.
fn workload_name(workload: &str, preemption: bool) -> String {
    match preemption {
        true => format!("{workload}+preemption"),
        false => workload.to_owned(),
    }
}

/// Sums of a group of runs.
#[derive(Default)]
struct Group {
    runs: usize,
    valid: usize,
    operations: usize,
    anomalies: usize,
    during_faults: Counts,
    healthy: Counts,
    failover_ms: Vec<f64>,
    failovers_without_write: usize,
}

impl Group {
    fn add(&mut self, run: &RunFigures) {
        self.runs += 1;
        self.valid += usize::from(run.is_valid());
        self.operations += run.operations;
        self.anomalies += run.anomalies;
        for (sum, counts) in [(&mut self.during_faults, run.during_faults), (&mut self.healthy, run.healthy)] {
            sum.ok += counts.ok;
            sum.fail += counts.fail;
            sum.info += counts.info;
        }
        self.failover_ms.extend(&run.failover_ms);
        self.failovers_without_write += run.failovers_without_write;
    }

    fn row(&self, name: &str) -> String {
        let percent = |counts: &Counts| counts.ok_fraction().map_or("-".to_owned(), |f| format!("{:.1}%", f * 100.0));
        let failovers = self.failover_ms.len() + self.failovers_without_write;
        let mut sorted = self.failover_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |quantile: f64| match sorted.is_empty() {
            true => "-".to_owned(),
            false => format!("{:.0}", sorted[((sorted.len() - 1) as f64 * quantile).round() as usize]),
        };
        let (p50, p90, max) = (at(0.5), at(0.9), at(1.0));
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {failovers} | {p50} | {p90} | {max} | {} |",
            self.runs,
            self.valid,
            self.operations,
            self.anomalies,
            percent(&self.during_faults),
            percent(&self.healthy),
            self.failovers_without_write,
        )
    }
}

const TABLE_HEADER: &str = "| runs | valid | operations | anomalies | available during faults | available while healthy | leader faults | failover p50 (ms) | p90 | max | no write after |";

fn table(title: &str, runs: &[RunFigures], key: impl Fn(&RunFigures) -> String) -> String {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut all = Group::default();
    for run in runs {
        groups.entry(key(run)).or_default().add(run);
        all.add(run);
    }
    let columns = TABLE_HEADER.matches('|').count() - 1;
    let mut text = String::new();
    let _ = writeln!(text, "| {title} {TABLE_HEADER}");
    let _ = writeln!(text, "|{}", "---|".repeat(columns + 1));
    for (name, group) in &groups {
        let _ = writeln!(text, "{}", group.row(name));
    }
    let _ = writeln!(text, "{}", all.row("**all**"));
    text
}

/// The matrix's markdown: totals, then one table per nemesis, per
/// transport and per workload and size, then the runs that were not valid.
pub fn summary(runs: &[RunFigures]) -> String {
    let mut text = String::new();
    let valid = runs.iter().filter(|run| run.is_valid()).count();
    let operations: usize = runs.iter().map(|run| run.operations).sum();
    let anomalies: usize = runs.iter().map(|run| run.anomalies).sum();
    let _ = writeln!(
        text,
        "{} runs, {valid} valid, {operations} operations, {anomalies} anomalies.",
        runs.len()
    );
    let _ = writeln!(text);
    text.push_str(&table("nemesis", runs, |run| run.nemesis.clone()));
    let _ = writeln!(text);
    text.push_str(&table("transport", runs, |run| run.transport.clone()));
    let _ = writeln!(text);
    text.push_str(&table("workload, replicas", runs, |run| format!("{}, {}", run.workload, run.nodes)));
    let not_valid: Vec<&RunFigures> = runs.iter().filter(|run| !run.is_valid()).collect();
    if !not_valid.is_empty() {
        let _ = writeln!(text);
        let _ = writeln!(text, "Not valid:");
        for run in not_valid {
            let verdict = match run.valid {
                None => "no report".to_owned(),
                Some(Validity::Unknown) => "unknown".to_owned(),
                Some(_) => format!("{} anomalies", run.anomalies),
            };
            let _ = writeln!(text, "- {}: {verdict}", run.dir.display());
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(nemesis: &str, valid: Option<Validity>, during_faults: Counts, failover_ms: Vec<f64>) -> RunFigures {
        RunFigures {
            dir: PathBuf::from(format!("m/{nemesis}")),
            workload: "register".to_owned(),
            nodes: 3,
            nemesis: nemesis.to_owned(),
            transport: "plain".to_owned(),
            valid,
            operations: 100,
            anomalies: 0,
            during_faults,
            healthy: Counts { ok: 50, fail: 0, info: 0 },
            failover_ms,
            failovers_without_write: 0,
        }
    }

    #[test]
    fn groups_pool_operations_and_failovers_per_nemesis() {
        let faults = |ok, info| Counts { ok, fail: 0, info };
        let runs = vec![
            run("kill", Some(Validity::VALID), faults(90, 10), vec![500.0, 700.0]),
            run("kill", Some(Validity::VALID), faults(10, 90), vec![900.0]),
            run("pause", Some(Validity::VALID), faults(100, 0), vec![]),
        ];
        let text = summary(&runs);
        assert!(text.starts_with("3 runs, 3 valid, 300 operations, 0 anomalies."), "{text}");
        // kill: 100 of 200 ok during faults, failovers 500/700/900 pooled.
        assert!(
            text.contains("| kill | 2 | 2 | 200 | 0 | 50.0% | 100.0% | 3 | 700 | 900 | 900 | 0 |"),
            "{text}"
        );
        assert!(
            text.contains("| pause | 1 | 1 | 100 | 0 | 100.0% | 100.0% | 0 | - | - | - | 0 |"),
            "{text}"
        );
        assert!(!text.contains("Not valid"), "{text}");
    }

    #[test]
    fn a_run_without_a_report_or_with_anomalies_is_listed_as_not_valid() {
        let none = Counts::default();
        let mut bad = run("partition", Some(Validity::INVALID), none, vec![]);
        bad.anomalies = 2;
        let runs = vec![run("kill", None, none, vec![]), bad];
        let text = summary(&runs);
        assert!(text.starts_with("2 runs, 0 valid"), "{text}");
        assert!(text.contains("- m/kill: no report"), "{text}");
        assert!(text.contains("- m/partition: 2 anomalies"), "{text}");
    }
}
