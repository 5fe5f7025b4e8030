//! `shoal-bench control-plane`: the scheduler and controllers at scale — the real
//! `shoal server` with `shoal simulate-nodes` registering a fleet of simulated nodes (the same
//! API a real agent uses), driven over HTTPS with kube-rs. Figures, in this order:
//! - pods bound per second when every pod is pending before any node may take one (all nodes
//!   cordoned while the pods are created and the scheduler has found them unschedulable, then
//!   all uncordoned);
//! - the time from creating a large Deployment until all its pods run, right after the
//!   previous workload's pods were removed by one `deletecollection` (the mass deletion once
//!   froze the controllers' shared pod cache);
//! - pods bound per second when many unscheduled pods arrive at once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
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
    /// Pods created while every node is cordoned, then scheduled all at once (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub pending_pods: usize,
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

fn start_simulator(
    binary: &Path,
    kubeconfig: &Path,
    nodes: usize,
    extra: &[&str],
) -> Result<Simulator> {
    let mut child = Command::new(binary)
        .args([
            "simulate-nodes",
            "--count",
            &nodes.to_string(),
            "--kubeconfig",
        ])
        .arg(kubeconfig)
        .args(extra)
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

fn pending_pod(name: String, app: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "registry.local/app:1",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    }))
    .unwrap_or_default()
}

/// When a wait ended, and how often its watch expired (`410 Gone`) and was re-listed.
#[derive(Debug, Clone)]
struct Waited {
    at: Instant,
    relists: usize,
    /// When the wait started, and how many were done after each event that changed the
    /// count: the shape of a run (a slow tail and a slow start give the same rate).
    started: Instant,
    timeline: Vec<(Instant, usize)>,
}

impl Waited {
    /// A note for the report's row when the watch had to re-list.
    fn note(&self) -> String {
        match self.relists {
            0 => String::new(),
            n => format!(" (the bench's pod watch expired and re-listed {n}×)"),
        }
    }

    /// How many were done at `at`.
    fn done_at(&self, at: Instant) -> usize {
        let later = self.timeline.partition_point(|(t, _)| *t <= at);
        later
            .checked_sub(1)
            .and_then(|i| self.timeline.get(i))
            .map_or(0, |(_, done)| *done)
    }

    /// How many got done in each second of the wait ("0 120 2000 …").
    fn done_each_second(&self) -> String {
        let mut out = Vec::new();
        let mut before = 0;
        let mut second = self.started;
        while second < self.at {
            second += Duration::from_secs(1);
            let done = self.done_at(second.min(self.at));
            out.push(done.saturating_sub(before).to_string());
            before = done;
        }
        out.join(" ")
    }
}

/// Whether a watcher error is the API's `410 Gone`: the watch's resourceVersion fell out of
/// the store's history. The watcher has then dropped its position and re-lists on the next
/// poll, as a reflector does.
fn expired(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// Waits until `count` pods of `selector` satisfy `done`; returns when. Counts per event
/// (no re-scan of every pod), so the watcher keeps up with thousands of pods. A watch that
/// expires (410) is re-listed and the count rebuilt from the list.
async fn wait_for_pods(
    client: &Client,
    selector: &str,
    count: usize,
    timeout: Duration,
    done: impl Fn(&Pod) -> bool,
) -> Result<Waited> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut stream = watcher(api, watcher::Config::default().labels(selector)).boxed();
    let mut satisfied = std::collections::HashSet::new();
    let mut relists = 0;
    let mut timeline = Vec::new();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(err))) if expired(&err) => {
                relists += 1;
                eprintln!(
                    "the pod watch ({selector}) expired (410 Gone) with {}/{count} done: re-listing",
                    satisfied.len()
                );
                continue;
            }
            Ok(Some(Err(err))) => return Err(err.into()),
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
            // A (re-)list starts: the list that follows is the whole state.
            watcher::Event::Init => satisfied.clear(),
            watcher::Event::InitDone => {}
        }
        if timeline.last().map(|(_, done)| *done) != Some(satisfied.len()) {
            timeline.push((Instant::now(), satisfied.len()));
        }
        if satisfied.len() >= count {
            return Ok(Waited {
                at: Instant::now(),
                relists,
                started,
                timeline,
            });
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

/// Creates `count` pods labelled `app` from `clients` concurrent clients.
fn create_pods(
    client: &Client,
    app: &'static str,
    count: usize,
    clients: usize,
) -> tokio::task::JoinSet<Result<(), kube::Error>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let pods = pods.clone();
        tasks.spawn(async move {
            for i in (c..count).step_by(clients) {
                pods.create(
                    &PostParams::default(),
                    &pending_pod(format!("{app}-{i}"), app),
                )
                .await?;
            }
            Ok(())
        });
    }
    tasks
}

/// Sets `spec.unschedulable` on every node, `clients` patches at a time.
async fn cordon_all(client: &Client, unschedulable: bool, clients: usize) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let names: Vec<String> = nodes
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let patch = serde_json::json!({"spec": {"unschedulable": unschedulable}});
    let results: Vec<Result<Node, kube::Error>> = futures::stream::iter(names)
        .map(|name| {
            let (nodes, patch) = (nodes.clone(), patch.clone());
            async move {
                nodes
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
            }
        })
        .buffer_unordered(clients.max(1))
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(())
}

fn unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
        })
}

/// Every pod pending before any node may take one: nodes cordoned, `count` pods created and
/// found unschedulable by the scheduler, then every node uncordoned; measures from the first
/// uncordon until the last pod is bound.
async fn all_pending(
    client: &Client,
    nodes: usize,
    count: usize,
    clients: usize,
) -> Result<String> {
    eprintln!("{count} pods pending on {nodes} cordoned nodes");
    cordon_all(client, true, clients).await?;
    let creating = Instant::now();
    let mut tasks = create_pods(client, "pending-bench", count, clients.max(1));
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let created = creating.elapsed().as_secs_f64();
    // The scheduler marking every pod `PodScheduled=False` once took minutes instead of
    // seconds in one run: its time is reported so a recurrence shows. A pod may also be
    // bound: the first pods can reach the scheduler before its node watch shows the last
    // cordons (it happened under load), and waiting for those to be unschedulable would
    // wait forever.
    let marked = wait_for_pods(
        client,
        "app=pending-bench",
        count,
        Duration::from_secs(600),
        |pod| unschedulable(pod) || bound(pod),
    )
    .await?;
    let marked_after = marked.at.duration_since(creating).as_secs_f64();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let early = pods
        .list(&ListParams::default().labels("app=pending-bench"))
        .await?
        .items
        .iter()
        .filter(|p| bound(p))
        .count();
    let early_note = match early {
        0 => String::new(),
        n => format!(", {n} bound before the uncordon (not counted)"),
    };
    eprintln!(
        "{count} pods created in {created:.1} s, all unschedulable {marked_after:.1} s after the first create; uncordoning {nodes} nodes"
    );
    let all_bound = wait_for_pods(
        client,
        "app=pending-bench",
        count,
        Duration::from_secs(600),
        bound,
    );
    let started = Instant::now();
    let (all_bound, uncordoned) = tokio::join!(all_bound, async {
        cordon_all(client, false, clients).await?;
        Ok::<_, anyhow::Error>(Instant::now())
    });
    let uncordoned = uncordoned?;
    let all_bound = all_bound?;
    eprintln!(
        "pods bound in each second from the first uncordon: {}",
        all_bound.done_each_second()
    );
    let seconds = all_bound.at.duration_since(started).as_secs_f64();
    // The scheduler's own pace once the uncordon's thousand writes (and their watch
    // events) no longer share the server's cores with it.
    let after_uncordon = all_bound
        .at
        .saturating_duration_since(uncordoned)
        .as_secs_f64();
    let left = count.saturating_sub(all_bound.done_at(uncordoned));
    let pace = if after_uncordon > 0.5 {
        format!(
            "; {:.0} pods/s for the {left} bound after the last uncordon",
            left as f64 / after_uncordon
        )
    } else {
        String::new()
    };
    Ok(format!(
        "| {count} pods all pending on {nodes} cordoned nodes (created in {created:.1} s, all marked unschedulable after {marked_after:.1} s{}{early_note}), then every node uncordoned (in {:.1} s{pace}){} | pods bound/s (first uncordon → last bind) | {:.0} |",
        marked.note(),
        uncordoned.duration_since(started).as_secs_f64(),
        all_bound.note(),
        count.saturating_sub(early) as f64 / seconds
    ))
}

/// A row with the scheduler's bind-failure summaries logged during `phase` (since the last
/// look), if there were any. Waits out one summary period first: the scheduler sums up
/// failures at most every 5 s, so the last ones of the phase may not be logged yet.
async fn bind_failures(server: &ShoalServer, phase: &str) -> Option<String> {
    tokio::time::sleep(Duration::from_secs(6)).await;
    let summaries: Vec<String> = server
        .unread_log()
        .into_iter()
        .filter_map(|line| {
            line.split_once("binds failed in the last ")
                .map(|(_, summary)| summary.to_owned())
        })
        .collect();
    if summaries.is_empty() {
        return None;
    }
    eprintln!("bind failures during {phase}: {}", summaries.join("; "));
    Some(format!(
        "| bind failures during {phase} (the scheduler's 5 s summaries) | codes | {} |",
        summaries.join("; ")
    ))
}

/// The `shoal` binary: `--shoal`, or the one next to this benchmark.
fn shoal_binary(given: Option<&PathBuf>) -> Result<PathBuf> {
    Ok(match given {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("shoal"),
    })
}

async fn client_for(server: &ShoalServer) -> Result<Client> {
    let config = Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(server.kubeconfig())?,
        &Default::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// Runs the workloads and returns the Markdown report.
pub async fn run(args: ControlPlaneArgs) -> Result<String> {
    let binary = shoal_binary(args.shoal.as_ref())?;
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-control-")
        .tempdir_in(&args.dir)?;
    let server = ShoalServer::start(&binary, dir.path(), free_port()?, &["--disable-agent"])?;
    let kubeconfig = server.kubeconfig();
    let client = client_for(&server).await?;
    let mut rows = Vec::new();

    eprintln!("registering {} simulated nodes", args.nodes);
    let t = Instant::now();
    let _simulator = start_simulator(&binary, &kubeconfig, args.nodes, &[])?;
    rows.push(format!(
        "| register {} simulated nodes | seconds | {:.1} |",
        args.nodes,
        t.elapsed().as_secs_f64()
    ));

    let mut replaced = None;
    if args.pending_pods > 0 {
        rows.push(all_pending(&client, args.nodes, args.pending_pods, args.clients).await?);
        rows.extend(bind_failures(&server, "all pending").await);
        // Gone in one call, as `kubectl delete pods --all` does: the Deployment below starts
        // while the simulated nodes are still finishing these deletions.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        pods.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=pending-bench"),
        )
        .await?;
        replaced = Some(args.pending_pods);
    }

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
    let after = replaced.map_or(String::new(), |n| {
        format!(", right after a deletecollection of {n} bound pods")
    });
    rows.push(format!(
        "| Deployment of {} replicas on {} nodes{after}{} | seconds from create until all Running | {:.1} |",
        args.replicas,
        args.nodes,
        all_running.note(),
        all_running.at.duration_since(started).as_secs_f64()
    ));
    eprintln!("scheduling {} pods", args.pods);
    let started = Instant::now();
    let clients = args.clients.max(1);
    let mut tasks = create_pods(&client, "sched-bench", args.pods, clients);
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
    let seconds = all_bound.at.duration_since(started).as_secs_f64();
    rows.push(format!(
        "| {} unscheduled pods on {} nodes (created by {clients} clients in {:.1} s){} | pods bound/s (create of the first → bind of the last) | {:.0} |",
        args.pods,
        args.nodes,
        created.duration_since(started).as_secs_f64(),
        all_bound.note(),
        args.pods as f64 / seconds
    ));
    rows.extend(bind_failures(&server, "Deployment and unscheduled pods").await);
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

/// What `shoal-bench node-loss` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeLossArgs {
    /// The shoal binary to start (default: `shoal` next to this benchmark).
    #[arg(long)]
    pub shoal: Option<PathBuf>,
    /// Simulated nodes in all, the lost ones included.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Nodes lost at once (their simulator is SIGKILLed).
    #[arg(long, default_value_t = 1)]
    pub lost: usize,
    /// Replicas of the Deployment spread over the nodes.
    #[arg(long, default_value_t = 1_000)]
    pub replicas: i32,
    /// Passed as `--kube-controller-manager-arg node-monitor-grace-period=…` (default: the
    /// server's, Kubernetes' 50 s).
    #[arg(long)]
    pub node_monitor_grace_period: Option<String>,
    /// `tolerationSeconds` of the pods' not-ready/unreachable tolerations (default: none
    /// given, so the API's DefaultTolerationSeconds adds Kubernetes' 300 s).
    #[arg(long)]
    pub toleration_seconds: Option<i64>,
    /// Where the server's data directory goes (a real disk).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

fn on_lost_node(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| n.starts_with("lost-"))
}

fn node_ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// Kills the simulator of `lost` nodes among `nodes` and times what follows: the node marked
/// Unknown and tainted, its pods evicted, replacements Running elsewhere.
pub async fn run_node_loss(args: NodeLossArgs) -> Result<String> {
    if args.lost == 0 || args.lost >= args.nodes {
        bail!("--lost must be at least 1 and fewer than --nodes");
    }
    let binary = shoal_binary(args.shoal.as_ref())?;
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-node-loss-")
        .tempdir_in(&args.dir)?;
    let grace_arg = args
        .node_monitor_grace_period
        .as_ref()
        .map(|g| format!("node-monitor-grace-period={g}"));
    let mut extra = vec!["--disable-agent"];
    if let Some(arg) = &grace_arg {
        extra.extend(["--kube-controller-manager-arg", arg.as_str()]);
    }
    let server = ShoalServer::start(&binary, dir.path(), free_port()?, &extra)?;
    let kubeconfig = server.kubeconfig();
    let client = client_for(&server).await?;
    let _healthy = start_simulator(&binary, &kubeconfig, args.nodes - args.lost, &[])?;
    let lost = start_simulator(&binary, &kubeconfig, args.lost, &["--name-prefix", "lost-"])?;

    let tolerations = args.toleration_seconds.map(|seconds| {
        [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ]
        .map(|key| {
            serde_json::json!({"key": key, "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": seconds})
        })
        .to_vec()
    });
    let mut template_spec = serde_json::json!({"containers": [{"name": "c",
        "image": "registry.local/app:1",
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]});
    if let Some(tolerations) = tolerations {
        template_spec["tolerations"] = serde_json::Value::Array(tolerations);
    }
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "survivor"},
        "spec": {"replicas": args.replicas, "selector": {"matchLabels": {"app": "survivor"}},
            "template": {"metadata": {"labels": {"app": "survivor"}}, "spec": template_spec}},
    }))?;
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await?;
    let replicas = usize::try_from(args.replicas).unwrap_or(0);
    eprintln!("waiting for {replicas} pods to run");
    wait_for_pods(
        &client,
        "app=survivor",
        replicas,
        Duration::from_secs(600),
        running,
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());
    let list = ListParams::default().labels("app=survivor");
    let victims: std::collections::HashSet<String> = pods
        .list(&list)
        .await?
        .items
        .iter()
        .filter(|p| on_lost_node(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    eprintln!(
        "killing the simulator of {} node(s) running {} pods",
        args.lost,
        victims.len()
    );
    drop(lost); // SIGKILL
    let killed = Instant::now();
    let (mut unknown, mut tainted, mut first_evicted, mut all_evicted, mut replaced) =
        (None, None, None, None, None);
    let deadline = killed + Duration::from_secs(1_800);
    while replaced.is_none() {
        if Instant::now() > deadline {
            bail!("pods not replaced within 30 minutes of the node loss");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let at = killed.elapsed().as_secs_f64();
        let lost_nodes: Vec<Node> = nodes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|n| {
                n.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("lost-"))
            })
            .collect();
        if unknown.is_none()
            && lost_nodes
                .iter()
                .all(|n| node_ready_status(n).as_deref() == Some("Unknown"))
        {
            unknown = Some(at);
        }
        if tainted.is_none()
            && lost_nodes.iter().all(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| {
                        t.iter().any(|t| {
                            t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"
                        })
                    })
            })
        {
            tainted = Some(at);
        }
        let current = pods.list(&list).await?.items;
        let left: Vec<&Pod> = current
            .iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| victims.contains(n))
            })
            .collect();
        let still_there = left.len();
        let evicted = left
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .count();
        if first_evicted.is_none() && (evicted > 0 || still_there < victims.len()) {
            first_evicted = Some(at);
        }
        if all_evicted.is_none() && evicted == still_there {
            all_evicted = Some(at);
        }
        let serving = current
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && !on_lost_node(p))
            .filter(|p| running(p))
            .count();
        if all_evicted.is_some() && serving >= replicas {
            replaced = Some(at);
        }
    }
    let seconds = |t: Option<f64>| t.map_or("–".to_string(), |t| format!("{t:.1}"));
    let grace = args
        .node_monitor_grace_period
        .clone()
        .unwrap_or_else(|| "50s (default)".into());
    let toleration = args
        .toleration_seconds
        .map_or("300 s (default)".to_string(), |s| format!("{s} s"));
    Ok(format!(
        "{} of {} simulated nodes SIGKILLed with {} of {} pods on them; node-monitor-grace-period {grace}, pods tolerate unreachable for {toleration}\n\n\
         | seconds after the kill | |\n|---|---:|\n\
         | node Ready=Unknown | {} |\n| node tainted unreachable:NoExecute | {} |\n\
         | first pod evicted | {} |\n| last pod evicted | {} |\n\
         | all {} replicas Running on other nodes | {} |",
        args.lost,
        args.nodes,
        victims.len(),
        replicas,
        seconds(unknown),
        seconds(tainted),
        seconds(first_evicted),
        seconds(all_evicted),
        replicas,
        seconds(replaced),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status {
            code,
            ..Default::default()
        })
    }

    #[test]
    fn only_an_expired_watch_is_re_listed() {
        assert!(expired(&watcher::Error::WatchError(status(410))));
        assert!(expired(&watcher::Error::WatchFailed(kube::Error::Api(
            status(410)
        ))));
        assert!(!expired(&watcher::Error::WatchError(status(500))));
        assert!(!expired(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(410))
        )));
        assert!(!expired(&watcher::Error::NoResourceVersion));
    }
}
