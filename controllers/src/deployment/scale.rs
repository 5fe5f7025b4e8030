//! Scaling outside a rollout (`sync` and `scale` in `sync.go`): a paused Deployment or a
//! changed `spec.replicas`. With several active ReplicaSets mid-rollout the change is
//! spread in proportion to their sizes, using each one's `max-replicas` annotation (the
//! Deployment's size when it was last scaled) as the base.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::history::{self, by_creation, DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION};
use super::spec::Strategy;
use super::status::status_available;
use super::Sync;

/// `integer.RoundToInt32`: halves away from zero.
fn round_to_i32(value: f64) -> i32 {
    if value < 0.0 {
        (value - 0.5) as i32
    } else {
        (value + 0.5) as i32
    }
}

impl Sync<'_> {
    /// `sync`: scale, clean up history while paused, write the plain status.
    pub(super) fn sync_scale(&mut self) {
        self.scale();
        if self.params.paused {
            self.clean_up_history();
        }
        self.status = self.calculate_status();
    }

    /// `FindActiveOrLatest`: the only active ReplicaSet, or with none active the new one
    /// (else the newest old one); `None` with several active.
    fn active_or_latest(&self) -> Option<usize> {
        let active: Vec<usize> = (0..self.replica_sets.len())
            .filter(|i| self.replicas(*i) > 0)
            .collect();
        match active.as_slice() {
            [only] => Some(*only),
            [] => self.new_index.or_else(|| {
                self.old_indices()
                    .into_iter()
                    .max_by(|a, b| by_creation(&self.replica_sets[*a], &self.replica_sets[*b]))
            }),
            _ => None,
        }
    }

    /// `IsSaturated`: the new ReplicaSet asks for, was sized for, and has available
    /// exactly `spec.replicas` pods.
    fn is_saturated(&self, index: usize) -> bool {
        let rs = &self.replica_sets[index];
        let replicas = self.params.replicas;
        history::int_annotation(rs, DESIRED_REPLICAS_ANNOTATION) == Some(replicas)
            && self.replicas(index) == replicas
            && status_available(rs) == replicas
    }

    /// `scale`.
    fn scale(&mut self) {
        let replicas = self.params.replicas;
        if let Some(index) = self.active_or_latest() {
            if self.replicas(index) != replicas {
                self.scale_if_needed(index, replicas);
            }
            return;
        }
        if self.new_index.is_some_and(|i| self.is_saturated(i)) {
            let active_old: Vec<usize> = self
                .old_indices()
                .into_iter()
                .filter(|i| self.replicas(*i) > 0)
                .collect();
            for index in active_old {
                self.scale_if_needed(index, 0);
            }
            return;
        }
        if self.params.strategy != Strategy::RollingUpdate {
            return;
        }

        let mut active: Vec<usize> = self
            .old_indices()
            .into_iter()
            .chain(self.new_index)
            .filter(|i| self.replicas(*i) > 0)
            .collect();
        let current: i32 = active.iter().map(|i| self.replicas(*i)).sum();
        let allowed = if replicas > 0 {
            self.params.max_total()
        } else {
            0
        };
        let to_add = allowed - current;
        // Largest first; ties go to the newest when growing, the oldest when shrinking.
        let by_size = |a: &usize, b: &usize, newer_first: bool| -> Ordering {
            let (ra, rb) = (&self.replica_sets[*a], &self.replica_sets[*b]);
            self.replicas(*b).cmp(&self.replicas(*a)).then_with(|| {
                if newer_first {
                    by_creation(rb, ra)
                } else {
                    by_creation(ra, rb)
                }
            })
        };
        match to_add.cmp(&0) {
            Ordering::Greater => active.sort_by(|a, b| by_size(a, b, true)),
            Ordering::Less => active.sort_by(|a, b| by_size(a, b, false)),
            Ordering::Equal => {}
        }

        let mut added = 0;
        let mut sizes: BTreeMap<usize, i32> = BTreeMap::new();
        for &index in &active {
            let proportion = self.proportion(index, to_add, added);
            sizes.insert(index, self.replicas(index) + proportion);
            added += proportion;
        }
        for (position, &index) in active.iter().enumerate() {
            let mut size = sizes.get(&index).copied().unwrap_or(0);
            // Rounding leftovers go to the largest ReplicaSet.
            if position == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            self.scale_replica_set(index, size);
        }
    }

    /// `GetProportion`: this ReplicaSet's share of `to_add`, bounded by what is left.
    fn proportion(&self, index: usize, to_add: i32, added: i32) -> i32 {
        let replicas = self.replicas(index);
        if replicas == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = self.fraction(index);
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// `getReplicaSetFraction`: the size this ReplicaSet would have if it kept its share
    /// of the Deployment's size it was last scaled for, minus its size now.
    fn fraction(&self, index: usize) -> i32 {
        let replicas = self.replicas(index);
        if self.params.replicas == 0 {
            return -replicas;
        }
        let rs = &self.replica_sets[index];
        let base = history::int_annotation(rs, MAX_REPLICAS_ANNOTATION)
            .unwrap_or_else(|| self.status.replicas.unwrap_or(0));
        let target = f64::from(replicas) * f64::from(self.params.max_total()) / f64::from(base);
        round_to_i32(target) - replicas
    }
}
