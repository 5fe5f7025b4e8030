//! `shoal-bench overlay`: TCP throughput between pods across the VXLAN overlay, against the
//! same two "nodes" talking directly (the host path) and two pods on one node (the bridge).
//!
//! The nodes are network namespaces whose `eth0` sits on a bridge in a third "LAN" namespace
//! (192.168.254.0/24, MTU 1500); each runs the real overlay code
//! ([`shoal_net::overlay`]) and gets pods through the real CNI plugin, as in
//! `net/tests/overlay.rs`. One TCP stream per measurement, the sender writing 128 KiB chunks
//! for the given time; the receiver counts bytes from the first to the last. Everything
//! lives in `shoalbench-<pid>-*` namespaces, deleted at the end (also on error). Needs root.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use nix::sched::{setns, CloneFlags};
use shoal_common::Cidr;
use shoal_net::cni::{self, Command, Request};
use shoal_net::overlay::{Overlay, OverlayConfig};

/// Flags of `shoal-bench overlay`.
#[derive(Debug, Clone, clap::Args)]
pub struct OverlayArgs {
    /// Seconds each stream runs.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Streams per path (the table shows the median, and the range).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// A network namespace made by `ip netns add`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn add(suffix: &str) -> Result<Netns> {
        let name = format!("shoalbench-{}-{suffix}", std::process::id());
        ip(&["netns", "add", &name])?;
        Ok(Netns { name })
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Process::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Process::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside `netns`.
fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("a thread in {} panicked", netns.display()))?
    })
}

struct BenchNode {
    ns: Netns,
    pods: Vec<(Netns, IpAddr)>,
    config: OverlayConfig,
    ipam: tempfile::TempDir,
}

fn make_node(lan: &Netns, n: u8) -> Result<BenchNode> {
    let ns = Netns::add(&format!("n{n}"))?;
    let up = format!("up{n}");
    lan.ip(&[
        "link", "add", &up, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ])?;
    lan.ip(&["link", "set", &up, "master", "lan0", "up"])?;
    let node_ip = format!("192.168.254.{n}");
    ns.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["link", "set", "lo", "up"])?;
    Ok(BenchNode {
        ns,
        pods: Vec::new(),
        config: OverlayConfig {
            node_name: format!("node-{n}"),
            node_ips: vec![node_ip.parse()?],
            pod_cidrs: vec![format!("10.42.{n}.0/24").parse::<Cidr>()?],
            cluster_cidrs: vec!["10.42.0.0/16".parse::<Cidr>()?],
        },
        ipam: tempfile::tempdir()?,
    })
}

/// Runs the overlay on `node` (setup, then a sync with `nodes` when given); returns its
/// annotations and the pods' MTU.
fn run_overlay(
    node: &BenchNode,
    nodes: Option<&[Node]>,
) -> Result<(BTreeMap<String, String>, u32)> {
    in_netns(&node.ns.path(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let overlay = Overlay::setup(&node.config).await?;
            if let Some(nodes) = nodes {
                overlay.sync(nodes).await?;
            }
            Ok((overlay.annotations(), overlay.mtu()))
        })
    })
}

fn node_object(node: &BenchNode, annotations: &BTreeMap<String, String>) -> Node {
    let subnet = node.config.pod_cidrs[0].to_string();
    Node {
        metadata: ObjectMeta {
            name: Some(node.config.node_name.clone()),
            annotations: Some(annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(subnet.clone()),
            pod_cidrs: Some(vec![subnet]),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// Adds a pod to `node` through the CNI plugin.
fn add_pod(node: &mut BenchNode, mtu: u32) -> Result<()> {
    let i = node.pods.len();
    let pod = Netns::add(&format!("{}-p{i}", node.config.node_name))?;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "shoalbench",
        "type": "shoal-cni",
        "bridge": "shoal0",
        "subnet": node.config.pod_cidrs[0].to_string(),
        "mtu": mtu,
        "dataDir": node.ipam.path(),
    })
    .to_string();
    let request = Request {
        command: Command::Add,
        container_id: format!("{}-{i}", pod.name),
        netns: Some(pod.path()),
        ifname: "eth0".to_string(),
        args: Vec::new(),
        path: Vec::new(),
    };
    let out = in_netns(&node.ns.path(), || {
        cni::execute(&request, conf.as_bytes()).map_err(|e| anyhow!("CNI ADD: {e}"))
    })?;
    let result: serde_json::Value = serde_json::from_str(&out)?;
    let address: IpAddr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("no address in {out}"))?;
    node.pods.push((pod, address));
    Ok(())
}

/// One TCP stream from `client` to `server`'s `at` for `time`: Gbit/s as the receiver saw it.
fn stream(client: &Netns, server: &Netns, at: SocketAddr, time: Duration) -> Result<f64> {
    let listener = in_netns(&server.path(), || Ok(TcpListener::bind(at)?))?;
    let receiver = std::thread::spawn(move || -> Result<(usize, Duration)> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0;
        let mut first = None;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            total += n;
        }
        Ok((total, first.map(|t| t.elapsed()).unwrap_or_default()))
    });
    let mut conn = in_netns(&client.path(), || {
        Ok(TcpStream::connect_timeout(&at, Duration::from_secs(3))?)
    })
    .with_context(|| format!("connecting to {at}"))?;
    let chunk = vec![0x5au8; 128 << 10];
    let end = Instant::now() + time;
    while Instant::now() < end {
        conn.write_all(&chunk)?;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    let (bytes, elapsed) = receiver
        .join()
        .map_err(|_| anyhow!("the receiver panicked"))??;
    if elapsed.is_zero() {
        bail!("nothing arrived at {at}");
    }
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}

/// Runs the benchmark; returns the Markdown table.
pub fn run(args: &OverlayArgs) -> Result<String> {
    if !std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
    {
        bail!("shoal-bench overlay needs root (network namespaces, VXLAN, nftables)");
    }
    if args.rounds == 0 || args.seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    let lan = Netns::add("lan")?;
    lan.ip(&["link", "add", "lan0", "type", "bridge"])?;
    lan.ip(&["link", "set", "lan0", "up"])?;
    let mut one = make_node(&lan, 1)?;
    let mut two = make_node(&lan, 2)?;
    let (notes1, mtu) = run_overlay(&one, None)?;
    let (notes2, _) = run_overlay(&two, None)?;
    let nodes = [node_object(&one, &notes1), node_object(&two, &notes2)];
    run_overlay(&one, Some(&nodes))?;
    run_overlay(&two, Some(&nodes))?;
    add_pod(&mut one, mtu)?;
    add_pod(&mut one, mtu)?;
    add_pod(&mut two, mtu)?;

    let time = Duration::from_secs(args.seconds);
    let node2_ip: IpAddr = "192.168.254.2".parse()?;
    let paths: [(&str, u32, &Netns, &Netns, IpAddr); 3] = [
        (
            "node → node, direct (host path)",
            1500,
            &one.ns,
            &two.ns,
            node2_ip,
        ),
        (
            "pod → pod, same node (bridge)",
            mtu,
            &one.pods[0].0,
            &one.pods[1].0,
            one.pods[1].1,
        ),
        (
            "pod → pod, across nodes (VXLAN)",
            mtu,
            &one.pods[0].0,
            &two.pods[0].0,
            two.pods[0].1,
        ),
    ];
    let mut table =
        String::from("| path | MTU | throughput (Gbit/s, median) | range |\n|---|---:|---:|---|\n");
    let mut port = 7100;
    for (label, path_mtu, client, server, address) in paths {
        let mut rates = Vec::new();
        for _ in 0..args.rounds {
            port += 1;
            rates.push(stream(
                client,
                server,
                SocketAddr::new(address, port),
                time,
            )?);
        }
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        let (low, high) = (rates[0], rates[rates.len() - 1]);
        table.push_str(&format!(
            "| {label} | {path_mtu} | {median:.2} | {low:.2}–{high:.2} |\n"
        ));
    }
    Ok(table)
}
