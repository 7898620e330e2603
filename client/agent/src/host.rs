//! [`HostPaths`]: where this host's figures are read (`/proc`, `/sys`), and
//! the parsers for what is read there.
//!
//! The parsers are pure functions of the file's text, so they are tested on
//! fixed samples; [`HostPaths`] only says where the files are, so a test can
//! point it at a fake tree. Nothing here guesses: a file that is missing or
//! does not parse gives `None`, and the caller leaves the figure out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bytes in one GiB, the unit of `memory_gb` and `storage_gb`.
pub const GIB_BYTES: u64 = 1 << 30;
/// CPU numbers accepted in a cpu list ("0-3,8"): a range wider than this is
/// refused rather than expanded.
pub const CPU_NUMBER_MAX: u32 = 65_535;
/// Thermal zones or powercap domains read at most: sysfs never has more on a
/// real host, and the bound keeps a strange tree from costing a heartbeat.
pub const SYSFS_ENTRIES_MAX: usize = 256;

/// The roots of the kernel's pseudo file systems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    pub proc_dir: PathBuf,
    pub sys_dir: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            proc_dir: PathBuf::from("/proc"),
            sys_dir: PathBuf::from("/sys"),
        }
    }
}

impl HostPaths {
    pub fn proc(&self, relative: &str) -> PathBuf {
        self.proc_dir.join(relative)
    }

    pub fn sys(&self, relative: &str) -> PathBuf {
        self.sys_dir.join(relative)
    }

    /// `/proc/stat` per CPU, or `None` if it cannot be read.
    pub fn cpu_times(&self) -> Option<BTreeMap<u32, CpuTimes>> {
        read(&self.proc("stat")).map(|text| parse_proc_stat(&text))
    }

    /// The CPUs this process may run on (`Cpus_allowed_list` of
    /// `/proc/self/status`): in a container or under `taskset` that is fewer
    /// than the host has, and only those can be offered.
    pub fn cpus_allowed(&self) -> Option<BTreeSet<u32>> {
        let status = read(&self.proc("self/status"))?;
        let list = status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
        parse_cpu_list(list.trim())
    }

    pub fn memory(&self) -> Option<MemInfo> {
        read(&self.proc("meminfo")).and_then(|text| parse_meminfo(&text))
    }

    /// The cgroup v2 memory limit of this process's cgroup, if it has one.
    pub fn cgroup_memory_limit_bytes(&self) -> Option<u64> {
        let cgroup = read(&self.proc("self/cgroup"))?;
        // cgroup v2: the one line "0::/path".
        let path = cgroup.lines().find_map(|line| line.strip_prefix("0::"))?;
        let file = self.sys("fs/cgroup").join(path.trim_start_matches('/')).join("memory.max");
        read(&file).and_then(|text| parse_memory_max(&text))
    }

    pub fn hostname(&self) -> Option<String> {
        read(&self.proc("sys/kernel/hostname"))
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
    }

    /// The hottest thermal zone, in degrees Celsius: zones whose type names
    /// the CPU package when there are any, otherwise every zone.
    pub fn temperature_celsius(&self) -> Option<f64> {
        let zones = entries_with_prefix(&self.sys("class/thermal"), "thermal_zone");
        let readings: Vec<(String, f64)> = zones
            .iter()
            .filter_map(|zone| {
                let kind = read(&zone.join("type")).map(|kind| kind.trim().to_owned()).unwrap_or_default();
                let millidegrees = read(&zone.join("temp"))?.trim().parse::<i64>().ok()?;
                Some((kind, millidegrees as f64 / 1000.0))
            })
            .collect();
        let is_cpu = |kind: &str| {
            let kind = kind.to_ascii_lowercase();
            ["cpu", "pkg", "package", "soc", "coretemp", "k10temp"]
                .iter()
                .any(|name| kind.contains(name))
        };
        let cpu: Vec<f64> = readings
            .iter()
            .filter(|(kind, _)| is_cpu(kind))
            .map(|(_, celsius)| *celsius)
            .collect();
        let chosen: Vec<f64> = if cpu.is_empty() {
            readings.iter().map(|(_, celsius)| *celsius).collect()
        } else {
            cpu
        };
        chosen.into_iter().reduce(f64::max)
    }

    /// The energy counters of the top-level powercap domains (one per CPU
    /// package: `intel-rapl:0`, `intel-rapl:1`, ...), summed, in microjoules,
    /// with the largest value they wrap at. `None` without powercap or
    /// without permission to read it (recent kernels keep it root-only).
    pub fn package_energy_uj(&self) -> Option<EnergyReading> {
        let domains = entries_with_prefix(&self.sys("class/powercap"), "");
        let mut reading = EnergyReading::default();
        for domain in domains.iter().filter(|domain| is_top_level_domain(domain)) {
            let energy = read(&domain.join("energy_uj")).and_then(|text| text.trim().parse::<u64>().ok());
            let range = read(&domain.join("max_energy_range_uj")).and_then(|text| text.trim().parse::<u64>().ok());
            if let (Some(energy), Some(range)) = (energy, range) {
                reading.domains.push((energy, range));
            }
        }
        (!reading.domains.is_empty()).then_some(reading)
    }
}

/// Cumulative CPU time of one CPU, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl CpuTimes {
    /// The busy share of the time between `earlier` and `self`, in 0..=1;
    /// `None` when no time passed (or the counters went backwards).
    pub fn utilization_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total).filter(|total| *total > 0)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        Some((busy as f64 / total as f64).clamp(0.0, 1.0))
    }
}

/// `/proc/meminfo`'s totals, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInfo {
    pub total_bytes: u64,
    /// What could be given to new work without swapping (`MemAvailable`).
    pub available_bytes: u64,
}

impl MemInfo {
    pub fn utilization(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        (self.total_bytes.saturating_sub(self.available_bytes) as f64 / self.total_bytes as f64).clamp(0.0, 1.0)
    }
}

/// Energy counters of the powercap domains: `(energy_uj, max_energy_range_uj)` each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnergyReading {
    pub domains: Vec<(u64, u64)>,
}

impl EnergyReading {
    /// Watts between `earlier` and `self`, `elapsed_s` apart; a counter that
    /// wrapped is counted across its range. `None` if the domains differ.
    pub fn watts_since(&self, earlier: &EnergyReading, elapsed_s: f64) -> Option<f64> {
        if self.domains.len() != earlier.domains.len() || elapsed_s <= 0.0 {
            return None;
        }
        let mut microjoules = 0u64;
        for ((now, range), (before, _)) in self.domains.iter().zip(&earlier.domains) {
            microjoules += if now >= before {
                now - before
            } else {
                range.saturating_sub(*before) + now
            };
        }
        Some(microjoules as f64 / 1e6 / elapsed_s)
    }
}

/// The per-CPU lines of `/proc/stat` (`cpu3 user nice system idle iowait irq
/// softirq steal ...`); the aggregate `cpu` line is skipped. Busy time is
/// everything but idle and iowait (guest time is already inside user).
pub fn parse_proc_stat(text: &str) -> BTreeMap<u32, CpuTimes> {
    let mut cpus = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(number) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let values: Vec<u64> = fields.take(8).map_while(|value| value.parse().ok()).collect();
        if values.len() < 4 {
            continue;
        }
        let idle = values[3] + values.get(4).copied().unwrap_or(0);
        let total: u64 = values.iter().sum();
        cpus.insert(number, CpuTimes { busy: total - idle, total });
    }
    cpus
}

/// A kernel cpu list such as `0-3,8,10-11`; `None` if it does not parse.
pub fn parse_cpu_list(text: &str) -> Option<BTreeSet<u32>> {
    let mut cpus = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (first.parse::<u32>().ok()?, last.parse::<u32>().ok()?),
            None => {
                let only = part.parse::<u32>().ok()?;
                (only, only)
            }
        };
        if first > last || last > CPU_NUMBER_MAX {
            return None;
        }
        cpus.extend(first..=last);
    }
    Some(cpus)
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo` (in kB there).
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let field = |name: &str| -> Option<u64> {
        let line = text
            .lines()
            .find(|line| line.starts_with(name) && line[name.len()..].starts_with(':'))?;
        let kilobytes = line[name.len() + 1..].split_whitespace().next()?.parse::<u64>().ok()?;
        Some(kilobytes * 1024)
    };
    Some(MemInfo {
        total_bytes: field("MemTotal")?,
        available_bytes: field("MemAvailable")?,
    })
}

/// A cgroup v2 `memory.max`: a number of bytes, or `max` (no limit: `None`).
pub fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok()
}

/// `intel-rapl:0` is a package; `intel-rapl:0:1` is a part of it, already
/// counted in the package's energy.
fn is_top_level_domain(domain: &Path) -> bool {
    let name = domain
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.matches(':').count() == 1
}

/// The entries of `dir` whose names start with `prefix`, sorted, at most
/// [`SYSFS_ENTRIES_MAX`]; none if `dir` cannot be read.
fn entries_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
        .take(SYSFS_ENTRIES_MAX)
        .collect();
    found.sort();
    found
}

/// A small pseudo file's text; `None` if missing or unreadable.
fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_gives_busy_and_total_per_cpu() {
        let text = "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 5 1 4 30 10 0 0 0 0 0\nintr 1 2 3\n";

        let cpus = parse_proc_stat(text);

        assert_eq!(
            BTreeMap::from([(0, CpuTimes { busy: 10, total: 50 }), (1, CpuTimes { busy: 10, total: 50 })]),
            cpus
        );
    }

    #[test]
    fn utilization_is_the_busy_share_of_the_interval() {
        let before = CpuTimes { busy: 10, total: 50 };
        let after = CpuTimes { busy: 40, total: 150 };

        assert_eq!(Some(0.3), after.utilization_since(&before));
        assert_eq!(None, before.utilization_since(&before), "no time passed");
        assert_eq!(None, before.utilization_since(&after), "counters went backwards");
    }

    #[test]
    fn cpu_lists_expand_ranges_and_refuse_nonsense() {
        assert_eq!(Some(BTreeSet::from([0, 1, 2, 3, 8, 10, 11])), parse_cpu_list("0-3,8,10-11"));
        assert_eq!(Some(BTreeSet::from([0])), parse_cpu_list("0\n"));
        assert_eq!(None, parse_cpu_list("3-1"));
        assert_eq!(None, parse_cpu_list("0-4294967295"));
        assert_eq!(None, parse_cpu_list("a"));
    }

    #[test]
    fn meminfo_reads_total_and_available_in_bytes() {
        let text = "MemTotal:       24684084 kB\nMemFree:         5590432 kB\nMemAvailable:   21936384 kB\n";

        let memory = parse_meminfo(text).unwrap();

        assert_eq!(24684084 * 1024, memory.total_bytes);
        assert_eq!(21936384 * 1024, memory.available_bytes);
        assert!((memory.utilization() - 0.1113).abs() < 0.001);
        assert_eq!(None, parse_meminfo("MemTotal: 1 kB\n"), "MemAvailable is required");
    }

    #[test]
    fn memory_max_is_a_number_or_no_limit() {
        assert_eq!(Some(1 << 30), parse_memory_max("1073741824\n"));
        assert_eq!(None, parse_memory_max("max\n"));
    }

    #[test]
    fn watts_count_a_wrapped_counter_across_its_range() {
        let before = EnergyReading {
            domains: vec![(900, 1_000), (0, 10_000_000)],
        };
        let after = EnergyReading {
            domains: vec![(100, 1_000), (2_000_000, 10_000_000)],
        };

        let watts = after.watts_since(&before, 2.0).unwrap();

        assert!((watts - 1.0001).abs() < 1e-9, "{watts}");
    }

    #[test]
    fn a_fake_sysfs_tree_gives_temperature_and_nothing_is_invented_without_it() {
        let root = tempfile::tempdir().unwrap();
        let paths = HostPaths {
            proc_dir: root.path().join("proc"),
            sys_dir: root.path().join("sys"),
        };
        assert_eq!(None, paths.temperature_celsius());
        assert_eq!(None, paths.package_energy_uj());

        for (zone, kind, millidegrees) in [("thermal_zone0", "acpitz", "80000"), ("thermal_zone1", "x86_pkg_temp", "55500")] {
            let dir = paths.sys("class/thermal").join(zone);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("type"), kind).unwrap();
            std::fs::write(dir.join("temp"), millidegrees).unwrap();
        }
        for (domain, energy) in [("intel-rapl:0", "5000"), ("intel-rapl:0:0", "4000")] {
            let dir = paths.sys("class/powercap").join(domain);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("energy_uj"), energy).unwrap();
            std::fs::write(dir.join("max_energy_range_uj"), "262143328850").unwrap();
        }

        assert_eq!(Some(55.5), paths.temperature_celsius(), "the package zone, not the hotter ACPI one");
        assert_eq!(
            Some(EnergyReading {
                domains: vec![(5000, 262143328850)]
            }),
            paths.package_energy_uj(),
            "sub-domains are inside their package"
        );
    }
}
