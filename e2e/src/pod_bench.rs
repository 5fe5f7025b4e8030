//! `shoal-bench pods`: pod startup on a real node — `shoal server` with its agent (its own
//! containerd and runc), a busybox image imported beforehand, pods created through the API and
//! timed until a watch shows them Running. One pod at a time, then a batch created at once;
//! the server's and containerd's memory idle and with the batch running, and CPU while idle.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config};

use crate::latency::Latencies;
use crate::process::{containerd_pid, cpu_seconds, rss_mib};
use crate::server::{free_port, ShoalServer};

/// Flags of `shoal-bench pods`.
#[derive(Debug, Clone, clap::Args)]
pub struct PodArgs {
    /// The `shoal` binary.
    #[arg(long, default_value = "target/release/shoal")]
    pub binary: PathBuf,
    /// Pods started one after another.
    #[arg(long, default_value_t = 10)]
    pub single: usize,
    /// Pods created at once.
    #[arg(long, default_value_t = 30)]
    pub batch: usize,
    /// Where the server's data directory goes (a real disk).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

const IMAGE: &str = "localhost/bench/busybox:1";

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "3600"]}]},
    }))?)
}

/// Creates `names` at once and returns each one's time from its create call to Running.
async fn start_pods(pods: &Api<Pod>, names: &[String]) -> Result<Vec<Duration>> {
    let mut running = std::pin::pin!(watcher(
        pods.clone(),
        watcher::Config::default().labels("app=bench")
    )
    .applied_objects()
    .boxed());
    let mut started: HashMap<String, Instant> = HashMap::new();
    for name in names {
        started.insert(name.clone(), Instant::now());
        let pods = pods.clone();
        let body = pod(name)?;
        tokio::spawn(async move { pods.create(&PostParams::default(), &body).await });
    }
    let mut done: HashMap<String, Duration> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while done.len() < names.len() {
        let next = tokio::time::timeout_at(deadline, running.next())
            .await
            .context("pods did not all run within 120 s")?;
        let Some(Ok(p)) = next else { continue };
        let name = p.metadata.name.clone().unwrap_or_default();
        let is_running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if is_running && !done.contains_key(&name) {
            if let Some(t0) = started.get(&name) {
                done.insert(name, t0.elapsed());
            }
        }
    }
    Ok(names.iter().filter_map(|n| done.get(n).copied()).collect())
}

async fn delete_all(pods: &Api<Pod>) -> Result<()> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete_collection(
        &params,
        &kube::api::ListParams::default().labels("app=bench"),
    )
    .await?;
    for _ in 0..600 {
        if pods
            .list(&kube::api::ListParams::default().labels("app=bench"))
            .await?
            .items
            .is_empty()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow!("pods were not deleted within 60 s"))
}

fn ms(d: &[Duration]) -> String {
    let mut latencies = Latencies::with_capacity(d.len());
    d.iter().for_each(|s| latencies.record(*s));
    match latencies.summary() {
        Some(s) => format!(
            "p50 {:.0} ms, p99 {:.0} ms (n={})",
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.count
        ),
        None => "no samples".into(),
    }
}

/// Runs the benchmark and prints a Markdown table.
pub async fn run(args: &PodArgs) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-pods-")
        .tempdir_in(&args.dir)?;
    let server = ShoalServer::start_with_agent(
        &args.binary,
        dir.path(),
        free_port()?,
        &[
            "--kubelet-port",
            "0",
            "--eviction-hard",
            "nodefs.available<1%",
        ],
    )?;
    let config = Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(server.kubeconfig())?,
        &Default::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let begin = Instant::now();
    while !nodes
        .list(&Default::default())
        .await?
        .items
        .iter()
        .any(ready)
    {
        if begin.elapsed() > Duration::from_secs(120) {
            return Err(anyhow!("the node did not become Ready"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let archive = crate::images::busybox_archive(dir.path(), IMAGE);
    let out = std::process::Command::new(&args.binary)
        .args(["images", "import", "--data-dir"])
        .arg(dir.path())
        .arg(&archive)
        .output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "image import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let containerd = containerd_pid(dir.path())
        .ok_or_else(|| anyhow!("the agent's containerd is not running"))?;

    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_server = rss_mib(server.pid()).unwrap_or(0.0);
    let idle_containerd = rss_mib(containerd).unwrap_or(0.0);
    let cpu_before = cpu_seconds(server.pid()).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let idle_cpu = (cpu_seconds(server.pid()).unwrap_or(0.0) - cpu_before) / 30.0 * 100.0;

    let mut single = Vec::new();
    for i in 0..args.single {
        single.extend(start_pods(&pods, &[format!("single-{i}")]).await?);
        delete_all(&pods).await?;
    }
    let names: Vec<String> = (0..args.batch).map(|i| format!("batch-{i}")).collect();
    let batch = start_pods(&pods, &names).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let busy_server = rss_mib(server.pid()).unwrap_or(0.0);
    let busy_containerd = rss_mib(containerd).unwrap_or(0.0);
    delete_all(&pods).await?;

    println!("| measure | shoal |");
    println!("|---|---|");
    println!("| one pod, create → Running | {} |", ms(&single));
    println!(
        "| {} pods at once, create → Running | {} |",
        args.batch,
        ms(&batch)
    );
    println!(
        "| server+agent RSS idle / with {} pods | {idle_server:.0} / {busy_server:.0} MiB |",
        args.batch
    );
    println!(
        "| containerd RSS idle / with {} pods | {idle_containerd:.0} / {busy_containerd:.0} MiB |",
        args.batch
    );
    println!("| server+agent CPU idle (30 s) | {idle_cpu:.1}% of a core |");
    crate::cluster::wait_for_no_tasks(dir.path(), Duration::from_secs(60));
    let _ = server.stop();
    let _ = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &dir.path().display().to_string()])
        .status();
    Ok(())
}
