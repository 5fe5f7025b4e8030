//! `shoal server`: opens the store, loads (or creates) the cluster PKI, writes the admin
//! kubeconfig, serves the API until SIGTERM/SIGINT, then shuts down cleanly, flushing the
//! store. It also runs the control plane (scheduler and controllers, each behind a Lease) and,
//! unless `--disable-agent`, this machine's node agent on the in-process client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use shoal_apiserver::allocator::ServiceRanges;
use shoal_apiserver::pki::{ClusterPki, ServingIdentity};
use shoal_apiserver::rest::Api;
use shoal_apiserver::{routes, server};
use shoal_controllers::leader::{LeaderElector, Timings};
use shoal_store::{RaftStore, RaftStoreConfig, Store};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::ServerArgs;
use crate::config;

pub async fn run(args: ServerArgs) -> Result<()> {
    let token = config::read_token(&args.common.token, &args.common.token_file)?;
    let server_dir = args.common.data_dir.join("server");
    let store_dir = server_dir.join("store");
    let mut store_config = RaftStoreConfig::new(&store_dir);
    // Where other machines, and pods through the `kubernetes` Service, reach this server:
    // k3s's default is the node's address when the API listens on all of them.
    let advertise = args
        .advertise_address
        .unwrap_or(if args.bind_address.is_unspecified() {
            args.node
                .node_ip
                .unwrap_or_else(crate::node::default_node_ip)
        } else {
            args.bind_address
        });
    store_config.advertise = format!("{advertise}:{}", args.https_listen_port + 1);
    let node_name = args
        .common
        .node_name
        .clone()
        .unwrap_or_else(crate::node::hostname);

    // Both handlers exist before anything is opened: a signal that arrives at any point after
    // this is a clean shutdown, never the default (immediate) death.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let store = RaftStore::open(store_config)
        .await
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let revision = store.current_revision().await?;

    let identity =
        ServingIdentity::kubernetes(&node_name, &args.cluster_domain, serving_ips(&args));
    let pki = ClusterPki::load_or_create(&server_dir, &identity, token.as_deref())
        .context("loading the cluster certificates")?;
    let local_url = format!(
        "https://{}",
        SocketAddr::new(client_ip(args.bind_address), args.https_listen_port)
    );
    let kubeconfig = pki.admin_kubeconfig(&local_url);
    let mut kubeconfig_paths = vec![args.common.data_dir.join("kubeconfig.yaml")];
    kubeconfig_paths.extend(args.write_kubeconfig.clone());
    for path in &kubeconfig_paths {
        shoal_apiserver::pki::write_file_atomic(path, &kubeconfig, args.write_kubeconfig_mode)
            .with_context(|| format!("writing the kubeconfig {}", path.display()))?;
    }

    let store_handle: Arc<dyn Store> = Arc::new(store.clone());
    let crds = Arc::new(shoal_apiserver::crd::CrdRegistry::default());
    crds.reload(store_handle.as_ref())
        .await
        .context("loading CustomResourceDefinitions")?;
    tokio::spawn(Arc::clone(&crds).follow(Arc::clone(&store_handle)));
    let signer = shoal_apiserver::service_account::TokenSigner::new(
        &pki.service_account_key_pem,
        &shoal_apiserver::service_account::issuer_for(&args.cluster_domain),
    )
    .context("loading the service account signing key")?;
    let api = Arc::new(Api {
        service_accounts: Some(Arc::new(signer)),
        crds,
        events: Arc::default(),
        store: store_handle,
        server_address: format!("{}:{}", client_ip(advertise), args.https_listen_port),
        service_ranges: ServiceRanges {
            cluster_ips: args.service_cidr,
            node_ports: ServiceRanges::default().node_ports,
            cluster_dns: Some(args.cluster_dns),
        },
        openapi_v2: Default::default(),
        // The API server calls nodes with the admin identity (system:masters), as k3s does
        // with its kube-apiserver client certificate.
        node_client: Some(
            shoal_apiserver::node_proxy::client_config(&pki.admin_cert_pem, &pki.admin_key_pem)
                .map_err(|e| anyhow::anyhow!("node client TLS: {e}"))?,
        ),
        join: Some(Arc::new(shoal_apiserver::join::JoinAuthority::new(
            pki.clone(),
            shoal_common::join::JoinedCluster {
                cluster_cidr: args.cluster_cidr.to_string(),
                service_cidr: args.service_cidr.to_string(),
                cluster_dns: args.cluster_dns.to_string(),
                cluster_domain: args.cluster_domain.clone(),
            },
        ))),
    });
    api.bootstrap()
        .await
        .map_err(|e| anyhow::anyhow!("creating the system namespaces: {}", e.message))?;
    tokio::spawn(repair_service_allocations(Arc::clone(&api)));
    let server_lease = tokio::spawn(keep_server_lease(Arc::clone(&api)));

    let listen = SocketAddr::new(args.bind_address, args.https_listen_port);
    let listener = server::bind(listen).await?;
    let tls = server::tls_config(&pki)?;
    let (stop_api, stop_rx) = tokio::sync::watch::channel(false);
    let node_lifecycle =
        crate::controller_manager::node_lifecycle(&args.kube_controller_manager_args)
            .map_err(anyhow::Error::msg)?;
    let mut control_plane = start_control_plane(
        &api,
        &node_name,
        node_lifecycle,
        args.cluster_cidr,
        pki.ca_cert_pem.clone(),
        stop_rx.clone(),
    );
    if !args.disable_agent {
        let config = crate::node::agent_config(
            &args.node,
            &args.common.data_dir,
            &node_name,
            true,
            crate::node::ClusterFacts {
                cluster_dns: args.cluster_dns,
                cluster_domain: &args.cluster_domain,
                service_cidr: args.service_cidr,
                kubernetes_service: args
                    .service_cidr
                    .nth(1)
                    .unwrap_or(IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1))),
                ca_pem: &pki.ca_cert_pem,
                cluster_cidrs: &[args.cluster_cidr],
            },
        )?;
        let kubelet_client = shoal_apiserver::in_process::client(
            Arc::clone(&api),
            &format!("system:node:{node_name}"),
            &["system:nodes"],
        );
        let stop = stop_rx.clone();
        control_plane.push(tokio::spawn(async move {
            if let Err(err) = shoal_agent::node_agent::run(config, kubelet_client, stop).await {
                tracing::error!(error = %err, "the node agent stopped");
            }
        }));
    }
    let api_handle = Arc::clone(&api);
    let api = tokio::spawn(server::serve(listener, tls, routes::router(api), stop_rx));

    tracing::info!(
        data_dir = %args.common.data_dir.display(),
        revision,
        api = %local_url,
        kubeconfig = %kubeconfig_paths[0].display(),
        agent = !args.disable_agent,
        "shoal server ready"
    );

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT received, shutting down"),
    }
    // Out of the `kubernetes` endpoints first, so clients move to the other servers at once.
    server_lease.abort();
    if let Err(e) = api_handle.release_server_lease().await {
        tracing::warn!(error = %e.message, "removing this server from the kubernetes endpoints");
    }
    stop_api.send_replace(true);
    for task in control_plane {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    let _ = api.await;
    store.shutdown().await.context("flushing the store")?;
    tracing::info!("store flushed; bye");
    Ok(())
}

/// The addresses the serving certificate must carry.
fn serving_ips(args: &ServerArgs) -> Vec<IpAddr> {
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    ips.extend(args.service_cidr.nth(1)); // the `kubernetes` Service's ClusterIP
    ips.extend(args.advertise_address);
    // Agents on other machines reach the server at its node address.
    ips.push(
        args.node
            .node_ip
            .unwrap_or_else(crate::node::default_node_ip),
    );
    if !args.bind_address.is_unspecified() {
        ips.push(args.bind_address);
    }
    ips
}

/// Where a client on this machine reaches the API.
fn client_ip(bind: IpAddr) -> IpAddr {
    match bind {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

/// Frees Service addresses nothing holds any more (after a crash between reserving and
/// storing), at start and then every few minutes.
async fn repair_service_allocations(api: Arc<Api>) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(180));
    loop {
        ticker.tick().await;
        match api
            .repair_service_allocations(std::time::Duration::from_secs(60))
            .await
        {
            Ok((0, 0)) => {}
            Ok((freed, restored)) => {
                tracing::info!(freed, restored, "repaired service address allocations")
            }
            Err(e) => tracing::warn!(error = %e, "repairing service address allocations"),
        }
    }
}

/// Renews this server's Lease and points the `kubernetes` endpoints at the live servers.
async fn keep_server_lease(api: Arc<Api>) {
    let mut ticker = tokio::time::interval(shoal_apiserver::rest::SERVER_LEASE_RENEW);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = api.renew_server_lease().await {
            tracing::warn!(error = %e.message, "renewing this server's lease");
        }
        if let Err(e) = api.reconcile_kubernetes_endpoints().await {
            tracing::warn!(error = %e.message, "updating the kubernetes endpoints");
        }
    }
}

/// The scheduler and the controllers, each behind its own leader election (the Leases
/// `kube-system/kube-scheduler` and `kube-system/kube-controller-manager`, as Kubernetes names
/// them), talking to the API through the in-process client.
fn start_control_plane(
    api: &Arc<Api>,
    node_name: &str,
    node_lifecycle: shoal_controllers::node_lifecycle::NodeLifecycleConfig,
    cluster_cidr: shoal_common::Cidr,
    ca_pem: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let identity = format!("{node_name}_{}", std::process::id());
    let controllers_client =
        shoal_apiserver::in_process::client(Arc::clone(api), "system:kube-controller-manager", &[]);
    let scheduler_client =
        shoal_apiserver::in_process::client(Arc::clone(api), "system:kube-scheduler", &[]);
    let controllers = LeaderElector::new(
        controllers_client.clone(),
        "kube-system",
        "kube-controller-manager",
        &identity,
        Timings::default(),
    )
    .run(stop.clone(), move |drain| {
        let client = controllers_client.clone();
        let node_lifecycle = node_lifecycle.clone();
        let ca_pem = ca_pem.clone();
        async move {
            tokio::join!(
                shoal_controllers::run::run(client.clone(), node_lifecycle, drain.clone()),
                shoal_controllers::run::node_ipam::run(client.clone(), cluster_cidr, drain.clone()),
                shoal_controllers::run::service_lb::run(client.clone(), drain.clone()),
                shoal_controllers::run::root_ca::run(client, ca_pem, drain),
            );
        }
    });
    let scheduler = LeaderElector::new(
        scheduler_client.clone(),
        "kube-system",
        "kube-scheduler",
        &identity,
        Timings::default(),
    )
    .run(stop, move |drain| {
        shoal_scheduler::runner::run(scheduler_client.clone(), drain)
    });
    vec![tokio::spawn(controllers), tokio::spawn(scheduler)]
}
