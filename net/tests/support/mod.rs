//! What the namespace tests share: throwaway network namespaces (`shoaltest-<pid>-…`, deleted
//! on drop, so also when a test fails), `ip` for building and inspecting them, and running
//! code on a thread inside one.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use nix::sched::{setns, CloneFlags};
use serde_json::Value;

/// A network namespace made by `ip netns add`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn add(suffix: &str) -> Netns {
        let name = format!("shoaltest-{}-{suffix}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// `ip -n <this> args…`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Process::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn ip(args: &[&str]) -> String {
    let out = Process::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -j` output, or None when the command fails (e.g. the link does not exist).
pub fn ip_json(netns: &Netns, args: &[&str]) -> Option<Value> {
    let out = Process::new("ip")
        .args(["-n", &netns.name, "-j"])
        .args(args)
        .output()
        .expect("run ip");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Runs `f` on a thread that lives inside `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(netns).expect("open netns");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    })
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A CNI request for container `id`'s `eth0`, in `netns` when given.
pub fn cni_request(
    command: shoal_net::cni::Command,
    id: &str,
    netns: Option<&Netns>,
) -> shoal_net::cni::Request {
    shoal_net::cni::Request {
        command,
        container_id: id.to_string(),
        netns: netns.map(Netns::path),
        ifname: "eth0".to_string(),
        args: vec![("K8S_POD_NAME".into(), id.into())],
        path: Vec::new(),
    }
}
