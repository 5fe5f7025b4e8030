//! `shoal-bench store`: Shoal's store against etcd, in one run, on this machine, with the same
//! workloads and the same durability, printed as a Markdown table for BENCHMARKS.md.
//!
//! Shoal's `RaftStore` runs embedded in this process, as Shoal's API server uses it. etcd runs
//! as a child process on loopback with its own data directory and is driven through its gRPC
//! v3 API, as kube-apiserver drives it. Each system is measured alone: Shoal's store is shut
//! down before etcd starts. Both data directories are fresh temporary directories on real disk
//! (under `--dir`, `/var/tmp` by default) and both fsync every commit (grouping concurrent
//! ones), so an acknowledged write survives a crash on either side.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand};
use shoal_e2e::etcd::{self, pb, EtcdClient, EtcdServer};
use shoal_e2e::latency::{millis, Latencies, Summary};
use shoal_e2e::store_load::{command_output, puts, value_bytes, PutResult, Putter, Systems};
use shoal_store::{RaftStore, RaftStoreConfig, Store};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

// The same allocator the `shoal` binary uses, so the store is measured as it runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest all watchers may take to receive one event.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest setting up the watchers may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Value size of every put.
const VALUE_BYTES: usize = 1024;
/// Unmeasured puts before the measured workloads, so connections and caches are warm.
const WARMUP_PUTS: usize = 50;

const SEQ_PREFIX: &str = "/bench/seq/";
const CONCURRENT_PREFIX: &str = "/bench/concurrent/";
const WATCH_PREFIX: &str = "/bench/watch/";

#[derive(Debug, Parser)]
#[command(
    name = "shoal-bench",
    about = "Benchmarks Shoal against its peers on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Shoal's store (embedded RaftStore) against etcd (child process, gRPC v3 over loopback).
    Store(StoreArgs),
    /// A 3-member Shoal store against a 3-member etcd: writes via leader and follower, failover.
    StoreHa(shoal_e2e::store_ha_bench::StoreHaArgs),
    /// One member of `store-ha`'s Shoal cluster (started by it, driven over stdin).
    #[command(hide = true)]
    StoreMember(shoal_e2e::store_ha_bench::MemberArgs),
    /// The API server (`shoal server` on loopback) driven with kube-rs.
    Api(shoal_e2e::api_bench::ApiArgs),
    /// The scheduler and controllers with a fleet of simulated nodes.
    ControlPlane(shoal_e2e::control_bench::ControlPlaneArgs),
    /// Pod startup on a real node (the server's agent, containerd, runc).
    Pods(shoal_e2e::pod_bench::PodArgs),
    /// Time from losing simulated nodes until their pods run elsewhere.
    NodeLoss(shoal_e2e::control_bench::NodeLossArgs),
    /// A multi-node lab from nothing: time to Ready, agents' joins, idle memory and CPU.
    Lab(shoal_e2e::lab_bench::LabArgs),
    /// TCP throughput pod to pod across the VXLAN overlay vs the host path (root).
    Overlay(shoal_e2e::overlay_bench::OverlayArgs),
    /// The cluster DNS server: questions per second and latency with many Services.
    Dns(shoal_e2e::dns_bench::DnsArgs),
    /// The nftables Service proxy: full and incremental syncs, ClusterIP vs direct (root).
    Proxy(shoal_e2e::proxy_bench::ProxyArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct StoreArgs {
    /// Puts in the sequential workload (one client, one put at a time).
    #[arg(long, default_value_t = 2_000)]
    seq: usize,
    /// Puts in the concurrent workload, over all clients.
    #[arg(long, default_value_t = 20_000)]
    concurrent: usize,
    /// Concurrent clients in the concurrent workload.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Watchers on the watched prefix in the watch-latency workload.
    #[arg(long, default_value_t = 1_000)]
    watchers: usize,
    /// Puts (events) in the watch-latency workload, one at a time.
    #[arg(long, default_value_t = 100)]
    watch_events: usize,
    #[command(flatten)]
    systems: Systems,
    /// HTTP/2 connections to etcd shared by all clients (kube-apiserver uses one).
    #[arg(long, default_value_t = 1)]
    etcd_conns: usize,
    /// gRPC Watch streams the etcd watchers are spread over.
    #[arg(long, default_value_t = 10)]
    watch_streams: usize,
}

/// Everything measured for one system.
#[derive(Debug, Clone, Copy)]
struct Results {
    seq: PutResult,
    concurrent: PutResult,
    watch: Summary,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::select! {
        result = run(cli) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // Everything the run started (etcd, temporary directories) is cleaned up by now.
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shoal-bench: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Store(args) => bench_store(args).await,
        Command::StoreHa(args) => {
            let report = shoal_e2e::store_ha_bench::run(args).await?;
            println!("{report}");
            Ok(())
        }
        Command::StoreMember(args) => shoal_e2e::store_ha_bench::run_member(args).await,
        Command::Api(args) => {
            let report = shoal_e2e::api_bench::run(args).await?;
            println!("{report}");
            Ok(())
        }
        Command::ControlPlane(args) => {
            let report = shoal_e2e::control_bench::run(args).await?;
            println!("{report}");
            Ok(())
        }
        Command::Pods(args) => shoal_e2e::pod_bench::run(&args).await,
        Command::Dns(args) => shoal_e2e::dns_bench::run(&args).await,
        Command::Proxy(args) => {
            let report =
                tokio::task::spawn_blocking(move || shoal_e2e::proxy_bench::run(&args)).await??;
            println!("{report}");
            Ok(())
        }
        Command::NodeLoss(args) => {
            let report = shoal_e2e::control_bench::run_node_loss(args).await?;
            println!("{report}");
            Ok(())
        }
        Command::Lab(args) => {
            let report =
                tokio::task::spawn_blocking(move || shoal_e2e::lab_bench::run(&args)).await??;
            println!("{report}");
            Ok(())
        }
        Command::Overlay(args) => {
            // Namespaces are entered by fresh threads with runtimes of their own.
            let report =
                tokio::task::spawn_blocking(move || shoal_e2e::overlay_bench::run(&args)).await??;
            println!("{report}");
            Ok(())
        }
    }
}

async fn bench_store(args: StoreArgs) -> Result<()> {
    if args.clients == 0 || args.etcd_conns == 0 || args.watch_streams == 0 {
        bail!("--clients, --etcd-conns and --watch-streams must be at least 1");
    }
    let (fs_type, etcd_version) = args.systems.check()?;
    let value = value_bytes(VALUE_BYTES);
    let (shoal, etcd) = args
        .systems
        .each(
            async {
                eprintln!("== shoal (embedded RaftStore)");
                bench_shoal(&args, &value).await
            },
            async {
                eprintln!("== etcd (child process, gRPC over loopback)");
                bench_etcd(&args, &value).await
            },
        )
        .await?;

    print_report(&args, shoal, etcd, etcd_version.as_deref(), &fs_type);
    Ok(())
}

async fn bench_shoal(args: &StoreArgs, value: &[u8]) -> Result<Results> {
    let dir = args.systems.temp_dir("shoal-bench-shoal-")?;
    let store = RaftStore::open(RaftStoreConfig::new(dir.path().join("store")))
        .await
        .context("opening the store")?;
    eprintln!("   store in {}", dir.path().display());
    let putter = Putter::Shoal(store.clone());
    let result = async {
        let (seq, concurrent) = put_workloads(args, std::slice::from_ref(&putter), value).await?;
        let watch = watch_shoal(&store, putter.clone(), args, value).await?;
        Ok::<Results, anyhow::Error>(Results {
            seq,
            concurrent,
            watch,
        })
    }
    .await;
    let shutdown = store.shutdown().await;
    let results = result?;
    shutdown.context("shutting the store down")?;
    drop(dir);
    Ok(results)
}

async fn bench_etcd(args: &StoreArgs, value: &[u8]) -> Result<Results> {
    let mut server = EtcdServer::start(&args.systems.etcd, &args.systems.dir)?;
    eprintln!(
        "   etcd at {}, data in {}",
        server.client_url(),
        server.dir().display()
    );
    server.wait_ready(Duration::from_secs(30)).await?;
    let mut clients = Vec::with_capacity(args.etcd_conns);
    for _ in 0..args.etcd_conns {
        clients.push(EtcdClient::connect(server.client_url()).await?);
    }
    let putters: Vec<Putter> = clients.iter().cloned().map(Putter::Etcd).collect();
    let result = async {
        let (seq, concurrent) = put_workloads(args, &putters, value).await?;
        let watch = watch_etcd(&clients, args, value).await?;
        Ok::<Results, anyhow::Error>(Results {
            seq,
            concurrent,
            watch,
        })
    }
    .await;
    if result.is_err() {
        eprintln!("   etcd's log ends with:\n{}", server.log_tail());
    }
    // Dropping the server kills etcd and removes its directory.
    drop(server);
    result
}

/// Warm-up, then the sequential and the concurrent put workloads. Concurrent clients use the
/// putters round-robin (for etcd: its connections).
async fn put_workloads(
    args: &StoreArgs,
    putters: &[Putter],
    value: &[u8],
) -> Result<(PutResult, PutResult)> {
    let first = putters
        .first()
        .ok_or_else(|| anyhow!("no client to put with"))?;
    let mut warm = first.clone();
    for i in 0..WARMUP_PUTS {
        warm.put(format!("/bench/warmup/{i:08}"), value.to_vec())
            .await
            .context("warm-up put")?;
    }

    eprintln!("   seq-put: {} puts, 1 client", args.seq);
    let seq = puts(std::slice::from_ref(first), 1, args.seq, SEQ_PREFIX, value)
        .await
        .context("seq-put")?;
    eprintln!("     {:.0} writes/s", seq.writes_per_sec);

    eprintln!(
        "   concurrent-put: {} puts, {} clients",
        args.concurrent, args.clients
    );
    let concurrent = puts(
        putters,
        args.clients,
        args.concurrent,
        CONCURRENT_PREFIX,
        value,
    )
    .await
    .context("concurrent-put")?;
    eprintln!("     {:.0} writes/s", concurrent.writes_per_sec);
    Ok((seq, concurrent))
}

/// Counts, per event, how many watchers have received it, and wakes the put driver when all
/// have.
#[derive(Debug)]
struct Deliveries {
    counts: Vec<AtomicUsize>,
    watchers: usize,
    complete: Notify,
}

impl Deliveries {
    fn new(events: usize, watchers: usize) -> Self {
        Deliveries {
            counts: (0..events).map(|_| AtomicUsize::new(0)).collect(),
            watchers,
            complete: Notify::new(),
        }
    }

    /// Records that one watcher received event `index`.
    fn delivered(&self, index: usize) {
        if let Some(count) = self.counts.get(index) {
            if count.fetch_add(1, Ordering::AcqRel) + 1 == self.watchers {
                self.complete.notify_one();
            }
        }
    }

    fn count(&self, index: usize) -> usize {
        self.counts
            .get(index)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }
}

/// The event index in a watched key (`/bench/watch/00000042` -> 42).
fn event_index(key: &[u8]) -> Result<usize> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(WATCH_PREFIX))
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "unexpected key in watch event: {:?}",
                String::from_utf8_lossy(key)
            )
        })
}

/// A watcher's receipts: (event index, when it arrived).
type Receipts = Vec<(usize, Instant)>;

/// Puts the watched events one at a time, each once every watcher has received the previous
/// one; returns when each put started.
async fn drive_watch_puts(
    putter: &mut Putter,
    deliveries: &Deliveries,
    args: &StoreArgs,
    value: &[u8],
) -> Result<Vec<Instant>> {
    let mut started = Vec::with_capacity(args.watch_events);
    for i in 0..args.watch_events {
        let key = format!("{WATCH_PREFIX}{i:08}");
        let value = value.to_vec();
        let t = Instant::now();
        started.push(t);
        putter.put(key, value).await.context("watched put")?;
        tokio::time::timeout(DELIVERY_TIMEOUT, deliveries.complete.notified())
            .await
            .map_err(|_| {
                anyhow!(
                    "only {} of {} watchers received event {i} within {DELIVERY_TIMEOUT:?}",
                    deliveries.count(i),
                    args.watchers
                )
            })?;
    }
    Ok(started)
}

/// Joins the watcher tasks and turns their receipts into put-to-delivery latencies.
async fn collect_watch_latencies(
    mut tasks: JoinSet<Result<Receipts>>,
    started: &[Instant],
    expected: usize,
) -> Result<Summary> {
    let mut latencies = Latencies::with_capacity(expected);
    let joined = tokio::time::timeout(SETUP_TIMEOUT, async {
        while let Some(receipts) = tasks.join_next().await {
            for (index, at) in receipts.context("a watcher task failed")?? {
                let start = started
                    .get(index)
                    .ok_or_else(|| anyhow!("event {index} was never put"))?;
                latencies.record(at.saturating_duration_since(*start));
            }
        }
        Ok::<(), anyhow::Error>(())
    })
    .await;
    joined.map_err(|_| anyhow!("watcher tasks did not finish"))??;
    if latencies.len() != expected {
        bail!(
            "expected {expected} deliveries, measured {}",
            latencies.len()
        );
    }
    latencies
        .summary()
        .ok_or_else(|| anyhow!("no deliveries were measured"))
}

async fn watch_shoal(
    store: &RaftStore,
    mut putter: Putter,
    args: &StoreArgs,
    value: &[u8],
) -> Result<Summary> {
    eprintln!(
        "   watch-latency: {} watchers, {} events",
        args.watchers, args.watch_events
    );
    let events = args.watch_events;
    let deliveries = Arc::new(Deliveries::new(events, args.watchers));
    let mut tasks = JoinSet::new();
    let setup = async {
        for _ in 0..args.watchers {
            let mut stream = store.watch(WATCH_PREFIX, None).await?;
            let deliveries = Arc::clone(&deliveries);
            tasks.spawn(async move {
                let mut receipts = Receipts::with_capacity(events);
                while receipts.len() < events {
                    match stream.next().await {
                        Some(Ok(event)) => {
                            let at = Instant::now();
                            let index = event_index(event.kv.key.as_bytes())?;
                            receipts.push((index, at));
                            deliveries.delivered(index);
                        }
                        Some(Err(err)) => return Err(anyhow!(err).context("watch failed")),
                        None => bail!("watch ended early"),
                    }
                }
                Ok(receipts)
            });
        }
        Ok::<(), anyhow::Error>(())
    };
    tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| anyhow!("creating the watchers took over {SETUP_TIMEOUT:?}"))??;

    let started = drive_watch_puts(&mut putter, &deliveries, args, value).await?;
    let summary = collect_watch_latencies(tasks, &started, args.watchers * events).await?;
    eprintln!("     p50 {:.2} ms", millis(summary.p50));
    Ok(summary)
}

async fn watch_etcd(clients: &[EtcdClient], args: &StoreArgs, value: &[u8]) -> Result<Summary> {
    let streams = args.watch_streams.min(args.watchers.max(1));
    eprintln!(
        "   watch-latency: {} watchers over {streams} gRPC streams, {} events",
        args.watchers, args.watch_events
    );
    let events = args.watch_events;
    let deliveries = Arc::new(Deliveries::new(events, args.watchers));
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: WATCH_PREFIX.as_bytes().to_vec(),
                range_end: etcd::prefix_range_end(WATCH_PREFIX.as_bytes()),
                ..Default::default()
            },
        )),
    };
    let mut tasks = JoinSet::new();
    let setup = async {
        for s in 0..streams {
            // Spread the watchers evenly: the first (watchers % streams) streams get one more.
            let watchers = args.watchers / streams + usize::from(s < args.watchers % streams);
            if watchers == 0 {
                continue;
            }
            let mut client = clients
                .get(s % clients.len())
                .ok_or_else(|| anyhow!("no etcd client"))?
                .clone();
            let (requests, rx) = mpsc::channel(watchers);
            for _ in 0..watchers {
                requests
                    .try_send(create.clone())
                    .map_err(|_| anyhow!("watch request queue full"))?;
            }
            let mut stream = client.watch(ReceiverStream::new(rx)).await?;
            let mut created = 0;
            while created < watchers {
                let response = stream
                    .message()
                    .await
                    .context("etcd watch stream")?
                    .ok_or_else(|| anyhow!("etcd watch stream ended during setup"))?;
                if response.canceled {
                    bail!("etcd canceled a watch: {}", response.cancel_reason);
                }
                if response.created {
                    created += 1;
                }
            }
            let deliveries = Arc::clone(&deliveries);
            tasks.spawn(async move {
                // Keeps the request side of the stream open until this watcher is done.
                let _requests = requests;
                let expected = watchers * events;
                let mut receipts = Receipts::with_capacity(expected);
                while receipts.len() < expected {
                    let response = stream
                        .message()
                        .await
                        .context("etcd watch stream")?
                        .ok_or_else(|| anyhow!("etcd watch stream ended early"))?;
                    let at = Instant::now();
                    if response.canceled {
                        bail!("etcd canceled a watch: {}", response.cancel_reason);
                    }
                    for event in &response.events {
                        let key = event.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]);
                        let index = event_index(key)?;
                        receipts.push((index, at));
                        deliveries.delivered(index);
                    }
                }
                Ok(receipts)
            });
        }
        Ok::<(), anyhow::Error>(())
    };
    tokio::time::timeout(SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| anyhow!("creating the watchers took over {SETUP_TIMEOUT:?}"))??;

    let mut putter = Putter::Etcd(
        clients
            .first()
            .ok_or_else(|| anyhow!("no etcd client"))?
            .clone(),
    );
    let started = drive_watch_puts(&mut putter, &deliveries, args, value).await?;
    let summary = collect_watch_latencies(tasks, &started, args.watchers * events).await?;
    eprintln!("     p50 {:.2} ms", millis(summary.p50));
    Ok(summary)
}

/// A command's trimmed standard output, if it ran and succeeded.
fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
}

/// A number for the table: milliseconds get more digits when small.
fn format_value(value: f64, is_latency: bool) -> String {
    if !is_latency {
        format!("{value:.0}")
    } else if value < 1.0 {
        format!("{value:.3}")
    } else if value < 100.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

/// One row of the table.
#[derive(Debug)]
struct Row {
    workload: String,
    metric: &'static str,
    shoal: Option<f64>,
    etcd: Option<f64>,
    /// Latencies (lower is better) rather than throughput.
    is_latency: bool,
}

impl Row {
    fn cells(&self) -> [String; 5] {
        let show =
            |v: Option<f64>| v.map_or("—".to_string(), |v| format_value(v, self.is_latency));
        let ratio = match (self.shoal, self.etcd) {
            (Some(s), Some(e)) if s > 0.0 && e > 0.0 => {
                let r = if self.is_latency { e / s } else { s / e };
                format!("{r:.2}×")
            }
            _ => "—".to_string(),
        };
        [
            self.workload.clone(),
            self.metric.to_string(),
            show(self.shoal),
            show(self.etcd),
            ratio,
        ]
    }
}

fn put_rows(workload: String, shoal: Option<PutResult>, etcd: Option<PutResult>) -> Vec<Row> {
    let latency =
        |r: Option<PutResult>, f: fn(&Summary) -> Duration| r.map(|r| millis(f(&r.latency)));
    vec![
        Row {
            workload: workload.clone(),
            metric: "writes/s",
            shoal: shoal.map(|r| r.writes_per_sec),
            etcd: etcd.map(|r| r.writes_per_sec),
            is_latency: false,
        },
        Row {
            workload: workload.clone(),
            metric: "p50 latency (ms)",
            shoal: latency(shoal, |s| s.p50),
            etcd: latency(etcd, |s| s.p50),
            is_latency: true,
        },
        Row {
            workload,
            metric: "p99 latency (ms)",
            shoal: latency(shoal, |s| s.p99),
            etcd: latency(etcd, |s| s.p99),
            is_latency: true,
        },
    ]
}

fn print_report(
    args: &StoreArgs,
    shoal: Option<Results>,
    etcd: Option<Results>,
    etcd_version: Option<&str>,
    fs_type: &str,
) {
    let mut rows = put_rows(
        format!("seq-put ({} × 1 KiB, 1 client)", args.seq),
        shoal.map(|r| r.seq),
        etcd.map(|r| r.seq),
    );
    rows.extend(put_rows(
        format!(
            "concurrent-put ({} × 1 KiB, {} clients)",
            args.concurrent, args.clients
        ),
        shoal.map(|r| r.concurrent),
        etcd.map(|r| r.concurrent),
    ));
    let watch_workload = format!(
        "watch-latency ({} watchers × {} events)",
        args.watchers, args.watch_events
    );
    for (metric, pick) in [
        (
            "p50 put→event (ms)",
            (|s: &Summary| s.p50) as fn(&Summary) -> Duration,
        ),
        ("p99 put→event (ms)", |s: &Summary| s.p99),
        ("max put→event (ms)", |s: &Summary| s.max),
    ] {
        rows.push(Row {
            workload: watch_workload.clone(),
            metric,
            shoal: shoal.map(|r| millis(pick(&r.watch))),
            etcd: etcd.map(|r| millis(pick(&r.watch))),
            is_latency: true,
        });
    }

    let etcd_name = etcd_version.map_or("etcd".to_string(), |v| format!("etcd {v}"));
    println!();
    println!("Shoal: `RaftStore` embedded in the benchmark process, as Shoal's API server uses its store (no RPC hop). \
        {etcd_name}: a separate process on loopback, driven through its gRPC v3 API (tonic; {} HTTP/2 connection{} shared by all clients, \
        watchers spread over {} Watch streams), as kube-apiserver drives it. \
        Each system runs alone on a fresh data directory under {} ({fs_type}); both acknowledge a write only once it is synced to disk (etcd: `fdatasync` of its WAL; Shoal: sled flush, then `fdatasync` of its log file and fsync of new blob files; concurrent writes share one sync on both sides). \
        Values are 1 KiB; {WARMUP_PUTS} unmeasured warm-up puts first. \
        Watch latency is from just before a put until a watcher received its event, over every (put, watcher) pair; \
        each put waits until all watchers got the previous one.",
        args.etcd_conns,
        if args.etcd_conns == 1 { "" } else { "s" },
        args.watch_streams,
        args.systems.dir.display(),
    );
    println!();
    println!("| workload | metric | shoal | etcd | shoal/etcd (latencies: etcd/shoal; >1 = Shoal better) |");
    println!("|---|---|---:|---:|---:|");
    for row in &rows {
        println!("| {} |", row.cells().join(" | "));
    }
    println!();
    let nproc = command_output("nproc", &[])
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = command_output("uname", &["-r"]).unwrap_or_else(|| "?".into());
    let cpu = cpu_model().map(|m| format!(", {m}")).unwrap_or_default();
    println!(
        "Machine: {nproc} cores (nproc){cpu}, kernel {kernel}, {}, data on {fs_type}.",
        etcd_version.map_or("etcd not run".to_string(), |v| format!("etcd {v}"))
    );
    let command: Vec<String> = std::env::args()
        .enumerate()
        .map(|(i, arg)| {
            let arg = if i == 0 {
                Path::new(&arg)
                    .file_name()
                    .map_or(arg.clone(), |n| n.to_string_lossy().into_owned())
            } else {
                arg
            };
            if arg.contains(' ') {
                format!("'{arg}'")
            } else {
                arg
            }
        })
        .collect();
    println!("Command: `{}`", command.join(" "));
}
