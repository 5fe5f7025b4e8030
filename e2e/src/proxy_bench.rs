//! `shoal-bench proxy`: the nftables Service proxy in a scratch network namespace (a "node"
//! with a bridge, one backend pod and one client pod, all deleted at the end).
//!
//! - Full sync: N Services × M endpoints from objects to live tables — model, render and the
//!   netlink transaction (encoding and the kernel's work) timed apart; then again over the
//!   existing tables (an agent restart); then, for comparison, the same transaction as a
//!   script through `nft -f -` (how the proxy programmed it before).
//! - Incremental: one endpoint of one Service turns unready with N Services present, until
//!   the kernel has committed the transaction (the rule is live then), repeated.
//! - Per-connection cost: new TCP connections (connect, read a short reply, close) from the
//!   client pod to the backend directly, through a ClusterIP (nftables), through the same
//!   ClusterIP translated at `connect()` by the socket LB ([`sock_lb`]: the bench process in
//!   a cgroup with the program attached, for this target only), and through a peer's rule — a
//!   plain `dnat` to the backend in a table of its own, as kube-proxy programs a Service with
//!   one endpoint (plus the masquerade kube-proxy would need without `br_netfilter`) —
//!   alternating in rounds; then 1-byte round trips on a kept-alive connection each way.
//! - HTTP ([`http`]): `hey` (a new connection per request) and `wrk` (a new connection per
//!   request, then kept-alive connections) from the client pod against a small HTTP server
//!   in the backend pod, directly, through the ClusterIP (nftables, then the socket LB) and
//!   through the peer, alternating
//!   in rounds: requests/s, p50/p99 and the cost per request over direct.
//!
//! The node's `bridge-nf-call-iptables` is off unless `--br-netfilter`: the direct path is
//! then plain bridging and the Service paths are routed, DNATed and masqueraded, so the
//! difference is everything a Service adds; with it on, every path goes through conntrack.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nix::sched::{setns, CloneFlags};
use serde_json::json;
use shoal_net::proxy::model::{service_ports, NodeContext, ServicePort};
use shoal_net::proxy::netlink::Nftables;
use shoal_net::proxy::nft::Nft;
use shoal_net::proxy::render::{self, Blocks, Change, TableConfig};

use crate::latency::Latencies;

mod http;
mod sock_lb;

/// Flags of `shoal-bench proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Services in the tables.
    #[arg(long, default_value_t = 10_000)]
    pub services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Incremental changes timed.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Connections per target (direct, ClusterIP, peer) in the per-connection comparison; 0
    /// skips.
    #[arg(long, default_value_t = 4_000)]
    pub connections: usize,
    /// HTTP figure: requests per `hey` run (per target and round); 0 skips the HTTP figure.
    #[arg(long, default_value_t = 1_500)]
    pub http_requests: usize,
    /// HTTP figure: seconds per `wrk` run (per target and round).
    #[arg(long, default_value_t = 1)]
    pub wrk_seconds: u32,
    /// HTTP figure: rounds, each running every tool against every target in turn (the
    /// figures are medians over rounds).
    #[arg(long, default_value_t = 10)]
    pub http_rounds: usize,
    /// HTTP figure: concurrent connections of `hey` and `wrk` (1: the path's latency, with
    /// the two cores free for client and server).
    #[arg(long, default_value_t = 1)]
    pub http_concurrency: usize,
    /// HTTP figure: the CPU the load tool and the server run on (and so the packets'
    /// softirq work): each request's cost is then paid on one CPU, in series, without the
    /// cross-CPU wake-ups whose placement swings a run by 2x on a busy machine. `none`: no
    /// pinning.
    #[arg(long, default_value = "0")]
    pub http_cpu: String,
    /// Leave `br_netfilter` on in the node namespace (bridged pod traffic then goes through
    /// conntrack too, as on most hosts); off by default.
    #[arg(long)]
    pub br_netfilter: bool,
    /// Also apply the full sync's transaction as a script through `nft -f -`, for comparison.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub compare_nft: bool,
}

struct Netns {
    name: String,
}

impl Netns {
    fn add(suffix: &str) -> Result<Netns> {
        let name = format!("shoalbench-{}-{suffix}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread inside the namespace (processes it starts live there too).
    fn enter<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        http::in_netns(&self.path(), f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("write {path}"))
}

const BACKEND: &str = "10.88.0.2";
const BACKEND_PORT: u16 = 8080;
/// The backend's echo server (one byte back for each byte, on a kept-alive connection).
const ECHO_PORT: u16 = 8081;
const ECHO_SERVICE_PORT: u16 = 81;
/// The backend's HTTP server, for `hey` and `wrk`.
const HTTP_PORT: u16 = 8082;
const HTTP_SERVICE_PORT: u16 = 82;
/// The peer's Service address (a plain `dnat` rule in a table of its own).
const PEER_VIP: &str = "10.97.0.1";
/// Which of the targets (direct, ClusterIP, ClusterIP with the socket LB, peer) is measured
/// from inside the socket LB's cgroup.
const SOCKET_LB: usize = 2;

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

fn endpoint_ip(i: usize, j: usize, per: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + (i * per + j) as u32)
}

/// Service `i`; Service 0 also has the echo and HTTP ports.
fn service(i: usize) -> Result<Service> {
    let mut ports = vec![json!({"name": "http", "port": 80, "protocol": "TCP"})];
    if i == 0 {
        ports.push(json!({"name": "echo", "port": ECHO_SERVICE_PORT, "protocol": "TCP"}));
        ports.push(json!({"name": "web", "port": HTTP_SERVICE_PORT, "protocol": "TCP"}));
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": format!("svc-{i}")},
        "spec": {"clusterIP": vip(i).to_string(), "ports": ports}
    }))?)
}

/// Service `i`'s slice; endpoint `unready` (if any) is not ready. Service 0 has the real
/// backend, on this node, as its only endpoint; the others' are on another node.
fn slice(i: usize, per: usize, unready: Option<usize>) -> Result<EndpointSlice> {
    let endpoints: Vec<_> = if i == 0 {
        vec![json!({"addresses": [BACKEND], "nodeName": "bench"})]
    } else {
        (0..per)
            .map(|j| {
                let ready = unready != Some(j);
                // Elsewhere in the cluster, as nearly all of 100,000 endpoints are.
                json!({"addresses": [endpoint_ip(i, j, per).to_string()], "nodeName": "other",
                       "conditions": {"ready": ready, "serving": ready, "terminating": false}})
            })
            .collect()
    };
    Ok(serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": format!("svc-{i}-x"),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"},
                  {"name": "echo", "port": ECHO_PORT, "protocol": "TCP"},
                  {"name": "web", "port": HTTP_PORT, "protocol": "TCP"}]
    }))?)
}

/// CPU times from a `/proc/…/stat` file: the two fields `skip` places after the command name
/// (which ends with the last ')'), in clock ticks (100 per second on Linux).
fn stat_cpu(path: &str, skip: usize) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(skip)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .collect()
        })
        .unwrap_or_default();
    let tick = |i: usize| Duration::from_millis(fields.get(i).copied().unwrap_or(0) * 10);
    (tick(0), tick(1))
}

/// User and system CPU time of the calling thread: the kernel handles a netlink batch inside
/// `sendmsg`, so its work on the transaction is this thread's system time.
fn thread_cpu() -> (Duration, Duration) {
    stat_cpu("/proc/thread-self/stat", 11)
}

/// CPU time (user + system) of this process's waited-for children so far (`nft`).
fn children_cpu() -> Duration {
    let (user, system) = stat_cpu("/proc/self/stat", 13);
    user + system
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the benchmark and returns its report.
pub fn run(args: &ProxyArgs) -> Result<String> {
    if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))? != 0 {
        bail!("shoal-bench proxy builds network namespaces and nftables tables: run it as root");
    }
    if args.services == 0 || args.endpoints == 0 {
        bail!("--services and --endpoints must be at least 1");
    }
    let node = Netns::add("node")?;
    let backend = Netns::add("backend")?;
    let client = Netns::add("client")?;
    node.enter(|| {
        write_sysctl("net.ipv4.ip_forward", "1")?;
        if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            let on = if args.br_netfilter { "1" } else { "0" };
            write_sysctl("net.bridge.bridge-nf-call-iptables", on)?;
        }
        Ok(())
    })?;
    node.ip(&["link", "add", "br0", "type", "bridge"])?;
    node.ip(&["addr", "add", "10.88.0.1/24", "dev", "br0"])?;
    node.ip(&["link", "set", "br0", "up"])?;
    for (pod, address, host) in [(&backend, BACKEND, "vb0"), (&client, "10.88.0.3", "vc0")] {
        node.ip(&[
            "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ])?;
        node.ip(&["link", "set", host, "master", "br0", "up"])?;
        pod.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        pod.ip(&["route", "add", "default", "via", "10.88.0.1"])?;
    }

    let mut report = String::new();
    // As the proxy configures itself (run.rs): same-bridge traffic is masqueraded only
    // without br_netfilter, or for hairpin.
    let table = TableConfig {
        cluster_cidr: Some((Ipv4Addr::new(10, 88, 0, 0), 16)),
        pod_bridge: Some("br0".into()),
        bridge_calls_iptables: args.br_netfilter,
        ..TableConfig::new("shoal-proxy")
    };
    let context = NodeContext {
        node_name: "bench".into(),
        ..NodeContext::default()
    };
    let services: Vec<Service> = (0..args.services).map(service).collect::<Result<_>>()?;
    let mut slices: Vec<EndpointSlice> = (0..args.services)
        .map(|i| slice(i, args.endpoints, None))
        .collect::<Result<_>>()?;

    node.enter(|| {
        let tables = Nftables::current();
        let mut blocks = Blocks::default();
        for round in ["from scratch", "over the existing tables"] {
            let started = Instant::now();
            let model: Vec<Vec<ServicePort>> = services
                .iter()
                .zip(&slices)
                .map(|(s, sl)| service_ports(s, [sl], &context))
                .collect();
            let modelled = started.elapsed();
            let tx = render::full(&table, model.iter().flatten(), &mut blocks);
            let rendered = started.elapsed();
            let (user_before, sys_before) = thread_cpu();
            tables.apply(&tx)?;
            let total = started.elapsed();
            let (user_after, sys_after) = thread_cpu();
            report.push_str(&format!(
                "full sync {round}: {} Services x {} endpoints: {:.0} ms (model {:.0} ms, render {:.0} ms, netlink transaction {:.0} ms: {:.0} ms CPU encoding, {:.0} ms CPU in the kernel; {} map elements)\n",
                args.services,
                args.endpoints,
                ms(total),
                ms(modelled),
                ms(rendered - modelled),
                ms(total - rendered),
                ms(user_after.saturating_sub(user_before)),
                ms(sys_after.saturating_sub(sys_before)),
                tx.element_count(),
            ));
        }
        if args.compare_nft {
            // The same transaction as an nft script, as the proxy applied it before.
            let model: Vec<Vec<ServicePort>> = services
                .iter()
                .zip(&slices)
                .map(|(s, sl)| service_ports(s, [sl], &context))
                .collect();
            let script = render::full(&table, model.iter().flatten(), &mut blocks).to_string();
            let cpu_before = children_cpu();
            let started = Instant::now();
            Nft::default().apply(&script)?;
            let took = started.elapsed();
            report.push_str(&format!(
                "  the same transaction through `nft -f -`: {:.0} ms (nft {:.0} ms CPU; script {:.1} MiB)\n",
                ms(took),
                ms(children_cpu().saturating_sub(cpu_before)),
                script.len() as f64 / (1024.0 * 1024.0),
            ));
        }
        let mut latencies = Latencies::with_capacity(args.changes);
        let mut current: Vec<Vec<ServicePort>> = services
            .iter()
            .zip(&slices)
            .map(|(s, sl)| service_ports(s, [sl], &context))
            .collect();
        for k in 0..args.changes {
            let i = 1 + (k * 7919) % args.services.saturating_sub(1).max(1);
            let i = i.min(args.services - 1);
            let started = Instant::now();
            slices[i] = slice(i, args.endpoints, Some(k % args.endpoints))?;
            let new = service_ports(&services[i], [&slices[i]], &context);
            let tx = render::incremental(
                &table,
                &[Change {
                    old: &current[i],
                    new: &new,
                }],
                &mut blocks,
            );
            tables.apply(&tx)?;
            latencies.record(started.elapsed());
            current[i] = new;
        }
        if let Some(s) = latencies.summary() {
            report.push_str(&format!(
                "incremental (one endpoint turns unready, {} Services present): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} changes\n",
                args.services,
                ms(s.p50),
                ms(s.p99),
                ms(s.max),
                s.count
            ));
        }
        Ok(())
    })?;

    // The peer: a plain DNAT to the backend, as kube-proxy programs a one-endpoint Service,
    // ahead of our table (a connection is DNATed by the first NAT chain that binds it).
    // Without br_netfilter the reply of a same-bridge pod is bridged past conntrack, so
    // the peer needs the masquerade kube-proxy would need too.
    let mut peer = format!(
        "table ip shoal-bench-peer {{\n  chain prerouting {{ type nat hook prerouting priority -110 ;\n    ip daddr {PEER_VIP} tcp dport 80 dnat to {BACKEND}:{BACKEND_PORT}\n    ip daddr {PEER_VIP} tcp dport {ECHO_SERVICE_PORT} dnat to {BACKEND}:{ECHO_PORT}\n    ip daddr {PEER_VIP} tcp dport {HTTP_SERVICE_PORT} dnat to {BACKEND}:{HTTP_PORT}\n  }}\n"
    );
    if !args.br_netfilter {
        peer.push_str("  chain postrouting { type nat hook postrouting priority 90 ;\n    ct status dnat ct original ip daddr 10.97.0.1 masquerade fully-random\n  }\n");
    }
    peer.push_str("}\n");
    Nft::in_netns(&node.name).apply(&peer)?;
    // The socket LB: Service 0's ports translated at connect() for the processes of its cgroup.
    let socket_lb = sock_lb::SocketLb::start(&service_ports(&services[0], [&slices[0]], &context))?;

    if args.connections > 0 {
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = Arc::clone(&stop);
            let path = backend.path();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || -> Result<()> {
                setns(&File::open(&path)?, CloneFlags::CLONE_NEWNET)?;
                let echo = TcpListener::bind((BACKEND, ECHO_PORT))?;
                // Echo connections, each on its own thread, for as long as the client keeps them.
                std::thread::spawn(move || {
                    for conn in echo.incoming().flatten() {
                        std::thread::spawn(move || {
                            let mut conn = conn;
                            let mut byte = [0u8; 1];
                            while conn.read_exact(&mut byte).is_ok() {
                                if conn.write_all(&byte).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                });
                let listener = TcpListener::bind((BACKEND, BACKEND_PORT))?;
                listener.set_nonblocking(true)?;
                let _ = ready_tx.send(());
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            conn.set_nonblocking(false)?;
                            let _ = conn.write_all(b"ok");
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::yield_now();
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            });
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .context("backend did not start")?;
            thread
        };
        let direct = SocketAddrV4::new(BACKEND.parse()?, BACKEND_PORT);
        let cluster_ip = SocketAddrV4::new(vip(0), 80);
        let peer_ip: Ipv4Addr = PEER_VIP.parse()?;
        let peer_vip = SocketAddrV4::new(peer_ip, 80);
        let socket_lb = &socket_lb;
        let measured = client.enter(|| {
            let rounds = 10;
            let per_round = args.connections.div_ceil(rounds);
            let mut conns: [Latencies; 4] = Default::default();
            for _ in 0..rounds {
                for (k, (target, out)) in [direct, cluster_ip, cluster_ip, peer_vip]
                    .into_iter()
                    .zip(conns.iter_mut())
                    .enumerate()
                {
                    let _in_cgroup = socket_lb.inside(k == SOCKET_LB)?;
                    for _ in 0..per_round {
                        let started = Instant::now();
                        let mut conn = TcpStream::connect_timeout(
                            &SocketAddr::V4(target),
                            Duration::from_secs(2),
                        )
                        .with_context(|| format!("connect to {target}"))?;
                        let mut reply = [0u8; 2];
                        conn.read_exact(&mut reply)?;
                        out.record(started.elapsed());
                        // Translated at connect(): the socket's peer is the backend itself
                        // (through nftables it stays the ClusterIP).
                        let at_backend = conn.peer_addr()?.ip() == IpAddr::V4(*direct.ip());
                        if at_backend != (k == SOCKET_LB || k == 0) {
                            bail!("target {k} ({target}): connected to {}", conn.peer_addr()?);
                        }
                    }
                }
            }
            // Round trips of one byte on one kept-alive connection per target.
            let mut echoes: [Latencies; 4] = Default::default();
            let mut streams = [
                TcpStream::connect((BACKEND, ECHO_PORT))?,
                TcpStream::connect((vip(0), ECHO_SERVICE_PORT))?,
                {
                    let _in_cgroup = socket_lb.inside(true)?;
                    TcpStream::connect((vip(0), ECHO_SERVICE_PORT))?
                },
                TcpStream::connect((peer_ip, ECHO_SERVICE_PORT))?,
            ];
            for stream in &streams {
                stream.set_nodelay(true)?;
            }
            for _ in 0..rounds {
                for (stream, out) in streams.iter_mut().zip(echoes.iter_mut()) {
                    for _ in 0..per_round {
                        let started = Instant::now();
                        stream.write_all(b"x")?;
                        let mut byte = [0u8; 1];
                        stream.read_exact(&mut byte)?;
                        out.record(started.elapsed());
                    }
                }
            }
            Ok((conns, echoes))
        });
        stop.store(true, Ordering::Relaxed);
        let served = server.join().map_err(|_| anyhow!("backend panicked"))?;
        let (mut conns, mut echoes) = measured?;
        served?;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let line = |what: &str, all: &mut [Latencies; 4]| -> Result<String> {
            let [Some(d), Some(v), Some(s), Some(p)] = all.each_mut().map(|l| l.summary()) else {
                bail!("nothing measured");
            };
            Ok(format!(
                "{what}: direct p50 {:.0} µs p99 {:.0} µs; ClusterIP p50 {:.0} µs p99 {:.0} µs ({:+.1}% at p50); ClusterIP with the socket LB p50 {:.0} µs p99 {:.0} µs ({:+.1}%); peer's plain DNAT p50 {:.0} µs p99 {:.0} µs ({:+.1}%)\n",
                us(d.p50),
                us(d.p99),
                us(v.p50),
                us(v.p99),
                (us(v.p50) / us(d.p50) - 1.0) * 100.0,
                us(s.p50),
                us(s.p99),
                (us(s.p50) / us(d.p50) - 1.0) * 100.0,
                us(p.p50),
                us(p.p99),
                (us(p.p50) / us(d.p50) - 1.0) * 100.0,
            ))
        };
        report.push_str(&line(
            &format!(
                "per connection (connect + 2-byte reply + close, {} each, {} Services in the table)",
                conns[0].len(),
                args.services
            ),
            &mut conns,
        )?);
        report.push_str(&line(
            "per request on a kept-alive connection (1-byte echo)",
            &mut echoes,
        )?);
    }
    if args.http_requests > 0 {
        report.push_str(&http_figures(args, &backend, &client, &socket_lb)?);
    }
    Ok(report)
}

/// `hey` and `wrk` against the backend's HTTP server: each mode against each target in turn,
/// for `--http-rounds` rounds.
fn http_figures(
    args: &ProxyArgs,
    backend: &Netns,
    client: &Netns,
    socket_lb: &sock_lb::SocketLb,
) -> Result<String> {
    let tools = http::Tools::find()?;
    let cpu = match args.http_cpu.as_str() {
        "none" => None,
        n => Some(
            n.parse::<usize>()
                .context("--http-cpu: a CPU number or `none`")?,
        ),
    };
    // Kept-alive connections each hold a worker; new ones take turns.
    let server = http::HttpServer::start(
        backend.path(),
        SocketAddrV4::new(BACKEND.parse()?, HTTP_PORT),
        2 * args.http_concurrency + 2,
        cpu,
    )?;
    let load = http::Load {
        requests: args.http_requests,
        seconds: args.wrk_seconds,
        concurrency: args.http_concurrency,
    };
    let targets = [
        SocketAddrV4::new(BACKEND.parse()?, HTTP_PORT),
        SocketAddrV4::new(vip(0), HTTP_SERVICE_PORT),
        SocketAddrV4::new(vip(0), HTTP_SERVICE_PORT),
        SocketAddrV4::new(PEER_VIP.parse()?, HTTP_SERVICE_PORT),
    ];
    // Each target is reached from an address of its own: the backend sees the same address
    // and port pairs from all three otherwise (no masquerade), and a port reused across
    // targets would meet the previous connection's TIME_WAIT socket or conntrack entry.
    // (The socket LB's connections go to the backend's own address, as direct ones do.)
    for (address, target) in [("10.88.0.4", targets[1]), ("10.88.0.5", targets[3])] {
        client.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        let to = format!("{}/32", target.ip());
        client.ip(&["route", "add", &to, "via", "10.88.0.1", "src", address])?;
    }
    let runs = client.enter(|| {
        // A new connection per request cycles through ports quickly; the client pod's range
        // and TIME_WAIT reuse are its own (per namespace).
        write_sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        write_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        // The tools inherit this thread's CPU.
        if let Some(cpu) = cpu {
            http::pin(cpu)?;
        }
        let mut runs: Vec<[Vec<http::HttpRun>; 4]> =
            http::Mode::ALL.iter().map(|_| Default::default()).collect();
        for _ in 0..args.http_rounds.max(1) {
            for (mode, by_target) in http::Mode::ALL.into_iter().zip(runs.iter_mut()) {
                for (k, (target, out)) in targets.into_iter().zip(by_target.iter_mut()).enumerate()
                {
                    let _in_cgroup = socket_lb.inside(k == SOCKET_LB)?;
                    out.push(tools.run(mode, target, load)?);
                }
            }
        }
        Ok(runs)
    });
    server.stop()?;
    let mut report = format!(
        "HTTP ({} rounds, medians over rounds; concurrency {}; hey {} requests, wrk {} s per target and round):\n",
        args.http_rounds.max(1),
        args.http_concurrency,
        args.http_requests,
        args.wrk_seconds
    );
    for (mode, by_target) in http::Mode::ALL.into_iter().zip(runs?) {
        let [Some(d), Some(v), Some(s), Some(p)] = by_target.map(|runs| http::figure(&runs)) else {
            bail!("nothing measured for {}", mode.describe());
        };
        report.push_str("  ");
        report.push_str(&http::line(mode, &[d, v, s, p]));
    }
    Ok(report)
}
