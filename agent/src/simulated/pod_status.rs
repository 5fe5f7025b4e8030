//! The pod statuses a kubelet reports, built from the pod as last seen: running (all containers
//! started and ready), exited (Succeeded or Failed), restarted in place (restartPolicy
//! OnFailure after a failure) and rejected at admission. Pure: handed `now`, never reading a
//! clock.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The container ID the simulated runtime gives a container of pod `uid` on its
/// `restart_count`th start.
pub fn container_id(uid: &str, name: &str, restart_count: i32) -> String {
    if restart_count == 0 {
        format!("simulated://{uid}-{name}")
    } else {
        format!("simulated://{uid}-{name}-{restart_count}")
    }
}

/// The status of `pod` once running on a node at `host_ip` with address `pod_ip`.
pub fn running_status(pod: &Pod, host_ip: IpAddr, pod_ip: IpAddr, now: Timestamp) -> PodStatus {
    let previous = pod.status.as_ref();
    let start_time = previous
        .and_then(|s| s.start_time.clone())
        .unwrap_or(Time(now));
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ]
    .into_iter()
    .map(|type_| condition(pod, type_, true, None, now))
    .collect();
    let init_statuses: Vec<ContainerStatus> = init_containers(pod)
        .iter()
        .map(|container| {
            if is_sidecar(container) {
                running_container(pod, container, 0, now)
            } else {
                completed_init_container(pod, container, now)
            }
        })
        .collect();
    PodStatus {
        phase: Some("Running".into()),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ip: Some(pod_ip.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: pod_ip.to_string(),
        }]),
        start_time: Some(start_time),
        conditions: Some(conditions),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(
            containers(pod)
                .iter()
                .map(|c| running_container(pod, c, 0, now))
                .collect(),
        ),
        ..PodStatus::default()
    }
}

/// The status of `pod` once its containers (and sidecars) exited with `exit_code`: Succeeded
/// for 0, Failed otherwise.
pub fn exited_status(pod: &Pod, exit_code: i32, now: Timestamp) -> PodStatus {
    let succeeded = exit_code == 0;
    let reason = if succeeded {
        "PodCompleted"
    } else {
        "PodFailed"
    };
    let conditions = [
        ("PodReadyToStartContainers", false),
        ("Initialized", true),
        ("ContainersReady", false),
        ("Ready", false),
        ("PodScheduled", true),
    ]
    .into_iter()
    .map(|(type_, status)| {
        let reason = (type_ != "PodScheduled").then_some(reason);
        condition(pod, type_, status, reason, now)
    })
    .collect();
    let init_statuses: Vec<ContainerStatus> = init_containers(pod)
        .iter()
        .map(|container| {
            if is_sidecar(container) {
                // Sidecars are stopped once the main containers are done.
                exited_container(pod, container, 0, now)
            } else {
                completed_init_container(pod, container, now)
            }
        })
        .collect();
    PodStatus {
        phase: Some(if succeeded { "Succeeded" } else { "Failed" }.into()),
        conditions: Some(conditions),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(
            containers(pod)
                .iter()
                .map(|c| exited_container(pod, c, exit_code, now))
                .collect(),
        ),
        ..PodStatus::default()
    }
}

/// The status of `pod` after its containers failed with `exit_code` and were restarted in
/// place (restartPolicy OnFailure): the restart counted, the failure kept as `lastState`.
pub fn restarted_status(pod: &Pod, exit_code: i32, now: Timestamp) -> PodStatus {
    let statuses = containers(pod)
        .iter()
        .map(|container| {
            let exited = exited_container(pod, container, exit_code, now);
            let restarts = exited.restart_count.saturating_add(1);
            ContainerStatus {
                last_state: exited.state,
                ..running_container(pod, container, restarts, now)
            }
        })
        .collect();
    PodStatus {
        container_statuses: Some(statuses),
        ..PodStatus::default()
    }
}

/// The status of a pod the node refuses to run (as the kubelet's admission does).
pub fn rejected_status(reason: &str, message: &str) -> PodStatus {
    PodStatus {
        phase: Some("Failed".into()),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..PodStatus::default()
    }
}

fn containers(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().map_or(&[], |s| s.containers.as_slice())
}

fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[])
}

/// An init container that keeps running beside the main ones (a native sidecar).
fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or_default()
}

/// The container's status as last reported, if any.
fn previous_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|s| s.name == name)
}

/// The condition `type_`, its transition time kept from the pod's own if the status is the same.
fn condition(
    pod: &Pod,
    type_: &str,
    status: bool,
    reason: Option<&str>,
    now: Timestamp,
) -> PodCondition {
    let status = if status { "True" } else { "False" };
    let transition = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_ && c.status == status))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(transition),
        ..PodCondition::default()
    }
}

fn base_status(pod: &Pod, container: &Container, restart_count: i32) -> ContainerStatus {
    let image = container.image.clone().unwrap_or_default();
    ContainerStatus {
        name: container.name.clone(),
        image_id: format!("simulated://{image}"),
        image,
        container_id: Some(container_id(uid(pod), &container.name, restart_count)),
        restart_count,
        ..ContainerStatus::default()
    }
}

fn running_container(
    pod: &Pod,
    container: &Container,
    restart_count: i32,
    now: Timestamp,
) -> ContainerStatus {
    ContainerStatus {
        ready: true,
        started: Some(true),
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(now)),
            }),
            ..ContainerState::default()
        }),
        ..base_status(pod, container, restart_count)
    }
}

fn completed_init_container(pod: &Pod, container: &Container, now: Timestamp) -> ContainerStatus {
    ContainerStatus {
        ready: true,
        started: Some(false),
        state: Some(terminated(pod, container, 0, Time(now), now)),
        ..base_status(pod, container, 0)
    }
}

fn exited_container(
    pod: &Pod,
    container: &Container,
    exit_code: i32,
    now: Timestamp,
) -> ContainerStatus {
    let previous = previous_status(pod, &container.name);
    let restart_count = previous.map_or(0, |s| s.restart_count);
    let started_at = previous
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.clone())
        .unwrap_or(Time(now));
    ContainerStatus {
        ready: false,
        started: Some(false),
        last_state: previous.and_then(|s| s.last_state.clone()),
        state: Some(terminated(pod, container, exit_code, started_at, now)),
        ..base_status(pod, container, restart_count)
    }
}

fn terminated(
    pod: &Pod,
    container: &Container,
    exit_code: i32,
    started_at: Time,
    now: Timestamp,
) -> ContainerState {
    let restart_count = previous_status(pod, &container.name).map_or(0, |s| s.restart_count);
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code,
            reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
            started_at: Some(started_at),
            finished_at: Some(Time(now)),
            container_id: Some(container_id(uid(pod), &container.name, restart_count)),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": spec,
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2023-11-14T22:00:00Z"}
            ]},
        }))
        .expect("pod")
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("time")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn json_of(status: &PodStatus) -> Value {
        serde_json::to_value(status).expect("json")
    }

    fn condition_of<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_))
            .unwrap_or(&Value::Null)
    }

    #[test]
    fn a_running_pod_is_ready_with_its_addresses_and_containers() {
        let pod = pod(json!({
            "initContainers": [
                {"name": "setup", "image": "busybox"},
                {"name": "proxy", "image": "envoy", "restartPolicy": "Always"}
            ],
            "containers": [{"name": "app", "image": "nginx:1.27"}, {"name": "log", "image": "fluent"}]
        }));
        let status = json_of(&running_status(
            &pod,
            ip("10.64.0.4"),
            ip("10.128.3.2"),
            at(1_700_000_000),
        ));
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["hostIP"], "10.64.0.4");
        assert_eq!(status["hostIPs"], json!([{"ip": "10.64.0.4"}]));
        assert_eq!(status["podIP"], "10.128.3.2");
        assert_eq!(status["podIPs"], json!([{"ip": "10.128.3.2"}]));
        assert_eq!(status["startTime"], "2023-11-14T22:13:20Z");
        for type_ in [
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "Ready",
            "PodScheduled",
        ] {
            assert_eq!(condition_of(&status, type_)["status"], "True", "{type_}");
        }
        assert_eq!(
            condition_of(&status, "Ready")["lastTransitionTime"],
            "2023-11-14T22:13:20Z"
        );
        // The binding's PodScheduled keeps its time.
        assert_eq!(
            condition_of(&status, "PodScheduled")["lastTransitionTime"],
            "2023-11-14T22:00:00Z"
        );

        let app = &status["containerStatuses"][0];
        assert_eq!(app["name"], "app");
        assert_eq!(app["ready"], true);
        assert_eq!(app["started"], true);
        assert_eq!(app["restartCount"], 0);
        assert_eq!(app["image"], "nginx:1.27");
        assert_eq!(app["imageID"], "simulated://nginx:1.27");
        assert_eq!(app["containerID"], "simulated://u1-app");
        assert_eq!(app["state"]["running"]["startedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(status["containerStatuses"][1]["name"], "log");

        let setup = &status["initContainerStatuses"][0];
        assert_eq!(setup["state"]["terminated"]["reason"], "Completed");
        assert_eq!(setup["state"]["terminated"]["exitCode"], 0);
        assert_eq!(setup["ready"], true);
        let proxy = &status["initContainerStatuses"][1];
        assert!(
            proxy["state"]["running"].is_object(),
            "a sidecar keeps running"
        );
    }

    #[test]
    fn exited_pods_succeed_or_fail_by_exit_code() {
        let mut running = pod(
            json!({"containers": [{"name": "job", "image": "perl"}], "restartPolicy": "Never"}),
        );
        running.status = Some(running_status(
            &running,
            ip("10.64.0.4"),
            ip("10.128.3.2"),
            at(100),
        ));

        let done = json_of(&exited_status(&running, 0, at(102)));
        assert_eq!(done["phase"], "Succeeded");
        let job = &done["containerStatuses"][0];
        assert_eq!(job["ready"], false);
        assert_eq!(job["state"]["terminated"]["exitCode"], 0);
        assert_eq!(job["state"]["terminated"]["reason"], "Completed");
        assert_eq!(
            job["state"]["terminated"]["startedAt"],
            "1970-01-01T00:01:40Z"
        );
        assert_eq!(
            job["state"]["terminated"]["finishedAt"],
            "1970-01-01T00:01:42Z"
        );
        assert_eq!(
            job["state"]["terminated"]["containerID"],
            "simulated://u1-job"
        );
        assert_eq!(condition_of(&done, "Ready")["status"], "False");
        assert_eq!(condition_of(&done, "Ready")["reason"], "PodCompleted");
        assert_eq!(condition_of(&done, "Initialized")["status"], "True");

        let failed = json_of(&exited_status(&running, 3, at(102)));
        assert_eq!(failed["phase"], "Failed");
        assert_eq!(
            failed["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            3
        );
        assert_eq!(
            failed["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Error"
        );
        assert_eq!(condition_of(&failed, "Ready")["reason"], "PodFailed");
    }

    #[test]
    fn an_on_failure_pod_restarts_in_place() {
        let mut running = pod(
            json!({"containers": [{"name": "job", "image": "perl"}], "restartPolicy": "OnFailure"}),
        );
        running.status = Some(running_status(
            &running,
            ip("10.64.0.4"),
            ip("10.128.3.2"),
            at(100),
        ));
        let restarted = json_of(&restarted_status(&running, 1, at(105)));
        assert!(restarted.get("phase").is_none(), "the phase stays Running");
        let job = &restarted["containerStatuses"][0];
        assert_eq!(job["restartCount"], 1);
        assert_eq!(job["containerID"], "simulated://u1-job-1");
        assert_eq!(job["state"]["running"]["startedAt"], "1970-01-01T00:01:45Z");
        assert_eq!(job["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(
            job["lastState"]["terminated"]["containerID"],
            "simulated://u1-job"
        );
    }

    #[test]
    fn a_rejected_pod_fails_with_the_reason() {
        let status = json_of(&rejected_status("OutOfpods", "no room"));
        assert_eq!(
            status,
            json!({"phase": "Failed", "reason": "OutOfpods", "message": "no room"})
        );
    }
}
