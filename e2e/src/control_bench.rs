//! `shoal-bench control-plane`: the scheduler and controllers at scale — the real
//! `shoal server` with `shoal simulate-nodes` registering a fleet of simulated nodes (the same
//! API a real agent uses), driven over HTTPS with kube-rs. Figures: pods bound per second when
//! many unscheduled pods arrive at once, and the time from creating a large Deployment until
//! all its pods run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config};

use crate::server::{free_port, ShoalServer};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// The shoal binary to start (default: `shoal` next to this benchmark).
    #[arg(long)]
    pub shoal: Option<PathBuf>,
    /// Simulated nodes.
    #[arg(long, default_value_t = 1_000)]
    pub nodes: usize,
    /// Unscheduled pods created at once for the scheduling figure.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Replicas of the Deployment.
    #[arg(long, default_value_t = 10_000)]
    pub replicas: i32,
    /// Concurrent clients creating pods.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Where the server's data directory goes (a real disk).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

/// A `shoal simulate-nodes` process, killed on drop.
struct Simulator(Child);

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_simulator(binary: &Path, kubeconfig: &Path, nodes: usize) -> Result<Simulator> {
    let mut child = Command::new(binary)
        .args([
            "simulate-nodes",
            "--count",
            &nodes.to_string(),
            "--kubeconfig",
        ])
        .arg(kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting shoal simulate-nodes")?;
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let simulator = Simulator(child);
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("simulated nodes registered") => break,
            Some(Ok(_)) => {}
            _ => bail!("the simulator stopped before registering its nodes"),
        }
    }
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(simulator)
}

fn pending_pod(name: String) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "sched-bench"}},
        "spec": {"containers": [{"name": "c", "image": "registry.local/app:1",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    }))
    .unwrap_or_default()
}

/// Waits until `count` pods of `selector` satisfy `done`; returns when. Counts per event
/// (no re-scan of every pod), so the watcher keeps up with thousands of pods.
async fn wait_for_pods(
    client: &Client,
    selector: &str,
    count: usize,
    timeout: Duration,
    done: impl Fn(&Pod) -> bool,
) -> Result<Instant> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut stream = watcher(api, watcher::Config::default().labels(selector))
        .default_backoff()
        .boxed();
    let mut satisfied = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(event)) => event?,
            Ok(None) => bail!("the pod watch ended"),
            Err(_) => bail!("{}/{count} done within {timeout:?}", satisfied.len()),
        };
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if done(&pod) {
                    satisfied.insert(name);
                } else {
                    satisfied.remove(&name);
                }
            }
            watcher::Event::Delete(pod) => {
                satisfied.remove(&pod.metadata.name.clone().unwrap_or_default());
            }
            watcher::Event::Init => satisfied.clear(),
            watcher::Event::InitDone => {}
        }
        if satisfied.len() >= count {
            return Ok(Instant::now());
        }
    }
}

fn bound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some()
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Runs the workloads and returns the Markdown report.
pub async fn run(args: ControlPlaneArgs) -> Result<String> {
    let binary = match &args.shoal {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("shoal"),
    };
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-control-")
        .tempdir_in(&args.dir)?;
    let server = ShoalServer::start(&binary, dir.path(), free_port()?, &["--disable-agent"])?;
    let kubeconfig = server.kubeconfig();
    let config = Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    let mut rows = Vec::new();

    eprintln!("registering {} simulated nodes", args.nodes);
    let t = Instant::now();
    let _simulator = start_simulator(&binary, &kubeconfig, args.nodes)?;
    rows.push(format!(
        "| register {} simulated nodes | seconds | {:.1} |",
        args.nodes,
        t.elapsed().as_secs_f64()
    ));

    eprintln!("a Deployment of {} replicas", args.replicas);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "big"},
        "spec": {"replicas": args.replicas, "selector": {"matchLabels": {"app": "big"}},
            "template": {"metadata": {"labels": {"app": "big"}},
                "spec": {"containers": [{"name": "c", "image": "registry.local/app:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}},
    }))?;
    let started = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let replicas = usize::try_from(args.replicas).unwrap_or(0);
    let all_running = wait_for_pods(
        &client,
        "app=big",
        replicas,
        Duration::from_secs(600),
        running,
    )
    .await?;
    rows.push(format!(
        "| Deployment of {} replicas on {} nodes | seconds from create until all Running | {:.1} |",
        args.replicas,
        args.nodes,
        all_running.duration_since(started).as_secs_f64()
    ));
    eprintln!("scheduling {} pods", args.pods);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let clients = args.clients.max(1);
    for c in 0..clients {
        let (pods, count) = (pods.clone(), args.pods);
        tasks.spawn(async move {
            for i in (c..count).step_by(clients) {
                pods.create(&PostParams::default(), &pending_pod(format!("sched-{i}")))
                    .await?;
            }
            Ok::<_, kube::Error>(())
        });
    }
    let total = args.pods;
    let all_bound = wait_for_pods(
        &client,
        "app=sched-bench",
        total,
        Duration::from_secs(600),
        bound,
    );
    let (all_bound, created) = tokio::join!(all_bound, async {
        while let Some(result) = tasks.join_next().await {
            result??;
        }
        Ok::<_, anyhow::Error>(Instant::now())
    });
    let created = created?;
    let all_bound = all_bound?;
    let seconds = all_bound.duration_since(started).as_secs_f64();
    rows.push(format!(
        "| {} unscheduled pods on {} nodes (created by {clients} clients in {:.1} s) | pods bound/s (create of the first → bind of the last) | {:.0} |",
        args.pods,
        args.nodes,
        created.duration_since(started).as_secs_f64(),
        args.pods as f64 / seconds
    ));
    let rss = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0);
    if let Some(rss) = rss {
        rows.push(format!(
            "| server with {} nodes and {} pods | RSS (MiB) | {rss:.0} |",
            args.nodes,
            usize::try_from(args.replicas).unwrap_or(0) + args.pods
        ));
    }
    Ok(format!(
        "| Workload | Metric | Value |\n|---|---|---|\n{}",
        rows.join("\n")
    ))
}
