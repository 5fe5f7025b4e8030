//! Which pods carry which labels, per namespace, so a label selector finds its candidate pods
//! without scanning every pod in the cluster.

use std::collections::{HashMap, HashSet};

use crate::selector::{Labels, Operator, Selector};

/// Index of a pod in the snapshot's pod table.
pub(crate) type PodId = usize;

#[derive(Debug, Default)]
pub(crate) struct PodLabelIndex {
    namespaces: HashMap<String, NamespacePods>,
}

#[derive(Debug, Default)]
struct NamespacePods {
    pods: HashSet<PodId>,
    /// label key → label value → pods.
    by_label: HashMap<String, HashMap<String, HashSet<PodId>>>,
}

impl PodLabelIndex {
    pub fn insert(&mut self, id: PodId, namespace: &str, labels: &Labels) {
        let entry = self.namespaces.entry(namespace.to_string()).or_default();
        entry.pods.insert(id);
        for (key, value) in labels {
            entry
                .by_label
                .entry(key.clone())
                .or_default()
                .entry(value.clone())
                .or_default()
                .insert(id);
        }
    }

    pub fn remove(&mut self, id: PodId, namespace: &str, labels: &Labels) {
        let Some(entry) = self.namespaces.get_mut(namespace) else {
            return;
        };
        entry.pods.remove(&id);
        for (key, value) in labels {
            if let Some(values) = entry.by_label.get_mut(key) {
                if let Some(pods) = values.get_mut(value) {
                    pods.remove(&id);
                    if pods.is_empty() {
                        values.remove(value);
                    }
                }
                if values.is_empty() {
                    entry.by_label.remove(key);
                }
            }
        }
        if entry.pods.is_empty() {
            self.namespaces.remove(namespace);
        }
    }

    /// Namespaces that hold at least one pod.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.namespaces.keys().map(String::as_str)
    }

    /// Appends to `out` the pods of `namespace` that may match `selector`: a superset that the
    /// caller still checks pod by pod. Uses the most selective `In`/`Exists` requirement.
    pub fn candidates(&self, namespace: &str, selector: &Selector, out: &mut Vec<PodId>) {
        let Some(entry) = self.namespaces.get(namespace) else {
            return;
        };
        let Selector::All(requirements) = selector else {
            return;
        };
        let mut best: Option<(Vec<&HashSet<PodId>>, usize)> = None;
        for requirement in requirements {
            let values = entry.by_label.get(&requirement.key);
            let sets: Vec<&HashSet<PodId>> = match requirement.operator {
                Operator::In => requirement
                    .values
                    .iter()
                    .filter_map(|value| values.and_then(|v| v.get(value)))
                    .collect(),
                Operator::Exists => values.into_iter().flat_map(|v| v.values()).collect(),
                _ => continue,
            };
            let size = sets.iter().map(|set| set.len()).sum();
            if best.as_ref().is_none_or(|(_, best_size)| size < *best_size) {
                best = Some((sets, size));
            }
            if size == 0 {
                break;
            }
        }
        match best {
            // A pod has one value per key, so the sets are disjoint: no duplicates.
            Some((sets, _)) => out.extend(sets.into_iter().flatten().copied()),
            None => out.extend(entry.pods.iter().copied()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::selector::Requirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sorted(index: &PodLabelIndex, namespace: &str, selector: &Selector) -> Vec<PodId> {
        let mut out = Vec::new();
        index.candidates(namespace, selector, &mut out);
        out.sort();
        out
    }

    #[test]
    fn narrows_by_the_most_selective_requirement() {
        let mut index = PodLabelIndex::default();
        index.insert(1, "ns", &labels(&[("app", "web"), ("tier", "front")]));
        index.insert(2, "ns", &labels(&[("app", "web")]));
        index.insert(3, "ns", &labels(&[("app", "db")]));
        index.insert(4, "other", &labels(&[("app", "web")]));

        let mut web_front = Selector::everything();
        web_front.and(Requirement::equals("app", "web"));
        web_front.and(Requirement::equals("tier", "front"));
        assert_eq!(sorted(&index, "ns", &web_front), vec![1]);

        let mut not_db = Selector::everything();
        not_db.and(Requirement::not_equals("app", "db"));
        assert_eq!(
            sorted(&index, "ns", &not_db),
            vec![1, 2, 3],
            "no usable requirement: whole namespace"
        );

        let mut missing = Selector::everything();
        missing.and(Requirement::equals("app", "cache"));
        assert!(sorted(&index, "ns", &missing).is_empty());
        assert!(sorted(&index, "ns", &Selector::Nothing).is_empty());
        assert!(sorted(&index, "absent", &Selector::everything()).is_empty());
    }

    #[test]
    fn removal_cleans_up() {
        let mut index = PodLabelIndex::default();
        index.insert(1, "ns", &labels(&[("app", "web")]));
        index.remove(1, "ns", &labels(&[("app", "web")]));
        assert_eq!(index.namespaces().count(), 0);
        assert!(sorted(&index, "ns", &Selector::everything()).is_empty());
    }
}
