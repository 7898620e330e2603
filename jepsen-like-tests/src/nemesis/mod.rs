//! The nemesis: injects faults on a schedule (fault, heal, fault, heal, ...),
//! records each action in the history as an invocation and an `info`
//! completion, and heals everything before the end so that every run
//! finishes on a whole, healthy cluster.
//!
//! * [`targets`]: which replicas a kill or a pause hits.
//! * [`partition`]: partition shapes as Jepsen draws them.
//!
//! Faults, one per cycle, taking turns in a seeded order among those enabled:
//!
//! | nemesis      | fault                                       | heal                          |
//! |--------------|---------------------------------------------|-------------------------------|
//! | `kill`       | kill -9 the leader, one replica or a minority | restart them (same data dir) |
//! | `pause`      | SIGSTOP, chosen the same way                | SIGCONT                       |
//! | `partition`  | halves, isolated leader, bridge, majorities ring or slow links | every link whole again |
//! | `membership` | add a blank replica as a voter (n+1)        | remove a voter: an original while any is left (the leader a third of the time, if it is one), so enough cycles replace them all (n) |
//! | `optimize`   | an optimization plan (`Optimize`: live moves of movable allocations), then drain a random provider of the allocation workload | uncordon it (`open`), and note the moves completed so far |
//!
//! Every nemesis named fires at least [`crate::config::NEMESIS_FIRINGS_MIN`] times: the
//! run is refused when its time limit cannot hold that many cycles at the
//! mean lengths ([`crate::config::RunConfig::schedule_secs_min`]), and the
//! schedule shortens the cycles it still owes so that they fit whatever
//! the jitter drew.

pub mod partition;
pub mod targets;

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::cluster::TestCluster;
use crate::config::{NemesisKind, ProcessTargets};
use crate::history::{HistoryRecorder, NemesisValue, OpType, Payload, Process};
use crate::workload::{allocation, with_final_retries};
use partition::PartitionShape;
use qm_client::Consistency;

/// Mixed into the run's seed so the nemesis's choices do not mirror the clients'.
pub const NEMESIS_SEED_SALT: u64 = 0x6e65_6d65_7369_7321;
/// A fault shorter than this is not worth injecting at the end of a run.
pub const FAULT_MS_MIN: u64 = 500;
/// How long the final heal may wait for a leader before the final read tries anyway.
pub const HEALED_LEADER_TIMEOUT_MS: u64 = 30_000;
/// The optimize nemesis's drain deadline, past the fault's end: short, yet
/// later than the heal's uncordon, so that the deadline never passes and
/// pinned (not movable) allocations never move; only movable ones do,
/// which is what the checkers allow for.
pub const DRAIN_DEADLINE_PAST_FAULT_MS: u64 = 30_000;

/// When faults happen.
#[derive(Clone, Debug)]
pub struct NemesisSchedule {
    pub kinds: Vec<NemesisKind>,
    /// The shapes the partition nemesis draws from.
    pub partitions: Vec<PartitionShape>,
    /// Quiet time at the start.
    pub first_fault_after: Duration,
    /// Mean fault length; each is drawn in [0.5, 1.5] of it.
    pub fault_mean: Duration,
    /// Mean healed time between faults.
    pub heal_mean: Duration,
    /// Healed time before the end that no fault may enter.
    pub final_healed: Duration,
    /// Fault cycles owed: the schedule shrinks cycles so that this many
    /// fit before the end ([`crate::config::RunConfig::faults_owed`]).
    pub faults_owed: u64,
    /// A kill loop's exact count: no fault cycle past this many.
    pub faults_max: Option<u64>,
}

/// A fault in force, and so what its heal undoes.
enum ActiveFault {
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    Partitioned,
    Added,
    /// The provider the optimize nemesis drains.
    Draining(String),
}

/// The two faults that act on processes.
#[derive(Clone, Copy)]
enum ProcessFault {
    Kill,
    Pause,
}

/// Injects and heals faults on a [`TestCluster`].
pub struct Nemesis {
    cluster: Arc<Mutex<TestCluster>>,
    history: Arc<HistoryRecorder>,
    rng: StdRng,
    /// The cluster's size when whole.
    nodes: u64,
    /// Which replicas kills and pauses hit.
    targets: ProcessTargets,
    /// Providers the optimize nemesis drained and has not yet opened again.
    drained: Vec<String>,
}

type MakePayload = fn(NemesisValue) -> Payload;

impl Nemesis {
    pub fn new(cluster: Arc<Mutex<TestCluster>>, history: Arc<HistoryRecorder>, seed: u64, nodes: u64) -> Nemesis {
        Nemesis {
            cluster,
            history,
            rng: StdRng::seed_from_u64(seed ^ NEMESIS_SEED_SALT),
            nodes,
            targets: ProcessTargets::default(),
            drained: Vec::new(),
        }
    }

    /// Kills and pauses hit `targets` instead of the mixed default.
    pub fn with_targets(mut self, targets: ProcessTargets) -> Nemesis {
        self.targets = targets;
        self
    }

    /// Runs the schedule until `end`; every fault it injects is healed before it returns.
    pub async fn run(&mut self, schedule: &NemesisSchedule, started: Instant, end: Instant) {
        if schedule.kinds.is_empty() {
            return;
        }
        tokio::time::sleep_until(started + schedule.first_fault_after).await;
        let mut order: Vec<NemesisKind> = Vec::new();
        // Cycles owed so that every kind fires NEMESIS_FIRINGS_MIN times
        // (each round of `order` holds every kind once), or a kill loop's kills.
        let mut owed = schedule.faults_owed as u32;
        let mut cycles = 0;
        loop {
            if schedule.faults_max.is_some_and(|max| cycles >= max) {
                return;
            }
            cycles += 1;
            // A fault cut short to leave the final healed stretch whole.
            let room = end.saturating_duration_since(Instant::now() + schedule.final_healed);
            let (fault_for, heal_for) = self.cycle(schedule, room, owed);
            let fault_for = fault_for.min(room);
            if fault_for < Duration::from_millis(FAULT_MS_MIN) {
                return;
            }
            owed = owed.saturating_sub(1);
            if order.is_empty() {
                order = schedule.kinds.clone();
                order.shuffle(&mut self.rng);
            }
            let kind = order.pop().expect("refilled above");
            let fault = self.inject(kind, &schedule.partitions, fault_for).await;
            tokio::time::sleep(fault_for).await;
            if let Some(fault) = fault {
                self.heal(fault).await;
            }
            tokio::time::sleep_until((Instant::now() + heal_for).min(end)).await;
        }
    }

    /// A fault's and the following heal's lengths, jittered; while cycles
    /// are `owed`, shrunk together so that each owed cycle gets an equal
    /// share of `room` at most.
    fn cycle(&mut self, schedule: &NemesisSchedule, room: Duration, owed: u32) -> (Duration, Duration) {
        let (fault_for, heal_for) = (self.jitter(schedule.fault_mean), self.jitter(schedule.heal_mean));
        let share = room / owed.max(1);
        let drawn = fault_for + heal_for;
        if owed == 0 || drawn <= share {
            return (fault_for, heal_for);
        }
        let scale = share.as_secs_f64() / drawn.as_secs_f64();
        (fault_for.mul_f64(scale), heal_for.mul_f64(scale))
    }

    fn jitter(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(self.rng.gen_range(0.5..1.5))
    }

    fn record(&self, make: MakePayload, kind: OpType, value: NemesisValue) {
        self.history.record(kind, Process::NEMESIS, make(value), None);
    }

    async fn inject(&mut self, kind: NemesisKind, shapes: &[PartitionShape], fault_for: Duration) -> Option<ActiveFault> {
        match kind {
            NemesisKind::Kill => self.process_fault(ProcessFault::Kill).await.map(ActiveFault::Killed),
            NemesisKind::Pause => self.process_fault(ProcessFault::Pause).await.map(ActiveFault::Paused),
            NemesisKind::Partition => Some(self.partition(shapes).await),
            NemesisKind::Membership => Some(self.add_replica().await),
            NemesisKind::Optimize => Some(self.optimize_and_drain(fault_for).await),
        }
    }

    async fn heal(&mut self, fault: ActiveFault) {
        match fault {
            ActiveFault::Killed(nodes) => self.restart(nodes).await,
            ActiveFault::Paused(nodes) => self.resume(nodes).await,
            ActiveFault::Partitioned => self.heal_network().await,
            ActiveFault::Added => self.remove_replica(None).await,
            ActiveFault::Draining(provider) => self.uncordon(&provider).await,
        }
    }

    /// Asks for an optimization plan (live moves of movable allocations),
    /// then drains a random provider of the allocation workload, with a
    /// deadline [`DRAIN_DEADLINE_PAST_FAULT_MS`] after the fault's end.
    /// Either call may fail under the other faults; the detail says so.
    async fn optimize_and_drain(&mut self, fault_for: Duration) -> ActiveFault {
        let providers: Vec<String> = allocation::registrations()
            .into_iter()
            .map(|registration| registration.provider_id)
            .collect();
        let provider = providers.choose(&mut self.rng).expect("the workload has providers").clone();
        let cluster = self.cluster.lock().await;
        let leader = cluster.leader().await;
        let mut value = NemesisValue {
            leader,
            detail: format!("optimize, drain {provider}"),
            ..Default::default()
        };
        self.record(Payload::Optimize, OpType::Invoke, value.clone());
        let mut details = Vec::new();
        match cluster.admin().optimize(false).await {
            Ok(plan) => details.push(format!("optimize: {} moves planned", plan.moves.len())),
            Err(error) => details.push(format!("optimize failed: {error}")),
        }
        let deadline_ms = fault_for.as_millis() as u64 + DRAIN_DEADLINE_PAST_FAULT_MS;
        // Marked before the call: a drain whose answer was lost may still
        // have taken effect, and the final heal must open it either way.
        self.drained.push(provider.clone());
        match cluster.admin().drain_provider(&provider, deadline_ms).await {
            Ok(reply) => details.push(format!(
                "drain {provider} (deadline {deadline_ms} ms): {} moving, {} cannot move",
                reply.moving.len(),
                reply.cannot_move.len()
            )),
            Err(error) => details.push(format!("drain {provider} failed: {error}")),
        }
        value.detail = details.join("; ");
        self.record(Payload::Optimize, OpType::Info, value);
        ActiveFault::Draining(provider)
    }

    /// Opens `provider` again (retrying while the cluster settles), and
    /// notes the live moves completed since the table began.
    async fn uncordon(&mut self, provider: &str) {
        let cluster = self.cluster.lock().await;
        let mut value = NemesisValue {
            detail: format!("uncordon {provider}"),
            ..Default::default()
        };
        self.record(Payload::Uncordon, OpType::Invoke, value.clone());
        match with_final_retries(|| cluster.admin().set_provider_scheduling(provider, false)).await {
            Ok(_) => self.drained.retain(|drained| drained != provider),
            Err(error) => value.detail = format!("uncordon {provider} failed: {error}"),
        }
        if let Ok(state) = cluster.admin().system_state(Consistency::Linearizable).await {
            value.moves_completed = Some(state.moves_completed);
        }
        self.record(Payload::Uncordon, OpType::Info, value);
    }

    /// Kills or pauses the replicas [`targets::pick`] chooses.
    async fn process_fault(&mut self, fault: ProcessFault) -> Option<Vec<u64>> {
        let make: MakePayload = match fault {
            ProcessFault::Kill => Payload::Kill,
            ProcessFault::Pause => Payload::Pause,
        };
        let mut cluster = self.cluster.lock().await;
        let leader = cluster.leader().await;
        let nodes = targets::pick(
            self.targets,
            &cluster.healthy_members(),
            cluster.members().len(),
            leader,
            &mut self.rng,
        );
        if nodes.is_empty() {
            return None;
        }
        let mut value = NemesisValue {
            nodes: nodes.clone(),
            leader,
            detail: String::new(),
            ..Default::default()
        };
        self.record(make, OpType::Invoke, value.clone());
        let errors: Vec<String> = nodes
            .iter()
            .filter_map(|id| match fault {
                ProcessFault::Kill => cluster.kill(*id).err(),
                ProcessFault::Pause => cluster.pause(*id).err(),
            })
            .map(|error| error.to_string())
            .collect();
        value.detail = errors.join("; ");
        self.record(make, OpType::Info, value);
        Some(nodes)
    }

    async fn restart(&mut self, nodes: Vec<u64>) {
        let mut cluster = self.cluster.lock().await;
        let nodes: Vec<u64> = nodes.into_iter().filter(|id| cluster.killed().contains(id)).collect();
        if nodes.is_empty() {
            return;
        }
        let mut value = NemesisValue {
            nodes: nodes.clone(),
            ..Default::default()
        };
        self.record(Payload::Start, OpType::Invoke, value.clone());
        let mut errors = Vec::new();
        for id in &nodes {
            if let Err(error) = cluster.restart(*id).await {
                errors.push(error.to_string());
            }
        }
        value.detail = errors.join("; ");
        self.record(Payload::Start, OpType::Info, value);
    }

    async fn resume(&mut self, nodes: Vec<u64>) {
        let mut cluster = self.cluster.lock().await;
        let nodes: Vec<u64> = nodes.into_iter().filter(|id| cluster.paused().contains(id)).collect();
        if nodes.is_empty() {
            return;
        }
        let mut value = NemesisValue {
            nodes: nodes.clone(),
            ..Default::default()
        };
        self.record(Payload::Resume, OpType::Invoke, value.clone());
        value.detail = nodes
            .iter()
            .filter_map(|id| cluster.resume(*id).err())
            .map(|error| error.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        self.record(Payload::Resume, OpType::Info, value);
    }

    async fn partition(&mut self, shapes: &[PartitionShape]) -> ActiveFault {
        let cluster = self.cluster.lock().await;
        let leader = cluster.leader().await;
        let shape = *shapes.choose(&mut self.rng).unwrap_or(&PartitionShape::Halves);
        let members: Vec<u64> = cluster.members().iter().copied().collect();
        let drawn = partition::draw(shape, &members, leader, &mut self.rng);
        let value = NemesisValue {
            nodes: drawn.cut_off.clone(),
            leader,
            detail: drawn.description.clone(),
            ..Default::default()
        };
        self.record(Payload::Partition, OpType::Invoke, value.clone());
        cluster.set_links(drawn.links);
        self.record(Payload::Partition, OpType::Info, value);
        ActiveFault::Partitioned
    }

    async fn heal_network(&mut self) {
        let cluster = self.cluster.lock().await;
        self.record(Payload::Heal, OpType::Invoke, NemesisValue::default());
        cluster.heal_network();
        self.record(Payload::Heal, OpType::Info, NemesisValue::default());
    }

    async fn add_replica(&mut self) -> ActiveFault {
        let mut cluster = self.cluster.lock().await;
        let leader = cluster.leader().await;
        let mut value = NemesisValue {
            leader,
            ..Default::default()
        };
        self.record(Payload::AddReplica, OpType::Invoke, value.clone());
        match cluster.add_replica().await {
            Ok(id) => value.nodes = vec![id],
            Err((id, error)) => {
                value.nodes = vec![id];
                value.detail = format!("failed: {error}");
            }
        }
        self.record(Payload::AddReplica, OpType::Info, value);
        ActiveFault::Added
    }

    /// Removes `victim`, or else the oldest voter, or the leader a third of
    /// the time (while replicas the run started with are left, only if the
    /// leader is one of them: so that every original is replaced once
    /// there have been as many membership cycles as replicas), while more
    /// than `nodes` voters remain.
    async fn remove_replica(&mut self, victim: Option<u64>) {
        let mut cluster = self.cluster.lock().await;
        cluster.learn_membership().await;
        if cluster.members().len() as u64 <= self.nodes {
            return;
        }
        let leader = cluster.leader().await;
        let members: Vec<u64> = cluster.members().iter().copied().collect();
        let oldest = *members.first().expect("members");
        let originals_left = oldest <= self.nodes;
        let victim = victim.unwrap_or_else(|| match leader {
            Some(leader) if self.rng.gen_range(0..3) == 0 && (!originals_left || leader <= self.nodes) => leader,
            _ => oldest,
        });
        let mut value = NemesisValue {
            nodes: vec![victim],
            leader,
            detail: String::new(),
            ..Default::default()
        };
        self.record(Payload::RemoveReplica, OpType::Invoke, value.clone());
        if let Err(error) = cluster.remove_replica(victim).await {
            value.detail = format!("failed: {error}");
        }
        self.record(Payload::RemoveReplica, OpType::Info, value);
    }

    /// Undoes whatever is still broken: links, pauses, kills, an extra
    /// voter. Then waits (bounded) for the cluster to agree on a leader.
    pub async fn heal_everything(&mut self) {
        let (links_broken, paused, killed) = {
            let cluster = self.cluster.lock().await;
            let killed: Vec<u64> = cluster.killed().into_iter().filter(|id| cluster.members().contains(id)).collect();
            (!cluster.links().is_healthy(), cluster.paused(), killed)
        };
        if links_broken {
            self.heal_network().await;
        }
        self.resume(paused).await;
        self.restart(killed).await;
        // An added replica still in: back to the cluster's size, sparing the
        // leader (it is no fault any more, only a clean-up).
        let extra = {
            let mut cluster = self.cluster.lock().await;
            cluster.learn_membership().await;
            let leader = cluster.leader().await;
            let members = cluster.members().clone();
            (members.len() as u64 > self.nodes)
                .then(|| members.iter().rev().copied().find(|id| Some(*id) != leader))
                .flatten()
        };
        if let Some(extra) = extra {
            self.remove_replica(Some(extra)).await;
        }
        for provider in self.drained.clone() {
            self.uncordon(&provider).await;
        }
        let cluster = self.cluster.lock().await;
        let _ = cluster.wait_for_leader(Duration::from_millis(HEALED_LEADER_TIMEOUT_MS)).await;
    }
}
