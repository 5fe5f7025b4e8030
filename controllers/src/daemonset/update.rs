//! `rollingUpdate`: which old daemon pods to delete (without surge, within
//! `maxUnavailable`) or on which nodes to start a new pod beside the old one (with surge,
//! within `maxSurge`; the old pod goes once the new one is available). Pods are created by
//! the next `manage` on nodes left without one, so without surge this only deletes.

use k8s_openapi::api::core::v1::Pod;

use super::{is_pod_updated, to_delete, Strategy, Sync};

/// Each node's daemon pods, by node name.
type NodePods<'a> = Vec<(String, Vec<&'a Pod>)>;

/// `findUpdatedPodsOnNode`: the node's (new, old) pods ignoring deleted ones, or `None`
/// when there are several of either kind (`manage` prunes those first).
fn find_updated_pods<'p>(
    pods: &[&'p Pod],
    hash: &str,
    generation: Option<i64>,
) -> Option<(Option<&'p Pod>, Option<&'p Pod>)> {
    let mut new = None;
    let mut old = None;
    for pod in pods
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if is_pod_updated(pod, hash, generation) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(pod);
    }
    Some((new, old))
}

impl<'a> Sync<'a> {
    /// `updatedDesiredNodeCounts`: (maxSurge, maxUnavailable, desired), and every node that
    /// should run a pod gets an (empty) entry among the node's pods.
    fn desired_node_counts(&self) -> (i32, i32, i32, NodePods<'a>) {
        let mut entries = self.node_to_pods.clone();
        let mut desired = 0;
        for (name, node) in &self.nodes {
            if self.verdict(node).should_run {
                desired += 1;
                entries.entry(name.clone()).or_default();
            }
        }
        let mut unavailable = self.strategy.unavailable(desired);
        let surge = self.strategy.surge(desired);
        // An impossible configuration (0 and 0) still lets the rollout move, one at a time.
        if desired > 0 && unavailable == 0 && surge == 0 {
            unavailable = 1;
        }
        (surge, unavailable, desired, entries.into_iter().collect())
    }

    fn node_should_run(&self, name: &str) -> bool {
        self.nodes
            .get(name)
            .is_some_and(|node| self.verdict(node).should_run)
    }

    pub(super) fn rolling_update(&mut self) {
        if !matches!(self.strategy, Strategy::RollingUpdate { .. }) {
            return;
        }
        let (max_surge, max_unavailable, desired, entries) = self.desired_node_counts();
        let hash = self.hash.clone();

        if max_surge == 0 {
            // Delete old pods while fewer than maxUnavailable nodes lack an available pod;
            // `manage` creates the new ones next sync.
            let mut unavailable = 0;
            let mut replace_now: Vec<&'a Pod> = Vec::new();
            let mut candidates: Vec<&'a Pod> = Vec::new();
            for (_, pods) in &entries {
                let Some(found) = find_updated_pods(pods, &hash, self.generation) else {
                    unavailable += 1;
                    continue;
                };
                match found {
                    (None, None) | (Some(_), Some(_)) => unavailable += 1,
                    (Some(new), None) => {
                        if !self.is_available(new) {
                            unavailable += 1;
                        }
                    }
                    (None, Some(old)) => {
                        if !self.is_available(old) {
                            // Already unavailable: replacing it costs nothing.
                            replace_now.push(old);
                            unavailable += 1;
                        } else if unavailable < max_unavailable {
                            candidates.push(old);
                        }
                    }
                }
            }
            let room = usize::try_from(max_unavailable - unavailable)
                .unwrap_or(0)
                .min(candidates.len());
            self.delete.extend(replace_now.into_iter().map(to_delete));
            self.delete
                .extend(candidates.into_iter().take(room).map(to_delete));
            return;
        }

        // Surging: start new pods beside old ones (at most maxSurge not yet available at a
        // time), delete each old pod once its replacement is available.
        let mut old_to_delete: Vec<&'a Pod> = Vec::new();
        let mut should_not_run: Vec<&'a Pod> = Vec::new();
        let mut candidate_nodes: Vec<String> = Vec::new();
        let mut allowed_nodes: Vec<String> = Vec::new();
        let mut surging = 0;
        let mut available = 0;
        for (name, pods) in &entries {
            let Some((new, old)) = find_updated_pods(pods, &hash, self.generation) else {
                surging += 1;
                continue;
            };
            // Availability counts every node, even the ones being abandoned.
            match (new, old) {
                (_, Some(old)) if self.is_available(old) => available += 1,
                (Some(new), None) if self.is_available(new) => available += 1,
                _ => {}
            }
            match (new, old) {
                (_, None) => {}
                (None, Some(old)) => {
                    if !self.is_available(old) {
                        if !self.node_should_run(name) {
                            old_to_delete.push(old);
                        } else {
                            allowed_nodes.push(name.clone());
                        }
                    } else if !self.node_should_run(name) {
                        should_not_run.push(old);
                    } else if surging < max_surge {
                        candidate_nodes.push(name.clone());
                    }
                }
                (Some(new), Some(old)) => {
                    if self.is_available(new) {
                        old_to_delete.push(old);
                    } else {
                        surging += 1;
                    }
                }
            }
        }
        // With surge the owner expects full availability: a pod on a node the DaemonSet
        // left goes only once enough pods elsewhere are available.
        let deletable = usize::try_from(available - desired)
            .unwrap_or(0)
            .min(should_not_run.len());
        old_to_delete.extend(should_not_run.into_iter().take(deletable));
        let room = usize::try_from(max_surge - surging)
            .unwrap_or(0)
            .min(candidate_nodes.len());
        self.delete.extend(old_to_delete.into_iter().map(to_delete));
        self.create_on.extend(
            allowed_nodes
                .into_iter()
                .chain(candidate_nodes.into_iter().take(room))
                .map(|node| (node, 0)),
        );
    }
}
