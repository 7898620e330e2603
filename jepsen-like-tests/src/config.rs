//! The command line ([`Cli`]), one set of defaults, every limit named, and
//! [`RunConfig`]: a validated run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::error::JepsenError;
use crate::nemesis::partition::PartitionShape;

/// Longest run accepted: one hour. Longer runs want a soak harness, not this.
pub const TIME_LIMIT_SECS_MAX: u64 = 3_600;
/// Shortest run: room for one fault, one heal and the final read.
pub const TIME_LIMIT_SECS_MIN: u64 = 5;
/// Client processes at most. The register workload leaves each process a few
/// requests queued in the table, and the table re-examines only the first
/// `queue_examined_per_free_max` (64) queued requests when a unit frees; past
/// that the per-unit FIFO the model assumes would no longer hold.
pub const CONCURRENCY_MAX: usize = 16;
/// Highest total request rate, operations per second.
pub const RATE_MAX: f64 = 1_000.0;
/// Units (lock-like registers) in the register workload, at most.
pub const UNITS_MAX: usize = 64;
/// Operations one history may hold; the run refuses settings that could exceed it.
pub const HISTORY_OPS_MAX: u64 = 2_000_000;
/// Highest replica id the harness gives out: replica N listens on 127.0.0.(N+1).
pub const REPLICA_ID_MAX: u64 = 250;

/// Faults each nemesis named in a run injects at least: one firing can be
/// luck (a kill that hit a follower); a run too short for two is refused.
pub const NEMESIS_FIRINGS_MIN: u64 = 2;

/// Kills one kill loop (`--kills`) injects at most: at a few seconds a
/// kill, more would not fit in [`TIME_LIMIT_SECS_MAX`].
pub const KILLS_MAX: u64 = 2_000;

/// Defaults, in one place.
pub mod defaults {
    pub const NODES: u64 = 3;
    /// Long enough for the default nemeses (three) to fire twice each at
    /// the default fault and heal lengths: 2 + 3 × 2 × (4 + 3) + 3 = 47 s.
    pub const TIME_LIMIT_SECS: u64 = 50;
    pub const CONCURRENCY: usize = 6;
    pub const RATE: f64 = 30.0;
    pub const UNITS: usize = 4;
    pub const FAULT_SECS: f64 = 4.0;
    pub const HEAL_SECS: f64 = 3.0;
    /// Quiet time before the first fault, so the run starts with a baseline.
    pub const FIRST_FAULT_AFTER_SECS: f64 = 2.0;
    /// Healed time before the end of the run, so that every run ends healthy.
    pub const FINAL_HEALED_SECS: f64 = 3.0;
    /// Small, so that runs of seconds take snapshots and restarted replicas
    /// catch up by snapshot install, not only from the log.
    pub const SNAPSHOT_EVERY_ENTRIES: u64 = 200;
    /// Small too, and near the entries' bound at these rates (one to three
    /// commands an entry), so that runs take snapshots by both of the
    /// replica's triggers: openraft's entry count and the state machine's
    /// command count.
    pub const SNAPSHOT_EVERY_COMMANDS: u64 = 400;
    pub const LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES: u64 = 50;
    /// The harness heartbeats its providers, but a provider declared failed
    /// would have its allocations moved, which the workloads do not model:
    /// a window far longer than any fault keeps them alive through faults.
    pub const PROVIDER_FAILURE_WINDOW_MS: u64 = 600_000;
}

/// `qm-jepsen`: Jepsen-style fault injection against real qm-node processes.
#[derive(Parser, Debug)]
#[command(
    name = "qm-jepsen",
    version,
    about = "Fault-injection runs against real qm-node replicas: nemeses, histories, checkers, reports."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Subcommand, Debug)]
// Parsed once per process: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum CliCommand {
    /// Start a cluster, run a workload under a nemesis, check the history, write a report.
    Run(RunArgs),
    /// Check a recorded run again (its test.json and history.jsonl) and rewrite its report.
    Check(CheckArgs),
    /// Sum up a matrix of runs (`scripts/jepsen.sh`): one markdown table per nemesis, transport and workload.
    Matrix(MatrixArgs),
}

/// The workload: what the clients do and which checkers judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Each unit is a lock-like register (acquire, release, read); checked for linearizability per unit.
    Register,
    /// Free-form requests; checked for double allocation, capacity, lost acknowledged allocations, idempotent retries.
    Allocation,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Allocation => "allocation",
        }
    }
}

/// Which replicas a kill or a pause hits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessTargets {
    /// The leader half the time, otherwise a random replica or minority.
    #[default]
    Mixed,
    /// The leader every time (one replica): every kill or pause is a
    /// failover, for measuring failover times.
    Leader,
}

impl ProcessTargets {
    pub fn name(self) -> &'static str {
        match self {
            ProcessTargets::Mixed => "mixed",
            ProcessTargets::Leader => "leader",
        }
    }
}

/// A fault the nemesis can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// kill -9 one or more replicas (often the leader), then restart them.
    Kill,
    /// SIGSTOP one or more replicas (often the leader), then SIGCONT.
    Pause,
    /// Cut links through the proxies: halves, isolated leader, bridge, majorities ring, slow links.
    Partition,
    /// Add a fresh replica, then remove one (sometimes the leader).
    Membership,
    /// An optimization plan (live moves) and a drain of a random provider,
    /// then uncordon it (allocation workload).
    Optimize,
}

impl NemesisKind {
    pub const ALL: [NemesisKind; 5] = [
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Partition,
        NemesisKind::Membership,
        NemesisKind::Optimize,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Partition => "partition",
            NemesisKind::Membership => "membership",
            NemesisKind::Optimize => "optimize",
        }
    }
}

/// Parses `kill,pause,partition,membership,optimize` or `none`.
pub fn parse_nemeses(text: &str) -> Result<Vec<NemesisKind>, JepsenError> {
    let invalid = |reason: String| JepsenError::InvalidConfig { flag: "nemesis", reason };
    let mut kinds = Vec::new();
    let names: Vec<&str> = text.split(',').map(str::trim).filter(|name| !name.is_empty()).collect();
    if names.is_empty() {
        return Err(invalid(
            "name at least one of kill, pause, partition, membership, optimize, or none".into(),
        ));
    }
    for name in &names {
        if *name == "none" {
            if names.len() > 1 {
                return Err(invalid("none cannot be combined with other nemeses".into()));
            }
            return Ok(Vec::new());
        }
        let kind = NemesisKind::ALL
            .into_iter()
            .find(|kind| kind.name() == *name)
            .ok_or_else(|| invalid(format!("{name:?} is not one of kill, pause, partition, membership, optimize, none")))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// Parses `halves,isolate-leader,...`.
pub fn parse_partitions(text: &str) -> Result<Vec<PartitionShape>, JepsenError> {
    let mut shapes = Vec::new();
    for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
        let shape = PartitionShape::ALL
            .into_iter()
            .find(|shape| shape.name() == name)
            .ok_or_else(|| JepsenError::InvalidConfig {
                flag: "partitions",
                reason: format!("{name:?} is not one of halves, isolate-leader, bridge, majorities-ring, slow-links"),
            })?;
        if !shapes.contains(&shape) {
            shapes.push(shape);
        }
    }
    if shapes.is_empty() {
        return Err(JepsenError::InvalidConfig {
            flag: "partitions",
            reason: "name at least one shape".into(),
        });
    }
    Ok(shapes)
}

/// Flags of `qm-jepsen run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Replicas: 3 or 5.
    #[arg(long, env = "QM_JEPSEN_NODES", default_value_t = defaults::NODES)]
    pub nodes: u64,
    /// How long clients run, in seconds (the final heal and read come after).
    #[arg(long, env = "QM_JEPSEN_TIME_LIMIT", default_value_t = defaults::TIME_LIMIT_SECS)]
    pub time_limit: u64,
    /// Client processes running operations at once.
    #[arg(long, env = "QM_JEPSEN_CONCURRENCY", default_value_t = defaults::CONCURRENCY)]
    pub concurrency: usize,
    /// Target operations per second, all clients together.
    #[arg(long, env = "QM_JEPSEN_RATE", default_value_t = defaults::RATE)]
    pub rate: f64,
    /// `register` (linearizability per unit) or `allocation` (allocation invariants).
    #[arg(long, env = "QM_JEPSEN_WORKLOAD", value_enum, default_value_t = WorkloadKind::Register)]
    pub workload: WorkloadKind,
    /// Comma-separated faults: kill, pause, partition, membership, optimize; or none.
    #[arg(long, env = "QM_JEPSEN_NEMESIS", default_value = "kill,pause,partition")]
    pub nemesis: String,
    /// Seed of every random choice (operations, targets, schedules). Random when absent; always printed.
    #[arg(long, env = "QM_JEPSEN_SEED")]
    pub seed: Option<u64>,
    /// Where the report goes. Default: `jepsen-store/<workload>-<nemesis>-<nodes>n-seed<seed>`.
    #[arg(long, env = "QM_JEPSEN_OUT")]
    pub out: Option<PathBuf>,
    /// The qm-node binary. Default: `qm-node` next to this binary.
    #[arg(long, env = "QM_JEPSEN_NODE_BINARY")]
    pub node_binary: Option<PathBuf>,
    /// TEST ONLY: start the replicas with --unsafe-stale-reads (reads skip the
    /// read index), to show that the checkers catch stale reads.
    #[arg(long)]
    pub unsafe_stale_reads: bool,
    /// Partition shapes the partition nemesis draws from: halves,
    /// isolate-leader, bridge, majorities-ring, slow-links (default: all).
    #[arg(long, default_value = "halves,isolate-leader,bridge,majorities-ring,slow-links")]
    pub partitions: String,
    /// Units (lock-like registers) of the register workload.
    #[arg(long, default_value_t = defaults::UNITS)]
    pub units: usize,
    /// Mean length of one fault, in seconds.
    #[arg(long, default_value_t = defaults::FAULT_SECS)]
    pub fault_secs: f64,
    /// Mean healed time between two faults, in seconds.
    #[arg(long, default_value_t = defaults::HEAL_SECS)]
    pub heal_secs: f64,
    /// Replicas snapshot every this many applied entries (small, to exercise snapshots).
    #[arg(long, default_value_t = defaults::SNAPSHOT_EVERY_ENTRIES)]
    pub snapshot_every_entries: u64,
    /// ... and every this many applied commands.
    #[arg(long, default_value_t = defaults::SNAPSHOT_EVERY_COMMANDS)]
    pub snapshot_every_commands: u64,
    /// Extra flag for every qm-node (repeatable), e.g. --node-arg=--election-timeout-min-ms=300.
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Mutual TLS: make a fresh CA and certificates in `<out>/certs`, start
    /// the replicas with them, and give every client the certificate of its
    /// role (workers: consumer, providers: their own, membership: admin).
    #[arg(long, env = "QM_JEPSEN_TLS")]
    pub tls: bool,
    /// (With --tls) put the workers under a capability policy before the
    /// run, bound to their certificate's name, generous enough to refuse
    /// nothing: every allocate then goes through the policy's checks and
    /// apply's exact total (`AllocateUnderPolicy`), and the history must
    /// stay valid.
    #[arg(long, requires = "tls")]
    pub policy: bool,
    /// Which replicas kill and pause hit: `mixed` (the leader half the
    /// time, else a random replica or minority) or `leader` (always the
    /// leader: every fault is a failover, as `scripts/failover.sh` uses).
    #[arg(long, value_enum, default_value_t = ProcessTargets::Mixed)]
    pub targets: ProcessTargets,
    /// Kill loop: the kill nemesis alone (whatever --nemesis says), exactly
    /// this many kill faults, one each --fault-secs + --heal-secs on
    /// average; the time limit follows from it (--time-limit is ignored).
    /// `scripts/kill-loop.sh` runs it.
    #[arg(long, env = "QM_JEPSEN_KILLS")]
    pub kills: Option<u64>,
    /// Allocation workload: turn preemption on for high priorities, mix in
    /// high-priority allocates that preempt (victims requeued or released
    /// as they asked) and admin quota changes (raised, and lowered even
    /// below what the namespace holds), and watch the table's events so
    /// that the quota and preemption checkers replay them in log order.
    #[arg(long, env = "QM_JEPSEN_PREEMPTION")]
    pub preemption: bool,
}

/// Flags of `qm-jepsen check`.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// A run's report directory (with test.json and history.jsonl).
    pub dir: PathBuf,
}

/// Flags of `qm-jepsen matrix`.
#[derive(Args, Debug, Clone)]
pub struct MatrixArgs {
    /// The matrix's directory: one run report directory per run directly under it.
    pub dir: PathBuf,
}

/// A validated run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub nodes: u64,
    pub time_limit_secs: u64,
    pub concurrency: usize,
    pub rate: f64,
    pub workload: WorkloadKind,
    pub nemeses: Vec<NemesisKind>,
    pub partitions: Vec<PartitionShape>,
    pub seed: u64,
    pub out: PathBuf,
    pub node_binary: PathBuf,
    pub unsafe_stale_reads: bool,
    pub units: usize,
    pub fault_secs: f64,
    pub heal_secs: f64,
    pub snapshot_every_entries: u64,
    /// Absent from the `test.json` of runs made before the flag existed,
    /// whose replicas snapshotted by entries only.
    #[serde(default)]
    pub snapshot_every_commands: Option<u64>,
    pub node_args: Vec<String>,
    /// Replicas and clients on mutual TLS. Absent from the `test.json` of
    /// runs made before the flag existed, which were all plain.
    #[serde(default)]
    pub tls: bool,
    /// The workers under a capability policy (`--policy`). Absent from the
    /// `test.json` of runs made before the flag existed, which had none.
    #[serde(default)]
    pub policy: bool,
    /// Absent from the `test.json` of runs made before the flag existed,
    /// which all used the mixed targets.
    #[serde(default)]
    pub targets: ProcessTargets,
    /// A kill loop's exact number of kill faults (`--kills`); `None` for a
    /// run of the time limit. Absent from older `test.json` files.
    #[serde(default)]
    pub kills: Option<u64>,
    /// Preemption and quota changes in the allocation workload
    /// (`--preemption`). Absent from older `test.json` files.
    #[serde(default)]
    pub preemption: bool,
}

impl RunArgs {
    /// Applies the defaults that depend on other flags and validates.
    pub fn into_config(self, random_seed: u64) -> Result<RunConfig, JepsenError> {
        let nemeses = match self.kills {
            Some(_) => vec![NemesisKind::Kill],
            None => parse_nemeses(&self.nemesis)?,
        };
        let partitions = parse_partitions(&self.partitions)?;
        let seed = self.seed.unwrap_or(random_seed);
        let nemesis_name = match nemeses.is_empty() {
            true => "none".to_owned(),
            false => nemeses.iter().map(|kind| kind.name()).collect::<Vec<_>>().join("+"),
        };
        // A TLS run gets its own default directory, so that it never mixes
        // with the plain run of the same seed.
        let transport = if self.tls { "-tls" } else { "" };
        let out = self.out.unwrap_or_else(|| {
            PathBuf::from("jepsen-store").join(format!(
                "{}-{nemesis_name}-{}n-seed{seed}{transport}",
                self.workload.name(),
                self.nodes
            ))
        });
        let node_binary = match self.node_binary {
            Some(path) => path,
            None => default_node_binary(),
        };
        let time_limit_secs = match self.kills {
            Some(kills) => kill_loop_secs(kills, self.fault_secs, self.heal_secs).ceil() as u64,
            None => self.time_limit,
        };
        let config = RunConfig {
            nodes: self.nodes,
            time_limit_secs,
            concurrency: self.concurrency,
            rate: self.rate,
            workload: self.workload,
            nemeses,
            partitions,
            seed,
            out,
            node_binary,
            unsafe_stale_reads: self.unsafe_stale_reads,
            units: self.units,
            fault_secs: self.fault_secs,
            heal_secs: self.heal_secs,
            snapshot_every_entries: self.snapshot_every_entries,
            snapshot_every_commands: Some(self.snapshot_every_commands),
            node_args: self.node_args,
            tls: self.tls,
            policy: self.policy,
            targets: self.targets,
            kills: self.kills,
            preemption: self.preemption,
        };
        config.validate()?;
        Ok(config)
    }
}

/// A kill loop's length: the quiet start, `kills` cycles of a fault and a
/// heal at their means, the healed end.
pub fn kill_loop_secs(kills: u64, fault_secs: f64, heal_secs: f64) -> f64 {
    defaults::FIRST_FAULT_AFTER_SECS + kills as f64 * (fault_secs + heal_secs) + defaults::FINAL_HEALED_SECS
}

/// `qm-node` next to the running binary (`target/<profile>/`), or, for a test
/// binary in `target/<profile>/deps/`, one directory up.
pub fn default_node_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let beside = dir.join("qm-node");
    if beside.exists() || dir.file_name().is_none_or(|name| name != "deps") {
        return beside;
    }
    dir.parent().unwrap_or(dir).join("qm-node")
}

impl RunConfig {
    pub fn validate(&self) -> Result<(), JepsenError> {
        let invalid = |flag, reason: String| Err(JepsenError::InvalidConfig { flag, reason });
        if self.nodes != 3 && self.nodes != 5 {
            return invalid("nodes", format!("is {}; runs use 3 or 5 replicas", self.nodes));
        }
        if self.preemption && self.workload != WorkloadKind::Allocation {
            return invalid("preemption", "is for the allocation workload only".to_owned());
        }
        if let Some(kills) = self.kills {
            if !(1..=KILLS_MAX).contains(&kills) || self.nemeses != [NemesisKind::Kill] {
                return invalid(
                    "kills",
                    format!("is {kills}; must be between 1 and {KILLS_MAX}, with the kill nemesis alone"),
                );
            }
            if self.time_limit_secs > TIME_LIMIT_SECS_MAX {
                return invalid(
                    "kills",
                    format!(
                        "{kills} kills at --fault-secs {} and --heal-secs {} take {} s, more than the {TIME_LIMIT_SECS_MAX} s a run may last; give fewer kills or shorter faults",
                        self.fault_secs, self.heal_secs, self.time_limit_secs
                    ),
                );
            }
        }
        if !(TIME_LIMIT_SECS_MIN..=TIME_LIMIT_SECS_MAX).contains(&self.time_limit_secs) {
            return invalid(
                "time-limit",
                format!(
                    "is {} s; must be between {TIME_LIMIT_SECS_MIN} and {TIME_LIMIT_SECS_MAX}",
                    self.time_limit_secs
                ),
            );
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return invalid(
                "concurrency",
                format!("is {}; must be between 1 and {CONCURRENCY_MAX}", self.concurrency),
            );
        }
        if !(self.rate > 0.0 && self.rate <= RATE_MAX) {
            return invalid("rate", format!("is {}; must be above 0 and at most {RATE_MAX}", self.rate));
        }
        if (self.rate * self.time_limit_secs as f64) * 2.0 > HISTORY_OPS_MAX as f64 {
            return invalid(
                "rate",
                format!("with this --time-limit the history could exceed {HISTORY_OPS_MAX} operations"),
            );
        }
        if !(1..=UNITS_MAX).contains(&self.units) {
            return invalid("units", format!("is {}; must be between 1 and {UNITS_MAX}", self.units));
        }
        if self.nemeses.contains(&NemesisKind::Optimize) && self.workload != WorkloadKind::Allocation {
            // The register workload pins every request to its unit: nothing
            // could move, and its linearizability model has no moves.
            return invalid("nemesis", "optimize needs --workload allocation".to_owned());
        }
        for (flag, secs) in [("fault-secs", self.fault_secs), ("heal-secs", self.heal_secs)] {
            if !(0.5..=600.0).contains(&secs) {
                return invalid(flag, format!("is {secs}; must be between 0.5 and 600"));
            }
        }
        let needed = self.schedule_secs_min();
        if (self.time_limit_secs as f64) < needed {
            return invalid(
                "time-limit",
                format!(
                    "is {} s, too short for every nemesis named ({}) to fire {NEMESIS_FIRINGS_MIN} times: at --fault-secs {} and --heal-secs {} that takes {} s ({} s quiet, {} cycles, {} s healed at the end); give --time-limit {} or shorter faults",
                    self.time_limit_secs,
                    self.nemesis_flag(),
                    self.fault_secs,
                    self.heal_secs,
                    needed,
                    defaults::FIRST_FAULT_AFTER_SECS,
                    NEMESIS_FIRINGS_MIN * self.nemeses.len() as u64,
                    defaults::FINAL_HEALED_SECS,
                    needed.ceil()
                ),
            );
        }
        if self.snapshot_every_entries == 0 {
            return invalid("snapshot-every-entries", "must be positive".into());
        }
        if self.snapshot_every_commands == Some(0) {
            return invalid("snapshot-every-commands", "must be positive".into());
        }
        if !self.node_binary.exists() {
            return Err(JepsenError::NodeBinaryMissing {
                path: self.node_binary.clone(),
            });
        }
        Ok(())
    }

    pub fn time_limit(&self) -> Duration {
        Duration::from_secs(self.time_limit_secs)
    }

    /// The shortest `--time-limit` in which every nemesis named fires
    /// [`NEMESIS_FIRINGS_MIN`] times at the mean fault and heal lengths
    /// (the schedule shortens cycles to fit, never below the means' share).
    pub fn schedule_secs_min(&self) -> f64 {
        if self.nemeses.is_empty() {
            return 0.0;
        }
        let cycles = self.faults_owed() as f64;
        defaults::FIRST_FAULT_AFTER_SECS + cycles * (self.fault_secs + self.heal_secs) + defaults::FINAL_HEALED_SECS
    }

    /// Fault cycles the schedule owes: [`NEMESIS_FIRINGS_MIN`] per nemesis,
    /// or a kill loop's kills.
    pub fn faults_owed(&self) -> u64 {
        match self.kills {
            Some(kills) => kills,
            None => NEMESIS_FIRINGS_MIN * self.nemeses.len() as u64,
        }
    }

    /// The nemeses as the command line spells them.
    pub fn nemesis_flag(&self) -> String {
        match self.nemeses.is_empty() {
            true => "none".to_owned(),
            false => self.nemeses.iter().map(|kind| kind.name()).collect::<Vec<_>>().join(","),
        }
    }

    /// A command that runs this test again, with the same seed.
    pub fn reproduce_command(&self) -> String {
        let mut command = format!(
            "qm-jepsen run --nodes {} --time-limit {} --concurrency {} --rate {} --workload {} --nemesis {} --seed {} --units {} --fault-secs {} --heal-secs {} --snapshot-every-entries {} --out {}",
            self.nodes,
            self.time_limit_secs,
            self.concurrency,
            self.rate,
            self.workload.name(),
            self.nemesis_flag(),
            self.seed,
            self.units,
            self.fault_secs,
            self.heal_secs,
            self.snapshot_every_entries,
            self.out.display(),
        );
        if self.partitions != PartitionShape::ALL {
            let names: Vec<&str> = self.partitions.iter().map(|shape| shape.name()).collect();
            command.push_str(&format!(" --partitions {}", names.join(",")));
        }
        if let Some(commands) = self.snapshot_every_commands {
            command.push_str(&format!(" --snapshot-every-commands {commands}"));
        }
        if self.unsafe_stale_reads {
            command.push_str(" --unsafe-stale-reads");
        }
        if self.tls {
            command.push_str(" --tls");
        }
        if self.policy {
            command.push_str(" --policy");
        }
        if self.targets != ProcessTargets::Mixed {
            command.push_str(&format!(" --targets {}", self.targets.name()));
        }
        if let Some(kills) = self.kills {
            command.push_str(&format!(" --kills {kills}"));
        }
        if self.preemption {
            command.push_str(" --preemption");
        }
        for arg in &self.node_args {
            command.push_str(&format!(" --node-arg={arg}"));
        }
        command
    }

    /// The flags every replica gets, except the TLS ones (see
    /// [`crate::credentials::Credentials::node_flags`]).
    pub fn node_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--provider-failure-window-ms".to_owned(),
            defaults::PROVIDER_FAILURE_WINDOW_MS.to_string(),
            "--snapshot-every-entries".to_owned(),
            self.snapshot_every_entries.to_string(),
            "--log-kept-behind-snapshot-entries".to_owned(),
            defaults::LOG_KEPT_BEHIND_SNAPSHOT_ENTRIES
                .min(self.snapshot_every_entries)
                .to_string(),
        ];
        if let Some(commands) = self.snapshot_every_commands {
            flags.extend(["--snapshot-every-commands".to_owned(), commands.to_string()]);
        }
        if self.unsafe_stale_reads {
            flags.push("--unsafe-stale-reads".to_owned());
        }
        flags.extend(self.node_args.iter().cloned());
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemeses_parse_and_none_stands_alone() {
        assert_eq!(
            vec![NemesisKind::Kill, NemesisKind::Partition],
            parse_nemeses("kill, partition,kill").expect("parses")
        );
        assert_eq!(Vec::<NemesisKind>::new(), parse_nemeses("none").expect("parses"));
        assert!(parse_nemeses("none,kill").is_err());
        assert!(parse_nemeses("fire").unwrap_err().to_string().contains("\"fire\""));
        assert!(parse_nemeses("").is_err());
        assert_eq!(
            vec![NemesisKind::Kill, NemesisKind::Optimize],
            parse_nemeses("kill,optimize").expect("parses")
        );
    }

    #[test]
    fn the_optimize_nemesis_needs_the_allocation_workload() {
        let register = args(&["--nemesis", "optimize", "--time-limit", "60"]).into_config(1);
        assert!(register.unwrap_err().to_string().contains("--workload allocation"));
        let allocation = args(&["--nemesis", "optimize", "--time-limit", "60", "--workload", "allocation"]);
        allocation.into_config(1).expect("valid");
    }

    fn args(extra: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["qm-jepsen", "run", "--node-binary", "/bin/sh"].iter().chain(extra)).expect("parses");
        match cli.command {
            CliCommand::Run(args) => args,
            other => panic!("`qm-jepsen run` parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_validate_and_name_the_out_dir() {
        let config = args(&["--seed", "7"]).into_config(1).expect("valid");
        assert_eq!(7, config.seed);
        assert_eq!(PathBuf::from("jepsen-store/register-kill+pause+partition-3n-seed7"), config.out);
        assert!(config.reproduce_command().contains("--seed 7"), "{}", config.reproduce_command());
    }

    #[test]
    fn bad_flags_are_named() {
        for (extra, flag) in [
            (vec!["--nodes", "4"], "--nodes"),
            (vec!["--time-limit", "1"], "--time-limit"),
            (vec!["--concurrency", "0"], "--concurrency"),
            (vec!["--rate", "0"], "--rate"),
            (vec!["--units", "0"], "--units"),
            (vec!["--fault-secs", "0.1"], "--fault-secs"),
            (vec!["--snapshot-every-commands", "0"], "--snapshot-every-commands"),
            (vec!["--preemption"], "--preemption"),
        ] {
            let error = args(&extra).into_config(1).unwrap_err().to_string();
            assert!(error.contains(flag), "{error}");
        }
    }

    #[test]
    fn a_run_too_short_for_every_nemesis_to_fire_twice_is_refused() {
        // 2 s quiet + 2 × 2 cycles of (4 + 3) s + 3 s healed = 33 s.
        let short = args(&["--nemesis", "kill,partition", "--time-limit", "32"]).into_config(1);
        let error = short.unwrap_err().to_string();
        assert!(error.contains("--time-limit") && error.contains("give --time-limit 33"), "{error}");
        assert!(args(&["--nemesis", "kill,partition", "--time-limit", "33"]).into_config(1).is_ok());
        assert!(args(&["--nemesis", "none", "--time-limit", "5"]).into_config(1).is_ok());
    }

    #[test]
    fn node_args_pass_through() {
        let config = args(&["--node-arg=--election-timeout-min-ms=300", "--unsafe-stale-reads"])
            .into_config(1)
            .expect("valid");
        let flags = config.node_flags();
        assert!(flags.contains(&"--election-timeout-min-ms=300".to_owned()));
        assert!(flags.contains(&"--unsafe-stale-reads".to_owned()));
        let commands_flag = flags
            .iter()
            .position(|flag| flag == "--snapshot-every-commands")
            .expect("both snapshot triggers are set");
        assert_eq!(defaults::SNAPSHOT_EVERY_COMMANDS.to_string(), flags[commands_flag + 1]);
        assert!(config.reproduce_command().contains(" --snapshot-every-commands 400 "));
        assert!(config
            .reproduce_command()
            .ends_with("--unsafe-stale-reads --node-arg=--election-timeout-min-ms=300"));
    }

    #[test]
    fn tls_is_reproduced_and_has_its_own_out_dir() {
        let config = args(&["--seed", "7", "--tls"]).into_config(1).expect("valid");
        assert!(config.tls);
        assert!(config.reproduce_command().contains(" --tls"), "{}", config.reproduce_command());
        assert_eq!(PathBuf::from("jepsen-store/register-kill+pause+partition-3n-seed7-tls"), config.out);
        assert!(!args(&[]).into_config(1).expect("valid").reproduce_command().contains("--tls"));
    }

    #[test]
    fn a_kill_loop_is_the_kill_nemesis_alone_and_its_length_follows_from_its_kills() {
        let config = args(&["--kills", "10", "--fault-secs", "1", "--heal-secs", "2", "--nemesis", "pause"])
            .into_config(1)
            .expect("valid");
        assert_eq!(vec![NemesisKind::Kill], config.nemeses);
        // 2 s quiet + 10 × (1 + 2) s + 3 s healed.
        assert_eq!(35, config.time_limit_secs);
        assert_eq!(10, config.faults_owed());
        assert!(config.reproduce_command().contains(" --kills 10"), "{}", config.reproduce_command());
        let too_long = args(&["--kills", "2000"]).into_config(1).unwrap_err().to_string();
        assert!(too_long.contains("--kills") && too_long.contains("fewer kills"), "{too_long}");
        assert!(args(&["--kills", "0"]).into_config(1).is_err());
    }

    #[test]
    fn a_test_json_without_tls_reads_as_plain() {
        let config = args(&["--seed", "7"]).into_config(1).expect("valid");
        let mut json = serde_json::to_value(&config).expect("serialises");
        json.as_object_mut().expect("an object").remove("tls");
        let read: RunConfig = serde_json::from_value(json).expect("parses");
        assert!(!read.tls);
    }
}
