//! `shoal-bench lab`: how fast a cluster forms and what it costs at rest — a lab (e2e's
//! network-namespace nodes) is built from nothing: time from `shoal server` start to its node
//! Ready (with everything built in running: API, control plane, agent, containerd), time for
//! each agent from start to Ready, and until its pause image is in containerd (built while
//! the node registers: the first pod's sandbox waits for it), then the memory of every node's
//! `shoal` and containerd after the cluster has been idle a while, and their CPU over that
//! idle time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};

use crate::lab::Lab;
use crate::process::{cpu_seconds, rss_mib};

/// Flags of `shoal-bench lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// The `shoal` binary.
    #[arg(long, default_value = "target/release/shoal")]
    pub binary: PathBuf,
    /// Agents joining the server.
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// How long the cluster idles before memory and CPU are read.
    #[arg(long, default_value_t = 30)]
    pub idle_seconds: u64,
}

/// Node name → when kubectl first saw it Ready.
fn ready_nodes(lab: &Lab) -> BTreeMap<String, bool> {
    let out = lab.kubectl.run(&["get", "nodes", "-o", "json"], None);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|n| {
            let name = n["metadata"]["name"].as_str()?.to_string();
            Some((name, crate::kubectl::is_ready(n)))
        })
        .collect()
}

fn wait_ready(lab: &Lab, name: &str, since: Instant, timeout: Duration) -> Result<Duration> {
    loop {
        if ready_nodes(lab).get(name).copied().unwrap_or(false) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            bail!("{name} not Ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `RssAnon` and `RssFile` of a process, in MiB.
fn rss_split_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((kib("RssAnon:")? / 1024.0, kib("RssFile:")? / 1024.0))
}

/// The log line of an agent whose pause image is in containerd.
const PAUSE_READY: &str = "pause image ready";

/// When node `index` logged [`PAUSE_READY`], waiting for it up to `timeout`.
fn pause_image_ready(lab: &Lab, index: usize, timeout: Duration) -> Result<SystemTime> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = lab.nodes[index].log_text();
        let stamp = log
            .lines()
            .find(|l| l.contains(PAUSE_READY))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|t| k8s_openapi::jiff::Timestamp::from_str(t).ok());
        if let Some(stamp) = stamp {
            return Ok(stamp.into());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: no {PAUSE_READY:?} within {timeout:?}",
                lab.nodes[index].name
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(args: &LabArgs) -> Result<String> {
    if !args.binary.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p shoal) or pass --binary",
            args.binary.display()
        );
    }
    let mut lab = Lab::new(&args.binary);
    let started = Instant::now();
    let mut started_at = vec![SystemTime::now()];
    lab.add_server(&[]);
    let serving = started.elapsed();
    let server_ready = wait_ready(&lab, "server-0", started, Duration::from_secs(120))?;
    let mut joins = Vec::new();
    for _ in 0..args.agents {
        let started = Instant::now();
        started_at.push(SystemTime::now());
        let index = lab.add_agent(&[]);
        let name = lab.nodes[index].name.clone();
        joins.push((
            name.clone(),
            wait_ready(&lab, &name, started, Duration::from_secs(120))?,
        ));
    }

    // The idle window starts once every node has its pause image (an import is not idle).
    let mut pause_ready = Vec::new();
    for (index, start) in started_at.iter().enumerate() {
        let at = pause_image_ready(&lab, index, Duration::from_secs(120))?;
        pause_ready.push(at.duration_since(*start).unwrap_or_default());
    }
    let cpu_before: Vec<(Option<f64>, Option<f64>)> = (0..lab.nodes.len())
        .map(|i| {
            (
                lab.pid(i).and_then(cpu_seconds),
                lab.containerd_pid(i).and_then(cpu_seconds),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.idle_seconds));
    let idle = args.idle_seconds as f64;
    let mut report = format!(
        "| figure | value |\n|---|---|\n| `shoal server` start → API serving | {:.2} s |\n| `shoal server` start → its node Ready | {:.2} s |\n",
        serving.as_secs_f64(),
        server_ready.as_secs_f64(),
    );
    for (name, took) in &joins {
        report += &format!(
            "| `shoal agent` start → {name} Ready (join included) | {:.2} s |\n",
            took.as_secs_f64()
        );
    }
    for (node, took) in lab.nodes.iter().zip(&pause_ready) {
        report += &format!(
            "| {} start → pause image in containerd (sandboxes can start) | {:.2} s |\n",
            node.name,
            took.as_secs_f64()
        );
    }
    for (i, node) in lab.nodes.iter().enumerate() {
        let shoal = lab.pid(i).and_then(rss_mib).unwrap_or(0.0);
        // Resident memory of the process's own (heap, stacks) and of files it maps (mostly
        // the binary's code, shared by every process running it).
        let (anon, file) = lab.pid(i).and_then(rss_split_mib).unwrap_or_default();
        let containerd = lab.containerd_pid(i).and_then(rss_mib).unwrap_or(0.0);
        let cpu = |before: Option<f64>, pid: Option<u32>| match (before, pid.and_then(cpu_seconds))
        {
            (Some(b), Some(a)) => format!("{:.1}%", (a - b) / idle * 100.0),
            _ => "—".into(),
        };
        let role = if node.server { "server+agent" } else { "agent" };
        report += &format!(
            "| {} ({role}) idle RSS: shoal / containerd | {shoal:.0} / {containerd:.0} MiB |\n| {} idle RSS of shoal: anonymous / file-backed | {anon:.1} / {file:.1} MiB |\n| {} idle CPU: shoal / containerd | {} / {} |\n",
            node.name,
            node.name,
            node.name,
            cpu(cpu_before[i].0, lab.pid(i)),
            cpu(cpu_before[i].1, lab.containerd_pid(i)),
        );
    }
    Ok(report)
}
