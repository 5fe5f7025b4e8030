//! One scheduling decision, as kube-scheduler's `schedulePod`: narrow the nodes by name
//! (NodeAffinity PreFilter), run the filters over the nodes — starting where the previous
//! decision stopped and stopping once enough feasible nodes are found — score the feasible
//! nodes and pick the best, breaking ties with a seeded generator.

use k8s_openapi::api::core::v1::Pod;

use crate::explain::{ExcludedNodes, Unschedulable};
use crate::filters::node_affinity::{REASON_CONFLICT, REASON_NOT_SELECTED};
use crate::filters::{FilterKind, Filters};
use crate::node_selector::NodeNameRestriction;
use crate::pod_info::PodInfo;
use crate::scores::total_scores;
use crate::snapshot::{NodeId, Snapshot};

/// Below this many nodes every node is checked (`minFeasibleNodesToFind`).
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The adaptive share never drops below this (`minFeasibleNodesPercentageToFind`).
const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;

/// Settings of a [`Scheduler`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// kube-scheduler's `percentageOfNodesToScore`: once this share of the nodes is found
    /// feasible, filtering stops and only those are scored. `None` (or 0) is adaptive:
    /// 50% − 1% per 125 nodes, at least 5%, and never fewer than 100 nodes. 100 checks all.
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Seed for choosing among equally scored nodes, so equal nodes share the pods while a
    /// fixed seed keeps decisions reproducible.
    pub tie_break_seed: u64,
}

/// Where a pod should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node_name: String,
    /// The winning node's weighted score (0 when it was the only feasible node).
    pub score: i64,
    /// Nodes the filters looked at.
    pub evaluated_nodes: usize,
    /// Nodes that passed every filter.
    pub feasible_nodes: usize,
    /// Problems met while reading the pod (e.g. an unparsable request, counted as 0).
    pub notes: Vec<String>,
}

/// Makes decisions one pod at a time. Holds only what carries over between decisions: where
/// the next node search starts and the tie-break generator.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    next_start_node_index: usize,
    tie_break_state: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            tie_break_state: config.tie_break_seed,
            next_start_node_index: 0,
            config,
        }
    }

    /// Picks a node for `pod` in `snapshot`, or explains why none fits. The caller should
    /// [`Snapshot::assume`] the pod on the chosen node before the next decision.
    pub fn schedule(&mut self, snapshot: &Snapshot, pod: &Pod) -> Result<Placement, Unschedulable> {
        self.schedule_info(snapshot, &PodInfo::from_pod(pod), true)
    }

    /// [`Scheduler::schedule`] for a pod already read; without `name_nodes` an
    /// [`Unschedulable`] leaves `node_reasons` empty, which spares a loop that never reads
    /// them a string per node for every pod that fits nowhere.
    pub(crate) fn schedule_info(
        &mut self,
        snapshot: &Snapshot,
        pod: &PodInfo,
        name_nodes: bool,
    ) -> Result<Placement, Unschedulable> {
        let all_nodes = snapshot.visit_order();
        if all_nodes.is_empty() {
            return Err(Unschedulable::no_nodes());
        }
        let notes = pod.notes.clone();

        let restricted: Option<Vec<NodeId>> = match pod.required_node_affinity.name_restriction() {
            NodeNameRestriction::AnyNode => None,
            NodeNameRestriction::Only(names) if names.is_empty() => {
                let mut error = Unschedulable::before_filtering(
                    all_nodes.len(),
                    FilterKind::NodeAffinity,
                    REASON_CONFLICT,
                );
                error.notes = notes;
                return Err(error);
            }
            NodeNameRestriction::Only(names) => Some(
                all_nodes
                    .iter()
                    .copied()
                    .filter(|&id| {
                        snapshot
                            .node(id)
                            .is_some_and(|node| names.contains(&node.name))
                    })
                    .collect(),
            ),
        };
        let nodes: &[NodeId] = restricted.as_deref().unwrap_or(all_nodes);

        let filters = Filters::prepare(snapshot, pod);
        let wanted = feasible_nodes_to_find(self.config.percentage_of_nodes_to_score, nodes.len());
        let mut feasible = Vec::with_capacity(wanted.min(nodes.len()));
        let mut failures = Vec::new();
        if !nodes.is_empty() {
            let start = self.next_start_node_index % nodes.len();
            for offset in 0..nodes.len() {
                if feasible.len() >= wanted {
                    break;
                }
                let id = nodes[(start + offset) % nodes.len()];
                match filters.check(id) {
                    Ok(()) => feasible.push(id),
                    Err(failure) => failures.push((id, failure)),
                }
            }
        }
        let evaluated = feasible.len() + failures.len();
        self.next_start_node_index = (self.next_start_node_index + evaluated) % all_nodes.len();

        if feasible.is_empty() {
            let mut error = if name_nodes {
                let named = failures
                    .into_iter()
                    .map(|(id, failure)| (node_name(snapshot, id), failure))
                    .collect();
                // Only a name restriction leaves nodes unvisited; it names few nodes.
                let excluded = restricted.as_ref().map(|kept| ExcludedNodes {
                    names: all_nodes
                        .iter()
                        .filter(|id| !kept.contains(id))
                        .map(|&id| node_name(snapshot, id))
                        .collect(),
                    filter: FilterKind::NodeAffinity,
                    reason: REASON_NOT_SELECTED,
                });
                Unschedulable::from_failures(all_nodes.len(), named, excluded)
            } else {
                let excluded = restricted.as_ref().map(|kept| {
                    let count = all_nodes.len().saturating_sub(kept.len());
                    (FilterKind::NodeAffinity, REASON_NOT_SELECTED, count)
                });
                Unschedulable::summarize(
                    all_nodes.len(),
                    failures.iter().map(|(_, failure)| failure),
                    excluded,
                )
            };
            error.notes = notes;
            return Err(error);
        }

        let (chosen, score) = if let [only] = feasible.as_slice() {
            (*only, 0)
        } else {
            let totals = total_scores(snapshot, pod, &feasible);
            let best = totals.iter().copied().max().unwrap_or(0);
            let tied: Vec<usize> = (0..feasible.len()).filter(|&i| totals[i] == best).collect();
            let pick = if tied.len() == 1 {
                tied[0]
            } else {
                tied[(self.next_random() % tied.len() as u64) as usize]
            };
            (feasible[pick], best)
        };
        Ok(Placement {
            node_name: node_name(snapshot, chosen),
            score,
            evaluated_nodes: evaluated,
            feasible_nodes: feasible.len(),
            notes,
        })
    }

    /// SplitMix64: tiny, well mixed, and deterministic for a seed.
    fn next_random(&mut self) -> u64 {
        self.tie_break_state = self.tie_break_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.tie_break_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn node_name(snapshot: &Snapshot, id: NodeId) -> String {
    snapshot
        .slot(id)
        .map(|slot| slot.name.clone())
        .unwrap_or_default()
}

/// `numFeasibleNodesToFind`.
fn feasible_nodes_to_find(percentage: Option<u32>, node_count: usize) -> usize {
    if node_count < MIN_FEASIBLE_NODES_TO_FIND {
        return node_count;
    }
    let mut percentage = percentage.unwrap_or(0).min(100) as usize;
    if percentage == 0 {
        percentage = 50usize
            .saturating_sub(node_count / 125)
            .max(MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND);
    }
    (node_count * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feasible_node_budget_matches_kube_scheduler() {
        assert_eq!(feasible_nodes_to_find(None, 50), 50);
        assert_eq!(
            feasible_nodes_to_find(None, 100),
            100,
            "50% of 100 is raised to the minimum"
        );
        assert_eq!(feasible_nodes_to_find(None, 1000), 420);
        assert_eq!(feasible_nodes_to_find(None, 5000), 5000 * 10 / 100);
        assert_eq!(feasible_nodes_to_find(None, 10000), 500, "never below 5%");
        assert_eq!(feasible_nodes_to_find(Some(100), 1000), 1000);
        assert_eq!(feasible_nodes_to_find(Some(1), 1000), 100);
        assert_eq!(feasible_nodes_to_find(Some(250), 1000), 1000);
    }
}
