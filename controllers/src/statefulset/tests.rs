//! StatefulSet scenarios on a small in-memory namespace: plans are applied as the API
//! server would, a stand-in kubelet starts pods (ready or not, as the test says) and
//! finishes deletions.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};

use super::*;
use crate::testing::{at, claim, stateful_set, time};

const NS: &str = "default";

fn web(replicas: i32, extra_spec: serde_json::Value) -> StatefulSet {
    let mut spec = serde_json::json!({
        "replicas": replicas,
        "serviceName": "web-svc",
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "web:1"}]}
        }
    });
    for (key, value) in extra_spec.as_object().unwrap() {
        spec[key] = value.clone();
    }
    stateful_set(serde_json::json!({
        "metadata": {"name": "web", "namespace": NS, "uid": "sts-uid", "generation": 1},
        "spec": spec
    }))
}

fn with_claims(policy: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "volumeClaimTemplates": [{"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        "persistentVolumeClaimRetentionPolicy": policy
    })
}

fn image_of(pod: &Pod) -> &str {
    pod.spec.as_ref().unwrap().containers[0]
        .image
        .as_deref()
        .unwrap()
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect()
}

fn deleted(plan: &StatefulSetPlan) -> Vec<String> {
    plan.delete_pods.iter().map(|d| d.name.clone()).collect()
}

struct Cluster {
    now: i64,
    set: StatefulSet,
    pods: Vec<Pod>,
    claims: Vec<PersistentVolumeClaim>,
    revisions: Vec<ControllerRevision>,
    counter: u64,
    /// New pods become ready when started.
    auto_ready: bool,
}

impl Cluster {
    fn new(set: StatefulSet) -> Cluster {
        Cluster {
            now: 1000,
            set,
            pods: Vec::new(),
            claims: Vec::new(),
            revisions: Vec::new(),
            counter: 0,
            auto_ready: true,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn sync(&mut self) -> StatefulSetPlan {
        let plan = plan(
            &self.set,
            &self.pods,
            &self.claims,
            &self.revisions,
            &time(self.now),
        )
        .unwrap();
        if let Some(revision) = &plan.create_revision {
            let mut revision = revision.clone();
            revision.metadata.uid = Some(format!("rev-{}", self.next_id()));
            self.revisions.push(revision);
        }
        for update in &plan.update_revisions {
            let r = self
                .revisions
                .iter_mut()
                .find(|r| r.metadata.name.as_deref() == Some(&update.name))
                .unwrap();
            r.revision = update.revision;
        }
        for new in &plan.create_claims {
            assert!(!self
                .claims
                .iter()
                .any(|c| c.metadata.name == new.metadata.name));
            let mut new = new.clone();
            new.metadata.uid = Some(format!("pvc-{}", self.next_id()));
            self.claims.push(new);
        }
        for new in &plan.create_pods {
            assert!(
                !self
                    .pods
                    .iter()
                    .any(|p| p.metadata.name == new.metadata.name),
                "AlreadyExists"
            );
            let mut new = new.clone();
            new.metadata.uid = Some(format!("pod-{}", self.next_id()));
            new.metadata.creation_timestamp = Some(time(self.now));
            new.status =
                Some(serde_json::from_value(serde_json::json!({"phase": "Pending"})).unwrap());
            self.pods.push(new);
        }
        for patch in &plan.relabel_pods {
            let pod = self
                .pods
                .iter_mut()
                .find(|p| p.metadata.name.as_deref() == Some(&patch.name))
                .unwrap();
            pod.metadata
                .labels
                .get_or_insert_with(Default::default)
                .extend(patch.set_labels.clone());
        }
        for delete in &plan.delete_pods {
            let pod = self
                .pods
                .iter_mut()
                .find(|p| p.metadata.uid.as_deref() == Some(&delete.uid))
                .expect("uid precondition holds");
            pod.metadata.deletion_timestamp = Some(time(self.now));
        }
        for delete in &plan.delete_claims {
            self.claims.retain(|c| c.metadata.uid != delete.uid);
        }
        for delete in &plan.delete_revisions {
            self.revisions.retain(|r| r.metadata.uid != delete.uid);
        }
        if plan.status_changed {
            self.set.status = Some(plan.status.clone());
        }
        plan
    }

    /// Finishes deletions and starts pending pods.
    fn kubelet(&mut self) {
        self.pods
            .retain(|p| p.metadata.deletion_timestamp.is_none());
        let ready = if self.auto_ready { "True" } else { "False" };
        for pod in &mut self.pods {
            let status = pod.status.as_mut().unwrap();
            if status.phase.as_deref() == Some("Pending") {
                status.phase = Some("Running".into());
                status.conditions = Some(
                    serde_json::from_value(serde_json::json!([{"type": "Ready", "status": ready,
                        "lastTransitionTime": at(self.now)}]))
                    .unwrap(),
                );
            }
        }
    }

    fn step(&mut self) -> StatefulSetPlan {
        self.now += 1;
        let plan = self.sync();
        self.kubelet();
        plan
    }

    fn make_ready(&mut self, name: &str) {
        let now = self.now;
        let pod = self.pod_mut(name);
        pod.status.as_mut().unwrap().conditions = Some(
            serde_json::from_value(serde_json::json!([{"type": "Ready", "status": "True",
                "lastTransitionTime": at(now)}]))
            .unwrap(),
        );
    }

    fn pod_mut(&mut self, name: &str) -> &mut Pod {
        self.pods
            .iter_mut()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .unwrap()
    }

    fn pod_names(&self) -> Vec<String> {
        let mut names = names(&self.pods);
        names.sort();
        names
    }

    fn spec_mut(&mut self) -> &mut StatefulSetSpec {
        let generation = self.set.metadata.generation.unwrap();
        self.set.metadata.generation = Some(generation + 1);
        self.set.spec.as_mut().unwrap()
    }

    fn set_image(&mut self, image: &str) {
        self.spec_mut().template.spec.as_mut().unwrap().containers[0].image = Some(image.into());
    }

    /// Steps until a plan does nothing; returns each step's deleted pod names.
    fn converge(&mut self) -> Vec<Vec<String>> {
        let mut trace = Vec::new();
        for _ in 0..60 {
            let plan = self.step();
            if plan.is_noop() {
                return trace;
            }
            trace.push(deleted(&plan));
        }
        panic!("did not converge: {:?}", self.set.status);
    }

    fn status(&self) -> StatefulSetStatus {
        self.set.status.clone().unwrap()
    }
}

#[test]
fn ordered_ready_creates_one_pod_at_a_time_waiting_for_readiness() {
    let mut cluster = Cluster::new(web(3, serde_json::json!({"minReadySeconds": 10})));
    cluster.auto_ready = false;
    let plan = cluster.step();
    assert_eq!(names(&plan.create_pods), ["web-0"]);
    let pod = &plan.create_pods[0];
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-0"));
    assert_eq!(spec.subdomain.as_deref(), Some("web-svc"));
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[POD_NAME_LABEL], "web-0");
    assert_eq!(labels[POD_INDEX_LABEL], "0");
    let revision = plan.create_revision.as_ref().unwrap();
    assert_eq!(
        labels[CONTROLLER_REVISION_HASH_LABEL],
        *revision.metadata.name.as_ref().unwrap()
    );
    assert!(revision.metadata.name.as_ref().unwrap().starts_with("web-"));
    assert_eq!(
        pod.metadata.owner_references.as_ref().unwrap()[0].kind,
        "StatefulSet"
    );

    // Running but not ready: web-1 waits.
    assert!(cluster.step().create_pods.is_empty());
    cluster.make_ready("web-0");
    // Ready, but not yet for minReadySeconds: still waiting, with a requeue.
    let plan = cluster.step();
    assert!(plan.create_pods.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(10)));
    cluster.now += 10;
    let plan = cluster.step();
    assert_eq!(names(&plan.create_pods), ["web-1"]);
    cluster.make_ready("web-1");
    cluster.now += 11;
    assert_eq!(names(&cluster.step().create_pods), ["web-2"]);
    cluster.make_ready("web-2");
    cluster.now += 11;
    cluster.converge();
    let status = cluster.status();
    assert_eq!(status.replicas, 3);
    assert_eq!(status.ready_replicas, Some(3));
    assert_eq!(status.available_replicas, Some(3));
    assert_eq!(status.current_replicas, Some(3));
    assert_eq!(status.updated_replicas, Some(3));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.current_revision, status.update_revision);
}

#[test]
fn ordinals_start_where_the_spec_says() {
    let mut cluster = Cluster::new(web(2, serde_json::json!({"ordinals": {"start": 5}})));
    cluster.converge();
    assert_eq!(cluster.pod_names(), ["web-5", "web-6"]);
    assert_eq!(
        cluster.pods[0].metadata.labels.as_ref().unwrap()[POD_INDEX_LABEL],
        "5"
    );
}

#[test]
fn scale_down_removes_the_highest_ordinal_first_one_at_a_time() {
    let mut cluster = Cluster::new(web(4, serde_json::json!({})));
    cluster.converge();
    cluster.spec_mut().replicas = Some(1);
    // A terminating pod blocks the next deletion: sync twice before the kubelet runs.
    cluster.now += 1;
    assert_eq!(deleted(&cluster.sync()), ["web-3"]);
    assert!(
        cluster.sync().delete_pods.is_empty(),
        "web-3 still terminating"
    );
    cluster.kubelet();
    let trace: Vec<Vec<String>> = cluster
        .converge()
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(
        trace,
        [vec!["web-2".to_string()], vec!["web-1".to_string()]]
    );
    assert_eq!(cluster.pod_names(), ["web-0"]);
    assert_eq!(cluster.status().replicas, 1);
}

#[test]
fn parallel_creates_and_deletes_all_at_once() {
    let mut cluster = Cluster::new(web(
        3,
        serde_json::json!({"podManagementPolicy": "Parallel"}),
    ));
    cluster.auto_ready = false;
    let plan = cluster.step();
    assert_eq!(names(&plan.create_pods), ["web-0", "web-1", "web-2"]);
    cluster.spec_mut().replicas = Some(0);
    let plan = cluster.step();
    let mut doomed = deleted(&plan);
    doomed.sort();
    assert_eq!(doomed, ["web-0", "web-1", "web-2"]);
}

#[test]
fn claims_are_created_before_pods_and_deleted_per_retention_policy() {
    let set = web(
        2,
        with_claims(serde_json::json!({"whenScaled": "Delete", "whenDeleted": "Retain"})),
    );
    let mut cluster = Cluster::new(set);
    let plan = cluster.step();
    let claim = &plan.create_claims[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("data-web-0"));
    assert_eq!(claim.metadata.labels.as_ref().unwrap()["app"], "web");
    assert_eq!(
        claim.metadata.owner_references, None,
        "retained with the set"
    );
    let volume = &plan.create_pods[0]
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()[0];
    assert_eq!(volume.name, "data");
    assert_eq!(
        volume.persistent_volume_claim.as_ref().unwrap().claim_name,
        "data-web-0"
    );
    cluster.converge();
    let mut claim_names: Vec<_> = cluster
        .claims
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    claim_names.sort();
    assert_eq!(claim_names, ["data-web-0", "data-web-1"]);

    // Scaling down: web-1 goes, then its claim once the pod is gone.
    cluster.spec_mut().replicas = Some(1);
    cluster.now += 1;
    let plan = cluster.sync();
    assert_eq!(deleted(&plan), ["web-1"]);
    assert!(plan.delete_claims.is_empty(), "the pod still exists");
    cluster.kubelet();
    let plan = cluster.step();
    assert_eq!(plan.delete_claims.len(), 1);
    assert_eq!(plan.delete_claims[0].name, "data-web-1");
    assert_eq!(cluster.claims.len(), 1);

    // A claim still being deleted holds back the pod that needs it.
    cluster.spec_mut().replicas = Some(2);
    let mut terminating = claim_named("data-web-1");
    terminating.metadata.deletion_timestamp = Some(time(cluster.now));
    cluster.claims.push(terminating);
    let plan = cluster.step();
    assert!(plan.create_pods.is_empty() && plan.create_claims.is_empty());
    assert_eq!(plan.requeue_after, Some(CLAIM_DELETION_RETRY));
    cluster
        .claims
        .retain(|c| c.metadata.deletion_timestamp.is_none());
    let plan = cluster.step();
    assert_eq!(names(&plan.create_pods), ["web-1"]);
    assert_eq!(plan.create_claims.len(), 1);
}

fn claim_named(name: &str) -> PersistentVolumeClaim {
    claim(
        serde_json::json!({"metadata": {"name": name, "namespace": NS, "uid": format!("u-{name}"),
        "labels": {"app": "web"}}}),
    )
}

#[test]
fn retained_claims_survive_scale_down_and_set_deletion_can_delete_them() {
    let mut cluster = Cluster::new(web(2, with_claims(serde_json::json!({}))));
    cluster.converge();
    cluster.spec_mut().replicas = Some(1);
    cluster.converge();
    assert_eq!(cluster.claims.len(), 2, "Retain keeps data-web-1");

    let set = web(
        1,
        with_claims(serde_json::json!({"whenScaled": "Retain", "whenDeleted": "Delete"})),
    );
    let mut cluster = Cluster::new(set);
    let plan = cluster.step();
    let reference = &plan.create_claims[0]
        .metadata
        .owner_references
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        (reference.kind.as_str(), reference.uid.as_str()),
        ("StatefulSet", "sts-uid")
    );
    cluster.converge();
    cluster.set.metadata.deletion_timestamp = Some(time(cluster.now));
    let plan = cluster.step();
    assert!(plan.delete_claims.is_empty(), "web-0 is still there");
    assert!(plan.create_pods.is_empty() && plan.delete_pods.is_empty());
    cluster.pods.clear();
    let plan = cluster.step();
    assert_eq!(plan.delete_claims.len(), 1);
}

#[test]
fn rolling_update_respects_the_partition_highest_ordinal_first() {
    let mut set = web(4, serde_json::json!({}));
    set.spec.as_mut().unwrap().update_strategy = Some(
        serde_json::from_value(serde_json::json!({"type": "RollingUpdate",
            "rollingUpdate": {"partition": 2}}))
        .unwrap(),
    );
    let mut cluster = Cluster::new(set);
    cluster.converge();
    let old_revision = cluster.status().current_revision.unwrap();
    cluster.set_image("web:2");
    let trace: Vec<Vec<String>> = cluster
        .converge()
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(
        trace,
        [vec!["web-3".to_string()], vec!["web-2".to_string()]]
    );
    let images: Vec<(String, String)> = {
        let mut pods: Vec<&Pod> = cluster.pods.iter().collect();
        pods.sort_by_key(|p| p.metadata.name.clone());
        pods.iter()
            .map(|p| (p.metadata.name.clone().unwrap(), image_of(p).to_string()))
            .collect()
    };
    assert_eq!(
        images,
        [
            ("web-0".to_string(), "web:1".to_string()),
            ("web-1".into(), "web:1".into()),
            ("web-2".into(), "web:2".into()),
            ("web-3".into(), "web:2".into())
        ]
    );
    let status = cluster.status();
    assert_eq!(
        status.current_revision.as_deref(),
        Some(old_revision.as_str())
    );
    assert_ne!(status.update_revision, status.current_revision);
    assert_eq!(
        (status.current_replicas, status.updated_replicas),
        (Some(2), Some(2))
    );

    // A pod below the partition that is recreated keeps the current revision.
    cluster.pod_mut("web-0").metadata.deletion_timestamp = Some(time(cluster.now));
    cluster.kubelet();
    cluster.converge();
    assert_eq!(image_of(cluster.pod_mut("web-0")), "web:1");

    // Partition 0 finishes the rollout; the update revision becomes current.
    cluster
        .spec_mut()
        .update_strategy
        .as_mut()
        .unwrap()
        .rolling_update
        .as_mut()
        .unwrap()
        .partition = Some(0);
    let trace: Vec<Vec<String>> = cluster
        .converge()
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect();
    assert_eq!(
        trace,
        [vec!["web-1".to_string()], vec!["web-0".to_string()]]
    );
    let status = cluster.status();
    assert_eq!(status.current_revision, status.update_revision);
    assert_eq!(
        (status.current_replicas, status.updated_replicas),
        (Some(4), Some(4))
    );
    assert_eq!(cluster.revisions.len(), 2);
}

#[test]
fn max_unavailable_deletes_several_outdated_pods_at_once() {
    let mut set = web(4, serde_json::json!({}));
    set.spec.as_mut().unwrap().update_strategy = Some(
        serde_json::from_value(serde_json::json!({"type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 2}}))
        .unwrap(),
    );
    let mut cluster = Cluster::new(set);
    cluster.converge();
    cluster.set_image("web:2");
    cluster.now += 1;
    let plan = cluster.sync();
    assert_eq!(deleted(&plan), ["web-3", "web-2"]);
    assert_eq!(plan.status.current_replicas, Some(2));
    // Two unavailable already: nothing more until they are back.
    assert!(cluster.sync().delete_pods.is_empty());
    cluster.kubelet();
    cluster.converge();
    assert!(cluster.pods.iter().all(|p| image_of(p) == "web:2"));
}

#[test]
fn on_delete_only_updates_pods_the_user_deletes() {
    let mut cluster = Cluster::new(web(
        2,
        serde_json::json!({"updateStrategy": {"type": "OnDelete"}}),
    ));
    cluster.converge();
    cluster.set_image("web:2");
    let trace = cluster.converge();
    assert!(trace.iter().all(|d| d.is_empty()));
    assert!(cluster.pods.iter().all(|p| image_of(p) == "web:1"));
    let status = cluster.status();
    assert_eq!(
        (status.current_replicas, status.updated_replicas),
        (Some(2), None)
    );
    assert_eq!(status.observed_generation, Some(2));

    cluster.pod_mut("web-1").metadata.deletion_timestamp = Some(time(cluster.now));
    cluster.kubelet();
    cluster.converge();
    assert_eq!(image_of(cluster.pod_mut("web-1")), "web:2");
    assert_eq!(cluster.status().updated_replicas, Some(1));
}

#[test]
fn failed_pods_are_deleted_then_recreated_and_block_ordered_progress() {
    let mut cluster = Cluster::new(web(3, serde_json::json!({})));
    cluster.converge();
    cluster.spec_mut().replicas = Some(4);
    let uid = cluster.pod_mut("web-1").metadata.uid.clone();
    cluster.pod_mut("web-1").status.as_mut().unwrap().phase = Some("Failed".into());
    cluster.now += 1;
    let plan = cluster.sync();
    assert_eq!(deleted(&plan), ["web-1"]);
    assert_eq!(plan.delete_pods[0].uid, uid.unwrap());
    assert_eq!(plan.events[0].reason, "RecreatingFailedPod");
    assert!(plan.create_pods.is_empty(), "web-3 waits behind web-1");
    cluster.kubelet();
    let plan = cluster.step();
    assert_eq!(names(&plan.create_pods), ["web-1"]);
    cluster.converge();
    assert_eq!(cluster.pod_names(), ["web-0", "web-1", "web-2", "web-3"]);
}

#[test]
fn orphans_are_adopted_and_identity_labels_restored() {
    let set = web(1, serde_json::json!({}));
    let first = plan(&set, &[], &[], &[], &time(1)).unwrap();
    let mut orphan = first.create_pods[0].clone();
    orphan.metadata.owner_references = None;
    orphan.metadata.uid = Some("orphan".into());
    orphan
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(POD_NAME_LABEL);
    orphan.status = Some(
        serde_json::from_value(serde_json::json!({"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}))
        .unwrap(),
    );
    let mut stranger = orphan.clone();
    stranger.metadata.name = Some("webby-0".into());
    let plan = plan(&set, &[orphan, stranger], &[], &[], &time(2)).unwrap();
    assert_eq!(plan.adopt_pods.len(), 1);
    assert_eq!(plan.adopt_pods[0].name, "web-0");
    assert!(plan.create_pods.is_empty());
    assert_eq!(plan.relabel_pods.len(), 1);
    assert_eq!(plan.relabel_pods[0].set_labels[POD_NAME_LABEL], "web-0");
}

#[test]
fn history_is_truncated_and_rollbacks_renumber() {
    let mut set = web(1, serde_json::json!({"revisionHistoryLimit": 1}));
    set.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("web:1".into());
    let mut cluster = Cluster::new(set);
    cluster.converge();
    for image in ["web:2", "web:3"] {
        cluster.set_image(image);
        cluster.converge();
    }
    // Revisions 1..3 existed; 1 is neither current, update nor used: gone.
    let mut numbers: Vec<i64> = cluster.revisions.iter().map(|r| r.revision).collect();
    numbers.sort();
    assert_eq!(numbers, [2, 3]);
    cluster.set_image("web:2");
    let plan = cluster.step();
    assert_eq!(plan.update_revisions.len(), 1);
    assert_eq!(plan.update_revisions[0].revision, 4);
    assert!(plan.create_revision.is_none());
    cluster.converge();
    assert_eq!(image_of(&cluster.pods[0]), "web:2");
}

#[test]
fn bad_specs_are_errors() {
    let bad = web(1, serde_json::json!({"podManagementPolicy": "Random"}));
    assert_eq!(
        plan(&bad, &[], &[], &[], &time(1)),
        Err(StatefulSetError::UnknownPodManagementPolicy(
            "Random".into()
        ))
    );
    let bad = web(
        1,
        serde_json::json!({"updateStrategy": {"type": "Sometimes"}}),
    );
    assert!(matches!(
        plan(&bad, &[], &[], &[], &time(1)),
        Err(StatefulSetError::UnknownStrategy(_))
    ));
}
