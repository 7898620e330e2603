//! [`Inventory`]: what an agent offers, as the registration document it sends,
//! and where each unit's usage is measured.
//!
//! From this host (`--from-host`):
//!
//! * `cpu_cores`: one exclusive unit per CPU this process may run on,
//!   `cpu_<n>` with the kernel's CPU number (`/proc/stat`, narrowed by
//!   `Cpus_allowed_list` in `/proc/self/status`).
//! * `memory_gb`: the memory (`MemTotal`, or the cgroup v2 limit if lower,
//!   minus a reserve) cut into exclusive blocks of `memory_block_gb` GiB,
//!   `block_1`, `block_2`, ... as in the protocol's `memory_blocks`.
//! * `storage_gb`: one divisible volume per disk path, `vol_1`, ..., whose
//!   capacity is the space available there at start (`statvfs`), in GiB.
//!
//! From a file (`--inventory FILE`): the registration document as written,
//! with `confirms_allocations` set, since the agent confirms.
//!
//! The provider's `address` (for the service catalog) is the host name from
//! the host, what the document says from a file, and either way what
//! [`Inventory::with_endpoint`] sets (`qm agent --address/--port`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use qm_state_machine::limits::{PROVIDER_ADDRESS_LEN_MAX, RESOURCES_PER_PROVIDER_MAX};
use qm_state_machine::{InvalidArgument, ProviderRegistration, ResourceSpec, Sharing};
use serde_json::Value;

use super::host::{HostPaths, GIB_BYTES};
use super::statvfs::fs_space;

pub const KIND_CPU: &str = "cpu_cores";
pub const KIND_MEMORY: &str = "memory_gb";
pub const KIND_STORAGE: &str = "storage_gb";
/// Largest registration document read from a file.
pub const INVENTORY_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Where one unit's usage comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricSource {
    /// One CPU of this host, by kernel number.
    Cpu(u32),
    /// This host's memory (every block reports the whole memory's use).
    Memory,
    /// The file system holding this path.
    Disk(PathBuf),
    /// A declared unit: nothing on this host measures it, so its
    /// utilization is the share the agent holds for allocations.
    Declared,
}

/// Options of a host inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInventoryOptions {
    /// Each becomes one `storage_gb` volume; two paths on one file system are refused.
    pub disk_paths: Vec<PathBuf>,
    /// GiB per memory block.
    pub memory_block_gb: u64,
    /// GiB of memory kept back for the host itself, not offered.
    pub memory_reserve_gb: u64,
    /// Provider labels, beside `host` (the hostname) and `inventory`.
    pub labels: BTreeMap<String, String>,
    pub paths: HostPaths,
}

impl Default for HostInventoryOptions {
    fn default() -> Self {
        HostInventoryOptions {
            disk_paths: vec![PathBuf::from("/")],
            memory_block_gb: 1,
            memory_reserve_gb: 0,
            labels: BTreeMap::new(),
            paths: HostPaths::default(),
        }
    }
}

/// Why an inventory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
}

/// What the agent registers, and how each unit is measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Inventory {
    /// Validated, with `confirms_allocations: true`.
    pub registration: ProviderRegistration,
    pub sources: BTreeMap<String, MetricSource>,
    /// `host` or the file's path, for people reading the agent's output.
    pub origin: String,
}

impl Inventory {
    /// This host's CPUs, memory and disk space.
    pub fn from_host(provider_id: &str, options: &HostInventoryOptions) -> Result<Inventory, InventoryError> {
        let paths = &options.paths;
        let mut resources = Vec::new();
        let mut sources = BTreeMap::new();

        let cpus = paths
            .cpu_times()
            .ok_or_else(|| unreadable(&paths.proc("stat"), "no per-CPU lines"))?;
        let allowed = paths.cpus_allowed();
        for cpu in cpus
            .keys()
            .filter(|cpu| allowed.as_ref().is_none_or(|allowed| allowed.contains(cpu)))
        {
            let resource_id = format!("cpu_{cpu}");
            resources.push(unit(&resource_id, KIND_CPU, 1, Sharing::Exclusive, [("cpu", cpu.to_string())]));
            sources.insert(resource_id, MetricSource::Cpu(*cpu));
        }

        if options.memory_block_gb == 0 {
            return Err(InvalidArgument::new("memory_block_gb", "must be at least 1").into());
        }
        let memory = paths
            .memory()
            .ok_or_else(|| unreadable(&paths.proc("meminfo"), "no MemTotal/MemAvailable"))?;
        let memory_bytes = paths
            .cgroup_memory_limit_bytes()
            .map_or(memory.total_bytes, |limit| limit.min(memory.total_bytes));
        let offered_gb = (memory_bytes / GIB_BYTES).saturating_sub(options.memory_reserve_gb);
        for block in 1..=offered_gb / options.memory_block_gb {
            let resource_id = format!("block_{block}");
            resources.push(unit(
                &resource_id,
                KIND_MEMORY,
                options.memory_block_gb,
                Sharing::Exclusive,
                [("block_gb", options.memory_block_gb.to_string())],
            ));
            sources.insert(resource_id, MetricSource::Memory);
        }

        let mut devices: Vec<(u64, &Path)> = Vec::new();
        for (position, path) in options.disk_paths.iter().enumerate() {
            let device = std::fs::metadata(path).map_err(|error| unreadable(path, &error.to_string()))?.dev();
            if let Some((_, first)) = devices.iter().find(|(seen, _)| *seen == device) {
                return Err(InvalidArgument::new(
                    format!("disk_paths[{position}]"),
                    format!("{} is on the same file system as {}", path.display(), first.display()),
                )
                .into());
            }
            devices.push((device, path));
            let space = fs_space(path).map_err(|reason| unreadable(path, &reason))?;
            let capacity_gb = space.available_bytes / GIB_BYTES;
            if capacity_gb == 0 {
                continue;
            }
            let resource_id = format!("vol_{}", position + 1);
            resources.push(unit(
                &resource_id,
                KIND_STORAGE,
                capacity_gb,
                Sharing::Divisible,
                [("path", path.display().to_string())],
            ));
            sources.insert(resource_id, MetricSource::Disk(path.clone()));
        }

        if resources.len() > RESOURCES_PER_PROVIDER_MAX {
            return Err(InvalidArgument::new(
                "memory_block_gb",
                format!(
                    "this host would offer {} units, at most {RESOURCES_PER_PROVIDER_MAX} are allowed; use larger memory blocks",
                    resources.len()
                ),
            )
            .into());
        }
        let mut labels = options.labels.clone();
        let hostname = paths.hostname();
        if let Some(hostname) = &hostname {
            labels.entry("host".to_owned()).or_insert(hostname.clone());
        }
        labels.insert("inventory".to_owned(), "host".to_owned());
        let registration = ProviderRegistration {
            provider_id: provider_id.to_owned(),
            labels,
            resources,
            confirms_allocations: true,
            // A host name the catalog can list as it is; anything else is
            // left out rather than refusing to start.
            address: hostname.filter(|name| {
                name.len() <= PROVIDER_ADDRESS_LEN_MAX && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            }),
            port: None,
        }
        .validate()?;
        Ok(Inventory {
            registration,
            sources,
            origin: "host".to_owned(),
        })
    }

    /// A declared inventory: the registration document at `path`. Its
    /// `provider_id` may be left out; if present it must be `provider_id`.
    pub fn from_file(provider_id: &str, path: &Path) -> Result<Inventory, InventoryError> {
        let text = read_bounded(path)?;
        let inventory = Inventory::from_document(provider_id, &text)?;
        Ok(Inventory {
            origin: path.display().to_string(),
            ..inventory
        })
    }

    /// [`Inventory::from_file`] on the document's text.
    pub fn from_document(provider_id: &str, text: &str) -> Result<Inventory, InventoryError> {
        let mut document: Value =
            serde_json::from_str(text).map_err(|error| InvalidArgument::new("registration", format!("not JSON: {error}")))?;
        let object = document
            .as_object_mut()
            .ok_or_else(|| InvalidArgument::new("registration", "must be a JSON object"))?;
        match object.get("provider_id") {
            None => {
                object.insert("provider_id".to_owned(), provider_id.into());
            }
            Some(Value::String(declared)) if declared == provider_id => {}
            Some(other) => {
                return Err(InvalidArgument::new(
                    "provider_id",
                    format!("the inventory says {other}, --provider-id says {provider_id:?}"),
                )
                .into())
            }
        }
        object.insert("confirms_allocations".to_owned(), true.into());
        let registration: ProviderRegistration =
            serde_json::from_value(document).map_err(|error| InvalidArgument::new("registration", error.to_string()))?;
        let registration = registration.validate()?;
        let sources = registration
            .resources
            .iter()
            .map(|resource| (resource.resource_id.clone(), MetricSource::Declared))
            .collect();
        Ok(Inventory {
            registration,
            sources,
            origin: "document".to_owned(),
        })
    }

    /// Sets where the provider is reached, over what the inventory said:
    /// `address` replaces it when given; `port` replaces it when given and is
    /// dropped when the address changes without one.
    pub fn with_endpoint(mut self, address: Option<String>, port: Option<u16>) -> Result<Inventory, InventoryError> {
        if let Some(address) = address {
            if self.registration.address.as_ref() != Some(&address) {
                self.registration.port = None;
            }
            self.registration.address = Some(address);
        }
        if port.is_some() {
            self.registration.port = port;
        }
        self.registration = self.registration.validate()?;
        Ok(self)
    }

    /// Capacity per kind, for summaries.
    pub fn capacity_by_kind(&self) -> BTreeMap<String, u64> {
        let mut kinds = BTreeMap::new();
        for resource in &self.registration.resources {
            *kinds.entry(resource.kind.clone()).or_insert(0) += resource.capacity as u64;
        }
        kinds
    }

    /// A unit's kind and capacity.
    pub fn unit(&self, resource_id: &str) -> Option<&ResourceSpec> {
        self.registration
            .resources
            .binary_search_by(|resource| resource.resource_id.as_str().cmp(resource_id))
            .ok()
            .map(|position| &self.registration.resources[position])
    }
}

fn unit<const N: usize>(resource_id: &str, kind: &str, capacity: u64, sharing: Sharing, labels: [(&str, String); N]) -> ResourceSpec {
    ResourceSpec {
        resource_id: resource_id.to_owned(),
        kind: kind.to_owned(),
        capacity: capacity as i64,
        labels: labels.into_iter().map(|(key, value)| (key.to_owned(), value)).collect(),
        sharing: Some(sharing),
    }
}

fn unreadable(path: &Path, reason: &str) -> InventoryError {
    InventoryError::Unreadable {
        path: path.display().to_string(),
        reason: reason.to_owned(),
    }
}

fn read_bounded(path: &Path) -> Result<String, InventoryError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(INVENTORY_BYTES_MAX + 1).read_to_string(&mut text))
        .map_err(|error| unreadable(path, &error.to_string()))?;
    if text.len() as u64 > INVENTORY_BYTES_MAX {
        return Err(unreadable(path, &format!("is larger than {INVENTORY_BYTES_MAX} bytes")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc with two CPUs (one not allowed) and 4.5 GiB of memory.
    fn fake_host() -> (tempfile::TempDir, HostInventoryOptions) {
        let root = tempfile::tempdir().unwrap();
        let proc_dir = root.path().join("proc");
        std::fs::create_dir_all(proc_dir.join("self")).unwrap();
        std::fs::create_dir_all(proc_dir.join("sys/kernel")).unwrap();
        std::fs::write(proc_dir.join("stat"), "cpu 2 0 2 4\ncpu0 1 0 1 2\ncpu1 1 0 1 2\ncpu2 1 0 1 2\n").unwrap();
        std::fs::write(proc_dir.join("self/status"), "Name:\tqm\nCpus_allowed_list:\t0,2\n").unwrap();
        std::fs::write(proc_dir.join("meminfo"), "MemTotal: 4718592 kB\nMemAvailable: 2359296 kB\n").unwrap();
        std::fs::write(proc_dir.join("sys/kernel/hostname"), "host-a\n").unwrap();
        let options = HostInventoryOptions {
            disk_paths: vec![root.path().to_owned()],
            paths: HostPaths {
                proc_dir,
                sys_dir: root.path().join("sys"),
            },
            ..HostInventoryOptions::default()
        };
        (root, options)
    }

    #[test]
    fn a_host_offers_its_allowed_cpus_memory_blocks_and_disk() {
        let (_root, options) = fake_host();

        let inventory = Inventory::from_host("agent-a", &options).unwrap();

        let ids: Vec<&str> = inventory
            .registration
            .resources
            .iter()
            .map(|resource| resource.resource_id.as_str())
            .collect();
        let has_disk = ids.contains(&"vol_1");
        let expected: Vec<&str> = ["block_1", "block_2", "block_3", "block_4", "cpu_0", "cpu_2"]
            .into_iter()
            .chain(has_disk.then_some("vol_1"))
            .collect();
        assert_eq!(expected, ids);
        assert!(inventory.registration.confirms_allocations);
        assert_eq!(Some("host-a"), inventory.registration.labels.get("host").map(String::as_str));
        assert_eq!(Some("host-a"), inventory.registration.address.as_deref());
        assert_eq!(Some(&MetricSource::Cpu(2)), inventory.sources.get("cpu_2"));
        assert_eq!(Some(&MetricSource::Memory), inventory.sources.get("block_4"));
        assert_eq!(Some(Sharing::Exclusive), inventory.unit("block_1").unwrap().sharing);
        assert_eq!(Some(&4), inventory.capacity_by_kind().get(KIND_MEMORY));
    }

    #[test]
    fn memory_blocks_and_reserve_shape_the_memory_offer() {
        let (_root, mut options) = fake_host();
        options.memory_block_gb = 2;
        options.memory_reserve_gb = 1;

        let inventory = Inventory::from_host("agent-a", &options).unwrap();

        // 4 GiB whole, minus 1 reserved: 3 GiB, one block of 2.
        assert_eq!(Some(&2), inventory.capacity_by_kind().get(KIND_MEMORY));
        assert_eq!(2, inventory.unit("block_1").unwrap().capacity);
        assert!(inventory.unit("block_2").is_none());
    }

    #[test]
    fn two_disk_paths_on_one_file_system_are_refused() {
        let (root, mut options) = fake_host();
        options.disk_paths = vec![root.path().to_owned(), root.path().join("proc")];

        let error = Inventory::from_host("agent-a", &options).unwrap_err();

        assert!(
            matches!(&error, InventoryError::Invalid(invalid) if invalid.field == "disk_paths[1]"),
            "{error}"
        );
    }

    #[test]
    fn a_document_without_provider_id_takes_the_agents_and_always_confirms() {
        let text = r#"{"labels": {"zone": "a"}, "confirms_allocations": false,
            "resources": [{"resource_id": "gpu_1", "kind": "gpu", "capacity": 1}]}"#;

        let inventory = Inventory::from_document("agent-b", text).unwrap();

        assert_eq!("agent-b", inventory.registration.provider_id);
        assert!(inventory.registration.confirms_allocations);
        assert_eq!(Some(&MetricSource::Declared), inventory.sources.get("gpu_1"));
    }

    #[test]
    fn a_document_naming_another_provider_or_a_bad_unit_is_refused_with_the_field() {
        let other = r#"{"provider_id": "x", "resources": [{"resource_id": "gpu_1", "kind": "gpu", "capacity": 1}]}"#;
        let negative = r#"{"resources": [{"resource_id": "gpu_1", "kind": "gpu", "capacity": -1}]}"#;

        for (text, field) in [(other, "provider_id"), (negative, "resources[0].capacity"), ("[1]", "registration")] {
            let error = Inventory::from_document("agent-b", text).unwrap_err();
            assert!(
                matches!(&error, InventoryError::Invalid(invalid) if invalid.field == field),
                "{field}: {error}"
            );
        }
    }

    #[test]
    fn the_address_and_port_given_replace_the_inventorys_and_are_checked() {
        let text = r#"{"address": "10.0.0.7", "port": 9100,
            "resources": [{"resource_id": "gpu_1", "kind": "gpu", "capacity": 1}]}"#;
        let endpoint = |address: Option<&str>, port: Option<u16>| {
            Inventory::from_document("agent-c", text)
                .unwrap()
                .with_endpoint(address.map(str::to_owned), port)
                .map(|inventory| (inventory.registration.address, inventory.registration.port))
        };

        assert_eq!(Some(Some(9100)), endpoint(None, None).ok().map(|(_, port)| port));
        assert_eq!(Some(Some(9100)), endpoint(Some("10.0.0.7"), None).ok().map(|(_, port)| port));
        assert_eq!(
            (Some("gpu-host".to_owned()), None),
            endpoint(Some("gpu-host"), None).unwrap(),
            "another address drops the document's port"
        );
        assert_eq!(
            (Some("gpu-host".to_owned()), Some(80)),
            endpoint(Some("gpu-host"), Some(80)).unwrap()
        );
        let error = endpoint(Some("not a host"), None).unwrap_err();
        assert!(
            matches!(&error, InventoryError::Invalid(invalid) if invalid.field == "address"),
            "{error}"
        );
    }
}
