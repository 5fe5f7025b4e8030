//! Deployment scenarios: single plans on fixtures, and a small in-memory cluster that
//! runs the Deployment and ReplicaSet planners against each other (applying their plans
//! the way an API server would) while pods start, become ready and terminate.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::reasons::*;
use super::spec::Params;
use super::*;
use crate::pod_state;
use crate::replicaset;
use crate::testing::{at, deployment, replica_set, time};

const NAMESPACE: &str = "default";

/// `web` in `default`, selecting `app=web`, running `image`.
fn web(replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    deployment(serde_json::json!({
        "metadata": {
            "name": "web", "namespace": NAMESPACE, "uid": "d-uid", "generation": 1,
            "annotations": {
                "team": "storefront",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"
            }
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": image}]}
            }
        }
    }))
}

fn rolling(max_surge: serde_json::Value, max_unavailable: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": max_unavailable}})
}

fn spec_mut(d: &mut Deployment) -> &mut DeploymentSpec {
    d.spec.as_mut().unwrap()
}

fn condition<'a>(
    d: &'a Deployment,
    type_: &str,
) -> Option<&'a k8s_openapi::api::apps::v1::DeploymentCondition> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn annotation<'a>(rs: &'a ReplicaSet, key: &str) -> Option<&'a str> {
    rs.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn image_of(template_holder: &ReplicaSet) -> String {
    let template = template_holder
        .spec
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap();
    template.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

/// Bounds a rollout must respect at every step.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    max_pods: i32,
    min_available: i32,
}

/// An in-memory namespace: one Deployment, its ReplicaSets and pods, and a clock.
struct Cluster {
    now: i64,
    deployment: Deployment,
    replica_sets: Vec<ReplicaSet>,
    pods: Vec<Pod>,
    counter: u64,
    /// Pods running one of these images never become ready.
    broken_images: BTreeSet<String>,
    /// Checked after every write while set.
    bounds: Option<Bounds>,
    peak_pods: i32,
    lowest_available: i32,
    /// Each step's (old active pods, new active pods, old terminating pods), for
    /// ordering checks.
    trace: Vec<(usize, usize, usize)>,
    last_plan: Option<DeploymentPlan>,
}

impl Cluster {
    fn new(deployment: Deployment) -> Cluster {
        Cluster {
            now: 1000,
            deployment,
            replica_sets: Vec::new(),
            pods: Vec::new(),
            counter: 0,
            broken_images: BTreeSet::new(),
            bounds: None,
            peak_pods: 0,
            lowest_available: i32::MAX,
            trace: Vec::new(),
            last_plan: None,
        }
    }

    fn time(&self) -> Time {
        time(self.now)
    }

    fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Edits the Deployment's spec as a user would (the API server bumps the generation).
    fn edit(&mut self, change: impl FnOnce(&mut DeploymentSpec)) {
        change(spec_mut(&mut self.deployment));
        let generation = self.deployment.metadata.generation.unwrap_or(0);
        self.deployment.metadata.generation = Some(generation + 1);
    }

    fn set_image(&mut self, image: &str) {
        self.edit(|spec| {
            spec.template.spec.as_mut().unwrap().containers[0].image = Some(image.to_string())
        });
    }

    fn params(&self) -> Params {
        Params::resolve(&self.deployment).unwrap()
    }

    fn plan_deployment(&self) -> DeploymentPlan {
        plan(
            &self.deployment,
            &self.replica_sets,
            &self.pods,
            &self.time(),
        )
        .unwrap()
    }

    fn apply_deployment_plan(&mut self, plan: &DeploymentPlan) {
        for change in plan.adopt.iter().chain(&plan.release) {
            let rs = self
                .replica_sets
                .iter_mut()
                .find(|rs| rs.metadata.uid.as_deref() == Some(&change.uid))
                .unwrap();
            change.apply_to(&mut rs.metadata);
        }
        if let Some(new_rs) = &plan.create {
            let mut new_rs = new_rs.clone();
            let name = new_rs.metadata.name.clone().unwrap();
            assert!(
                self.replica_sets
                    .iter()
                    .all(|rs| rs.metadata.name.as_deref() != Some(&name)),
                "creating {name}, which exists"
            );
            let id = self.next_id();
            new_rs.metadata.uid = Some(format!("rs-uid-{id}"));
            new_rs.metadata.creation_timestamp = Some(self.time());
            new_rs.metadata.generation = Some(1);
            self.replica_sets.push(new_rs);
        }
        for update in &plan.update {
            let rs = self
                .replica_sets
                .iter_mut()
                .find(|rs| rs.metadata.name.as_deref() == Some(&update.name))
                .unwrap();
            let spec_before = rs.spec.clone();
            update.apply_to(rs);
            if rs.spec != spec_before {
                rs.metadata.generation = Some(rs.metadata.generation.unwrap_or(0) + 1);
            }
        }
        for doomed in &plan.delete {
            self.replica_sets
                .retain(|rs| rs.metadata.name.as_deref() != Some(&doomed.name));
            // The garbage collector removes what the ReplicaSet owned.
            let uid = doomed.uid.clone().unwrap();
            self.pods
                .retain(|p| !owner::is_controlled_by(&p.metadata, &uid));
        }
        if !plan.deployment_annotations.is_empty() {
            let annotations = self
                .deployment
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            annotations.extend(plan.deployment_annotations.clone());
        }
        if plan.status_changed {
            self.deployment.status = Some(plan.status.clone());
        }
        self.last_plan = Some(plan.clone());
    }

    /// One pass of the ReplicaSet controller over every ReplicaSet; true if it wrote.
    fn sync_replica_sets(&mut self) -> bool {
        let mut wrote = false;
        for index in 0..self.replica_sets.len() {
            let rs = self.replica_sets[index].clone();
            let plan = replicaset::plan(&rs, &self.pods, &self.time()).unwrap();
            if plan.is_noop() {
                continue;
            }
            wrote = true;
            for change in plan.adopt.iter().chain(&plan.release) {
                let pod = self
                    .pods
                    .iter_mut()
                    .find(|p| p.metadata.uid.as_deref() == Some(&change.uid))
                    .unwrap();
                change.apply_to(&mut pod.metadata);
            }
            for _ in 0..plan.create {
                let mut pod = plan.pod_to_create.clone().unwrap();
                let id = self.next_id();
                let prefix = pod.metadata.generate_name.clone().unwrap();
                pod.metadata.name = Some(format!("{prefix}{id}"));
                pod.metadata.uid = Some(format!("pod-uid-{id}"));
                pod.metadata.creation_timestamp = Some(self.time());
                pod.status =
                    Some(serde_json::from_value(serde_json::json!({"phase": "Pending"})).unwrap());
                self.pods.push(pod);
            }
            for doomed in &plan.delete {
                let now = self.time();
                let pod = self
                    .pods
                    .iter_mut()
                    .find(|p| p.metadata.uid.as_deref() == Some(&doomed.uid))
                    .unwrap();
                pod.metadata.deletion_timestamp = Some(now);
            }
            if plan.status_changed {
                self.replica_sets[index].status = Some(plan.status.clone());
            }
            self.check();
        }
        wrote
    }

    /// Runs both controllers until neither has anything left to write.
    fn settle(&mut self) {
        for _ in 0..100 {
            let plan = self.plan_deployment();
            let deployment_wrote = !plan.is_noop();
            if deployment_wrote {
                self.apply_deployment_plan(&plan);
                self.check();
            } else {
                self.last_plan = Some(plan);
            }
            let replica_sets_wrote = self.sync_replica_sets();
            if !deployment_wrote && !replica_sets_wrote {
                return;
            }
        }
        panic!("controllers did not settle: {:#?}", self.last_plan);
    }

    /// Time passes: terminating pods go away, pending pods start (and, unless broken,
    /// become ready now).
    fn tick(&mut self, seconds: i64) {
        self.now += seconds;
        self.pods
            .retain(|p| p.metadata.deletion_timestamp.is_none());
        let now = at(self.now);
        for pod in &mut self.pods {
            let status = pod.status.get_or_insert_with(Default::default);
            if status.phase.as_deref() != Some("Pending") {
                continue;
            }
            let image = pod.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap();
            let ready = if self.broken_images.contains(&image) {
                "False"
            } else {
                "True"
            };
            pod.spec.as_mut().unwrap().node_name = Some("node-1".into());
            *status = serde_json::from_value(serde_json::json!({
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": now}]
            }))
            .unwrap();
        }
    }

    fn owned_by_deployment(&self, pod: &Pod) -> Option<&ReplicaSet> {
        let controller = owner::controller_of(&pod.metadata)?;
        self.replica_sets
            .iter()
            .find(|rs| rs.metadata.uid.as_deref() == Some(&controller.uid))
    }

    fn new_image(&self) -> String {
        let template = &self.deployment.spec.as_ref().unwrap().template;
        template.spec.as_ref().unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    }

    /// Counts active pods by old/new template and checks the rollout bounds.
    fn check(&mut self) {
        let new_image = self.new_image();
        let min_ready = self.params().min_ready_seconds;
        let now = self.time();
        let (mut old, mut new, mut available, mut old_terminating) = (0, 0, 0, 0);
        for pod in &self.pods {
            let Some(rs) = self.owned_by_deployment(pod) else {
                continue;
            };
            if !pod_state::is_active(pod) {
                if image_of(rs) != new_image && !pod_state::is_terminal(pod) {
                    old_terminating += 1;
                }
                continue;
            }
            if image_of(rs) == new_image {
                new += 1;
            } else {
                old += 1;
            }
            if pod_state::is_available(pod, min_ready, &now) {
                available += 1;
            }
        }
        self.trace.push((old, new, old_terminating));
        let total = (old + new) as i32;
        self.peak_pods = self.peak_pods.max(total);
        self.lowest_available = self.lowest_available.min(available);
        if let Some(bounds) = self.bounds {
            assert!(
                total <= bounds.max_pods,
                "{total} pods > {} at {:?}",
                bounds.max_pods,
                self.trace
            );
            assert!(
                available >= bounds.min_available,
                "{available} available < {} at {:?}",
                bounds.min_available,
                self.trace
            );
        }
    }

    /// Settles and ticks until `kubectl rollout status` says done; returns the ticks.
    fn roll_out(&mut self, tick_seconds: i64, max_ticks: usize) -> usize {
        for ticks in 0..max_ticks {
            self.settle();
            if let RolloutVerdict::Complete(_) = kubectl_rollout_status(&self.deployment) {
                return ticks;
            }
            self.tick(tick_seconds);
        }
        panic!(
            "rollout did not complete: {:?}\n{:#?}",
            self.trace, self.deployment.status
        );
    }

    /// Rolls out the initial version, then watches bounds from here on.
    fn steady(deployment: Deployment) -> Cluster {
        let mut cluster = Cluster::new(deployment);
        cluster.roll_out(10, 50);
        let params = cluster.params();
        cluster.bounds = Some(Bounds {
            max_pods: params.max_total(),
            min_available: params.min_available(),
        });
        cluster.peak_pods = 0;
        cluster.lowest_available = i32::MAX;
        cluster.trace.clear();
        cluster
    }

    fn rs_named(&self, name: &str) -> &ReplicaSet {
        self.replica_sets
            .iter()
            .find(|rs| rs.metadata.name.as_deref() == Some(name))
            .unwrap()
    }

    fn rs_with_image(&self, image: &str) -> &ReplicaSet {
        self.replica_sets
            .iter()
            .find(|rs| image_of(rs) == image)
            .unwrap()
    }

    fn replicas_by_image(&self) -> Vec<(String, i32)> {
        self.replica_sets
            .iter()
            .map(|rs| (image_of(rs), rs.spec.as_ref().unwrap().replicas.unwrap()))
            .collect()
    }
}

#[test]
fn first_sync_creates_the_new_replica_set() {
    let d = web(3, "nginx:1", rolling(1.into(), 0.into()));
    let plan = plan(&d, &[], &[], &time(100)).unwrap();
    let hash = compute_hash(&d.spec.as_ref().unwrap().template, None);
    let rs = plan.create.clone().unwrap();
    assert_eq!(rs.metadata.name, Some(format!("web-{hash}")));
    assert_eq!(rs.metadata.namespace.as_deref(), Some(NAMESPACE));
    let labels = rs.metadata.labels.clone().unwrap();
    assert_eq!(labels[POD_TEMPLATE_HASH_LABEL], hash);
    assert_eq!(labels["app"], "web");
    let spec = rs.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        spec.selector.match_labels.as_ref().unwrap()[POD_TEMPLATE_HASH_LABEL],
        hash
    );
    let template_labels = spec
        .template
        .as_ref()
        .unwrap()
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert_eq!(template_labels[POD_TEMPLATE_HASH_LABEL], hash);
    let reference = owner::controller_of(&rs.metadata).unwrap();
    assert_eq!(
        (
            reference.kind.as_str(),
            reference.name.as_str(),
            reference.uid.as_str()
        ),
        ("Deployment", "web", "d-uid")
    );
    assert_eq!(reference.block_owner_deletion, Some(true));
    assert_eq!(annotation(&rs, REVISION_ANNOTATION), Some("1"));
    assert_eq!(annotation(&rs, DESIRED_REPLICAS_ANNOTATION), Some("3"));
    assert_eq!(annotation(&rs, MAX_REPLICAS_ANNOTATION), Some("4"));
    assert_eq!(annotation(&rs, "team"), Some("storefront"));
    assert_eq!(
        annotation(&rs, "kubectl.kubernetes.io/last-applied-configuration"),
        None
    );

    assert_eq!(plan.deployment_annotations[REVISION_ANNOTATION], "1");
    assert!(plan.status_changed);
    let progressing = plan
        .status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == PROGRESSING)
        .unwrap();
    assert_eq!(progressing.reason.as_deref(), Some(NEW_REPLICA_SET_CREATED));
    assert_eq!(
        progressing.message,
        Some(format!("Created new replica set \"web-{hash}\""))
    );
    let available = plan
        .status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == AVAILABLE)
        .unwrap();
    assert_eq!(
        (available.status.as_str(), available.reason.as_deref()),
        ("False", Some(MINIMUM_REPLICAS_UNAVAILABLE))
    );
    assert_eq!(
        available.message.as_deref(),
        Some("Deployment does not have minimum availability.")
    );
    assert_eq!(plan.status.observed_generation, Some(1));
    assert_eq!(
        plan.events[0].message,
        format!("Scaled up replica set web-{hash} to 3")
    );
    // Progress deadline (600s default) timer.
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(601)));
}

#[test]
fn first_rollout_completes_with_rollout_status_fields_and_then_plans_nothing() {
    let mut cluster = Cluster::new(web(3, "nginx:1", rolling("25%".into(), "25%".into())));
    cluster.roll_out(10, 20);
    let status = cluster.deployment.status.clone().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        (status.replicas, status.updated_replicas),
        (Some(3), Some(3))
    );
    assert_eq!(
        (status.ready_replicas, status.available_replicas),
        (Some(3), Some(3))
    );
    assert_eq!(status.unavailable_replicas, None);
    let rs = &cluster.replica_sets[0];
    let progressing = condition(&cluster.deployment, PROGRESSING).unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_deref()),
        ("True", Some(NEW_REPLICA_SET_AVAILABLE))
    );
    assert_eq!(
        progressing.message,
        Some(format!(
            "ReplicaSet \"{}\" has successfully progressed.",
            rs.metadata.name.as_deref().unwrap()
        ))
    );
    let available = condition(&cluster.deployment, AVAILABLE).unwrap();
    assert_eq!(
        (available.status.as_str(), available.reason.as_deref()),
        ("True", Some(MINIMUM_REPLICAS_AVAILABLE))
    );
    assert_eq!(
        available.message.as_deref(),
        Some("Deployment has minimum availability.")
    );
    assert_eq!(
        kubectl_rollout_status(&cluster.deployment),
        RolloutVerdict::Complete("deployment \"web\" successfully rolled out".into())
    );
    assert_eq!(
        cluster.deployment.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION],
        "1"
    );

    // Idempotent: later syncs, even much later, write nothing and set no timer.
    cluster.now += 3600;
    let again = cluster.plan_deployment();
    assert!(again.is_noop(), "{again:#?}");
    assert_eq!(again.requeue_after, None);
}

/// Rolls from nginx:1 to nginx:2 under `strategy`, checking the bounds at every write.
fn rolling_update(replicas: i32, strategy: serde_json::Value, min_ready_seconds: i32) -> Cluster {
    let mut d = web(replicas, "nginx:1", strategy);
    spec_mut(&mut d).min_ready_seconds = Some(min_ready_seconds);
    let mut cluster = Cluster::steady(d);
    cluster.set_image("nginx:2");
    cluster.roll_out(5, 200);
    let sizes = cluster.replicas_by_image();
    assert_eq!(
        sizes,
        [
            ("nginx:1".to_string(), 0),
            ("nginx:2".to_string(), replicas)
        ]
    );
    let new_rs = cluster.rs_with_image("nginx:2");
    assert_eq!(annotation(new_rs, REVISION_ANNOTATION), Some("2"));
    assert_eq!(
        cluster.deployment.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION],
        "2"
    );
    let active = cluster.pods.iter().filter(|p| pod_state::is_active(p));
    assert!(active
        .clone()
        .all(|p| image_of(cluster.owned_by_deployment(p).unwrap()) == "nginx:2"));
    assert_eq!(active.count(), replicas as usize);
    cluster
}

#[test]
fn rolling_update_with_percentages_stays_within_surge_and_unavailability() {
    // 10 replicas, 25%/25%: 3 surge (rounded up), 2 unavailable (rounded down).
    let cluster = rolling_update(10, rolling("25%".into(), "25%".into()), 0);
    assert_eq!(cluster.peak_pods, 13);
    assert_eq!(cluster.lowest_available, 8);
}

#[test]
fn rolling_update_with_absolute_values() {
    let cluster = rolling_update(5, rolling(2.into(), 1.into()), 0);
    assert_eq!(cluster.peak_pods, 7);
    assert_eq!(cluster.lowest_available, 4);
}

#[test]
fn rolling_update_with_zero_surge_replaces_in_place() {
    let cluster = rolling_update(4, rolling(0.into(), 1.into()), 0);
    assert_eq!(cluster.peak_pods, 4);
    assert_eq!(cluster.lowest_available, 3);
}

#[test]
fn rolling_update_with_zero_unavailable_surges_first() {
    let cluster = rolling_update(4, rolling(1.into(), 0.into()), 0);
    assert_eq!(cluster.peak_pods, 5);
    assert_eq!(cluster.lowest_available, 4);
}

#[test]
fn rolling_update_with_both_rounding_to_zero_allows_one_unavailable() {
    // 0% surge and 10% of 3 unavailable both round to 0: Kubernetes allows 1 unavailable.
    let cluster = rolling_update(3, rolling("0%".into(), "10%".into()), 0);
    assert_eq!(cluster.peak_pods, 3);
    assert_eq!(cluster.lowest_available, 2);
}

#[test]
fn rolling_update_waits_for_min_ready_seconds() {
    let mut d = web(4, "nginx:1", rolling(1.into(), 0.into()));
    spec_mut(&mut d).min_ready_seconds = Some(30);
    let fast = rolling_update(4, rolling(1.into(), 0.into()), 0);
    let mut slow = Cluster::steady(d);
    slow.set_image("nginx:2");
    let slow_ticks = slow.roll_out(5, 400);
    // Each of the 4 replacements waits 30s of readiness before the next step.
    assert!(slow_ticks >= 4 * 6, "{slow_ticks}");
    assert_eq!(slow.lowest_available, 4);
    assert_eq!(fast.lowest_available, 4);
    // minReadySeconds is carried to the ReplicaSet (the ReplicaSet controller counts with it).
    assert_eq!(
        slow.rs_with_image("nginx:2")
            .spec
            .as_ref()
            .unwrap()
            .min_ready_seconds,
        Some(30)
    );
}

#[test]
fn rolling_update_step_by_step() {
    // 4 replicas, 1 surge, 1 unavailable. First sync: create the new RS at the surge
    // (1) and, in the same sync as Kubernetes does, scale the old one down by what
    // availability allows (4 available - 3 minimum = 1).
    let mut cluster = Cluster::steady(web(4, "nginx:1", rolling(1.into(), 1.into())));
    cluster.set_image("nginx:2");
    let old_name = cluster.replica_sets[0].metadata.name.clone().unwrap();
    let first = cluster.plan_deployment();
    let created = first.create.clone().unwrap();
    let new_name = created.metadata.name.clone().unwrap();
    assert_eq!(created.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(
        sizes(&first),
        [(old_name.clone(), 3, String::new(), String::new())]
    );
    cluster.apply_deployment_plan(&first);
    // Second: room under 5 again, so the new RS grows to 2 and the sync ends there.
    let second = cluster.plan_deployment();
    assert_eq!(
        sizes(&second),
        [(new_name, 2, String::new(), String::new())]
    );
    cluster.apply_deployment_plan(&second);
    // Third: 5 pods asked for, none of the new ones available: nothing until pods move.
    let third = cluster.plan_deployment();
    assert!(
        third.update.is_empty() && third.create.is_none(),
        "{third:#?}"
    );
    assert_eq!(
        third.status.updated_replicas, None,
        "the new RS has reported no pods yet"
    );
}

#[test]
fn unhealthy_old_replicas_are_cleaned_up_first() {
    // Old RS of 4 with 2 unavailable pods; new template; maxUnavailable 0 and no surge
    // room used yet: the unhealthy old replicas go first without hurting availability.
    let old = replica_set(serde_json::json!({
        "metadata": {"name": "web-old", "namespace": NAMESPACE, "uid": "old-uid", "creationTimestamp": at(1),
            "labels": {"app": "web", "pod-template-hash": "old"},
            "annotations": {REVISION_ANNOTATION: "1", DESIRED_REPLICAS_ANNOTATION: "4", MAX_REPLICAS_ANNOTATION: "5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid", "controller": true}]},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "old"}},
            "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "old"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}},
        "status": {"replicas": 4, "readyReplicas": 2, "availableReplicas": 2}
    }));
    let d = web(4, "nginx:2", rolling(1.into(), 0.into()));
    let mut new_rs = plan(&d, std::slice::from_ref(&old), &[], &time(100))
        .unwrap()
        .create
        .unwrap();
    // Surge room: the new RS got 1 replica; it is up but not available yet.
    assert_eq!(new_rs.spec.as_ref().unwrap().replicas, Some(1));
    new_rs.metadata.uid = Some("new-uid".into());
    new_rs.metadata.creation_timestamp = Some(time(100));
    new_rs.status = Some(serde_json::from_value(serde_json::json!({"replicas": 1})).unwrap());
    let next = plan(&d, &[old, new_rs], &[], &time(110)).unwrap();
    // all 5 - minAvailable 4 - new unavailable 1 = 0: nothing may go yet...
    assert!(next.update.is_empty(), "{:?}", next.update);

    // With the new pod available the budget is 1 (5 - 4 - 0): one unhealthy old
    // replica goes, although by availability alone (2 old + 1 new available < 4) no
    // scale-down would be allowed.
    let old = old_replica_set(4, 2);
    let mut new_rs = new_replica_set_for(&d, 1, 1);
    new_rs.metadata.creation_timestamp = Some(time(100));
    let next = plan(&d, &[old, new_rs], &[], &time(120)).unwrap();
    assert_eq!(next.update.len(), 1);
    assert_eq!(
        (next.update[0].name.as_str(), next.update[0].replicas),
        ("web-old", 3)
    );
}

fn old_replica_set(replicas: i32, available: i32) -> ReplicaSet {
    replica_set(serde_json::json!({
        "metadata": {"name": "web-old", "namespace": NAMESPACE, "uid": "old-uid", "creationTimestamp": at(1),
            "labels": {"app": "web", "pod-template-hash": "old"},
            "annotations": {REVISION_ANNOTATION: "1", DESIRED_REPLICAS_ANNOTATION: "4", MAX_REPLICAS_ANNOTATION: "5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid", "controller": true}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "old"}},
            "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "old"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}},
        "status": {"replicas": replicas, "readyReplicas": available, "availableReplicas": available}
    }))
}

/// The new ReplicaSet `d` would create, sized `replicas` with `available` available.
fn new_replica_set_for(d: &Deployment, replicas: i32, available: i32) -> ReplicaSet {
    let mut rs = plan(d, &[], &[], &time(1)).unwrap().create.unwrap();
    rs.metadata.uid = Some("new-uid".into());
    rs.spec.as_mut().unwrap().replicas = Some(replicas);
    rs.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(REVISION_ANNOTATION.into(), "2".into());
    rs.status = Some(
        serde_json::from_value(serde_json::json!({
            "replicas": replicas, "readyReplicas": available, "availableReplicas": available
        }))
        .unwrap(),
    );
    rs
}

#[test]
fn recreate_removes_old_pods_before_creating_new_ones() {
    let mut cluster = Cluster::steady(web(3, "nginx:1", serde_json::json!({"type": "Recreate"})));
    cluster.bounds = None;
    cluster.set_image("nginx:2");

    // First sync: old scaled to zero, no new ReplicaSet yet.
    let first = cluster.plan_deployment();
    assert!(first.create.is_none());
    assert_eq!(first.update.len(), 1);
    assert_eq!(first.update[0].replicas, 0);
    cluster.settle();
    // Old pods are terminating: still no new ReplicaSet.
    assert_eq!(cluster.replica_sets.len(), 1);
    assert!(cluster
        .pods
        .iter()
        .all(|p| p.metadata.deletion_timestamp.is_some()));
    let waiting = cluster.plan_deployment();
    assert!(
        waiting.create.is_none(),
        "must wait for terminating pods: {waiting:#?}"
    );

    cluster.roll_out(5, 20);
    // No new pod existed while any old pod was still there, even terminating.
    assert!(cluster.trace.iter().any(|(_, new, _)| *new > 0));
    assert!(
        cluster
            .trace
            .iter()
            .all(|(old, new, terminating)| *new == 0 || old + terminating == 0),
        "{:?}",
        cluster.trace
    );
    assert_eq!(
        cluster.replicas_by_image(),
        [("nginx:1".to_string(), 0), ("nginx:2".to_string(), 3)]
    );
    let new_rs = cluster.rs_with_image("nginx:2");
    assert_eq!(
        annotation(new_rs, MAX_REPLICAS_ANNOTATION),
        Some("3"),
        "Recreate has no surge"
    );
}

fn two_active_replica_sets(desired: i32) -> (Deployment, Vec<ReplicaSet>) {
    let mut d = web(desired, "nginx:2", rolling(3.into(), 2.into()));
    d.status = Some(serde_json::from_value(serde_json::json!({"replicas": 13})).unwrap());
    let mut old = old_replica_set(8, 8);
    let annotations = old.metadata.annotations.as_mut().unwrap();
    annotations.insert(DESIRED_REPLICAS_ANNOTATION.into(), "10".into());
    annotations.insert(MAX_REPLICAS_ANNOTATION.into(), "13".into());
    let mut new_rs = new_replica_set_for(&web(10, "nginx:2", rolling(3.into(), 2.into())), 5, 0);
    new_rs.metadata.creation_timestamp = Some(time(500));
    let annotations = new_rs.metadata.annotations.as_mut().unwrap();
    annotations.insert(DESIRED_REPLICAS_ANNOTATION.into(), "10".into());
    annotations.insert(MAX_REPLICAS_ANNOTATION.into(), "13".into());
    (d, vec![old, new_rs])
}

fn sizes(plan: &DeploymentPlan) -> Vec<(String, i32, String, String)> {
    plan.update
        .iter()
        .map(|u| {
            (
                u.name.clone(),
                u.replicas,
                u.set_annotations
                    .get(DESIRED_REPLICAS_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
                u.set_annotations
                    .get(MAX_REPLICAS_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn proportional_scale_up_mid_rollout() {
    // Mid-rollout from 10 (surge 3): old 8 + new 5 = 13. Scaled to 20: 23 allowed, +10
    // spread by share of 13: old round(8*23/13)=14 (+6), new takes the remaining +4.
    let (d, sets) = two_active_replica_sets(20);
    let plan = plan(&d, &sets, &[], &time(1000)).unwrap();
    let new_name = sets[1].metadata.name.clone().unwrap();
    assert_eq!(
        sizes(&plan),
        [
            (
                "web-old".to_string(),
                14,
                "20".to_string(),
                "23".to_string()
            ),
            (new_name, 9, "20".to_string(), "23".to_string())
        ]
    );
    assert!(plan.create.is_none());
}

#[test]
fn proportional_scale_down_mid_rollout() {
    // Scaled to 5: 8 allowed, -5 spread: old round(8*8/13)=5 (-3), new -2.
    let (d, sets) = two_active_replica_sets(5);
    let plan = plan(&d, &sets, &[], &time(1000)).unwrap();
    let new_name = sets[1].metadata.name.clone().unwrap();
    assert_eq!(
        sizes(&plan),
        [
            ("web-old".to_string(), 5, "5".to_string(), "8".to_string()),
            (new_name, 3, "5".to_string(), "8".to_string())
        ]
    );
}

#[test]
fn proportional_ties_grow_the_newest_and_shrink_the_oldest() {
    // Two equal halves of 5 sized for 8 (+2 surge = 10).
    let equal_halves = |desired: i32| {
        let (mut d, mut sets) = two_active_replica_sets(desired);
        spec_mut(&mut d).strategy = serde_json::from_value(rolling(2.into(), 1.into())).unwrap();
        d.status = Some(serde_json::from_value(serde_json::json!({"replicas": 10})).unwrap());
        for rs in &mut sets {
            rs.spec.as_mut().unwrap().replicas = Some(5);
            let annotations = rs.metadata.annotations.as_mut().unwrap();
            annotations.insert(DESIRED_REPLICAS_ANNOTATION.into(), "8".into());
            annotations.insert(MAX_REPLICAS_ANNOTATION.into(), "10".into());
        }
        let new_name = sets[1].metadata.name.clone().unwrap();
        (plan(&d, &sets, &[], &time(1000)).unwrap(), new_name)
    };
    // To 9 (11 allowed, +1): the newer one grows.
    let (up, new_name) = equal_halves(9);
    let up_sizes: Vec<(String, i32)> = sizes(&up).into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        up_sizes,
        [(new_name.clone(), 6), ("web-old".to_string(), 5)]
    );
    // To 7 (9 allowed, -1): the older one shrinks.
    let (down, new_name) = equal_halves(7);
    let down_sizes: Vec<(String, i32)> = sizes(&down).into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(down_sizes, [("web-old".to_string(), 4), (new_name, 5)]);
}

#[test]
fn scaling_a_settled_deployment_scales_its_only_replica_set() {
    let mut cluster = Cluster::steady(web(3, "nginx:1", rolling(1.into(), 0.into())));
    cluster.bounds = None;
    cluster.edit(|spec| spec.replicas = Some(6));
    let plan = cluster.plan_deployment();
    assert_eq!(sizes(&plan)[0].1, 6);
    assert_eq!(sizes(&plan)[0].2, "6");
    cluster.roll_out(5, 20);
    assert_eq!(cluster.pods.len(), 6);
    cluster.edit(|spec| spec.replicas = Some(2));
    cluster.roll_out(5, 20);
    assert_eq!(
        cluster
            .pods
            .iter()
            .filter(|p| pod_state::is_active(p))
            .count(),
        2
    );
}

#[test]
fn scale_while_rolling_out_in_the_cluster_keeps_progressing() {
    let mut cluster = Cluster::steady(web(10, "nginx:1", rolling(3.into(), 2.into())));
    cluster.bounds = None;
    cluster.set_image("nginx:2");
    cluster.settle();
    cluster.tick(5);
    cluster.settle();
    // Both are active now; scale up mid-rollout.
    assert!(
        cluster.replicas_by_image().iter().all(|(_, r)| *r > 0),
        "{:?}",
        cluster.replicas_by_image()
    );
    cluster.edit(|spec| spec.replicas = Some(20));
    let plan = cluster.plan_deployment();
    let total: i32 = plan.update.iter().map(|u| u.replicas).sum();
    assert_eq!(total, 23, "{:?}", sizes(&plan));
    cluster.roll_out(5, 100);
    assert_eq!(
        cluster.replicas_by_image(),
        [("nginx:1".to_string(), 0), ("nginx:2".to_string(), 20)]
    );
}

#[test]
fn paused_deployment_does_not_roll_out_but_scales_and_reports_it() {
    let mut cluster = Cluster::steady(web(3, "nginx:1", rolling(1.into(), 0.into())));
    cluster.bounds = None;
    cluster.edit(|spec| spec.paused = Some(true));
    cluster.settle();
    let progressing = condition(&cluster.deployment, PROGRESSING).unwrap();
    assert_eq!(
        (
            progressing.status.as_str(),
            progressing.reason.as_deref(),
            progressing.message.as_deref()
        ),
        (
            "Unknown",
            Some(DEPLOYMENT_PAUSED),
            Some("Deployment is paused")
        )
    );

    cluster.set_image("nginx:2");
    cluster.edit(|spec| spec.replicas = Some(5));
    cluster.settle();
    cluster.tick(5);
    cluster.settle();
    // Scaled, but still the old template.
    assert_eq!(cluster.replica_sets.len(), 1);
    assert_eq!(cluster.replicas_by_image(), [("nginx:1".to_string(), 5)]);
    assert_eq!(
        cluster
            .deployment
            .status
            .as_ref()
            .unwrap()
            .observed_generation,
        Some(4)
    );
    assert!(matches!(
        kubectl_rollout_status(&cluster.deployment),
        RolloutVerdict::Waiting(_)
    ));
    // Paused long past the deadline: no timeout is ever reported while paused.
    cluster.now += 10_000;
    let plan = cluster.plan_deployment();
    assert!(plan.is_noop(), "{plan:#?}");

    cluster.edit(|spec| spec.paused = Some(false));
    let resumed = cluster.plan_deployment();
    // Resuming records DeploymentResumed, then the rollout creates the new ReplicaSet
    // in the same sync (whose condition replaces it).
    assert!(resumed.create.is_some());
    let progressing = resumed
        .status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == PROGRESSING)
        .unwrap();
    assert_eq!(progressing.reason.as_deref(), Some(NEW_REPLICA_SET_CREATED));
    cluster.roll_out(5, 100);
    assert_eq!(
        cluster.replicas_by_image(),
        [("nginx:1".to_string(), 0), ("nginx:2".to_string(), 5)]
    );
}

#[test]
fn resuming_a_stuck_rollout_restarts_the_deadline_clock() {
    let mut d = web(2, "nginx:1", rolling(1.into(), 0.into()));
    spec_mut(&mut d).progress_deadline_seconds = Some(60);
    let mut cluster = Cluster::steady(d);
    cluster.broken_images.insert("nginx:2".into());
    cluster.set_image("nginx:2");
    cluster.settle();
    cluster.edit(|spec| spec.paused = Some(true));
    cluster.settle();
    // Paused far longer than the deadline.
    cluster.tick(1000);
    cluster.settle();
    assert_eq!(
        condition(&cluster.deployment, PROGRESSING)
            .unwrap()
            .reason
            .as_deref(),
        Some(DEPLOYMENT_PAUSED)
    );
    cluster.edit(|spec| spec.paused = Some(false));
    cluster.settle();
    let progressing = condition(&cluster.deployment, PROGRESSING).unwrap();
    assert_eq!(
        (
            progressing.status.as_str(),
            progressing.reason.as_deref(),
            progressing.message.as_deref()
        ),
        (
            "Unknown",
            Some(DEPLOYMENT_RESUMED),
            Some("Deployment is resumed")
        )
    );
    assert_eq!(
        cluster.last_plan.as_ref().unwrap().requeue_after,
        Some(Duration::from_secs(61))
    );
    cluster.tick(61);
    cluster.settle();
    assert!(matches!(
        kubectl_rollout_status(&cluster.deployment),
        RolloutVerdict::Failed(_)
    ));
}

#[test]
fn rollback_to_an_old_template_reuses_its_replica_set() {
    let mut cluster = Cluster::steady(web(3, "nginx:1", rolling(1.into(), 1.into())));
    let first_name = cluster.replica_sets[0].metadata.name.clone().unwrap();
    cluster.set_image("nginx:2");
    cluster.roll_out(5, 100);
    // `kubectl rollout undo` writes the old template back.
    cluster.set_image("nginx:1");
    let plan = cluster.plan_deployment();
    assert!(
        plan.create.is_none(),
        "the old ReplicaSet becomes the new one again"
    );
    let revived = plan.update.iter().find(|u| u.name == first_name).unwrap();
    assert_eq!(revived.set_annotations[REVISION_ANNOTATION], "3");
    assert_eq!(revived.set_annotations[REVISION_HISTORY_ANNOTATION], "1");
    assert_eq!(plan.deployment_annotations[REVISION_ANNOTATION], "3");
    cluster.roll_out(5, 100);
    assert_eq!(cluster.replica_sets.len(), 2);
    let revived = cluster.rs_named(&first_name);
    assert_eq!(revived.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(annotation(revived, REVISION_ANNOTATION), Some("3"));
    assert_eq!(
        cluster
            .rs_with_image("nginx:2")
            .spec
            .as_ref()
            .unwrap()
            .replicas,
        Some(0)
    );
}

#[test]
fn rollout_restart_is_a_template_change() {
    let mut cluster = Cluster::steady(web(2, "nginx:1", rolling(1.into(), 0.into())));
    cluster.edit(|spec| {
        let meta = spec.template.metadata.get_or_insert_with(Default::default);
        meta.annotations =
            Some([("kubectl.kubernetes.io/restartedAt".to_string(), at(5000))].into());
    });
    cluster.roll_out(5, 100);
    assert_eq!(cluster.replica_sets.len(), 2);
    let restarted = cluster
        .replica_sets
        .iter()
        .find(|rs| replicas(rs) == 2)
        .unwrap();
    assert_eq!(annotation(restarted, REVISION_ANNOTATION), Some("2"));
    let pod_annotations = cluster
        .pods
        .iter()
        .filter_map(|p| p.metadata.annotations.as_ref())
        .count();
    assert_eq!(pod_annotations, 2, "pods carry the restartedAt annotation");
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().unwrap().replicas.unwrap()
}

#[test]
fn revision_history_beyond_the_limit_is_deleted_oldest_first() {
    let mut d = web(2, "v1", rolling(1.into(), 0.into()));
    spec_mut(&mut d).revision_history_limit = Some(2);
    let mut cluster = Cluster::steady(d);
    for version in 2..=6 {
        cluster.set_image(&format!("v{version}"));
        cluster.roll_out(5, 100);
        cluster.settle();
    }
    let mut images: Vec<String> = cluster.replica_sets.iter().map(image_of).collect();
    images.sort();
    // The current one plus the two latest old revisions.
    assert_eq!(images, ["v4", "v5", "v6"]);
    let revisions: BTreeSet<&str> = cluster
        .replica_sets
        .iter()
        .filter_map(|rs| annotation(rs, REVISION_ANNOTATION))
        .collect();
    assert_eq!(revisions, ["4", "5", "6"].into());
}

#[test]
fn progress_deadline_exceeded_when_new_pods_never_become_ready() {
    let mut d = web(2, "nginx:1", rolling(1.into(), 0.into()));
    spec_mut(&mut d).progress_deadline_seconds = Some(60);
    let mut cluster = Cluster::steady(d);
    cluster.broken_images.insert("nginx:2".into());
    cluster.set_image("nginx:2");
    cluster.settle();
    let plan = cluster.last_plan.clone().unwrap();
    // Waiting on the deadline: the timer fires one second past it.
    let progressing = condition(&cluster.deployment, PROGRESSING).unwrap();
    // Created, then progress: the new RS reported its (not ready) pod.
    assert_eq!(progressing.reason.as_deref(), Some(REPLICA_SET_UPDATED));
    let updated = progressing.last_update_time.clone().unwrap();
    let expected =
        Duration::from_secs(61) - Duration::from_secs((cluster.now - updated.0.as_second()) as u64);
    assert_eq!(plan.requeue_after, Some(expected));

    cluster.tick(30);
    cluster.settle();
    assert!(matches!(
        kubectl_rollout_status(&cluster.deployment),
        RolloutVerdict::Waiting(_)
    ));
    cluster.tick(31);
    cluster.settle();
    let new_name = cluster
        .rs_with_image("nginx:2")
        .metadata
        .name
        .clone()
        .unwrap();
    let progressing = condition(&cluster.deployment, PROGRESSING).unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_deref()),
        ("False", Some(PROGRESS_DEADLINE_EXCEEDED))
    );
    assert_eq!(
        progressing.message,
        Some(format!(
            "ReplicaSet \"{new_name}\" has timed out progressing."
        ))
    );
    assert_eq!(
        kubectl_rollout_status(&cluster.deployment),
        RolloutVerdict::Failed("deployment \"web\" exceeded its progress deadline".into())
    );
    // The old pods keep serving: availability never dropped.
    assert_eq!(cluster.replicas_by_image()[0], ("nginx:1".to_string(), 2));
    assert_eq!(cluster.last_plan.as_ref().unwrap().requeue_after, None);

    // A fix (new template) starts a fresh rollout that completes.
    cluster.set_image("nginx:3");
    cluster.roll_out(5, 100);
    let progressing = condition(&cluster.deployment, PROGRESSING).unwrap();
    assert_eq!(
        progressing.reason.as_deref(),
        Some(NEW_REPLICA_SET_AVAILABLE)
    );
}

#[test]
fn progress_refreshes_the_condition_and_pushes_the_deadline() {
    let mut d = web(3, "nginx:1", rolling(1.into(), 0.into()));
    spec_mut(&mut d).progress_deadline_seconds = Some(60);
    let mut cluster = Cluster::steady(d);
    cluster.set_image("nginx:2");
    cluster.settle();
    cluster.tick(50);
    cluster.settle();
    let progressing = condition(&cluster.deployment, PROGRESSING).unwrap().clone();
    assert_eq!(progressing.reason.as_deref(), Some(REPLICA_SET_UPDATED));
    assert_eq!(progressing.last_update_time, Some(cluster.time()));
    let new_name = cluster
        .rs_with_image("nginx:2")
        .metadata
        .name
        .clone()
        .unwrap();
    assert_eq!(
        progressing.message,
        Some(format!("ReplicaSet \"{new_name}\" is progressing."))
    );
    // 50s per step, 60s deadline: each step's progress pushes the deadline, no timeout.
    for _ in 0..10 {
        cluster.tick(50);
        cluster.settle();
    }
    assert!(matches!(
        kubectl_rollout_status(&cluster.deployment),
        RolloutVerdict::Complete(_)
    ));
}

#[test]
fn without_progress_deadline_there_is_no_progressing_condition() {
    let mut d = web(2, "nginx:1", rolling(1.into(), 0.into()));
    spec_mut(&mut d).progress_deadline_seconds = Some(i32::MAX);
    let mut cluster = Cluster::new(d);
    cluster.roll_out(5, 20);
    assert!(condition(&cluster.deployment, PROGRESSING).is_none());
    assert!(condition(&cluster.deployment, AVAILABLE).is_some());
    assert_eq!(cluster.last_plan.as_ref().unwrap().requeue_after, None);
}

#[test]
fn replica_failure_of_the_new_replica_set_is_surfaced() {
    let d = web(2, "nginx:2", rolling(1.into(), 0.into()));
    let mut new_rs = new_replica_set_for(&d, 2, 0);
    new_rs.status.as_mut().unwrap().conditions =
        Some(vec![serde_json::from_value(serde_json::json!({
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": "pods \"web-x\" is forbidden: exceeded quota", "lastTransitionTime": at(50)
        }))
        .unwrap()]);
    let plan = plan(&d, &[new_rs], &[], &time(100)).unwrap();
    let failure = plan
        .status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == REPLICA_FAILURE)
        .unwrap();
    assert_eq!(failure.reason.as_deref(), Some("FailedCreate"));
    assert_eq!(failure.last_update_time, Some(time(50)));
}

#[test]
fn adopts_orphan_replica_sets_and_releases_foreign_labelled_ones() {
    let d = web(2, "nginx:1", rolling(1.into(), 0.into()));
    let mut orphan = new_replica_set_for(&d, 2, 2);
    orphan.metadata.owner_references = None;
    let mut relabelled = old_replica_set(0, 0);
    relabelled.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
    let mut foreign = old_replica_set(0, 0);
    foreign.metadata.name = Some("someone-elses".into());
    foreign.metadata.uid = Some("foreign-uid".into());
    foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "other-deployment".into();
    let plan = plan(&d, &[orphan, relabelled, foreign], &[], &time(100)).unwrap();
    assert_eq!(plan.adopt.len(), 1);
    assert_eq!(plan.adopt[0].uid, "new-uid");
    assert_eq!(plan.adopt[0].owner_references[0].kind, "Deployment");
    assert_eq!(plan.release.len(), 1);
    assert_eq!(plan.release[0].name, "web-old");
    // The adopted ReplicaSet is the new one: nothing created.
    assert!(plan.create.is_none());
    assert_eq!(plan.status.updated_replicas, Some(2));
}

#[test]
fn hash_collision_bumps_the_collision_count_and_then_uses_a_new_name() {
    let d = web(2, "nginx:1", rolling(1.into(), 0.into()));
    let hash = compute_hash(&d.spec.as_ref().unwrap().template, None);
    let squatter = replica_set(serde_json::json!({
        "metadata": {"name": format!("web-{hash}"), "namespace": NAMESPACE, "uid": "squatter",
            "labels": {"app": "unrelated"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "unrelated"}},
            "template": {"metadata": {"labels": {"app": "unrelated"}}}}
    }));
    let first = plan(&d, std::slice::from_ref(&squatter), &[], &time(100)).unwrap();
    assert!(first.create.is_none());
    assert_eq!(first.status.collision_count, Some(1));
    assert!(first.status_changed);
    assert_eq!(first.requeue_after, Some(Duration::ZERO));

    let mut bumped = d.clone();
    bumped.status = Some(first.status.clone());
    let second = plan(&bumped, &[squatter], &[], &time(101)).unwrap();
    let created = second.create.unwrap();
    let other_hash = compute_hash(&d.spec.as_ref().unwrap().template, Some(1));
    assert_eq!(created.metadata.name, Some(format!("web-{other_hash}")));
    assert_eq!(second.status.collision_count, Some(1));
}

#[test]
fn selecting_everything_is_refused() {
    let mut d = web(2, "nginx:1", rolling(1.into(), 0.into()));
    spec_mut(&mut d).selector = Default::default();
    d.metadata.generation = Some(4);
    let plan = plan(&d, &[], &[], &time(100)).unwrap();
    assert!(plan.create.is_none());
    assert_eq!(plan.status.observed_generation, Some(4));
    assert_eq!(plan.events[0].reason, "SelectingAll");
}

#[test]
fn deleting_deployment_only_updates_status() {
    let mut d = web(2, "nginx:2", rolling(1.into(), 0.into()));
    d.metadata.deletion_timestamp = Some(time(90));
    let old = old_replica_set(2, 2);
    let plan = plan(&d, &[old], &[], &time(100)).unwrap();
    assert!(plan.create.is_none() && plan.update.is_empty() && plan.delete.is_empty());
    assert_eq!(plan.status.replicas, Some(2));
    assert_eq!(plan.status.updated_replicas, None);
}

#[test]
fn invalid_specs_are_typed_errors() {
    let mut d = web(2, "nginx:1", rolling("fast".into(), 0.into()));
    assert!(matches!(
        plan(&d, &[], &[], &time(1)),
        Err(DeploymentError::IntOrPercent(_))
    ));
    d = web(2, "nginx:1", rolling(1.into(), 0.into()));
    spec_mut(&mut d).selector = serde_json::from_value(serde_json::json!({
        "matchExpressions": [{"key": "app", "operator": "Sometimes"}]
    }))
    .unwrap();
    assert!(matches!(
        plan(&d, &[], &[], &time(1)),
        Err(DeploymentError::Selector(_))
    ));
}

#[test]
fn deployment_annotation_and_min_ready_changes_sync_to_the_new_replica_set() {
    let mut cluster = Cluster::steady(web(2, "nginx:1", rolling(1.into(), 0.into())));
    // Raising minReadySeconds makes running pods unavailable for a while (as in
    // Kubernetes); not a rollout bound violation.
    cluster.bounds = None;
    cluster
        .deployment
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("team".into(), "checkout".into());
    cluster.edit(|spec| spec.min_ready_seconds = Some(7));
    let plan = cluster.plan_deployment();
    assert_eq!(plan.update.len(), 1);
    let update = &plan.update[0];
    assert_eq!(update.set_annotations["team"], "checkout");
    assert_eq!(update.min_ready_seconds, 7);
    assert_eq!(update.replicas, 2);
    let patch = update.merge_patch();
    assert_eq!(patch["metadata"]["annotations"]["team"], "checkout");
    assert_eq!(patch["spec"]["minReadySeconds"], 7);
    cluster.settle();
    assert!(cluster.plan_deployment().is_noop());
}

#[test]
fn applying_plans_converges_without_pod_changes() {
    // Without the ReplicaSet controller or pods moving, repeated Deployment syncs reach a
    // fixed point quickly and then stay there.
    let mut cluster = Cluster::steady(web(6, "nginx:1", rolling(2.into(), 2.into())));
    cluster.set_image("nginx:2");
    let mut writes = 0;
    loop {
        let plan = cluster.plan_deployment();
        if plan.is_noop() {
            break;
        }
        writes += 1;
        assert!(writes < 5, "no fixed point: {plan:#?}");
        cluster.apply_deployment_plan(&plan);
    }
    assert!(cluster.plan_deployment().is_noop());
    assert_eq!(writes, 2, "create+scale up, then scale down old");
}
