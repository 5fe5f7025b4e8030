//! The harness integration tests share: a `shoal server` on a loopback port with its data in
//! a temporary directory, real kubectl against it, `shoal agent`s joined to it with its token,
//! and `shoal simulate-nodes` fleets.
#![allow(clippy::missing_panics_doc)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::server::{free_port, ShoalServer};

use crate::kubectl::Kubectl;
pub use crate::kubectl::{kubectl_binary, ok};

/// Agent flags for tests on a real node: any free node API port, and no disk-pressure
/// eviction (the build machines' disks are often over 90% full, which is disk pressure by
/// Kubernetes' default threshold and would taint the node; the tests do not need it).
pub const TEST_NODE_FLAGS: [&str; 4] = [
    "--kubelet-port",
    "0",
    "--eviction-hard",
    "nodefs.available<1%",
];

/// A server with its data in a temporary directory (the server is killed before the
/// directory is removed), driven with real kubectl.
#[derive(Debug)]
pub struct Cluster {
    binary: PathBuf,
    server: Option<ShoalServer>,
    /// Whether the server runs its agent (containerd and real containers to clean up).
    with_agent: bool,
    /// `shoal agent`s joined to the server, stopped (after their pods) when the cluster drops.
    agents: Vec<Agent>,
    pub dir: TempDir,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

/// A `shoal agent` process of a [`Cluster`].
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Agent {
    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 30 s); the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        crate::process::stop(self.child.take()?, Duration::from_secs(30))
    }
}

impl Cluster {
    /// Starts `binary server` (without an agent) on a free loopback port.
    pub fn start(binary: &Path) -> Cluster {
        let kubectl = kubectl_binary();
        let dir = TempDir::new().expect("tempdir");
        let port = free_port().expect("free port");
        let server =
            ShoalServer::start(binary, dir.path(), port, &[]).expect("shoal server starts");
        let kubeconfig = server.kubeconfig();
        Cluster {
            binary: binary.to_path_buf(),
            server: Some(server),
            with_agent: false,
            agents: Vec::new(),
            dir,
            kubeconfig,
            kubectl,
        }
    }

    /// Starts `binary server` with its node agent (its own containerd, real containers).
    pub fn start_with_agent(binary: &Path, extra: &[&str]) -> Cluster {
        let kubectl = kubectl_binary();
        let dir = TempDir::new().expect("tempdir");
        let port = free_port().expect("free port");
        let server = ShoalServer::start_with_agent(binary, dir.path(), port, extra)
            .expect("shoal server starts");
        let kubeconfig = server.kubeconfig();
        Cluster {
            binary: binary.to_path_buf(),
            server: Some(server),
            with_agent: true,
            agents: Vec::new(),
            dir,
            kubeconfig,
            kubectl,
        }
    }

    /// Starts `shoal agent` joining this cluster's server with the token the server wrote, its
    /// state in `<dir>/agents/<name>`; returns its index in [`Cluster::agent`].
    pub fn start_agent(&mut self, name: &str, extra: &[&str]) -> usize {
        let data_dir = self.dir.path().join("agents").join(name);
        std::fs::create_dir_all(&data_dir).expect("agent data dir");
        let token = std::fs::read_to_string(self.dir.path().join("server").join("token"))
            .expect("the server's token file");
        let log = self.dir.path().join("agents").join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("agent log");
        let child = Command::new(&self.binary)
            .args(["agent", "--server"])
            .arg(format!("https://127.0.0.1:{}", self.port()))
            .args(["--token", token.trim(), "--node-name", name, "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start shoal agent");
        self.agents.push(Agent {
            child: Some(child),
            data_dir,
            log,
        });
        self.agents.len() - 1
    }

    /// An agent [`Cluster::start_agent`] started.
    pub fn agent(&mut self, index: usize) -> &mut Agent {
        &mut self.agents[index]
    }

    /// Stops the server with SIGTERM and starts it again on the same data and port.
    pub fn restart(&mut self, extra: &[&str]) {
        let port = self.port();
        if let Some(server) = self.server.take() {
            server.stop().expect("server stops");
        }
        let server = if self.with_agent {
            ShoalServer::start_with_agent(&self.binary, self.dir.path(), port, extra)
        } else {
            ShoalServer::start(&self.binary, self.dir.path(), port, extra)
        };
        self.server = Some(server.expect("shoal server restarts"));
    }

    fn port(&self) -> u16 {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .expect("port in kubeconfig")
    }

    /// The server process.
    pub fn server(&self) -> &ShoalServer {
        self.server.as_ref().expect("server running")
    }

    /// kubectl against this cluster.
    pub fn kubectl_runner(&self) -> Kubectl {
        Kubectl {
            binary: self.kubectl.clone(),
            kubeconfig: self.kubeconfig.clone(),
            home: self.dir.path().to_path_buf(),
        }
    }

    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        self.kubectl_runner().run(args, input)
    }

    /// Runs kubectl and returns its stdout, failing the test if it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_runner().ok(args)
    }

    pub fn apply(&self, manifest: &str) {
        self.kubectl_runner().apply(manifest);
    }

    /// The object, or `None` when kubectl says NotFound.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        self.kubectl_runner().get(args)
    }

    /// The `items` of a list.
    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.kubectl_runner().items(args)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        self.kubectl_runner().json(args)
    }

    /// Waits until the cluster has exactly one node and it is Ready (a server with its agent).
    pub fn wait_for_ready_node(&self, timeout: Duration) {
        eventually("the node is Ready", timeout, || {
            let nodes = self.items(&["get", "nodes"]);
            (nodes.len() == 1 && crate::kubectl::is_ready(&nodes[0])).then_some(())
        });
    }

    /// Builds the busybox test image as `name` and imports it into the agent's containerd
    /// with `shoal images import`; returns the archive's path.
    pub fn import_busybox(&self, name: &str) -> PathBuf {
        let archive = crate::images::busybox_archive(self.dir.path(), name);
        crate::images::import(&self.binary, self.dir.path(), &archive);
        archive
    }

    /// Starts `shoal simulate-nodes --count COUNT` against this server and waits until
    /// its nodes are registered.
    pub fn start_simulator(&self, count: usize, extra: &[&str]) -> Simulator {
        let mut child = Command::new(&self.binary)
            .args([
                "simulate-nodes",
                "--count",
                &count.to_string(),
                "--kubeconfig",
            ])
            .arg(&self.kubeconfig)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shoal simulate-nodes");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let simulator = Simulator { child, lines };
        simulator.wait_for_log("simulated nodes registered", Duration::from_secs(60));
        simulator
    }
}

/// A running `shoal simulate-nodes`, killed if the test ends without stopping it.
#[derive(Debug)]
pub struct Simulator {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Simulator {
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("the simulator logged no {needle:?} within {timeout:?}"),
            }
        }
    }

    /// SIGTERM, then the exit code (within 15 s).
    pub fn stop(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the simulator did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Simulator {
    /// SIGKILL: the kubelets vanish without a word, as a machine that loses power.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the simulator");
        self.child.wait().expect("reap the simulator");
    }

    /// The simulator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Waits until the agent under `data_dir` has no containers left (sandboxes included): their
/// tasks stopped and the sandboxes removed, which is when their network namespaces and veths go.
pub fn wait_for_no_tasks(data_dir: &Path, timeout: Duration) {
    let socket = data_dir.join("agent/containerd/containerd.sock");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let listed = Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(["--namespace", "k8s.io", "containers", "ls", "--quiet"])
            .output();
        match listed {
            Ok(out) if out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace) => {
                return
            }
            Ok(out) if !out.status.success() => return,
            Err(_) => return,
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

impl Drop for Cluster {
    /// An agent's containerd and container shims outlive a killed server by design (the next
    /// agent adopts them); a test's must not outlive the test. They are found by the data
    /// directory in their command lines, so nothing else on the machine is touched.
    fn drop(&mut self) {
        if !self.with_agent && self.agents.is_empty() {
            return;
        }
        if std::thread::panicking() {
            // What the node saw, for the failure report.
            let out = self.kubectl_with_input(&["describe", "pods", "-A"], None);
            eprintln!(
                "--- kubectl describe pods\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            if let Some(server) = &self.server {
                let lines: Vec<String> = server
                    .unread_log()
                    .into_iter()
                    .filter(|l| !l.contains(" INFO "))
                    .collect();
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("server: {line}");
                }
            }
        }
        if self.server.is_some() {
            self.kubectl_runner().delete_all_pods();
            wait_for_no_tasks(self.dir.path(), Duration::from_secs(60));
            for agent in &self.agents {
                wait_for_no_tasks(&agent.data_dir, Duration::from_secs(60));
            }
        }
        for agent in &mut self.agents {
            if std::thread::panicking() {
                let log = agent.log_text();
                let lines: Vec<&str> = log.lines().filter(|l| !l.contains(" INFO ")).collect();
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("agent {}: {line}", agent.data_dir.display());
                }
            }
            agent.stop();
        }
        if let Some(server) = self.server.take() {
            let _ = server.stop();
        }
        crate::process::kill_and_unmount_under(self.dir.path());
        // The server's own agent is named after the host; agents after their directories.
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let agents = self
            .agents
            .iter()
            .filter_map(|a| a.data_dir.file_name()?.to_str().map(String::from));
        for node in std::iter::once(hostname.trim().to_string())
            .filter(|_| self.with_agent)
            .chain(agents)
        {
            crate::process::remove_pod_cgroups(&node);
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 200 ms until it returns Some, failing after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
