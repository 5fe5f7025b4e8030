//! Bringing a node up, in order: directories and the CNI plugin link, registries, containerd
//! (our own, supervised, unless an endpoint is given), the CRI connection, the air-gap folder,
//! then the kubelet; the pause image is built and imported meanwhile (sandboxes wait for it,
//! registration does not). The pod network's configuration is written once the
//! server has given the node its pod subnet; until then the node reports NotReady with
//! Kubernetes' "network not ready" reason.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::Api;
use shoal_common::Cidr;
use tokio::sync::watch;

use crate::containerd::{ContainerdError, ContainerdSettings, Supervisor};
use crate::cri::{Cri, CriError};
use crate::images::{self, ImageError};
use crate::kubelet::containers::{host_resolv_conf, SandboxSettings};
use crate::kubelet::node::NodeSettings;
use crate::kubelet::{self, KubeletError, KubeletSettings};
use crate::registries::{Registries, RegistriesError};

/// How the node is configured (from `shoal agent`/`shoal server` flags).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub node_name: String,
    pub node_ip: IpAddr,
    pub node_labels: BTreeMap<String, String>,
    pub node_taints: Vec<Taint>,
    /// Whether this node is also a server.
    pub server: bool,
    /// An existing CRI socket to use instead of starting containerd.
    pub container_runtime_endpoint: Option<PathBuf>,
    /// k3s-format registries.yaml.
    pub private_registry: PathBuf,
    pub cluster_dns: IpAddr,
    pub cluster_domain: String,
    /// The Service ranges, one per family (the cluster DNS answers their reverse names).
    pub service_cidrs: Vec<Cidr>,
    /// The `kubernetes` Service's address, for containers' `KUBERNETES_SERVICE_HOST`.
    pub kubernetes_service: IpAddr,
    /// The node API's port (0: any free one).
    pub kubelet_port: u16,
    /// When pressure conditions turn True.
    pub eviction: crate::kubelet::node::Thresholds,
    /// The cluster CA certificate (PEM), which the API server's client certificate chains to.
    pub client_ca_pem: String,
    /// When container logs rotate (`--container-log-max-size`, `--container-log-max-files`).
    pub log_limits: crate::kubelet::log_rotation::LogLimits,
    /// The whole pod network (`--cluster-cidr`): pod traffic leaving it is masqueraded.
    pub cluster_cidrs: Vec<Cidr>,
    /// Translate pods' TCP ClusterIP connects at the socket (`--proxy-socket-lb`).
    pub proxy_socket_lb: bool,
    /// The cgroup this node's pods go under (and the socket LB attaches to); `None`:
    /// `/shoal/<node name>`.
    pub pod_cgroup_parent: Option<String>,
}

/// What stops a node from coming up.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Registries(#[from] RegistriesError),
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The name containerd's CRI plugin runs our CNI plugin by (a link to this binary).
pub const CNI_PLUGIN_NAME: &str = "shoal-cni";

/// Runs the node until `shutdown`.
pub async fn run(
    config: AgentConfig,
    client: kube::Client,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let agent_dir = config.data_dir.join("agent");
    std::fs::create_dir_all(&agent_dir).map_err(io(&agent_dir))?;
    let pause = images::pause_image_name();
    let containerd = ContainerdSettings::under(&agent_dir, &pause);
    let registries = Registries::load(&config.private_registry)?;

    let socket = match &config.container_runtime_endpoint {
        Some(endpoint) => endpoint.clone(),
        None => {
            containerd.write()?;
            registries.write_hosts(&containerd.registry_config_dir)?;
            link_cni_plugin(&containerd.cni_bin_dir)?;
            let supervise = Supervisor::new(containerd.clone())
                .start(shutdown.clone())
                .await?;
            tokio::spawn(supervise);
            containerd.socket()
        }
    };
    let cri = Cri::connect(&socket)?;
    cri.wait_ready(Duration::from_secs(60)).await?;
    // Building and importing the pause image takes seconds on a fresh node; the node
    // registers and sets up its network meanwhile, and only sandboxes wait for it.
    let (image_ready, sandbox_image_ready) = watch::channel(false);
    let mut pause_image = {
        let (cri, agent_dir) = (cri.clone(), agent_dir.clone());
        tokio::spawn(async move {
            let name = images::ensure_pause_image(&cri, &agent_dir).await?;
            tracing::info!(image = %name, "pause image ready");
            image_ready.send_replace(true);
            // Kept open so sandboxes never take a closed channel for a failure.
            Ok::<_, ImageError>(image_ready)
        })
    };
    let airgap = agent_dir.join("images");
    std::fs::create_dir_all(&airgap).map_err(io(&airgap))?;
    tokio::spawn(images::watch_airgap_folder(
        cri.clone(),
        airgap,
        Duration::from_secs(10),
    ));

    let network_ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(configure_network(
        client.clone(),
        cri.clone(),
        containerd.cni_conf_dir.clone(),
        agent_dir.join("cni").join("ipam"),
        Arc::clone(&network_ready),
        crate::overlay::OverlaySettings {
            node_name: config.node_name.clone(),
            node_ip: config.node_ip,
            cluster_cidrs: config.cluster_cidrs.clone(),
        },
        shutdown.clone(),
    ));

    // The node's pods share a cgroup of their own (the socket LB attaches there).
    let pod_cgroup_parent = config
        .pod_cgroup_parent
        .clone()
        .unwrap_or_else(|| shoal_net::proxy::sock_lb::cgroup::pod_cgroup_parent(&config.node_name));

    // --- Service proxy (nftables): ClusterIP, NodePort, external and load-balancer addresses.
    {
        let mut proxy = shoal_net::proxy::ProxyConfig::new(config.node_name.clone());
        proxy.table.pod_bridge = Some(shoal_net::cni::config::DEFAULT_BRIDGE.to_string());
        // ClusterIP traffic from outside the pod network is masqueraded (kube-proxy's
        // --cluster-cidr), so replies come back through this node.
        proxy.table.cluster_cidr = config.cluster_cidrs.iter().find_map(|c| match c.addr() {
            IpAddr::V4(v4) => Some((v4, c.prefix())),
            IpAddr::V6(_) => None,
        });
        proxy.table.cluster_cidr6 = config.cluster_cidrs.iter().find_map(|c| match c.addr() {
            IpAddr::V6(v6) => Some((v6, c.prefix())),
            IpAddr::V4(_) => None,
        });
        // The cluster DNS address (either family) is answered on the node itself, not
        // through a Service.
        proxy.node_local_ips.insert(config.cluster_dns);
        if config.proxy_socket_lb {
            use shoal_net::proxy::sock_lb::cgroup;
            match cgroup::cgroup2_mount() {
                Ok(mount) => {
                    proxy.socket_lb = Some(cgroup::v2_dir(&mount, &pod_cgroup_parent));
                }
                Err(err) => tracing::warn!(%err, "no socket LB: no cgroup v2 hierarchy"),
            }
        }
        tokio::spawn(shoal_net::proxy::run(
            client.clone(),
            proxy,
            shutdown.clone(),
        ));
    }
    // --- end Service proxy.

    let (host_dns_servers, host_dns_searches) =
        host_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let ready_flag = Arc::clone(&network_ready);
    let settings = KubeletSettings {
        node: NodeSettings {
            name: config.node_name.clone(),
            ip: config.node_ip,
            labels: config.node_labels.clone(),
            taints: config.node_taints.clone(),
            server: config.server,
            runtime_version: String::new(),
            eviction: config.eviction,
            kubelet_port: config.kubelet_port,
        },
        agent_dir: agent_dir.clone(),
        sandbox: SandboxSettings {
            log_root: agent_dir.join("logs").join("pods"),
            cluster_dns: vec![config.cluster_dns.to_string()],
            cluster_domain: config.cluster_domain.clone(),
            host_dns_servers,
            host_dns_searches,
            cgroup_parent: pod_cgroup_parent.clone(),
        },
        service_env: vec![
            (
                "KUBERNETES_SERVICE_HOST".into(),
                config.kubernetes_service.to_string(),
            ),
            ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), "443".into()),
            (
                "KUBERNETES_PORT".into(),
                format!("tcp://{}:443", config.kubernetes_service),
            ),
            (
                "KUBERNETES_PORT_443_TCP".into(),
                format!("tcp://{}:443", config.kubernetes_service),
            ),
            ("KUBERNETES_PORT_443_TCP_PROTO".into(), "tcp".into()),
            ("KUBERNETES_PORT_443_TCP_PORT".into(), "443".into()),
            (
                "KUBERNETES_PORT_443_TCP_ADDR".into(),
                config.kubernetes_service.to_string(),
            ),
        ],
        registries,
        kubelet_port: config.kubelet_port,
        client_ca_pem: config.client_ca_pem.clone(),
        log_limits: config.log_limits,
        sandbox_image_ready,
        pod_networks: config.cluster_cidrs.clone(),
        network_ready: Arc::new(move || {
            if ready_flag.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized".into())
            }
        }),
    };
    // --- cluster DNS (shoal_net::dns): the cluster DNS address on `shoal-dns`, port 53 ---
    let cluster_dns = {
        let settings = shoal_net::dns::DnsSettings {
            listen: std::net::SocketAddr::new(config.cluster_dns, 53),
            zone: shoal_net::dns::ZoneConfig {
                domain: config.cluster_domain.clone(),
                dns_ip: config.cluster_dns,
                reverse_cidrs: config
                    .service_cidrs
                    .iter()
                    .chain(&config.cluster_cidrs)
                    .copied()
                    .collect(),
                ttl: shoal_net::dns::records::DEFAULT_TTL,
            },
            upstreams: shoal_net::dns::forward::upstreams_from_resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                &[config.cluster_dns],
            ),
            interface: Some(shoal_net::dns::iface::INTERFACE.to_string()),
        };
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(err) = shoal_net::dns::run(client, settings, shutdown).await {
                tracing::error!(error = %err, "cluster DNS stopped");
            }
        })
    };
    // --- end cluster DNS ---

    let kubelet = kubelet::run(client, cri, settings, shutdown);
    tokio::pin!(kubelet);
    // Held until the kubelet ends, so the sandboxes' "image ready" channel stays open.
    let mut image_sender = None;
    loop {
        tokio::select! {
            ended = &mut kubelet => {
                ended?;
                break;
            }
            built = &mut pause_image, if image_sender.is_none() => match built {
                Ok(Ok(sender)) => image_sender = Some(sender),
                // As before the image was built concurrently: a node that cannot make
                // sandboxes stops with the reason.
                Ok(Err(err)) => return Err(err.into()),
                Err(err) => return Err(ImageError::Build(std::io::Error::other(err)).into()),
            },
        }
    }
    // The DNS service takes its interface down on the way out.
    let _ = tokio::time::timeout(Duration::from_secs(3), cluster_dns).await;
    Ok(())
}

/// Links `<cni bin dir>/shoal-cni` and `loopback` (the plugin containerd runs for every pod) to
/// this executable.
fn link_cni_plugin(bin_dir: &Path) -> Result<(), AgentError> {
    let exe = std::env::current_exe().map_err(io(bin_dir))?;
    for name in [CNI_PLUGIN_NAME, shoal_net::cni::loopback::LOOPBACK_PLUGIN] {
        let link = bin_dir.join(name);
        if std::fs::read_link(&link).ok().as_deref() == Some(exe.as_path()) {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&exe, &link).map_err(io(&link))?;
    }
    Ok(())
}

/// Waits for the node's pod subnets (one per family of a dual-stack cluster), brings the
/// overlay to the other nodes up (its MTU is the pods'), releases addresses of sandboxes that
/// no longer exist, and writes the network configuration containerd's CRI plugin loads.
async fn configure_network(
    client: kube::Client,
    cri: Cri,
    conf_dir: PathBuf,
    ipam_dir: PathBuf,
    ready: Arc<AtomicBool>,
    overlay: crate::overlay::OverlaySettings,
    shutdown: watch::Receiver<bool>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let pod_cidrs = |node: Option<&Node>| {
        let spec = node.and_then(|n| n.spec.as_ref());
        let cidrs = node_pod_cidrs(
            spec.and_then(|s| s.pod_cidr.as_deref()),
            spec.and_then(|s| s.pod_cidrs.as_deref()),
        );
        (!cidrs.is_empty()).then_some(cidrs)
    };
    // Watched rather than polled: the node IPAM controller assigns it moments after the Node
    // is registered, and the node is NotReady until then.
    let subnets = loop {
        let assigned = kube::runtime::wait::await_condition(
            nodes.clone(),
            &overlay.node_name,
            move |node: Option<&Node>| pod_cidrs(node).is_some(),
        )
        .await;
        match assigned {
            Ok(node) => {
                if let Some(cidrs) = pod_cidrs(node.as_ref()) {
                    break cidrs;
                }
            }
            Err(err) => tracing::debug!(%err, "waiting for the node's pod CIDR"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // --- overlay: VXLAN to the other nodes, forwarding, masquerade (shoal_net::overlay) ---
    // An IPv4 node address carries both families (IPv6 pods ride on the IPv4 VXLAN device);
    // an IPv6 one only IPv6 (`--node-ip` is one address, and the IPv4 device needs one).
    let overlaid: Vec<Cidr> = subnets
        .iter()
        .copied()
        .filter(|c| overlay.node_ip.is_ipv4() || !c.is_ipv4())
        .collect();
    let vxlan = loop {
        match crate::overlay::start(&client, &overlay, &overlaid).await {
            Ok(vxlan) => break vxlan,
            Err(err) => {
                tracing::warn!(%err, "bringing the overlay up; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let pod_mtu = vxlan.mtu();
    tokio::spawn(crate::overlay::run(
        client,
        vxlan,
        overlay.node_name,
        shutdown,
    ));
    // --- end overlay ---
    loop {
        match write_network(&cri, &subnets, pod_mtu, &conf_dir, &ipam_dir).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(%err, "configuring the pod network; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    let subnets_text: Vec<String> = subnets.iter().map(Cidr::to_string).collect();
    tracing::info!(subnets = %subnets_text.join(","), mtu = pod_mtu, "pod network configured");
    ready.store(true, Ordering::Release);
}

async fn write_network(
    cri: &Cri,
    subnets: &[Cidr],
    mtu: u32,
    conf_dir: &Path,
    ipam_dir: &Path,
) -> Result<(), String> {
    let live: HashSet<String> = cri
        .list_pod_sandboxes()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|s| s.id)
        .collect();
    std::fs::create_dir_all(ipam_dir).map_err(|e| e.to_string())?;
    shoal_net::cni::ipam::reconcile(ipam_dir, &live).map_err(|e| e.to_string())?;
    let conf = shoal_net::cni::network_config(subnets, mtu, ipam_dir);
    let path = conf_dir.join("10-shoal.conflist");
    let tmp = conf_dir.join(".10-shoal.conflist.tmp");
    std::fs::write(&tmp, conf).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
}

/// A Node's pod subnets: `spec.podCIDRs` (one per family, the primary first), or
/// `spec.podCIDR` alone when the list is missing (a Node written before dual-stack). Entries
/// that do not parse are left out.
pub fn node_pod_cidrs(pod_cidr: Option<&str>, pod_cidrs: Option<&[String]>) -> Vec<Cidr> {
    let listed: Vec<&str> = pod_cidrs
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    let texts = if listed.is_empty() {
        pod_cidr.into_iter().collect()
    } else {
        listed
    };
    texts.iter().filter_map(|c| c.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_come_from_the_list_or_the_single_field() {
        let dual = ["10.42.1.0/24".to_string(), "fd00:42:0:1::/64".to_string()];
        let got = node_pod_cidrs(Some("10.42.1.0/24"), Some(&dual));
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].to_string(), "fd00:42:0:1::/64");
        let old = node_pod_cidrs(Some("10.42.1.0/24"), None);
        assert_eq!(old.len(), 1);
        assert!(node_pod_cidrs(None, Some(&[])).is_empty());
        assert!(node_pod_cidrs(Some("junk"), None).is_empty());
    }
}
