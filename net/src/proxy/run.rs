//! The proxy loop: kube-rs watches of Services and EndpointSlices (discovery.k8s.io/v1) feed
//! reflector caches; every event names the Service it concerns; after a short debounce the
//! loop syncs. The first sync (and any after a failure or a re-list) writes the whole table;
//! the others send only the difference for the Services named since the last sync.
//!
//! With the socket LB on ([`ProxyConfig::socket_lb`]), its maps follow the same model after
//! each sync of the tables, full or incremental alike; a failure there leaves the tables alone
//! (they handle every connection the program does not translate) and rewrites the maps whole
//! at the next sync.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::model::{service_ports, Model, NodeContext, ServiceName, ServicePort};
use super::netlink::{ApplyError, Nftables};
use super::render::{self, Blocks, Change, TableConfig};
use super::ruleset::Transaction;
use super::sock_lb::{plan, SockLb};

/// How the proxy runs on this node.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub node_name: String,
    pub table: TableConfig,
    /// ClusterIPs answered on the node by something else: their Services are left alone.
    pub node_local_ips: BTreeSet<IpAddr>,
    /// How long to gather changes before a sync.
    pub debounce: Duration,
    /// Where the tables are written.
    pub nftables: Nftables,
    /// Translate TCP ClusterIP connects at the socket for the processes of this cgroup (a
    /// directory of the cgroup v2 hierarchy, made if missing): this node's pods. `None`:
    /// nftables only.
    pub socket_lb: Option<PathBuf>,
}

impl ProxyConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        let mut table = TableConfig::new(super::TABLE);
        // A kernel booted without IPv6 would refuse the `ip6` table, and with it the
        // transaction that also carries the IPv4 one.
        table.ipv6 = Path::new("/proc/sys/net/ipv6").exists();
        (table.bridge_calls_iptables, table.bridge_calls_ip6tables) = bridge_netfilter();
        ProxyConfig {
            node_name: node_name.into(),
            table,
            node_local_ips: BTreeSet::new(),
            debounce: Duration::from_millis(20),
            nftables: Nftables::current(),
            socket_lb: None,
        }
    }
}

/// Whether bridged IPv4 and IPv6 packets go through the IP hooks (`br_netfilter`'s
/// `bridge-nf-call-iptables` / `-ip6tables` in this network namespace).
pub fn bridge_netfilter() -> (bool, bool) {
    let on = |key: &str| {
        std::fs::read_to_string(Path::new("/proc/sys/net/bridge").join(key))
            .is_ok_and(|v| v.trim() == "1")
    };
    (
        on("bridge-nf-call-iptables"),
        on("bridge-nf-call-ip6tables"),
    )
}

/// How often the loop looks at `br_netfilter` when nothing else happens.
const RECHECK: Duration = Duration::from_secs(30);

/// What a watch event means for the loop.
enum Update {
    Changed(ServiceName),
    /// A (re-)list of services (`true`) or slices finished: the caches may have lost
    /// deletions, so the next sync is a full one.
    Listed(bool),
}

fn events<K, S>(
    stream: S,
    writer: reflector::store::Writer<K>,
    name: fn(&K) -> Option<ServiceName>,
    services: bool,
) -> impl Stream<Item = Update> + Send
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    stream.reflect(writer).filter_map(move |event| async move {
        match event {
            Ok(Event::Apply(o) | Event::Delete(o)) => name(&o).map(Update::Changed),
            Ok(Event::InitDone) => Some(Update::Listed(services)),
            Ok(_) => None,
            Err(err) => {
                tracing::warn!(%err, "service proxy watch");
                None
            }
        }
    })
}

/// Turns on forwarding in this network namespace: DNAT to a pod is routed. IPv6's only with
/// `ipv6` (an IPv6 pod network), as k3s does: on a host that configures itself from router
/// advertisements, forwarding makes the kernel ignore them, and with them its IPv6 route.
pub fn enable_forwarding(ipv6: bool) -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    if ipv6 {
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Runs the proxy until `shutdown` turns true. Failures are logged and retried (a failed
/// incremental sync is followed by a full one).
pub async fn run(client: kube::Client, config: ProxyConfig, mut shutdown: watch::Receiver<bool>) {
    let ipv6_pods = config.table.ipv6 && config.table.cluster_cidr6.is_some();
    if let Err(err) = enable_forwarding(ipv6_pods) {
        tracing::warn!(%err, "cannot enable forwarding; Services will not reach pods");
    }
    let (svc_store, svc_writer) = reflector::store();
    let (slice_store, slice_writer) = reflector::store();
    let svc_watch = watcher::watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let slice_watch = watcher::watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff();
    let mut updates = futures::stream::select(
        events(svc_watch, svc_writer, ServiceName::of_service, true).boxed(),
        events(slice_watch, slice_writer, ServiceName::of_slice, false).boxed(),
    );
    let socket_lb = config
        .socket_lb
        .as_deref()
        .and_then(|cgroup| attach_socket_lb(cgroup, config.table.ipv6));
    let mut proxy = Proxy {
        socket_lb,
        config,
        services: svc_store,
        slices: slice_store,
        applied: None,
        blocks: Blocks::default(),
        changed: BTreeSet::new(),
        listed: (false, false),
    };
    let mut retry: Option<Instant> = None;
    loop {
        let retry_at = retry.unwrap_or_else(|| Instant::now() + RECHECK);
        tokio::select! {
            update = updates.next() => match update {
                Some(update) => proxy.note(update),
                None => return,
            },
            _ = tokio::time::sleep_until(retry_at) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        // Gather what else arrives within the debounce.
        let deadline = Instant::now() + proxy.config.debounce;
        loop {
            tokio::select! {
                update = updates.next() => match update {
                    Some(update) => proxy.note(update),
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        retry = match proxy.sync().await {
            Ok(()) => None,
            Err(err) => {
                tracing::warn!(%err, "programming Services failed; retrying with a full sync");
                Some(Instant::now() + Duration::from_secs(1))
            }
        };
    }
}

/// Attaches the socket LB to `cgroup`, or says why not (nftables then handles everything).
fn attach_socket_lb(cgroup: &Path, ipv6: bool) -> Option<SockLb> {
    if let Err(err) = std::fs::create_dir_all(cgroup) {
        tracing::warn!(%err, cgroup = %cgroup.display(), "no socket LB: cannot make the pods' cgroup");
        return None;
    }
    match SockLb::attach(cgroup, ipv6) {
        Ok(lb) => {
            tracing::info!(cgroup = %cgroup.display(), "socket LB attached: TCP ClusterIP connects of pods are translated at connect()");
            Some(lb)
        }
        Err(err) => {
            tracing::warn!(%err, "no socket LB; ClusterIPs go through nftables only");
            None
        }
    }
}

struct Proxy {
    config: ProxyConfig,
    /// The connect-time translation, when on and attached.
    socket_lb: Option<SockLb>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// What the table holds; `None` when the next sync must be a full one.
    applied: Option<Model>,
    /// The `backends` key blocks of what the table holds.
    blocks: Blocks,
    changed: BTreeSet<ServiceName>,
    listed: (bool, bool),
}

impl Proxy {
    fn note(&mut self, update: Update) {
        match update {
            Update::Changed(name) => {
                self.changed.insert(name);
            }
            Update::Listed(services) => {
                if services {
                    self.listed.0 = true;
                } else {
                    self.listed.1 = true;
                }
                self.applied = None;
            }
        }
    }

    fn node(&self) -> NodeContext {
        NodeContext {
            node_name: self.config.node_name.clone(),
            node_local_ips: self.config.node_local_ips.clone(),
        }
    }

    fn slices_by_service(&self) -> HashMap<ServiceName, Vec<Arc<EndpointSlice>>> {
        let mut index: HashMap<ServiceName, Vec<Arc<EndpointSlice>>> = HashMap::new();
        for slice in self.slices.state() {
            if let Some(name) = ServiceName::of_slice(&slice) {
                index.entry(name).or_default().push(slice);
            }
        }
        index
    }

    async fn sync(&mut self) -> Result<(), ApplyError> {
        if self.listed != (true, true) {
            return Ok(());
        }
        // Same-bridge masquerade depends on br_netfilter (render.rs), which can be loaded or
        // switched after start: the tables follow it with a full sync.
        let bridge = bridge_netfilter();
        let table = &mut self.config.table;
        if bridge != (table.bridge_calls_iptables, table.bridge_calls_ip6tables) {
            tracing::info!(
                iptables = bridge.0,
                ip6tables = bridge.1,
                "br_netfilter changed; rewriting the Service tables"
            );
            (table.bridge_calls_iptables, table.bridge_calls_ip6tables) = bridge;
            self.applied = None;
        }
        let node = self.node();
        let index = self.slices_by_service();
        let Some(applied) = self.applied.as_mut() else {
            let mut model = Model::new();
            for service in self.services.state() {
                let ports = service_ports_arc(&service, &index, &node);
                if let (false, Some(name)) = (ports.is_empty(), ServiceName::of_service(&service)) {
                    model.insert(name, ports);
                }
            }
            let tx = render::full(
                &self.config.table,
                model.values().flatten(),
                &mut self.blocks,
            );
            let started = std::time::Instant::now();
            apply(&self.config.nftables, tx).await?;
            tracing::info!(
                services = model.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "programmed all Services"
            );
            self.changed.clear();
            if let Some(lb) = self.socket_lb.as_mut() {
                sync_socket_lb(lb, &model, None);
            }
            self.applied = Some(model);
            return Ok(());
        };
        let changed = std::mem::take(&mut self.changed);
        let mut new = Vec::with_capacity(changed.len());
        for name in &changed {
            let key = ObjectRef::<Service>::new(&name.name).within(&name.namespace);
            let ports = self
                .services
                .get(&key)
                .map(|s| service_ports_arc(&s, &index, &node))
                .unwrap_or_default();
            new.push((name, ports));
        }
        let empty = Vec::new();
        let changes: Vec<Change<'_>> = new
            .iter()
            .map(|(name, ports)| Change {
                old: applied.get(*name).unwrap_or(&empty),
                new: ports,
            })
            .collect();
        let tx = render::incremental(&self.config.table, &changes, &mut self.blocks);
        if !tx.is_empty() {
            if let Err(err) = apply(&self.config.nftables, tx).await {
                self.applied = None;
                return Err(err);
            }
        }
        // The socket LB's part of the change: every frontend these Services had or have.
        let lb_change = self.socket_lb.as_ref().map(|_| {
            let desired = plan::frontends(new.iter().flat_map(|(_, ports)| ports));
            let before = plan::frontends(changes.iter().flat_map(|c| c.old));
            let scope: BTreeSet<_> = before.into_keys().chain(desired.keys().copied()).collect();
            (desired, scope)
        });
        for (name, ports) in new {
            if ports.is_empty() {
                applied.remove(name);
            } else {
                applied.insert(name.clone(), ports);
            }
        }
        if let (Some(lb), Some(change)) = (self.socket_lb.as_mut(), lb_change.as_ref()) {
            sync_socket_lb(lb, applied, Some(change));
        }
        Ok(())
    }
}

/// Brings the socket LB's maps to `model` — only the frontends of `change` (what they should
/// hold, and which to look at) when given and the maps are in a known state.
fn sync_socket_lb(
    lb: &mut SockLb,
    model: &Model,
    change: Option<&(plan::Desired, BTreeSet<super::sock_lb::Frontend>)>,
) {
    let result = match change {
        Some((desired, scope)) if !lb.needs_full() => lb.sync(desired, scope),
        _ => lb.sync_all(&plan::frontends(model.values().flatten())),
    };
    if let Err(err) = result {
        tracing::warn!(%err, "socket LB maps: rewriting them whole at the next sync (entries may be stale until then)");
    }
}

fn service_ports_arc(
    service: &Service,
    index: &HashMap<ServiceName, Vec<Arc<EndpointSlice>>>,
    node: &NodeContext,
) -> Vec<ServicePort> {
    let slices = ServiceName::of_service(service)
        .and_then(|n| index.get(&n))
        .map(Vec::as_slice)
        .unwrap_or_default();
    service_ports(service, slices.iter().map(Arc::as_ref), node)
}

async fn apply(nftables: &Nftables, tx: Transaction) -> Result<(), ApplyError> {
    let nftables = nftables.clone();
    match tokio::task::spawn_blocking(move || nftables.apply(&tx)).await {
        Ok(result) => result,
        Err(join) => Err(ApplyError::Io(std::io::Error::other(join.to_string()))),
    }
}
