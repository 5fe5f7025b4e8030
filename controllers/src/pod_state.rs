//! What the workload controllers read off a pod: active, ready, available after
//! `minReadySeconds`, and Kubernetes' order for choosing which pods to delete first
//! (`ActivePods` / `ActivePodsWithRanks` in `controller_utils.go`).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::time::{duration_from_nanos, nanos, nanos_plus_seconds};

/// Annotation a user sets to steer scale-down (`controller.kubernetes.io/pod-deletion-cost`):
/// pods with a lower cost go first.
pub const POD_DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Not Succeeded, not Failed and not being deleted: the pods a ReplicaSet counts.
pub fn is_active(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_none()
}

/// Succeeded or Failed: a pod that will never run again.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// The pod's Ready condition, if reported.
pub fn ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// When the pod last became ready (`None` when not ready or the time is unknown).
pub fn ready_since(pod: &Pod) -> Option<&Time> {
    ready_condition(pod)
        .filter(|c| c.status == "True")?
        .last_transition_time
        .as_ref()
}

/// Ready for longer than `min_ready_seconds` as of `now` (`podutil.IsPodAvailable`: a
/// ready pod without a transition time only counts when `min_ready_seconds` is 0).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: &Time) -> bool {
    if !is_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(pod)
        .is_some_and(|since| nanos_plus_seconds(since, i64::from(min_ready_seconds)) < nanos(now))
}

/// For a ready pod that is not yet available: how long until it is. Kubernetes requires
/// the ready time plus `min_ready_seconds` to be strictly before `now`, and the API keeps
/// whole seconds, so this is one second past the boundary.
pub fn time_until_available(pod: &Pod, min_ready_seconds: i32, now: &Time) -> Option<Duration> {
    if !is_ready(pod) || min_ready_seconds <= 0 || is_available(pod, min_ready_seconds, now) {
        return None;
    }
    let since = ready_since(pod)?;
    let boundary = nanos_plus_seconds(since, i64::from(min_ready_seconds));
    Some(duration_from_nanos(boundary - nanos(now)) + Duration::from_secs(1))
}

/// The deletion cost a user assigned; unset or unparsable is 0, as in Kubernetes.
pub fn deletion_cost(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn is_assigned(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

fn node_name(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// `podPhaseToOrdinal`: Pending (and any phase not listed) 0, Unknown 1, Running 2.
fn phase_ordinal(pod: &Pod) -> u8 {
    match phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

/// Highest restart count among regular containers, then among restartable (sidecar)
/// init containers.
fn max_restarts(pod: &Pod) -> (i32, i32) {
    let Some(status) = &pod.status else {
        return (0, 0);
    };
    let regular = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| c.restart_count)
        .max();
    let sidecars: BTreeSet<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    let sidecar = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| sidecars.contains(c.name.as_str()))
        .map(|c| c.restart_count)
        .max();
    (regular.unwrap_or(0).max(0), sidecar.unwrap_or(0).max(0))
}

/// `afterOrZero`: a missing time sorts first, otherwise the later time does.
fn after_or_zero(a: Option<&Time>, b: Option<&Time>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => a.is_none(),
        (Some(a), Some(b)) => a > b,
    }
}

/// Go's `Less` turned into an `Ordering` for a stable sort.
fn ordering_from_less(less: impl Fn(bool) -> bool) -> Ordering {
    if less(false) {
        Ordering::Less
    } else if less(true) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// `ActivePods.Less`: whether `a` should be deleted before `b`. In order: unassigned
/// before assigned; Pending < Unknown < Running; not ready before ready; ready for a
/// shorter time before longer; more container restarts first; newer (or no) creation
/// time first.
pub fn delete_before(a: &Pod, b: &Pod) -> bool {
    delete_before_ranked(a, 0, b, 0)
}

/// `ActivePodsWithRanks.Less` with LogarithmicScaleDown off: as [`delete_before`], plus
/// a lower deletion cost first (after readiness) and then pods sharing their node with
/// more related active pods first (`rank`).
pub fn delete_before_ranked(a: &Pod, rank_a: usize, b: &Pod, rank_b: usize) -> bool {
    if is_assigned(a) != is_assigned(b) {
        return !is_assigned(a);
    }
    if phase_ordinal(a) != phase_ordinal(b) {
        return phase_ordinal(a) < phase_ordinal(b);
    }
    if is_ready(a) != is_ready(b) {
        return !is_ready(a);
    }
    let (cost_a, cost_b) = (deletion_cost(a), deletion_cost(b));
    if cost_a != cost_b {
        return cost_a < cost_b;
    }
    if rank_a != rank_b {
        return rank_a > rank_b;
    }
    if is_ready(a) && is_ready(b) {
        let (since_a, since_b) = (ready_since(a), ready_since(b));
        if since_a != since_b {
            return after_or_zero(since_a, since_b);
        }
    }
    let (restarts_a, restarts_b) = (max_restarts(a), max_restarts(b));
    if restarts_a.0 != restarts_b.0 {
        return restarts_a.0 > restarts_b.0;
    }
    if restarts_a.1 != restarts_b.1 {
        return restarts_a.1 > restarts_b.1;
    }
    let (created_a, created_b) = (
        a.metadata.creation_timestamp.as_ref(),
        b.metadata.creation_timestamp.as_ref(),
    );
    if created_a != created_b {
        return after_or_zero(created_a, created_b);
    }
    false
}

/// Sorts `pods` so the ones to delete first come first (`ActivePods`).
pub fn sort_for_deletion(pods: &mut [&Pod]) {
    pods.sort_by(|a, b| {
        ordering_from_less(|swapped| {
            if swapped {
                delete_before(b, a)
            } else {
                delete_before(a, b)
            }
        })
    });
}

/// Chooses `count` pods to delete from `candidates` the way the ReplicaSet controller
/// does (`getPodsToDelete`): rank each by how many active `related` pods share its node
/// (doubled-up pods go first), then order with [`delete_before_ranked`].
pub fn choose_pods_to_delete<'a>(
    candidates: &[&'a Pod],
    related: &[&Pod],
    count: usize,
) -> Vec<&'a Pod> {
    if count >= candidates.len() {
        return candidates.to_vec();
    }
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for pod in related.iter().filter(|p| is_active(p)) {
        *per_node.entry(node_name(pod)).or_default() += 1;
    }
    let mut ranked: Vec<(&Pod, usize)> = candidates
        .iter()
        .map(|pod| (*pod, per_node.get(node_name(pod)).copied().unwrap_or(0)))
        .collect();
    ranked.sort_by(|(a, rank_a), (b, rank_b)| {
        ordering_from_less(|swapped| {
            if swapped {
                delete_before_ranked(b, *rank_b, a, *rank_a)
            } else {
                delete_before_ranked(a, *rank_a, b, *rank_b)
            }
        })
    });
    ranked.into_iter().take(count).map(|(pod, _)| pod).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{at, pod};

    fn running_ready(name: &str, ready_at: i64, created_at: i64) -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": name, "creationTimestamp": at(created_at)},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": at(ready_at)}
            ]}
        }))
    }

    #[test]
    fn active_excludes_terminal_and_terminating_pods() {
        assert!(is_active(&running_ready("a", 0, 0)));
        let mut succeeded = running_ready("b", 0, 0);
        succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!is_active(&succeeded));
        assert!(is_terminal(&succeeded));
        let mut failed = running_ready("c", 0, 0);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(!is_active(&failed));
        let mut terminating = running_ready("d", 0, 0);
        terminating.metadata.deletion_timestamp = Some(Time(at_ts(5)));
        assert!(!is_active(&terminating));
        assert!(!is_terminal(&terminating));
    }

    fn at_ts(second: i64) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn availability_needs_min_ready_seconds_strictly_passed() {
        let p = running_ready("a", 100, 0);
        let now = |s| Time(at_ts(s));
        assert!(is_ready(&p));
        assert!(is_available(&p, 0, &now(100)));
        assert!(!is_available(&p, 10, &now(109)));
        assert!(
            !is_available(&p, 10, &now(110)),
            "the boundary itself is not enough"
        );
        assert!(is_available(&p, 10, &now(111)));
        assert_eq!(
            time_until_available(&p, 10, &now(104)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            time_until_available(&p, 10, &now(110)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(time_until_available(&p, 10, &now(111)), None);

        let not_ready = pod(serde_json::json!({
            "metadata": {"name": "b"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
        }));
        assert!(!is_ready(&not_ready));
        assert!(!is_available(&not_ready, 0, &now(100)));
        assert_eq!(time_until_available(&not_ready, 10, &now(100)), None);

        let no_time = pod(serde_json::json!({
            "metadata": {"name": "c"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }));
        assert!(is_available(&no_time, 0, &now(100)));
        assert!(!is_available(&no_time, 5, &now(100)));
    }

    fn order(pods: &[Pod]) -> Vec<String> {
        let mut refs: Vec<&Pod> = pods.iter().collect();
        sort_for_deletion(&mut refs);
        refs.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn deletion_order_follows_active_pods_rules() {
        let unassigned = pod(serde_json::json!({
            "metadata": {"name": "unassigned", "creationTimestamp": at(1)},
            "spec": {"containers": []},
            "status": {"phase": "Pending"}
        }));
        let pending = pod(serde_json::json!({
            "metadata": {"name": "pending", "creationTimestamp": at(1)},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Pending"}
        }));
        let unknown = pod(serde_json::json!({
            "metadata": {"name": "unknown", "creationTimestamp": at(1)},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Unknown"}
        }));
        let running_not_ready = pod(serde_json::json!({
            "metadata": {"name": "not-ready", "creationTimestamp": at(1)},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}
        }));
        let ready_recently = running_ready("ready-recently", 500, 1);
        let ready_long = running_ready("ready-long", 100, 1);
        let pods = vec![
            ready_long.clone(),
            ready_recently.clone(),
            running_not_ready.clone(),
            unknown.clone(),
            pending.clone(),
            unassigned.clone(),
        ];
        assert_eq!(
            order(&pods),
            [
                "unassigned",
                "pending",
                "unknown",
                "not-ready",
                "ready-recently",
                "ready-long"
            ]
        );
    }

    #[test]
    fn restarts_then_creation_time_break_ties() {
        let with_restarts = |name: &str, restarts: i32, created: i64| {
            pod(serde_json::json!({
                "metadata": {"name": name, "creationTimestamp": at(created)},
                "spec": {"nodeName": "n1", "containers": [], "initContainers": [
                    {"name": "sidecar", "restartPolicy": "Always"}
                ]},
                "status": {"phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": at(100)}],
                    "containerStatuses": [{"name": "c", "restartCount": restarts, "image": "", "imageID": "", "ready": true}],
                    "initContainerStatuses": [{"name": "sidecar", "restartCount": 0, "image": "", "imageID": "", "ready": true}]
                }
            }))
        };
        let old_many = with_restarts("old-many-restarts", 5, 10);
        let old_few = with_restarts("old-few-restarts", 1, 10);
        let new_few = with_restarts("new-few-restarts", 1, 20);
        let mut sidecar_restarts = with_restarts("sidecar-restarts", 1, 10);
        sidecar_restarts
            .status
            .as_mut()
            .unwrap()
            .init_container_statuses
            .as_mut()
            .unwrap()[0]
            .restart_count = 3;
        let mut no_creation = with_restarts("no-creation-time", 1, 0);
        no_creation.metadata.creation_timestamp = None;
        assert_eq!(
            order(&[old_few, new_few, old_many, sidecar_restarts, no_creation]),
            [
                "old-many-restarts",
                "sidecar-restarts",
                "no-creation-time",
                "new-few-restarts",
                "old-few-restarts"
            ]
        );
    }

    #[test]
    fn missing_ready_time_sorts_before_known_ready_time() {
        let mut unknown_time = running_ready("unknown-time", 0, 1);
        unknown_time
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .last_transition_time = None;
        let known = running_ready("known", 50, 1);
        assert_eq!(order(&[known, unknown_time]), ["unknown-time", "known"]);
    }

    #[test]
    fn deletion_cost_then_node_doubling_rank_before_ready_time() {
        let on_node = |name: &str, node: &str, ready_at: i64| {
            let mut p = running_ready(name, ready_at, 1);
            p.spec.as_mut().unwrap().node_name = Some(node.into());
            p
        };
        let names = |pods: Vec<&Pod>| -> Vec<String> {
            pods.iter()
                .map(|p| p.metadata.name.clone().unwrap())
                .collect()
        };

        // Cost outranks readiness age: the long-ready cheap pod goes before a fresh one.
        let mut cheap = on_node("cheap", "a", 10);
        cheap.metadata.annotations =
            Some([(POD_DELETION_COST_ANNOTATION.to_string(), "-5".to_string())].into());
        let fresh = on_node("fresh", "b", 500);
        assert_eq!(
            names(choose_pods_to_delete(&[&fresh, &cheap], &[], 1)),
            ["cheap"]
        );
        assert!(!delete_before(&fresh, &cheap));

        // Sharing a node with more related pods outranks readiness age.
        let doubled = on_node("doubled", "busy", 10);
        let neighbour = on_node("neighbour", "busy", 10);
        let lonely = on_node("lonely", "quiet", 500);
        let related = [&doubled, &neighbour, &lonely];
        assert_eq!(
            names(choose_pods_to_delete(&[&lonely, &doubled], &related, 1)),
            ["doubled"]
        );
        // Without ranks the more recently ready pod would go first.
        assert!(delete_before(&lonely, &doubled));
        // Asking for at least as many as there are returns them all.
        assert_eq!(
            choose_pods_to_delete(&[&lonely, &doubled], &related, 5).len(),
            2
        );
    }
}
