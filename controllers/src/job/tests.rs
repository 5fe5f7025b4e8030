//! Job scenarios: single plans on fixtures, and a small in-memory cluster that executes
//! plans the way the loop and an API server would (generateName, finalizers holding
//! deleted pods, status writes) while the test plays the kubelet.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::testing::{at, job, pod, time};

const NS: &str = "default";

/// `pi` in `default` with `spec` merged over a NonIndexed, `restartPolicy: Never` base.
fn pi(spec: serde_json::Value) -> Job {
    let mut base = serde_json::json!({
        "template": {
            "metadata": {"labels": {"app": "pi"}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "perl"}]}
        }
    });
    for (key, value) in spec.as_object().unwrap() {
        base[key] = value.clone();
    }
    job(serde_json::json!({
        "metadata": {"name": "pi", "namespace": NS, "uid": "job-uid", "creationTimestamp": at(0)},
        "spec": base
    }))
}

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

fn condition_types(status: &JobStatus) -> Vec<(String, String)> {
    status
        .conditions
        .iter()
        .flatten()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect()
}

fn reasons(plan: &JobPlan) -> Vec<&str> {
    plan.events.iter().map(|e| e.reason.as_str()).collect()
}

fn uncounted(status: &JobStatus) -> (Vec<String>, Vec<String>) {
    let u = status.uncounted_terminated_pods.clone().unwrap_or_default();
    (
        u.succeeded.unwrap_or_default(),
        u.failed.unwrap_or_default(),
    )
}

/// A pod owned by the Job, with the tracking finalizer, in `phase`.
fn owned_pod(name: &str, phase: &str) -> Pod {
    pod(serde_json::json!({
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "creationTimestamp": at(1),
            "labels": {"app": "pi", CONTROLLER_UID_LABEL: "job-uid"},
            "finalizers": [JOB_TRACKING_FINALIZER],
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi",
                "uid": "job-uid", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": "n1", "containers": []},
        "status": {"phase": phase}
    }))
}

/// Marks the pod finished at `second`, its container exiting with `exit_code`.
fn finish(pod: &mut Pod, phase: &str, second: i64, exit_code: i32) {
    *pod.status.get_or_insert_with(Default::default) = serde_json::from_value(serde_json::json!({
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": at(second)}],
        "containerStatuses": [{"name": "main", "image": "perl", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "finishedAt": at(second)}}}]
    }))
    .unwrap();
}

fn run(pod: &mut Pod, ready_since: Option<i64>) {
    let conditions = match ready_since {
        Some(t) => {
            serde_json::json!([{"type": "Ready", "status": "True", "lastTransitionTime": at(t)}])
        }
        None => serde_json::json!([{"type": "Ready", "status": "False"}]),
    };
    *pod.status.get_or_insert_with(Default::default) =
        serde_json::from_value(serde_json::json!({"phase": "Running", "conditions": conditions}))
            .unwrap();
}

/// The API server, the loop and the kubelet, in memory.
struct Cluster {
    job: Job,
    pods: Vec<Pod>,
    created: usize,
    events: Vec<PlannedEvent>,
}

impl Cluster {
    fn new(job: Job) -> Cluster {
        Cluster {
            job,
            pods: Vec::new(),
            created: 0,
            events: Vec::new(),
        }
    }

    fn pod_mut(&mut self, uid: &str) -> Option<&mut Pod> {
        self.pods
            .iter_mut()
            .find(|p| p.metadata.uid.as_deref() == Some(uid))
    }

    /// Plans at `second` and executes the plan in its documented order.
    fn sync(&mut self, second: i64) -> JobPlan {
        let plan = plan(&self.job, &self.pods, &time(second)).unwrap();
        for patch in plan.adopt.iter().chain(&plan.release) {
            patch.apply_to(self.pod_mut(&patch.uid).unwrap());
        }
        for doomed in &plan.delete {
            let pod = self.pod_mut(&doomed.uid).unwrap();
            if doomed.remove_tracking_finalizer_first {
                PodPatch::new(pod, PodChange::RemoveTrackingFinalizer).apply_to(pod);
            }
            // Graceful deletion: the pod terminates and is reaped by `reap`.
            pod.metadata.deletion_timestamp = Some(time(second));
        }
        for template in &plan.create {
            self.created += 1;
            let mut pod = template.clone();
            let name = format!(
                "{}{}",
                pod.metadata.generate_name.clone().unwrap(),
                self.created
            );
            pod.metadata.uid = Some(format!("uid-{name}"));
            pod.metadata.name = Some(name);
            pod.metadata.creation_timestamp = Some(time(second));
            pod.status =
                Some(serde_json::from_value(serde_json::json!({"phase": "Pending"})).unwrap());
            self.pods.push(pod);
        }
        if let Some(interim) = &plan.interim_status {
            self.job.status = Some(interim.clone());
        }
        for patch in &plan.remove_finalizers {
            if let Some(pod) = self.pod_mut(&patch.uid) {
                patch.apply_to(pod);
            }
        }
        if plan.status_changed {
            self.job.status = Some(plan.status.clone());
        }
        self.events.extend(plan.events.iter().cloned());
        plan
    }

    /// The kubelet finishes terminating deleted pods; those without finalizers go away.
    fn reap(&mut self) {
        self.pods
            .retain(|p| p.metadata.deletion_timestamp.is_none() || p.metadata.finalizers.is_some());
    }

    fn active_uids(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| pod_state::is_active(p))
            .map(|p| p.metadata.uid.clone().unwrap())
            .collect()
    }

    fn status(&self) -> JobStatus {
        self.job.status.clone().unwrap_or_default()
    }
}

#[test]
fn runs_completions_with_parallelism_until_complete() {
    let mut cluster = Cluster::new(pi(serde_json::json!({"completions": 5, "parallelism": 2})));
    let first = cluster.sync(100);
    assert_eq!(first.create.len(), 2);
    let template = &first.create[0];
    assert_eq!(template.metadata.generate_name.as_deref(), Some("pi-"));
    assert_eq!(template.metadata.namespace.as_deref(), Some(NS));
    let labels = template.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app"], "pi");
    assert_eq!(labels[JOB_NAME_LABEL], "pi");
    assert_eq!(labels[LEGACY_JOB_NAME_LABEL], "pi");
    assert_eq!(labels[CONTROLLER_UID_LABEL], "job-uid");
    assert_eq!(labels[LEGACY_CONTROLLER_UID_LABEL], "job-uid");
    assert_eq!(
        template.metadata.finalizers.as_deref(),
        Some(&[JOB_TRACKING_FINALIZER.to_string()][..])
    );
    let reference = &template.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            reference.kind.as_str(),
            reference.uid.as_str(),
            reference.controller
        ),
        ("Job", "job-uid", Some(true))
    );
    assert_eq!(cluster.status().active, Some(2));
    assert_eq!(cluster.status().start_time, Some(time(100)));
    assert_eq!(cluster.status().ready, Some(0));

    // Running, not ready: nothing to write.
    for uid in cluster.active_uids() {
        run(cluster.pod_mut(&uid).unwrap(), None);
    }
    assert!(cluster.sync(105).is_noop());

    // One pod succeeds: it is recorded, uncounted, then counted; a replacement starts.
    let done = cluster.active_uids()[0].clone();
    finish(cluster.pod_mut(&done).unwrap(), "Succeeded", 110, 0);
    let plan = cluster.sync(111);
    let interim = plan.interim_status.as_ref().unwrap();
    assert_eq!(uncounted(interim).0, std::slice::from_ref(&done));
    assert_eq!(interim.succeeded, None);
    assert_eq!(plan.remove_finalizers.len(), 1);
    assert_eq!(plan.remove_finalizers[0].uid, done);
    assert_eq!(plan.status.succeeded, Some(1));
    assert_eq!(uncounted(&plan.status), (vec![], vec![]));
    assert_eq!(plan.create.len(), 1);
    assert_eq!(plan.status.active, Some(2));

    // Keep finishing everything that runs until the Job completes.
    let mut second = 120;
    while !is_finished(&cluster.job) && second < 400 {
        for uid in cluster.active_uids() {
            finish(cluster.pod_mut(&uid).unwrap(), "Succeeded", second, 0);
        }
        let plan = cluster.sync(second + 1);
        assert!(plan.create.len() <= 2);
        second += 10;
    }
    let status = cluster.status();
    assert_eq!(cluster.created, 5);
    assert_eq!(status.succeeded, Some(5));
    assert_eq!(status.active, Some(0));
    assert_eq!(
        condition_types(&status),
        [
            ("SuccessCriteriaMet".to_string(), "True".to_string()),
            ("Complete".to_string(), "True".to_string())
        ]
    );
    let complete = condition(&status, COMPLETE).unwrap();
    assert_eq!(complete.reason.as_deref(), Some(REASON_COMPLETIONS_REACHED));
    assert_eq!(
        complete.message.as_deref(),
        Some("Reached expected number of succeeded pods")
    );
    assert_eq!(status.completion_time, complete.last_transition_time);
    assert!(cluster
        .events
        .iter()
        .any(|e| e.reason == "Completed" && e.message == "Job completed"));
    // Every pod was counted and released.
    assert!(cluster
        .pods
        .iter()
        .all(|p| !pods::has_tracking_finalizer(p)));
    // A finished Job plans nothing more.
    assert!(cluster.sync(500).is_noop());
}

#[test]
fn backoff_limit_fails_the_job_and_deletes_active_pods() {
    let mut cluster = Cluster::new(pi(serde_json::json!({
        "completions": 3, "parallelism": 3, "backoffLimit": 1
    })));
    assert_eq!(cluster.sync(100).create.len(), 3);
    let uids = cluster.active_uids();
    for uid in &uids {
        run(cluster.pod_mut(uid).unwrap(), Some(101));
    }
    finish(cluster.pod_mut(&uids[0]).unwrap(), "Failed", 110, 1);
    let plan = cluster.sync(111);
    // One failure is within the limit; the replacement waits out the backoff.
    assert!(condition(&plan.status, FAILURE_TARGET).is_none());
    assert_eq!(plan.status.failed, Some(1));
    assert!(plan.create.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(9)));

    finish(cluster.pod_mut(&uids[1]).unwrap(), "Failed", 115, 1);
    let plan = cluster.sync(116);
    let target = condition(&plan.status, FAILURE_TARGET).unwrap();
    assert_eq!(
        target.reason.as_deref(),
        Some(REASON_BACKOFF_LIMIT_EXCEEDED)
    );
    assert_eq!(
        target.message.as_deref(),
        Some("Job has reached the specified backoff limit")
    );
    // The running pod is deleted, keeping its finalizer until it is counted as failed.
    assert_eq!(plan.delete.len(), 1);
    assert_eq!(plan.delete[0].uid, uids[2]);
    assert!(!plan.delete[0].remove_tracking_finalizer_first);
    assert_eq!(plan.status.failed, Some(3));
    assert_eq!(plan.status.active, Some(0));
    assert_eq!(plan.status.ready, Some(0));
    assert_eq!(plan.status.terminating, Some(1));
    // Not Failed while a pod is still terminating.
    assert!(condition(&plan.status, FAILED).is_none());
    assert!(plan.events.is_empty());

    // Still terminating: nothing changes.
    assert!(condition(&cluster.sync(118).status, FAILED).is_none());
    cluster.reap();
    let plan = cluster.sync(120);
    let failed = condition(&plan.status, FAILED).unwrap();
    assert_eq!(
        failed.reason.as_deref(),
        Some(REASON_BACKOFF_LIMIT_EXCEEDED)
    );
    assert_eq!(
        condition_types(&plan.status),
        [
            ("FailureTarget".to_string(), "True".to_string()),
            ("Failed".to_string(), "True".to_string())
        ]
    );
    assert_eq!(plan.status.completion_time, None);
    assert_eq!(reasons(&plan), ["BackoffLimitExceeded"]);
    assert_eq!(plan.events[0].type_, "Warning");
    assert_eq!(plan.status.terminating, Some(0));
    assert!(is_finished(&cluster.job));
}

#[test]
fn failure_backoff_delays_replacements_exponentially() {
    let mut cluster = Cluster::new(pi(serde_json::json!({})));
    cluster.sync(90);
    let first = cluster.active_uids()[0].clone();
    finish(cluster.pod_mut(&first).unwrap(), "Failed", 100, 1);
    let plan = cluster.sync(101);
    assert!(plan.create.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(9)));
    assert_eq!(cluster.sync(110).create.len(), 1);

    let second = cluster.active_uids()[0].clone();
    finish(cluster.pod_mut(&second).unwrap(), "Failed", 120, 1);
    // Two failures since the last success: 20 s.
    let plan = cluster.sync(121);
    assert!(plan.create.is_empty());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(19)));
    assert!(cluster.sync(139).create.is_empty());
    assert_eq!(cluster.sync(140).create.len(), 1);
    assert_eq!(cluster.status().failed, Some(2));
}

#[test]
fn active_deadline_fails_the_job() {
    let mut cluster = Cluster::new(pi(serde_json::json!({"activeDeadlineSeconds": 30})));
    let plan = cluster.sync(100);
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));
    let uid = cluster.active_uids()[0].clone();
    run(cluster.pod_mut(&uid).unwrap(), Some(105));
    assert_eq!(
        cluster.sync(120).requeue_after,
        Some(Duration::from_secs(10))
    );
    let plan = cluster.sync(130);
    let target = condition(&plan.status, FAILURE_TARGET).unwrap();
    assert_eq!(target.reason.as_deref(), Some(REASON_DEADLINE_EXCEEDED));
    assert_eq!(
        target.message.as_deref(),
        Some("Job was active longer than specified deadline")
    );
    assert_eq!(plan.delete.len(), 1);
    cluster.reap();
    let plan = cluster.sync(131);
    assert!(condition(&plan.status, FAILED).is_some());
    assert_eq!(reasons(&plan), ["DeadlineExceeded"]);
    assert_eq!(plan.status.failed, Some(1));
}

#[test]
fn suspend_deletes_pods_without_counting_them_and_resume_restarts_the_clock() {
    let mut cluster = Cluster::new(pi(serde_json::json!({"suspend": true, "parallelism": 2,
        "completions": 4, "activeDeadlineSeconds": 60})));
    let plan = cluster.sync(100);
    assert!(plan.create.is_empty());
    assert_eq!(plan.status.start_time, None);
    let suspended = condition(&plan.status, SUSPENDED).unwrap();
    assert_eq!(
        (suspended.status.as_str(), suspended.reason.as_deref()),
        ("True", Some("JobSuspended"))
    );
    assert_eq!(reasons(&plan), ["Suspended"]);
    // No deadline runs while suspended.
    assert_eq!(plan.requeue_after, None);
    assert!(cluster.sync(150).is_noop());

    cluster.job.spec.as_mut().unwrap().suspend = Some(false);
    let plan = cluster.sync(200);
    assert_eq!(plan.create.len(), 2);
    let resumed = condition(&plan.status, SUSPENDED).unwrap();
    assert_eq!(
        (resumed.status.as_str(), resumed.reason.as_deref()),
        ("False", Some("JobResumed"))
    );
    assert_eq!(reasons(&plan), ["Resumed"]);
    assert_eq!(plan.status.start_time, Some(time(200)));
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(60)));

    for uid in cluster.active_uids() {
        run(cluster.pod_mut(&uid).unwrap(), Some(210));
    }
    cluster.job.spec.as_mut().unwrap().suspend = Some(true);
    let plan = cluster.sync(300);
    assert_eq!(plan.delete.len(), 2);
    assert!(plan
        .delete
        .iter()
        .all(|d| d.remove_tracking_finalizer_first));
    assert_eq!(plan.status.active, Some(0));
    assert_eq!(plan.status.terminating, Some(2));
    assert_eq!(
        condition(&plan.status, SUSPENDED).unwrap().status.as_str(),
        "True"
    );
    cluster.reap();
    let plan = cluster.sync(301);
    // Suspension is not failure.
    assert_eq!(plan.status.failed, None);
    assert!(cluster.pods.is_empty());
}

#[test]
fn indexed_job_creates_each_index_once_and_tracks_completed_indexes() {
    let mut cluster = Cluster::new(pi(serde_json::json!({
        "completions": 3, "parallelism": 2, "completionMode": "Indexed"
    })));
    let plan = cluster.sync(100);
    assert_eq!(plan.create.len(), 2);
    for (index, pod) in plan.create.iter().enumerate() {
        let text = index.to_string();
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[JOB_COMPLETION_INDEX_ANNOTATION], text);
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[JOB_COMPLETION_INDEX_ANNOTATION],
            text
        );
        assert_eq!(
            pod.metadata.generate_name.as_deref(),
            Some(format!("pi-{index}-").as_str())
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.hostname.as_deref(),
            Some(format!("pi-{index}").as_str())
        );
        let env = spec.containers[0].env.as_ref().unwrap();
        let var = env
            .iter()
            .find(|e| e.name == JOB_COMPLETION_INDEX_ENV)
            .unwrap();
        assert_eq!(
            var.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.labels['batch.kubernetes.io/job-completion-index']"
        );
    }

    let index0 = cluster
        .pods
        .iter()
        .find(|p| indexes::completion_index(p) == Some(0))
        .unwrap()
        .metadata
        .uid
        .clone()
        .unwrap();
    finish(cluster.pod_mut(&index0).unwrap(), "Succeeded", 110, 0);
    let plan = cluster.sync(111);
    assert_eq!(plan.status.completed_indexes.as_deref(), Some("0"));
    assert_eq!(plan.status.succeeded, Some(1));
    // Indexes need no UID tracking.
    assert_eq!(
        uncounted(plan.interim_status.as_ref().unwrap()),
        (vec![], vec![])
    );
    assert_eq!(plan.create.len(), 1);
    assert_eq!(
        indexes::completion_index(&plan.create[0]),
        Some(2),
        "index 1 still runs, so index 2 is next"
    );

    // A duplicate of index 1 (say, a stale cache) is deleted, whatever the counts.
    let mut duplicate = cluster
        .pods
        .iter()
        .find(|p| indexes::completion_index(p) == Some(1))
        .unwrap()
        .clone();
    duplicate.metadata.name = Some("pi-1-dup".into());
    duplicate.metadata.uid = Some("uid-dup".into());
    cluster.pods.push(duplicate);
    let plan = cluster.sync(112);
    assert_eq!(plan.delete.len(), 1);
    assert!(plan.create.is_empty());
    cluster.reap();

    for uid in cluster.active_uids() {
        finish(cluster.pod_mut(&uid).unwrap(), "Succeeded", 120, 0);
    }
    let plan = cluster.sync(121);
    assert_eq!(plan.status.completed_indexes.as_deref(), Some("0-2"));
    assert_eq!(plan.status.succeeded, Some(3));
    assert!(condition(&plan.status, COMPLETE).is_some());
}

#[test]
fn ttl_after_finished_deletes_the_job_when_it_expires() {
    let mut finished = pi(serde_json::json!({"ttlSecondsAfterFinished": 100}));
    finished.status = Some(
        serde_json::from_value(serde_json::json!({
            "succeeded": 1,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": at(1000)},
                {"type": "Complete", "status": "True", "lastTransitionTime": at(1000)}
            ]
        }))
        .unwrap(),
    );
    let early = plan(&finished, &[], &time(1050)).unwrap();
    assert_eq!(early.delete_job, None);
    assert_eq!(early.requeue_after, Some(Duration::from_secs(50)));
    assert!(!early.status_changed);
    let due = plan(&finished, &[], &time(1100)).unwrap();
    assert_eq!(
        due.delete_job,
        Some(ObjectToDelete {
            name: "pi".into(),
            uid: "job-uid".into(),
            propagation_policy: "Foreground"
        })
    );
    // A Job already being deleted is left to the garbage collector.
    let mut deleting = finished.clone();
    deleting.metadata.deletion_timestamp = Some(time(1090));
    assert_eq!(plan(&deleting, &[], &time(1200)).unwrap().delete_job, None);
    // Without a TTL a finished Job stays.
    let mut kept = finished.clone();
    kept.spec.as_mut().unwrap().ttl_seconds_after_finished = None;
    let never = plan(&kept, &[], &time(5000)).unwrap();
    assert!(never.is_noop());
    assert_eq!(never.requeue_after, None);

    // A Job finishing now is looked at again once its TTL runs out.
    let mut cluster = Cluster::new(pi(serde_json::json!({"ttlSecondsAfterFinished": 30})));
    cluster.sync(10);
    let uid = cluster.active_uids()[0].clone();
    finish(cluster.pod_mut(&uid).unwrap(), "Succeeded", 20, 0);
    let plan = cluster.sync(21);
    assert!(condition(&plan.status, COMPLETE).is_some());
    assert_eq!(plan.requeue_after, Some(Duration::from_secs(30)));
    assert_eq!(plan.delete_job, None);
}

#[test]
fn adopts_matching_orphans_and_releases_pods_that_stopped_matching() {
    let job = pi(serde_json::json!({"parallelism": 2, "completions": 2,
        "selector": {"matchLabels": {"app": "pi"}}}));
    let mut orphan = owned_pod("orphan", "Running");
    orphan.metadata.owner_references = None;
    orphan.metadata.finalizers = None;
    let mut relabeled = owned_pod("relabeled", "Running");
    relabeled.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
    let mut foreign = owned_pod("foreign", "Running");
    foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "other-job".into();
    let mut deleting_orphan = owned_pod("deleting-orphan", "Running");
    deleting_orphan.metadata.owner_references = None;
    deleting_orphan.metadata.deletion_timestamp = Some(time(50));
    let mut elsewhere = owned_pod("elsewhere", "Running");
    elsewhere.metadata.owner_references = None;
    elsewhere.metadata.namespace = Some("other".into());
    let pods = vec![
        owned_pod("mine", "Running"),
        orphan,
        relabeled,
        foreign,
        deleting_orphan,
        elsewhere,
    ];
    let plan = plan(&job, &pods, &time(100)).unwrap();
    assert_eq!(plan.adopt.len(), 1);
    assert_eq!(plan.adopt[0].name, "orphan");
    let patch = plan.adopt[0].strategic_merge_patch();
    assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "job-uid");
    assert_eq!(patch["metadata"]["finalizers"][0], JOB_TRACKING_FINALIZER);
    assert_eq!(plan.release.len(), 1);
    assert_eq!(plan.release[0].name, "relabeled");
    // mine + the adopted orphan make the two pods wanted.
    assert!(plan.create.is_empty() && plan.delete.is_empty());
    assert_eq!(plan.status.active, Some(2));
}

#[test]
fn a_job_without_selector_selects_its_controller_uid() {
    // As stored by an API server that did not generate the selector and labels.
    let mut bare = pi(serde_json::json!({}));
    bare.spec.as_mut().unwrap().template.metadata = None;
    let plan = plan(&bare, &[], &time(10)).unwrap();
    let labels = plan.create[0].metadata.labels.clone().unwrap();
    assert_eq!(labels.len(), 4);
    assert_eq!(labels[CONTROLLER_UID_LABEL], "job-uid");

    // An orphan with the controller-uid label is adopted; one without it is not.
    let mut orphan = owned_pod("orphan", "Running");
    orphan.metadata.owner_references = None;
    orphan.metadata.labels =
        Some([(CONTROLLER_UID_LABEL.to_string(), "job-uid".to_string())].into());
    let mut stranger = orphan.clone();
    stranger.metadata.name = Some("stranger".into());
    stranger.metadata.labels = Some([("app".to_string(), "pi".to_string())].into());
    let plan = super::plan(&bare, &[orphan, stranger], &time(10)).unwrap();
    assert_eq!(plan.adopt.len(), 1);
    assert_eq!(plan.adopt[0].name, "orphan");
    assert!(plan.create.is_empty());

    // A manual selector must be given; with one, the labels are not added.
    let mut manual = bare.clone();
    manual.spec.as_mut().unwrap().manual_selector = Some(true);
    assert_eq!(
        super::plan(&manual, &[], &time(10)),
        Err(JobError::MissingSelector)
    );
    manual.spec.as_mut().unwrap().selector =
        Some(serde_json::from_value(serde_json::json!({"matchLabels": {"app": "pi"}})).unwrap());
    let plan = super::plan(&manual, &[], &time(10)).unwrap();
    assert_eq!(plan.create[0].metadata.labels, Some(BTreeMap::new()));
}

#[test]
fn uncounted_pods_are_counted_exactly_once() {
    let mut job = pi(serde_json::json!({"completions": 3, "parallelism": 1}));
    job.status = Some(
        serde_json::from_value(serde_json::json!({
            "startTime": at(5), "succeeded": 1,
            "uncountedTerminatedPods": {"succeeded": ["uid-a", "uid-b"]}
        }))
        .unwrap(),
    );
    // a lost its finalizer in the last sync; b still has it (that removal failed).
    let mut a = owned_pod("a", "Succeeded");
    a.metadata.finalizers = None;
    let b = owned_pod("b", "Succeeded");
    let plan = plan(&job, &[a.clone(), b.clone()], &time(100)).unwrap();
    // a is counted right away; b stays listed until its finalizer is gone.
    let interim = plan.interim_status.as_ref().unwrap();
    assert_eq!(interim.succeeded, Some(2));
    assert_eq!(uncounted(interim).0, ["uid-b"]);
    assert_eq!(plan.remove_finalizers.len(), 1);
    assert_eq!(plan.remove_finalizers[0].uid, "uid-b");
    assert_eq!(plan.status.succeeded, Some(3));
    assert_eq!(uncounted(&plan.status), (vec![], vec![]));
    assert!(condition(&plan.status, SUCCESS_CRITERIA_MET).is_some());

    // A loop that already removed b's finalizer, with a cache that does not show it yet.
    let expected = BTreeSet::from(["uid-b".to_string()]);
    let plan = plan_with_expectations(&job, &[a, b], &time(100), &expected).unwrap();
    assert!(plan.remove_finalizers.is_empty());
    assert_eq!(plan.status.succeeded, Some(3));
    assert_eq!(uncounted(&plan.status), (vec![], vec![]));
}

#[test]
fn pod_failure_policy_fails_the_job_or_ignores_the_failure() {
    let policy = serde_json::json!({"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]});
    let job = pi(serde_json::json!({"podFailurePolicy": policy, "backoffLimit": 0}));

    let mut disrupted = owned_pod("disrupted", "Failed");
    finish(&mut disrupted, "Failed", 50, 137);
    disrupted
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()
        .push(
            serde_json::from_value(
                serde_json::json!({"type": "DisruptionTarget", "status": "True"}),
            )
            .unwrap(),
        );
    let plan = plan(&job, &[disrupted.clone()], &time(100)).unwrap();
    // Ignored: not counted, no failure, and it is replaced.
    assert!(condition(&plan.status, FAILURE_TARGET).is_none());
    assert_eq!(plan.status.failed, None);
    assert_eq!(plan.remove_finalizers.len(), 1);
    assert_eq!(plan.create.len(), 1);

    let mut fatal = owned_pod("fatal", "Failed");
    finish(&mut fatal, "Failed", 60, 42);
    let plan = super::plan(&job, &[fatal], &time(100)).unwrap();
    let target = condition(&plan.status, FAILURE_TARGET).unwrap();
    assert_eq!(target.reason.as_deref(), Some(REASON_POD_FAILURE_POLICY));
    assert_eq!(
        target.message.as_deref(),
        Some("Container main for pod default/fatal failed with exit code 42 matching FailJob rule at index 0")
    );
    assert!(condition(&plan.status, FAILED).is_some());
    assert_eq!(plan.status.failed, Some(1));
}

#[test]
fn restarts_count_against_the_backoff_limit_with_restart_policy_on_failure() {
    let mut job = pi(serde_json::json!({"backoffLimit": 2}));
    job.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("OnFailure".into());
    let mut restarting = owned_pod("restarting", "Running");
    restarting.status = Some(
        serde_json::from_value(serde_json::json!({"phase": "Running",
            "containerStatuses": [{"name": "main", "image": "", "imageID": "", "ready": false,
                "restartCount": 1}]}))
        .unwrap(),
    );
    let plan = plan(&job, &[restarting.clone()], &time(100)).unwrap();
    assert!(condition(&plan.status, FAILURE_TARGET).is_none());
    restarting
        .status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap()[0]
        .restart_count = 2;
    let plan = super::plan(&job, &[restarting], &time(100)).unwrap();
    assert_eq!(
        condition(&plan.status, FAILURE_TARGET)
            .unwrap()
            .reason
            .as_deref(),
        Some(REASON_BACKOFF_LIMIT_EXCEEDED)
    );
    assert_eq!(plan.delete.len(), 1);
}

#[test]
fn work_queue_job_completes_when_one_succeeded_and_none_runs() {
    let mut cluster = Cluster::new(pi(serde_json::json!({"parallelism": 2})));
    assert_eq!(cluster.sync(10).create.len(), 2);
    let uids = cluster.active_uids();
    finish(cluster.pod_mut(&uids[0]).unwrap(), "Succeeded", 20, 0);
    let plan = cluster.sync(21);
    // After a success nothing new starts, and the others may finish.
    assert!(plan.create.is_empty() && plan.delete.is_empty());
    assert!(condition(&plan.status, SUCCESS_CRITERIA_MET).is_none());
    finish(cluster.pod_mut(&uids[1]).unwrap(), "Failed", 30, 1);
    let plan = cluster.sync(31);
    assert!(condition(&plan.status, COMPLETE).is_some());
    assert_eq!(
        (plan.status.succeeded, plan.status.failed),
        (Some(1), Some(1))
    );
}

#[test]
fn lower_parallelism_deletes_the_most_expendable_pods_first() {
    let job = pi(serde_json::json!({"parallelism": 1, "completions": 5}));
    let mut ready = owned_pod("ready", "Running");
    run(&mut ready, Some(10));
    let mut not_ready = owned_pod("not-ready", "Running");
    run(&mut not_ready, None);
    let pending = owned_pod("pending", "Pending");
    let plan = plan(&job, &[ready, not_ready, pending], &time(100)).unwrap();
    let names: Vec<&str> = plan.delete.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["pending", "not-ready"]);
    assert!(plan
        .delete
        .iter()
        .all(|d| d.remove_tracking_finalizer_first));
    assert!(plan.create.is_empty());
    assert_eq!(plan.status.active, Some(1));
    assert_eq!(plan.status.ready, Some(1));
    assert_eq!(plan.status.terminating, Some(2));
}

#[test]
fn success_policy_ends_an_indexed_job_early() {
    let mut cluster = Cluster::new(pi(serde_json::json!({
        "completions": 3, "parallelism": 3, "completionMode": "Indexed",
        "successPolicy": {"rules": [{"succeededIndexes": "0"}]}
    })));
    cluster.sync(10);
    let leader = cluster
        .pods
        .iter()
        .find(|p| indexes::completion_index(p) == Some(0))
        .unwrap()
        .metadata
        .uid
        .clone()
        .unwrap();
    finish(cluster.pod_mut(&leader).unwrap(), "Succeeded", 20, 0);
    let plan = cluster.sync(21);
    let met = condition(&plan.status, SUCCESS_CRITERIA_MET).unwrap();
    assert_eq!(met.reason.as_deref(), Some(REASON_SUCCESS_POLICY));
    assert_eq!(met.message.as_deref(), Some("Matched rules at index 0"));
    assert_eq!(plan.delete.len(), 2);
    // The workers stopped for success are not failures.
    assert_eq!(plan.status.failed, None);
    assert!(condition(&plan.status, COMPLETE).is_none());
    cluster.reap();
    let plan = cluster.sync(22);
    let complete = condition(&plan.status, COMPLETE).unwrap();
    assert_eq!(complete.reason.as_deref(), Some(REASON_SUCCESS_POLICY));
    assert_eq!(plan.status.completed_indexes.as_deref(), Some("0"));
}

#[test]
fn a_deleted_job_lets_go_of_all_its_pods() {
    let mut job = pi(serde_json::json!({"parallelism": 2, "completions": 2}));
    job.metadata.deletion_timestamp = Some(time(90));
    let running = owned_pod("running", "Running");
    let failed = owned_pod("failed", "Failed");
    let plan = plan(&job, &[running, failed], &time(100)).unwrap();
    assert_eq!(plan.remove_finalizers.len(), 2);
    assert!(plan.create.is_empty() && plan.delete.is_empty());
    assert_eq!(plan.status.failed, Some(1));
}

#[test]
fn jobs_this_controller_does_not_run() {
    let mut external = pi(serde_json::json!({"managedBy": "kueue.x-k8s.io/multikueue"}));
    assert!(plan(&external, &[], &time(1)).unwrap().is_noop());
    external.spec.as_mut().unwrap().managed_by = Some(JOB_CONTROLLER_NAME.into());
    assert_eq!(plan(&external, &[], &time(1)).unwrap().create.len(), 1);

    let odd = pi(serde_json::json!({"completionMode": "Sometimes"}));
    let plan = super::plan(&odd, &[], &time(1)).unwrap();
    assert!(plan.create.is_empty());
    assert_eq!(reasons(&plan), ["UnknownCompletionMode"]);

    let per_index = pi(
        serde_json::json!({"completionMode": "Indexed", "completions": 2,
        "backoffLimitPerIndex": 1}),
    );
    assert_eq!(
        super::plan(&per_index, &[], &time(1)),
        Err(JobError::BackoffLimitPerIndexUnsupported)
    );
    let no_completions = pi(serde_json::json!({"completionMode": "Indexed", "parallelism": 2}));
    assert_eq!(
        super::plan(&no_completions, &[], &time(1)),
        Err(JobError::IndexedWithoutCompletions)
    );
}

#[test]
fn finished_and_orphaned_pods_lose_the_tracking_finalizer() {
    let mut finished = pi(serde_json::json!({}));
    finished.status = Some(
        serde_json::from_value(serde_json::json!({"conditions": [
            {"type": "Failed", "status": "True", "lastTransitionTime": at(10)}]}))
        .unwrap(),
    );
    let straggler = owned_pod("straggler", "Failed");
    let plan = plan(&finished, std::slice::from_ref(&straggler), &time(20)).unwrap();
    assert_eq!(plan.remove_finalizers.len(), 1);
    assert!(!plan.status_changed);

    let mut orphan = owned_pod("orphan", "Succeeded");
    orphan.metadata.owner_references = None;
    let mut of_gone_job = owned_pod("of-gone-job", "Succeeded");
    of_gone_job.metadata.owner_references.as_mut().unwrap()[0].uid = "gone".into();
    let running_job = pi(serde_json::json!({}));
    let of_running_job = owned_pod("of-running-job", "Running");
    let mut of_replica_set = owned_pod("of-replica-set", "Running");
    of_replica_set.metadata.owner_references.as_mut().unwrap()[0].kind = "ReplicaSet".into();
    let pods = [orphan, of_gone_job, of_running_job, of_replica_set];
    let names = |jobs: &[Job]| -> Vec<String> {
        orphan_finalizer_removals(&pods, jobs)
            .into_iter()
            .map(|p| p.name)
            .collect()
    };
    assert_eq!(names(&[running_job]), ["orphan", "of-gone-job"]);
    assert_eq!(
        names(&[finished]),
        ["orphan", "of-gone-job", "of-running-job"]
    );
}
