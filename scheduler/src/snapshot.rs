//! The scheduler's view of the cluster: nodes, the pods bound (or assumed) to them, and the
//! aggregates decisions need, kept up to date incrementally so a loop can place thousands of
//! pods in a row without rebuilding anything.
//!
//! Per node: requested resources (plain and with scoring defaults), pod count, used host
//! ports and the node's pods. Cluster-wide: a label index of pods per namespace, pods per
//! controller per node (default spreading), and the inter-pod affinity terms of existing pods
//! grouped by identical term with counts per node (so replicas sharing a term cost one check).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};

use crate::affinity::AffinityTerm;
use crate::node_info::NodeInfo;
use crate::pod_index::{PodId, PodLabelIndex};
use crate::pod_info::{HostPort, PodInfo, BIND_ALL_IP};
use crate::resources::ResourceAmounts;
use crate::selector::Labels;
use crate::spread::SpreadSelector;

/// Index of a node slot in the snapshot.
pub(crate) type NodeId = usize;

static NO_LABELS: Labels = BTreeMap::new();

/// What the pods on a node use.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeUsage {
    pub requested: ResourceAmounts,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
    pub pod_count: i64,
    /// (protocol, port) → IPs bound with how many pods bind each.
    host_ports: HashMap<(String, i32), Vec<(String, u32)>>,
    pub pods: Vec<PodId>,
}

impl NodeUsage {
    fn add(&mut self, id: PodId, pod: &PodInfo) {
        self.requested.accumulate(&pod.requests.requested, 1);
        self.non_zero_milli_cpu += pod.requests.non_zero_milli_cpu;
        self.non_zero_memory += pod.requests.non_zero_memory;
        self.pod_count += 1;
        for port in &pod.host_ports {
            let ips = self
                .host_ports
                .entry((port.protocol.clone(), port.port))
                .or_default();
            match ips.iter_mut().find(|(ip, _)| *ip == port.ip) {
                Some((_, count)) => *count += 1,
                None => ips.push((port.ip.clone(), 1)),
            }
        }
        self.pods.push(id);
    }

    fn remove(&mut self, id: PodId, pod: &PodInfo) {
        self.requested.accumulate(&pod.requests.requested, -1);
        self.non_zero_milli_cpu -= pod.requests.non_zero_milli_cpu;
        self.non_zero_memory -= pod.requests.non_zero_memory;
        self.pod_count -= 1;
        for port in &pod.host_ports {
            let key = (port.protocol.clone(), port.port);
            if let Some(ips) = self.host_ports.get_mut(&key) {
                if let Some(position) = ips.iter().position(|(ip, _)| *ip == port.ip) {
                    ips[position].1 -= 1;
                    if ips[position].1 == 0 {
                        ips.swap_remove(position);
                    }
                }
                if ips.is_empty() {
                    self.host_ports.remove(&key);
                }
            }
        }
        if let Some(position) = self.pods.iter().position(|p| *p == id) {
            self.pods.swap_remove(position);
        }
    }

    /// `HostPortInfo.CheckConflict`: a wildcard IP conflicts with the port on any IP; a
    /// specific IP with the same IP or the wildcard.
    pub fn port_conflicts(&self, wanted: &HostPort) -> bool {
        let Some(ips) = self.host_ports.get(&(wanted.protocol.clone(), wanted.port)) else {
            return false;
        };
        if wanted.ip == BIND_ALL_IP {
            return !ips.is_empty();
        }
        ips.iter()
            .any(|(ip, _)| ip == BIND_ALL_IP || *ip == wanted.ip)
    }
}

/// A node slot: the node (absent while pods name a node the snapshot has not seen, or after
/// the node was deleted but before its pods were) and its usage.
#[derive(Debug, Clone)]
pub(crate) struct NodeSlot {
    pub name: String,
    pub info: Option<NodeInfo>,
    pub usage: NodeUsage,
}

#[derive(Debug, Clone)]
pub(crate) struct PodEntry {
    pub info: PodInfo,
    pub node: NodeId,
}

/// The role an existing pod's affinity term plays for pods being scheduled.
// Variant names are the Kubernetes field names, hence the shared suffix.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TermRole {
    RequiredAffinity,
    RequiredAntiAffinity,
    PreferredAffinity(i64),
    PreferredAntiAffinity(i64),
}

/// Aggregate resource usage of one node, for callers that want to look.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsageSummary {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
}

/// Nodes and the pods bound to them, with per-node aggregates maintained incrementally.
#[derive(Debug, Default)]
pub struct Snapshot {
    nodes: Vec<Option<NodeSlot>>,
    free_node_slots: Vec<NodeId>,
    node_ids: HashMap<String, NodeId>,
    /// Nodes that exist, in the order filters visit them: zones interleaved round-robin
    /// (kube-scheduler's node tree), so sampling a share of the nodes sees every zone.
    visit_order: Vec<NodeId>,
    pods: Vec<Option<PodEntry>>,
    free_pod_slots: Vec<PodId>,
    /// namespace → name → pod.
    pod_ids: HashMap<String, HashMap<String, PodId>>,
    label_index: PodLabelIndex,
    /// controller UID → node → pods of that controller (terminating pods excluded).
    controller_pods: HashMap<String, HashMap<NodeId, i64>>,
    /// (role, term) of existing pods → node → how many pods there carry it.
    term_groups: HashMap<(TermRole, AffinityTerm), HashMap<NodeId, i64>>,
    namespace_labels: HashMap<String, Labels>,
}

/// What [`Snapshot::upsert_node`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUpsert {
    /// Whether what the scheduler reads from the node changed.
    pub changed: bool,
    /// Values that could not be read.
    pub notes: Vec<String>,
}

impl Snapshot {
    pub fn new() -> Self {
        Self::default()
    }

    /// A snapshot of `nodes` and `pods` (pods that are unbound or finished are skipped).
    pub fn from_objects<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut snapshot = Snapshot::new();
        for node in nodes {
            snapshot.upsert_node(node);
        }
        for pod in pods {
            snapshot.upsert_pod(pod);
        }
        snapshot
    }

    /// Adds or replaces a node. Returns what the scheduler reads from it changed (a new node,
    /// or new labels, taints, cordon, allocatable or zone — kube-scheduler's "node scheduling
    /// properties"; a heartbeat changes none of them) and notes about values that could not
    /// be read.
    pub fn upsert_node(&mut self, node: &Node) -> NodeUpsert {
        self.replace_node(node).0
    }

    /// [`Snapshot::upsert_node`], also returning the node as it was before when it changed
    /// (`None` for a new node).
    pub(crate) fn replace_node(&mut self, node: &Node) -> (NodeUpsert, Option<NodeInfo>) {
        let mut info = NodeInfo::from_node(node);
        let notes = std::mem::take(&mut info.notes);
        let id = self.node_slot(&info.name);
        let Some(slot) = self.nodes[id].as_mut() else {
            let unchanged = NodeUpsert {
                changed: false,
                notes,
            };
            return (unchanged, None);
        };
        let changed = slot.info.as_ref() != Some(&info);
        if !changed {
            return (NodeUpsert { changed, notes }, None);
        }
        let order_changes = slot
            .info
            .as_ref()
            .is_none_or(|old| old.zone_key != info.zone_key);
        let previous = slot.info.replace(info);
        if order_changes {
            self.rebuild_visit_order();
        }
        (NodeUpsert { changed, notes }, previous)
    }

    /// Removes a node. Pods still bound to it keep being accounted (as kube-scheduler's
    /// cache does) until they are removed too.
    pub fn remove_node(&mut self, name: &str) {
        self.take_node(name);
    }

    /// [`Snapshot::remove_node`], returning the node removed.
    pub(crate) fn take_node(&mut self, name: &str) -> Option<NodeInfo> {
        let &id = self.node_ids.get(name)?;
        let removed = self.nodes[id].as_mut().and_then(|slot| slot.info.take());
        self.release_node_slot_if_unused(id);
        self.rebuild_visit_order();
        removed
    }

    /// Records a namespace's labels, which pod affinity `namespaceSelector`s match against.
    /// Namespaces never recorded have no labels.
    pub fn upsert_namespace(&mut self, namespace: &Namespace) {
        let Some(name) = namespace.metadata.name.clone() else {
            return;
        };
        self.namespace_labels
            .insert(name, namespace.metadata.labels.clone().unwrap_or_default());
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespace_labels.remove(name);
    }

    /// Adds or replaces a pod bound to a node (`spec.nodeName` set). A pod that finished
    /// (Succeeded/Failed) is removed; a pod without a node is ignored (it is either pending
    /// or assumed, and an assumed pod stays until it is seen bound or is removed). Returns
    /// notes about values that could not be read.
    pub fn upsert_pod(&mut self, pod: &Pod) -> Vec<String> {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            self.remove_pod(namespace, name);
            return Vec::new();
        }
        let info = PodInfo::from_pod(pod);
        let Some(node_name) = info.node_name.clone() else {
            return Vec::new();
        };
        self.insert_pod(info, &node_name)
    }

    /// Accounts `pod` on `node_name` right after deciding, before the binding is confirmed,
    /// so the next decision sees it. If binding fails, call [`Snapshot::remove_pod`].
    pub fn assume(&mut self, pod: &Pod, node_name: &str) -> Vec<String> {
        self.assume_info(PodInfo::from_pod(pod), node_name)
    }

    /// Removes a pod; returns whether it was there.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> bool {
        self.take_pod(namespace, name).is_some()
    }

    /// [`Snapshot::remove_pod`], returning the pod removed (with the node it was on).
    pub(crate) fn take_pod(&mut self, namespace: &str, name: &str) -> Option<PodInfo> {
        let id = self
            .pod_ids
            .get_mut(namespace)
            .and_then(|names| names.remove(name))?;
        if self.pod_ids.get(namespace).is_some_and(HashMap::is_empty) {
            self.pod_ids.remove(namespace);
        }
        let entry = self.pods[id].take()?;
        self.free_pod_slots.push(id);
        self.unindex_pod(id, &entry);
        self.release_node_slot_if_unused(entry.node);
        Some(entry.info)
    }

    /// [`Snapshot::assume`] for a pod already read.
    pub(crate) fn assume_info(&mut self, mut info: PodInfo, node_name: &str) -> Vec<String> {
        info.node_name = Some(node_name.to_string());
        self.insert_pod(info, node_name)
    }

    /// The pod as accounted on its node.
    pub(crate) fn pod_info(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        let &id = self.pod_ids.get(namespace)?.get(name)?;
        self.pod(id).map(|entry| &entry.info)
    }

    /// An existing node and what its pods use.
    pub(crate) fn node_with_usage(&self, name: &str) -> Option<(&NodeInfo, &NodeUsage)> {
        let slot = self.slot(*self.node_ids.get(name)?)?;
        Some((slot.info.as_ref()?, &slot.usage))
    }

    /// Number of nodes pods can be scheduled to.
    pub fn node_count(&self) -> usize {
        self.visit_order.len()
    }

    /// Number of pods accounted on nodes (including assumed ones).
    pub fn pod_count(&self) -> usize {
        self.pods.len() - self.free_pod_slots.len()
    }

    /// Names of the schedulable nodes in visiting order.
    pub fn node_names(&self) -> Vec<&str> {
        self.visit_order
            .iter()
            .filter_map(|&id| self.nodes[id].as_ref().map(|slot| slot.name.as_str()))
            .collect()
    }

    /// What the pods on `node_name` request.
    pub fn node_usage(&self, node_name: &str) -> Option<NodeUsageSummary> {
        let slot = self.nodes[*self.node_ids.get(node_name)?].as_ref()?;
        Some(NodeUsageSummary {
            milli_cpu: slot.usage.requested.milli_cpu,
            memory: slot.usage.requested.memory,
            ephemeral_storage: slot.usage.requested.ephemeral_storage,
            pods: slot.usage.pod_count,
        })
    }

    fn insert_pod(&mut self, mut info: PodInfo, node_name: &str) -> Vec<String> {
        let notes = std::mem::take(&mut info.notes);
        self.remove_pod(&info.namespace, &info.name);
        let node = self.node_slot(node_name);
        let id = match self.free_pod_slots.pop() {
            Some(id) => id,
            None => {
                self.pods.push(None);
                self.pods.len() - 1
            }
        };
        self.pod_ids
            .entry(info.namespace.clone())
            .or_default()
            .insert(info.name.clone(), id);
        let entry = PodEntry { info, node };
        self.index_pod(id, &entry);
        self.pods[id] = Some(entry);
        notes
    }

    fn index_pod(&mut self, id: PodId, entry: &PodEntry) {
        let pod = &entry.info;
        if let Some(slot) = self.nodes[entry.node].as_mut() {
            slot.usage.add(id, pod);
        }
        self.label_index.insert(id, &pod.namespace, &pod.labels);
        if let (Some(controller), false) = (&pod.spread_controller, pod.terminating) {
            *self
                .controller_pods
                .entry(controller.clone())
                .or_default()
                .entry(entry.node)
                .or_default() += 1;
        }
        for key in term_group_keys(pod) {
            *self
                .term_groups
                .entry(key)
                .or_default()
                .entry(entry.node)
                .or_default() += 1;
        }
    }

    fn unindex_pod(&mut self, id: PodId, entry: &PodEntry) {
        let pod = &entry.info;
        if let Some(slot) = self.nodes[entry.node].as_mut() {
            slot.usage.remove(id, pod);
        }
        self.label_index.remove(id, &pod.namespace, &pod.labels);
        if let (Some(controller), false) = (&pod.spread_controller, pod.terminating) {
            decrement_nested(&mut self.controller_pods, controller, entry.node);
        }
        for key in term_group_keys(pod) {
            decrement_nested(&mut self.term_groups, &key, entry.node);
        }
    }

    /// The slot for `name`, created (without a node) if needed.
    fn node_slot(&mut self, name: &str) -> NodeId {
        if let Some(&id) = self.node_ids.get(name) {
            return id;
        }
        let slot = NodeSlot {
            name: name.to_string(),
            info: None,
            usage: NodeUsage::default(),
        };
        let id = match self.free_node_slots.pop() {
            Some(id) => {
                self.nodes[id] = Some(slot);
                id
            }
            None => {
                self.nodes.push(Some(slot));
                self.nodes.len() - 1
            }
        };
        self.node_ids.insert(name.to_string(), id);
        id
    }

    fn release_node_slot_if_unused(&mut self, id: NodeId) {
        let unused = self.nodes[id]
            .as_ref()
            .is_some_and(|slot| slot.info.is_none() && slot.usage.pods.is_empty());
        if unused {
            if let Some(slot) = self.nodes[id].take() {
                self.node_ids.remove(&slot.name);
                self.free_node_slots.push(id);
            }
        }
    }

    fn rebuild_visit_order(&mut self) {
        let mut zones: BTreeMap<&str, Vec<(&str, NodeId)>> = BTreeMap::new();
        for (id, slot) in self.nodes.iter().enumerate() {
            if let Some(NodeSlot {
                name,
                info: Some(info),
                ..
            }) = slot
            {
                zones
                    .entry(info.zone_key.as_str())
                    .or_default()
                    .push((name.as_str(), id));
            }
        }
        let mut zones: Vec<Vec<(&str, NodeId)>> = zones.into_values().collect();
        for zone in &mut zones {
            zone.sort();
        }
        let mut order = Vec::with_capacity(self.node_ids.len());
        let longest = zones.iter().map(Vec::len).max().unwrap_or(0);
        for round in 0..longest {
            for zone in &zones {
                if let Some(&(_, id)) = zone.get(round) {
                    order.push(id);
                }
            }
        }
        self.visit_order = order;
    }

    // Read access for filters and scores.

    pub(crate) fn visit_order(&self) -> &[NodeId] {
        &self.visit_order
    }

    pub(crate) fn slot(&self, id: NodeId) -> Option<&NodeSlot> {
        self.nodes.get(id).and_then(Option::as_ref)
    }

    /// The node of slot `id`, if the node exists.
    pub(crate) fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.slot(id).and_then(|slot| slot.info.as_ref())
    }

    pub(crate) fn node_slot_count(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn pod(&self, id: PodId) -> Option<&PodEntry> {
        self.pods.get(id).and_then(Option::as_ref)
    }

    pub(crate) fn namespace_labels(&self, namespace: &str) -> &Labels {
        self.namespace_labels.get(namespace).unwrap_or(&NO_LABELS)
    }

    pub(crate) fn term_groups(
        &self,
    ) -> impl Iterator<Item = (TermRole, &AffinityTerm, &HashMap<NodeId, i64>)> {
        self.term_groups
            .iter()
            .map(|((role, term), nodes)| (*role, term, nodes))
    }

    pub(crate) fn has_term_role(&self, wanted: impl Fn(TermRole) -> bool) -> bool {
        self.term_groups.keys().any(|(role, _)| wanted(*role))
    }

    /// Calls `visit` for every pod the affinity term selects, with the pod and its node.
    pub(crate) fn for_each_pod_matching(
        &self,
        term: &AffinityTerm,
        mut visit: impl FnMut(&PodEntry),
    ) {
        let mut candidates = Vec::new();
        if term.selects_namespaces_by_label() {
            for namespace in self.label_index.namespaces() {
                self.label_index
                    .candidates(namespace, &term.selector, &mut candidates);
            }
        } else {
            for namespace in &term.namespaces {
                self.label_index
                    .candidates(namespace, &term.selector, &mut candidates);
            }
        }
        for id in candidates {
            let Some(entry) = self.pod(id) else { continue };
            let pod = &entry.info;
            let namespace_labels = self.namespace_labels(&pod.namespace);
            if term.matches(&pod.namespace, &pod.labels, namespace_labels) {
                visit(entry);
            }
        }
    }

    /// Per node, how many non-terminating pods of `namespace` a spread constraint's selector
    /// counts (`countPodsMatchSelector`: an empty selector counts none).
    pub(crate) fn spread_matches_per_node(
        &self,
        namespace: &str,
        selector: &SpreadSelector,
    ) -> Cow<'_, HashMap<NodeId, i64>> {
        match selector {
            SpreadSelector::SameController(uid) => match self.controller_pods.get(uid) {
                Some(counts) => Cow::Borrowed(counts),
                None => Cow::Owned(HashMap::new()),
            },
            SpreadSelector::Labels(selector) => {
                let mut counts = HashMap::new();
                if selector.is_everything() {
                    return Cow::Owned(counts);
                }
                let mut candidates = Vec::new();
                self.label_index
                    .candidates(namespace, selector, &mut candidates);
                for id in candidates {
                    let Some(entry) = self.pod(id) else { continue };
                    if !entry.info.terminating && selector.matches(&entry.info.labels) {
                        *counts.entry(entry.node).or_default() += 1;
                    }
                }
                Cow::Owned(counts)
            }
        }
    }
}

/// The (role, term) groups a pod's affinity terms belong to.
fn term_group_keys(pod: &PodInfo) -> Vec<(TermRole, AffinityTerm)> {
    let Some(affinity) = &pod.affinity else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    for term in &affinity.required_affinity {
        keys.push((TermRole::RequiredAffinity, term.clone()));
    }
    for term in &affinity.required_anti_affinity {
        keys.push((TermRole::RequiredAntiAffinity, term.clone()));
    }
    for weighted in &affinity.preferred_affinity {
        keys.push((
            TermRole::PreferredAffinity(weighted.weight),
            weighted.term.clone(),
        ));
    }
    for weighted in &affinity.preferred_anti_affinity {
        keys.push((
            TermRole::PreferredAntiAffinity(weighted.weight),
            weighted.term.clone(),
        ));
    }
    keys
}

fn decrement_nested<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, HashMap<NodeId, i64>>,
    key: &K,
    node: NodeId,
) {
    if let Some(nodes) = map.get_mut(key) {
        if let Some(count) = nodes.get_mut(&node) {
            *count -= 1;
            if *count <= 0 {
                nodes.remove(&node);
            }
        }
        if nodes.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{bound_pod, pod, ready_node};
    use serde_json::json;

    /// A heartbeat (new condition times, same everything else) changes nothing the scheduler
    /// reads; a cordon, a label or a new node does.
    #[test]
    fn only_scheduling_properties_count_as_a_node_change() {
        let mut snapshot = Snapshot::new();
        let node = ready_node("n1", "4", "8Gi", json!({}));
        assert!(snapshot.upsert_node(&node).changed, "a new node");
        let mut heartbeat = node.clone();
        if let Some(conditions) = heartbeat
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
        {
            conditions[0].last_heartbeat_time =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
        assert!(!snapshot.upsert_node(&heartbeat).changed, "a heartbeat");
        let mut cordoned = heartbeat.clone();
        cordoned
            .spec
            .get_or_insert_with(Default::default)
            .unschedulable = Some(true);
        assert!(snapshot.upsert_node(&cordoned).changed, "a cordon");
        assert!(snapshot.upsert_node(&heartbeat).changed, "an uncordon");
        let relabelled = ready_node("n1", "4", "8Gi", json!({"disk": "ssd"}));
        assert!(snapshot.upsert_node(&relabelled).changed, "a label");
        let mut not_ready = relabelled.clone();
        if let Some(conditions) = not_ready
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
        {
            conditions[0].status = "False".into();
        }
        assert!(
            snapshot.upsert_node(&not_ready).changed,
            "Ready turned False"
        );
    }

    #[test]
    fn pods_add_up_on_their_node_and_leave_cleanly() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_node(&ready_node("n1", "4", "8Gi", json!({})));
        snapshot.upsert_pod(&bound_pod("a", "n1", "500m", "1Gi"));
        snapshot.upsert_pod(&bound_pod("b", "n1", "250m", "512Mi"));
        assert_eq!(
            snapshot.node_usage("n1"),
            Some(NodeUsageSummary {
                milli_cpu: 750,
                memory: 1536 << 20,
                ephemeral_storage: 0,
                pods: 2
            })
        );
        // Updating a pod replaces it rather than counting it twice.
        snapshot.upsert_pod(&bound_pod("a", "n1", "1", "1Gi"));
        assert_eq!(snapshot.node_usage("n1").unwrap().milli_cpu, 1250);
        assert!(snapshot.remove_pod("default", "a"));
        assert!(!snapshot.remove_pod("default", "a"));
        assert_eq!(snapshot.node_usage("n1").unwrap().milli_cpu, 250);
        assert_eq!(snapshot.pod_count(), 1);
    }

    #[test]
    fn finished_and_unbound_pods_do_not_count() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_node(&ready_node("n1", "4", "8Gi", json!({})));
        snapshot.upsert_pod(&bound_pod("a", "n1", "1", "1Gi"));
        let mut done = bound_pod("a", "n1", "1", "1Gi");
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        snapshot.upsert_pod(&done);
        assert_eq!(snapshot.node_usage("n1").unwrap().pods, 0);
        let mut failed = bound_pod("f", "n1", "1", "1Gi");
        failed.status = Some(serde_json::from_value(json!({"phase": "Failed"})).unwrap());
        snapshot.upsert_pod(&failed);
        snapshot.upsert_pod(&pod(
            json!({"metadata": {"name": "pending"}, "spec": {"containers": []}}),
        ));
        assert_eq!(snapshot.pod_count(), 0);
    }

    #[test]
    fn assumed_pods_count_until_removed_and_survive_unbound_updates() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_node(&ready_node("n1", "4", "8Gi", json!({})));
        let pending = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"cpu": "1"}}}
        ]}}));
        snapshot.assume(&pending, "n1");
        assert_eq!(snapshot.node_usage("n1").unwrap().milli_cpu, 1000);
        snapshot.upsert_pod(&pending);
        assert_eq!(
            snapshot.node_usage("n1").unwrap().milli_cpu,
            1000,
            "still assumed"
        );
        let mut bound = pending.clone();
        bound.spec.as_mut().unwrap().node_name = Some("n1".into());
        snapshot.upsert_pod(&bound);
        assert_eq!(
            snapshot.node_usage("n1").unwrap().pods,
            1,
            "confirmed, not doubled"
        );
        snapshot.remove_pod("default", "p");
        assert_eq!(snapshot.node_usage("n1").unwrap().pods, 0);
    }

    #[test]
    fn pods_on_unknown_nodes_are_kept_until_the_node_arrives() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_pod(&bound_pod("early", "n1", "1", "1Gi"));
        assert_eq!(snapshot.node_count(), 0);
        snapshot.upsert_node(&ready_node("n1", "4", "8Gi", json!({})));
        assert_eq!(snapshot.node_count(), 1);
        assert_eq!(snapshot.node_usage("n1").unwrap().milli_cpu, 1000);
        snapshot.remove_node("n1");
        assert_eq!(snapshot.node_count(), 0);
        assert_eq!(
            snapshot.node_usage("n1").unwrap().pods,
            1,
            "pods outlive their node"
        );
        snapshot.remove_pod("default", "early");
        assert_eq!(snapshot.node_usage("n1"), None);
    }

    #[test]
    fn nodes_are_visited_with_zones_interleaved() {
        let zone = |z: &str| json!({"topology.kubernetes.io/zone": z});
        let snapshot = Snapshot::from_objects(
            &[
                ready_node("a1", "1", "1Gi", zone("a")),
                ready_node("a2", "1", "1Gi", zone("a")),
                ready_node("a3", "1", "1Gi", zone("a")),
                ready_node("b1", "1", "1Gi", zone("b")),
                ready_node("c1", "1", "1Gi", zone("c")),
                ready_node("c2", "1", "1Gi", zone("c")),
            ],
            &[],
        );
        assert_eq!(
            snapshot.node_names(),
            vec!["a1", "b1", "c1", "a2", "c2", "a3"]
        );
    }

    #[test]
    fn host_port_conflicts_follow_wildcard_rules() {
        let mut usage = NodeUsage::default();
        let port = |ip: &str, protocol: &str, port: i32| HostPort {
            ip: ip.into(),
            protocol: protocol.into(),
            port,
        };
        let pod = PodInfo {
            host_ports: vec![port("10.0.0.1", "TCP", 80), port(BIND_ALL_IP, "UDP", 53)],
            ..Default::default()
        };
        usage.add(7, &pod);
        assert!(
            usage.port_conflicts(&port(BIND_ALL_IP, "TCP", 80)),
            "wildcard vs specific"
        );
        assert!(
            usage.port_conflicts(&port("10.0.0.1", "TCP", 80)),
            "same ip"
        );
        assert!(
            !usage.port_conflicts(&port("10.0.0.2", "TCP", 80)),
            "other ip"
        );
        assert!(
            !usage.port_conflicts(&port("10.0.0.1", "UDP", 80)),
            "other protocol"
        );
        assert!(
            usage.port_conflicts(&port("10.0.0.9", "UDP", 53)),
            "specific vs wildcard"
        );
        assert!(!usage.port_conflicts(&port(BIND_ALL_IP, "TCP", 81)));
        usage.remove(7, &pod);
        assert!(!usage.port_conflicts(&port(BIND_ALL_IP, "TCP", 80)));
        assert!(usage.pods.is_empty());
    }

    #[test]
    fn controller_and_term_indexes_follow_pods() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_node(&ready_node("n1", "4", "8Gi", json!({})));
        let replica = pod(json!({
            "metadata": {"name": "r1", "labels": {"app": "web"}, "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [], "affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}
                ]}}}
        }));
        snapshot.upsert_pod(&replica);
        let mut second = replica.clone();
        second.metadata.name = Some("r2".into());
        snapshot.upsert_pod(&second);
        let counts = snapshot
            .spread_matches_per_node("default", &SpreadSelector::SameController("rs-1".into()));
        let n1 = snapshot.visit_order()[0];
        assert_eq!(counts.get(&n1), Some(&2));
        let groups: Vec<_> = snapshot.term_groups().collect();
        assert_eq!(groups.len(), 1, "identical terms share a group");
        assert_eq!(groups[0].2.get(&n1), Some(&2));
        snapshot.remove_pod("default", "r1");
        snapshot.remove_pod("default", "r2");
        assert_eq!(snapshot.term_groups().count(), 0);
        assert!(snapshot
            .spread_matches_per_node("default", &SpreadSelector::SameController("rs-1".into()))
            .is_empty());
    }
}
