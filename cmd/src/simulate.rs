//! `shoal simulate-nodes`: runs a fleet of simulated nodes (`shoal_agent::simulated`) against a
//! server, reached like any client through a kubeconfig, until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::api::core::v1::Taint;
use shoal_agent::simulated::{
    parse_duration, parse_label, parse_taint, SimConfig, SimulatedNodes, MAX_PODS_PER_NODE,
};
use shoal_common::Cidr;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone, Args)]
pub struct SimulateNodesArgs {
    /// How many nodes to simulate.
    #[arg(long)]
    pub count: usize,

    /// The kubeconfig to reach the API with [default: $KUBECONFIG, else a local server's
    /// /var/lib/shoal/kubeconfig.yaml]
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Node names are this prefix and a number from 0.
    #[arg(long, default_value = "sim-")]
    pub name_prefix: String,

    /// Spread the nodes over this many zones (topology.kubernetes.io/zone=zone-N); 0 for none.
    #[arg(long, default_value_t = 3)]
    pub zones: usize,

    /// Each node's CPU capacity.
    #[arg(long, default_value = "32")]
    pub cpu: String,

    /// Each node's memory capacity.
    #[arg(long, default_value = "256Gi")]
    pub memory: String,

    /// Each node's ephemeral-storage capacity.
    #[arg(long, default_value = "100Gi")]
    pub ephemeral_storage: String,

    /// Each node's pod capacity.
    #[arg(long, default_value_t = 110,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PODS_PER_NODE)))]
    pub max_pods: u32,

    /// An extra node label, key=value (repeatable).
    #[arg(long = "node-label", value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,

    /// A node taint, key=value:Effect (repeatable).
    #[arg(long = "node-taint", value_parser = parse_taint)]
    pub node_taints: Vec<Taint>,

    /// The range pod addresses come from; each node gets a /24 of it.
    #[arg(long, default_value = "10.128.0.0/10")]
    pub pod_cidr: Cidr,

    /// The range node addresses come from.
    #[arg(long, default_value = "10.64.0.0/10")]
    pub node_ip_cidr: Cidr,

    /// How long a pod bound to a node stays Pending before it runs (e.g. 500ms, 2s).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub pod_start_delay: Duration,

    /// How long a Job's pods run before they succeed, or "never".
    #[arg(long, default_value = "1s", value_parser = parse_complete_after)]
    pub complete_after: CompleteAfter,

    /// How often each node refreshes its conditions' heartbeat (e.g. 1m, 10s).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub node_status_update_frequency: Duration,

    /// The nodes' Lease duration; they renew it every quarter of it, as the kubelet does.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(i32).range(1..))]
    pub node_lease_duration_seconds: i32,

    /// The most API requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,

    /// Delete the nodes and their Leases on exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// `--complete-after`: a duration, or never.
#[derive(Debug, Clone, Copy)]
pub struct CompleteAfter(pub Option<Duration>);

fn parse_complete_after(text: &str) -> Result<CompleteAfter, String> {
    if text == "never" {
        return Ok(CompleteAfter(None));
    }
    parse_duration(text).map(|d| CompleteAfter(Some(d)))
}

/// The simulator's configuration from the flags, checked as a whole.
pub fn config(args: &SimulateNodesArgs) -> Result<SimConfig> {
    let config = SimConfig {
        count: args.count,
        name_prefix: args.name_prefix.clone(),
        cpu: args.cpu.clone(),
        memory: args.memory.clone(),
        ephemeral_storage: args.ephemeral_storage.clone(),
        pods: args.max_pods,
        labels: args.node_labels.iter().cloned().collect(),
        taints: args.node_taints.clone(),
        zones: args.zones,
        pod_cidr: args.pod_cidr,
        node_ip_cidr: args.node_ip_cidr,
        pod_start_delay: args.pod_start_delay,
        complete_after: args.complete_after.0,
        status_update_interval: args.node_status_update_frequency,
        lease_duration_seconds: args.node_lease_duration_seconds,
        // The kubelet renews at a quarter of the duration: 10 s of the default 40 s.
        lease_renew_interval: Duration::from_millis(
            u64::try_from(args.node_lease_duration_seconds).unwrap_or(40) * 250,
        ),
        max_in_flight: args.max_in_flight as usize,
        cleanup: args.cleanup,
    };
    config.validate()?;
    Ok(config)
}

/// The kubeconfig to use: the flag, else the first of $KUBECONFIG, else a local server's.
fn kubeconfig_path(args: &SimulateNodesArgs) -> PathBuf {
    args.kubeconfig.clone().unwrap_or_else(|| {
        std::env::var_os("KUBECONFIG")
            .and_then(|paths| std::env::split_paths(&paths).find(|p| !p.as_os_str().is_empty()))
            .unwrap_or_else(|| {
                PathBuf::from(shoal_common::DEFAULT_DATA_DIR).join("kubeconfig.yaml")
            })
    })
}

pub async fn run(args: SimulateNodesArgs, config: SimConfig) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let path = kubeconfig_path(&args);
    if !path.exists() {
        anyhow::bail!(
            "no kubeconfig at {} (give --kubeconfig or set KUBECONFIG)",
            path.display()
        );
    }
    // kube's error repeats its cause in its own message: show it once.
    let kubeconfig =
        kube::config::Kubeconfig::read_from(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("using the kubeconfig {}", path.display()))?;
    let client = kube::Client::try_from(client_config).context("creating the API client")?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut nodes = tokio::spawn(SimulatedNodes::new(client, config).run(stopped));
    tracing::info!(nodes = args.count, kubeconfig = %path.display(), "starting simulated nodes");
    let finished = tokio::select! {
        finished = &mut nodes => finished,
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM received, stopping the simulated nodes");
            stop.send_replace(true);
            nodes.await
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT received, stopping the simulated nodes");
            stop.send_replace(true);
            nodes.await
        }
    };
    finished.context("the simulator task")??;
    tracing::info!("simulated nodes stopped; bye");
    Ok(())
}
