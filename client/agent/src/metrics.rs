//! [`MetricsCollector`]: the usage metrics an agent sends with each heartbeat.
//!
//! Per unit, named as in the protocol's `resource_status.metrics`:
//!
//! * `utilization` (0..1): a CPU's busy share since the previous heartbeat
//!   (`/proc/stat`); the memory's used share (`MemTotal - MemAvailable`) on
//!   every memory block; a file system's used share (`statvfs`, as `df`) on
//!   its volume; for a declared unit, the share the agent holds for
//!   allocations.
//! * `temperature` (°C) and `power_usage` (W), on CPU units only and only
//!   where the host exposes them (`/sys/class/thermal`, `/sys/class/powercap`):
//!   host-wide figures (the hottest CPU package, the packages' total power),
//!   the same on every CPU unit. Absent otherwise: never invented.
//!
//! A figure that needs two readings (CPU busy share, power) is left out of
//! the first heartbeat.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use super::host::{CpuTimes, EnergyReading, HostPaths, MemInfo};
use super::inventory::{Inventory, MetricSource};
use super::statvfs::{fs_space, FsSpace};
use qm_client::proto::api;

pub const METRIC_UTILIZATION: &str = "utilization";
pub const METRIC_TEMPERATURE: &str = "temperature";
pub const METRIC_POWER: &str = "power_usage";

/// Readings kept from one heartbeat to the next.
pub struct MetricsCollector {
    paths: HostPaths,
    sources: BTreeMap<String, MetricSource>,
    capacities: BTreeMap<String, u64>,
    previous_cpu: BTreeMap<u32, CpuTimes>,
    previous_energy: Option<(EnergyReading, Instant)>,
}

/// Host-wide readings taken once per heartbeat.
#[derive(Default)]
struct HostReadings {
    cpu: BTreeMap<u32, CpuTimes>,
    memory: Option<MemInfo>,
    disks: HashMap<PathBuf, FsSpace>,
    temperature: Option<f64>,
    power: Option<f64>,
}

impl MetricsCollector {
    /// Takes the first readings now, so the first sample has a base.
    pub fn new(inventory: &Inventory, paths: HostPaths, now: Instant) -> MetricsCollector {
        let capacities = inventory
            .registration
            .resources
            .iter()
            .map(|resource| (resource.resource_id.clone(), resource.capacity as u64))
            .collect();
        let mut collector = MetricsCollector {
            paths,
            sources: inventory.sources.clone(),
            capacities,
            previous_cpu: BTreeMap::new(),
            previous_energy: None,
        };
        if collector.measures_cpus() {
            collector.previous_cpu = collector.paths.cpu_times().unwrap_or_default();
            collector.previous_energy = collector.paths.package_energy_uj().map(|energy| (energy, now));
        }
        collector
    }

    /// One heartbeat's metrics. `held` is what the agent holds for
    /// allocations per unit (resource id → amount), for declared units.
    pub fn sample(&mut self, held: &BTreeMap<String, u64>, now: Instant) -> Vec<api::ResourceMetrics> {
        let readings = self.read_host(now);
        let sample = self
            .sources
            .iter()
            .filter_map(|(resource_id, source)| {
                let metrics = self.unit_metrics(resource_id, source, &readings, held);
                (!metrics.is_empty()).then(|| api::ResourceMetrics {
                    resource_id: resource_id.clone(),
                    metrics: metrics.into_iter().map(|(name, value)| (name.to_owned(), value)).collect(),
                })
            })
            .collect();
        // This heartbeat's counters are the next one's base.
        if !readings.cpu.is_empty() {
            self.previous_cpu = readings.cpu;
        }
        sample
    }

    fn measures_cpus(&self) -> bool {
        self.sources.values().any(|source| matches!(source, MetricSource::Cpu(_)))
    }

    fn read_host(&mut self, now: Instant) -> HostReadings {
        let mut readings = HostReadings::default();
        if self.measures_cpus() {
            readings.cpu = self.paths.cpu_times().unwrap_or_default();
            readings.temperature = self.paths.temperature_celsius();
            let energy = self.paths.package_energy_uj();
            readings.power = match (&energy, &self.previous_energy) {
                (Some(energy), Some((before, at))) => energy.watts_since(before, now.duration_since(*at).as_secs_f64()),
                _ => None,
            };
            self.previous_energy = energy.map(|energy| (energy, now));
        }
        if self.sources.values().any(|source| *source == MetricSource::Memory) {
            readings.memory = self.paths.memory();
        }
        for source in self.sources.values() {
            if let MetricSource::Disk(path) = source {
                if let Ok(space) = fs_space(path) {
                    readings.disks.insert(path.clone(), space);
                }
            }
        }
        readings
    }

    fn unit_metrics(
        &self,
        resource_id: &str,
        source: &MetricSource,
        readings: &HostReadings,
        held: &BTreeMap<String, u64>,
    ) -> Vec<(&'static str, f64)> {
        let mut metrics = Vec::new();
        match source {
            MetricSource::Cpu(cpu) => {
                let busy = readings
                    .cpu
                    .get(cpu)
                    .zip(self.previous_cpu.get(cpu))
                    .and_then(|(now, before)| now.utilization_since(before));
                metrics.extend(busy.map(|busy| (METRIC_UTILIZATION, busy)));
                metrics.extend(readings.temperature.map(|celsius| (METRIC_TEMPERATURE, celsius)));
                metrics.extend(readings.power.map(|watts| (METRIC_POWER, watts)));
            }
            MetricSource::Memory => metrics.extend(readings.memory.map(|memory| (METRIC_UTILIZATION, memory.utilization()))),
            MetricSource::Disk(path) => metrics.extend(readings.disks.get(path).map(|space| (METRIC_UTILIZATION, space.utilization()))),
            MetricSource::Declared => {
                let capacity = self.capacities.get(resource_id).copied().unwrap_or(0);
                let amount = held.get(resource_id).copied().unwrap_or(0);
                if capacity > 0 {
                    metrics.push((METRIC_UTILIZATION, (amount as f64 / capacity as f64).clamp(0.0, 1.0)));
                }
            }
        }
        metrics.retain(|(_, value)| value.is_finite());
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(sample: &[api::ResourceMetrics], resource_id: &str, name: &str) -> Option<f64> {
        sample
            .iter()
            .find(|unit| unit.resource_id == resource_id)
            .and_then(|unit| unit.metrics.get(name).copied())
    }

    #[test]
    fn declared_units_report_the_share_held() {
        let inventory = Inventory::from_document(
            "agent-b",
            r#"{"resources": [{"resource_id": "vol_1", "kind": "storage_gb", "capacity": 100},
                              {"resource_id": "gpu_1", "kind": "gpu", "capacity": 1}]}"#,
        )
        .unwrap();
        let now = Instant::now();
        let mut collector = MetricsCollector::new(&inventory, HostPaths::default(), now);

        let sample = collector.sample(&BTreeMap::from([("vol_1".to_owned(), 25)]), now);

        assert_eq!(Some(0.25), metric(&sample, "vol_1", METRIC_UTILIZATION));
        assert_eq!(Some(0.0), metric(&sample, "gpu_1", METRIC_UTILIZATION));
        assert_eq!(
            None,
            metric(&sample, "gpu_1", METRIC_TEMPERATURE),
            "a declared unit has no host readings"
        );
    }

    #[test]
    fn host_cpus_report_their_busy_share_and_no_invented_temperature() {
        let root = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            proc_dir: root.path().join("proc"),
            sys_dir: root.path().join("sys"),
        };
        std::fs::create_dir_all(&paths.proc_dir).unwrap();
        std::fs::write(paths.proc("stat"), "cpu0 10 0 0 90\n").unwrap();
        std::fs::write(paths.proc("meminfo"), "MemTotal: 1000 kB\nMemAvailable: 250 kB\n").unwrap();
        let mut sources = BTreeMap::from([
            ("cpu_0".to_owned(), MetricSource::Cpu(0)),
            ("block_1".to_owned(), MetricSource::Memory),
        ]);
        let mut inventory = Inventory::from_document(
            "agent-a",
            r#"{"resources": [{"resource_id": "cpu_0", "kind": "cpu_cores", "capacity": 1},
                              {"resource_id": "block_1", "kind": "memory_gb", "capacity": 1}]}"#,
        )
        .unwrap();
        std::mem::swap(&mut inventory.sources, &mut sources);
        let started = Instant::now();
        let mut collector = MetricsCollector::new(&inventory, paths.clone(), started);

        std::fs::write(paths.proc("stat"), "cpu0 60 0 0 140\n").unwrap();
        let sample = collector.sample(&BTreeMap::new(), started);

        assert_eq!(Some(0.5), metric(&sample, "cpu_0", METRIC_UTILIZATION));
        assert_eq!(Some(0.75), metric(&sample, "block_1", METRIC_UTILIZATION));
        assert_eq!(None, metric(&sample, "cpu_0", METRIC_TEMPERATURE));
        assert_eq!(None, metric(&sample, "cpu_0", METRIC_POWER));
    }
}
