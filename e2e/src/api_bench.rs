//! `shoal-bench api`: the API server as clients use it — the real `shoal server` binary on a
//! loopback port, driven over HTTPS with kube-rs (the client Shoal's own controllers use).
//! There is no Kubernetes API server on this machine to run beside it, so the figures stand
//! against the targets and Kubernetes' published SLOs instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::{Client, Config};

use crate::latency::{millis, Latencies, Summary};
use crate::server::{free_port, ShoalServer};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The shoal binary to start (default: `shoal` next to this benchmark).
    #[arg(long)]
    pub shoal: Option<PathBuf>,
    /// Creates in each create-throughput workload.
    #[arg(long, default_value_t = 5_000)]
    pub creates: usize,
    /// Concurrent clients in the concurrent workloads.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Request rate of the steady workload, per second.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Length of the steady workload, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Pods stored for the LIST and memory figures.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Watchers in the fan-out workload.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// Changes in the fan-out workload, one at a time.
    #[arg(long, default_value_t = 50)]
    pub watch_events: usize,
    /// Where the server's data directory goes (a real disk).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
}

/// A `shoal server` started for the benchmark, with its data in a temporary directory that is
/// removed (after the server is killed) on drop.
struct Server {
    process: ShoalServer,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(binary: &Path, parent: &Path) -> Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-api-")
            .tempdir_in(parent)?;
        let process = ShoalServer::start(binary, dir.path(), free_port()?, &["--disable-agent"])?;
        Ok(Server { process, _dir: dir })
    }

    async fn client(&self) -> Result<Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.process.kubeconfig())?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(Client::try_from(config)?)
    }

    fn rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))?;
        Ok(kib / 1024.0)
    }
}

fn config_map(name: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        data: Some([("key".to_string(), "x".repeat(256))].into()),
        ..Default::default()
    }
}

fn pod(name: String) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "registry.local/web:1.0",
            "ports": [{"containerPort": 8080}], "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    }))
    .unwrap_or_default()
}

/// Creates `count` objects from `clients` concurrent tasks; returns throughput and latencies.
async fn create_many<K, F>(
    api: Api<K>,
    count: usize,
    clients: usize,
    prefix: &str,
    make: F,
) -> Result<(f64, Summary)>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(String) -> K + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (api, make, prefix) = (api.clone(), Arc::clone(&make), prefix.to_string());
        tasks.spawn(async move {
            let mut latencies = Latencies::with_capacity(count / clients + 1);
            for i in (client..count).step_by(clients) {
                let t = Instant::now();
                tokio::time::timeout(
                    Duration::from_secs(10),
                    api.create(&PostParams::default(), &make(format!("{prefix}-{i}"))),
                )
                .await
                .map_err(|_| anyhow!("a create took more than 10 s"))??;
                latencies.record(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut all = Latencies::with_capacity(count);
    while let Some(result) = tasks.join_next().await {
        all.merge(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((
        count as f64 / elapsed,
        all.summary().ok_or_else(|| anyhow!("no samples"))?,
    ))
}

/// Creates at a steady `rate` for `seconds`; returns the latencies.
async fn steady(api: Api<ConfigMap>, rate: u64, seconds: u64) -> Result<Summary> {
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..rate * seconds {
        ticker.tick().await;
        let api = api.clone();
        tasks.spawn(async move {
            let t = Instant::now();
            tokio::time::timeout(
                Duration::from_secs(10),
                api.create(&PostParams::default(), &config_map(format!("steady-{i}"))),
            )
            .await
            .map_err(|_| anyhow!("a create took more than 10 s"))??;
            Ok::<_, anyhow::Error>(t.elapsed())
        });
    }
    let mut latencies = Latencies::with_capacity((rate * seconds) as usize);
    while let Some(result) = tasks.join_next().await {
        latencies.record(result??);
    }
    latencies.summary().ok_or_else(|| anyhow!("no samples"))
}

/// The median of three timings of `f`.
async fn median3<F, Fut>(mut f: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        f().await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[1])
}

/// Watch fan-out: `watchers` watches on one namespace's config maps, then `events` updates one
/// at a time; latency from just before each write until each watcher has it.
async fn fan_out(client: Client, watchers: usize, events: usize) -> Result<Summary> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-public");
    let created = api
        .create(&PostParams::default(), &config_map("fanout".into()))
        .await?;
    let rv = created
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..watchers {
        let api = api.clone();
        let (tx, rv) = (tx.clone(), rv.clone());
        tasks.spawn(async move {
            let stream = api.watch(&WatchParams::default().timeout(290), &rv).await?;
            let mut stream = stream.boxed();
            let mut seen = 0;
            while let Some(event) = stream.next().await {
                if let WatchEvent::Modified(_) = event? {
                    seen += 1;
                    let _ = tx.send((w, Instant::now()));
                    if seen == events {
                        break;
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    drop(tx);
    // Give every watch time to be established before the first write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut latencies = Latencies::with_capacity(watchers * events);
    for i in 0..events {
        let t = Instant::now();
        let patch = serde_json::json!({"data": {"key": format!("v{i}")}});
        api.patch(
            "fanout",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
        let mut got = 0;
        while got < watchers {
            let (_, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .map_err(|_| anyhow!("watchers got {got}/{watchers} of event {i} within 10 s"))?
                .ok_or_else(|| anyhow!("watchers ended early"))?;
            latencies.record(at.saturating_duration_since(t));
            got += 1;
        }
    }
    tasks.abort_all();
    latencies.summary().ok_or_else(|| anyhow!("no samples"))
}

/// Runs every workload and returns the Markdown report.
pub async fn run(args: ApiArgs) -> Result<String> {
    let binary = match &args.shoal {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("shoal"),
    };
    let clients = args.clients.max(1);
    let server = Server::start(&binary, &args.dir)?;
    let client = server.client().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut rows = Vec::new();
    let mut row = |workload: String, metric: &str, value: String| {
        rows.push(format!("| {workload} | {metric} | {value} |"))
    };

    eprintln!("creates, 1 client");
    let (rate, s) = create_many(cms.clone(), args.creates, 1, "one", config_map).await?;
    let w = format!("create ConfigMap, 1 client ({} creates)", args.creates);
    row(w.clone(), "creates/s", format!("{rate:.0}"));
    row(
        w,
        "p50 / p99 latency (ms)",
        format!("{:.2} / {:.2}", millis(s.p50), millis(s.p99)),
    );

    eprintln!("creates, {clients} clients");
    let (rate, s) = create_many(cms.clone(), args.creates, clients, "many", config_map).await?;
    let w = format!(
        "create ConfigMap, {clients} clients ({} creates)",
        args.creates
    );
    row(w.clone(), "creates/s", format!("{rate:.0}"));
    row(
        w,
        "p50 / p99 latency (ms)",
        format!("{:.2} / {:.2}", millis(s.p50), millis(s.p99)),
    );

    eprintln!("steady {} writes/s for {} s", args.rate, args.seconds);
    let s = steady(cms.clone(), args.rate, args.seconds).await?;
    let w = format!(
        "create ConfigMap at a steady {}/s for {} s",
        args.rate, args.seconds
    );
    row(
        w.clone(),
        "p50 / p99 / max latency (ms)",
        format!(
            "{:.2} / {:.2} / {:.2}",
            millis(s.p50),
            millis(s.p99),
            millis(s.max)
        ),
    );

    eprintln!("storing {} pods", args.pods);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (rate, _) = create_many(pods.clone(), args.pods, clients, "pod", pod).await?;
    row(
        format!("create Pod, {clients} clients ({} pods)", args.pods),
        "creates/s",
        format!("{rate:.0}"),
    );
    let list_json = median3(|| {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default()).await?;
            if list.items.len() != args.pods {
                bail!("listed {} pods, stored {}", list.items.len(), args.pods);
            }
            Ok(())
        }
    })
    .await?;
    row(
        format!("LIST {} pods (JSON)", args.pods),
        "median of 3 (ms)",
        format!("{:.0}", millis(list_json)),
    );
    let list_table = median3(|| {
        let client = client.clone();
        async move {
            let request = http::Request::get("/api/v1/namespaces/default/pods")
                .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
                .body(Vec::new())?;
            let table = client.request_text(request).await?;
            if !table.contains("\"Table\"") {
                bail!("not a Table");
            }
            Ok(())
        }
    })
    .await?;
    row(
        format!("LIST {} pods (Table, as kubectl get)", args.pods),
        "median of 3 (ms)",
        format!("{:.0}", millis(list_table)),
    );
    row(
        format!("server RSS with {} pods stored", args.pods),
        "MiB",
        format!("{:.0}", server.rss_mib()?),
    );

    eprintln!("watch fan-out: {} watchers", args.watchers);
    let s = fan_out(client.clone(), args.watchers, args.watch_events).await?;
    let w = format!(
        "watch fan-out ({} watchers × {} events)",
        args.watchers, args.watch_events
    );
    row(
        w,
        "p50 / p99 / max write→event (ms)",
        format!(
            "{:.2} / {:.2} / {:.2}",
            millis(s.p50),
            millis(s.p99),
            millis(s.max)
        ),
    );
    row(
        "server RSS after the run".into(),
        "MiB",
        format!("{:.0}", server.rss_mib()?),
    );

    let mut out = String::from("| workload | metric | shoal |\n|---|---|---:|\n");
    for r in rows {
        out.push_str(&r);
        out.push('\n');
    }
    Ok(out)
}
