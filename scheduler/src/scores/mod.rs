//! The scores — kube-scheduler's Score plugins with their default weights — each normalized
//! to 0–100 over the feasible nodes, then summed with the weights.
//!
//! | plugin                          | weight |
//! |---------------------------------|--------|
//! | TaintToleration                 | 3      |
//! | NodeAffinity                    | 2      |
//! | NodeResourcesFit (LeastAllocated) | 1    |
//! | PodTopologySpread               | 2      |
//! | InterPodAffinity                | 2      |
//! | NodeResourcesBalancedAllocation | 1      |
//!
//! ImageLocality (weight 1) is not implemented: the snapshot does not track node images.

pub(crate) mod inter_pod_affinity;
pub(crate) mod node_affinity;
pub(crate) mod pod_topology_spread;
pub(crate) mod resource_allocation;
pub(crate) mod taint_toleration;

use crate::pod_info::PodInfo;
use crate::snapshot::{NodeId, Snapshot};

pub const MAX_NODE_SCORE: i64 = 100;

pub const WEIGHT_TAINT_TOLERATION: i64 = 3;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_NODE_RESOURCES_FIT: i64 = 1;
pub const WEIGHT_POD_TOPOLOGY_SPREAD: i64 = 2;
pub const WEIGHT_INTER_POD_AFFINITY: i64 = 2;
pub const WEIGHT_BALANCED_ALLOCATION: i64 = 1;

/// The weighted total score of each feasible node, in the order given.
pub(crate) fn total_scores(snapshot: &Snapshot, pod: &PodInfo, feasible: &[NodeId]) -> Vec<i64> {
    let weighted = [
        (
            WEIGHT_TAINT_TOLERATION,
            taint_toleration::scores(snapshot, pod, feasible),
        ),
        (
            WEIGHT_NODE_AFFINITY,
            node_affinity::scores(snapshot, pod, feasible),
        ),
        (
            WEIGHT_NODE_RESOURCES_FIT,
            resource_allocation::least_allocated_scores(snapshot, pod, feasible),
        ),
        (
            WEIGHT_POD_TOPOLOGY_SPREAD,
            pod_topology_spread::scores(snapshot, pod, feasible),
        ),
        (
            WEIGHT_INTER_POD_AFFINITY,
            inter_pod_affinity::scores(snapshot, pod, feasible),
        ),
        (
            WEIGHT_BALANCED_ALLOCATION,
            resource_allocation::balanced_allocation_scores(snapshot, pod, feasible),
        ),
    ];
    let mut totals = vec![0i64; feasible.len()];
    for (weight, scores) in weighted {
        if let Some(scores) = scores {
            for (total, score) in totals.iter_mut().zip(scores) {
                *total += weight * score;
            }
        }
    }
    totals
}

/// `DefaultNormalizeScore`: scales so the highest raw score becomes 100 (or, reversed, the
/// lowest); all-zero raw scores become 0 (reversed: 100).
pub(crate) fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0).max(0);
    if max == 0 {
        if reverse {
            scores.fill(MAX_NODE_SCORE);
        }
        return;
    }
    for score in scores.iter_mut() {
        let scaled = MAX_NODE_SCORE * *score / max;
        *score = if reverse {
            MAX_NODE_SCORE - scaled
        } else {
            scaled
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_normalize_scales_to_the_maximum() {
        let mut scores = vec![0, 5, 10];
        default_normalize(&mut scores, false);
        assert_eq!(scores, vec![0, 50, 100]);
        let mut reversed = vec![0, 1, 4];
        default_normalize(&mut reversed, true);
        assert_eq!(reversed, vec![100, 75, 0]);
        let mut zeros = vec![0, 0];
        default_normalize(&mut zeros, true);
        assert_eq!(zeros, vec![100, 100]);
        let mut zeros = vec![0, 0];
        default_normalize(&mut zeros, false);
        assert_eq!(zeros, vec![0, 0]);
    }
}
