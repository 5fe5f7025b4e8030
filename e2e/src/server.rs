//! A `shoal server` process for tests and benchmarks: started from a binary with a data dir
//! and a loopback port, its log followed line by line, stopped (killed) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The log line a server prints once it serves.
pub const READY: &str = "shoal server ready";

/// Why a server could not be started or did not behave.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("no log line containing {needle:?} within {seconds} s")]
    Timeout { needle: String, seconds: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running server process.
#[derive(Debug)]
pub struct ShoalServer {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The HTTPS port (when started with [`ShoalServer::start`]).
    pub port: u16,
    /// The data dir (when started with [`ShoalServer::start`]).
    pub data_dir: PathBuf,
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl ShoalServer {
    /// Spawns `command` (a `shoal server …` invocation) with its stderr followed; does not wait.
    pub fn spawn(command: &mut Command) -> Result<ShoalServer, ServerError> {
        let binary = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ServerError::Spawn { binary, source })?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| std::io::Error::other("no stderr"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ShoalServer {
            child,
            lines,
            port: 0,
            data_dir: PathBuf::new(),
        })
    }

    /// Starts `binary server --disable-agent` on `127.0.0.1:port` with `data_dir` (and an empty
    /// config file in it, so the machine's own config is not read), plus `extra` flags, and
    /// waits until ready. Tests of the API and control plane run no node agent: an agent starts
    /// containerd, which would outlive a killed server.
    pub fn start(
        binary: &Path,
        data_dir: &Path,
        port: u16,
        extra: &[&str],
    ) -> Result<ShoalServer, ServerError> {
        let mut args = vec!["--disable-agent"];
        args.extend_from_slice(extra);
        Self::start_server(binary, data_dir, port, &args)
    }

    /// Like [`ShoalServer::start`], with the server's node agent (its own containerd).
    pub fn start_with_agent(
        binary: &Path,
        data_dir: &Path,
        port: u16,
        extra: &[&str],
    ) -> Result<ShoalServer, ServerError> {
        Self::start_server(binary, data_dir, port, extra)
    }

    fn start_server(
        binary: &Path,
        data_dir: &Path,
        port: u16,
        extra: &[&str],
    ) -> Result<ShoalServer, ServerError> {
        let config = data_dir.join("test-config.yaml");
        std::fs::create_dir_all(data_dir)?;
        std::fs::write(&config, "")?;
        let mut command = Command::new(binary);
        command
            .args([
                "server",
                "--bind-address",
                "127.0.0.1",
                "--https-listen-port",
            ])
            .arg(port.to_string())
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra);
        let mut server = ShoalServer::spawn(&mut command)?;
        server.port = port;
        server.data_dir = data_dir.to_path_buf();
        server.wait_for(READY, Duration::from_secs(30))?;
        Ok(server)
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, ServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => {
                    return Err(ServerError::Timeout {
                        needle: needle.into(),
                        seconds: timeout.as_secs(),
                    })
                }
            }
        }
    }

    /// The log lines not read yet.
    pub fn unread_log(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig.yaml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`-TERM`, `-INT`, `-KILL`) with `kill(1)`.
    pub fn signal(&self, signal: &str) -> Result<(), ServerError> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(ServerError::Io(std::io::Error::other(format!(
                "kill {signal} failed"
            ))))
        }
    }

    /// Waits up to `timeout` for the process to exit (killing it if it does not).
    pub fn wait_exit(mut self, timeout: Duration) -> Result<ExitStatus, ServerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(ServerError::Timeout {
                    needle: "exit".into(),
                    seconds: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(self) -> Result<ExitStatus, ServerError> {
        self.signal("-TERM")?;
        self.wait_exit(Duration::from_secs(20))
    }
}

impl Drop for ShoalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
