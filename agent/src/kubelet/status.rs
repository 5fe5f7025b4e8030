//! The pod status the kubelet reports, computed from the spec, what the runtime holds, probe
//! results and the reasons containers wait: phase (Kubernetes' rules), conditions with stable
//! transition times, container and init container statuses, addresses. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::kubelet::plan::{restart_policy, should_restart};
use crate::kubelet::runtime::{Instance, PodRuntime, State};

/// What the status needs besides the pod and its runtime state.
#[derive(Debug, Clone, Default)]
pub struct StatusInput {
    pub now: Timestamp,
    pub node_ip: String,
    /// Readiness probe results of running containers (absent: no probe, or none yet).
    pub ready: BTreeMap<String, bool>,
    /// Whether the startup probe passed (absent: no startup probe).
    pub started: BTreeMap<String, bool>,
    /// Containers that cannot start, with Kubernetes' waiting reason and a message
    /// (ErrImagePull, ImagePullBackOff, CreateContainerConfigError, CrashLoopBackOff…).
    pub waiting: BTreeMap<String, (String, String)>,
    /// Containers that have a readiness probe.
    pub has_readiness_probe: std::collections::BTreeSet<String>,
}

fn time(nanos: i64) -> Option<Time> {
    (nanos > 0).then(|| {
        Time(Timestamp::from_nanosecond(i128::from(nanos)).unwrap_or(Timestamp::UNIX_EPOCH))
    })
}

fn container_id(instance: &Instance) -> String {
    format!("containerd://{}", instance.id)
}

/// A terminated state for an exited instance, with Kubernetes' reasons.
fn terminated(instance: &Instance) -> ContainerStateTerminated {
    let reason = if instance.reason == "OOMKilled" {
        "OOMKilled"
    } else if instance.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ContainerStateTerminated {
        exit_code: instance.exit_code,
        reason: Some(reason.into()),
        message: (!instance.message.is_empty()).then(|| instance.message.clone()),
        started_at: time(instance.started_at),
        finished_at: time(instance.finished_at),
        container_id: Some(container_id(instance)),
        signal: None,
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..ContainerState::default()
    }
}

/// One container's status.
fn container_status(
    pod: &Pod,
    container: &Container,
    runtime: &PodRuntime,
    input: &StatusInput,
    default_waiting: &str,
    init: bool,
) -> ContainerStatus {
    let latest = runtime.latest(&container.name);
    let policy = restart_policy(pod);
    let mut status = ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: latest.map(|i| i.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(container_id),
        restart_count: latest.map_or(0, |i| i.restart_count),
        ready: false,
        started: Some(false),
        ..ContainerStatus::default()
    };
    let waiting_reason = input.waiting.get(&container.name);
    let previous = runtime.previous(&container.name);
    match latest {
        Some(instance) if instance.state == State::Running && waiting_reason.is_none() => {
            status.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: time(instance.started_at),
                }),
                ..ContainerState::default()
            });
            let started = input.started.get(&container.name).copied().unwrap_or(true);
            status.started = Some(started);
            let ready = if input.has_readiness_probe.contains(&container.name) {
                input.ready.get(&container.name).copied().unwrap_or(false)
            } else {
                true
            };
            status.ready = started && ready;
            status.last_state =
                previous
                    .filter(|p| p.state == State::Exited)
                    .map(|p| ContainerState {
                        terminated: Some(terminated(p)),
                        ..ContainerState::default()
                    });
        }
        Some(instance) if instance.state == State::Exited => {
            let last = ContainerState {
                terminated: Some(terminated(instance)),
                ..ContainerState::default()
            };
            // A successful init container is done; a failed one reruns unless policy is Never.
            let restarts = if init {
                policy != "Never" && instance.exit_code != 0
            } else {
                should_restart(policy, instance)
            };
            if pod.metadata.deletion_timestamp.is_none() && restarts {
                let (reason, message) = waiting_reason
                    .cloned()
                    .unwrap_or_else(|| ("CrashLoopBackOff".into(), String::new()));
                status.state = Some(waiting(&reason, (!message.is_empty()).then_some(message)));
                status.last_state = Some(last);
            } else {
                status.state = Some(last);
                status.last_state =
                    previous
                        .filter(|p| p.state == State::Exited)
                        .map(|p| ContainerState {
                            terminated: Some(terminated(p)),
                            ..ContainerState::default()
                        });
            }
        }
        _ => {
            let (reason, message) = waiting_reason
                .cloned()
                .unwrap_or_else(|| (default_waiting.to_string(), String::new()));
            status.state = Some(waiting(&reason, (!message.is_empty()).then_some(message)));
            status.last_state = latest
                .filter(|i| i.state == State::Exited)
                .or(previous.filter(|p| p.state == State::Exited))
                .map(|p| ContainerState {
                    terminated: Some(terminated(p)),
                    ..ContainerState::default()
                });
        }
    }
    status
}

fn is_running(status: &ContainerStatus) -> bool {
    status.state.as_ref().is_some_and(|s| s.running.is_some())
}

fn terminated_of(status: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    status.state.as_ref().and_then(|s| s.terminated.as_ref())
}

fn has_run(status: &ContainerStatus) -> bool {
    status
        .last_state
        .as_ref()
        .is_some_and(|s| s.terminated.is_some())
}

/// The pod's phase by Kubernetes' rules (`getPhase` in the kubelet).
fn phase(pod: &Pod, init: &[ContainerStatus], app: &[ContainerStatus]) -> &'static str {
    let policy = restart_policy(pod);
    let init_failed_for_good = policy == "Never"
        && init
            .iter()
            .any(|s| terminated_of(s).is_some_and(|t| t.exit_code != 0));
    if init_failed_for_good {
        return "Failed";
    }
    let init_pending = init
        .iter()
        .any(|s| terminated_of(s).is_none_or(|t| t.exit_code != 0));
    if init_pending {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for status in app {
        if is_running(status) {
            running += 1;
        } else if let Some(t) = terminated_of(status) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if has_run(status) {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "OnFailure" {
            "Running"
        } else {
            "Failed"
        }
    } else {
        "Pending"
    }
}

fn condition(
    previous: &[PodCondition],
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let transition = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: if ok { None } else { reason.map(str::to_string) },
        message: if ok { None } else { message },
        last_transition_time: Some(transition),
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The status to report for `pod`.
pub fn pod_status(pod: &Pod, runtime: &PodRuntime, input: &StatusInput) -> PodStatus {
    let previous = pod.status.clone().unwrap_or_default();
    let empty = Vec::new();
    let spec_init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .unwrap_or(&empty);
    let spec_app = pod.spec.as_ref().map_or(&empty, |s| &s.containers);
    let sandbox_ready = runtime.latest_sandbox().is_some_and(|s| s.ready);

    let init: Vec<ContainerStatus> = spec_init
        .iter()
        .map(|c| container_status(pod, c, runtime, input, "PodInitializing", true))
        .collect();
    let initialized = init
        .iter()
        .all(|s| terminated_of(s).is_some_and(|t| t.exit_code == 0));
    let app_waiting = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let app: Vec<ContainerStatus> = spec_app
        .iter()
        .map(|c| container_status(pod, c, runtime, input, app_waiting, false))
        .collect();

    // A finished pod stays finished.
    let phase = match previous.phase.as_deref() {
        Some(p @ ("Succeeded" | "Failed")) => {
            if p == "Succeeded" {
                "Succeeded"
            } else {
                "Failed"
            }
        }
        _ => phase(pod, &init, &app),
    };
    let finished = matches!(phase, "Succeeded" | "Failed");

    let now = input.now;
    let old = previous.conditions.clone().unwrap_or_default();
    let incomplete: Vec<&str> = init
        .iter()
        .filter(|s| terminated_of(s).is_none_or(|t| t.exit_code != 0))
        .map(|s| s.name.as_str())
        .collect();
    let unready: Vec<&str> = app
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let gates_ok = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_none_or(|gates| {
            gates.iter().all(|g| {
                old.iter()
                    .any(|c| c.type_ == g.condition_type && c.status == "True")
            })
        });
    let containers_ready = unready.is_empty() && !finished;
    let not_ready_reason = if finished {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_message = (!unready.is_empty())
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let mut conditions = vec![
        condition(
            &old,
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            None,
            now,
        ),
        condition(
            &old,
            "Initialized",
            incomplete.is_empty(),
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            )),
            now,
        ),
        condition(
            &old,
            "Ready",
            containers_ready && gates_ok,
            Some(not_ready_reason),
            unready_message.clone(),
            now,
        ),
        condition(
            &old,
            "ContainersReady",
            containers_ready,
            Some(not_ready_reason),
            unready_message,
            now,
        ),
    ];
    // Conditions others own (PodScheduled, readiness gates, DisruptionTarget) stay.
    for c in &old {
        if !conditions.iter().any(|n| n.type_ == c.type_) {
            conditions.push(c.clone());
        }
    }

    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let sandbox = runtime.latest_sandbox();
    let mut pod_ips: Vec<String> = if host_network {
        vec![input.node_ip.clone()]
    } else {
        sandbox
            .map(|s| s.ip.iter().chain(&s.additional_ips).cloned().collect())
            .unwrap_or_default()
    };
    pod_ips.retain(|ip| !ip.is_empty());
    if pod_ips.is_empty() {
        if let Some(old_ips) = &previous.pod_ips {
            pod_ips = old_ips.iter().map(|p| p.ip.clone()).collect();
        }
    }

    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(input.node_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: input.node_ip.clone(),
        }]),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: (!pod_ips.is_empty())
            .then(|| pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: previous.start_time.clone().or(Some(Time(now))),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(app),
        qos_class: previous.qos_class.clone(),
        message: previous.message.clone(),
        reason: previous.reason.clone(),
        nominated_node_name: previous.nominated_node_name.clone(),
        ..PodStatus::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kubelet::plan::container_hash;
    use crate::kubelet::runtime::Sandbox;
    use serde_json::json;

    const SECOND: i64 = 1_000_000_000;

    fn pod(extra_spec: serde_json::Value) -> Pod {
        let mut spec = json!({"containers": [{"name": "app", "image": "busybox"}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": "BestEffort",
                       "conditions": [{"type": "PodScheduled", "status": "True"}]},
        }))
        .unwrap()
    }

    fn instance(
        pod: &Pod,
        name: &str,
        restart_count: i32,
        state: State,
        exit_code: i32,
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
            attempt: 0,
            restart_count,
            state,
            hash: container_hash(container),
            image: "busybox".into(),
            image_ref: "sha256:abc".into(),
            created_at: SECOND * (i64::from(restart_count) + 1),
            started_at: SECOND * (i64::from(restart_count) + 1),
            finished_at: if state == State::Exited {
                SECOND * (i64::from(restart_count) + 2)
            } else {
                0
            },
            exit_code,
            reason: if exit_code == 137 {
                "OOMKilled".into()
            } else {
                String::new()
            },
            message: String::new(),
        }
    }

    fn runtime(instances: Vec<Instance>) -> PodRuntime {
        PodRuntime {
            sandboxes: vec![Sandbox {
                id: "s1".into(),
                attempt: 0,
                ready: true,
                created_at: 1,
                ip: Some("10.42.0.5".into()),
                additional_ips: vec![],
            }],
            instances,
        }
    }

    fn input() -> StatusInput {
        StatusInput {
            node_ip: "192.168.1.10".into(),
            now: Timestamp::from_second(100).unwrap(),
            ..StatusInput::default()
        }
    }

    fn cond<'a>(status: &'a PodStatus, type_: &str) -> &'a PodCondition {
        status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    #[test]
    fn a_running_container_makes_a_ready_running_pod() {
        let p = pod(json!({}));
        let status = pod_status(
            &p,
            &runtime(vec![instance(&p, "app", 0, State::Running, 0)]),
            &input(),
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.42.0.5"));
        assert_eq!(status.host_ip.as_deref(), Some("192.168.1.10"));
        assert_eq!(cond(&status, "Ready").status, "True");
        assert_eq!(cond(&status, "PodScheduled").status, "True", "kept");
        let c = &status.container_statuses.as_ref().unwrap()[0];
        assert!(c.ready && c.state.as_ref().unwrap().running.is_some());
        assert_eq!(c.container_id.as_deref(), Some("containerd://app-0"));
        assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    }

    #[test]
    fn readiness_gates_ready() {
        let p = pod(
            json!({"containers": [{"name": "app", "image": "b", "readinessProbe": {"exec": {"command": ["true"]}}}]}),
        );
        let rt = runtime(vec![instance(&p, "app", 0, State::Running, 0)]);
        let mut inp = input();
        inp.has_readiness_probe.insert("app".into());
        let status = pod_status(&p, &rt, &inp);
        assert_eq!(cond(&status, "Ready").status, "False");
        assert_eq!(
            cond(&status, "Ready").message.as_deref(),
            Some("containers with unready status: [app]")
        );
        inp.ready.insert("app".into(), true);
        assert_eq!(cond(&pod_status(&p, &rt, &inp), "Ready").status, "True");
    }

    #[test]
    fn a_crash_loop_shows_waiting_with_the_last_termination() {
        let p = pod(json!({}));
        let rt = runtime(vec![
            instance(&p, "app", 0, State::Exited, 1),
            instance(&p, "app", 1, State::Exited, 1),
        ]);
        let mut inp = input();
        inp.waiting.insert(
            "app".into(),
            (
                "CrashLoopBackOff".into(),
                "back-off 10s restarting failed container=app pod=p_default(u1)".into(),
            ),
        );
        let status = pod_status(&p, &rt, &inp);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let c = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(c.restart_count, 1);
        assert_eq!(
            c.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(
            c.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            1
        );
    }

    #[test]
    fn oom_kills_are_reported() {
        let p = pod(json!({"restartPolicy": "Never"}));
        let status = pod_status(
            &p,
            &runtime(vec![instance(&p, "app", 0, State::Exited, 137)]),
            &input(),
        );
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        let t = status.container_statuses.as_ref().unwrap()[0]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(t.reason.as_deref(), Some("OOMKilled"));
    }

    #[test]
    fn phases_follow_restart_policy() {
        for (policy, exit, phase) in [
            ("Never", 0, "Succeeded"),
            ("Never", 1, "Failed"),
            ("OnFailure", 0, "Succeeded"),
            ("OnFailure", 1, "Running"),
            ("Always", 0, "Running"),
        ] {
            let p = pod(json!({"restartPolicy": policy}));
            let status = pod_status(
                &p,
                &runtime(vec![instance(&p, "app", 0, State::Exited, exit)]),
                &input(),
            );
            assert_eq!(status.phase.as_deref(), Some(phase), "{policy} {exit}");
        }
        let p = pod(json!({"restartPolicy": "Never"}));
        let done = pod_status(
            &p,
            &runtime(vec![instance(&p, "app", 0, State::Exited, 0)]),
            &input(),
        );
        assert_eq!(cond(&done, "Ready").reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn init_containers_keep_the_pod_pending_until_done() {
        let p = pod(json!({"initContainers": [{"name": "init", "image": "b"}]}));
        let status = pod_status(
            &p,
            &runtime(vec![instance(&p, "init", 0, State::Running, 0)]),
            &input(),
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&status, "Initialized").status, "False");
        let app = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            app.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("PodInitializing")
        );
        let done = pod_status(
            &p,
            &runtime(vec![
                instance(&p, "init", 0, State::Exited, 0),
                instance(&p, "app", 0, State::Running, 0),
            ]),
            &input(),
        );
        assert_eq!(done.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&done, "Initialized").status, "True");
    }

    #[test]
    fn image_pull_errors_show_as_waiting_reasons() {
        let p = pod(json!({}));
        let mut inp = input();
        inp.waiting
            .insert("app".into(), ("ErrImagePull".into(), "not found".into()));
        let status = pod_status(&p, &runtime(vec![]), &inp);
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let w = status.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(
            (w.reason.as_deref(), w.message.as_deref()),
            (Some("ErrImagePull"), Some("not found"))
        );
    }

    #[test]
    fn transition_times_are_kept() {
        let p = pod(json!({}));
        let rt = runtime(vec![instance(&p, "app", 0, State::Running, 0)]);
        let first = pod_status(&p, &rt, &input());
        let mut again = p.clone();
        again.status = Some(first.clone());
        let mut later = input();
        later.now = Timestamp::from_second(500).unwrap();
        let second = pod_status(&again, &rt, &later);
        assert_eq!(
            cond(&second, "Ready").last_transition_time,
            cond(&first, "Ready").last_transition_time
        );
        assert_eq!(second.start_time, first.start_time);
    }
}
