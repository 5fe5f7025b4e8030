//! Recreate (`recreate.go`): scale every old ReplicaSet to zero, wait until none of
//! their pods is left running, then create or scale up the new one.

use super::status::{self, status_replicas};
use super::Sync;
use crate::pod_state;

impl Sync<'_> {
    /// `rolloutRecreate`.
    pub(super) fn rollout_recreate(&mut self) {
        let active_old: Vec<usize> = self
            .old_indices()
            .into_iter()
            .filter(|i| self.replicas(*i) > 0)
            .collect();
        let mut scaled_down = false;
        for index in active_old {
            scaled_down |= self.scale_if_needed(index, 0);
        }
        if scaled_down || self.old_pods_running() {
            self.finish_rollout();
            return;
        }
        // Only now is the new ReplicaSet created, so it never runs beside old pods.
        if !self.ensure_new_replica_set() {
            return;
        }
        if let Some(new_index) = self.new_index {
            self.scale_if_needed(new_index, self.params.replicas);
        }
        if status::is_complete(self.d, &self.params, &self.status) {
            self.clean_up_history();
        }
        self.finish_rollout();
    }

    /// `oldPodsRunning`: an old ReplicaSet still reports pods, or a pod of one is in any
    /// phase but Succeeded/Failed (terminating pods included: they may still run).
    fn old_pods_running(&self) -> bool {
        let old = self.old_indices();
        if old
            .iter()
            .map(|i| status_replicas(&self.replica_sets[*i]))
            .sum::<i32>()
            > 0
        {
            return true;
        }
        let new_uid = self.new_rs().and_then(|rs| rs.metadata.uid.as_deref());
        self.pods_by_owner
            .iter()
            .filter(|(owner, _)| Some(owner.as_str()) != new_uid)
            .flat_map(|(_, pods)| pods.iter())
            .any(|pod| !pod_state::is_terminal(pod))
    }
}
