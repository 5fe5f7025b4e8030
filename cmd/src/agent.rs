//! `shoal agent`: joins the server `--server` names with `--token` (waiting while it is not
//! up, and trying the servers it remembers), then runs this machine's node on an HTTPS client
//! behind its API load balancer until SIGTERM/SIGINT.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_common::CidrList;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::AgentArgs;

/// Longest wait between join attempts while the server is unreachable.
const MAX_JOIN_BACKOFF: Duration = Duration::from_secs(10);

pub async fn run(args: AgentArgs, server_url: String, token: String) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let node_name = args
        .common
        .node_name
        .clone()
        .unwrap_or_else(crate::node::hostname);
    let agent_dir = args.common.data_dir.join("agent");

    // With several servers, a restarting agent whose `--server` is down joins through any
    // server it remembers from its last run.
    let remembered = shoal_agent::server_lb::remembered_servers(&agent_dir);
    let candidates: Vec<String> = std::iter::once(server_url.clone())
        .chain(remembered.iter().map(|s| format!("https://{s}")))
        .collect();
    let mut attempt_number = 0usize;
    let mut backoff = Duration::from_millis(500);
    let joined = loop {
        let url = &candidates[attempt_number % candidates.len()];
        attempt_number += 1;
        let attempt = shoal_agent::join::join(url, &token, &node_name, &agent_dir);
        let result = tokio::select! {
            result = attempt => result,
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
        };
        match result {
            Ok(joined) => break joined,
            Err(err) if err.is_retryable() => {
                tracing::warn!(error = %err, "waiting for the server");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = sigterm.recv() => return Ok(()),
                    _ = sigint.recv() => return Ok(()),
                }
                backoff = (backoff * 2).min(MAX_JOIN_BACKOFF);
            }
            Err(err) => return Err(err.into()),
        }
    };
    let cluster = &joined.credentials.cluster;
    // Comma-separated when dual-stack, as k3s's --cluster-cidr and --service-cidr.
    let service_cidrs: CidrList = cluster
        .service_cidr
        .parse()
        .with_context(|| format!("the server's service CIDR {:?}", cluster.service_cidr))?;
    let cluster_dns: IpAddr = cluster
        .cluster_dns
        .parse()
        .with_context(|| format!("the server's cluster DNS {:?}", cluster.cluster_dns))?;
    let cluster_cidrs: CidrList = cluster
        .cluster_cidr
        .parse()
        .with_context(|| format!("the server's cluster CIDR {:?}", cluster.cluster_cidr))?;
    let kubernetes_service = service_cidrs
        .primary()
        .nth(1)
        .context("the server's service CIDR has no first address")?;
    let config = crate::node::agent_config(
        &args.node,
        &args.common.data_dir,
        &node_name,
        false,
        crate::node::ClusterFacts {
            cluster_dns,
            cluster_domain: &cluster.cluster_domain,
            service_cidrs: service_cidrs.cidrs(),
            kubernetes_service,
            ca_pem: &joined.credentials.ca_cert,
            cluster_cidrs: cluster_cidrs.cidrs(),
        },
    )?;
    // The node talks to the API through its own load balancer, which follows the servers.
    let configured = server_url
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let balancer = shoal_agent::server_lb::ServerBalancer::start(&configured, &agent_dir).await?;
    let mut client_config = joined.client;
    client_config.cluster_url = balancer
        .local_url()
        .parse()
        .context("the load balancer's URL")?;
    let client = kube::Client::try_from(client_config).context("building the API client")?;
    tracing::info!(
        server = %server_url,
        node = %node_name,
        kubeconfig = %joined.kubeconfig.display(),
        "joined the cluster"
    );

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(balancer.follow(client.clone(), stopped.clone()));
    let mut node = tokio::spawn(shoal_agent::node_agent::run(config, client, stopped));
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT received, shutting down"),
        ended = &mut node => {
            return match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(anyhow::Error::new(err).context("the node agent stopped")),
                Err(err) => Err(anyhow::Error::new(err).context("the node agent panicked")),
            };
        }
    }
    stop.send_replace(true);
    match tokio::time::timeout(Duration::from_secs(10), node).await {
        Ok(Ok(Err(err))) => Err(anyhow::Error::new(err).context("the node agent stopped")),
        _ => Ok(()),
    }
}
