//! The connect-time load balancer in a real kernel: the programs attached to a fresh cgroup
//! (`<cgroup2>/shoal-test-<pid>`, removed at the end) and a network namespace of its own
//! (`shoaltest-<pid>-socklb`) where two "endpoints" listen on addresses of its loopback and the
//! "ClusterIPs" have no route at all: a connect from a process in the cgroup reaches an
//! endpoint only if the program rewrote it. Needs root.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command as Process;

use shoal_net::proxy::model::Endpoint;
use shoal_net::proxy::sock_lb::cgroup::cgroup2_mount;
use shoal_net::proxy::sock_lb::{Frontend, SockLb};
use support::{in_netns, Netns};

fn assert_root() {
    assert!(
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0),
        "this test loads BPF programs, makes cgroups and network namespaces: run it as root"
    );
}

/// A cgroup made for the test, removed on drop (its processes have exited by then).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new() -> Cgroup {
        let mount = cgroup2_mount().expect("a cgroup2 hierarchy is mounted");
        let dir = mount.join(format!("shoal-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Cgroup(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn endpoint(ip: &str, port: u16) -> Endpoint {
    Endpoint {
        ip: ip.parse().expect("address"),
        port,
    }
}

fn frontend(ip: &str, port: u16) -> Frontend {
    Frontend {
        ip: ip.parse().expect("address"),
        port,
    }
}

/// Listens on `at` inside `ns` and answers every connection with `name`.
fn serve(ns: &Netns, at: Endpoint, name: &'static str) {
    let listener = in_netns(&ns.path(), || {
        TcpListener::bind((at.ip, at.port)).expect("bind")
    });
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(name.as_bytes());
        }
    });
}

/// Connects from a shell in `ns` (in `cgroup` when given) to `ip:port`; what it read, or
/// `Err(stderr)`.
fn connect(ns: &Netns, cgroup: Option<&Cgroup>, ip: IpAddr, port: u16) -> Result<String, String> {
    // Into the cgroup first: `ip netns exec` remounts /sys, hiding the cgroup files.
    let join = cgroup
        .map(|c| format!("echo $$ > {}/cgroup.procs && ", c.0.display()))
        .unwrap_or_default();
    let script = format!(
        "{join}exec ip netns exec {} bash -c 'exec 3<>/dev/tcp/{ip}/{port} && cat <&3'",
        ns.name
    );
    let out = Process::new("bash")
        .args(["-c", &script])
        .output()
        .expect("run bash");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn connects_in_the_cgroup_are_rewritten_to_an_endpoint() {
    assert_root();
    let ns = Netns::add("socklb");
    ns.ip(&["link", "set", "lo", "up"]);
    // Host addresses on the loopback: local routes only, nothing towards the ClusterIPs.
    for addr in [
        "10.200.0.2/32",
        "10.200.0.3/32",
        "fd00:200::2/128",
        "fd00:200::3/128",
    ] {
        ns.ip(&["addr", "add", addr, "dev", "lo"]);
    }
    let (a, b) = (endpoint("10.200.0.2", 8080), endpoint("10.200.0.3", 8081));
    let (a6, b6) = (endpoint("fd00:200::2", 8080), endpoint("fd00:200::3", 8081));
    serve(&ns, a, "a");
    serve(&ns, b, "b");
    serve(&ns, a6, "a6");
    serve(&ns, b6, "b6");
    let cgroup = Cgroup::new();
    let mut lb = SockLb::attach(&cgroup.0, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lb.attached(), 2);

    let vip = frontend("10.96.0.10", 80);
    let vip6 = frontend("fd00:96::10", 80);
    let mut desired = BTreeMap::new();
    desired.insert(vip, BTreeSet::from([a, b]));
    desired.insert(vip6, BTreeSet::from([a6, b6]));
    lb.sync_all(&desired).unwrap_or_else(|e| panic!("{e}"));

    // Both endpoints answer, over both families (40 picks: missing one is 2^-39 likely).
    for (vip, names) in [(vip, ["a", "b"]), (vip6, ["a6", "b6"])] {
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let got = connect(&ns, Some(&cgroup), vip.ip, vip.port)
                .unwrap_or_else(|e| panic!("connect to {vip:?} in the cgroup: {e}"));
            seen.insert(got);
        }
        assert_eq!(seen, names.iter().map(|s| s.to_string()).collect());
    }
    // The ClusterIP has no route: outside the cgroup, or on a port not in the maps, the
    // connect is left alone and fails.
    assert!(connect(&ns, None, vip.ip, vip.port).is_err());
    assert!(connect(&ns, Some(&cgroup), vip.ip, 81).is_err());

    // One endpoint goes: only the other answers.
    desired.insert(vip, BTreeSet::from([b]));
    lb.sync(&desired, &[vip]).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..10 {
        assert_eq!(
            connect(&ns, Some(&cgroup), vip.ip, vip.port).as_deref(),
            Ok("b")
        );
    }
    // The Service goes: the connect is no longer rewritten.
    desired.remove(&vip);
    lb.sync(&desired, &[vip]).unwrap_or_else(|e| panic!("{e}"));
    assert!(connect(&ns, Some(&cgroup), vip.ip, vip.port).is_err());

    // Dropping it detaches the programs.
    drop(lb);
    assert!(connect(&ns, Some(&cgroup), vip6.ip, vip6.port).is_err());
}
