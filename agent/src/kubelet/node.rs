//! This machine as a Node: what it registers (labels, taints, capacity read from the kernel,
//! addresses, system info), the conditions it reports from real measurements (memory, disk and
//! PID pressure; Ready when the runtime is), and the Lease it renews every 10 s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::images::oci::oci_arch;

/// The kubelet's port.
pub const KUBELET_PORT: u16 = 10250;
/// Pods per node, Kubernetes' default.
pub const MAX_PODS: u32 = 110;

/// Facts about the machine, read once at start (and refreshed with each status).
#[derive(Debug, Clone, PartialEq)]
pub struct MachineInfo {
    pub cpus: usize,
    pub memory_bytes: u64,
    pub ephemeral_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

/// What the machine is under right now.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pressure {
    pub memory_available_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub disk_total_bytes: u64,
    pub pids_in_use: u64,
    pub pid_max: u64,
}

/// How much must stay available before a pressure condition turns True: the kubelet's
/// `--eviction-hard` (`memory.available<100Mi,nodefs.available<10%` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub memory_available: Amount,
    pub nodefs_available: Amount,
}

/// A threshold: bytes, or a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Bytes(u64),
    Percent(u8),
}

impl Amount {
    fn below(self, available: u64, total: u64) -> bool {
        match self {
            Amount::Bytes(min) => available < min,
            Amount::Percent(p) => {
                total > 0 && u128::from(available) * 100 < u128::from(total) * u128::from(p)
            }
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            memory_available: Amount::Bytes(100 << 20),
            nodefs_available: Amount::Percent(10),
        }
    }
}

impl std::str::FromStr for Thresholds {
    type Err = String;

    /// `signal<amount` pairs separated by commas, e.g. `memory.available<200Mi,nodefs.available<5%`.
    fn from_str(text: &str) -> Result<Thresholds, String> {
        let mut out = Thresholds::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, amount) = part
                .split_once('<')
                .ok_or_else(|| format!("{part:?} is not SIGNAL<AMOUNT"))?;
            let amount = match amount.strip_suffix('%') {
                Some(p) => Amount::Percent(
                    p.parse()
                        .ok()
                        .filter(|p| *p <= 100)
                        .ok_or_else(|| format!("bad percentage in {part:?}"))?,
                ),
                None => Amount::Bytes(
                    shoal_common::quantity::parse_value(amount)
                        .ok()
                        .and_then(|v| u64::try_from(v).ok())
                        .ok_or_else(|| format!("bad quantity in {part:?}"))?,
                ),
            };
            match signal {
                "memory.available" => out.memory_available = amount,
                "nodefs.available" => out.nodefs_available = amount,
                other => {
                    return Err(format!(
                    "unsupported eviction signal {other:?} (memory.available, nodefs.available)"
                ))
                }
            }
        }
        Ok(out)
    }
}

/// PIDs in use above this share of `pid_max` mean PID pressure.
const PID_USE_MAX_PERCENT: u64 = 90;

/// How the node is set up by flags.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub name: String,
    pub ip: IpAddr,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Whether this node also runs the control plane (role labels, as k3s sets them).
    pub server: bool,
    pub runtime_version: String,
    /// When pressure conditions turn True.
    pub eviction: Thresholds,
    /// The node API's port, as advertised.
    pub kubelet_port: u16,
}

/// The Node this agent registers.
pub fn node_object(settings: &NodeSettings, machine: &MachineInfo) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            labels: Some(node_labels(settings)),
            annotations: Some(
                [
                    ("node.alpha.kubernetes.io/ttl", "0"),
                    (
                        "volumes.kubernetes.io/controller-managed-attach-detach",
                        "true",
                    ),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!settings.taints.is_empty()).then(|| settings.taints.clone()),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            node_info: Some(system_info(settings, machine)),
            ..NodeStatus::default()
        }),
    }
}

fn node_labels(settings: &NodeSettings) -> BTreeMap<String, String> {
    let arch = oci_arch();
    let mut labels: BTreeMap<String, String> = [
        ("beta.kubernetes.io/arch", arch),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
        ("kubernetes.io/hostname", settings.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("node.kubernetes.io/instance-type", "shoal"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if settings.server {
        labels.insert(
            "node-role.kubernetes.io/control-plane".into(),
            "true".into(),
        );
        labels.insert("node-role.kubernetes.io/master".into(), "true".into());
    }
    labels.extend(settings.labels.clone());
    labels
}

fn system_info(settings: &NodeSettings, machine: &MachineInfo) -> NodeSystemInfo {
    NodeSystemInfo {
        architecture: oci_arch().into(),
        boot_id: machine.boot_id.clone(),
        container_runtime_version: settings.runtime_version.clone(),
        kernel_version: machine.kernel_version.clone(),
        kube_proxy_version: String::new(),
        kubelet_version: format!(
            "v{}",
            shoal_common::KUBERNETES_VERSION.trim_start_matches('v')
        ),
        machine_id: machine.machine_id.clone(),
        operating_system: "linux".into(),
        os_image: machine.os_image.clone(),
        system_uuid: machine.machine_id.clone(),
        swap: None,
    }
}

/// The node's status at `now`: capacity, addresses, conditions (keeping transition times of
/// unchanged ones from `previous`).
pub fn node_status(
    settings: &NodeSettings,
    machine: &MachineInfo,
    pressure: &Pressure,
    runtime_ready: Result<(), String>,
    now: Timestamp,
    previous: &[NodeCondition],
) -> NodeStatus {
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu", machine.cpus.to_string()),
        ("memory", format!("{}Ki", machine.memory_bytes / 1024)),
        (
            "ephemeral-storage",
            format!("{}Ki", machine.ephemeral_bytes / 1024),
        ),
        ("pods", MAX_PODS.to_string()),
        ("hugepages-1Gi", "0".into()),
        ("hugepages-2Mi", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(conditions(
            pressure,
            &settings.eviction,
            runtime_ready,
            now,
            previous,
        )),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: settings.ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: settings.name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(settings.kubelet_port),
            }),
        }),
        node_info: Some(system_info(settings, machine)),
        ..NodeStatus::default()
    }
}

/// The four conditions, from measurements.
pub fn conditions(
    pressure: &Pressure,
    thresholds: &Thresholds,
    runtime_ready: Result<(), String>,
    now: Timestamp,
    previous: &[NodeCondition],
) -> Vec<NodeCondition> {
    let memory = thresholds
        .memory_available
        .below(pressure.memory_available_bytes, pressure.memory_total_bytes);
    let disk = thresholds
        .nodefs_available
        .below(pressure.disk_available_bytes, pressure.disk_total_bytes);
    let pids =
        pressure.pid_max > 0 && pressure.pids_in_use * 100 > pressure.pid_max * PID_USE_MAX_PERCENT;
    fn pick<'a>(
        bad: bool,
        yes: (&'a str, &'a str),
        no: (&'a str, &'a str),
    ) -> (&'a str, (&'a str, &'a str)) {
        if bad {
            ("True", yes)
        } else {
            ("False", no)
        }
    }
    let (ready_status, ready_reason, ready_message) = match &runtime_ready {
        Ok(()) => (
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        ),
        Err(why) => ("False", "KubeletNotReady", why.clone()),
    };
    let rows: [(&str, &str, &str, String); 4] = {
        let (s, (r, m)) = pick(
            memory,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
        );
        let mem = ("MemoryPressure", s, r, m.to_string());
        let (s, (r, m)) = pick(
            disk,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        );
        let dsk = ("DiskPressure", s, r, m.to_string());
        let (s, (r, m)) = pick(
            pids,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        );
        let pid = ("PIDPressure", s, r, m.to_string());
        [
            mem,
            dsk,
            pid,
            ("Ready", ready_status, ready_reason, ready_message),
        ]
    };
    rows.into_iter()
        .map(|(type_, status, reason, message)| {
            condition(type_, status, reason, message, now, previous)
        })
        .collect()
}

/// One node condition heartbeat at `now`, keeping its transition time from `previous` while
/// its status is unchanged (the real and the simulated kubelet share this).
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
    previous: &[NodeCondition],
) -> NodeCondition {
    let transition = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(transition),
    }
}

/// Reads the machine's facts from /proc and the data directory's filesystem.
pub fn read_machine(data_dir: &Path) -> MachineInfo {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let os_image = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into());
    MachineInfo {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        memory_bytes: meminfo("MemTotal").unwrap_or(0),
        ephemeral_bytes: filesystem(data_dir).map_or(0, |(total, _)| total),
        kernel_version: read("/proc/sys/kernel/osrelease"),
        os_image,
        machine_id: read("/etc/machine-id"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
    }
}

/// Reads the pressure measurements.
pub fn read_pressure(data_dir: &Path) -> Pressure {
    let (disk_total_bytes, disk_available_bytes) = filesystem(data_dir).unwrap_or((0, 0));
    let pids_in_use = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as u64
        })
        .unwrap_or(0);
    Pressure {
        memory_available_bytes: meminfo("MemAvailable").unwrap_or(u64::MAX),
        memory_total_bytes: meminfo("MemTotal").unwrap_or(0),
        disk_available_bytes,
        disk_total_bytes,
        pids_in_use,
        pid_max: std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
    }
}

/// A `/proc/meminfo` field in bytes.
fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Total and available bytes of the filesystem holding `path`.
fn filesystem(path: &Path) -> Option<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let block = stat.fragment_size();
    Some((stat.blocks() * block, stat.blocks_available() * block))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings() -> NodeSettings {
        NodeSettings {
            name: "n1".into(),
            ip: "10.0.0.5".parse().unwrap(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            taints: vec![],
            server: true,
            runtime_version: "containerd://1.6.20".into(),
            eviction: Thresholds::default(),
            kubelet_port: KUBELET_PORT,
        }
    }

    fn machine() -> MachineInfo {
        MachineInfo {
            cpus: 2,
            memory_bytes: 4 << 30,
            ephemeral_bytes: 100 << 30,
            kernel_version: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            machine_id: "abc".into(),
            boot_id: "boot".into(),
        }
    }

    fn healthy() -> Pressure {
        Pressure {
            memory_available_bytes: 1 << 30,
            memory_total_bytes: 4 << 30,
            disk_available_bytes: 50 << 30,
            disk_total_bytes: 100 << 30,
            pids_in_use: 300,
            pid_max: 4_194_304,
        }
    }

    #[test]
    fn a_server_node_carries_role_labels_and_its_own_labels() {
        let node = node_object(&settings(), &machine());
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "n1");
        assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
        assert_eq!(labels["zone"], "a");
    }

    #[test]
    fn capacity_comes_from_the_machine() {
        let status = node_status(
            &settings(),
            &machine(),
            &healthy(),
            Ok(()),
            Timestamp::UNIX_EPOCH,
            &[],
        );
        let capacity = status.capacity.unwrap();
        assert_eq!(capacity["cpu"].0, "2");
        assert_eq!(capacity["memory"].0, "4194304Ki");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(status.addresses.unwrap()[0].address, "10.0.0.5");
    }

    #[test]
    fn pressure_and_runtime_trouble_show_in_conditions() {
        let low = Pressure {
            memory_available_bytes: 50 << 20,
            disk_available_bytes: 5 << 30,
            ..healthy()
        };
        let now = Timestamp::UNIX_EPOCH;
        let conds = conditions(
            &low,
            &Thresholds::default(),
            Err("container runtime is down".into()),
            now,
            &[],
        );
        let status = |t: &str| conds.iter().find(|c| c.type_ == t).unwrap().status.clone();
        assert_eq!(status("MemoryPressure"), "True");
        assert_eq!(status("DiskPressure"), "True");
        assert_eq!(status("PIDPressure"), "False");
        assert_eq!(status("Ready"), "False");
        let ok = conditions(&healthy(), &Thresholds::default(), Ok(()), now, &[]);
        assert!(ok
            .iter()
            .all(|c| (c.type_ == "Ready") == (c.status == "True")));
    }

    #[test]
    fn eviction_thresholds_are_read_as_the_kubelet_reads_them() {
        let t: Thresholds = "memory.available<200Mi, nodefs.available<5%"
            .parse()
            .unwrap();
        assert_eq!(
            t,
            Thresholds {
                memory_available: Amount::Bytes(200 << 20),
                nodefs_available: Amount::Percent(5)
            }
        );
        assert!("imagefs.available<1%".parse::<Thresholds>().is_err());
        assert!("nodefs.available<150%".parse::<Thresholds>().is_err());
        let tight = Pressure {
            disk_available_bytes: 8 << 30,
            ..healthy()
        };
        let now = Timestamp::UNIX_EPOCH;
        let status = |t: &Thresholds| conditions(&tight, t, Ok(()), now, &[])[1].status.clone();
        assert_eq!(
            status(&Thresholds::default()),
            "True",
            "8% free is pressure by default"
        );
        assert_eq!(status(&"nodefs.available<5%".parse().unwrap()), "False");
    }

    #[test]
    fn transition_times_stay_while_status_is_unchanged() {
        let first = conditions(
            &healthy(),
            &Thresholds::default(),
            Ok(()),
            Timestamp::UNIX_EPOCH,
            &[],
        );
        let later = Timestamp::from_second(100).unwrap();
        let second = conditions(&healthy(), &Thresholds::default(), Ok(()), later, &first);
        assert_eq!(
            second[3].last_transition_time,
            first[3].last_transition_time
        );
        assert_eq!(second[3].last_heartbeat_time, Some(Time(later)));
    }

    #[test]
    fn the_machine_can_be_read() {
        let info = read_machine(Path::new("/"));
        assert!(info.cpus >= 1 && info.memory_bytes > 0 && info.ephemeral_bytes > 0);
        let pressure = read_pressure(Path::new("/"));
        assert!(pressure.pids_in_use > 0 && pressure.pid_max > 0);
    }
}
