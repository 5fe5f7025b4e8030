//! The node part of `shoal server` and `shoal agent`: flags into an
//! [`AgentConfig`](shoal_agent::node_agent::AgentConfig), and `shoal images`.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::Path;

use anyhow::{Context, Result};
use shoal_agent::node_agent::AgentConfig;
use shoal_common::Cidr;

use crate::cli::{ImagesCommand, NodeArgs};

/// The address of the interface the default route leaves by (no packet is sent).
pub fn default_node_ip() -> IpAddr {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// This machine's host name, lower-cased (Kubernetes' default node name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What the node learns from the cluster it joins.
#[derive(Debug, Clone, Copy)]
pub struct ClusterFacts<'a> {
    pub cluster_dns: IpAddr,
    pub cluster_domain: &'a str,
    /// The Service ranges (`--service-cidr`, one per family).
    pub service_cidrs: &'a [Cidr],
    /// The `kubernetes` Service's ClusterIP.
    pub kubernetes_service: IpAddr,
    /// The cluster CA (PEM).
    pub ca_pem: &'a str,
    /// The pod network (`--cluster-cidr`).
    pub cluster_cidrs: &'a [shoal_common::Cidr],
}

/// The agent's configuration from flags.
pub fn agent_config(
    args: &NodeArgs,
    data_dir: &Path,
    node_name: &str,
    server: bool,
    cluster: ClusterFacts<'_>,
) -> Result<AgentConfig> {
    let ClusterFacts {
        cluster_dns,
        cluster_domain,
        service_cidrs,
        kubernetes_service,
        ca_pem: client_ca_pem,
        cluster_cidrs,
    } = cluster;
    let mut taints = Vec::new();
    for text in &args.node_taints {
        taints.push(
            shoal_agent::simulated::parse_taint(text)
                .map_err(|e| anyhow::anyhow!("--node-taint {text:?}: {e}"))?,
        );
    }
    Ok(AgentConfig {
        data_dir: data_dir.to_path_buf(),
        node_name: node_name.to_string(),
        node_ip: args.node_ip.unwrap_or_else(default_node_ip),
        node_labels: args.node_labels.iter().cloned().collect(),
        node_taints: taints,
        server,
        container_runtime_endpoint: args.container_runtime_endpoint.clone(),
        private_registry: args.private_registry.clone(),
        cluster_dns,
        cluster_domain: cluster_domain.to_string(),
        service_cidrs: service_cidrs.to_vec(),
        kubernetes_service,
        kubelet_port: args.kubelet_port,
        eviction: args.eviction_hard,
        client_ca_pem: client_ca_pem.to_string(),
        log_limits: shoal_agent::kubelet::log_rotation::LogLimits {
            max_size: args.container_log_max_size,
            max_files: usize::from(args.container_log_max_files),
        },
        cluster_cidrs: cluster_cidrs.to_vec(),
        proxy_socket_lb: args.proxy_socket_lb,
        pod_cgroup_parent: args.pod_cgroup_parent.clone(),
    })
}

/// `shoal kubectl ARGS…`: the system's kubectl, pointed at this machine's cluster unless
/// `KUBECONFIG` says otherwise; exits with kubectl's code.
pub fn kubectl(data_dir: &Path, args: &[std::ffi::OsString]) -> std::process::ExitCode {
    let mut command = std::process::Command::new("kubectl");
    command.args(args);
    if std::env::var_os("KUBECONFIG").is_none() {
        let kubeconfig = data_dir.join("kubeconfig.yaml");
        if !kubeconfig.exists() {
            eprintln!(
                "shoal: no kubeconfig at {} (is a server running with --data-dir {}? or set KUBECONFIG)",
                kubeconfig.display(),
                data_dir.display()
            );
            return std::process::ExitCode::from(1);
        }
        command.env("KUBECONFIG", kubeconfig);
    }
    match command.status() {
        Ok(status) => std::process::ExitCode::from(
            status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1),
        ),
        Err(err) => {
            eprintln!("shoal: cannot run kubectl ({err}); install kubectl and put it on PATH");
            std::process::ExitCode::from(127)
        }
    }
}

/// `shoal images import|list`.
pub async fn images(command: ImagesCommand) -> Result<()> {
    let socket = |data_dir: &Path| {
        data_dir
            .join("agent")
            .join("containerd")
            .join("containerd.sock")
    };
    match command {
        ImagesCommand::Import { data_dir, files } => {
            let socket = socket(&data_dir);
            for file in files {
                shoal_agent::images::import(&socket, &file)
                    .await
                    .with_context(|| {
                        format!(
                            "is the agent running with --data-dir {}?",
                            data_dir.display()
                        )
                    })?;
                println!("imported {}", file.display());
            }
        }
        ImagesCommand::List { data_dir } => {
            let cri = shoal_agent::cri::Cri::connect(&socket(&data_dir))?;
            let images = cri.list_images().await.with_context(|| {
                format!(
                    "is the agent running with --data-dir {}?",
                    data_dir.display()
                )
            })?;
            println!("{:<60} {:<20} {:>10}", "IMAGE", "ID", "SIZE");
            for image in images {
                let id: String = image
                    .id
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(13)
                    .collect();
                for tag in image.repo_tags.iter().chain(
                    image
                        .repo_digests
                        .iter()
                        .take(usize::from(image.repo_tags.is_empty())),
                ) {
                    println!("{tag:<60} {id:<20} {:>10}", human_size(image.size));
                }
            }
        }
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}
