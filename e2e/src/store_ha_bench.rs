//! `shoal-bench store-ha`: a three-member Shoal store against a three-member etcd on this
//! machine — write throughput and latency at 1 and many clients, through the leader and
//! through a follower, and how long writes stop when the leader is killed under load.
//!
//! Shoal: the member the clients write to runs embedded in this process, as a Shoal API server
//! embeds its store; the two other members are child processes (`shoal-bench store-member`:
//! one sled database per process, as in production), all speaking mutual TLS on loopback with
//! throwaway certificates. Two clusters are built in turn: one led by the embedded member
//! (writes through the leader) and one led by a child (writes through a follower, forwarded to
//! the leader; then the leader child is SIGKILLed while the clients keep writing).
//! etcd: three member processes; one client connection to the leader's endpoint, then one to a
//! follower's, whose leader is then SIGKILLed the same way.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use shoal_store::{Bootstrap, NetworkFaults, PeerConfig, RaftStore, RaftStoreConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::task::JoinSet;

use crate::etcd::{EtcdClient, EtcdCluster};
use crate::latency::millis;
use crate::store_load::{puts, value_bytes, PutResult, Putter, Systems};

/// Value size of every put.
const VALUE_BYTES: usize = 1024;
/// Unmeasured puts first, so connections and caches are warm.
const WARMUP_PUTS: usize = 50;
/// Members in each cluster.
const MEMBERS: usize = 3;

/// What `shoal-bench store-ha` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreHaArgs {
    /// Puts in each sequential workload (one client, one put at a time).
    #[arg(long, default_value_t = 1_000)]
    seq: usize,
    /// Puts in each concurrent workload, over all clients.
    #[arg(long, default_value_t = 20_000)]
    concurrent: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of load before and after the leader is killed (after: long enough for
    /// writes caught by the kill to time out on either side, 5 s or more).
    #[arg(long, default_value_t = 6)]
    failover_seconds: u64,
    /// Run only the 1-client workloads (through the leader, then through a follower): no
    /// concurrent workload, no failover. For measuring one write's latency.
    #[arg(long)]
    single_client: bool,
    #[command(flatten)]
    systems: Systems,
}

/// What `shoal-bench store-member` (a child of `store-ha`) runs: one store member that
/// answers commands on stdin (`add ID ADDR`, `leader`) and shuts down when stdin closes.
#[derive(Debug, Clone, clap::Args)]
pub struct MemberArgs {
    /// The store's directory.
    #[arg(long)]
    dir: PathBuf,
    /// The peer address to listen on (also the one advertised).
    #[arg(long)]
    listen: SocketAddr,
    /// Directory holding `ca.pem`, `cert.pem` and `key.pem`.
    #[arg(long)]
    pki: PathBuf,
    /// Start a new cluster instead of waiting to be added.
    #[arg(long)]
    init: bool,
}

/// The writes around a killed leader.
#[derive(Debug, Clone, Copy)]
struct Failover {
    /// The longest time without an acknowledged write.
    gap: Duration,
    /// The longest a client waited after the kill for its next acknowledged write.
    slowest_back: Duration,
    acked: usize,
    failed: usize,
}

/// Everything measured for one system.
#[derive(Debug, Clone, Copy)]
struct Results {
    leader_seq: PutResult,
    /// `None` with `--single-client`, as are the next two.
    leader_concurrent: Option<PutResult>,
    follower_seq: PutResult,
    follower_concurrent: Option<PutResult>,
    failover: Option<Failover>,
}

/// Runs the benchmark and returns the Markdown report.
pub async fn run(args: StoreHaArgs) -> Result<String> {
    if args.clients == 0 || args.seq == 0 || args.concurrent == 0 {
        bail!("--clients, --seq and --concurrent must be at least 1");
    }
    let (fs_type, etcd_version) = args.systems.check()?;
    let value = value_bytes(VALUE_BYTES);
    let (shoal, etcd) = args
        .systems
        .each(
            async {
                eprintln!("== shoal: 3 members (1 embedded, 2 child processes), mutual TLS");
                bench_shoal(&args, &value).await
            },
            async {
                eprintln!("== etcd: 3 member processes on loopback");
                bench_etcd(&args, &value).await
            },
        )
        .await?;
    Ok(report(
        &args,
        shoal,
        etcd,
        etcd_version.as_deref(),
        &fs_type,
    ))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

// ---- certificates ----

/// Writes a throwaway CA and one certificate per member (127.0.0.1, server and client use)
/// under `dir`: `ca.pem`, and `member-N/{ca,cert,key}.pem`.
fn write_pki(dir: &Path, members: usize) -> Result<Vec<PathBuf>> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "shoal-bench store CA");
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut dirs = Vec::with_capacity(members);
    for n in 0..members {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("member-{n}"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        let member_dir = dir.join(format!("member-{n}"));
        std::fs::create_dir_all(&member_dir)?;
        std::fs::write(member_dir.join("ca.pem"), &ca_pem)?;
        std::fs::write(member_dir.join("cert.pem"), cert.pem())?;
        std::fs::write(member_dir.join("key.pem"), key.serialize_pem())?;
        dirs.push(member_dir);
    }
    Ok(dirs)
}

/// Server and client TLS from a member's PEM files: client certificates required both ways.
fn load_tls(pki: &Path) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.join("ca.pem"))? {
        roots.add(cert?)?;
    }
    let roots = Arc::new(roots);
    let chain =
        CertificateDer::pem_file_iter(pki.join("cert.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki.join("key.pem"))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok((Arc::new(server), Arc::new(client)))
}

fn member_config(
    dir: &Path,
    listen: SocketAddr,
    pki: &Path,
    init: bool,
) -> Result<RaftStoreConfig> {
    let (tls_server, tls_client) = load_tls(pki)?;
    let mut config = RaftStoreConfig::new(dir);
    config.advertise = listen.to_string();
    config.bootstrap = if init {
        Bootstrap::Init
    } else {
        Bootstrap::Join
    };
    config.peer = Some(PeerConfig {
        listen,
        tls_server,
        tls_client,
        faults: NetworkFaults::default(),
    });
    Ok(config)
}

// ---- the child member ----

/// `shoal-bench store-member`: one member in its own process, driven over stdin/stdout.
pub async fn run_member(args: MemberArgs) -> Result<()> {
    let config = member_config(&args.dir, args.listen, &args.pki, args.init)?;
    let store = RaftStore::open(config).await.context("opening the store")?;
    println!("READY {}", store.node_id());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["add", id, addr] => match id.parse::<u64>() {
                Ok(id) => match store.add_member(id, *addr).await {
                    Ok(()) => "OK".to_string(),
                    Err(err) => format!("ERR {err}"),
                },
                Err(_) => format!("ERR bad id {id}"),
            },
            ["leader"] => format!("LEADER {}", store.leader().unwrap_or(0)),
            _ => format!("ERR unknown command {line:?}"),
        };
        println!("{answer}");
    }
    store.shutdown().await.context("shutting the store down")?;
    Ok(())
}

/// A member running as a child process.
struct MemberProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    id: u64,
    addr: String,
}

impl MemberProcess {
    async fn start(dir: &Path, pki: &Path, init: bool) -> Result<MemberProcess> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command
            .arg("store-member")
            .arg("--dir")
            .arg(dir)
            .arg("--listen")
            .arg(&addr)
            .arg("--pki")
            .arg(pki)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        if init {
            command.arg("--init");
        }
        let mut child = command.spawn().context("starting a store member process")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| anyhow!("a store member did not start within 30 s"))??
            .ok_or_else(|| anyhow!("a store member exited before it was ready"))?;
        let id = ready
            .strip_prefix("READY ")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| anyhow!("unexpected first line from a store member: {ready:?}"))?;
        Ok(MemberProcess {
            stdin: child.stdin.take(),
            child,
            lines,
            id,
            addr,
        })
    }

    async fn command(&mut self, line: &str) -> Result<String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("member stopped"))?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        let answer = tokio::time::timeout(Duration::from_secs(120), self.lines.next_line())
            .await
            .map_err(|_| anyhow!("no answer to {line:?}"))??
            .ok_or_else(|| anyhow!("the member exited while asked {line:?}"))?;
        if let Some(err) = answer.strip_prefix("ERR ") {
            bail!("{line}: {err}");
        }
        Ok(answer)
    }

    /// SIGKILL, as a crash.
    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Closes stdin and waits for a clean exit (killed after 10 s).
    async fn stop(mut self) {
        self.stdin = None;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }
}

// ---- workloads ----

async fn warm_up(client: &Putter, value: &[u8], prefix: &str) -> Result<()> {
    let mut client = client.clone();
    for i in 0..WARMUP_PUTS {
        client
            .put(format!("/bench/{prefix}/warmup/{i:08}"), value.to_vec())
            .await
            .context("warm-up put")?;
    }
    Ok(())
}

/// `total` puts from `clients` concurrent clients sharing `client`, reported as they end.
async fn measured_puts(
    client: &Putter,
    clients: usize,
    total: usize,
    workload: &str,
    value: &[u8],
) -> Result<PutResult> {
    let result = puts(
        std::slice::from_ref(client),
        clients,
        total,
        &format!("/bench/{workload}/"),
        value,
    )
    .await?;
    eprintln!(
        "   {workload}: {total} puts, {clients} client(s): {:.0} writes/s, p99 {:.2} ms",
        result.writes_per_sec,
        millis(result.latency.p99)
    );
    Ok(result)
}

/// The 1-client and (unless `--single-client`) many-client workloads through `client`.
async fn put_workloads(
    args: &StoreHaArgs,
    client: &Putter,
    via: &str,
    value: &[u8],
) -> Result<(PutResult, Option<PutResult>)> {
    warm_up(client, value, via).await?;
    let seq = measured_puts(client, 1, args.seq, &format!("{via}-seq"), value).await?;
    if args.single_client {
        return Ok((seq, None));
    }
    let concurrent = measured_puts(
        client,
        args.clients,
        args.concurrent,
        &format!("{via}-concurrent"),
        value,
    )
    .await?;
    Ok((seq, Some(concurrent)))
}

/// Keeps `clients` clients writing through `client`, runs `kill` after `seconds`, keeps
/// writing `seconds` more, and measures the longest stretch without an acknowledged write.
async fn failover(
    client: &Putter,
    clients: usize,
    seconds: u64,
    value: &[u8],
    kill: impl std::future::Future<Output = Result<()>>,
) -> Result<Failover> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for c in 0..clients {
        let mut client = client.clone();
        let (stop, value) = (Arc::clone(&stop), value.to_vec());
        tasks.spawn(async move {
            let (mut acks, mut failed, mut first_error) = (Vec::new(), 0usize, None);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match client
                    .put(format!("/bench/failover/{c}/{i:08}"), value.clone())
                    .await
                {
                    Ok(()) => acks.push(Instant::now()),
                    Err(err) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{err:#}"));
                        // A member that fails fast must not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                i += 1;
            }
            (acks, failed, first_error)
        });
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Futures are lazy: `kill` finds and kills the leader only now.
    let killed = kill.await;
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let stopped_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let (mut acks, mut failed, mut error) = (Vec::new(), 0, None);
    // Per client: how long after the kill its first write was acknowledged (the whole window
    // when none was).
    let mut slowest_back = Duration::ZERO;
    while let Some(joined) = tasks.join_next().await {
        let (a, f, e) = joined.context("a client task failed")?;
        let back = a
            .iter()
            .find(|at| **at > killed_at)
            .map_or(stopped_at - killed_at, |at| *at - killed_at);
        slowest_back = slowest_back.max(back);
        acks.extend(a);
        failed += f;
        error = error.or(e);
    }
    if let Some(error) = error {
        eprintln!("   failover: a failed write said: {error}");
    }
    killed?;
    acks.sort();
    // The end of the window closes the last gap: writes that never resumed count whole.
    let gap = acks
        .iter()
        .chain(std::iter::once(&stopped_at))
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| *w[1] - *w[0])
        .max()
        .ok_or_else(|| anyhow!("no write was acknowledged around the failover"))?;
    eprintln!(
        "   failover: no write acknowledged for {:.0} ms; every client writing again after \
         {:.0} ms; {} acknowledged, {failed} failed",
        millis(gap),
        millis(slowest_back),
        acks.len()
    );
    Ok(Failover {
        gap,
        slowest_back,
        acked: acks.len(),
        failed,
    })
}

// ---- the two systems ----

async fn bench_shoal(args: &StoreHaArgs, value: &[u8]) -> Result<Results> {
    let dir = args.systems.temp_dir("shoal-bench-store-ha-")?;
    let pki = write_pki(dir.path(), 2 * MEMBERS)?;
    let pki_of = |n: usize| {
        pki.get(n)
            .cloned()
            .ok_or_else(|| anyhow!("no certificate {n}"))
    };

    // Led by the embedded member.
    eprintln!("   cluster 1: the embedded member leads");
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let store = RaftStore::open(member_config(
        &dir.path().join("a0"),
        listen,
        &pki_of(0)?,
        true,
    )?)
    .await
    .context("opening the embedded member")?;
    let mut children = Vec::new();
    for n in 1..MEMBERS {
        let child =
            MemberProcess::start(&dir.path().join(format!("a{n}")), &pki_of(n)?, false).await?;
        store
            .add_member(child.id, child.addr.clone())
            .await
            .context("adding a member")?;
        children.push(child);
    }
    let client = Putter::Shoal(store.clone());
    let (leader_seq, leader_concurrent) = put_workloads(args, &client, "leader", value).await?;
    store.shutdown().await?;
    drop(store);
    for child in children {
        child.stop().await;
    }

    // Led by a child; the embedded member follows.
    eprintln!("   cluster 2: a child process leads, the embedded member follows");
    let mut leader = MemberProcess::start(&dir.path().join("b0"), &pki_of(MEMBERS)?, true).await?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let store = RaftStore::open(member_config(
        &dir.path().join("b1"),
        listen,
        &pki_of(MEMBERS + 1)?,
        false,
    )?)
    .await
    .context("opening the embedded member")?;
    leader
        .command(&format!("add {} {listen}", store.node_id()))
        .await?;
    let other = MemberProcess::start(&dir.path().join("b2"), &pki_of(MEMBERS + 2)?, false).await?;
    leader
        .command(&format!("add {} {}", other.id, other.addr))
        .await?;
    store.wait_ready(Duration::from_secs(30)).await?;
    if store.is_leader() {
        bail!("the embedded member leads cluster 2; it was meant to follow");
    }
    let client = Putter::Shoal(store.clone());
    let (follower_seq, follower_concurrent) =
        put_workloads(args, &client, "follower", value).await?;
    let mut children = [leader, other];
    let kill = async {
        // Whoever leads at this moment (elections under load may have moved it).
        let leads = store.leader();
        let child = children
            .iter_mut()
            .find(|c| Some(c.id) == leads)
            .ok_or_else(|| {
                anyhow!("leadership moved to the embedded member during the run (an election under load): no child leader to kill; run again")
            })?;
        child.kill().await;
        eprintln!("   killed the leader (node {})", child.id);
        Ok(())
    };
    let failover = match args.single_client {
        true => {
            drop(kill);
            None
        }
        false => Some(failover(&client, args.clients, args.failover_seconds, value, kill).await?),
    };
    store.shutdown().await?;
    drop(store);
    for child in children {
        child.stop().await;
    }
    Ok(Results {
        leader_seq,
        leader_concurrent,
        follower_seq,
        follower_concurrent,
        failover,
    })
}

async fn bench_etcd(args: &StoreHaArgs, value: &[u8]) -> Result<Results> {
    let mut cluster = EtcdCluster::start(&args.systems.etcd, &args.systems.dir, MEMBERS)?;
    let result = async {
        cluster.wait_ready(Duration::from_secs(30)).await?;
        let leader = cluster.leader().await?;
        let follower = (leader + 1) % MEMBERS;
        let url = |i: usize| {
            cluster
                .client_url(i)
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no etcd member {i}"))
        };
        let to_leader = Putter::Etcd(EtcdClient::connect(&url(leader)?).await?);
        let (leader_seq, leader_concurrent) =
            put_workloads(args, &to_leader, "leader", value).await?;
        let to_follower = Putter::Etcd(EtcdClient::connect(&url(follower)?).await?);
        let (follower_seq, follower_concurrent) =
            put_workloads(args, &to_follower, "follower", value).await?;
        let cluster_ref = &mut cluster;
        let kill = async move {
            // Whoever leads at this moment (elections under load may have moved it).
            let leads = cluster_ref.leader().await?;
            if leads == follower {
                bail!("the etcd member the clients write through became the leader; run again");
            }
            cluster_ref.kill(leads);
            eprintln!("   killed the leader (member {leads})");
            Ok(())
        };
        let failover = match args.single_client {
            true => None,
            false => Some(
                failover(
                    &to_follower,
                    args.clients,
                    args.failover_seconds,
                    value,
                    kill,
                )
                .await?,
            ),
        };
        Ok::<Results, anyhow::Error>(Results {
            leader_seq,
            leader_concurrent,
            follower_seq,
            follower_concurrent,
            failover,
        })
    }
    .await;
    if result.is_err() {
        eprintln!("   etcd's logs end with:\n{}", cluster.log_tails());
    }
    result
}

// ---- the report ----

fn report(
    args: &StoreHaArgs,
    shoal: Option<Results>,
    etcd: Option<Results>,
    etcd_version: Option<&str>,
    fs_type: &str,
) -> String {
    let mut out = String::new();
    let etcd_name = etcd_version.map_or("etcd".to_string(), |v| format!("etcd {v}"));
    out.push_str(&format!(
        "\nShoal: 3 members over mutual TLS on loopback, the one written to embedded in the \
         benchmark process, the others child processes. {etcd_name}: 3 member processes, one \
         gRPC connection from the benchmark. Data under {} ({fs_type}); both sync every commit \
         on every member. Values {VALUE_BYTES} B, {WARMUP_PUTS} warm-up puts first. Failover: \
         {} clients write through a follower for {} s, the leader is SIGKILLed, {} s more.\n\n",
        args.systems.dir.display(),
        args.clients,
        args.failover_seconds,
        args.failover_seconds,
    ));
    out.push_str("| workload | metric | Shoal | etcd | Shoal/etcd (latency: etcd/Shoal; >1 = Shoal better) |\n");
    out.push_str("|---|---|---:|---:|---:|\n");
    type Pick = fn(&Results) -> Option<PutResult>;
    let workloads: [(String, Pick); 4] = [
        (
            format!("through the leader, 1 client ({} puts)", args.seq),
            |r| Some(r.leader_seq),
        ),
        (
            format!(
                "through the leader, {} clients ({} puts)",
                args.clients, args.concurrent
            ),
            |r| r.leader_concurrent,
        ),
        (
            format!("through a follower, 1 client ({} puts)", args.seq),
            |r| Some(r.follower_seq),
        ),
        (
            format!(
                "through a follower, {} clients ({} puts)",
                args.clients, args.concurrent
            ),
            |r| r.follower_concurrent,
        ),
    ];
    let metrics: [Metric<PutResult>; 3] = [
        Metric::new("writes/s", |r| r.writes_per_sec, false, 0),
        Metric::new("p50 (ms)", |r| millis(r.latency.p50), true, 2),
        Metric::new("p99 (ms)", |r| millis(r.latency.p99), true, 2),
    ];
    for (name, workload) in &workloads {
        for (i, metric) in metrics.iter().enumerate() {
            let label = if i == 0 { name.as_str() } else { "" };
            let pick = |r: &Results| workload(r).map(|w| (metric.pick)(&w));
            metric.row(
                &mut out,
                label,
                shoal.as_ref().and_then(pick),
                etcd.as_ref().and_then(pick),
            );
        }
    }
    let failover: [Metric<Failover>; 4] = [
        Metric::new("longest write gap (ms)", |f| millis(f.gap), true, 0),
        Metric::new(
            "until every client wrote again (ms)",
            |f| millis(f.slowest_back),
            true,
            0,
        ),
        Metric::new("failed writes", |f| f.failed as f64, true, 0),
        Metric::new("acknowledged writes", |f| f.acked as f64, false, 0),
    ];
    for (i, metric) in failover.iter().enumerate() {
        let label = if i == 0 {
            "leader SIGKILLed under load"
        } else {
            ""
        };
        let pick = |r: &Results| r.failover.map(|f| (metric.pick)(&f));
        metric.row(
            &mut out,
            label,
            shoal.as_ref().and_then(pick),
            etcd.as_ref().and_then(pick),
        );
    }
    out
}

/// One figure of the report, read from a result of type `T`.
struct Metric<T> {
    name: &'static str,
    pick: fn(&T) -> f64,
    lower_is_better: bool,
    decimals: usize,
}

impl<T> Metric<T> {
    fn new(
        name: &'static str,
        pick: fn(&T) -> f64,
        lower_is_better: bool,
        decimals: usize,
    ) -> Self {
        Metric {
            name,
            pick,
            lower_is_better,
            decimals,
        }
    }

    fn row(&self, out: &mut String, workload: &str, shoal: Option<f64>, etcd: Option<f64>) {
        row(
            out,
            workload,
            self.name,
            shoal,
            etcd,
            self.lower_is_better,
            self.decimals,
        );
    }
}

fn row(
    out: &mut String,
    workload: &str,
    metric: &str,
    shoal: Option<f64>,
    etcd: Option<f64>,
    lower_is_better: bool,
    decimals: usize,
) {
    // Not measured by either (`--single-client`).
    if shoal.is_none() && etcd.is_none() {
        return;
    }
    let cell = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.decimals$}"));
    let ratio = match (shoal, etcd) {
        (Some(s), Some(e)) if s > 0.0 && e > 0.0 => {
            format!("{:.2}×", if lower_is_better { e / s } else { s / e })
        }
        _ => "—".to_string(),
    };
    out.push_str(&format!(
        "| {workload} | {metric} | {} | {} | {ratio} |\n",
        cell(shoal),
        cell(etcd)
    ));
}
