//! What the simulated kubelet does next with a pod bound to one of its nodes, decided from the
//! pod alone: start it, let its containers exit (when annotated to, or when a Job's), finish
//! its deletion, or nothing. Pure.
//!
//! Containers exit only for pods whose restartPolicy lets them end (Never, OnFailure); those of
//! `Always` pods run until deleted, whatever their annotations say.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::simulated::duration::parse_duration;

/// How long a pod's containers run before they exit (`"2s"`, `"1m"`).
pub const EXIT_AFTER_ANNOTATION: &str = "shoal.dev/simulate-exit-after";
/// The code they exit with (default 0).
pub const EXIT_CODE_ANNOTATION: &str = "shoal.dev/simulate-exit-code";

/// When and how a pod's containers exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitPlan {
    /// Measured from the containers' (latest) start.
    pub after: Duration,
    pub code: i32,
}

/// How `pod`'s containers end: by its annotations, else for a Job's pod after
/// `complete_after` with code 0; `None` if they run until deleted. An unreadable annotation
/// is an error (the caller reports it and lets the pod run).
pub fn exit_plan(pod: &Pod, complete_after: Option<Duration>) -> Result<Option<ExitPlan>, String> {
    if restart_policy(pod) == "Always" {
        return Ok(None);
    }
    let annotation = |key: &str| {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    };
    let after = annotation(EXIT_AFTER_ANNOTATION)
        .map(|text| parse_duration(text).map_err(|e| format!("{EXIT_AFTER_ANNOTATION}: {e}")))
        .transpose()?;
    let code = annotation(EXIT_CODE_ANNOTATION)
        .map(|text| {
            text.trim()
                .parse::<i32>()
                .ok()
                .filter(|code| (0..=255).contains(code))
                .ok_or_else(|| {
                    format!("{EXIT_CODE_ANNOTATION}: {text:?} is not an exit code 0-255")
                })
        })
        .transpose()?;
    let job_default = if owned_by_job(pod) {
        complete_after
    } else {
        None
    };
    let after = match (after, code) {
        (Some(after), _) => after,
        (None, Some(_)) => job_default.or(complete_after).unwrap_or(Duration::ZERO),
        (None, None) => match job_default {
            Some(after) => after,
            None => return Ok(None),
        },
    };
    Ok(Some(ExitPlan {
        after,
        code: code.unwrap_or(0),
    }))
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn owned_by_job(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Job" && o.api_version.starts_with("batch/"))
}

/// The next thing to do with a pod bound to a simulated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Admit it and run its containers.
    Start,
    /// Its containers exit with `code` at `due`; `restart` says whether they are restarted in
    /// place (OnFailure after a failure) rather than ending the pod. `restarts` is the
    /// containers' restart count, telling one run's exit from the next one's.
    Exit {
        due: Timestamp,
        code: i32,
        restart: bool,
        restarts: i32,
    },
    /// It is being deleted: stop it and delete it for good.
    Finish,
    /// It ended (Succeeded or Failed): nothing more to do.
    Ended,
    /// It runs and nothing is planned.
    Steady,
}

/// The next step for `pod` given its exit plan.
pub fn next_step(pod: &Pod, exit: Option<ExitPlan>) -> Step {
    if pod.metadata.deletion_timestamp.is_some() {
        return Step::Finish;
    }
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Succeeded" | "Failed") => Step::Ended,
        None | Some("Pending") => Step::Start,
        Some("Running") => {
            let Some(exit) = exit else {
                return Step::Steady;
            };
            let first = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first());
            let started = first
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
                .or(status.and_then(|s| s.start_time.as_ref()));
            let Some(started) = started else {
                return Step::Steady;
            };
            let after = SignedDuration::try_from(exit.after).unwrap_or(SignedDuration::MAX);
            Step::Exit {
                due: started.0.checked_add(after).unwrap_or(Timestamp::MAX),
                code: exit.code,
                restart: exit.code != 0 && restart_policy(pod) == "OnFailure",
                restarts: first.map_or(0, |c| c.restart_count),
            }
        }
        Some(_) => Step::Steady,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn pod(metadata: Value, restart_policy: &str, status: Value) -> Pod {
        let mut metadata = metadata;
        metadata["name"] = json!("p");
        serde_json::from_value(json!({
            "metadata": metadata,
            "spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": restart_policy, "nodeName": "sim-1"},
            "status": status,
        }))
        .expect("pod")
    }

    fn annotated(after: Option<&str>, code: Option<&str>, policy: &str) -> Pod {
        let mut annotations = serde_json::Map::new();
        if let Some(after) = after {
            annotations.insert(EXIT_AFTER_ANNOTATION.into(), json!(after));
        }
        if let Some(code) = code {
            annotations.insert(EXIT_CODE_ANNOTATION.into(), json!(code));
        }
        pod(json!({"annotations": annotations}), policy, json!({}))
    }

    fn job_pod(policy: &str) -> Pod {
        pod(
            json!({"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "j1", "controller": true}]}),
            policy,
            json!({}),
        )
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn annotations_decide_when_and_how_containers_exit() {
        let plan = |pod: &Pod| exit_plan(pod, Some(SECOND));
        assert_eq!(
            plan(&annotated(Some("2s"), None, "Never")),
            Ok(Some(ExitPlan {
                after: 2 * SECOND,
                code: 0
            }))
        );
        assert_eq!(
            plan(&annotated(Some("500ms"), Some("1"), "OnFailure")),
            Ok(Some(ExitPlan {
                after: Duration::from_millis(500),
                code: 1
            }))
        );
        assert_eq!(
            plan(&annotated(None, Some("3"), "Never")),
            Ok(Some(ExitPlan {
                after: SECOND,
                code: 3
            }))
        );
        // Always-restarting pods never end, and unannotated bare pods run on.
        assert_eq!(plan(&annotated(Some("2s"), Some("1"), "Always")), Ok(None));
        assert_eq!(plan(&annotated(None, None, "Never")), Ok(None));
        assert!(plan(&annotated(Some("soon"), None, "Never")).is_err());
        assert!(plan(&annotated(Some("1s"), Some("-1"), "Never")).is_err());
        assert!(plan(&annotated(Some("1s"), Some("256"), "Never")).is_err());
    }

    #[test]
    fn a_jobs_pods_complete_after_the_default() {
        assert_eq!(
            exit_plan(&job_pod("Never"), Some(SECOND)),
            Ok(Some(ExitPlan {
                after: SECOND,
                code: 0
            }))
        );
        assert_eq!(exit_plan(&job_pod("OnFailure"), None), Ok(None));
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("time")
    }

    #[test]
    fn steps_follow_the_pods_phase() {
        let plan = Some(ExitPlan {
            after: 2 * SECOND,
            code: 1,
        });
        let pending = pod(json!({}), "Never", json!({"phase": "Pending"}));
        assert_eq!(next_step(&pending, plan), Step::Start);
        let unstarted = pod(json!({}), "Never", json!({}));
        assert_eq!(next_step(&unstarted, plan), Step::Start);

        let running = |policy: &str| {
            pod(
                json!({}),
                policy,
                json!({
                    "phase": "Running",
                    "startTime": "1970-01-01T00:01:40Z",
                    "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 2,
                        "state": {"running": {"startedAt": "1970-01-01T00:02:00Z"}}}],
                }),
            )
        };
        assert_eq!(
            next_step(&running("Never"), plan),
            Step::Exit {
                due: at(122),
                code: 1,
                restart: false,
                restarts: 2
            }
        );
        assert_eq!(
            next_step(&running("OnFailure"), plan),
            Step::Exit {
                due: at(122),
                code: 1,
                restart: true,
                restarts: 2
            }
        );
        assert_eq!(next_step(&running("Never"), None), Step::Steady);

        let done = pod(json!({}), "Never", json!({"phase": "Succeeded"}));
        assert_eq!(next_step(&done, plan), Step::Ended);
        let deleting = pod(
            json!({"deletionTimestamp": "2024-01-01T00:00:00Z"}),
            "Never",
            json!({"phase": "Running"}),
        );
        assert_eq!(next_step(&deleting, plan), Step::Finish);
    }
}
