//! Kubernetes' defaulting for the built-in kinds: the fields a real API server fills in when a
//! client leaves them out, so controllers, the scheduler and the node agent can rely on them.
//! Applied on every write (as Kubernetes defaults on decode); pure.

use serde_json::{json, Map, Value};

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

fn object_at<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut current = value;
    for key in path {
        let map = current.as_object_mut()?;
        current = map.entry(key.to_string()).or_insert_with(|| json!({}));
    }
    current.as_object_mut()
}

fn each_object(value: Option<&mut Value>, mut f: impl FnMut(&mut Map<String, Value>)) {
    if let Some(Value::Array(items)) = value {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            f(item);
        }
    }
}

/// `IfNotPresent` for pinned tags and digests, `Always` for `:latest` or no tag.
fn pull_policy(image: &str) -> &'static str {
    let name = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else {
        match name.rsplit_once(':') {
            Some((_, "latest")) | None => "Always",
            Some(_) => "IfNotPresent",
        }
    }
}

fn probe_defaults(probe: &mut Map<String, Value>) {
    set_default(probe, "timeoutSeconds", json!(1));
    set_default(probe, "periodSeconds", json!(10));
    set_default(probe, "successThreshold", json!(1));
    set_default(probe, "failureThreshold", json!(3));
    if let Some(Value::Object(http)) = probe.get_mut("httpGet") {
        set_default(http, "path", json!("/"));
        set_default(http, "scheme", json!("HTTP"));
    }
}

fn container_defaults(container: &mut Map<String, Value>) {
    let image = container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    set_default(container, "imagePullPolicy", json!(pull_policy(&image)));
    set_default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    set_default(container, "terminationMessagePolicy", json!("File"));
    set_default(container, "resources", json!({}));
    each_object(container.get_mut("ports"), |port| {
        set_default(port, "protocol", json!("TCP"))
    });
    each_object(container.get_mut("env"), |env| {
        if let Some(Value::Object(field_ref)) =
            env.get_mut("valueFrom").and_then(|v| v.get_mut("fieldRef"))
        {
            set_default(field_ref, "apiVersion", json!("v1"));
        }
    });
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(Value::Object(p)) = container.get_mut(probe) {
            probe_defaults(p);
        }
    }
}

/// Defaults of a pod spec (also inside every workload's pod template).
pub fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        each_object(spec.get_mut(list), container_defaults);
    }
    each_object(spec.get_mut("volumes"), |volume| {
        for source in ["configMap", "secret"] {
            if let Some(Value::Object(s)) = volume.get_mut(source) {
                set_default(s, "defaultMode", json!(420));
            }
        }
        if let Some(Value::Object(hp)) = volume.get_mut("hostPath") {
            set_default(hp, "type", json!(""));
        }
    });
}

fn template(object: &mut Value, path: &[&str]) {
    if let Some(spec) = object
        .pointer_mut(&format!("/{}", path.join("/")))
        .and_then(Value::as_object_mut)
    {
        pod_spec(spec);
    }
}

/// A pod's QoS class, as the API server records it on create: Guaranteed when every container
/// limits cpu and memory and requests what it limits, BestEffort when none requests or limits
/// either, Burstable otherwise. (Quantities are compared as written: `1` and `1000m` differ.)
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["/spec/containers", "/spec/initContainers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for container in containers {
        for resource in ["cpu", "memory"] {
            let limit = container.pointer(&format!("/resources/limits/{resource}"));
            let request = container
                .pointer(&format!("/resources/requests/{resource}"))
                .or(limit);
            any |= limit.is_some() || request.is_some();
            guaranteed &= limit.is_some() && request == limit;
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Applies the defaults of `kind` to `object`. `created` is true for a create (some defaults,
/// such as a new pod's phase, apply only then).
pub fn apply(kind: &str, object: &mut Value, created: bool) {
    match kind {
        "Pod" => {
            if let Some(spec) = object_at(object, &["spec"]) {
                pod_spec(spec);
                set_default(spec, "serviceAccountName", json!("default"));
                if created {
                    // DefaultTolerationSeconds: pods ride out a node's trouble for 5 minutes.
                    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
                    if let Some(list) = tolerations.as_array_mut() {
                        for key in [
                            "node.kubernetes.io/not-ready",
                            "node.kubernetes.io/unreachable",
                        ] {
                            if !list
                                .iter()
                                .any(|t| t.get("key").and_then(Value::as_str) == Some(key))
                            {
                                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                            }
                        }
                    }
                }
            }
            if created {
                let qos = qos_class(object);
                if let Some(status) = object_at(object, &["status"]) {
                    set_default(status, "phase", json!("Pending"));
                    set_default(status, "qosClass", json!(qos));
                }
            }
        }
        "Deployment" => {
            if let Some(spec) = object_at(object, &["spec"]) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
                if let Some(strategy) = strategy.as_object_mut() {
                    set_default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        let rolling = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
                        if let Some(rolling) = rolling.as_object_mut() {
                            set_default(rolling, "maxUnavailable", json!("25%"));
                            set_default(rolling, "maxSurge", json!("25%"));
                        }
                    }
                }
            }
            template(object, &["spec", "template", "spec"]);
        }
        "ReplicaSet" => {
            if let Some(spec) = object_at(object, &["spec"]) {
                set_default(spec, "replicas", json!(1));
            }
            template(object, &["spec", "template", "spec"]);
        }
        "StatefulSet" => {
            if let Some(spec) = object_at(object, &["spec"]) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                set_default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
            }
            template(object, &["spec", "template", "spec"]);
        }
        "DaemonSet" => {
            if let Some(spec) = object_at(object, &["spec"]) {
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
            }
            template(object, &["spec", "template", "spec"]);
        }
        "Job" => {
            if let Some(spec) = object_at(object, &["spec"]) {
                job_spec(spec);
            }
            template(object, &["spec", "template", "spec"]);
        }
        "CronJob" => {
            if let Some(spec) = object_at(object, &["spec"]) {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
            }
            if let Some(job) = object
                .pointer_mut("/spec/jobTemplate/spec")
                .and_then(Value::as_object_mut)
            {
                job_spec(job);
            }
            template(object, &["spec", "jobTemplate", "spec", "template", "spec"]);
        }
        "Service" => {
            if let Some(spec) = object_at(object, &["spec"]) {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                let service_type = spec
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("ClusterIP")
                    .to_string();
                if service_type != "ExternalName" {
                    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                }
                if matches!(service_type.as_str(), "NodePort" | "LoadBalancer") {
                    set_default(spec, "externalTrafficPolicy", json!("Cluster"));
                }
                each_object(spec.get_mut("ports"), |port| {
                    set_default(port, "protocol", json!("TCP"));
                    if let Some(p) = port.get("port").cloned() {
                        set_default(port, "targetPort", p);
                    }
                });
            }
        }
        "Secret" => {
            if let Some(map) = object.as_object_mut() {
                set_default(map, "type", json!("Opaque"));
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(spec) = object_at(object, &["spec"]) {
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        _ => {}
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    let parallelism_given = spec.get("parallelism").is_some_and(|v| !v.is_null());
    let completions_given = spec.get("completions").is_some_and(|v| !v.is_null());
    if !parallelism_given && !completions_given {
        set_default(spec, "completions", json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_kubernetes_defaults() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
             "readinessProbe": {"httpGet": {"port": 80}}},
            {"name": "b", "image": "registry.local/app:1.2"},
            {"name": "c", "image": "app@sha256:abc"}],
            "volumes": [{"name": "cfg", "configMap": {"name": "x"}}]}});
        apply("Pod", &mut pod, true);
        let spec = &pod["spec"];
        assert_eq!(
            (spec["restartPolicy"].as_str(), spec["dnsPolicy"].as_str()),
            (Some("Always"), Some("ClusterFirst"))
        );
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["serviceAccountName"], "default");
        let pull: Vec<&str> = (0..3)
            .filter_map(|i| spec["containers"][i]["imagePullPolicy"].as_str())
            .collect();
        assert_eq!(pull, ["Always", "IfNotPresent", "IfNotPresent"]);
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["containers"][0]["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(
            spec["containers"][0]["readinessProbe"]["httpGet"]["scheme"],
            "HTTP"
        );
        assert_eq!(spec["volumes"][0]["configMap"]["defaultMode"], 420);
        assert_eq!(spec["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(spec["tolerations"][0]["tolerationSeconds"], 300);
        assert_eq!(pod["status"]["phase"], "Pending");
        // Defaulting twice changes nothing more, and explicit values are kept.
        let once = pod.clone();
        apply("Pod", &mut pod, true);
        assert_eq!(pod, once);
        let mut custom = json!({"spec": {"restartPolicy": "Never", "containers": []}});
        apply("Pod", &mut custom, false);
        assert_eq!(custom["spec"]["restartPolicy"], "Never");
        assert!(custom.get("status").is_none());
    }

    #[test]
    fn workloads_and_services_get_kubernetes_defaults() {
        let mut deploy = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        apply("Deployment", &mut deploy, true);
        assert_eq!(deploy["spec"]["replicas"], 1);
        assert_eq!(
            deploy["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(deploy["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(deploy["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(
            deploy["spec"]["template"]["spec"]["restartPolicy"],
            "Always"
        );
        let mut recreate = json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply("Deployment", &mut recreate, true);
        assert!(recreate["spec"]["strategy"].get("rollingUpdate").is_none());

        let mut svc = json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}});
        apply("Service", &mut svc, true);
        assert_eq!(
            (
                svc["spec"]["type"].as_str(),
                svc["spec"]["sessionAffinity"].as_str()
            ),
            (Some("ClusterIP"), Some("None"))
        );
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(svc["spec"]["ports"][1]["targetPort"], "dns");

        let mut job =
            json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}});
        apply("Job", &mut job, true);
        assert_eq!(
            (
                job["spec"]["completions"].as_i64(),
                job["spec"]["parallelism"].as_i64(),
                job["spec"]["backoffLimit"].as_i64()
            ),
            (Some(1), Some(1), Some(6))
        );
        let mut parallel = json!({"spec": {"parallelism": 3}});
        apply("Job", &mut parallel, true);
        assert!(
            parallel["spec"].get("completions").is_none(),
            "a work queue job has no completion count"
        );
    }

    #[test]
    fn pods_get_their_qos_class() {
        let pod = |resources: Value| {
            let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]}});
            apply("Pod", &mut pod, true);
            pod["status"]["qosClass"].clone()
        };
        assert_eq!(pod(json!({})), "BestEffort");
        assert_eq!(pod(json!({"requests": {"cpu": "100m"}})), "Burstable");
        assert_eq!(
            pod(json!({"limits": {"cpu": "1", "memory": "1Gi"}})),
            "Guaranteed",
            "requests default to limits"
        );
        assert_eq!(
            pod(json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}})),
            "Burstable"
        );
    }
}
