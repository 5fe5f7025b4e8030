//! RollingUpdate (`rolling.go`): grow the new ReplicaSet into the room under
//! `replicas + maxSurge`, shrink old ones while at least `replicas - maxUnavailable` pods
//! stay available (unhealthy old replicas first), one direction per sync.

use super::status::{self, status_available};
use super::Sync;

impl Sync<'_> {
    /// `rolloutRolling`.
    pub(super) fn rollout_rolling(&mut self) {
        if !self.ensure_new_replica_set() {
            return;
        }
        let Some(new_index) = self.new_index else {
            return;
        };
        if self.reconcile_new_replica_set(new_index) || self.reconcile_old_replica_sets(new_index) {
            self.finish_rollout();
            return;
        }
        if status::is_complete(self.d, &self.params, &self.status) {
            self.clean_up_history();
        }
        self.finish_rollout();
    }

    /// `reconcileNewReplicaSet`: true if the new ReplicaSet's size changed.
    fn reconcile_new_replica_set(&mut self, new_index: usize) -> bool {
        let replicas = self.params.replicas;
        let current = self.replicas(new_index);
        if current == replicas {
            return false;
        }
        if current > replicas {
            return self.scale_replica_set(new_index, replicas);
        }
        let count = self.new_replicas_count(new_index);
        self.scale_replica_set(new_index, count)
    }

    /// Active old ReplicaSets, oldest first.
    fn active_old_by_creation(&self) -> Vec<usize> {
        let mut old: Vec<usize> = self
            .old_indices()
            .into_iter()
            .filter(|i| self.replicas(*i) > 0)
            .collect();
        old.sort_by(|a, b| {
            super::history::by_creation(&self.replica_sets[*a], &self.replica_sets[*b])
        });
        old
    }

    /// `reconcileOldReplicaSets`: true if any old ReplicaSet was scaled down.
    fn reconcile_old_replica_sets(&mut self, new_index: usize) -> bool {
        let old = self.active_old_by_creation();
        let old_pods: i32 = old.iter().map(|i| self.replicas(*i)).sum();
        if old_pods == 0 {
            return false;
        }
        let all_pods: i32 = (0..self.replica_sets.len()).map(|i| self.replicas(i)).sum();
        let new_rs = &self.replica_sets[new_index];
        // Unavailable new pods count against the budget too, so a broken new template
        // never drags availability further down (rolling.go's worked example).
        let new_unavailable = self.replicas(new_index) - status_available(new_rs);
        let max_scaled_down = all_pods - self.params.min_available() - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let Some(cleaned) = self.clean_up_unhealthy_replicas(&old, max_scaled_down) else {
            return false;
        };
        let scaled_down = self.scale_down_old_replica_sets(&old, new_index);
        cleaned + scaled_down > 0
    }

    /// `cleanupUnhealthyReplicas`: scale old ReplicaSets down by their unavailable
    /// replicas, oldest first, up to `max_cleanup`. `None` where Kubernetes errors out
    /// (a ReplicaSet reporting more available pods than it asks for: still shrinking),
    /// which skips the rest of this sync's scale-down; earlier writes stand.
    fn clean_up_unhealthy_replicas(&mut self, old: &[usize], max_cleanup: i32) -> Option<i32> {
        let mut total = 0;
        for &index in old {
            if total >= max_cleanup {
                break;
            }
            let replicas = self.replicas(index);
            let available = status_available(&self.replica_sets[index]);
            if replicas == 0 || replicas == available {
                continue;
            }
            let count = (max_cleanup - total).min(replicas - available);
            if count < 0 {
                return None;
            }
            self.scale_replica_set(index, replicas - count);
            total += count;
        }
        Some(total)
    }

    /// `scaleDownOldReplicaSetsForRollingUpdate`: shrink old ReplicaSets, oldest first,
    /// by however many available pods exceed `replicas - maxUnavailable`.
    fn scale_down_old_replica_sets(&mut self, old: &[usize], new_index: usize) -> i32 {
        let available: i32 = old
            .iter()
            .chain(std::iter::once(&new_index))
            .map(|i| status_available(&self.replica_sets[*i]))
            .sum();
        let min_available = self.params.min_available();
        if available <= min_available {
            return 0;
        }
        let budget = available - min_available;
        let mut total = 0;
        for &index in old {
            if total >= budget {
                break;
            }
            let replicas = self.replicas(index);
            if replicas == 0 {
                continue;
            }
            let count = replicas.min(budget - total);
            self.scale_replica_set(index, replicas - count);
            total += count;
        }
        total
    }
}
