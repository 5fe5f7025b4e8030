//! What the store benchmarks (`shoal-bench store` and `store-ha`) share: a client of either
//! system, the put workloads, incompressible values, and the check that data lands on a real
//! disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use shoal_store::{RaftStore, Store};
use tokio::task::JoinSet;

use crate::etcd::EtcdClient;
use crate::latency::{Latencies, Summary};

/// One of the two systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    Shoal,
    Etcd,
}

/// Which systems a store benchmark runs and where their data goes (flattened into each
/// benchmark's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct Systems {
    /// Benchmark only one of the two systems.
    #[arg(long, value_enum)]
    pub only: Option<System>,
    /// Where the temporary data directories go; must be a real disk, not tmpfs.
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd: PathBuf,
}

impl Systems {
    /// Whether `system` is benchmarked.
    pub fn runs(&self, system: System) -> bool {
        self.only.is_none_or(|only| only == system)
    }

    /// Checks the data directory and, when etcd runs, its binary: returns the directory's
    /// filesystem type and etcd's version.
    pub fn check(&self) -> Result<(String, Option<String>)> {
        let fs_type = check_data_dir(&self.dir)?;
        if !self.runs(System::Etcd) {
            return Ok((fs_type, None));
        }
        if !self.etcd.is_file() {
            bail!(
                "etcd not found at {}: install Debian's etcd-server (apt-get install etcd-server), \
                 pass --etcd PATH, or run with --only shoal",
                self.etcd.display()
            );
        }
        Ok((fs_type, Some(crate::etcd::version(&self.etcd)?)))
    }

    /// Runs the selected systems' benchmarks, one after the other (never side by side).
    pub async fn each<T>(
        &self,
        shoal: impl std::future::Future<Output = Result<T>>,
        etcd: impl std::future::Future<Output = Result<T>>,
    ) -> Result<(Option<T>, Option<T>)> {
        let shoal = match self.runs(System::Shoal) {
            true => Some(shoal.await.context("benchmarking Shoal")?),
            false => None,
        };
        let etcd = match self.runs(System::Etcd) {
            true => Some(etcd.await.context("benchmarking etcd")?),
            false => None,
        };
        Ok((shoal, etcd))
    }

    /// A fresh temporary directory under `--dir`.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.dir)
            .with_context(|| format!("creating a temporary directory in {}", self.dir.display()))
    }
}

/// Longest a single put may take before it counts as failed.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Something to put to: an embedded store or an etcd client.
#[derive(Debug, Clone)]
pub enum Putter {
    Shoal(RaftStore),
    Etcd(EtcdClient),
}

impl Putter {
    /// One put, failed after [`OP_TIMEOUT`].
    pub async fn put(&mut self, key: String, value: Vec<u8>) -> Result<()> {
        let put = async {
            match self {
                Putter::Shoal(store) => {
                    store.put(&key, value).await?;
                }
                Putter::Etcd(client) => {
                    client.put(key.into_bytes(), value).await?;
                }
            }
            Ok::<(), anyhow::Error>(())
        };
        tokio::time::timeout(OP_TIMEOUT, put)
            .await
            .map_err(|_| anyhow!("a put took longer than {OP_TIMEOUT:?}"))?
    }
}

/// Throughput and latencies of a put workload.
#[derive(Debug, Clone, Copy)]
pub struct PutResult {
    pub writes_per_sec: f64,
    pub latency: Summary,
}

/// `total` puts of `value` at `{key_prefix}{i:08}` from `clients` concurrent clients, which
/// use `putters` round-robin (for etcd: its connections). The first failure ends it.
pub async fn puts(
    putters: &[Putter],
    clients: usize,
    total: usize,
    key_prefix: &str,
    value: &[u8],
) -> Result<PutResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for client in 0..clients {
        let mut putter = putters
            .get(client % putters.len().max(1))
            .ok_or_else(|| anyhow!("no client to put with"))?
            .clone();
        let (next, value, key_prefix) = (Arc::clone(&next), value.to_vec(), key_prefix.to_string());
        tasks.spawn(async move {
            let mut latencies = Latencies::with_capacity(total / clients + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<Latencies, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                putter
                    .put(format!("{key_prefix}{i:08}"), value.clone())
                    .await
                    .with_context(|| format!("put to {key_prefix}"))?;
                latencies.record(t.elapsed());
            }
        });
    }
    let mut latencies = Latencies::with_capacity(total);
    while let Some(joined) = tasks.join_next().await {
        latencies.merge(joined.context("a client task failed")??);
    }
    let elapsed = start.elapsed();
    let latency = latencies
        .summary()
        .ok_or_else(|| anyhow!("no puts were measured (count 0?)"))?;
    Ok(PutResult {
        writes_per_sec: total as f64 / elapsed.as_secs_f64(),
        latency,
    })
}

/// Pseudo-random bytes, so nothing on either side compresses them away.
pub fn value_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Checks that `dir` exists and is not tmpfs (fsync there would be free); returns its
/// filesystem type.
fn check_data_dir(dir: &Path) -> Result<String> {
    if !dir.is_dir() {
        bail!("--dir {} is not a directory", dir.display());
    }
    let dir_arg = dir.to_string_lossy();
    let fs_type = command_output("findmnt", &["-n", "-o", "FSTYPE", "-T", &dir_arg])
        .or_else(|| command_output("stat", &["-f", "-c", "%T", &dir_arg]))
        .unwrap_or_else(|| "unknown".into());
    if fs_type == "tmpfs" || fs_type == "ramfs" {
        bail!(
            "--dir {} is on {fs_type}: fsync would cost nothing there, so the numbers would not \
             mean durable writes; use a directory on disk such as /var/tmp",
            dir.display()
        );
    }
    Ok(fs_type)
}

/// A command's trimmed standard output, if it ran and succeeded.
pub fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}
