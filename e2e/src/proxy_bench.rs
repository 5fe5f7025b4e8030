//! `shoal-bench proxy`: the nftables Service proxy in a scratch network namespace (a "node"
//! with a bridge, one backend pod and one client pod, all deleted at the end).
//!
//! - Full sync: N Services × M endpoints from objects to a live table — model, render and
//!   `nft -f -` timed apart; then again over the existing table (an agent restart).
//! - Incremental: one endpoint of one Service turns unready with N Services present, until
//!   nft's transaction is committed (the rule is live then), repeated.
//! - Per-connection cost: new TCP connections (connect, read a short reply, close) from the
//!   client pod to the backend directly and through a ClusterIP, alternating in rounds.
//!
//! The node's `bridge-nf-call-iptables` is off unless `--br-netfilter`: the direct path is
//! then plain bridging and the ClusterIP path is routed, DNATed and masqueraded, so the
//! difference is everything a Service adds; with it on, both go through conntrack.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
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
use shoal_net::proxy::nft::Nft;
use shoal_net::proxy::render::{self, Blocks, Change, TableConfig};

use crate::latency::Latencies;

/// Flags of `shoal-bench proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Services in the table.
    #[arg(long, default_value_t = 10_000)]
    pub services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Incremental changes timed.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Connections per target (direct and ClusterIP) in the per-connection comparison; 0 skips.
    #[arg(long, default_value_t = 4_000)]
    pub connections: usize,
    /// Leave `br_netfilter` on in the node namespace (bridged pod traffic then goes through
    /// conntrack too, as on most hosts); off by default.
    #[arg(long)]
    pub br_netfilter: bool,
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
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).with_context(|| format!("open {path:?}"))?;
                setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in {} panicked", self.name))?
        })
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

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

fn endpoint_ip(i: usize, j: usize, per: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + (i * per + j) as u32)
}

/// Service `i`; Service 0 also has the echo port.
fn service(i: usize) -> Result<Service> {
    let mut ports = vec![json!({"name": "http", "port": 80, "protocol": "TCP"})];
    if i == 0 {
        ports.push(json!({"name": "echo", "port": ECHO_SERVICE_PORT, "protocol": "TCP"}));
    }
    Ok(serde_json::from_value(json!({
        "metadata": {"namespace": "bench", "name": format!("svc-{i}")},
        "spec": {"clusterIP": vip(i).to_string(), "ports": ports}
    }))?)
}

/// Service `i`'s slice; endpoint `unready` (if any) is not ready. Service 0 has the real
/// backend as its only endpoint.
fn slice(i: usize, per: usize, unready: Option<usize>) -> Result<EndpointSlice> {
    let endpoints: Vec<_> = if i == 0 {
        vec![json!({"addresses": [BACKEND], "nodeName": "bench"})]
    } else {
        (0..per)
            .map(|j| {
                let ready = unready != Some(j);
                json!({"addresses": [endpoint_ip(i, j, per).to_string()], "nodeName": "bench",
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
                  {"name": "echo", "port": ECHO_PORT, "protocol": "TCP"}]
    }))?)
}

/// CPU time (user + system) of this process's waited-for children so far (`nft`), from
/// `/proc/self/stat` (clock ticks, 100 per second on Linux).
fn children_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): cutime and cstime are
    // the 14th and 15th of them.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(13)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
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
    let table = TableConfig {
        table: "shoal-proxy".into(),
        cluster_cidr: Some((Ipv4Addr::new(10, 88, 0, 0), 16)),
        pod_bridge: Some("br0".into()),
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
        let nft = Nft::default();
        let mut blocks = Blocks::default();
        for round in ["from scratch", "over the existing table"] {
            let started = Instant::now();
            let model: Vec<Vec<ServicePort>> = services
                .iter()
                .zip(&slices)
                .map(|(s, sl)| service_ports(s, [sl], &context))
                .collect();
            let modelled = started.elapsed();
            let script = render::full(&table, model.iter().flatten(), &mut blocks);
            let rendered = started.elapsed();
            let cpu_before = children_cpu();
            nft.apply(&script)?;
            let total = started.elapsed();
            let nft_cpu = children_cpu().saturating_sub(cpu_before);
            report.push_str(&format!(
                "full sync {round}: {} Services x {} endpoints: {:.0} ms (model {:.0} ms, render {:.0} ms, nft {:.0} ms of which {:.0} ms CPU; script {:.1} MiB)\n",
                args.services,
                args.endpoints,
                ms(total),
                ms(modelled),
                ms(rendered - modelled),
                ms(total - rendered),
                ms(nft_cpu),
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
            let script = render::incremental(
                &table,
                &[Change {
                    old: &current[i],
                    new: &new,
                }],
                &mut blocks,
            );
            nft.apply(&script)?;
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
        let measured = client.enter(|| {
            let rounds = 10;
            let per_round = args.connections.div_ceil(rounds);
            let mut direct_l = Latencies::with_capacity(args.connections);
            let mut vip_l = Latencies::with_capacity(args.connections);
            for _ in 0..rounds {
                for (target, out) in [(direct, &mut direct_l), (cluster_ip, &mut vip_l)] {
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
                    }
                }
            }
            // Round trips of one byte on one kept-alive connection per target.
            let mut echo_direct = Latencies::with_capacity(args.connections);
            let mut echo_vip = Latencies::with_capacity(args.connections);
            let mut conns = [
                TcpStream::connect((BACKEND, ECHO_PORT))?,
                TcpStream::connect((vip(0), ECHO_SERVICE_PORT))?,
            ];
            for conn in &conns {
                conn.set_nodelay(true)?;
            }
            for _ in 0..rounds {
                for (k, out) in [&mut echo_direct, &mut echo_vip].into_iter().enumerate() {
                    for _ in 0..per_round {
                        let started = Instant::now();
                        conns[k].write_all(b"x")?;
                        let mut byte = [0u8; 1];
                        conns[k].read_exact(&mut byte)?;
                        out.record(started.elapsed());
                    }
                }
            }
            Ok((direct_l, vip_l, echo_direct, echo_vip))
        });
        stop.store(true, Ordering::Relaxed);
        let served = server.join().map_err(|_| anyhow!("backend panicked"))?;
        let (mut direct_l, mut vip_l, mut echo_direct, mut echo_vip) = measured?;
        served?;
        let (Some(d), Some(v)) = (direct_l.summary(), vip_l.summary()) else {
            bail!("no connections measured");
        };
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        report.push_str(&format!(
            "per connection (connect + 2-byte reply + close, {} each, {} Services in the table): direct p50 {:.0} µs p99 {:.0} µs; ClusterIP p50 {:.0} µs p99 {:.0} µs; ClusterIP overhead at p50 {:+.1}%\n",
            d.count,
            args.services,
            us(d.p50),
            us(d.p99),
            us(v.p50),
            us(v.p99),
            (us(v.p50) / us(d.p50) - 1.0) * 100.0
        ));
        if let (Some(d), Some(v)) = (echo_direct.summary(), echo_vip.summary()) {
            report.push_str(&format!(
                "per request on a kept-alive connection (1-byte echo, {} each): direct p50 {:.0} µs p99 {:.0} µs; ClusterIP p50 {:.0} µs p99 {:.0} µs; ClusterIP overhead at p50 {:+.1}%\n",
                d.count,
                us(d.p50),
                us(d.p99),
                us(v.p50),
                us(v.p99),
                (us(v.p50) / us(d.p50) - 1.0) * 100.0
            ));
        }
    }
    Ok(report)
}
