//! The HTTP figure of `shoal-bench proxy`: a small HTTP/1.1 server in the backend pod's
//! namespace, and `hey` and `wrk` run from the client pod's namespace against the backend
//! directly, a ClusterIP (through nftables, and translated at `connect()` by the socket LB)
//! and the peer's plain DNAT, alternating in rounds.
//!
//! The server is a fixed pool of threads blocked in `accept`, each serving one connection at
//! a time with a constant 2-byte body: a few microseconds per request, so neither its cost
//! (it must not hide the paths' difference) nor a thread spawn per connection (noise) is in
//! the figure. Parsing the tools' reports is pure and tested on fixtures.

use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{sched_setaffinity, setns, CloneFlags, CpuSet};
use nix::unistd::Pid;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
const RESPONSE_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok";
/// A request head larger than this is refused (the tools send ~100 bytes).
const MAX_HEAD: usize = 8192;

/// Where the first request in `buf` ends (past its blank line) and whether it asks for the
/// connection to be closed; `None` while its head is incomplete. Requests have no body.
pub fn request_end(buf: &[u8]) -> Option<(usize, bool)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let close = buf[..end].split(|b| *b == b'\n').any(|line| {
        let line = line.trim_ascii();
        line.len() >= 11
            && line[..11].eq_ignore_ascii_case(b"connection:")
            && line[11..].trim_ascii().eq_ignore_ascii_case(b"close")
    });
    Some((end, close))
}

/// Answers every request of one connection until the client closes it or asks to.
fn serve(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut filled = 0;
    loop {
        let n = conn.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        while let Some((end, close)) = request_end(&buf[..filled]) {
            conn.write_all(if close { RESPONSE_CLOSE } else { RESPONSE })?;
            if close {
                return Ok(());
            }
            buf.copy_within(end..filled, 0);
            filled -= end;
        }
        if filled == buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

/// The backend's HTTP server; stopped (and its threads joined) by [`HttpServer::stop`] or
/// on drop.
pub struct HttpServer {
    addr: SocketAddrV4,
    netns: PathBuf,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `addr` inside the network namespace at `netns`, with `workers` threads (each
    /// kept-alive client connection holds one).
    /// `cpu`: the one CPU its threads run on.
    pub fn start(
        netns: PathBuf,
        addr: SocketAddrV4,
        workers: usize,
        cpu: Option<usize>,
    ) -> Result<HttpServer> {
        let listener = in_netns(&netns, move || {
            TcpListener::bind(addr).with_context(|| format!("bind {addr}"))
        })?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers.max(1))
            .map(|_| {
                let listener = Arc::clone(&listener);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    if let Some(cpu) = cpu {
                        // Pinned by the caller's choice; unpinned it still serves.
                        let _ = pin(cpu);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((conn, _)) = listener.accept() {
                            // A client's reset or a malformed request ends that connection only.
                            let _ = serve(conn);
                        }
                    }
                })
            })
            .collect();
        Ok(HttpServer {
            addr,
            netns,
            stop,
            workers,
        })
    }

    /// Stops the workers: each blocked in `accept` is woken by a connection of its own.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.workers.is_empty() {
            return Ok(());
        }
        self.stop.store(true, Ordering::Relaxed);
        let (addr, count) = (self.addr, self.workers.len());
        in_netns(&self.netns, move || {
            for _ in 0..count {
                // A worker may have exited already; the others each take one of these.
                let _ = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1));
            }
            Ok(())
        })?;
        for worker in self.workers.drain(..) {
            worker
                .join()
                .map_err(|_| anyhow!("HTTP server thread panicked"))?;
        }
        Ok(())
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Pins the calling thread (and what it starts from now on) to `cpu`.
pub fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pin to CPU {cpu}"))
}

/// Runs `f` on a thread in the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(netns).with_context(|| format!("open {netns:?}"))?;
            setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in {netns:?} panicked"))?
    })
}

/// One run of a load tool against one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpRun {
    /// Requests answered with a 2xx status.
    pub requests: u64,
    /// Requests that failed (connect, read, write, timeout, or a non-2xx status).
    pub errors: u64,
    /// How long the run took.
    pub seconds: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `hey -disable-keepalive`: a new connection per request (Go's client).
    HeyNewConnection,
    /// `wrk` with `Connection: close`: a new connection per request (the server closes).
    WrkNewConnection,
    /// `wrk`: requests on kept-alive connections.
    WrkKeepAlive,
}

impl Mode {
    pub const ALL: [Mode; 3] = [
        Mode::HeyNewConnection,
        Mode::WrkNewConnection,
        Mode::WrkKeepAlive,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Mode::HeyNewConnection => "hey -disable-keepalive (a new connection per request)",
            Mode::WrkNewConnection => "wrk, Connection: close (a new connection per request)",
            Mode::WrkKeepAlive => "wrk, kept-alive connections",
        }
    }
}

/// The wrk script printing the figures wrk keeps in microseconds (its own report rounds).
const WRK_SCRIPT: &str = r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("shoal-wrk requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

/// How each run is sized.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Requests per `hey` run.
    pub requests: usize,
    /// Length of a `wrk` run.
    pub seconds: u32,
    /// Concurrent connections (hey's workers, wrk's connections).
    pub concurrency: usize,
}

/// The load tools, checked to be installed.
pub struct Tools {
    wrk_script: tempfile::NamedTempFile,
}

impl Tools {
    pub fn find() -> Result<Tools> {
        for tool in ["hey", "wrk"] {
            let found = std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
                .unwrap_or(false);
            if !found {
                bail!("`{tool}` is not installed (scripts/setup-debian.sh installs it; --http-requests 0 skips the HTTP figure)");
            }
        }
        let mut wrk_script = tempfile::Builder::new()
            .prefix("shoal-bench-wrk")
            .suffix(".lua")
            .tempfile()?;
        wrk_script.write_all(WRK_SCRIPT.as_bytes())?;
        Ok(Tools { wrk_script })
    }

    /// Runs `mode` against `target` (from the calling thread's network namespace).
    pub fn run(&self, mode: Mode, target: SocketAddrV4, load: Load) -> Result<HttpRun> {
        let url = format!("http://{target}/");
        let concurrency = load.concurrency.max(1).to_string();
        let mut command = match mode {
            Mode::HeyNewConnection => {
                let mut c = Command::new("hey");
                c.args(["-disable-keepalive", "-n"])
                    .arg(load.requests.max(load.concurrency).to_string())
                    .args(["-c", &concurrency, "-cpus", "1", &url]);
                c
            }
            Mode::WrkNewConnection | Mode::WrkKeepAlive => {
                let mut c = Command::new("wrk");
                c.args(["-t", "1", "-c", &concurrency, "-d"])
                    .arg(format!("{}s", load.seconds.max(1)))
                    .arg("-s")
                    .arg(self.wrk_script.path());
                if mode == Mode::WrkNewConnection {
                    c.args(["-H", "Connection: close"]);
                }
                c.arg(&url);
                c
            }
        };
        let out = command
            .output()
            .with_context(|| format!("run {command:?}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{command:?} failed: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        match mode {
            Mode::HeyNewConnection => parse_hey(&stdout),
            Mode::WrkNewConnection | Mode::WrkKeepAlive => parse_wrk(&stdout),
        }
        .with_context(|| format!("{command:?} printed:\n{stdout}"))
    }
}

fn field<'a>(text: &'a str, key: &str) -> Result<&'a str> {
    text.split_whitespace()
        .find_map(|t| t.strip_prefix(key).and_then(|t| t.strip_prefix('=')))
        .ok_or_else(|| anyhow!("no {key}= in wrk's report"))
}

/// The line [`WRK_SCRIPT`] prints.
pub fn parse_wrk(stdout: &str) -> Result<HttpRun> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("shoal-wrk "))
        .ok_or_else(|| anyhow!("no shoal-wrk line"))?;
    let number = |key: &str| -> Result<u64> {
        field(line, key)?
            .parse::<u64>()
            .with_context(|| format!("{key} in {line:?}"))
    };
    let errors = number("errors")?;
    Ok(HttpRun {
        requests: number("requests")?.saturating_sub(errors),
        errors,
        seconds: number("duration_us")? as f64 / 1e6,
        p50: Duration::from_micros(number("p50_us")?),
        p99: Duration::from_micros(number("p99_us")?),
    })
}

/// hey's summary: total time, the latency distribution (in 0.1 ms steps: hey prints four
/// decimals of a second) and the status codes.
pub fn parse_hey(stdout: &str) -> Result<HttpRun> {
    let seconds_after = |prefix: &str| -> Result<f64> {
        let line = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .ok_or_else(|| anyhow!("no {prefix:?} in hey's report"))?;
        line[prefix.len()..]
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("unreadable {line:?}"))
    };
    let mut ok = 0;
    let mut errors = 0;
    let mut in_errors = false;
    for line in stdout.lines().map(str::trim) {
        if line.starts_with("Error distribution") {
            in_errors = true;
        } else if let Some(rest) = line.strip_prefix('[') {
            // "[200]\t4000 responses" or, under errors, "[12]\tGet …: connection refused"
            let (code, rest) = rest.split_once(']').unwrap_or(("", rest));
            let count = rest
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
            if in_errors {
                errors += code.parse::<u64>().unwrap_or(0);
            } else if code.starts_with('2') {
                ok += count;
            } else {
                errors += count;
            }
        }
    }
    if ok == 0 {
        bail!("no successful request");
    }
    let seconds = |s: f64| Duration::from_secs_f64(s);
    Ok(HttpRun {
        requests: ok,
        errors,
        seconds: seconds_after("Total:")?,
        p50: seconds(seconds_after("50% in")?),
        p99: seconds(seconds_after("99% in")?),
    })
}

/// Runs over rounds of one mode and one target: medians over the rounds, so that a round
/// slowed by another process on the machine does not move the figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figure {
    pub requests_per_second: f64,
    pub errors: u64,
    pub p50: Duration,
    pub p99: Duration,
}

fn median<T: PartialOrd + Copy>(mut all: Vec<T>) -> Option<T> {
    all.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    all.get(all.len() / 2).copied()
}

pub fn figure(runs: &[HttpRun]) -> Option<Figure> {
    let rates = runs
        .iter()
        .filter(|r| r.seconds > 0.0)
        .map(|r| r.requests as f64 / r.seconds)
        .collect();
    Some(Figure {
        requests_per_second: median(rates)?,
        errors: runs.iter().map(|r| r.errors).sum(),
        p50: median(runs.iter().map(|r| r.p50).collect())?,
        p99: median(runs.iter().map(|r| r.p99).collect())?,
    })
}

/// One report line: each target's figure, and the ClusterIP's (nftables, socket LB) and the
/// peer's cost per
/// request over direct, from requests/s (the time per request, all of it counted) and at
/// p50 (wrk's latency excludes the connection's handshake; hey's steps are 0.1 ms).
pub fn line(mode: Mode, figures: &[Figure; 4]) -> String {
    let [direct, cluster_ip, socket_lb, peer] = figures;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let one = |name: &str, f: &Figure| {
        let mut s = format!(
            "{name} {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs",
            f.requests_per_second,
            us(f.p50),
            us(f.p99)
        );
        if f.errors > 0 {
            s.push_str(&format!(" ({} errors)", f.errors));
        }
        s
    };
    let over = |f: &Figure| {
        (
            (direct.requests_per_second / f.requests_per_second - 1.0) * 100.0,
            (us(f.p50) / us(direct.p50) - 1.0) * 100.0,
        )
    };
    let ((v_rate, v_p50), (s_rate, s_p50), (p_rate, p_p50)) =
        (over(cluster_ip), over(socket_lb), over(peer));
    format!(
        "{}: {}; {} ({v_rate:+.1}% per request, {v_p50:+.1}% at p50); {} ({s_rate:+.1}%, {s_p50:+.1}%); {} ({p_rate:+.1}%, {p_p50:+.1}%)\n",
        mode.describe(),
        one("direct", direct),
        one("ClusterIP", cluster_ip),
        one("ClusterIP with the socket LB", socket_lb),
        one("peer's plain DNAT", peer),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        assert_eq!(request_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            request_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET"),
            Some((27, false))
        );
        assert_eq!(
            request_end(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            Some((46, true))
        );
        assert_eq!(
            request_end(b"GET / HTTP/1.1\r\nconnection:Close\r\n\r\n"),
            Some((36, true))
        );
        assert_eq!(
            request_end(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"),
            Some((42, false))
        );
    }

    #[test]
    fn wrk_line() {
        let out = "Running 1s test @ http://10.96.0.1:82/\n  1 threads and 1 connections\nshoal-wrk requests=12000 duration_us=1000500 errors=3 p50_us=71 p99_us=140\n";
        let run = parse_wrk(out).unwrap();
        assert_eq!(run.requests, 11_997);
        assert_eq!(run.errors, 3);
        assert!((run.seconds - 1.0005).abs() < 1e-9);
        assert_eq!(run.p50, Duration::from_micros(71));
        assert_eq!(run.p99, Duration::from_micros(140));
        assert!(parse_wrk("Running 1s test\n").is_err());
    }

    const HEY: &str = "\nSummary:\n  Total:\t0.1658 secs\n  Slowest:\t0.0046 secs\n  Fastest:\t0.0003 secs\n  Average:\t0.0008 secs\n  Requests/sec:\t1206.4408\n  \n\nLatency distribution:\n  10% in 0.0004 secs\n  25% in 0.0004 secs\n  50% in 0.0005 secs\n  75% in 0.0006 secs\n  90% in 0.0008 secs\n  95% in 0.0042 secs\n  99% in 0.0045 secs\n\nStatus code distribution:\n  [200]\t198 responses\n  [503]\t1 responses\n\nError distribution:\n  [1]\tGet \"http://10.96.0.1:82/\": dial tcp: connection refused\n";

    #[test]
    fn hey_summary() {
        let run = parse_hey(HEY).unwrap();
        assert_eq!(run.requests, 198);
        assert_eq!(run.errors, 2);
        assert!((run.seconds - 0.1658).abs() < 1e-9);
        assert_eq!(run.p50, Duration::from_micros(500));
        assert_eq!(run.p99, Duration::from_micros(4500));
        assert!(parse_hey("Summary:\n  Total:\t0.1 secs\n").is_err());
    }

    #[test]
    fn figures_and_overhead() {
        let run = |requests, p50| HttpRun {
            requests,
            errors: 0,
            seconds: 1.0,
            p50: Duration::from_micros(p50),
            p99: Duration::from_micros(p50 * 2),
        };
        // A round slowed down does not move the medians.
        let direct = figure(&[run(10_000, 100), run(3_000, 900), run(10_200, 90)]).unwrap();
        assert_eq!(direct.requests_per_second, 10_000.0);
        assert_eq!(direct.p50, Duration::from_micros(100));
        assert_eq!(direct.p99, Duration::from_micros(200));
        let slower = figure(&[run(9_000, 110)]).unwrap();
        let text = line(Mode::WrkKeepAlive, &[direct, slower, direct, direct]);
        assert!(
            text.contains(
                "ClusterIP 9000 req/s, p50 110 µs, p99 220 µs (+11.1% per request, +10.0% at p50)"
            ),
            "{text}"
        );
        assert!(text.contains("(+0.0%, +0.0%)"), "{text}");
        assert!(figure(&[]).is_none());
    }
}
