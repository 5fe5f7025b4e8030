//! Multi-node clusters on one machine: every node is a network namespace with its own data
//! directory, containerd and node agent, wired by a veth to a bridge in the root namespace that
//! stands in for the LAN (addresses from 172.31.0.0/16, a /24 per lab). Node 0 is a server
//! (with its agent); the others are `shoal agent`s joined with the server's token. Driven with
//! real kubectl from the root namespace.
//!
//! Everything a lab creates is removed when it drops, also when the test panics: pods are
//! deleted through their agents (so their network namespaces and veths go), then processes
//! are stopped — and anything left in a node's namespace or running from the lab's directory
//! is killed — mounts under the directory are unmounted, and the namespaces and bridge are
//! deleted (taking the veths, bridges, VXLAN devices and nftables tables inside with them).
//! A test interrupted before Drop runs (Ctrl-C, SIGKILL) leaves a marker under [`MARKERS`];
//! the next lab sweeps up after every marker whose process is gone.
//!
//! Needs root, `ip` (iproute2), `nsenter` (util-linux), containerd and runc: a missing one fails with a clear message.
#![allow(clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::cluster::wait_for_no_tasks;
use crate::kubectl::{kubectl_binary, Kubectl};
use crate::process::is_root;
use crate::server::READY;

/// The API port every server listens on inside its namespace.
pub const API_PORT: u16 = 6443;

/// Flags every lab node gets: the build machines' disks are often over 90% full, which is disk
/// pressure by Kubernetes' default threshold and would taint every node.
const NODE_FLAGS: &[&str] = &["--eviction-hard", "nodefs.available<1%"];

/// One machine of the lab.
#[derive(Debug)]
pub struct LabNode {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub data_dir: PathBuf,
    pub server: bool,
    /// Flags it was started with beyond the lab's own, for restarts.
    extra: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl LabNode {
    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it runs a node agent (and so registers a Node).
    pub fn has_agent(&self) -> bool {
        !(self.server && self.extra.iter().any(|f| f == "--disable-agent"))
    }
}

/// A running multi-node cluster.
#[derive(Debug)]
pub struct Lab {
    pub id: String,
    binary: PathBuf,
    bridge: String,
    /// `172.31.N`: the lab's /24.
    prefix: String,
    pub nodes: Vec<LabNode>,
    pub kubectl: Kubectl,
    /// The server's join token.
    pub token: String,
    pub dir: TempDir,
}

/// Fails the test unless `tool` runs.
fn require(tool: &str, args: &[&str], hint: &str) {
    let ok = Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "the multi-node lab needs `{tool}` ({hint})");
}

/// Runs a command that must succeed.
/// The cgroup a lab node's pods go under: named after the node's network namespace, which is
/// unique to the lab, where node names are not.
fn pod_cgroup_parent(netns: &str) -> String {
    format!("/shoal/{netns}")
}

fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// Starts a lab of one server and `agents` agents, waits until every node is Ready.
    /// `server_flags` go to the server only; `node_flags` to every node.
    pub fn start(binary: &Path, agents: usize, server_flags: &[&str], node_flags: &[&str]) -> Lab {
        let mut lab = Lab::new(binary);
        let server_extra: Vec<&str> = server_flags.iter().chain(node_flags).copied().collect();
        lab.add_server(&server_extra);
        for _ in 0..agents {
            lab.add_agent(node_flags);
        }
        lab.wait_ready(Duration::from_secs(120));
        lab
    }

    /// An empty lab: the LAN bridge, no nodes yet.
    pub fn new(binary: &Path) -> Lab {
        assert!(
            is_root(),
            "the multi-node lab needs root (network namespaces, containerd)"
        );
        require("ip", &["-V"], "Debian package iproute2");
        require("nsenter", &["--version"], "Debian package util-linux");
        require("containerd", &["--version"], "Debian package containerd");
        require("runc", &["--version"], "Debian package runc");
        let dir = TempDir::new().expect("tempdir");
        // Unique per process and lab, short enough for 15-character interface names.
        let seq = NEXT_LAB.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{:x}", (std::process::id() * 8 + seq) % 0xfffff);
        let third = 1 + (std::process::id() * 8 + seq) % 250;
        let lab = Lab {
            bridge: format!("sl{id}"),
            prefix: format!("172.31.{third}"),
            binary: binary.to_path_buf(),
            nodes: Vec::new(),
            kubectl: Kubectl {
                binary: kubectl_binary(),
                kubeconfig: dir.path().join("kubeconfig.yaml"),
                home: dir.path().to_path_buf(),
            },
            token: String::new(),
            id,
            dir,
        };
        // Labs of test processes that were interrupted (no Drop ran) go first.
        sweep_stale_labs(Path::new(MARKERS));
        lab.write_marker();
        lab.create_lan();
        lab
    }

    /// Records this lab under [`MARKERS`] so a later run can clean up after an interrupted one.
    fn write_marker(&self) {
        let _ = std::fs::create_dir_all(MARKERS);
        let _ = std::fs::write(
            Path::new(MARKERS).join(&self.id),
            format!("{}\n{}\n", std::process::id(), self.dir.path().display()),
        );
    }

    /// Starts the server (node 0, with its own agent) and waits until it serves; kubectl is
    /// then pointed at it.
    pub fn add_server(&mut self, flags: &[&str]) {
        assert!(self.nodes.is_empty(), "the server is the lab's first node");
        self.add_node(
            "server-0",
            true,
            flags.iter().map(|s| s.to_string()).collect(),
        );
        self.start_node(0);
        self.token = std::fs::read_to_string(self.nodes[0].data_dir.join("server").join("token"))
            .expect("the server's token")
            .trim()
            .to_string();
        // kubectl from the root namespace reaches the server at its LAN address.
        let kubeconfig = std::fs::read_to_string(self.nodes[0].data_dir.join("kubeconfig.yaml"))
            .expect("the server's kubeconfig");
        let kubeconfig = kubeconfig.replace(
            &format!("https://127.0.0.1:{API_PORT}"),
            &format!("https://{}:{API_PORT}", self.nodes[0].ip),
        );
        std::fs::write(&self.kubectl.kubeconfig, kubeconfig).expect("lab kubeconfig");
    }

    /// Starts another server (`server-N`) joining server 0's cluster with its token (server 0
    /// must have been started with `--cluster-init`) and waits until it serves; returns its
    /// index.
    pub fn add_joining_server(&mut self, flags: &[&str]) -> usize {
        assert!(!self.nodes.is_empty(), "start the first server first");
        let index = self.nodes.len();
        let extra = flags.iter().map(|s| s.to_string()).collect();
        self.add_node(&format!("server-{index}"), true, extra);
        self.start_node(index);
        index
    }

    /// Starts another agent (`agent-N`) joining the server; returns its index. Does not wait.
    pub fn add_agent(&mut self, flags: &[&str]) -> usize {
        assert!(!self.nodes.is_empty(), "start the server first");
        let index = self.nodes.len();
        let extra = flags.iter().map(|s| s.to_string()).collect();
        self.add_node(&format!("agent-{index}"), false, extra);
        self.start_node(index);
        index
    }

    /// The process id of node `index`'s `shoal` (nsenter execs it in place).
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.nodes[index].child.as_ref().map(Child::id)
    }

    /// The process id of the containerd node `index`'s agent runs.
    pub fn containerd_pid(&self, index: usize) -> Option<u32> {
        crate::process::containerd_pid(&self.nodes[index].data_dir)
    }

    fn create_lan(&self) {
        sh("ip", &["link", "add", &self.bridge, "type", "bridge"]);
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}.1/24", self.prefix),
                "dev",
                &self.bridge,
            ],
        );
        sh("ip", &["link", "set", &self.bridge, "up"]);
    }

    fn add_node(&mut self, name: &str, server: bool, extra: Vec<String>) {
        let index = self.nodes.len();
        let netns = format!("sl{}-{index}", self.id);
        let ip = format!("{}.{}", self.prefix, 10 + index);
        let host_end = format!("sl{}v{index}", self.id);
        sh("ip", &["netns", "add", &netns]);
        sh(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        );
        sh(
            "ip",
            &["link", "set", &host_end, "master", &self.bridge, "up"],
        );
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", netns.as_str(), "ip"];
            all.extend_from_slice(args);
            sh("ip", &all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&[
            "route",
            "add",
            "default",
            "via",
            &format!("{}.1", self.prefix),
        ]);
        let data_dir = self.dir.path().join(name);
        std::fs::create_dir_all(&data_dir).expect("node data dir");
        self.nodes.push(LabNode {
            name: name.to_string(),
            log: self.dir.path().join(format!("{name}.log")),
            netns,
            ip,
            data_dir,
            server,
            extra,
            child: None,
        });
    }

    /// The command that starts node `index` with the flags it was created with.
    fn node_command(&self, index: usize) -> Command {
        let server_url = format!("https://{}:{API_PORT}", self.nodes[0].ip);
        let token = &self.token;
        let node = &self.nodes[index];
        let config = node.data_dir.join("test-config.yaml");
        std::fs::write(&config, "").expect("empty config file");
        // nsenter enters the network namespace only: `ip netns exec` would also mount a sysfs
        // of the namespace over /sys, hiding /sys/fs/cgroup from runc.
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{}", node.netns))
            .arg(&self.binary);
        if node.server {
            command.args([
                "server",
                "--https-listen-port",
                &API_PORT.to_string(),
                "--advertise-address",
                &node.ip,
            ]);
            if index > 0 {
                command.args(["--server", &server_url, "--token", token]);
            }
        } else {
            command.args(["agent", "--server", &server_url, "--token", token]);
        }
        command
            .args(["--node-name", &node.name, "--node-ip", &node.ip])
            // Labs running side by side name their nodes alike; their pods' cgroups (where
            // each node's socket LB attaches) must not be shared.
            .args(["--pod-cgroup-parent", &pod_cgroup_parent(&node.netns)])
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(NODE_FLAGS)
            .args(&node.extra);
        command
    }

    /// Runs node `index`'s command once more with `extra` flags (e.g. `--cluster-reset`) while
    /// the node is stopped, and waits for it to exit; its log goes to the node's log.
    pub fn run_once(&mut self, index: usize, extra: &[&str]) -> std::process::ExitStatus {
        let node = &self.nodes[index];
        assert!(node.child.is_none(), "{} is running", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        self.node_command(index)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .expect("run a lab node's command")
    }

    /// Starts node `index` (again) with the flags it was created with.
    pub fn start_node(&mut self, index: usize) {
        let mut command = self.node_command(index);
        let node = &mut self.nodes[index];
        assert!(node.child.is_none(), "{} is already running", node.name);
        // A restart appends to the log: only what this start writes counts.
        let log_start = std::fs::metadata(&node.log).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a lab node");
        node.child = Some(child);
        if node.server {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !node
                .log_text()
                .get(log_start..)
                .is_some_and(|new| new.contains(READY))
            {
                assert!(
                    Instant::now() < deadline,
                    "{} did not start:\n{}",
                    node.name,
                    node.log_text()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// SIGKILL: the node's agent (and, on the server, the control plane) vanishes without a
    /// word; its containers keep running, as on a machine whose agent crashed.
    pub fn kill_node(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether node `index`'s process has exited on its own (and how); `None` while it runs.
    pub fn exited(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        let child = self.nodes[index].child.as_mut()?;
        let status = child.try_wait().ok()??;
        self.nodes[index].child = None;
        Some(status)
    }

    /// SIGTERM and wait (SIGKILL after 30 s); the exit code.
    pub fn stop_node(&mut self, index: usize) -> Option<i32> {
        crate::process::stop(self.nodes[index].child.take()?, Duration::from_secs(30))
    }

    /// Waits until every node of the lab is registered and Ready.
    pub fn wait_ready(&self, timeout: Duration) {
        let names: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.has_agent())
            .map(|n| n.name.as_str())
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.kubectl.run(&["get", "nodes", "-o", "json"], None);
            let ready: Vec<String> = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["items"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter(|n| crate::kubectl::is_ready(n))
                .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
                .collect();
            if names.iter().all(|n| ready.iter().any(|r| r == n)) {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| format!("--- {}\n{}", n.name, tail(&n.log_text(), 30)))
                    .collect();
                panic!(
                    "nodes not Ready after {timeout:?} (ready: {ready:?})\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Imports an image archive into every running node's containerd.
    pub fn import_image(&self, archive: &Path) {
        for node in self.nodes.iter().filter(|n| n.running() && n.has_agent()) {
            crate::images::import(&self.binary, &node.data_dir, archive);
        }
    }

    /// Runs `program args…` inside node `index`'s network namespace.
    pub fn exec_on(&self, index: usize, program: &str, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.nodes[index].netns))
            .arg(program)
            .args(args)
            .output()
            .expect("nsenter")
    }

    /// kubectl against server `index` (through its LAN address), with the admin credentials.
    pub fn kubectl_for(&self, index: usize) -> Kubectl {
        let node = &self.nodes[index];
        assert!(node.server, "{} is not a server", node.name);
        let text = std::fs::read_to_string(&self.kubectl.kubeconfig).expect("lab kubeconfig");
        let text = text.replace(
            &format!("https://{}:{API_PORT}", self.nodes[0].ip),
            &format!("https://{}:{API_PORT}", node.ip),
        );
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}.yaml", node.name));
        std::fs::write(&path, text).expect("server kubeconfig");
        Kubectl {
            binary: self.kubectl.binary.clone(),
            kubeconfig: path,
            home: self.dir.path().to_path_buf(),
        }
    }

    /// The index of the node named `name`.
    pub fn node_index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no lab node {name}"))
    }
}

/// SIGKILLs every container task of the containerd under `data_dir`, if it still runs.
fn kill_all_tasks(data_dir: &Path) {
    let socket = data_dir.join("agent/containerd/containerd.sock");
    let ctr = |args: &[&str]| {
        Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
    };
    let Ok(listed) = ctr(&["tasks", "ls", "--quiet"]) else {
        return;
    };
    for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
        let _ = ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", id]);
    }
}

static NEXT_LAB: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = self.kubectl.run(&["get", "pods", "-A", "-o", "wide"], None);
            eprintln!(
                "--- kubectl get pods -A -o wide\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            let out = self.kubectl.run(&["get", "events", "-A"], None);
            let events = String::from_utf8_lossy(&out.stdout);
            eprintln!("--- kubectl get events -A (last 30)\n{}", tail(&events, 30));
            for node in &self.nodes {
                let log = node.log_text();
                let interesting: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains(" INFO "))
                    .map(|l| &l[..l.len().min(400)])
                    .collect::<Vec<_>>();
                let start = interesting.len().saturating_sub(30);
                eprintln!("--- {} log\n{}", node.name, interesting[start..].join("\n"));
            }
        }
        // Pods go through their agents first, so sandboxes and their veths are torn down.
        if self.nodes.first().is_some_and(LabNode::running) {
            self.kubectl.delete_all_pods();
            for node in self.nodes.iter().filter(|n| n.running()) {
                wait_for_no_tasks(&node.data_dir, Duration::from_secs(60));
            }
        }
        // Containers of a node whose agent was killed (or that did not finish in time).
        for node in &self.nodes {
            kill_all_tasks(&node.data_dir);
        }
        for index in (0..self.nodes.len()).rev() {
            self.stop_node(index);
        }
        // What outlived that: shims and containerd (found by the lab directory in their
        // command lines), and anything still in a node's namespace.
        for node in &self.nodes {
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &node.netns])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        crate::process::kill_and_unmount_under(self.dir.path());
        for node in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "delete", &node.netns])
                .status();
            // Pods whose sandbox outlived their shim (a pause process in a netns of its own).
            crate::process::kill_pod_cgroup_processes(&node.netns);
            crate::process::remove_pod_cgroups(&node.netns);
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .status();
        let _ = std::fs::remove_file(Path::new(MARKERS).join(&self.id));
    }
}

/// Where running labs leave `<id>` files holding their process id and directory.
pub const MARKERS: &str = "/run/shoal-e2e-labs";

/// Removes what labs of processes that no longer run left behind (a test interrupted with
/// Ctrl-C or killed runs no Drop): processes started from their directory and those in their
/// node namespaces, mounts, the namespaces `sl<id>-N`, the bridge `sl<id>`, the directory.
pub fn sweep_stale_labs(markers: &Path) {
    for entry in std::fs::read_dir(markers).into_iter().flatten().flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut lines = text.lines();
        let pid = lines.next().and_then(|p| p.trim().parse::<u32>().ok());
        let dir = lines.next().map(str::trim).unwrap_or_default().to_string();
        if pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        let prefix = format!("sl{id}-");
        let namespaces: Vec<String> = std::fs::read_dir("/var/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        for ns in &namespaces {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        if dir.starts_with('/') && dir.len() > 1 {
            crate::process::kill_and_unmount_under(Path::new(&dir));
            let _ = std::fs::remove_dir_all(&dir);
        }
        for ns in &namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
            crate::process::kill_pod_cgroup_processes(ns);
            crate::process::remove_pod_cgroups(ns);
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &format!("sl{id}")])
            .status();
        let _ = std::fs::remove_file(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lab whose process died (here: a marker naming a pid that cannot exist) is swept:
    /// its namespaces, bridge and directory go; a live one's marker is left alone.
    #[test]
    fn an_interrupted_labs_leftovers_are_swept() {
        assert!(
            is_root(),
            "the lab sweeper test needs root (network namespaces)"
        );
        let markers = TempDir::new().expect("tempdir");
        let dir = TempDir::new().expect("tempdir");
        let leftover = dir.path().join("node-0");
        std::fs::create_dir_all(&leftover).expect("dir");
        let id = format!("t{:x}", std::process::id() % 0xffff);
        sh("ip", &["netns", "add", &format!("sl{id}-0")]);
        sh("ip", &["link", "add", &format!("sl{id}"), "type", "bridge"]);
        // Process ids never exceed /proc/sys/kernel/pid_max (at most 2^22).
        std::fs::write(
            markers.path().join(&id),
            format!("{}\n{}\n", u32::MAX, leftover.display()),
        )
        .expect("marker");
        std::fs::write(
            markers.path().join("alive"),
            format!("{}\n/nonexistent\n", std::process::id()),
        )
        .expect("marker");
        sweep_stale_labs(markers.path());
        assert!(!Path::new(&format!("/var/run/netns/sl{id}-0")).exists());
        let link = Command::new("ip")
            .args(["link", "show", &format!("sl{id}")])
            .output()
            .expect("ip link show");
        assert!(!link.status.success(), "the bridge is gone");
        assert!(!leftover.exists(), "the directory is gone");
        assert!(!markers.path().join(&id).exists());
        assert!(markers.path().join("alive").exists(), "a live lab is kept");
    }
}
