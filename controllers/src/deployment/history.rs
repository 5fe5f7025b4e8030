//! Revisions and the annotations a Deployment keeps on its ReplicaSets
//! (`deployment.kubernetes.io/revision`, `revision-history`, `desired-replicas`,
//! `max-replicas`, plus copies of the Deployment's own annotations), and the cleanup of
//! old ReplicaSets beyond `revisionHistoryLimit`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
const LAST_APPLIED_CONFIGURATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
const DEPRECATED_ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";

/// `revision-history` stops growing past this many characters (oldest entries dropped).
const MAX_REVISION_HISTORY_CHARS: usize = 2000;

/// Deployment annotations that are not copied onto its ReplicaSets.
fn skip_copy(key: &str) -> bool {
    matches!(
        key,
        LAST_APPLIED_CONFIGURATION
            | REVISION_ANNOTATION
            | REVISION_HISTORY_ANNOTATION
            | DESIRED_REPLICAS_ANNOTATION
            | MAX_REPLICAS_ANNOTATION
            | DEPRECATED_ROLLBACK_TO
    )
}

/// One annotation's value.
pub fn annotation_value<'a>(rs: &'a ReplicaSet, key: &str) -> Option<&'a str> {
    rs.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The revision annotation: absent is 0, unparsable is an error (`None`) that revision
/// arithmetic skips.
pub fn revision(rs: &ReplicaSet) -> Option<i64> {
    match annotation_value(rs, REVISION_ANNOTATION) {
        None => Some(0),
        Some(text) => text.parse().ok(),
    }
}

/// The highest parsable revision (`MaxRevision`).
pub fn max_revision<'a>(replica_sets: impl IntoIterator<Item = &'a ReplicaSet>) -> i64 {
    replica_sets
        .into_iter()
        .filter_map(revision)
        .max()
        .unwrap_or(0)
        .max(0)
}

/// An integer annotation (`getIntFromAnnotation`).
pub fn int_annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    annotation_value(rs, key)?.parse().ok()
}

fn annotations_mut(rs: &mut ReplicaSet) -> &mut BTreeMap<String, String> {
    rs.metadata.annotations.get_or_insert_with(BTreeMap::new)
}

/// Copies the Deployment's annotations (except [`skip_copy`] ones) onto the ReplicaSet;
/// true if any changed.
fn copy_deployment_annotations(d: &Deployment, rs: &mut ReplicaSet) -> bool {
    let mut changed = false;
    let annotations = annotations_mut(rs);
    for (key, value) in d.metadata.annotations.iter().flatten() {
        if skip_copy(key) || annotations.get(key) == Some(value) {
            continue;
        }
        annotations.insert(key.clone(), value.clone());
        changed = true;
    }
    changed
}

/// Sets `desired-replicas` and `max-replicas`; true if either changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let annotations = annotations_mut(rs);
    let mut changed = false;
    for (key, value) in [
        (DESIRED_REPLICAS_ANNOTATION, desired),
        (MAX_REPLICAS_ANNOTATION, max),
    ] {
        let value = value.to_string();
        if annotations.get(key) != Some(&value) {
            annotations.insert(key.to_string(), value);
            changed = true;
        }
    }
    changed
}

/// Whether [`set_replicas_annotations`] would change anything.
pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    annotation_value(rs, DESIRED_REPLICAS_ANNOTATION) != Some(desired.to_string().as_str())
        || annotation_value(rs, MAX_REPLICAS_ANNOTATION) != Some(max.to_string().as_str())
}

/// `SetNewReplicaSetAnnotations`: copies the Deployment's annotations, raises the
/// revision to `new_revision` when it is lower (an old ReplicaSet becoming new again, a
/// rollback, records its former revision in `revision-history`) and, for a ReplicaSet
/// being created, sets the replica annotations. True if anything changed.
pub fn set_new_replica_set_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
    desired: i32,
    max: i32,
) -> bool {
    let mut changed = copy_deployment_annotations(d, rs);
    let annotations = annotations_mut(rs);
    let old_revision = annotations.get(REVISION_ANNOTATION).cloned();
    let old_revision_number = match old_revision.as_deref() {
        None | Some("") => 0,
        Some(text) => match text.parse::<i64>() {
            Ok(n) => n,
            // Kubernetes gives up on a ReplicaSet whose revision is not a number.
            Err(_) => return false,
        },
    };
    let raised = old_revision_number < new_revision;
    if raised {
        annotations.insert(REVISION_ANNOTATION.to_string(), new_revision.to_string());
        changed = true;
    }
    // A ReplicaSet that had a revision and gets a higher one is being rolled back to:
    // keep its former revision.
    if let (Some(old_revision), true) = (old_revision, raised) {
        let history = annotations
            .get(REVISION_HISTORY_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        if history.is_empty() {
            annotations.insert(REVISION_HISTORY_ANNOTATION.to_string(), old_revision);
        } else {
            let mut entries: Vec<&str> = history.split(',').collect();
            let mut total = history.len() + old_revision.len() + 1;
            let mut start = 0;
            while total > MAX_REVISION_HISTORY_CHARS && start < entries.len() {
                total -= entries[start].len() + 1;
                start += 1;
            }
            if total <= MAX_REVISION_HISTORY_CHARS {
                entries = entries.split_off(start);
                entries.push(&old_revision);
                let joined = entries.join(",");
                annotations.insert(REVISION_HISTORY_ANNOTATION.to_string(), joined);
            }
        }
    }
    if !exists && set_replicas_annotations(rs, desired, max) {
        changed = true;
    }
    changed
}

/// `ReplicaSetsByCreationTimestamp`: older first, then by name.
pub fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    a.metadata
        .creation_timestamp
        .cmp(&b.metadata.creation_timestamp)
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// `ReplicaSetsByRevision`: lower revision first; unparsable or equal revisions by
/// creation.
fn by_revision(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    match (revision(a), revision(b)) {
        (Some(ra), Some(rb)) if ra != rb => ra.cmp(&rb),
        _ => by_creation(a, b),
    }
}

/// `cleanupDeployment`: the old ReplicaSets to delete so that at most `limit` remain,
/// oldest revision first, skipping any that still have (or may still have) pods or are
/// already being deleted.
pub fn replica_sets_to_clean_up<'a>(old: &[&'a ReplicaSet], limit: i32) -> Vec<&'a ReplicaSet> {
    let mut cleanable: Vec<&ReplicaSet> = old
        .iter()
        .copied()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let excess = cleanable.len() as i64 - i64::from(limit);
    if excess <= 0 {
        return Vec::new();
    }
    cleanable.sort_by(|a, b| by_revision(a, b));
    cleanable
        .into_iter()
        .take(usize::try_from(excess).unwrap_or(0))
        .filter(|rs| {
            let status = rs.status.as_ref();
            let spec_replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
            status.map_or(0, |s| s.replicas) == 0
                && spec_replicas == 0
                && rs.metadata.generation.unwrap_or(0) <= observed
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{at, deployment, replica_set};

    fn rs_with(annotations: serde_json::Value) -> ReplicaSet {
        replica_set(serde_json::json!({
            "metadata": {"name": "web-1", "annotations": annotations},
            "spec": {"replicas": 1, "selector": {}}
        }))
    }

    fn annotated_deployment() -> Deployment {
        deployment(serde_json::json!({
            "metadata": {"name": "web", "annotations": {
                "team": "a",
                LAST_APPLIED_CONFIGURATION: "{...}",
                REVISION_ANNOTATION: "7",
            }},
            "spec": {"selector": {}, "template": {}}
        }))
    }

    #[test]
    fn revisions_parse_and_max_skips_garbage() {
        let sets = [
            rs_with(serde_json::json!({REVISION_ANNOTATION: "3"})),
            rs_with(serde_json::json!({REVISION_ANNOTATION: "x"})),
            rs_with(serde_json::json!({})),
        ];
        assert_eq!(revision(&sets[0]), Some(3));
        assert_eq!(revision(&sets[1]), None);
        assert_eq!(revision(&sets[2]), Some(0));
        assert_eq!(max_revision(&sets), 3);
        assert_eq!(max_revision([]), 0);
    }

    #[test]
    fn new_replica_set_gets_copied_annotations_revision_and_replica_counts() {
        let mut rs = rs_with(serde_json::json!({}));
        assert!(set_new_replica_set_annotations(
            &annotated_deployment(),
            &mut rs,
            4,
            false,
            3,
            4
        ));
        let annotations = rs.metadata.annotations.unwrap();
        assert_eq!(annotations["team"], "a");
        assert!(!annotations.contains_key(LAST_APPLIED_CONFIGURATION));
        assert_eq!(annotations[REVISION_ANNOTATION], "4");
        assert!(!annotations.contains_key(REVISION_HISTORY_ANNOTATION));
        assert_eq!(annotations[DESIRED_REPLICAS_ANNOTATION], "3");
        assert_eq!(annotations[MAX_REPLICAS_ANNOTATION], "4");
    }

    #[test]
    fn rollback_records_the_former_revision() {
        let mut rs = rs_with(serde_json::json!({"team": "a", REVISION_ANNOTATION: "2"}));
        assert!(set_new_replica_set_annotations(
            &annotated_deployment(),
            &mut rs,
            5,
            true,
            3,
            4
        ));
        let annotations = rs.metadata.annotations.clone().unwrap();
        assert_eq!(annotations[REVISION_ANNOTATION], "5");
        assert_eq!(annotations[REVISION_HISTORY_ANNOTATION], "2");
        // Existing ReplicaSets get replica annotations only when scaled.
        assert!(!annotations.contains_key(DESIRED_REPLICAS_ANNOTATION));
        // Rolled back again later: the history grows.
        assert!(set_new_replica_set_annotations(
            &annotated_deployment(),
            &mut rs,
            8,
            true,
            3,
            4
        ));
        let annotations = rs.metadata.annotations.unwrap();
        assert_eq!(annotations[REVISION_HISTORY_ANNOTATION], "2,5");
    }

    #[test]
    fn current_revision_is_no_change_and_copies_do_not_touch_history() {
        let mut rs = rs_with(serde_json::json!({"team": "a", REVISION_ANNOTATION: "5"}));
        assert!(!set_new_replica_set_annotations(
            &annotated_deployment(),
            &mut rs,
            5,
            true,
            3,
            4
        ));
        let mut stale = rs_with(serde_json::json!({"team": "b", REVISION_ANNOTATION: "5"}));
        assert!(set_new_replica_set_annotations(
            &annotated_deployment(),
            &mut stale,
            5,
            true,
            3,
            4
        ));
        let annotations = stale.metadata.annotations.unwrap();
        assert_eq!(annotations["team"], "a");
        assert!(!annotations.contains_key(REVISION_HISTORY_ANNOTATION));
    }

    #[test]
    fn revision_history_is_bounded() {
        let long: Vec<String> = (0..600).map(|i| i.to_string()).collect();
        let mut rs = rs_with(serde_json::json!({
            REVISION_ANNOTATION: "1000",
            REVISION_HISTORY_ANNOTATION: long.join(","),
        }));
        assert!(set_new_replica_set_annotations(
            &annotated_deployment(),
            &mut rs,
            1001,
            true,
            1,
            1
        ));
        let history = &rs.metadata.annotations.unwrap()[REVISION_HISTORY_ANNOTATION];
        assert!(
            history.len() <= MAX_REVISION_HISTORY_CHARS,
            "{}",
            history.len()
        );
        assert!(history.ends_with(",599,1000"));
        assert!(!history.starts_with("0,"));
    }

    #[test]
    fn replicas_annotations_track_desired_and_max() {
        let mut rs = rs_with(serde_json::json!({}));
        assert!(replicas_annotations_need_update(&rs, 3, 4));
        assert!(set_replicas_annotations(&mut rs, 3, 4));
        assert!(!replicas_annotations_need_update(&rs, 3, 4));
        assert!(!set_replicas_annotations(&mut rs, 3, 4));
        assert_eq!(int_annotation(&rs, MAX_REPLICAS_ANNOTATION), Some(4));
        assert!(replicas_annotations_need_update(&rs, 5, 4));
    }

    fn old_rs(name: &str, revision: &str, created: i64, replicas: i32) -> ReplicaSet {
        replica_set(serde_json::json!({
            "metadata": {"name": name, "creationTimestamp": at(created), "generation": 2,
                "annotations": {REVISION_ANNOTATION: revision}},
            "spec": {"replicas": replicas, "selector": {}},
            "status": {"replicas": replicas, "observedGeneration": 2}
        }))
    }

    #[test]
    fn cleanup_deletes_oldest_revisions_beyond_the_limit() {
        let r1 = old_rs("r1", "1", 30, 0);
        let r2 = old_rs("r2", "2", 20, 0);
        let r3 = old_rs("r3", "3", 10, 0);
        let r4 = old_rs("r4", "4", 40, 0);
        let names = |sets: Vec<&ReplicaSet>| -> Vec<String> {
            sets.iter()
                .map(|rs| rs.metadata.name.clone().unwrap())
                .collect()
        };
        assert_eq!(
            names(replica_sets_to_clean_up(&[&r4, &r3, &r1, &r2], 2)),
            ["r1", "r2"]
        );
        assert!(replica_sets_to_clean_up(&[&r4, &r3, &r1, &r2], 4).is_empty());
        assert_eq!(
            names(replica_sets_to_clean_up(&[&r4, &r3, &r1, &r2], 0)).len(),
            4
        );

        // Still scaled, still running pods, or not yet observed: kept (not replaced by
        // the next candidate).
        let scaled = old_rs("scaled", "1", 1, 2);
        let mut running = old_rs("running", "2", 2, 0);
        running.status.as_mut().unwrap().replicas = 1;
        let mut unobserved = old_rs("unobserved", "3", 3, 0);
        unobserved.metadata.generation = Some(3);
        let mut deleting = old_rs("deleting", "0", 0, 0);
        deleting.metadata.deletion_timestamp = Some(crate::testing::time(5));
        let fine = old_rs("fine", "4", 4, 0);
        let all = [&scaled, &running, &unobserved, &deleting, &fine];
        assert!(replica_sets_to_clean_up(&all, 1).is_empty());
        assert_eq!(names(replica_sets_to_clean_up(&all, 0)), ["fine"]);
    }
}
