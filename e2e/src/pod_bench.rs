//! `shoal-bench pods`: pod startup on a real node — `shoal server` with its agent (its own
//! containerd and runc) on a lab node (e2e's network namespace per node, so the machine's own
//! network is never touched), a busybox image imported beforehand, pods created through the
//! API and timed until a watch shows them Running. One pod at a time, then a batch created at
//! once; the server's and containerd's memory idle and with the batch running, and CPU while
//! idle. Where each batch pod's time went is read back from the agent's debug log (one line
//! per step it took, with its duration): API to the node, sandbox, container start (image
//! check, API lookups, files, CRI create + start) and status to watch; and the CPU the node's
//! processes spent on the batch.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config};

use crate::lab::Lab;
use crate::latency::Latencies;
use crate::process::{cpu_seconds, rss_mib};

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
}

const IMAGE: &str = "localhost/bench/busybox:1";

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "app", "image": IMAGE, "command": ["sleep", "3600"]}]},
    }))?)
}

/// When a pod was created and seen Running, by the wall clock (to line up with the node's log).
#[derive(Debug, Clone, Copy)]
struct Timing {
    created: SystemTime,
    running: Duration,
}

/// Creates `names` at once and returns each one's timing.
async fn start_pods(pods: &Api<Pod>, names: &[String]) -> Result<BTreeMap<String, Timing>> {
    let mut running = std::pin::pin!(watcher(
        pods.clone(),
        watcher::Config::default().labels("app=bench")
    )
    .applied_objects()
    .boxed());
    let mut started: HashMap<String, (Instant, SystemTime)> = HashMap::new();
    for name in names {
        started.insert(name.clone(), (Instant::now(), SystemTime::now()));
        let pods = pods.clone();
        let body = pod(name)?;
        tokio::spawn(async move { pods.create(&PostParams::default(), &body).await });
    }
    let mut done: BTreeMap<String, Timing> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while done.len() < names.len() {
        let next = tokio::time::timeout_at(deadline, running.next())
            .await
            .context("pods did not all run within 120 s")?;
        let Some(Ok(p)) = next else { continue };
        let name = p.metadata.name.clone().unwrap_or_default();
        let is_running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if is_running && !done.contains_key(&name) {
            if let Some((t0, created)) = started.get(&name) {
                let timing = Timing {
                    created: *created,
                    running: t0.elapsed(),
                };
                done.insert(name, timing);
            }
        }
    }
    Ok(done)
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

fn summary(d: impl IntoIterator<Item = Duration>) -> String {
    let mut latencies = Latencies::with_capacity(32);
    d.into_iter().for_each(|s| latencies.record(s));
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

/// One `step` or `container started` line of the agent's debug log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogStep {
    pub at: SystemTime,
    pub pod: String,
    /// `CreateSandbox`, `StartContainer`, … or `started` for the container start breakdown.
    pub what: String,
    /// `ms=` of a step; for `started`: image, lookups, prepare, create+start (ms).
    pub ms: Vec<u64>,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    Some(rest.split([' ', ',']).next().unwrap_or(rest))
}

/// Parses the agent's per-pod step lines (anything else yields `None`).
pub fn parse_step(line: &str) -> Option<LogStep> {
    let stamp = line.split_whitespace().next()?;
    let at: SystemTime = Timestamp::from_str(stamp).ok()?.into();
    let pod = field(line, "pod")?.to_string();
    if line.contains(" step ") || line.ends_with(" step") {
        let action = line.split(" action=").nth(1)?;
        let what: String = action
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        let ms = field(line, "ms")?.parse().ok()?;
        return Some(LogStep {
            at,
            pod,
            what,
            ms: vec![ms],
        });
    }
    if line.contains("container started") {
        let ms = ["image_ms", "lookups_ms", "prepare_ms", "create_start_ms"]
            .iter()
            .map(|k| field(line, k).and_then(|v| v.parse().ok()))
            .collect::<Option<Vec<u64>>>()?;
        return Some(LogStep {
            at,
            pod,
            what: "started".into(),
            ms,
        });
    }
    None
}

/// Where each pod's time went, from its timing and the node's log: (phase, per-pod durations).
fn phases(timings: &BTreeMap<String, Timing>, log: &str) -> Vec<(&'static str, Vec<Duration>)> {
    let mut steps: HashMap<String, Vec<LogStep>> = HashMap::new();
    for step in log.lines().filter_map(parse_step) {
        let name = step.pod.trim_start_matches("default/").to_string();
        steps.entry(name).or_default().push(step);
    }
    let mut out: BTreeMap<usize, (&'static str, Vec<Duration>)> = BTreeMap::new();
    let mut add = |order: usize, phase: &'static str, d: Duration| {
        out.entry(order).or_insert((phase, Vec::new())).1.push(d);
    };
    for (name, timing) in timings {
        let Some(steps) = steps.get(name) else {
            continue;
        };
        let ms = Duration::from_millis;
        let sandbox = steps.iter().find(|s| s.what == "CreateSandbox");
        let start = steps.iter().find(|s| s.what == "StartContainer");
        let breakdown = steps.iter().find(|s| s.what == "started");
        let (Some(sandbox), Some(start), Some(breakdown)) = (sandbox, start, breakdown) else {
            continue;
        };
        let first_began = sandbox.at - ms(sandbox.ms[0]);
        if let Ok(d) = first_began.duration_since(timing.created) {
            add(
                0,
                "create → the agent's first step (API, scheduler, watch)",
                d,
            );
        }
        add(
            1,
            "sandbox (RunPodSandbox: CNI, pause container)",
            ms(sandbox.ms[0]),
        );
        if let Ok(d) = (start.at - ms(start.ms[0])).duration_since(sandbox.at) {
            add(2, "between sandbox and container (runtime re-read)", d);
        }
        add(3, "container: image check", ms(breakdown.ms[0]));
        add(
            4,
            "container: API lookups (token, ConfigMaps)",
            ms(breakdown.ms[1]),
        );
        add(5, "container: volumes and config", ms(breakdown.ms[2]));
        add(6, "container: CRI create + start", ms(breakdown.ms[3]));
        let running_at = timing.created + timing.running;
        if let Ok(d) = running_at.duration_since(start.at) {
            add(7, "started → Running seen (re-read, status, watch)", d);
        }
    }
    out.into_values().collect()
}

/// CPU seconds (own and reaped children's) of the node's processes: shoal, containerd (the
/// CNI plugins it runs are its children) and the shims (runc runs as theirs).
fn node_cpu(shoal: u32, data_dir: &Path) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    let dir = data_dir.display().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let kind = if pid == shoal {
            "shoal"
        } else if !cmdline.contains(&dir) {
            continue;
        } else if cmdline.starts_with("containerd\0") {
            "containerd (+ CNI plugins)"
        } else if cmdline.contains("containerd-shim") {
            "shims (+ runc)"
        } else {
            continue;
        };
        *out.entry(kind).or_insert(0.0) += cpu_with_children(pid).unwrap_or(0.0);
    }
    out
}

/// User+system CPU seconds of a process and its waited-for children.
fn cpu_with_children(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    Some(ticks / 100.0)
}

/// Runs the benchmark and prints Markdown tables.
pub async fn run(args: &PodArgs) -> Result<()> {
    // The agent's per-step lines are at debug level (a few lines per pod).
    let mut lab = Lab::new(&args.binary);
    lab.add_server(&["--log-level", "debug"]);
    lab.wait_ready(Duration::from_secs(120));
    let data_dir = lab.nodes[0].data_dir.clone();
    let config = Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&lab.kubectl.kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    let archive = crate::images::busybox_archive(lab.dir.path(), IMAGE);
    lab.import_image(&archive);
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let server = lab
        .pid(0)
        .ok_or_else(|| anyhow!("the server is not running"))?;
    let containerd = lab
        .containerd_pid(0)
        .ok_or_else(|| anyhow!("the agent's containerd is not running"))?;

    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_server = rss_mib(server).unwrap_or(0.0);
    let idle_containerd = rss_mib(containerd).unwrap_or(0.0);
    let cpu_before = cpu_seconds(server).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let idle_cpu = (cpu_seconds(server).unwrap_or(0.0) - cpu_before) / 30.0 * 100.0;

    let mut single = Vec::new();
    for i in 0..args.single {
        single.extend(
            start_pods(&pods, &[format!("single-{i}")])
                .await?
                .into_values(),
        );
        delete_all(&pods).await?;
    }
    let names: Vec<String> = (0..args.batch).map(|i| format!("batch-{i}")).collect();
    let cpu_before = node_cpu(server, &data_dir);
    let began = Instant::now();
    let batch = start_pods(&pods, &names).await?;
    let wall = began.elapsed().as_secs_f64();
    // The shims of the batch are still running: their CPU (and runc's) is counted.
    let cpu_after = node_cpu(server, &data_dir);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let busy_server = rss_mib(server).unwrap_or(0.0);
    let busy_containerd = rss_mib(containerd).unwrap_or(0.0);
    let log = lab.nodes[0].log_text();
    delete_all(&pods).await?;

    println!("| measure | shoal |");
    println!("|---|---|");
    println!(
        "| one pod, create → Running | {} |",
        summary(single.iter().map(|t| t.running))
    );
    println!(
        "| {} pods at once, create → Running | {} |",
        args.batch,
        summary(batch.values().map(|t| t.running))
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
    println!();
    println!("| batch pod's phase | time |");
    println!("|---|---|");
    for (phase, durations) in phases(&batch, &log) {
        println!("| {phase} | {} |", summary(durations));
    }
    println!();
    println!(
        "| CPU during the batch ({wall:.2} s, 2 cores = {:.2} CPU-s) | CPU-s |",
        wall * 2.0
    );
    println!("|---|---|");
    for (kind, after) in &cpu_after {
        let before = cpu_before.get(kind).copied().unwrap_or(0.0);
        println!("| {kind} | {:.2} |", after - before);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_are_read_back() {
        let step = parse_step("2026-11-22T13:42:18.137578Z DEBUG shoal_agent::kubelet::worker: step pod=default/batch-3 action=CreateSandbox { attempt: 0 } ms=123").unwrap();
        assert_eq!(step.pod, "default/batch-3");
        assert_eq!(step.what, "CreateSandbox");
        assert_eq!(step.ms, vec![123]);
        let started = parse_step("2026-11-22T13:42:18.2Z DEBUG shoal_agent::kubelet::worker: container started pod=default/batch-3 container=app image_ms=1 lookups_ms=20 prepare_ms=3 create_start_ms=150").unwrap();
        assert_eq!(started.what, "started");
        assert_eq!(started.ms, vec![1, 20, 3, 150]);
        assert!(parse_step("2026-11-22T13:42:18.2Z  INFO shoal_agent: node registered").is_none());
    }
}
