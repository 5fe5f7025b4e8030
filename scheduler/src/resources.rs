//! Resource amounts: what a pod effectively requests (Kubernetes' rules for init containers,
//! sidecars and overhead) and what a node offers (`status.allocatable`).
//!
//! CPU is kept in milli-CPU; memory, ephemeral storage and scalar resources (extended
//! resources such as `example.com/gpu`, `hugepages-*`, `attachable-volumes-*`) in whole units.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, NodeStatus, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::ParsedQuantity;

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";

/// CPU that scoring assumes for a container that requests none (kube-scheduler's
/// `DefaultMilliCPURequest`), so best-effort pods still spread.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory that scoring assumes for a container that requests none (`DefaultMemoryRequest`).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Whether the scheduler accounts for `name` beyond cpu/memory/ephemeral-storage/pods, as
/// kube-scheduler's `IsScalarResourceName`: extended and prefixed-native resources (a `/` in
/// the name), huge pages and attachable volumes. Other unqualified names are ignored.
pub fn is_scalar_resource(name: &str) -> bool {
    name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
        || (name.contains('/') && !name.starts_with("requests."))
}

/// Amounts of every resource the scheduler accounts for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceAmounts {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Scalar resources by name, sorted by name; absent means zero.
    pub scalar: Vec<(String, i64)>,
}

impl ResourceAmounts {
    /// The amount of scalar resource `name` (zero when absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar
            .binary_search_by(|(key, _)| key.as_str().cmp(name))
            .map(|index| self.scalar[index].1)
            .unwrap_or(0)
    }

    /// True when nothing at all is requested.
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.iter().all(|(_, amount)| *amount == 0)
    }

    /// Adds `other` (`sign` = 1) or takes it away (`sign` = -1).
    pub(crate) fn accumulate(&mut self, other: &ResourceAmounts, sign: i64) {
        self.milli_cpu = self.milli_cpu.saturating_add(sign * other.milli_cpu);
        self.memory = self.memory.saturating_add(sign * other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(sign * other.ephemeral_storage);
        for (name, amount) in &other.scalar {
            match self
                .scalar
                .binary_search_by(|(key, _)| key.as_str().cmp(name))
            {
                Ok(index) => {
                    self.scalar[index].1 = self.scalar[index].1.saturating_add(sign * amount)
                }
                Err(index) => self.scalar.insert(index, (name.clone(), sign * amount)),
            }
        }
        // Drop entries back at zero so a node's usage does not grow a tail of dead names.
        self.scalar.retain(|(_, amount)| *amount != 0);
    }

    /// Builds amounts from a resource list already in canonical units, keeping only the
    /// resources the scheduler accounts for.
    fn from_canonical(list: &BTreeMap<String, i64>) -> Self {
        let mut amounts = ResourceAmounts::default();
        for (name, &amount) in list {
            match name.as_str() {
                CPU => amounts.milli_cpu = amount,
                MEMORY => amounts.memory = amount,
                EPHEMERAL_STORAGE => amounts.ephemeral_storage = amount,
                _ if is_scalar_resource(name) => amounts.scalar.push((name.clone(), amount)),
                _ => {}
            }
        }
        amounts
    }
}

/// What a pod asks of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// Effective requests (`PodRequests` in component-helpers), used by the fit filter and
    /// the balanced-allocation score.
    pub requested: ResourceAmounts,
    /// CPU with [`DEFAULT_MILLI_CPU_REQUEST`] for containers requesting none; used by the
    /// least-allocated score.
    pub non_zero_milli_cpu: i64,
    /// Memory with [`DEFAULT_MEMORY_REQUEST`] for containers requesting none.
    pub non_zero_memory: i64,
}

/// Converts one quantity to the canonical unit of `resource`; bad or negative quantities
/// count as zero with a note (the API server would have rejected them).
fn canonical_amount(
    resource: &str,
    quantity: &Quantity,
    context: &str,
    notes: &mut Vec<String>,
) -> i64 {
    let parsed = match ParsedQuantity::parse(&quantity.0) {
        Ok(parsed) => parsed,
        Err(error) => {
            notes.push(format!("{context}: {resource} {error}; counted as 0"));
            return 0;
        }
    };
    if parsed.is_negative() {
        notes.push(format!(
            "{context}: {resource} {:?} is negative; counted as 0",
            quantity.0
        ));
        return 0;
    }
    let converted = if resource == CPU {
        parsed.milli_value()
    } else {
        parsed.value()
    };
    converted.unwrap_or_else(|| {
        notes.push(format!(
            "{context}: {resource} {:?} does not fit in 64 bits; counted as 0",
            quantity.0
        ));
        0
    })
}

type CanonicalList = BTreeMap<String, i64>;

/// A container's requests, with limits standing in for missing requests as the API server's
/// defaulting does (Shoal's API server does not copy them, so the scheduler must).
fn container_requests(container: &Container, notes: &mut Vec<String>) -> CanonicalList {
    let context = format!("container {:?}", container.name);
    let mut list = CanonicalList::new();
    let Some(resources) = &container.resources else {
        return list;
    };
    if let Some(requests) = &resources.requests {
        for (name, quantity) in requests {
            list.insert(
                name.clone(),
                canonical_amount(name, quantity, &context, notes),
            );
        }
    }
    if let Some(limits) = &resources.limits {
        for (name, quantity) in limits {
            if !list.contains_key(name) {
                list.insert(
                    name.clone(),
                    canonical_amount(name, quantity, &context, notes),
                );
            }
        }
    }
    list
}

fn add_list(target: &mut CanonicalList, source: &CanonicalList) {
    for (name, amount) in source {
        let entry = target.entry(name.clone()).or_insert(0);
        *entry = entry.saturating_add(*amount);
    }
}

fn max_list(target: &mut CanonicalList, source: &CanonicalList) {
    for (name, amount) in source {
        let entry = target.entry(name.clone()).or_insert(0);
        *entry = (*entry).max(*amount);
    }
}

/// Applies kube-scheduler's "non-missing" defaults: a container that names no cpu (memory)
/// request counts as [`DEFAULT_MILLI_CPU_REQUEST`] ([`DEFAULT_MEMORY_REQUEST`]). An explicit
/// zero stays zero.
fn with_non_missing_defaults(list: &CanonicalList) -> CanonicalList {
    let mut defaulted = list.clone();
    defaulted
        .entry(CPU.to_string())
        .or_insert(DEFAULT_MILLI_CPU_REQUEST);
    defaulted
        .entry(MEMORY.to_string())
        .or_insert(DEFAULT_MEMORY_REQUEST);
    defaulted
}

fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// `AggregateContainerRequests` + overhead: regular containers and sidecars (init containers
/// with `restartPolicy: Always`) add up; every other init container runs alone next to the
/// sidecars started before it, so the pod needs the max of those and the running sum.
fn aggregate(
    containers: &[(CanonicalList, bool)],
    init_containers: &[(CanonicalList, bool)],
    overhead: &CanonicalList,
    non_missing: bool,
) -> CanonicalList {
    let effective = |list: &CanonicalList| {
        if non_missing {
            with_non_missing_defaults(list)
        } else {
            list.clone()
        }
    };
    let mut total = CanonicalList::new();
    for (list, _) in containers {
        add_list(&mut total, &effective(list));
    }
    let mut sidecars_so_far = CanonicalList::new();
    let mut init_peak = CanonicalList::new();
    for (list, sidecar) in init_containers {
        let list = effective(list);
        let needed = if *sidecar {
            add_list(&mut total, &list);
            add_list(&mut sidecars_so_far, &list);
            sidecars_so_far.clone()
        } else {
            let mut alone = list;
            add_list(&mut alone, &sidecars_so_far);
            alone
        };
        max_list(&mut init_peak, &needed);
    }
    max_list(&mut total, &init_peak);
    add_list(&mut total, overhead);
    total
}

/// The effective requests of a pod spec; unparsable quantities are noted and count as 0.
pub fn pod_requests(spec: &PodSpec, notes: &mut Vec<String>) -> PodRequests {
    let containers: Vec<(CanonicalList, bool)> = spec
        .containers
        .iter()
        .map(|c| (container_requests(c, notes), false))
        .collect();
    let init_containers: Vec<(CanonicalList, bool)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (container_requests(c, notes), is_sidecar(c)))
        .collect();
    let mut overhead = CanonicalList::new();
    for (name, quantity) in spec.overhead.iter().flatten() {
        overhead.insert(
            name.clone(),
            canonical_amount(name, quantity, "pod overhead", notes),
        );
    }

    let requested = aggregate(&containers, &init_containers, &overhead, false);
    let non_zero = aggregate(&containers, &init_containers, &overhead, true);
    PodRequests {
        requested: ResourceAmounts::from_canonical(&requested),
        non_zero_milli_cpu: non_zero.get(CPU).copied().unwrap_or(0),
        non_zero_memory: non_zero.get(MEMORY).copied().unwrap_or(0),
    }
}

/// What a node offers to pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub resources: ResourceAmounts,
    /// How many pods the node accepts (`pods`); zero when unreported, which admits none.
    pub pods: i64,
}

/// Reads `status.allocatable`. A node that reports no allocatable at all falls back to
/// `status.capacity` (kubelets always report both; this only helps hand-made nodes).
pub fn node_allocatable(status: Option<&NodeStatus>, notes: &mut Vec<String>) -> Allocatable {
    let list = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
    let mut canonical = CanonicalList::new();
    let mut pods = 0;
    for (name, quantity) in list.into_iter().flatten() {
        let amount = canonical_amount(name, quantity, "node allocatable", notes);
        if name == PODS {
            pods = amount;
        } else {
            canonical.insert(name.clone(), amount);
        }
    }
    Allocatable {
        resources: ResourceAmounts::from_canonical(&canonical),
        pods,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::pod;
    use serde_json::json;

    const MI: i64 = 1024 * 1024;

    fn requests_of(spec: serde_json::Value) -> (PodRequests, Vec<String>) {
        let pod = pod(json!({"metadata": {"name": "p"}, "spec": spec}));
        let mut notes = Vec::new();
        let requests = pod_requests(pod.spec.as_ref().unwrap(), &mut notes);
        (requests, notes)
    }

    #[test]
    fn containers_add_up_and_overhead_is_added() {
        let (requests, notes) = requests_of(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "1", "example.com/gpu": "2", "hugepages-2Mi": "4Mi", "unqualified": "7"}}}
            ],
            "overhead": {"cpu": "50m", "memory": "1Mi"}
        }));
        assert!(notes.is_empty());
        assert_eq!(requests.requested.milli_cpu, 1150);
        assert_eq!(requests.requested.memory, 65 * MI);
        assert_eq!(
            requests.requested.scalar,
            vec![
                ("example.com/gpu".to_string(), 2),
                ("hugepages-2Mi".to_string(), 4 * MI)
            ]
        );
        // b names no memory: scoring assumes 200Mi for it.
        assert_eq!(
            requests.non_zero_memory,
            64 * MI + DEFAULT_MEMORY_REQUEST + MI
        );
        assert_eq!(requests.non_zero_milli_cpu, 1150);
    }

    #[test]
    fn init_containers_take_the_max_and_sidecars_add_up() {
        // Regular: 1 cpu. Sidecar: 500m, runs alongside everything after it. A plain init
        // container of 2 cpu started after the sidecar needs 2.5 cpu at its peak.
        let (requests, _) = requests_of(json!({
            "initContainers": [
                {"name": "setup", "resources": {"requests": {"cpu": "1200m"}}},
                {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m"}}},
                {"name": "migrate", "resources": {"requests": {"cpu": "2"}}}
            ],
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "1"}}}]
        }));
        assert_eq!(requests.requested.milli_cpu, 2500);

        let (small_init, _) = requests_of(json!({
            "initContainers": [{"name": "setup", "resources": {"requests": {"memory": "10Mi"}}}],
            "containers": [{"name": "app", "resources": {"requests": {"memory": "100Mi"}}}]
        }));
        assert_eq!(small_init.requested.memory, 100 * MI);
    }

    #[test]
    fn limits_stand_in_for_missing_requests() {
        let (requests, _) = requests_of(json!({
            "containers": [{"name": "a", "resources": {
                "requests": {"cpu": "100m"},
                "limits": {"cpu": "2", "memory": "1Gi"}
            }}]
        }));
        assert_eq!(requests.requested.milli_cpu, 100);
        assert_eq!(requests.requested.memory, 1024 * MI);
    }

    #[test]
    fn best_effort_pods_request_nothing_but_score_as_defaults() {
        let (requests, _) = requests_of(json!({"containers": [{"name": "a"}, {"name": "b"}]}));
        assert!(requests.requested.is_zero());
        assert_eq!(requests.non_zero_milli_cpu, 2 * DEFAULT_MILLI_CPU_REQUEST);
        assert_eq!(requests.non_zero_memory, 2 * DEFAULT_MEMORY_REQUEST);

        // An explicit zero is not "missing".
        let (zero, _) = requests_of(
            json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "0"}}}]}),
        );
        assert_eq!(zero.non_zero_milli_cpu, 0);
    }

    #[test]
    fn unparsable_requests_count_as_zero_with_a_note() {
        let (requests, notes) = requests_of(json!({
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "lots", "memory": "-1Gi"}}}]
        }));
        assert_eq!(requests.requested.milli_cpu, 0);
        assert_eq!(requests.requested.memory, 0);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("container \"a\": cpu"), "{notes:?}");
        assert!(notes[1].contains("negative"), "{notes:?}");
    }

    #[test]
    fn scalar_resource_names_follow_kubernetes() {
        assert!(is_scalar_resource("example.com/gpu"));
        assert!(is_scalar_resource("nvidia.com/gpu"));
        assert!(is_scalar_resource("hugepages-1Gi"));
        assert!(is_scalar_resource("attachable-volumes-csi-x"));
        assert!(is_scalar_resource("kubernetes.io/batch-cpu"));
        assert!(!is_scalar_resource("requests.example.com/gpu"));
        assert!(!is_scalar_resource("storage"));
    }

    #[test]
    fn accumulate_adds_and_removes_scalars() {
        let mut total = ResourceAmounts::default();
        let gpu = ResourceAmounts {
            milli_cpu: 10,
            scalar: vec![("example.com/gpu".to_string(), 1)],
            ..Default::default()
        };
        total.accumulate(&gpu, 1);
        total.accumulate(&gpu, 1);
        assert_eq!(total.scalar("example.com/gpu"), 2);
        total.accumulate(&gpu, -1);
        total.accumulate(&gpu, -1);
        assert_eq!(total, ResourceAmounts::default());
    }
}
