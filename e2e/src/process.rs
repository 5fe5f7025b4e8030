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

/// Kills every process whose command line names `dir` (containerd, shims) and unmounts
/// everything under it, deepest first.
pub fn kill_and_unmount_under(dir: &Path) {
    let dir = dir.display().to_string();
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
