//! Pod specs turned into CRI configurations: the sandbox (namespaces, hostname, DNS, host
//! ports, log directory) and each container (command, args, env, mounts, resources as cgroup
//! limits, security context, log path, the labels the kubelet finds it by). Pure.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};
use shoal_common::quantity::ParsedQuantity;

use crate::cri::v1;
use crate::kubelet::plan::container_hash;
use crate::kubelet::runtime::{
    ANNOTATION_GRACE, ANNOTATION_HASH, ANNOTATION_RESTART_COUNT, LABEL_CONTAINER_NAME,
    LABEL_MANAGED, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID,
};

/// Node-wide settings the configurations need.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Where pods' logs go: `<logs>/<namespace>_<name>_<uid>/<container>/<n>.log`.
    pub log_root: std::path::PathBuf,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// The node's resolv.conf search domains and servers, for `dnsPolicy: Default`.
    pub host_dns_servers: Vec<String>,
    pub host_dns_searches: Vec<String>,
    /// The cgroup (path from a hierarchy's root) every pod's containers go under, as
    /// `<parent>/<container id>` (the cgroupfs driver's layout): this node's pods only.
    pub cgroup_parent: String,
}

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(
        LABEL_POD_NAME.into(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(
        LABEL_POD_NAMESPACE.into(),
        pod.metadata.namespace.clone().unwrap_or_default(),
    );
    labels.insert(
        LABEL_POD_UID.into(),
        pod.metadata.uid.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels
}

/// The pod's log directory.
pub fn log_directory(pod: &Pod, settings: &SandboxSettings) -> std::path::PathBuf {
    settings.log_root.join(format!(
        "{}_{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    ))
}

/// The container's log path relative to the pod's log directory.
pub fn log_path(container: &str, restart_count: i32) -> String {
    format!("{container}/{restart_count}.log")
}

fn dns_config(pod: &Pod, settings: &SandboxSettings) -> Option<v1::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let domain = &settings.cluster_domain;
    let cluster = || v1::DnsConfig {
        servers: settings.cluster_dns.clone(),
        searches: vec![
            format!("{ns}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ],
        options: vec!["ndots:5".into()],
    };
    let host = || v1::DnsConfig {
        servers: settings.host_dns_servers.clone(),
        searches: settings.host_dns_searches.clone(),
        options: vec![],
    };
    let mut config = match policy {
        "None" => v1::DnsConfig::default(),
        "Default" => host(),
        "ClusterFirstWithHostNet" => cluster(),
        _ if host_network => host(),
        _ if settings.cluster_dns.is_empty() => host(),
        _ => cluster(),
    };
    if let Some(extra) = &spec.dns_config {
        config
            .servers
            .extend(extra.nameservers.iter().flatten().cloned());
        config
            .searches
            .extend(extra.searches.iter().flatten().cloned());
        for option in extra.options.iter().flatten() {
            let text = match &option.value {
                Some(v) => format!("{}:{v}", option.name.as_deref().unwrap_or_default()),
                None => option.name.clone().unwrap_or_default(),
            };
            config
                .options
                .retain(|o| o.split(':').next() != option.name.as_deref());
            config.options.push(text);
        }
    }
    Some(config)
}

/// The sandbox configuration of `pod`.
pub fn sandbox_config(pod: &Pod, attempt: u32, settings: &SandboxSettings) -> v1::PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let hostname = if host_network {
        String::new()
    } else {
        spec.hostname
            .clone()
            .unwrap_or_else(|| name.chars().take(63).collect())
    };
    let mode = |host: Option<bool>| if host.unwrap_or(false) { v1::NamespaceMode::Node } else { v1::NamespaceMode::Pod } as i32;
    let pid = if spec.host_pid.unwrap_or(false) {
        v1::NamespaceMode::Node
    } else if spec.share_process_namespace.unwrap_or(false) {
        v1::NamespaceMode::Pod
    } else {
        v1::NamespaceMode::Container
    } as i32;
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| v1::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => v1::Protocol::Udp,
                Some("SCTP") => v1::Protocol::Sctp,
                _ => v1::Protocol::Tcp,
            } as i32,
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or_default(),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let privileged = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        });
    let pod_security = spec.security_context.clone().unwrap_or_default();
    let mut annotations: HashMap<String, String> = pod
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    annotations.insert(
        ANNOTATION_GRACE.into(),
        spec.termination_grace_period_seconds
            .unwrap_or(30)
            .to_string(),
    );
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname,
        log_directory: log_directory(pod, settings).display().to_string(),
        dns_config: dns_config(pod, settings),
        port_mappings,
        labels: pod_labels(pod),
        annotations,
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: settings.cgroup_parent.clone(),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    network: mode(spec.host_network),
                    pid,
                    ipc: mode(spec.host_ipc),
                    ..v1::NamespaceOption::default()
                }),
                run_as_user: pod_security
                    .run_as_user
                    .map(|value| v1::Int64Value { value }),
                run_as_group: pod_security
                    .run_as_group
                    .map(|value| v1::Int64Value { value }),
                supplemental_groups: pod_security.supplemental_groups.clone().unwrap_or_default(),
                privileged,
                ..v1::LinuxSandboxSecurityContext::default()
            }),
            sysctls: pod_security
                .sysctls
                .iter()
                .flatten()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect(),
            ..v1::LinuxPodSandboxConfig::default()
        }),
        windows: None,
    }
}

fn milli(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<i64> {
    q.and_then(|q| ParsedQuantity::parse(&q.0).ok())
        .and_then(|p| p.milli_value())
}

fn bytes(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<i64> {
    q.and_then(|q| ParsedQuantity::parse(&q.0).ok())
        .and_then(|p| p.value())
}

/// CPU and memory requests and limits as cgroup settings, as the kubelet computes them.
pub fn resources(container: &Container) -> v1::LinuxContainerResources {
    let r = container.resources.clone().unwrap_or_default();
    let limits = r.limits.unwrap_or_default();
    let requests = r.requests.unwrap_or_default();
    let cpu_request = milli(requests.get("cpu")).or(milli(limits.get("cpu")));
    let cpu_limit = milli(limits.get("cpu"));
    const PERIOD: i64 = 100_000;
    v1::LinuxContainerResources {
        cpu_shares: cpu_request.map_or(2, |m| (m * 1024 / 1000).max(2)),
        cpu_period: if cpu_limit.is_some() { PERIOD } else { 0 },
        cpu_quota: cpu_limit.map_or(0, |m| (m * PERIOD / 1000).max(1000)),
        memory_limit_in_bytes: bytes(limits.get("memory")).unwrap_or(0),
        ..v1::LinuxContainerResources::default()
    }
}

/// The `oom_score_adj` the kubelet gives a container (pkg/kubelet/qos/policy.go): critical
/// and Guaranteed pods -997, BestEffort 1000, Burstable between 3 and 999 by the share of the
/// node's memory the container requests. (Where the agent may not lower scores, containerd's
/// `restrict_oom_score_adj` raises negative values to its own.)
pub fn oom_score_adj(pod: &Pod, container: &Container, memory_capacity: u64) -> i64 {
    const GUARANTEED: i64 = -997;
    const BEST_EFFORT: i64 = 1000;
    const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.priority).unwrap_or(0) >= SYSTEM_CRITICAL_PRIORITY {
        return GUARANTEED;
    }
    let qos = pod
        .status
        .as_ref()
        .and_then(|s| s.qos_class.as_deref())
        .unwrap_or("BestEffort");
    match qos {
        "Guaranteed" => GUARANTEED,
        "BestEffort" => BEST_EFFORT,
        _ => {
            let request = container
                .resources
                .as_ref()
                .and_then(|r| bytes(r.requests.as_ref()?.get("memory")))
                .unwrap_or(0)
                .max(0);
            let capacity = i64::try_from(memory_capacity).unwrap_or(i64::MAX).max(1);
            let adj = 1000 - (1000i128 * i128::from(request) / i128::from(capacity)) as i64;
            if adj < 1000 + GUARANTEED {
                1000 + GUARANTEED
            } else if adj == BEST_EFFORT {
                adj - 1
            } else {
                adj
            }
        }
    }
}

fn security(container: &Container, pod: &PodSecurityContext) -> v1::LinuxContainerSecurityContext {
    let sc: SecurityContext = container.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    v1::LinuxContainerSecurityContext {
        capabilities: Some(v1::Capability {
            add_capabilities: caps.add.unwrap_or_default(),
            drop_capabilities: caps.drop.unwrap_or_default(),
            ..v1::Capability::default()
        }),
        privileged: sc.privileged.unwrap_or(false),
        run_as_user: sc
            .run_as_user
            .or(pod.run_as_user)
            .map(|value| v1::Int64Value { value }),
        run_as_group: sc
            .run_as_group
            .or(pod.run_as_group)
            .map(|value| v1::Int64Value { value }),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: pod.supplemental_groups.clone().unwrap_or_default(),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        ..v1::LinuxContainerSecurityContext::default()
    }
}

/// The configuration of one container instance on a node with `memory_capacity` bytes.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    restart_count: i32,
    env: Vec<(String, String)>,
    mounts: Vec<v1::Mount>,
    memory_capacity: u64,
) -> v1::ContainerConfig {
    let known: std::collections::BTreeMap<&str, &str> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter()
            .flatten()
            .map(|s| crate::kubelet::env::expand(s, &known))
            .collect()
    };
    let mut labels = pod_labels(pod);
    labels.retain(|k, _| k.starts_with("io.kubernetes.") || k == LABEL_MANAGED);
    labels.insert(LABEL_CONTAINER_NAME.into(), container.name.clone());
    let annotations: HashMap<String, String> = [
        (
            ANNOTATION_RESTART_COUNT.to_string(),
            restart_count.to_string(),
        ),
        (ANNOTATION_HASH.to_string(), container_hash(container)),
        (
            "io.kubernetes.container.terminationMessagePath".to_string(),
            container
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
        ),
    ]
    .into();
    let pod_security = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: container.name.clone(),
            attempt: u32::try_from(restart_count).unwrap_or(0),
        }),
        image: Some(v1::ImageSpec {
            image: container.image.clone().unwrap_or_default(),
            ..v1::ImageSpec::default()
        }),
        command: expand(&container.command),
        args: expand(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env
            .into_iter()
            .map(|(key, value)| v1::KeyValue { key, value })
            .collect(),
        mounts,
        log_path: log_path(&container.name, restart_count),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        labels,
        annotations,
        linux: Some(v1::LinuxContainerConfig {
            resources: Some(v1::LinuxContainerResources {
                oom_score_adj: oom_score_adj(pod, container, memory_capacity),
                ..resources(container)
            }),
            security_context: Some(security(container, &pod_security)),
        }),
        ..v1::ContainerConfig::default()
    }
}

/// Reads the node's resolv.conf (servers and search domains) for `dnsPolicy: Default`.
pub fn host_resolv_conf(text: &str) -> (Vec<String>, Vec<String>) {
    let mut servers = Vec::new();
    let mut searches = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(str::to_string)),
            Some("search") | Some("domain") => searches = words.map(str::to_string).collect(),
            _ => {}
        }
    }
    (servers, searches)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> SandboxSettings {
        SandboxSettings {
            log_root: "/var/log/pods".into(),
            cluster_dns: vec!["10.43.0.10".into()],
            cluster_domain: "cluster.local".into(),
            host_dns_servers: vec!["1.1.1.1".into()],
            host_dns_searches: vec![],
            cgroup_parent: "/shoal/n1".into(),
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}}, "spec": spec})).unwrap()
    }

    #[test]
    fn sandbox_gets_cluster_dns_and_namespaces() {
        let p = pod(
            json!({"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        let config = sandbox_config(&p, 1, &settings());
        let dns = config.dns_config.unwrap();
        assert_eq!(dns.servers, vec!["10.43.0.10"]);
        assert_eq!(
            dns.searches,
            vec![
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(dns.options, vec!["ndots:5"]);
        assert_eq!(config.hostname, "web");
        assert_eq!(config.log_directory, "/var/log/pods/shop_web_u1");
        assert_eq!(config.port_mappings[0].host_port, 8080);
        assert_eq!(config.labels[LABEL_POD_UID], "u1");
        let linux = config.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/shoal/n1");
        let ns = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.network, v1::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, v1::NamespaceMode::Container as i32);
    }

    #[test]
    fn host_network_pods_use_the_node_resolver() {
        let p = pod(json!({"hostNetwork": true, "containers": [{"name": "c", "image": "i"}]}));
        let config = sandbox_config(&p, 0, &settings());
        assert_eq!(config.dns_config.unwrap().servers, vec!["1.1.1.1"]);
        assert_eq!(
            config
                .linux
                .unwrap()
                .security_context
                .unwrap()
                .namespace_options
                .unwrap()
                .network,
            v1::NamespaceMode::Node as i32
        );
    }

    #[test]
    fn limits_become_cgroup_settings() {
        let c: Container = serde_json::from_value(json!({"name": "c", "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}}})).unwrap();
        let r = resources(&c);
        assert_eq!(
            (
                r.cpu_shares,
                r.cpu_quota,
                r.cpu_period,
                r.memory_limit_in_bytes
            ),
            (256, 50_000, 100_000, 64 << 20)
        );
        let none: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        assert_eq!(resources(&none).cpu_shares, 2);
    }

    #[test]
    fn commands_expand_env_references() {
        let p = pod(
            json!({"containers": [{"name": "c", "image": "i", "command": ["echo", "$(GREETING)"], "args": ["$$(x)"]}]}),
        );
        let container = &p.spec.as_ref().unwrap().containers[0];
        let config = container_config(
            &p,
            container,
            3,
            vec![("GREETING".into(), "hi".into())],
            vec![],
            8 << 30,
        );
        assert_eq!(config.command, vec!["echo", "hi"]);
        assert_eq!(config.args, vec!["$(x)"]);
        assert_eq!(config.log_path, "c/3.log");
        assert_eq!(config.annotations[ANNOTATION_RESTART_COUNT], "3");
        assert_eq!(config.metadata.unwrap().attempt, 3);
    }

    #[test]
    fn oom_score_adj_follows_the_kubelets_qos_policy() {
        let with = |qos: &str, priority: i32, request: Option<&str>| {
            let mut resources = json!({});
            if let Some(r) = request {
                resources = json!({"requests": {"memory": r}});
            }
            let p: Pod = serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "d", "uid": "u"},
                "spec": {"priority": priority, "containers": [{"name": "c", "resources": resources}]},
                "status": {"qosClass": qos},
            }))
            .unwrap();
            let c = p.spec.as_ref().unwrap().containers[0].clone();
            oom_score_adj(&p, &c, 8 << 30)
        };
        assert_eq!(with("Guaranteed", 0, Some("1Gi")), -997);
        assert_eq!(with("BestEffort", 0, None), 1000);
        assert_eq!(
            with("BestEffort", 2_000_001_000, None),
            -997,
            "node-critical"
        );
        assert_eq!(with("Burstable", 0, Some("2Gi")), 750);
        assert_eq!(
            with("Burstable", 0, Some("8Gi")),
            3,
            "never below a Guaranteed pod's"
        );
        assert_eq!(with("Burstable", 0, None), 999, "never a BestEffort pod's");
        let config = container_config(
            &pod(json!({"containers": [{"name": "c", "image": "i"}]})),
            &serde_json::from_value(json!({"name": "c"})).unwrap(),
            0,
            vec![],
            vec![],
            8 << 30,
        );
        assert_eq!(config.linux.unwrap().resources.unwrap().oom_score_adj, 1000);
    }

    #[test]
    fn resolv_conf_is_read() {
        let (servers, searches) = host_resolv_conf(
            "# x\nnameserver 9.9.9.9\nsearch a.example b.example\nnameserver 8.8.8.8\n",
        );
        assert_eq!(servers, vec!["9.9.9.9", "8.8.8.8"]);
        assert_eq!(searches, vec!["a.example", "b.example"]);
    }
}
