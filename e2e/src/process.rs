//! Processes and leftovers of test clusters: stopping a child politely, and removing what an
//! agent leaves running or mounted under a test's directory.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Whether the tests run as root (agents, network namespaces and containerd need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Removes a node's pod cgroup (`/shoal/<node>`, which its agent gives every sandbox as
/// parent; and `/shoal` once empty) with whatever empty container cgroups are left in it,
/// from every cgroup hierarchy. Call it once the node's containers are gone: a cgroup that
/// still holds a process stays.
pub fn remove_pod_cgroups(node: &str) {
    fn remove_tree(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for dir in pod_cgroup_dirs(node) {
        remove_tree(&dir);
        // `/shoal` stays while another node's pods are in it.
        if let Some(shoal) = dir.parent() {
            let _ = std::fs::remove_dir(shoal);
        }
    }
}

/// A node's pod cgroup (`/shoal/<node>`) in every mounted cgroup hierarchy.
fn pod_cgroup_dirs(node: &str) -> Vec<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 2 && (fields[2] == "cgroup" || fields[2] == "cgroup2"))
                .then(|| Path::new(fields[1]).join("shoal").join(node))
        })
        .collect()
}

/// SIGKILLs every process left in a node's pod cgroup (`/shoal/<node>`, all hierarchies)
/// and waits up to 5 s for them to go. Only for nodes whose cgroup no other cluster shares.
pub fn kill_pod_cgroup_processes(node: &str) {
    fn pids_under(dir: &Path, pids: &mut Vec<String>) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.split_whitespace().map(String::from));
        }
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids_under(&entry.path(), pids);
            }
        }
    }
    let dirs = pod_cgroup_dirs(node);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut pids = Vec::new();
        for dir in &dirs {
            pids_under(dir, &mut pids);
        }
        pids.sort();
        pids.dedup();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in &pids {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, then waits up to `timeout` before SIGKILL; the exit code.
pub fn stop(mut child: Child, timeout: Duration) -> Option<i32> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().ok().and_then(|s| s.code())
}

/// Kills every process whose command line names `dir` (containerd, shims) and their children
/// (containers' first processes, whose parent is a shim), and unmounts everything under it,
/// deepest first.
pub fn kill_and_unmount_under(dir: &Path) {
    let dir = dir.display().to_string();
    if let Ok(out) = Command::new("pgrep").args(["-f", &dir]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("pkill").args(["-KILL", "-P", pid]).status();
        }
    }
    let _ = Command::new("pkill").args(["-KILL", "-f", &dir]).status();
    std::thread::sleep(Duration::from_millis(300));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(dir.as_str()))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in ours {
        let _ = Command::new("umount").args(["-l", mount]).status();
    }
}

/// A process's resident memory, MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// User+system CPU seconds of a process so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The containerd the agent with `data_dir` runs.
pub fn containerd_pid(data_dir: &Path) -> Option<u32> {
    let wanted = data_dir
        .join("agent/containerd/config.toml")
        .display()
        .to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
        (cmdline.starts_with("containerd\0") && cmdline.contains(&wanted)).then_some(pid)
    })
}
