//! What to do next for one pod, decided from its spec and what the runtime holds: pure, one step
//! at a time (the worker carries a step out and asks again until nothing is left to do). The
//! order is Kubernetes': a sandbox, then init containers one by one, then the app containers;
//! restarts follow `restartPolicy` with the kubelet's crash-loop back-off; a pod being deleted
//! or finished is stopped, and a deleted one is removed once nothing of it runs.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::kubelet::runtime::{Instance, PodRuntime, State};

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateSandbox {
        attempt: u32,
    },
    StartContainer {
        name: String,
        init: bool,
        restart_count: i32,
    },
    KillContainer {
        id: String,
        name: String,
        grace_seconds: i64,
        reason: KillReason,
    },
    RemoveContainer {
        id: String,
    },
    StopSandbox {
        id: String,
    },
    RemoveSandbox {
        id: String,
    },
    /// Everything is gone: remove the Pod object (the final, zero-grace delete).
    DeletePodObject,
}

/// Why a container is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    PodDeleted,
    PodFinished,
    SandboxGone,
    LivenessFailed,
    StartupFailed,
    SpecChanged,
}

/// What the planner needs besides the pod and its runtime state.
#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    /// Nanoseconds since the epoch.
    pub now: i64,
    /// Containers whose running instance failed its liveness probe.
    pub liveness_failed: BTreeSet<String>,
    /// Containers whose running instance failed its startup probe.
    pub startup_failed: BTreeSet<String>,
}

/// The next step, or why there is none yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Containers waiting out a crash-loop back-off: name → (restart due at, delay).
    pub backing_off: Vec<(String, i64, Duration)>,
}

/// Kubernetes' crash-loop back-off: the first restart at once, then 10 s doubling to 5 min.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting restarts without back-off.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// How long to wait before restarting an instance that exited after `restart_count` restarts.
pub fn restart_delay(restart_count: i32, ran_for: Duration) -> Duration {
    if restart_count <= 0 || ran_for >= BACKOFF_RESET_AFTER {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(restart_count - 1).unwrap_or(u32::MAX).min(16);
    BACKOFF_INITIAL
        .saturating_mul(1 << exponent)
        .min(BACKOFF_MAX)
}

/// The pod's restart policy.
pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether an exited instance should be restarted under `policy`.
pub fn should_restart(policy: &str, instance: &Instance) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => instance.exit_code != 0,
        _ => true,
    }
}

/// The grace period for stopping the pod's containers now.
pub fn grace_seconds(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0)
}

/// The phase a pod has reached for good, if it has.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The hash the runtime's instance records of the container spec it was started from; a
/// different hash means the spec changed (an image update) and the container is replaced.
pub fn container_hash(container: &Container) -> String {
    let json = serde_json::to_vec(container).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &json);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The next step for `pod`.
pub fn plan(pod: &Pod, runtime: &PodRuntime, input: &PlanInput) -> Plan {
    let mut plan = Plan::default();
    let deleting = pod.metadata.deletion_timestamp.is_some();
    if deleting || is_finished(pod) {
        let reason = if deleting {
            KillReason::PodDeleted
        } else {
            KillReason::PodFinished
        };
        stop_everything(pod, runtime, reason, &mut plan.actions);
        if plan.actions.is_empty() && deleting {
            plan.actions.extend(
                runtime
                    .instances
                    .iter()
                    .map(|i| Action::RemoveContainer { id: i.id.clone() }),
            );
            plan.actions.extend(
                runtime
                    .sandboxes
                    .iter()
                    .map(|s| Action::RemoveSandbox { id: s.id.clone() }),
            );
            plan.actions.push(Action::DeletePodObject);
        }
        return plan;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return plan;
    };
    let policy = restart_policy(pod);

    let sandbox = match runtime.latest_sandbox() {
        None => {
            plan.actions.push(Action::CreateSandbox { attempt: 0 });
            return plan;
        }
        Some(sandbox) if !sandbox.ready => {
            // The sandbox died (node reboot, its pause process killed): its containers go and
            // a new one is made, unless the pod has nothing left to run.
            if policy != "Always" && all_done(spec.containers.iter(), runtime, policy) {
                return plan;
            }
            kill_running(
                runtime,
                Some(&sandbox.id),
                grace_seconds(pod),
                KillReason::SandboxGone,
                &mut plan.actions,
            );
            // Sandboxes that never came up (a failed network setup) hold nothing: they go.
            for dead in &runtime.sandboxes {
                let empty = !runtime.instances.iter().any(|i| i.sandbox_id == dead.id);
                if dead.id != sandbox.id && !dead.ready && empty {
                    plan.actions.push(Action::RemoveSandbox {
                        id: dead.id.clone(),
                    });
                }
            }
            if plan
                .actions
                .iter()
                .all(|a| matches!(a, Action::RemoveSandbox { .. }))
            {
                plan.actions.push(Action::CreateSandbox {
                    attempt: sandbox.attempt + 1,
                });
            }
            return plan;
        }
        Some(sandbox) => sandbox,
    };

    // Init containers, in order, each to success, in this sandbox.
    for container in spec.init_containers.iter().flatten() {
        let current = latest_in(runtime, &container.name, &sandbox.id);
        match current.map(|i| i.state) {
            None => {
                start(runtime, container, true, input, &mut plan);
                return plan;
            }
            Some(State::Exited) => {
                let Some(instance) = current else { return plan };
                if instance.exit_code == 0 {
                    continue;
                }
                if policy != "Never" {
                    restart(instance, container, true, input, &mut plan);
                }
                return plan;
            }
            Some(State::Created) => {
                if let Some(instance) = current {
                    plan.actions.push(Action::RemoveContainer {
                        id: instance.id.clone(),
                    });
                }
                return plan;
            }
            Some(State::Running | State::Unknown) => return plan,
        }
    }

    for container in &spec.containers {
        let hash = container_hash(container);
        match latest_in(runtime, &container.name, &sandbox.id) {
            None => start(runtime, container, false, input, &mut plan),
            Some(instance) => match instance.state {
                State::Running => {
                    let reason = if input.liveness_failed.contains(&container.name) {
                        Some(KillReason::LivenessFailed)
                    } else if input.startup_failed.contains(&container.name) {
                        Some(KillReason::StartupFailed)
                    } else if !instance.hash.is_empty() && instance.hash != hash {
                        Some(KillReason::SpecChanged)
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0);
                        plan.actions.push(Action::KillContainer {
                            id: instance.id.clone(),
                            name: container.name.clone(),
                            grace_seconds: grace,
                            reason,
                        });
                    }
                }
                State::Created => plan.actions.push(Action::RemoveContainer {
                    id: instance.id.clone(),
                }),
                State::Exited => {
                    if should_restart(policy, instance) {
                        restart(instance, container, false, input, &mut plan);
                    }
                }
                State::Unknown => {}
            },
        }
    }
    collect_garbage(runtime, &sandbox.id, &mut plan.actions);
    plan
}

/// The newest instance of `name` in sandbox `sandbox_id`.
fn latest_in<'a>(runtime: &'a PodRuntime, name: &str, sandbox_id: &str) -> Option<&'a Instance> {
    runtime
        .instances
        .iter()
        .filter(|i| i.name == name && i.sandbox_id == sandbox_id)
        .max_by_key(|i| (i.restart_count, i.created_at))
}

/// Starts a container that has no instance in the current sandbox; its restart count carries
/// on from instances in earlier sandboxes.
fn start(
    runtime: &PodRuntime,
    container: &Container,
    init: bool,
    _input: &PlanInput,
    plan: &mut Plan,
) {
    let restart_count = runtime
        .latest(&container.name)
        .map_or(0, |i| i.restart_count + 1);
    plan.actions.push(Action::StartContainer {
        name: container.name.clone(),
        init,
        restart_count,
    });
}

/// Restarts an exited instance once its back-off has passed.
fn restart(
    instance: &Instance,
    container: &Container,
    init: bool,
    input: &PlanInput,
    plan: &mut Plan,
) {
    let ran_for = Duration::from_nanos(
        u64::try_from(instance.finished_at - instance.started_at).unwrap_or(0),
    );
    let delay = restart_delay(instance.restart_count, ran_for);
    let due = instance
        .finished_at
        .saturating_add(i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX));
    if input.now >= due {
        plan.actions.push(Action::StartContainer {
            name: container.name.clone(),
            init,
            restart_count: instance.restart_count + 1,
        });
    } else {
        plan.backing_off.push((container.name.clone(), due, delay));
    }
}

/// Whether every container in `containers` has exited for good under `policy`.
fn all_done<'a>(
    mut containers: impl Iterator<Item = &'a Container>,
    runtime: &PodRuntime,
    policy: &str,
) -> bool {
    containers.all(|c| {
        runtime
            .latest(&c.name)
            .is_some_and(|i| i.state == State::Exited && !should_restart(policy, i))
    })
}

fn kill_running(
    runtime: &PodRuntime,
    sandbox: Option<&str>,
    grace: i64,
    reason: KillReason,
    actions: &mut Vec<Action>,
) {
    for instance in &runtime.instances {
        let in_scope = sandbox.is_none_or(|s| instance.sandbox_id == s);
        if in_scope && matches!(instance.state, State::Running | State::Unknown) {
            actions.push(Action::KillContainer {
                id: instance.id.clone(),
                name: instance.name.clone(),
                grace_seconds: grace,
                reason,
            });
        }
    }
}

/// Kills what runs, then stops the sandboxes; created-but-never-started instances go too.
fn stop_everything(pod: &Pod, runtime: &PodRuntime, reason: KillReason, actions: &mut Vec<Action>) {
    kill_running(runtime, None, grace_seconds(pod), reason, actions);
    for instance in &runtime.instances {
        if instance.state == State::Created {
            actions.push(Action::RemoveContainer {
                id: instance.id.clone(),
            });
        }
    }
    if actions.is_empty() {
        actions.extend(
            runtime
                .sandboxes
                .iter()
                .filter(|s| s.ready)
                .map(|s| Action::StopSandbox { id: s.id.clone() }),
        );
    }
}

/// Keeps the newest two instances of each container (for `logs --previous`) and drops the
/// rest, and removes dead sandboxes other than the current one once their containers are gone.
fn collect_garbage(runtime: &PodRuntime, current_sandbox: &str, actions: &mut Vec<Action>) {
    let names: BTreeSet<&str> = runtime.instances.iter().map(|i| i.name.as_str()).collect();
    for name in names {
        let mut exited: Vec<&Instance> = runtime
            .instances
            .iter()
            .filter(|i| i.name == name && i.state == State::Exited)
            .collect();
        exited.sort_by_key(|i| std::cmp::Reverse((i.restart_count, i.created_at)));
        for old in exited.into_iter().skip(2) {
            actions.push(Action::RemoveContainer { id: old.id.clone() });
        }
    }
    for sandbox in &runtime.sandboxes {
        let empty = !runtime.instances.iter().any(|i| i.sandbox_id == sandbox.id);
        if sandbox.id != current_sandbox && !sandbox.ready && empty {
            actions.push(Action::RemoveSandbox {
                id: sandbox.id.clone(),
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kubelet::runtime::Sandbox;
    use serde_json::json;

    const SECOND: i64 = 1_000_000_000;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut value = json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        });
        merge(&mut value, extra);
        serde_json::from_value(value).unwrap()
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn sandbox(id: &str, ready: bool) -> Sandbox {
        Sandbox {
            id: id.into(),
            attempt: 0,
            ready,
            created_at: 1,
            ip: None,
            additional_ips: vec![],
        }
    }

    fn instance(
        pod: &Pod,
        name: &str,
        restart_count: i32,
        state: State,
        exit_code: i32,
        finished: i64,
    ) -> Instance {
        let spec = pod.spec.as_ref().unwrap();
        let container = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| c.name == name)
            .unwrap();
        Instance {
            id: format!("{name}-{restart_count}"),
            name: name.into(),
            sandbox_id: "s1".into(),
            attempt: restart_count as u32,
            restart_count,
            state,
            hash: container_hash(container),
            image: "busybox".into(),
            image_ref: "sha256:1".into(),
            created_at: finished - SECOND,
            started_at: finished - SECOND,
            finished_at: if state == State::Exited { finished } else { 0 },
            exit_code,
            reason: String::new(),
            message: String::new(),
        }
    }

    fn input(now: i64) -> PlanInput {
        PlanInput {
            now,
            ..PlanInput::default()
        }
    }

    #[test]
    fn a_new_pod_gets_a_sandbox_then_its_containers() {
        let p = pod(json!({}));
        let empty = PodRuntime::default();
        assert_eq!(
            plan(&p, &empty, &input(0)).actions,
            vec![Action::CreateSandbox { attempt: 0 }]
        );
        let with_sandbox = PodRuntime {
            sandboxes: vec![sandbox("s1", true)],
            instances: vec![],
        };
        assert_eq!(
            plan(&p, &with_sandbox, &input(0)).actions,
            vec![Action::StartContainer {
                name: "app".into(),
                init: false,
                restart_count: 0
            }]
        );
    }

    #[test]
    fn init_containers_run_one_at_a_time_before_the_app() {
        let p = pod(
            json!({"spec": {"initContainers": [{"name": "i1", "image": "b"}, {"name": "i2", "image": "b"}]}}),
        );
        let mut rt = PodRuntime {
            sandboxes: vec![sandbox("s1", true)],
            instances: vec![],
        };
        let first = plan(&p, &rt, &input(0)).actions;
        assert_eq!(
            first,
            vec![Action::StartContainer {
                name: "i1".into(),
                init: true,
                restart_count: 0
            }]
        );
        rt.instances
            .push(instance(&p, "i1", 0, State::Running, 0, 5 * SECOND));
        assert!(plan(&p, &rt, &input(0)).actions.is_empty(), "waits for i1");
        rt.instances[0] = instance(&p, "i1", 0, State::Exited, 0, 5 * SECOND);
        assert_eq!(
            plan(&p, &rt, &input(0)).actions,
            vec![Action::StartContainer {
                name: "i2".into(),
                init: true,
                restart_count: 0
            }]
        );
        rt.instances
            .push(instance(&p, "i2", 0, State::Exited, 0, 6 * SECOND));
        assert_eq!(
            plan(&p, &rt, &input(0)).actions,
            vec![Action::StartContainer {
                name: "app".into(),
                init: false,
                restart_count: 0
            }]
        );
    }

    #[test]
    fn a_failed_init_container_fails_a_never_restart_pod_and_backs_off_otherwise() {
        let never = pod(
            json!({"spec": {"restartPolicy": "Never", "initContainers": [{"name": "i1", "image": "b"}]}}),
        );
        let rt = PodRuntime {
            sandboxes: vec![sandbox("s1", true)],
            instances: vec![instance(&never, "i1", 0, State::Exited, 1, 5 * SECOND)],
        };
        assert!(plan(&never, &rt, &input(6 * SECOND)).actions.is_empty());
        let always = pod(json!({"spec": {"initContainers": [{"name": "i1", "image": "b"}]}}));
        assert_eq!(
            plan(&always, &rt, &input(6 * SECOND)).actions,
            vec![Action::StartContainer {
                name: "i1".into(),
                init: true,
                restart_count: 1
            }]
        );
    }

    #[test]
    fn crash_loops_back_off_exponentially() {
        assert_eq!(restart_delay(0, Duration::ZERO), Duration::ZERO);
        assert_eq!(restart_delay(1, Duration::ZERO), Duration::from_secs(10));
        assert_eq!(restart_delay(2, Duration::ZERO), Duration::from_secs(20));
        assert_eq!(restart_delay(6, Duration::ZERO), Duration::from_secs(300));
        assert_eq!(restart_delay(60, Duration::ZERO), Duration::from_secs(300));
        assert_eq!(
            restart_delay(5, Duration::from_secs(700)),
            Duration::ZERO,
            "a long run resets it"
        );

        let p = pod(json!({}));
        let rt = PodRuntime {
            sandboxes: vec![sandbox("s1", true)],
            instances: vec![instance(&p, "app", 2, State::Exited, 1, 100 * SECOND)],
        };
        let early = plan(&p, &rt, &input(110 * SECOND));
        assert!(early.actions.is_empty());
        assert_eq!(
            early.backing_off,
            vec![("app".to_string(), 120 * SECOND, Duration::from_secs(20))]
        );
        assert_eq!(
            plan(&p, &rt, &input(120 * SECOND)).actions,
            vec![Action::StartContainer {
                name: "app".into(),
                init: false,
                restart_count: 3
            }]
        );
    }

    #[test]
    fn restart_policy_decides_what_restarts() {
        for (policy, exit, restarts) in [
            ("Always", 0, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 2, false),
        ] {
            let p = pod(json!({"spec": {"restartPolicy": policy}}));
            let rt = PodRuntime {
                sandboxes: vec![sandbox("s1", true)],
                instances: vec![instance(&p, "app", 0, State::Exited, exit, SECOND)],
            };
            let actions = plan(&p, &rt, &input(2 * SECOND)).actions;
            assert_eq!(
                !actions.is_empty(),
                restarts,
                "{policy} exit {exit}: {actions:?}"
            );
        }
    }

    #[test]
    fn liveness_failure_and_image_change_replace_a_running_container() {
        let p = pod(json!({}));
        let rt = PodRuntime {
            sandboxes: vec![sandbox("s1", true)],
            instances: vec![instance(&p, "app", 0, State::Running, 0, SECOND)],
        };
        assert!(plan(&p, &rt, &input(2 * SECOND)).actions.is_empty());
        let mut failing = input(2 * SECOND);
        failing.liveness_failed.insert("app".into());
        assert!(matches!(
            plan(&p, &rt, &failing).actions[..],
            [Action::KillContainer {
                reason: KillReason::LivenessFailed,
                ..
            }]
        ));
        let updated = pod(json!({"spec": {"containers": [{"name": "app", "image": "busybox:2"}]}}));
        assert!(matches!(
            plan(&updated, &rt, &input(2 * SECOND)).actions[..],
            [Action::KillContainer {
                reason: KillReason::SpecChanged,
                ..
            }]
        ));
    }

    #[test]
    fn a_deleted_pod_is_stopped_then_removed() {
        let p = pod(
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 5}}),
        );
        let running = PodRuntime {
            sandboxes: vec![sandbox("s1", true)],
            instances: vec![instance(&p, "app", 0, State::Running, 0, SECOND)],
        };
        assert_eq!(
            plan(&p, &running, &input(0)).actions,
            vec![Action::KillContainer {
                id: "app-0".into(),
                name: "app".into(),
                grace_seconds: 5,
                reason: KillReason::PodDeleted
            }]
        );
        let stopped_containers = PodRuntime {
            sandboxes: vec![sandbox("s1", true)],
            instances: vec![instance(&p, "app", 0, State::Exited, 137, SECOND)],
        };
        assert_eq!(
            plan(&p, &stopped_containers, &input(0)).actions,
            vec![Action::StopSandbox { id: "s1".into() }]
        );
        let all_stopped = PodRuntime {
            sandboxes: vec![sandbox("s1", false)],
            instances: vec![instance(&p, "app", 0, State::Exited, 137, SECOND)],
        };
        assert_eq!(
            plan(&p, &all_stopped, &input(0)).actions,
            vec![
                Action::RemoveContainer { id: "app-0".into() },
                Action::RemoveSandbox { id: "s1".into() },
                Action::DeletePodObject
            ]
        );
        assert_eq!(
            plan(&p, &PodRuntime::default(), &input(0)).actions,
            vec![Action::DeletePodObject]
        );
    }

    #[test]
    fn a_dead_sandbox_is_replaced_with_its_containers() {
        let p = pod(json!({}));
        let rt = PodRuntime {
            sandboxes: vec![sandbox("s1", false)],
            instances: vec![instance(&p, "app", 0, State::Exited, 137, SECOND)],
        };
        assert_eq!(
            plan(&p, &rt, &input(2 * SECOND)).actions,
            vec![Action::CreateSandbox { attempt: 1 }]
        );
        let mut rt2 = rt.clone();
        rt2.sandboxes.push(Sandbox {
            id: "s2".into(),
            attempt: 1,
            ready: true,
            created_at: 2,
            ip: None,
            additional_ips: vec![],
        });
        assert_eq!(
            plan(&p, &rt2, &input(2 * SECOND)).actions,
            vec![Action::StartContainer {
                name: "app".into(),
                init: false,
                restart_count: 1
            }]
        );
    }

    #[test]
    fn old_instances_are_collected_keeping_two() {
        let p = pod(json!({}));
        let rt = PodRuntime {
            sandboxes: vec![sandbox("s1", true)],
            instances: vec![
                instance(&p, "app", 0, State::Exited, 1, SECOND),
                instance(&p, "app", 1, State::Exited, 1, 2 * SECOND),
                instance(&p, "app", 2, State::Exited, 1, 3 * SECOND),
                instance(&p, "app", 3, State::Running, 0, 4 * SECOND),
            ],
        };
        assert_eq!(
            plan(&p, &rt, &input(5 * SECOND)).actions,
            vec![Action::RemoveContainer { id: "app-0".into() }]
        );
    }
}
