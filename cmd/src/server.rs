//! `shoal server`: opens the store, loads (or creates) the cluster PKI, writes the admin
//! kubeconfig, serves the API until SIGTERM/SIGINT, then shuts down cleanly, flushing the
//! store. It also runs the control plane (scheduler and controllers, each behind a Lease) and,
//! unless `--disable-agent`, this machine's node agent on the in-process client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use shoal_agent::join::JoinClient;
use shoal_apiserver::allocator::ServiceRanges;
use shoal_apiserver::pki::{ClusterPki, ServingIdentity};
use shoal_apiserver::rest::Api;
use shoal_apiserver::{routes, server};
use shoal_common::join::{JoinedCluster, ServerBootstrap};
use shoal_controllers::leader::{LeaderElector, Timings};
use shoal_store::{Bootstrap, PeerConfig, RaftStore, RaftStoreConfig, Store};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::ServerArgs;
use crate::config;

pub async fn run(mut args: ServerArgs) -> Result<()> {
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
    let peer_port = args
        .https_listen_port
        .checked_add(1)
        .context("--https-listen-port leaves no room for the store's peer port (the next one)")?;
    store_config.advertise = SocketAddr::new(advertise, peer_port).to_string();
    let node_name = args
        .common
        .node_name
        .clone()
        .unwrap_or_else(crate::node::hostname);

    // --- store snapshots and cluster reset ---
    // A reset works on the stopped store before anything else opens, then the server exits.
    if args.cluster_reset {
        return crate::store::cluster_reset(
            &store_config,
            args.cluster_reset_restore_path.as_deref(),
            &server_dir,
            token.as_deref(),
        );
    }
    let snapshot_dir =
        crate::store::snapshot_dir(&args.common.data_dir, args.store_snapshot_dir.as_deref());
    let snapshot_schedule =
        crate::store::parse_schedule(&args.store_snapshot_schedule).map_err(anyhow::Error::msg)?;
    // --- end store snapshots ---

    // Joining another server's cluster: its keys and settings come first (from the server
    // named, on the first start only: a restarted member needs no one server in particular).
    // Nothing is open yet, so a signal meanwhile may end the process the default way.
    let joining = args.common.server.clone();
    if let Some(url) = &joining {
        let token = token
            .as_deref()
            .context("joining another server's cluster (--server) needs --token")?;
        take_cluster_settings(url, token, &server_dir, &mut args).await?;
    }
    // Once replicated, always: a member restarted without the flags keeps its peers.
    let replicated_marker = server_dir.join(REPLICATED_MARKER);
    let replicated = args.cluster_init || joining.is_some() || replicated_marker.exists();

    // Both handlers exist before anything is opened: a signal that arrives at any point after
    // this is a clean shutdown, never the default (immediate) death.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let identity =
        ServingIdentity::kubernetes(&node_name, &args.cluster_domain, serving_ips(&args));
    let pki = ClusterPki::load_or_create(&server_dir, &identity, token.as_deref())
        .context("loading the cluster certificates")?;
    if replicated {
        let (tls_server, tls_client) = server::peer_tls_configs(&pki)?;
        store_config.peer = Some(PeerConfig {
            listen: SocketAddr::new(args.bind_address, peer_port),
            tls_server,
            tls_client,
            faults: Default::default(),
        });
        store_config.bootstrap = if joining.is_some() {
            Bootstrap::Join
        } else {
            Bootstrap::Init
        };
        std::fs::write(&replicated_marker, "")
            .with_context(|| format!("writing {}", replicated_marker.display()))?;
    }
    let advertised_peer = store_config.advertise.clone();
    let store = RaftStore::open(store_config)
        .await
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    if let (Some(url), Some(token)) = (&joining, token.as_deref()) {
        if store.cluster_id().is_none() {
            let join = tokio::select! {
                join = connect_for_joining(url, token) => join?,
                _ = sigterm.recv() => return shut_down_store(&store).await,
                _ = sigint.recv() => return shut_down_store(&store).await,
            };
            let member = shoal_common::join::StoreMember {
                id: store.node_id(),
                peer_address: advertised_peer.clone(),
                voter: false,
                leader: false,
            };
            tracing::info!(
                server = join.url(),
                id = member.id,
                "asking to join the store"
            );
            let ask = join.call(
                "POST",
                shoal_common::join::MEMBERS_PATH,
                shoal_common::join::SERVER_USER,
                Some(serde_json::to_vec(&member)?),
            );
            tokio::select! {
                added = ask => { added.context("joining the store")?; }
                _ = sigterm.recv() => return shut_down_store(&store).await,
                _ = sigint.recv() => return shut_down_store(&store).await,
            }
        }
    }
    if replicated {
        // A member serves once it has a leader backed by a quorum and has caught up.
        loop {
            tokio::select! {
                ready = store.wait_ready(std::time::Duration::from_secs(10)) => match ready {
                    Ok(()) => break,
                    Err(e @ (shoal_store::StoreError::Removed(_) | shoal_store::StoreError::Corrupt(_))) => {
                        return Err(e).context("the store");
                    }
                    Err(e) => tracing::warn!(error = %e, "waiting for the store's quorum"),
                },
                _ = sigterm.recv() => return shut_down_store(&store).await,
                _ = sigint.recv() => return shut_down_store(&store).await,
            }
        }
    }
    let revision = store.current_revision().await?;
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

    let snapshots =
        crate::store::SnapshotTaker::new(store.clone(), snapshot_dir, node_name.clone());
    let store_handle: Arc<dyn Store> = Arc::new(store.clone());
    let cluster_settings = JoinedCluster {
        cluster_cidr: args.cluster_cidr.to_string(),
        service_cidr: args.service_cidr.to_string(),
        cluster_dns: args.cluster_dns.to_string(),
        cluster_domain: args.cluster_domain.clone(),
    };
    keep_sealed_keys(store_handle.as_ref(), &pki, cluster_settings.clone()).await;
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
            cluster_ips: args.service_cidr.primary(),
            secondary_cluster_ips: args.service_cidr.secondary(),
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
        join: Some(Arc::new({
            let authority =
                shoal_apiserver::join::JoinAuthority::new(pki.clone(), cluster_settings)
                    .with_snapshots(Arc::new(snapshots.clone()));
            if replicated {
                authority.with_members(Arc::new(store.clone()))
            } else {
                authority
            }
        })),
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
        args.cluster_cidr.cidrs().to_vec(),
        pki.ca_cert_pem.clone(),
        stop_rx.clone(),
    );
    if let Some(schedule) = snapshot_schedule {
        control_plane.push(tokio::spawn(crate::store::run_schedule(
            snapshots,
            schedule,
            args.store_snapshot_retention as usize,
            stop_rx.clone(),
        )));
    }
    if !args.disable_agent {
        let config = crate::node::agent_config(
            &args.node,
            &args.common.data_dir,
            &node_name,
            true,
            crate::node::ClusterFacts {
                cluster_dns: args.cluster_dns,
                cluster_domain: &args.cluster_domain,
                service_cidrs: args.service_cidr.cidrs(),
                kubernetes_service: args
                    .service_cidr
                    .primary()
                    .nth(1)
                    .unwrap_or(IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1))),
                ca_pem: &pki.ca_cert_pem,
                cluster_cidrs: args.cluster_cidr.cidrs(),
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

    if replicated {
        let client = shoal_apiserver::in_process::client(
            Arc::clone(&api_handle),
            "system:kube-controller-manager",
            &[],
        );
        let own_node = (!args.disable_agent).then(|| node_name.clone());
        tokio::spawn(crate::server_nodes::follow(client, store.clone(), own_node));
    }
    let removed = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM received, shutting down"); None }
        _ = sigint.recv() => { tracing::info!("SIGINT received, shutting down"); None }
        err = store.removed(), if replicated => {
            tracing::error!(error = %err, "this server was removed from the cluster; shutting down");
            Some(err)
        }
    };
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
    if let Some(err) = removed {
        let _ = store.shutdown().await;
        return Err(err).context("the store");
    }
    store.shutdown().await.context("flushing the store")?;
    tracing::info!("store flushed; bye");
    Ok(())
}

/// Keeps the cluster's shared keys sealed with the token's secret in the store, so that its
/// snapshots carry them (see `shoal_apiserver::sealed_bootstrap`). Written when missing or
/// different; a failure only costs that, so it is logged, not fatal.
async fn keep_sealed_keys(store: &dyn Store, pki: &ClusterPki, cluster: JoinedCluster) {
    use shoal_apiserver::sealed_bootstrap::{open, seal, SEALED_BOOTSTRAP_KEY};
    let bundle = pki.bootstrap(cluster);
    let current = match store.get(SEALED_BOOTSTRAP_KEY).await {
        Ok(current) => current,
        Err(e) => {
            tracing::warn!(error = %e, "reading the sealed cluster keys");
            return;
        }
    };
    if current.is_some_and(|kv| open(&kv.value, &pki.token_secret).is_ok_and(|kept| kept == bundle))
    {
        return;
    }
    let written = match seal(&bundle, &pki.token_secret) {
        Ok(sealed) => store
            .put(SEALED_BOOTSTRAP_KEY, sealed)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, "keeping the sealed cluster keys in the store");
    }
}

/// Marks a server whose store has peers (`--cluster-init` or joined), so later starts keep the
/// peer transport without the flags, as k3s keeps etcd once it has it.
const REPLICATED_MARKER: &str = "replicated";
/// The cluster-wide settings a joined server took from the cluster, for its restarts.
const JOINED_SETTINGS: &str = "cluster.json";

/// A verified line to the server at `url` (its CA checked against the token), retried while
/// that server is unreachable.
async fn connect_for_joining(url: &str, token: &str) -> Result<JoinClient> {
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        match JoinClient::connect(url, token).await {
            Ok(client) => return Ok(client),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "waiting for the server to join");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A server joining the cluster of the server at `url` uses the cluster's settings (CIDRs,
/// DNS) instead of its own flags, as a new server's flags describe a new cluster. On the first
/// start it takes them, with the cluster's shared keys, from that server and keeps them; later
/// starts read what was kept and contact no one.
async fn take_cluster_settings(
    url: &str,
    token: &str,
    server_dir: &std::path::Path,
    args: &mut ServerArgs,
) -> Result<()> {
    let settings_path = server_dir.join(JOINED_SETTINGS);
    let cluster: JoinedCluster = match std::fs::read(&settings_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", settings_path.display()))?,
        Err(_) => {
            let client = connect_for_joining(url, token).await?;
            let body = client
                .call(
                    "POST",
                    shoal_common::join::SERVER_BOOTSTRAP_PATH,
                    shoal_common::join::SERVER_USER,
                    None,
                )
                .await
                .context("getting the cluster's keys")?;
            let bundle: ServerBootstrap =
                serde_json::from_slice(&body).context("the cluster's keys")?;
            client.check_ca(&bundle.ca_cert)?;
            shoal_apiserver::pki::install_bootstrap(server_dir, &bundle)
                .context("installing the cluster's keys")?;
            shoal_apiserver::pki::write_file_atomic(
                &settings_path,
                &serde_json::to_string(&bundle.cluster)?,
                0o644,
            )
            .with_context(|| format!("writing {}", settings_path.display()))?;
            tracing::info!(
                server = client.url(),
                "took the cluster's keys and settings"
            );
            bundle.cluster
        }
    };
    // Comma-separated for a dual-stack cluster, as the flags are (and a single CIDR as kept
    // by servers from before dual-stack).
    args.cluster_cidr = cluster
        .cluster_cidr
        .parse()
        .with_context(|| format!("the cluster's CIDR {:?}", cluster.cluster_cidr))?;
    args.service_cidr = cluster
        .service_cidr
        .parse()
        .with_context(|| format!("the cluster's service CIDR {:?}", cluster.service_cidr))?;
    args.cluster_dns = cluster
        .cluster_dns
        .parse()
        .with_context(|| format!("the cluster's DNS address {:?}", cluster.cluster_dns))?;
    args.cluster_domain = cluster.cluster_domain;
    Ok(())
}

async fn shut_down_store(store: &RaftStore) -> Result<()> {
    tracing::info!("signal received before serving; closing the store");
    store.shutdown().await.context("flushing the store")
}

/// The addresses the serving certificate must carry.
fn serving_ips(args: &ServerArgs) -> Vec<IpAddr> {
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    // The `kubernetes` Service's ClusterIPs (one per family of a dual-stack cluster).
    ips.extend(args.service_cidr.cidrs().iter().filter_map(|c| c.nth(1)));
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
    // The API's bootstrap made the first renewal and reconcile: the loop starts one period on.
    let period = shoal_apiserver::rest::SERVER_LEASE_RENEW;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
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
    cluster_cidrs: Vec<shoal_common::Cidr>,
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
        let cluster_cidrs = cluster_cidrs.clone();
        async move {
            tokio::join!(
                shoal_controllers::run::run(client.clone(), node_lifecycle, drain.clone()),
                shoal_controllers::run::node_ipam::run(
                    client.clone(),
                    cluster_cidrs,
                    drain.clone()
                ),
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
