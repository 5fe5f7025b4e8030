//! DaemonSet scenarios: single plans on fixtures, and a small in-memory cluster that applies
//! plans as the API server would while a stand-in scheduler and kubelet bind pods, start
//! them and finish deletions.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};

use super::*;
use crate::testing::{at, daemon_set, node, pod, time};

const NS: &str = "default";

/// `agent` in `default`, selecting `app=agent`, on nodes labelled `disk=ssd`.
fn agent_ds(image: &str, strategy: serde_json::Value) -> DaemonSet {
    daemon_set(serde_json::json!({
        "metadata": {"name": "agent", "namespace": NS, "uid": "ds-uid", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": strategy,
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "nodeSelector": {"disk": "ssd"},
                    "containers": [{"name": "c", "image": image}]
                }
            }
        }
    }))
}

fn rolling(max_unavailable: serde_json::Value, max_surge: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": max_unavailable, "maxSurge": max_surge}})
}

fn ready_node(name: &str, disk: &str, taints: serde_json::Value) -> Node {
    node(serde_json::json!({
        "metadata": {"name": name, "labels": {"disk": disk}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
}

/// n1 and n2 have SSDs, n2 carries an untolerated NoSchedule taint; n3 has a spinning disk.
fn three_nodes() -> Vec<Node> {
    vec![
        ready_node("n1", "ssd", serde_json::json!([])),
        ready_node(
            "n2",
            "ssd",
            serde_json::json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        ),
        ready_node("n3", "hdd", serde_json::json!([])),
    ]
}

fn ssd_nodes(count: usize) -> Vec<Node> {
    (1..=count)
        .map(|i| ready_node(&format!("n{i}"), "ssd", serde_json::json!([])))
        .collect()
}

fn image_of(pod: &Pod) -> &str {
    pod.spec.as_ref().unwrap().containers[0]
        .image
        .as_deref()
        .unwrap()
}

fn node_of(pod: &Pod) -> String {
    target_node_name(pod.spec.as_ref()).unwrap()
}

/// An in-memory namespace with nodes, one DaemonSet, its pods and revisions, and a clock.
struct Cluster {
    now: i64,
    ds: DaemonSet,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    revisions: Vec<ControllerRevision>,
    counter: u64,
}

impl Cluster {
    fn new(ds: DaemonSet, nodes: Vec<Node>) -> Cluster {
        Cluster {
            now: 1000,
            ds,
            nodes,
            pods: Vec::new(),
            revisions: Vec::new(),
            counter: 0,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Plans one sync and applies it as the API server would.
    fn sync(&mut self) -> DaemonSetPlan {
        let plan = plan(
            &self.ds,
            &self.nodes,
            &self.pods,
            &self.revisions,
            &time(self.now),
        )
        .unwrap();
        if let Some(revision) = &plan.create_revision {
            let mut revision = revision.clone();
            let id = self.next_id();
            revision.metadata.uid = Some(format!("rev-{id}"));
            revision.metadata.creation_timestamp = Some(time(self.now));
            self.revisions.push(revision);
        }
        for update in &plan.update_revisions {
            let revision = self
                .revisions
                .iter_mut()
                .find(|r| r.metadata.name.as_deref() == Some(&update.name))
                .unwrap();
            revision.revision = update.revision;
        }
        for doomed in &plan.delete_revisions {
            self.revisions
                .retain(|r| r.metadata.name.as_deref() != Some(&doomed.name));
        }
        for delete in &plan.delete_pods {
            let index = self
                .pods
                .iter()
                .position(|p| p.metadata.uid.as_deref() == Some(&delete.uid))
                .expect("uid precondition holds");
            if self.pods[index].metadata.deletion_timestamp.is_none() {
                self.pods[index].metadata.deletion_timestamp = Some(time(self.now));
            }
        }
        for create in &plan.create_pods {
            let mut pod = create.clone();
            let id = self.next_id();
            pod.metadata.name = Some(format!("agent-{id}"));
            pod.metadata.uid = Some(format!("pod-{id}"));
            pod.metadata.creation_timestamp = Some(time(self.now));
            pod.status =
                Some(serde_json::from_value(serde_json::json!({"phase": "Pending"})).unwrap());
            self.pods.push(pod);
        }
        if plan.status_changed {
            self.ds.status = Some(plan.status.clone());
        }
        plan
    }

    /// The scheduler binds pending pods where their affinity says; the kubelet finishes
    /// deletions and starts bound pods (ready now, or never for `broken` images).
    fn kubelet(&mut self, broken: Option<&str>) {
        self.pods
            .retain(|p| p.metadata.deletion_timestamp.is_none());
        let now = self.now;
        for pod in &mut self.pods {
            let target = node_of(pod);
            let spec = pod.spec.as_mut().unwrap();
            if spec.node_name.is_none() {
                spec.node_name = Some(target);
            }
            let status = pod.status.as_mut().unwrap();
            if status.phase.as_deref() == Some("Pending") {
                status.phase = Some("Running".into());
                let ready = broken != Some(image_of_spec(spec));
                status.conditions = Some(
                    serde_json::from_value(serde_json::json!([{
                        "type": "Ready", "status": if ready { "True" } else { "False" },
                        "lastTransitionTime": at(now)
                    }]))
                    .unwrap(),
                );
            }
        }
    }

    fn step(&mut self) -> DaemonSetPlan {
        self.now += 1;
        let plan = self.sync();
        self.kubelet(None);
        plan
    }

    fn live_pods(&self) -> Vec<&Pod> {
        self.pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Eligible nodes (ssd, untainted here) without an available, non-deleted pod.
    fn unavailable_nodes(&self) -> usize {
        let now = time(self.now);
        self.nodes
            .iter()
            .filter(|n| {
                should_run(
                    self.ds
                        .spec
                        .as_ref()
                        .unwrap()
                        .template
                        .spec
                        .as_ref()
                        .unwrap(),
                    n,
                )
                .should_run
            })
            .filter(|n| {
                !self.live_pods().iter().any(|p| {
                    node_of(p) == *n.metadata.name.as_ref().unwrap()
                        && pod_state::is_available(p, 0, &now)
                })
            })
            .count()
    }

    fn set_image(&mut self, image: &str) {
        let spec = self.ds.spec.as_mut().unwrap();
        spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
        let generation = self.ds.metadata.generation.unwrap();
        self.ds.metadata.generation = Some(generation + 1);
    }

    fn converge(&mut self) {
        for _ in 0..10 {
            let plan = self.step();
            if plan.is_noop() {
                return;
            }
        }
        panic!("did not converge");
    }
}

fn image_of_spec(spec: &k8s_openapi::api::core::v1::PodSpec) -> &str {
    spec.containers[0].image.as_deref().unwrap()
}

#[test]
fn one_pod_per_eligible_node_pinned_by_affinity() {
    let ds = agent_ds("agent:1", serde_json::json!({}));
    let plan = plan(&ds, &three_nodes(), &[], &[], &time(100)).unwrap();
    // n2's taint is not tolerated and n3 does not match the node selector.
    assert_eq!(plan.create_pods.len(), 1);
    let pod = &plan.create_pods[0];
    assert_eq!(node_of(pod), "n1");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name, None, "the scheduler binds it");
    let tolerations = spec.tolerations.as_ref().unwrap();
    for key in [node::TAINT_NOT_READY, node::TAINT_UNREACHABLE] {
        let t = tolerations
            .iter()
            .find(|t| t.key.as_deref() == Some(key))
            .unwrap();
        assert_eq!(
            (t.effect.as_deref(), t.toleration_seconds),
            (Some("NoExecute"), None)
        );
    }
    assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
    let labels = pod.metadata.labels.as_ref().unwrap();
    let revision = plan.create_revision.as_ref().unwrap();
    let hash = &revision.metadata.labels.as_ref().unwrap()[CONTROLLER_REVISION_HASH_LABEL];
    assert_eq!(labels[CONTROLLER_REVISION_HASH_LABEL], *hash);
    assert_eq!(labels[POD_TEMPLATE_GENERATION_LABEL], "1");
    assert_eq!(
        revision.metadata.name.as_deref(),
        Some(format!("agent-{hash}").as_str())
    );
    assert_eq!(revision.revision, 1);
    assert_eq!(
        revision.data.as_ref().unwrap().0["spec"]["template"]["$patch"],
        "replace"
    );
    let reference = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (reference.kind.as_str(), reference.uid.as_str()),
        ("DaemonSet", "ds-uid")
    );
    assert_eq!(plan.status.desired_number_scheduled, 1);
    assert_eq!(plan.status.current_number_scheduled, 0);
    assert_eq!(plan.status.number_unavailable, Some(1));

    // Tolerating the taint adds n2.
    let mut tolerant = ds.clone();
    tolerant
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .tolerations = Some(
        serde_json::from_value(serde_json::json!([{"key": "dedicated", "operator": "Exists"}]))
            .unwrap(),
    );
    let plan = super::plan(&tolerant, &three_nodes(), &[], &[], &time(100)).unwrap();
    let nodes: Vec<String> = plan.create_pods.iter().map(node_of).collect();
    assert_eq!(nodes, ["n1", "n2"]);
}

#[test]
fn nodes_added_and_removed() {
    let mut cluster = Cluster::new(agent_ds("agent:1", serde_json::json!({})), three_nodes());
    cluster.converge();
    assert_eq!(cluster.live_pods().len(), 1);
    let status = cluster.ds.status.clone().unwrap();
    assert_eq!(
        (
            status.desired_number_scheduled,
            status.current_number_scheduled,
            status.number_ready
        ),
        (1, 1, 1)
    );
    assert_eq!(status.updated_number_scheduled, Some(1));
    assert_eq!(status.number_available, Some(1));
    assert_eq!(status.observed_generation, Some(1));

    cluster
        .nodes
        .push(ready_node("n4", "ssd", serde_json::json!([])));
    let plan = cluster.step();
    assert_eq!(
        plan.create_pods.iter().map(node_of).collect::<Vec<_>>(),
        ["n4"]
    );
    cluster.converge();
    assert_eq!(cluster.ds.status.as_ref().unwrap().number_ready, 2);

    // A pod still waiting for a node that disappeared is deleted (no pod GC would be).
    let mut stranded = new_daemon_pod(&cluster.ds, "x", "gone", 0);
    stranded.metadata.name = Some("agent-stranded".into());
    stranded.metadata.uid = Some("stranded".into());
    cluster.pods.push(stranded);
    cluster
        .nodes
        .retain(|n| n.metadata.name.as_deref() != Some("n4"));
    let plan = cluster.sync();
    assert_eq!(plan.delete_pods.len(), 1);
    assert_eq!(plan.delete_pods[0].uid, "stranded");
    assert_eq!(plan.status.desired_number_scheduled, 1);
}

#[test]
fn misscheduled_and_duplicate_pods_are_deleted() {
    let mut cluster = Cluster::new(agent_ds("agent:1", serde_json::json!({})), ssd_nodes(2));
    cluster.converge();
    // n2 loses its SSD label: its pod no longer belongs there.
    cluster.nodes[1].metadata.labels = Some([("disk".to_string(), "hdd".to_string())].into());
    let doomed = cluster
        .live_pods()
        .into_iter()
        .find(|p| node_of(p) == "n2")
        .unwrap()
        .metadata
        .uid
        .clone()
        .unwrap();
    let plan = cluster.step();
    assert_eq!(plan.status.number_misscheduled, 1);
    assert_eq!(plan.status.desired_number_scheduled, 1);
    assert_eq!(
        plan.delete_pods
            .iter()
            .map(|d| d.uid.clone())
            .collect::<Vec<_>>(),
        [doomed]
    );
    cluster.converge();
    assert_eq!(cluster.ds.status.as_ref().unwrap().number_misscheduled, 0);

    // A second pod on n1: the newer one goes.
    let mut extra = new_daemon_pod(&cluster.ds, "x", "n1", 0);
    extra.metadata.name = Some("agent-extra".into());
    extra.metadata.uid = Some("extra".into());
    extra.metadata.creation_timestamp = Some(time(cluster.now + 5));
    cluster.pods.push(extra);
    let plan = cluster.sync();
    assert_eq!(plan.delete_pods.len(), 1);
    assert_eq!(plan.delete_pods[0].uid, "extra");
    assert!(plan.create_pods.is_empty());
}

/// Rolls `cluster` to `image`, checking `bound` (most eligible nodes without an available
/// pod) and `max_pods_per_node` after every sync; returns the highest unavailability seen.
fn roll(cluster: &mut Cluster, image: &str, bound: usize, max_pods_per_node: usize) -> usize {
    cluster.set_image(image);
    let mut worst = 0;
    for _ in 0..40 {
        cluster.now += 1;
        let plan = cluster.sync();
        let unavailable = cluster.unavailable_nodes();
        assert!(
            unavailable <= bound,
            "{unavailable} nodes unavailable (bound {bound})"
        );
        worst = worst.max(unavailable);
        for node in &cluster.nodes {
            let here = cluster
                .pods
                .iter()
                .filter(|p| node_of(p) == *node.metadata.name.as_ref().unwrap())
                .count();
            assert!(here <= max_pods_per_node, "{here} pods on one node");
        }
        cluster.kubelet(None);
        let done = cluster.live_pods().iter().all(|p| image_of(p) == image)
            && cluster.live_pods().len() == cluster.nodes.len();
        if done && plan.is_noop() {
            let status = cluster.ds.status.clone().unwrap();
            assert_eq!(
                status.updated_number_scheduled,
                Some(status.desired_number_scheduled)
            );
            return worst;
        }
    }
    panic!("rollout did not finish: {:?}", cluster.ds.status);
}

#[test]
fn rolling_update_stays_within_max_unavailable() {
    let ds = agent_ds(
        "agent:1",
        rolling(serde_json::json!(2), serde_json::json!(0)),
    );
    let mut cluster = Cluster::new(ds, ssd_nodes(5));
    cluster.converge();
    let first_hash = cluster.revisions[0].metadata.labels.as_ref().unwrap()
        [CONTROLLER_REVISION_HASH_LABEL]
        .clone();
    let worst = roll(&mut cluster, "agent:2", 2, 1);
    assert_eq!(worst, 2, "the budget is used");
    assert_eq!(cluster.revisions.len(), 2);
    let current = cluster.revisions.iter().max_by_key(|r| r.revision).unwrap();
    assert_eq!(current.revision, 2);
    assert!(cluster.live_pods().iter().all(|p| {
        p.metadata.labels.as_ref().unwrap()[CONTROLLER_REVISION_HASH_LABEL] != first_hash
    }));

    // A percentage rounds up: 30% of 5 nodes is 2.
    cluster.ds.spec.as_mut().unwrap().update_strategy =
        serde_json::from_value(rolling(serde_json::json!("30%"), serde_json::json!(0))).unwrap();
    assert_eq!(roll(&mut cluster, "agent:3", 2, 1), 2);
    // Rolling back reuses revision 1's object with a new number.
    assert_eq!(roll(&mut cluster, "agent:1", 2, 1), 2);
    let rolled_back = cluster
        .revisions
        .iter()
        .find(|r| r.metadata.labels.as_ref().unwrap()[CONTROLLER_REVISION_HASH_LABEL] == first_hash)
        .unwrap();
    assert_eq!(rolled_back.revision, 4);
}

#[test]
fn rolling_update_with_surge_keeps_every_node_available() {
    let ds = agent_ds(
        "agent:1",
        rolling(serde_json::json!(0), serde_json::json!(1)),
    );
    let mut cluster = Cluster::new(ds, ssd_nodes(3));
    cluster.converge();
    assert_eq!(roll(&mut cluster, "agent:2", 0, 2), 0);
}

#[test]
fn default_strategy_replaces_one_node_at_a_time() {
    let ds = agent_ds("agent:1", serde_json::json!({}));
    let mut cluster = Cluster::new(ds, ssd_nodes(4));
    cluster.converge();
    assert_eq!(roll(&mut cluster, "agent:2", 1, 1), 1);
}

#[test]
fn on_delete_waits_for_the_user() {
    let ds = agent_ds("agent:1", serde_json::json!({"type": "OnDelete"}));
    let mut cluster = Cluster::new(ds, ssd_nodes(2));
    cluster.converge();
    cluster.set_image("agent:2");
    let plan = cluster.step();
    assert!(plan.delete_pods.is_empty() && plan.create_pods.is_empty());
    assert!(plan.create_revision.is_some());
    assert_eq!(
        plan.status.updated_number_scheduled, None,
        "zero is omitted"
    );
    assert_eq!(plan.status.observed_generation, Some(2));
    cluster.converge();
    assert!(cluster.live_pods().iter().all(|p| image_of(p) == "agent:1"));

    // The user deletes one pod; its replacement runs the new template.
    let victim = cluster
        .pods
        .iter_mut()
        .find(|p| node_of(p) == "n1")
        .unwrap();
    victim.metadata.deletion_timestamp = Some(time(cluster.now));
    cluster.kubelet(None);
    cluster.converge();
    let images: Vec<(String, String)> = cluster
        .live_pods()
        .iter()
        .map(|p| (node_of(p), image_of(p).to_string()))
        .collect();
    assert!(images.contains(&("n1".into(), "agent:2".into())));
    assert!(images.contains(&("n2".into(), "agent:1".into())));
    assert_eq!(
        cluster.ds.status.as_ref().unwrap().updated_number_scheduled,
        Some(1)
    );
}

fn fail(pod: &mut Pod, at_second: i64) {
    pod.status = Some(
        serde_json::from_value(serde_json::json!({"phase": "Failed",
            "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": at(at_second)}]}))
        .unwrap(),
    );
}

#[test]
fn failed_pods_are_recreated_with_growing_backoff() {
    let mut cluster = Cluster::new(agent_ds("agent:1", serde_json::json!({})), ssd_nodes(1));
    cluster.converge();
    let failed_at = cluster.now;
    fail(&mut cluster.pods[0], failed_at);
    // First failure: 1s of backoff.
    let plan = cluster.sync();
    assert!(plan.delete_pods.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(1)));
    cluster.now += 1;
    let plan = cluster.sync();
    assert_eq!(plan.delete_pods.len(), 1);
    assert_eq!(plan.events[0].reason, FAILED_DAEMON_POD_REASON);
    assert_eq!(plan.create_pods.len(), 1);
    let annotations = plan.create_pods[0].metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[FAILURE_COUNT_ANNOTATION], "1");
    cluster.kubelet(None);

    // The replacement fails at once: now 2s.
    let failed_at = cluster.now;
    let replacement = cluster
        .pods
        .iter_mut()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .unwrap();
    fail(replacement, failed_at);
    cluster.now += 1;
    let plan = cluster.sync();
    assert!(plan.delete_pods.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(1)));
    cluster.now += 1;
    let plan = cluster.sync();
    assert_eq!(plan.delete_pods.len(), 1);
    assert_eq!(
        plan.create_pods[0].metadata.annotations.as_ref().unwrap()[FAILURE_COUNT_ANNOTATION],
        "2"
    );

    // A pod that ran for an hour before failing starts the count again.
    let mut veteran = new_daemon_pod(&cluster.ds, "x", "n1", 7);
    veteran.metadata.creation_timestamp = Some(time(0));
    fail(&mut veteran, 3600);
    assert_eq!(failed_pod_backoff(&veteran, &time(3601)), Ok(1));
    let mut recent = veteran.clone();
    recent.metadata.creation_timestamp = Some(time(3500));
    assert_eq!(
        failed_pod_backoff(&recent, &time(3601)),
        Err(Duration::from_secs(127))
    );
}

#[test]
fn status_counts_readiness_availability_and_requeues() {
    let mut ds = agent_ds("agent:1", serde_json::json!({}));
    ds.spec.as_mut().unwrap().min_ready_seconds = Some(30);
    let mut cluster = Cluster::new(ds, ssd_nodes(3));
    cluster.step();
    // n3's pod never becomes ready.
    let n3 = cluster
        .pods
        .iter_mut()
        .find(|p| node_of(p) == "n3")
        .unwrap();
    n3.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
    let plan = cluster.step();
    let status = &plan.status;
    assert_eq!(status.desired_number_scheduled, 3);
    assert_eq!(status.current_number_scheduled, 3);
    assert_eq!(status.number_ready, 2);
    assert_eq!(
        status.number_available, None,
        "ready for 1s of the 30 needed"
    );
    assert_eq!(status.number_unavailable, Some(3));
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));
    cluster.now += 30;
    let plan = cluster.sync();
    assert_eq!(plan.status.number_available, Some(2));
    assert_eq!(plan.status.number_unavailable, Some(1));
    assert!(plan.status_changed);
    let again = cluster.sync();
    assert!(again.is_noop(), "{again:?}");
}

#[test]
fn name_collision_bumps_the_collision_count() {
    let ds = agent_ds("agent:1", serde_json::json!({}));
    let first = plan(&ds, &ssd_nodes(1), &[], &[], &time(1)).unwrap();
    let mut squatter = first.create_revision.clone().unwrap();
    squatter.data = Some(k8s_openapi::apimachinery::pkg::runtime::RawExtension(
        serde_json::json!({"spec": {"template": {"metadata": {"labels": {"other": "x"}}}}}),
    ));
    squatter.metadata.owner_references = None;
    squatter.metadata.labels = Some([("other".to_string(), "x".to_string())].into());
    let plan = plan(&ds, &ssd_nodes(1), &[], &[squatter.clone()], &time(2)).unwrap();
    assert_eq!(plan.status.collision_count, Some(1));
    assert!(plan.status_changed && plan.create_pods.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::ZERO));

    let mut bumped = ds.clone();
    bumped.status = Some(plan.status);
    let retry = super::plan(&bumped, &ssd_nodes(1), &[], &[squatter], &time(3)).unwrap();
    let name = retry.create_revision.unwrap().metadata.name.unwrap();
    assert_ne!(Some(name), first.create_revision.unwrap().metadata.name);
    assert_eq!(retry.create_pods.len(), 1);
}

#[test]
fn old_revisions_beyond_the_limit_are_deleted_unless_in_use() {
    let mut ds = agent_ds("agent:1", serde_json::json!({"type": "OnDelete"}));
    ds.spec.as_mut().unwrap().revision_history_limit = Some(1);
    let mut cluster = Cluster::new(ds, ssd_nodes(1));
    cluster.converge();
    cluster.set_image("agent:2");
    cluster.converge();
    cluster.set_image("agent:3");
    cluster.converge();
    // Revisions 1 (used by the running pod), 2 and 3 (current): 2 old, limit 1, and
    // revision 1 is live, so revision 2 goes.
    let mut numbers: Vec<i64> = cluster.revisions.iter().map(|r| r.revision).collect();
    numbers.sort();
    assert_eq!(numbers, [1, 3]);
}

#[test]
fn selecting_everything_and_deleting_do_nothing() {
    let mut ds = agent_ds("agent:1", serde_json::json!({}));
    ds.spec.as_mut().unwrap().selector = Default::default();
    let plan = plan(&ds, &ssd_nodes(1), &[], &[], &time(1)).unwrap();
    assert!(plan.is_noop());
    assert_eq!(plan.events[0].reason, SELECTING_ALL_REASON);

    let mut deleting = agent_ds("agent:1", serde_json::json!({}));
    deleting.metadata.deletion_timestamp = Some(time(1));
    assert!(super::plan(&deleting, &ssd_nodes(1), &[], &[], &time(2))
        .unwrap()
        .is_noop());

    let bad = agent_ds("agent:1", serde_json::json!({"type": "Sideways"}));
    assert_eq!(
        super::plan(&bad, &[], &[], &[], &time(1)),
        Err(DaemonSetError::UnknownStrategy("Sideways".into()))
    );
}

#[test]
fn orphans_are_adopted_and_relabelled_pods_released() {
    let ds = agent_ds("agent:1", serde_json::json!({}));
    let first = plan(&ds, &ssd_nodes(2), &[], &[], &time(1)).unwrap();
    let mut orphan = first.create_pods[0].clone();
    orphan.metadata.name = Some("agent-orphan".into());
    orphan.metadata.uid = Some("orphan".into());
    orphan.metadata.owner_references = None;
    let mut relabelled = first.create_pods[1].clone();
    relabelled.metadata.name = Some("agent-debug".into());
    relabelled.metadata.uid = Some("debug".into());
    relabelled.metadata.labels = Some([("app".to_string(), "debug".to_string())].into());
    let stranger = pod(
        serde_json::json!({"metadata": {"name": "x", "namespace": NS, "labels": {"app": "agent"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "other", "controller": true}]}}),
    );
    let plan = plan(
        &ds,
        &ssd_nodes(2),
        &[orphan, relabelled, stranger],
        &[],
        &time(2),
    )
    .unwrap();
    assert_eq!(plan.adopt_pods.len(), 1);
    assert_eq!(plan.adopt_pods[0].name, "agent-orphan");
    assert_eq!(plan.release_pods.len(), 1);
    assert_eq!(plan.release_pods[0].name, "agent-debug");
    // The adopted pod covers n1; n2 still needs one.
    assert_eq!(
        plan.create_pods.iter().map(node_of).collect::<Vec<_>>(),
        ["n2"]
    );
}
